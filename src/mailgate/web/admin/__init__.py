"""The admin pages (dashboard, queue, message, login) and the queue's JSON API.

Everything here is behind a login: a page asked for without a session redirects to
`/admin/login`, the API answers 401 in JSON. The session lives in the signed cookie
(Starlette's SessionMiddleware, installed by `app.create_app`) and holds the login time,
a session id, a per-session CSRF token and an epoch derived from the session secret in
`data_dir/admin.json`: `mailgate admin set-password` writes a new secret, so every
session of a running server ends at its next request, and the app's own eight-hour
limit (`SESSION_MAX_AGE`) counts from the login, however busy the session is. The ids of
open sessions are kept in the web process (`_Sessions`): logging out ends the session
for every copy of its cookie, and a restart ends them all.

Every POST carries the session's CSRF token (a hidden form field, or the
`X-CSRF-Token` header for the API used from the page) and, when the browser says where
it comes from (Origin, else Referer), must come from this site. Actions ask for
confirmation first: a `confirm()` dialog, or without JavaScript a confirmation page.
Failed logins are limited per client address (5 in 10 minutes, then 429) and for the
admin account (30 in 10 minutes from all addresses); a login takes its slot before the
password is checked, in the password pool of `mailgate.hashing`.

The API accepts `Authorization: Bearer <token>` (tokens from `mailgate admin token`,
stored hashed) or the logged-in session. `api.OPENAPI_PATHS` / `api.OPENAPI_COMPONENTS`
describe it for `/api/openapi.json`.

The parts, each importing only those above it in this list:

- `session.py`: the session store, the CSRF checks, the login limits, the clock;
- `render.py`: the page frame, the error page and the formatting the templates use;
- `login.py`: the login and logout pages;
- `pages.py`: the HTML pages over the queue, and the filters, paging and counts;
- `api.py`: the JSON API and its OpenAPI description.

This module gathers their routes for `web/app.py`, in the order they must be matched
(the catch-all `/admin/{rest:path}` after every admin page).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from mailgate.web.admin import api, login, pages

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    return [*login.routes(), *pages.routes(), *api.routes()]
