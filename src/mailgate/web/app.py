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

import hashlib
import mimetypes

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from mailgate.web import admin, metrics, openapi, public
from mailgate.web.context import SESSION_MAX_AGE, STATIC_FILES, WebContext
from mailgate.web.security import HostCheck, Shield

# WebContext is what `create_app` takes; it is defined in web/context.py.
__all__ = ["WebContext", "create_app"]


class _App(Starlette):
    """Starlette with `Shield` (Host check, security headers) outside everything, so
    that even its last-resort error pages carry the headers."""

    hosts: HostCheck

    def build_middleware_stack(self) -> ASGIApp:
        return Shield(super().build_middleware_stack(), self.hosts)


_STATIC_ETAGS = {name: '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                 for name, data in STATIC_FILES.items()}


async def _static(request: Request) -> Response:
    """/static from the copy read at start (web/context.py says why), with an ETag."""
    name = request.path_params["path"]
    data = STATIC_FILES.get(name)
    if data is None:
        return PlainTextResponse("Not Found", status_code=404)
    etag = _STATIC_ETAGS[name]
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media.startswith("text/") or media == "application/javascript":
        media += "; charset=utf-8"
    return Response(data, media_type=media, headers=headers)


def preload_data() -> None:
    """Read every language's prose now, not at a first request that may come after a
    reinstall has moved the files; import what the pages import lazily, for the same
    reason."""
    import importlib

    from mailgate.codes import registry as reg

    reg.registry()
    for lang in reg.languages():
        reg.prose(lang)
        reg.ui(lang)
        for name in reg.WORD_FILES:
            reg.words(lang, name)
    for module in ("mailgate.codes.explain", "mailgate.codes.compare",
                   "mailgate.codes.render", "mailgate.codes.paste", "mailgate.codes.pasted"):
        importlib.import_module(module)
    # Vendors' meanings are read at the first pasted reply (the CLI's plain codes never
    # need them); a server reads them now, with the rest.
    from mailgate.codes import vendors

    vendors.entries()
    for lang in reg.languages():
        vendors.words(lang)


def create_app(ctx: WebContext) -> Starlette:
    preload_data()
    routes: list[BaseRoute] = [
        *public.routes(),
        *admin.routes(),
        *openapi.routes(),
        *metrics.routes(),
        Route("/static/{path:path}", _static, methods=["GET", "HEAD"], name="static"),
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
