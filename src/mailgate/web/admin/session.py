"""Who is logged in: the session store, the CSRF checks and the login limits.

The session lives in the signed cookie (Starlette's SessionMiddleware, installed by
`app.create_app`) and holds the login time, a session id, a per-session CSRF token and
an epoch derived from the session secret in `data_dir/admin.json` (`_State.epoch`). The
ids of open sessions are kept in the web process (`_Sessions`). Failed logins are
counted per client address and for the admin account (`_Limiter`).

`_now` is the one clock of the admin pages: the other modules call `session._now()`,
so a test that moves it moves it everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request

from mailgate.web.context import SESSION_MAX_AGE, WebContext
from mailgate.web.lang import web_text
from mailgate.web.tokens import TokenStore

__all__ = ["LOGIN_FAILURES", "LOGIN_FAILURES_ALL", "LOGIN_WINDOW"]

LOGIN_FAILURES = 5  # failed logins per client address ...
LOGIN_WINDOW = 600.0  # ... within this many seconds, then 429 until the oldest ages out
LOGIN_FAILURES_ALL = 30  # failed logins from all addresses together in that window


def _now() -> float:
    """The clock of sessions and pages (tests move it forward)."""
    return time.time()


# ---------------------------------------------------------------------- per-app state


class _Limiter:
    """Failed logins in a sliding window, per client address and for the admin account.

    A login takes a failure slot before its password is checked (`reserve`) and gives it
    back only when the password was right (`release`). So however many logins run at
    once, no more than `limit` passwords per address, and `overall` in all, are checked
    in any window: the rest are refused at once, without a check.
    """

    def __init__(self, limit: int, window: float, overall: int) -> None:
        self.limit, self.window, self.overall = limit, window, overall
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def _wait(self, key: str, now: float) -> float:
        while self._all and self._all[0] <= now - self.window:
            self._all.popleft()
        q = self._recent(key, now)
        wait = q[0] + self.window - now if len(q) >= self.limit else 0.0
        if len(self._all) >= self.overall:
            wait = max(wait, self._all[0] + self.window - now)
        return wait

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until this address may try again; 0 when it may now."""
        with self._lock:
            return self._wait(key, now)

    def reserve(self, key: str, now: float) -> float:
        """Take a failure slot for a password check: 0.0, or the seconds to wait."""
        with self._lock:
            wait = self._wait(key, now)
            if wait > 0:
                return max(wait, 1.0)
            if len(self._failures) > 10_000:  # many addresses: forget the stale ones
                for k in list(self._failures):
                    self._recent(k, now)
            self._failures.setdefault(key, deque()).append(now)
            self._all.append(now)
            return 0.0

    def release(self, key: str, stamp: float) -> None:
        """The password was right: give the slot back and forget the address's failures."""
        with self._lock:
            self._failures.pop(key, None)
            with contextlib.suppress(ValueError):
                self._all.remove(stamp)


class _Sessions:
    """The admin sessions that are open, by id, in the web process's memory.

    The cookie is signed, but a copy of it works as well as the original. So each login
    gets a random id, recorded here; logging out removes it, and a cookie whose id is not
    here is refused. A restart forgets them all (everyone logs in again); setting the
    password ends them all through the epoch (`_State.epoch`).
    """

    MAX_OPEN = 1000  # past this, the oldest session ends to make room

    def __init__(self) -> None:
        self._open: dict[str, float] = {}  # id -> login time, oldest first
        self._lock = threading.Lock()

    def open(self, now: float) -> str:
        with self._lock:
            for sid, at in list(self._open.items()):
                if at + SESSION_MAX_AGE > now and len(self._open) < self.MAX_OPEN:
                    break
                del self._open[sid]
            sid = secrets.token_urlsafe(24)
            self._open[sid] = now
            return sid

    def is_open(self, sid: object, now: float) -> bool:
        if not isinstance(sid, str):
            return False
        with self._lock:
            at = self._open.get(sid)
        return at is not None and now < at + SESSION_MAX_AGE

    def close(self, sid: object) -> None:
        if isinstance(sid, str):
            with self._lock:
                self._open.pop(sid, None)


@dataclass
class _State:
    limiter: _Limiter
    tokens: TokenStore
    secret_path: Path
    sessions: _Sessions = field(default_factory=_Sessions)
    _epoch: tuple[tuple[int, int] | None, str] = (None, "")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def epoch(self) -> str:
        """A digest of the session secret on disk: it changes with the password."""
        try:
            st = self.secret_path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp is not None and stamp == self._epoch[0]:
                return self._epoch[1]
            try:
                secret = str(json.loads(self.secret_path.read_text("utf-8"))["session_secret"])
            except (OSError, ValueError, KeyError, TypeError):
                secret = ""
            value = hashlib.sha256(b"mailgate admin epoch\0" + secret.encode()).hexdigest()[:24]
            self._epoch = (stamp, value)
            return value


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def _state(request: Request) -> _State:
    state: _State | None = getattr(request.app.state, "admin", None)
    if state is None:
        ctx = _ctx(request)
        state = _State(
            limiter=_Limiter(LOGIN_FAILURES, LOGIN_WINDOW, LOGIN_FAILURES_ALL),
            tokens=TokenStore(ctx.config.data_dir),
            secret_path=ctx.auth.path,
        )
        request.app.state.admin = state
    return state


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


# ---------------------------------------------------------------------- sessions and CSRF


def _logged_in(request: Request) -> bool:
    """Whether the session is an admin's, still within its time and epoch."""
    session = request.session
    if session.get("admin") is not True:
        return False
    at = session.get("at")
    now = _now()
    ok = (
        isinstance(at, int | float)
        and at - 60 <= now < at + SESSION_MAX_AGE
        and isinstance(session.get("epoch"), str)
        and hmac.compare_digest(session["epoch"], _state(request).epoch())
        and _state(request).sessions.is_open(session.get("sid"), now)
    )
    if not ok:
        session.clear()
    return ok


def _csrf(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 20:
        token = secrets.token_urlsafe(24)
        request.session["csrf"] = token
    return token


def _same_origin(request: Request) -> bool:
    """False when Origin (or, without it, Referer) names another site than the Host."""
    source = request.headers.get("origin")
    if source is None:
        source = request.headers.get("referer")
        if source is None:
            return True  # nothing said; the CSRF token still has to match
    if source == "null":
        return False
    try:
        netloc = urlsplit(source).netloc.lower()
    except ValueError:
        return False
    return bool(netloc) and netloc == request.url.netloc.lower()


def _csrf_error(request: Request, token: object, lang: str = "en") -> str | None:
    """Why this unsafe request must be refused (a sentence in `lang`), or None when it
    may go on."""
    problem = None
    if not _same_origin(request):
        problem = "csrf_other_site"
    else:
        expected = request.session.get("csrf")
        if not isinstance(expected, str) or not isinstance(token, str) or not token:
            problem = "csrf_missing"
        elif not hmac.compare_digest(token.encode(), expected.encode()):
            problem = "csrf_mismatch"
    return None if problem is None else web_text(lang)[f"admin_ui.{problem}"]


async def _form(request: Request) -> FormData | None:
    try:
        return await request.form()
    except Exception:  # malformed bodies of every kind (multipart errors, limits)
        return None


def _flash(request: Request, text: str) -> None:
    request.session["flash"] = text
