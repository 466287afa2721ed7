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
stored hashed) or the logged-in session. `OPENAPI_PATHS` / `OPENAPI_COMPONENTS`
describe it for `/api/openapi.json`.
"""

from __future__ import annotations

import contextlib
import email.header
import email.parser
import email.policy
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from markupsafe import Markup, escape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailgate import hashing
from mailgate.queue import (
    FINAL_STATES,
    ActivityBucket,
    NotFound,
    QueuedMessage,
    QueueError,
    Recipient,
    RecipientState,
)
from mailgate.queue.report import message_json
from mailgate.web.context import SESSION_MAX_AGE, WebContext, static_version, templates
from mailgate.web.lang import remember_lang
from mailgate.web.tokens import TokenStore

__all__ = ["OPENAPI_COMPONENTS", "OPENAPI_PATHS", "parse_filters", "routes"]

LOGIN_FAILURES = 5  # failed logins per client address ...
LOGIN_WINDOW = 600.0  # ... within this many seconds, then 429 until the oldest ages out
LOGIN_FAILURES_ALL = 30  # failed logins from all addresses together in that window
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
ACTIONS = ("retry", "hold", "release", "delete")
HEADER_BYTES = 256 * 1024  # how much of a message to read for its header block
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
MAX_AGE_HOURS = 1_000_000
# The API's filters, as its OpenAPI schema publishes them (the page checks them too, after
# trimming what people type): printable ASCII and anything beyond Latin-1's controls and
# no-break space, as positive character classes that every regex engine and schema-driven
# test generator reads alike. Empty is no filter.
_PRINTABLE = r"\u00a1-\uffff"
DOMAIN_PATTERN = rf"^[\x21-\x3f\x41-\x7e{_PRINTABLE}]{{0,253}}$"  # no spaces, no @
SENDER_PATTERN = rf"^(?:<>|[\x21-\x3b\x3d\x3f-\x7e{_PRINTABLE}]{{0,320}})$"  # <>: null sender
NUMBER_PATTERN = r"^-?[0-9]{1,12}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?$"
ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_BASIC_RE = re.compile(r"[2-5][0-9][0-9]\Z")
_ENHANCED_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_NEXT_RE = re.compile(r"/admin(?:[/?][^\s\\]*)?\Z")

Endpoint = Callable[[Request], Awaitable[Response]]


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


def _csrf_error(request: Request, token: object) -> str | None:
    """Why this unsafe request must be refused, or None when it may go on."""
    if not _same_origin(request):
        return "This request came from another site (Origin/Referer); it was refused."
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not isinstance(token, str) or not token:
        return "The form's security token is missing; reload the page and try again."
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return "The form's security token does not match; reload the page and try again."
    return None


async def _form(request: Request) -> FormData | None:
    try:
        return await request.form()
    except Exception:  # malformed bodies of every kind (multipart errors, limits)
        return None


def _flash(request: Request, text: str) -> None:
    request.session["flash"] = text


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
    delta = (now if now is not None else _now()) - ts
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


def _next_label(r: Recipient, now: float) -> str:
    if r.state in FINAL_STATES or r.state is RecipientState.HELD or r.next_attempt is None:
        return "-"
    if r.next_attempt <= now:
        return "due now"
    return f"{_when(r.next_attempt)} ({_ago(r.next_attempt, now)})"


def _headers(content: bytes) -> list[tuple[str, str]]:
    """The header fields of a stored message, decoded for reading (RFC 2047)."""
    head = content[:HEADER_BYTES]
    for sep in (b"\r\n\r\n", b"\n\n"):
        if sep in head:
            head = head.split(sep, 1)[0]
            break
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    fields = []
    for name, value in msg.items():
        raw = str(value)
        try:
            text = str(email.header.make_header(email.header.decode_header(raw)))
        except (ValueError, LookupError, UnicodeError):
            text = raw
        fields.append((name, " ".join(text.split())))
    return fields


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
        "now": _now(),
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


# ---------------------------------------------------------------------- queue filters


@dataclass(frozen=True, slots=True)
class Filters:
    """The queue page's and API's filters, checked."""

    state: RecipientState | None = None
    domain: str | None = None
    sender: str | None = None  # "" is the null sender (written <> in the form)
    older_than: float | None = None  # hours
    limit: int = PAGE_SIZE
    before: str | None = None
    after: str | None = None

    def query(self, **changes: object) -> str:
        """The query string of these filters, with `changes` (None drops a key)."""
        values: dict[str, object] = {
            "state": self.state.value if self.state else None,
            "domain": self.domain,
            "sender": None if self.sender is None else (self.sender or "<>"),
            "older_than": None if self.older_than is None else f"{self.older_than:g}",
            "limit": self.limit if self.limit != PAGE_SIZE else None,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value if self.state else None, "domain": self.domain,
            "sender": self.sender, "older_than": self.older_than, "limit": self.limit,
            "before": self.before, "after": self.after,
        }


def parse_filters(params: Mapping[str, str], strict: bool = False
                  ) -> tuple[Filters, list[str]]:
    """Filters from a query string; a list of sentences for whatever is wrong.

    The page is lenient with what people type (spaces around values, `@example.org`,
    `<user@example.org>`, empty fields); the API (`strict`) takes exactly what its
    OpenAPI schema describes, checked with the very patterns the schema publishes."""
    errors: list[str] = []

    def value(name: str) -> str | None:
        raw = params.get(name)
        if raw is None or strict:
            return raw
        return raw.strip() or None

    def ok(pattern: str, text: str) -> bool:
        # re.search, as JSON Schema validators apply `pattern`.
        return re.search(pattern, text) is not None

    state = None
    text = value("state")
    if text is not None and not (not strict and text.lower() == "any"):
        try:
            state = RecipientState(text if strict else text.lower())
        except ValueError:
            errors.append(f"State {text!r} is not one of: "
                          + ", ".join(s.value for s in RecipientState) + ".")
    domain = value("domain")
    if domain is not None and not strict:
        domain = domain.lower().lstrip("@") or None
    if domain is not None:
        if ok(DOMAIN_PATTERN, domain):
            domain = domain.rstrip("\n").lower() or None
        else:
            errors.append("Recipient domain must be a domain name such as example.org "
                          "(no spaces, no @, at most 253 characters).")
            domain = None
    sender = value("sender")
    if sender is not None and not strict and sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip() or "<>"  # <user@example.org> -> user@example.org
    if sender is not None:
        if ok(SENDER_PATTERN, sender):
            sender = "" if sender == "<>" else sender.rstrip("\n") or None
        else:
            errors.append("Sender must be one address such as user@example.org, or <> "
                          "for the null sender (no spaces, at most 320 characters).")
            sender = None
    older_than = None
    text = value("older_than")
    if text is not None:
        number = float(text) if ok(NUMBER_PATTERN, text) else math.nan
        if math.isfinite(number) and 0 <= number <= MAX_AGE_HOURS:
            older_than = number
        else:
            errors.append(f"Age {text!r} is not a number of hours: give one such as 2 "
                          f"or 0.5 (0 to {MAX_AGE_HOURS}).")
    limit = PAGE_SIZE
    text = value("limit")
    if text is not None:
        if ok(r"^[0-9]{1,9}$", text) and 1 <= int(text) <= MAX_PAGE_SIZE:
            limit = int(text)
        else:
            errors.append(f"Page size {text!r} must be a whole number from 1 to "
                          f"{MAX_PAGE_SIZE}.")
    cursors: dict[str, str | None] = {}
    for name in ("before", "after"):
        cursor = value(name)
        if cursor is not None:
            if ok(ID_PATTERN, cursor):
                cursor = cursor.rstrip("\n")
            else:
                errors.append(f"{name!r} must be a message id from a previous page.")
                cursor = None
        cursors[name] = cursor
    return Filters(state, domain, sender, older_than, limit, cursors["before"],
                   cursors["after"]), errors


@dataclass(frozen=True, slots=True)
class _Page:
    messages: list[QueuedMessage]
    newer: str | None  # cursor for the page of newer messages ("after=")
    older: str | None  # cursor for the page of older messages ("before=")
    notice: str | None = None


async def _load_page(ctx: WebContext, f: Filters) -> _Page:
    assert ctx.queue is not None
    queue = ctx.queue
    cutoff = None if f.older_than is None else _now() - f.older_than * 3600

    def fetch(before: str | None, after: str | None) -> list[QueuedMessage]:
        return queue.list(state=f.state, limit=f.limit + 1, sender=f.sender,
                          recipient_domain=f.domain, queued_before=cutoff,
                          before=before, after=after)

    notice = None
    try:
        found: list[QueuedMessage] = await ctx.run(fetch, f.before, f.after)
    except NotFound:
        notice = ("The message this page started from has left the queue; "
                  "here are the newest messages.")
        found = await ctx.run(fetch, None, None)
        f = Filters(f.state, f.domain, f.sender, f.older_than, f.limit)
    more = len(found) > f.limit
    newer: str | None
    older: str | None
    if f.after is not None:
        msgs = found[-f.limit:] if more else found  # the ones just newer than the cursor
        newer = msgs[0].id if more and msgs else None
        older = msgs[-1].id if msgs else f.after
    else:
        msgs = found[: f.limit]
        newer = msgs[0].id if f.before is not None and msgs else None
        older = msgs[-1].id if more else None
    if f.before is not None and not msgs:
        newer = f.before  # an empty page after the last: offer the way back
    return _Page(msgs, newer, older, notice)


# ---------------------------------------------------------------------- the chart


def _nice_max(value: int) -> int:
    if value <= 4:
        return 4
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        top = int(step * magnitude)
        if top >= value:
            return top
    return value  # pragma: no cover


_SERIES = (("accepted", "accepted"), ("delivered", "delivered"),
           ("deferred", "deferred"), ("bounced", "bounced"))


def chart_svg(buckets: list[ActivityBucket]) -> Markup:
    """Grouped bars per bucket (accepted, delivered, deferred, bounced), as inline SVG."""
    width, height, left, top, bottom = 720, 200, 40, 12, 28
    plot_w, plot_h = width - left - 8, height - top - bottom
    peak = max((getattr(b, name) for b in buckets for name, _ in _SERIES), default=0)
    ymax = _nice_max(peak)
    n = max(1, len(buckets))
    slot = plot_w / n
    bar = max(1.0, (slot - 4) / len(_SERIES))
    parts = [
        f'<svg class="admin-chart" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="chart-title" preserveAspectRatio="xMidYMid meet">',
        '<title id="chart-title">Messages per hour over the last 24 hours</title>',
    ]
    for i in range(5):
        value = ymax * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{value:g}</text>')
    for i, b in enumerate(buckets):
        x0 = left + i * slot + 2
        label = time.strftime("%H:%M", time.gmtime(b.start))
        end = time.strftime("%H:%M", time.gmtime(b.start + b.seconds))
        for j, (name, css) in enumerate(_SERIES):
            value = getattr(b, name)
            h = plot_h * value / ymax if ymax else 0
            x = x0 + j * bar
            y = top + plot_h - h
            parts.append(
                f'<rect class="bar {css}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{escape(label)}-{escape(end)} UTC: {value} '
                f'{name}</title></rect>'
            )
        if i % 3 == 0:
            parts.append(f'<text class="axis" x="{x0 + slot / 2 - 2:.1f}" '
                         f'y="{height - 10}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line class="base" x1="{left}" x2="{width - 8}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


# ---------------------------------------------------------------------- stats


def _totals(buckets: list[ActivityBucket]) -> dict[str, int]:
    keys = ("accepted", "delivered", "deferred", "failed", "bounced")
    return {k: sum(getattr(b, k) for b in buckets) for k in keys}


def _server_stats(ctx: WebContext) -> dict[str, Any]:
    try:
        stats = ctx.server_stats()
        clean: dict[str, Any] = json.loads(json.dumps(stats, default=str))
    except Exception:  # the server's counters must never break the page
        return {}
    return clean


async def _stats(ctx: WebContext) -> dict[str, Any]:
    assert ctx.queue is not None
    queue = ctx.queue
    now = _now()
    # The totals cover exactly the last 60 minutes and 24 hours; the chart's bars are
    # whole clock hours (UTC), the last one the hour under way.
    first = math.floor(now / 3600) * 3600 - 23 * 3600

    def read() -> tuple[list[ActivityBucket], ...]:
        return (queue.activity(now - 3600, 3600.0, now),
                queue.activity(now - 86400, 86400.0, now),
                queue.activity(first, 3600.0, first + 24 * 3600))

    hour, day, buckets = await ctx.run(read)
    counts: dict[str, int] = await ctx.run(queue.counts)
    server = _server_stats(ctx)
    return {
        "now": now,
        "last_hour": _totals(hour),
        "last_day": _totals(day),
        "refused": server.get("refused"),
        "queue": counts,
        "server": server,
        "started": ctx.started,
        "hourly": [
            {"start": b.start, "accepted": b.accepted, "delivered": b.delivered,
             "deferred": b.deferred, "failed": b.failed, "bounced": b.bounced}
            for b in buckets
        ],
        "_buckets": buckets,
    }


# ---------------------------------------------------------------------- pages


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
        "title": "Log in",
        "error": error,
        "next": _safe_next(next_url or request.query_params.get("next")),
        "has_password": _ctx(request).auth.has_password,
    }, status, headers)


def _too_many(request: Request, wait: float, back: object = None) -> Response:
    minutes = max(1, math.ceil(wait / 60))
    return _login_form(
        request, f"Too many failed logins: try again in {minutes} "
        f"minute{'s' if minutes != 1 else ''}.", 429, {"Retry-After": str(math.ceil(wait))},
        next_url=back)


async def login_submit(request: Request) -> Response:
    state = _state(request)
    client = _client(request)
    wait = state.limiter.retry_after(client, _now())
    if wait > 0:
        return _too_many(request, wait)
    form = await _form(request)
    if form is None:
        return _login_form(request, "The form could not be read; try again.", 400)
    back = form.get("next")
    problem = _csrf_error(request, form.get("csrf"))
    if problem is not None:
        return _login_form(request, problem, 403, next_url=back)
    password = form.get("password")
    if not isinstance(password, str) or not password:
        return _login_form(request, "Enter the admin password.", 400, next_url=back)
    # Take the failure slot first, check the password after: parallel logins cannot
    # all pass the limit while the first ones are still being checked.
    stamp = _now()
    wait = state.limiter.reserve(client, stamp)
    if wait > 0:
        return _too_many(request, wait, back)
    ok = len(password) <= 1024 and await hashing.check(_ctx(request).auth.verify, password)
    if not ok:
        return _login_form(request, "Wrong password.", 401, next_url=back)
    state.limiter.release(client, stamp)
    target = _safe_next(form.get("next"))
    request.session.clear()  # a fresh session: nothing from before the login carries over
    request.session.update({
        "admin": True, "at": _now(), "epoch": state.epoch(), "csrf": secrets.token_urlsafe(24),
        "sid": state.sessions.open(_now()),
    })
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    form = await _form(request)
    token = form.get("csrf") if form is not None else None
    if _logged_in(request) and _csrf_error(request, token) is not None:
        return _error_page(request, 403, "Not logged out",
                           _csrf_error(request, token) or "")
    _state(request).sessions.close(request.session.get("sid"))  # copies of the cookie too
    request.session.clear()
    return RedirectResponse("/admin/login", status_code=303)


@_page
async def dashboard(request: Request) -> Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    try:
        stats = await _stats(ctx)
    except QueueError as exc:
        return _error_page(request, 503, "Queue unavailable", str(exc))
    return _render(request, "admin/dashboard.html", {
        "title": "Dashboard",
        "page_id": "dashboard",
        "stats": stats,
        "chart": chart_svg(stats["_buckets"]),
        "buckets": stats["_buckets"],
        "states": [s.value for s in RecipientState],
    })


@_page
async def queue_page(request: Request) -> Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    f, errors = parse_filters(request.query_params)
    base = {"title": "Queue", "page_id": "queue", "filters": f,
            "states": [s.value for s in RecipientState], "form": request.query_params}
    if errors:
        return _render(request, "admin/queue.html", {**base, "errors": errors, "page": None,
                                                     "counts": None}, 400)
    try:
        page = await _load_page(ctx, f)
        counts = await ctx.run(ctx.queue.counts)
    except QueueError as exc:
        return _error_page(request, 503, "Queue unavailable", str(exc))
    return _render(request, "admin/queue.html", {**base, "errors": [], "page": page,
                                                 "counts": counts})


async def _message(request: Request) -> QueuedMessage | Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    message_id = request.path_params["id"]
    if not _ID_RE.match(message_id):
        return _error_page(request, 404, "No such message",
                           f"{message_id!r} is not a queue id.")
    try:
        msg: QueuedMessage = await ctx.run(ctx.queue.show, message_id, True)
    except NotFound:
        return _error_page(request, 404, "No such message",
                           f"Message {message_id} is not in the queue: it may have been "
                           "delivered and removed, or deleted.")
    except QueueError as exc:
        return _error_page(request, 503, "Queue unavailable", str(exc))
    return msg


def _possible(msg: QueuedMessage) -> dict[str, bool]:
    states = {r.state for r in msg.recipients}
    active = bool(states & {RecipientState.QUEUED, RecipientState.DEFERRED})
    return {"retry": active, "hold": active, "release": RecipientState.HELD in states,
            "delete": True}


@_page
async def message_page(request: Request) -> Response:
    msg = await _message(request)
    if isinstance(msg, Response):
        return msg
    now = _now()
    attempts: dict[int, list[Any]] = {r.id: [] for r in msg.recipients}
    for rid, attempt in msg.attempts:
        attempts.setdefault(rid, []).append(attempt)
    return _render(request, "admin/message.html", {
        "title": f"Message {msg.id}",
        "m": msg,
        "headers": _headers(msg.content or b""),
        "attempts": attempts,
        "next_label": lambda r: _next_label(r, now),
        "possible": _possible(msg),
        "actions": ACTIONS,
    })


_CONFIRM = {
    "retry": ("Retry now", "Make the queued and deferred recipients of this message due "
              "now; delivery tries them at once."),
    "hold": ("Hold", "Put the undelivered recipients of this message on hold: no delivery "
             "until you release them."),
    "release": ("Release", "Release the held recipients of this message: they are due now."),
    "delete": ("Delete", "Delete this message, its recipients and every attempt. It will "
               "not be delivered and no bounce is sent. This cannot be undone."),
}


@_page
async def message_action(request: Request) -> Response:
    ctx = _ctx(request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        return _error_page(request, 404, "No such action",
                           f"{action!r} is not an action: use one of {', '.join(ACTIONS)}.")
    if request.method == "POST":
        form = await _form(request)
        if form is None:
            return _error_page(request, 400, "Bad form", "The form could not be read.")
        problem = _csrf_error(request, form.get("csrf"))
        if problem is not None:
            return _error_page(request, 403, "Refused", problem)
        confirmed = form.get("confirmed") == "1"
    else:
        confirmed = False
    msg = await _message(request)
    if isinstance(msg, Response):
        return msg
    if not confirmed:
        label, text = _CONFIRM[action]
        return _render(request, "admin/confirm.html", {
            "title": f"{label}: {msg.id}", "m": msg, "action": action, "label": label,
            "text": text,
        })
    try:
        n = await _act(ctx, action, msg.id)
    except NotFound:
        return _error_page(request, 404, "No such message",
                           f"Message {msg.id} left the queue before the {action}.")
    except QueueError as exc:
        return _error_page(request, 503, "Queue unavailable", str(exc))
    if action == "delete":
        _flash(request, f"Message {msg.id} deleted.")
        return RedirectResponse("/admin/queue", status_code=303)
    done = {"retry": "due now", "hold": "held", "release": "released, due now"}[action]
    _flash(request, f"{n} recipient{'s' if n != 1 else ''} {done}.")
    return RedirectResponse(f"/admin/message/{msg.id}", status_code=303)


async def _act(ctx: WebContext, action: str, message_id: str) -> int:
    """Do an action on the queue; wake delivery when it made work due."""
    assert ctx.queue is not None
    queue = ctx.queue
    if action == "delete":
        await ctx.run(queue.delete, message_id)
        return 1
    if action == "hold":
        n: int = await ctx.run(queue.hold, message_id)
        return n
    if action == "release":
        n = await ctx.run(queue.release_hold, message_id)
    else:
        n = await ctx.run(queue.retry, message_id, time.time())
    if n:
        ctx.on_due()
    return n


@_page
async def admin_unknown(request: Request) -> Response:
    if request.path_params.get("rest", "") == "":
        return RedirectResponse("/admin", status_code=307)
    return _error_page(request, 404, "Not found", "There is no admin page here.")


# ---------------------------------------------------------------------- JSON API


def _json_error(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": text, "status": status}, status_code=status,
                        headers=dict(headers or {}))


async def _no_store(response: Awaitable[Response]) -> Response:
    r = await response
    r.headers.setdefault("Cache-Control", "no-store")
    return r


def _api(fn: Endpoint) -> Endpoint:
    """An API endpoint: a bearer token, or a logged-in session (with CSRF on writes)."""

    async def endpoint(request: Request) -> Response:
        return await _no_store(checked(request))

    async def checked(request: Request) -> Response:
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or _state(request).tokens.verify(token.strip()) is None:
                return _json_error(401, "invalid token: create one with `mailgate admin token`",
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        elif _logged_in(request):
            if request.method not in ("GET", "HEAD"):
                problem = _csrf_error(request, request.headers.get("x-csrf-token"))
                if problem is not None:
                    return _json_error(403, problem)
        else:
            return _json_error(
                401, "authentication required: send Authorization: Bearer <token> "
                "(from `mailgate admin token`), or log in at /admin/login",
                {"WWW-Authenticate": "Bearer"})
        if _ctx(request).queue is None:
            return _json_error(503, "no queue: the web app runs without a server")
        try:
            return await fn(request)
        except NotFound as exc:
            return _json_error(404, str(exc))
        except QueueError as exc:
            return _json_error(503, str(exc))

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def _message_id(request: Request) -> str:
    message_id: str = request.path_params["id"]
    if not _ID_RE.match(message_id):
        raise NotFound(f"{message_id!r} is not a queue id")
    return message_id


@_api
async def api_queue(request: Request) -> Response:
    ctx = _ctx(request)
    assert ctx.queue is not None
    f, errors = parse_filters(request.query_params, strict=True)
    if errors:
        return _json_error(400, " ".join(errors))
    for cursor in (f.before, f.after):
        if cursor is not None:
            await ctx.run(ctx.queue.show, cursor)  # NotFound -> 404 names the cursor
    page = await _load_page(ctx, f)
    counts = await ctx.run(ctx.queue.counts)
    return JSONResponse({
        "filters": f.as_json(),
        "counts": counts,
        "messages": [message_json(m) for m in page.messages],
        "newer": page.newer,
        "older": page.older,
    })


@_api
async def api_message(request: Request) -> Response:
    ctx = _ctx(request)
    assert ctx.queue is not None
    msg: QueuedMessage = await ctx.run(ctx.queue.show, _message_id(request), True)
    data = message_json(msg)
    data["headers"] = [[k, v] for k, v in _headers(msg.content or b"")]
    return JSONResponse(data)


@_api
async def api_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ("retry", "hold", "release"):
        return _json_error(404, f"no action {action!r}: use retry, hold or release "
                           "(DELETE /api/queue/{id} deletes)")
    message_id = _message_id(request)
    n = await _act(_ctx(request), action, message_id)
    return JSONResponse({"id": message_id, "action": action, "recipients": n})


@_api
async def api_delete(request: Request) -> Response:
    message_id = _message_id(request)
    await _act(_ctx(request), "delete", message_id)
    return JSONResponse({"id": message_id, "action": "delete", "recipients": None})


async def api_message_or_delete(request: Request) -> Response:
    # One route for both methods, so a 405 lists them all in its Allow header.
    if request.method == "DELETE":
        return await api_delete(request)
    return await api_message(request)


@_api
async def api_stats(request: Request) -> Response:
    stats = await _stats(_ctx(request))
    del stats["_buckets"]
    return JSONResponse(stats)


def routes() -> list[BaseRoute]:
    return [
        Route("/admin/login", login_page, methods=["GET"], name="admin_login"),
        Route("/admin/login", login_submit, methods=["POST"]),
        Route("/admin/logout", logout, methods=["POST"], name="admin_logout"),
        Route("/admin", dashboard, methods=["GET"], name="admin"),
        Route("/admin/queue", queue_page, methods=["GET"], name="admin_queue"),
        Route("/admin/message/{id}", message_page, methods=["GET"], name="admin_message"),
        Route("/admin/message/{id}/{action}", message_action, methods=["GET", "POST"]),
        Route("/admin/{rest:path}", admin_unknown, methods=["GET", "POST"]),
        Route("/api/queue", api_queue, methods=["GET"]),
        Route("/api/queue/{id}", api_message_or_delete, methods=["GET", "DELETE"]),
        Route("/api/queue/{id}/{action}", api_action, methods=["POST"]),
        Route("/api/stats", api_stats, methods=["GET"]),
    ]


# ---------------------------------------------------------------------- OpenAPI

_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
_ERR = {"description": "Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/AdminError"}}}}
_ERRORS = {
    "401": {**_ERR, "description": "No valid token or session"},
    "503": {**_ERR, "description": "No queue, or the queue failed"},
}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "description": "Queue id",
             "schema": {"type": "string", "pattern": ID_PATTERN}}
_NULLABLE_STR = {"type": ["string", "null"]}
_REPLY = {"type": ["object", "null"], "properties": {
    "code": {"type": "integer"}, "enhanced": _NULLABLE_STR, "text": _NULLABLE_STR}}

OPENAPI_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A token from `mailgate admin token`."},
        "session": {"type": "apiKey", "in": "cookie", "name": "mailgate_session",
                    "description": "The admin's login session (same-origin use; writes "
                                   "need the X-CSRF-Token header)."},
    },
    "schemas": {
        "AdminError": {"type": "object", "required": ["error", "status"], "properties": {
            "error": {"type": "string"}, "status": {"type": "integer"}}},
        "QueueRecipient": {"type": "object", "required": ["id", "address", "state"],
                           "properties": {
                               "id": {"type": "integer"}, "address": {"type": "string"},
                               "state": {"type": "string",
                                         "enum": [s.value for s in RecipientState]},
                               "attempts": {"type": "integer"},
                               "next_attempt": {"type": ["number", "null"]},
                               "delay_notified": {
                                   "type": "boolean",
                                   "description": "the sender got a delay notice about "
                                                  "this recipient"},
                               "held_reason": {
                                   **_NULLABLE_STR,
                                   "description": "why the recipient is held, when "
                                                  "mailgate held it (a message that broke "
                                                  "delivery) or the hold said why"},
                               "last_reply": _REPLY}},
        "QueueAttempt": {"type": "object", "properties": {
            "recipient_id": {"type": "integer"}, "at": {"type": "number"},
            "host": {"type": "string"}, "code": {"type": "integer"},
            "enhanced": _NULLABLE_STR, "text": {"type": "string"},
            "outcome": {"type": "string", "enum": ["delivered", "deferred", "failed"]},
            "remote": {"type": "boolean"}, "tls": _NULLABLE_STR}},
        "QueueMessage": {"type": "object",
                         "required": ["id", "sender", "received_at", "size", "recipients"],
                         "properties": {
                             "id": {"type": "string"}, "sender": {"type": "string"},
                             "received_at": {"type": "number"}, "size": {"type": "integer"},
                             "client": {"type": "object"}, "dsn": {"type": "object"},
                             "smtputf8": {"type": "boolean"}, "body_8bit": {"type": "boolean"},
                             "recipients": {"type": "array", "items": {
                                 "$ref": "#/components/schemas/QueueRecipient"}},
                             "attempts": {"type": "array", "items": {
                                 "$ref": "#/components/schemas/QueueAttempt"}},
                             "headers": {"type": "array", "items": {
                                 "type": "array", "items": {"type": "string"},
                                 "minItems": 2, "maxItems": 2}}}},
        "QueuePage": {"type": "object", "required": ["counts", "messages"], "properties": {
            "filters": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "messages": {"type": "array",
                         "items": {"$ref": "#/components/schemas/QueueMessage"}},
            "newer": {**_NULLABLE_STR, "description": "`after` for the page of newer ones"},
            "older": {**_NULLABLE_STR, "description": "`before` for the page of older ones"},
        }},
        "QueueActionResult": {"type": "object", "required": ["id", "action"], "properties": {
            "id": {"type": "string"},
            "action": {"type": "string", "enum": ["retry", "hold", "release", "delete"]},
            "recipients": {"type": ["integer", "null"],
                           "description": "How many recipients the action changed"}}},
        "QueueStats": {"type": "object", "properties": {
            "now": {"type": "number"},
            "last_hour": {"type": "object", "additionalProperties": {"type": "integer"}},
            "last_day": {"type": "object", "additionalProperties": {"type": "integer"}},
            "refused": {"type": ["integer", "null"],
                        "description": "Refused by the server since it started"},
            "queue": {"type": "object", "additionalProperties": {"type": "integer"}},
            "server": {"type": "object"},
            "started": {"type": "number"},
            "hourly": {"type": "array", "items": {"type": "object"}}}},
    },
}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _filter_params() -> list[dict[str, Any]]:
    def q(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": text,
                "schema": schema}

    return [
        q("state", {"type": "string", "enum": [s.value for s in RecipientState]},
          "Only messages with a recipient in this state"),
        q("domain", {"type": "string", "pattern": DOMAIN_PATTERN},
          "Only messages with a recipient in this domain"),
        q("sender", {"type": "string", "pattern": SENDER_PATTERN},
          "Only messages from this sender (<> for the null sender)"),
        q("older_than", {"type": "number", "minimum": 0, "maximum": MAX_AGE_HOURS},
          "Only messages queued more than this many hours ago"),
        q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                    "default": PAGE_SIZE}, "Page size"),
        q("before", {"type": "string", "pattern": ID_PATTERN},
          "Page of messages older than this one (`older` of a page)"),
        q("after", {"type": "string", "pattern": ID_PATTERN},
          "Page of messages newer than this one (`newer` of a page)"),
    ]


OPENAPI_PATHS: dict[str, Any] = {
    "/api/queue": {"get": {
        "tags": ["queue"], "summary": "List the queue, newest first (filters, keyset pages)",
        "operationId": "listQueue", "security": _SECURITY, "parameters": _filter_params(),
        "responses": {"200": _ok("A page of messages", "QueuePage"),
                      "400": {**_ERR, "description": "Bad filter"},
                      "404": {**_ERR, "description": "The cursor message is gone"},
                      **_ERRORS}}},
    "/api/queue/{id}": {
        "get": {"tags": ["queue"], "summary": "One message with headers and every attempt",
                "operationId": "showMessage", "security": _SECURITY,
                "parameters": [_ID_PARAM],
                "responses": {"200": _ok("The message", "QueueMessage"),
                              "404": {**_ERR, "description": "Not in the queue"},
                              **_ERRORS}},
        "delete": {"tags": ["queue"], "summary": "Delete a message (no bounce is sent)",
                   "operationId": "deleteMessage", "security": _SECURITY,
                   "parameters": [_ID_PARAM],
                   "responses": {"200": _ok("Deleted", "QueueActionResult"),
                                 "403": {**_ERR, "description": "CSRF check failed"},
                                 "404": {**_ERR, "description": "Not in the queue"},
                                 **_ERRORS}}},
    **{
        f"/api/queue/{{id}}/{action}": {"post": {
            "tags": ["queue"], "summary": summary, "operationId": f"{action}Message",
            "security": _SECURITY, "parameters": [_ID_PARAM],
            "responses": {"200": _ok("Done", "QueueActionResult"),
                          "403": {**_ERR, "description": "CSRF check failed"},
                          "404": {**_ERR, "description": "Not in the queue"},
                          **_ERRORS}}}
        for action, summary in (
            ("retry", "Make queued and deferred recipients due now"),
            ("hold", "Hold undelivered recipients"),
            ("release", "Release held recipients, due now"),
        )
    },
    "/api/stats": {"get": {
        "tags": ["queue"], "summary": "Accepted, delivered, deferred, bounced, refused; "
        "queue size by state; hourly activity of the last 24 hours",
        "operationId": "queueStats", "security": _SECURITY,
        "responses": {"200": _ok("Counts", "QueueStats"), **_ERRORS}}},
}
