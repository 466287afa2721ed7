"""The web application: one Starlette app served by `mailgate serve` in its own loop.

The public part (`web/public.py`) is the reply-code reference; the admin part
(`web/admin.py`) is the queue, behind a login; `/api/...` mirrors both as JSON with an
OpenAPI schema (`web/openapi.py`); `/metrics` is Prometheus text. Pages are server-
rendered Jinja2 templates with a little plain JavaScript at most, from /static only (the
Content-Security-Policy of `web/security.py` allows nothing inline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from mailgate.config import Config
from mailgate.queue import Queue
from mailgate.web.auth import AdminAuth
from mailgate.web.security import HostCheck, Shield

__all__ = ["WebContext", "create_app", "templates"]

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
SESSION_MAX_AGE = 8 * 3600  # an admin session expires after eight hours


@dataclass
class WebContext:
    """What the pages need from the running server; shared by every request."""

    config: Config
    queue: Queue | None
    auth: AdminAuth
    # Counters of the running server (connections, accepted, refused, ...); empty when
    # the web app runs without a server (tests, docs).
    server_stats: Callable[[], dict[str, Any]] = dict
    # Called after an admin action that makes work due (retry, release): wake delivery.
    on_due: Callable[[], None] = lambda: None
    started: float = field(default_factory=time.time)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking queue call off the event loop."""
        return await asyncio.to_thread(fn, *args)


class _App(Starlette):
    """Starlette with `Shield` (Host check, security headers) outside everything, so
    that even its last-resort error pages carry the headers."""

    hosts: HostCheck

    def build_middleware_stack(self) -> ASGIApp:
        return Shield(super().build_middleware_stack(), self.hosts)


def create_app(ctx: WebContext) -> Starlette:
    from mailgate.web import admin, metrics, openapi, public

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
