"""The web application: one Starlette app served by `mailgate serve` in its own loop.

The public part (`web/public.py`) is the reply-code reference; the admin part
(`web/admin/`) is the queue, behind a login; `/api/...` mirrors both as JSON with an
OpenAPI schema (`web/openapi.py`); `/metrics` is Prometheus text. Pages are server-
rendered Jinja2 templates with a little plain JavaScript at most, from /static only (the
Content-Security-Policy of `web/security.py` allows nothing inline).

This module only assembles: it imports the pages, and the pages import what they share
from `web/context.py`, never this module.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from mailgate.web import admin, metrics, openapi, public
from mailgate.web.context import HERE, SESSION_MAX_AGE, WebContext
from mailgate.web.security import HostCheck, Shield

# WebContext is what `create_app` takes; it is defined in web/context.py.
__all__ = ["WebContext", "create_app"]


class _App(Starlette):
    """Starlette with `Shield` (Host check, security headers) outside everything, so
    that even its last-resort error pages carry the headers."""

    hosts: HostCheck

    def build_middleware_stack(self) -> ASGIApp:
        return Shield(super().build_middleware_stack(), self.hosts)


def create_app(ctx: WebContext) -> Starlette:
    routes: list[BaseRoute] = [
        *public.routes(),
        *admin.routes(),
        *openapi.routes(),
        *metrics.routes(),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = _App(
        routes=routes,
        middleware=[
            Middleware(SessionMiddleware, secret_key=ctx.auth.session_secret,
                       session_cookie="mailgate_session", max_age=SESSION_MAX_AGE,
                       same_site="strict", https_only=False),
        ],
        exception_handlers=public.exception_handlers(),
    )
    app.hosts = HostCheck(ctx.config)
    app.state.ctx = ctx
    return app
