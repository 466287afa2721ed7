"""The login and logout pages, which open and close a session (`session.py`).

A login takes its slot of the login limits before the password is checked, in the
password pool of `mailgate.hashing`; a right password gives the slot back and starts a
fresh session. Logging out ends the session for every copy of its cookie.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailgate import hashing
from mailgate.web.admin import session
from mailgate.web.admin.render import _error_page, _render, _w, _wn
from mailgate.web.admin.session import _client, _csrf_error, _ctx, _form, _logged_in, _state
from mailgate.web.lang import pick_lang

__all__ = ["login_page", "login_submit", "logout", "routes"]

_NEXT_RE = re.compile(r"/admin(?:[/?][^\s\\]*)?\Z")


async def login_page(request: Request) -> Response:
    if _logged_in(request):
        return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
    return _login_form(request)


def _safe_next(value: object) -> str:
    if isinstance(value, str) and _NEXT_RE.match(value) and not value.startswith("//"):
        return value
    return "/admin"


def _login_form(request: Request, error: str | None = None, status: int = 200,
                headers: Mapping[str, str] | None = None, next_url: object = None) -> Response:
    return _render(request, "admin/login.html", {
        "title": _w(request, "login_title"),
        "error": error,
        "next": _safe_next(next_url or request.query_params.get("next")),
        "has_password": _ctx(request).auth.has_password,
    }, status, headers)


def _too_many(request: Request, wait: float, back: object = None) -> Response:
    minutes = max(1, math.ceil(wait / 60))
    return _login_form(request, _wn(request, "too_many", minutes), 429,
                       {"Retry-After": str(math.ceil(wait))}, next_url=back)


async def login_submit(request: Request) -> Response:
    state = _state(request)
    client = _client(request)
    wait = state.limiter.retry_after(client, session._now())
    if wait > 0:
        return _too_many(request, wait)
    form = await _form(request)
    if form is None:
        return _login_form(request, _w(request, "form_unreadable_retry"), 400)
    back = form.get("next")
    problem = _csrf_error(request, form.get("csrf"), pick_lang(request))
    if problem is not None:
        return _login_form(request, problem, 403, next_url=back)
    password = form.get("password")
    if not isinstance(password, str) or not password:
        return _login_form(request, _w(request, "enter_password"), 400, next_url=back)
    # Take the failure slot first, check the password after: parallel logins cannot
    # all pass the limit while the first ones are still being checked.
    stamp = session._now()
    wait = state.limiter.reserve(client, stamp)
    if wait > 0:
        return _too_many(request, wait, back)
    ok = len(password) <= 1024 and await hashing.check(_ctx(request).auth.verify, password)
    if not ok:
        return _login_form(request, _w(request, "wrong_password"), 401, next_url=back)
    state.limiter.release(client, stamp)
    target = _safe_next(form.get("next"))
    request.session.clear()  # a fresh session: nothing from before the login carries over
    request.session.update({
        "admin": True, "at": session._now(), "epoch": state.epoch(),
        "csrf": secrets.token_urlsafe(24),
        "sid": state.sessions.open(session._now()),
    })
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    form = await _form(request)
    token = form.get("csrf") if form is not None else None
    problem = _csrf_error(request, token, pick_lang(request)) if _logged_in(request) else None
    if problem is not None:
        return _error_page(request, 403, _w(request, "not_logged_out"), problem)
    _state(request).sessions.close(request.session.get("sid"))  # copies of the cookie too
    request.session.clear()
    return RedirectResponse("/admin/login", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/admin/login", login_page, methods=["GET"], name="admin_login"),
        Route("/admin/login", login_submit, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"], name="admin_logout"),
    ]
