"""How an admin page is drawn: the formatting the templates use, the page frame
(`_render`: the session's CSRF token and flash, no caching, no framing) and the error
page, and `_page`, which sends whoever is not logged in to the login page.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.web.admin import session
from mailgate.web.admin.session import _csrf, _logged_in
from mailgate.web.context import static_version, templates
from mailgate.web.lang import pick_lang, remember_lang, web_text

__all__ = ["ADMIN_CSS_URL", "ADMIN_JS_URL", "Endpoint", "admin_words", "code_url"]

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


@functools.cache
def admin_words(lang: str) -> Mapping[str, str]:
    """The admin pages' words in `lang`: `[words.admin]` of codes/data/<lang>/web.toml."""
    prefix = "admin_ui."
    return {k[len(prefix):]: v for k, v in web_text(lang).items() if k.startswith(prefix)}


def _w(request: Request, key: str, **fill: object) -> str:
    """One admin sentence in the request's language, its {placeholders} filled."""
    text = admin_words(pick_lang(request))[key]
    return text.format(**fill) if fill else text


def _wn(request: Request, key: str, n: int, **fill: object) -> str:
    """`key_one` or `key_many` by `n` (languages without plurals give both the same)."""
    return _w(request, f"{key}_{'one' if n == 1 else 'many'}", n=n, **fill)


def _ago(ts: float | None, now: float | None = None, lang: str = "en") -> str:
    if ts is None:
        return ""
    words = admin_words(lang)
    delta = (now if now is not None else session._now()) - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = words["seconds"].format(n=int(delta))
    elif delta < 3600:
        text = words["minutes"].format(n=int(delta // 60))
    elif delta < 86400 * 2:
        text = words["hours"].format(n=f"{delta / 3600:.1f}".removesuffix(".0"))
    else:
        text = words["days"].format(n=int(delta // 86400))
    return words["in" if future else "ago"].format(t=text)


def _with_code(text: str, **commands: str) -> Markup:
    """`text` HTML-escaped, each {name} in it replaced by <code>command</code>."""
    return Markup(escape(text)).format(**{
        name: Markup("<code>{}</code>").format(cmd) for name, cmd in commands.items()})


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
    lang = pick_lang(request)
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
        "ago": functools.partial(_ago, lang=lang),
        "w": admin_words(lang),
        "with_code": _with_code,
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
    return _error_page(request, 503, _w(request, "no_queue"), _w(request, "no_queue_text"))
