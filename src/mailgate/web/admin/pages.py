"""The admin's HTML pages over the queue: the dashboard with its chart, the queue with
its filters and pages, one message with its headers and attempts, and the actions on it.

Actions ask for confirmation first: a `confirm()` dialog, or without JavaScript a
confirmation page; the POST carries the session's CSRF token. The filters, the paging
and the counts are shared with the JSON API (`api.py`).
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailgate.queue import (
    FINAL_STATES,
    ActivityBucket,
    NotFound,
    QueuedMessage,
    QueueError,
    Recipient,
    RecipientState,
)
from mailgate.web.admin import session
from mailgate.web.admin.render import (
    _ago,
    _error_page,
    _no_queue,
    _page,
    _render,
    _w,
    _when,
    _wn,
    admin_words,
)
from mailgate.web.admin.session import _csrf_error, _ctx, _flash, _form
from mailgate.web.context import WebContext
from mailgate.web.lang import pick_lang

__all__ = ["ACTIONS", "Filters", "chart_svg", "parse_filters", "routes"]

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


def _next_label(r: Recipient, now: float, lang: str = "en") -> str:
    if r.state in FINAL_STATES or r.state is RecipientState.HELD or r.next_attempt is None:
        return "-"
    if r.next_attempt <= now:
        return admin_words(lang)["due_now"]
    return f"{_when(r.next_attempt)} ({_ago(r.next_attempt, now, lang)})"


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
    # Finished messages too (delivered or bounced, on record for [queue] keep_records);
    # by default only the live queue, as `mailgate queue list`.
    history: bool = False

    def query(self, **changes: object) -> str:
        """The query string of these filters, with `changes` (None drops a key)."""
        values: dict[str, object] = {
            "state": self.state.value if self.state else None,
            "domain": self.domain,
            "sender": None if self.sender is None else (self.sender or "<>"),
            "older_than": None if self.older_than is None else f"{self.older_than:g}",
            "limit": self.limit if self.limit != PAGE_SIZE else None,
            "all": "1" if self.history else None,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value if self.state else None, "domain": self.domain,
            "sender": self.sender, "older_than": self.older_than, "limit": self.limit,
            "before": self.before, "after": self.after, "all": self.history,
        }


def parse_filters(params: Mapping[str, str], strict: bool = False, lang: str = "en"
                  ) -> tuple[Filters, list[str]]:
    """Filters from a query string; a list of sentences for whatever is wrong.

    The page is lenient with what people type (spaces around values, `@example.org`,
    `<user@example.org>`, empty fields); the API (`strict`) takes exactly what its
    OpenAPI schema describes, checked with the very patterns the schema publishes."""
    errors: list[str] = []
    words = admin_words(lang)

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
            errors.append(words["bad_state"].format(
                value=repr(text), states=", ".join(s.value for s in RecipientState)))
    domain = value("domain")
    if domain is not None and not strict:
        domain = domain.lower().lstrip("@") or None
    if domain is not None:
        if ok(DOMAIN_PATTERN, domain):
            domain = domain.rstrip("\n").lower() or None
        else:
            errors.append(words["bad_domain"])
            domain = None
    sender = value("sender")
    if sender is not None and not strict and sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip() or "<>"  # <user@example.org> -> user@example.org
    if sender is not None:
        if ok(SENDER_PATTERN, sender):
            sender = "" if sender == "<>" else sender.rstrip("\n") or None
        else:
            errors.append(words["bad_sender"])
            sender = None
    older_than = None
    text = value("older_than")
    if text is not None:
        number = float(text) if ok(NUMBER_PATTERN, text) else math.nan
        if math.isfinite(number) and 0 <= number <= MAX_AGE_HOURS:
            older_than = number
        else:
            errors.append(words["bad_age"].format(value=repr(text), max=MAX_AGE_HOURS))
    limit = PAGE_SIZE
    text = value("limit")
    if text is not None:
        if ok(r"^[0-9]{1,9}$", text) and 1 <= int(text) <= MAX_PAGE_SIZE:
            limit = int(text)
        else:
            errors.append(words["bad_limit"].format(value=repr(text), max=MAX_PAGE_SIZE))
    cursors: dict[str, str | None] = {}
    for name in ("before", "after"):
        cursor = value(name)
        if cursor is not None:
            if ok(ID_PATTERN, cursor):
                cursor = cursor.rstrip("\n")
            else:
                errors.append(words["bad_cursor"].format(name=repr(name)))
                cursor = None
        cursors[name] = cursor
    history = False
    text = value("all")
    if text is not None:
        if text in ("1", "true") or (not strict and text.lower() in ("on", "yes")):
            history = True
        elif text not in ("0", "false") and (strict or text != ""):
            errors.append(f"'all' {text!r} must be 1 or true (finished messages too), "
                          "or 0 or false.")
    return Filters(state, domain, sender, older_than, limit, cursors["before"],
                   cursors["after"], history), errors


@dataclass(frozen=True, slots=True)
class _Page:
    messages: list[QueuedMessage]
    newer: str | None  # cursor for the page of newer messages ("after=")
    older: str | None  # cursor for the page of older messages ("before=")
    notice: str | None = None


async def _load_page(ctx: WebContext, f: Filters, lang: str = "en") -> _Page:
    assert ctx.queue is not None
    queue = ctx.queue
    cutoff = None if f.older_than is None else session._now() - f.older_than * 3600

    def fetch(before: str | None, after: str | None) -> list[QueuedMessage]:
        return queue.list(state=f.state, limit=f.limit + 1, sender=f.sender,
                          recipient_domain=f.domain, queued_before=cutoff,
                          before=before, after=after, live_only=not f.history)

    notice = None
    try:
        found: list[QueuedMessage] = await ctx.run(fetch, f.before, f.after)
    except NotFound:
        notice = admin_words(lang)["page_left"]
        found = await ctx.run(fetch, None, None)
        f = Filters(f.state, f.domain, f.sender, f.older_than, f.limit,
                    history=f.history)
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


def chart_svg(buckets: list[ActivityBucket], lang: str = "en") -> Markup:
    """Grouped bars per bucket (accepted, delivered, deferred, bounced), as inline SVG."""
    width, height, left, top, bottom = 720, 200, 40, 12, 28
    plot_w, plot_h = width - left - 8, height - top - bottom
    peak = max((getattr(b, name) for b in buckets for name, _ in _SERIES), default=0)
    ymax = _nice_max(peak)
    n = max(1, len(buckets))
    slot = plot_w / n
    bar = max(1.0, (slot - 4) / len(_SERIES))
    words = admin_words(lang)
    parts = [
        f'<svg class="admin-chart" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="chart-title" preserveAspectRatio="xMidYMid meet">',
        f'<title id="chart-title">{escape(words["chart_title"])}</title>',
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
                f'{escape(words["legend_" + name])}</title></rect>'
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
    now = session._now()
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
    for report in await ctx.siblings():  # the other workers' counters, added
        for key, value in (report.get("stats") or {}).items():
            if isinstance(value, int) and isinstance(server.get(key, 0), int):
                server[key] = server.get(key, 0) + value
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


@_page
async def dashboard(request: Request) -> Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    try:
        stats = await _stats(ctx)
    except QueueError as exc:
        return _error_page(request, 503, _w(request, "queue_unavailable"), str(exc))
    return _render(request, "admin/dashboard.html", {
        "title": _w(request, "dashboard"),
        "page_id": "dashboard",
        "stats": stats,
        "chart": chart_svg(stats["_buckets"], pick_lang(request)),
        "buckets": stats["_buckets"],
        "states": [s.value for s in RecipientState],
    })


@_page
async def queue_page(request: Request) -> Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    lang = pick_lang(request)
    f, errors = parse_filters(request.query_params, lang=lang)
    base = {"title": _w(request, "queue"), "page_id": "queue", "filters": f,
            "states": [s.value for s in RecipientState], "form": request.query_params}
    if errors:
        return _render(request, "admin/queue.html", {**base, "errors": errors, "page": None,
                                                     "counts": None}, 400)
    try:
        page = await _load_page(ctx, f, lang)
        counts = await ctx.run(ctx.queue.counts)
    except QueueError as exc:
        return _error_page(request, 503, _w(request, "queue_unavailable"), str(exc))
    return _render(request, "admin/queue.html", {**base, "errors": [], "page": page,
                                                 "counts": counts})


async def _message(request: Request) -> QueuedMessage | Response:
    ctx = _ctx(request)
    if ctx.queue is None:
        return _no_queue(request)
    message_id = request.path_params["id"]
    if not _ID_RE.match(message_id):
        return _error_page(request, 404, _w(request, "no_message"),
                           _w(request, "not_a_queue_id", value=repr(message_id)))
    try:
        msg: QueuedMessage = await ctx.run(ctx.queue.show, message_id, True)
    except NotFound:
        return _error_page(request, 404, _w(request, "no_message"),
                           _w(request, "not_in_queue", id=message_id))
    except QueueError as exc:
        return _error_page(request, 503, _w(request, "queue_unavailable"), str(exc))
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
    now = session._now()
    attempts: dict[int, list[Any]] = {r.id: [] for r in msg.recipients}
    for rid, attempt in msg.attempts:
        attempts.setdefault(rid, []).append(attempt)
    lang = pick_lang(request)
    return _render(request, "admin/message.html", {
        "title": _w(request, "message_title", id=msg.id),
        "m": msg,
        "headers": _headers(msg.content or b""),
        "attempts": attempts,
        "next_label": lambda r: _next_label(r, now, lang),
        "possible": _possible(msg),
        "actions": ACTIONS,
    })


# Each action's button label and the sentence that asks for confirmation (word keys).
_CONFIRM = {
    "retry": ("retry_now", "confirm_retry"),
    "hold": ("hold", "confirm_hold"),
    "release": ("release", "confirm_release"),
    "delete": ("delete", "confirm_delete"),
}


@_page
async def message_action(request: Request) -> Response:
    ctx = _ctx(request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        return _error_page(request, 404, _w(request, "no_action"),
                           _w(request, "not_an_action", value=repr(action),
                              actions=", ".join(ACTIONS)))
    if request.method == "POST":
        form = await _form(request)
        if form is None:
            return _error_page(request, 400, _w(request, "bad_form"),
                               _w(request, "form_unreadable"))
        problem = _csrf_error(request, form.get("csrf"), pick_lang(request))
        if problem is not None:
            return _error_page(request, 403, _w(request, "refused_title"), problem)
        confirmed = form.get("confirmed") == "1"
    else:
        confirmed = False
    msg = await _message(request)
    if isinstance(msg, Response):
        return msg
    if not confirmed:
        label_key, text_key = _CONFIRM[action]
        label, text = _w(request, label_key), _w(request, text_key)
        return _render(request, "admin/confirm.html", {
            "title": f"{label}: {msg.id}", "m": msg, "action": action, "label": label,
            "text": text,
        })
    try:
        n = await _act(ctx, action, msg.id)
    except NotFound:
        return _error_page(request, 404, _w(request, "no_message"),
                           _w(request, "left_queue", id=msg.id, action=action))
    except QueueError as exc:
        return _error_page(request, 503, _w(request, "queue_unavailable"), str(exc))
    if action == "delete":
        _flash(request, _w(request, "deleted", id=msg.id))
        return RedirectResponse("/admin/queue", status_code=303)
    _flash(request, _wn(request, f"done_{action}", n))
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
    return _error_page(request, 404, _w(request, "not_found"), _w(request, "no_admin_page"))


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", dashboard, methods=["GET"], name="admin"),
        Route("/admin/queue", queue_page, methods=["GET"], name="admin_queue"),
        Route("/admin/message/{id}", message_page, methods=["GET"], name="admin_message"),
        Route("/admin/message/{id}/{action}", message_action, methods=["GET", "POST"]),
        Route("/admin/{rest:path}", admin_unknown, methods=["GET", "POST"]),
    ]
