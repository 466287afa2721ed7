"""How an admin page is drawn: the formatting the templates use, the page frame
(`_render`: the session's CSRF token and flash, no caching, no framing) and the error
page, and `_page`, which sends whoever is not logged in to the login page.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.web.admin import session
from mailgate.web.admin.session import _csrf, _logged_in
from mailgate.web.context import static_version, templates
from mailgate.web.lang import remember_lang

__all__ = ["ADMIN_CSS_URL", "ADMIN_JS_URL", "Endpoint", "code_url"]

_BASIC_RE = re.compile(r"[2-5][0-9][0-9]\Z")
_ENHANCED_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")

Endpoint = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------------- formatting


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def _iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return ""
    delta = (now if now is not None else session._now()) - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{int(delta)} s"
    elif delta < 3600:
        text = f"{int(delta // 60)} min"
    elif delta < 86400 * 2:
        text = f"{delta / 3600:.1f} h".replace(".0 h", " h")
    else:
        text = f"{int(delta // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def code_url(code: object) -> str | None:
    """The explanation page of a reply code (`/codes/550`, `/codes/5.1.1`), if it is one."""
    text = str(code) if code is not None else ""
    if _BASIC_RE.match(text) or _ENHANCED_RE.match(text):
        return f"/codes/{text}"
    return None


ADMIN_CSS_URL = f"/static/admin.css?v={static_version('admin.css')}"
ADMIN_JS_URL = f"/static/admin.js?v={static_version('admin.js')}"

_FMT: dict[str, Any] = {
    "when": _when, "iso": _iso, "ago": _ago, "size": _size, "code_url": code_url,
}


def _render(request: Request, name: str, context: dict[str, Any],
            status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    logged_in = request.session.get("admin") is True
    data: dict[str, Any] = {
        "section": "admin",
        "logged_in": logged_in,
        "csrf": _csrf(request),
        "flash": request.session.pop("flash", None) if logged_in else None,
        "now": session._now(),
        "admin_css": ADMIN_CSS_URL,
        "admin_js": ADMIN_JS_URL,
        "page_id": "",
        **_FMT,
        **context,
    }
    response = templates.TemplateResponse(request, name, data, status_code=status_code,
                                          headers=dict(headers or {}))
    remember_lang(request, response)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _error_page(request: Request, status: int, title: str, text: str) -> Response:
    return _render(request, "admin/error.html", {"title": title, "text": text}, status)


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urlencode({"next": target}) if target != "/admin" else ""
    return RedirectResponse("/admin/login" + (f"?{query}" if query else ""), status_code=303)


def _page(fn: Endpoint) -> Endpoint:
    """A page for a logged-in admin; others go to the login page."""

    async def endpoint(request: Request) -> Response:
        if not _logged_in(request):
            return _to_login(request)
        return await fn(request)

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def _no_queue(request: Request) -> Response:
    return _error_page(request, 503, "No queue",
                       "This web app runs without a mail queue (no server attached).")
