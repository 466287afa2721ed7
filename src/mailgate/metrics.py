"""Prometheus metrics: what the server, delivery and DNS count (`/metrics` is web/metrics.py).

The metrics live in a `CollectorRegistry` of this module (one per process), not in
prometheus-client's global default registry, so nothing else that registers there
(a library, a test) shows up in or collides with mailgate's metrics.

The server, the delivery engine and the resolver call these helpers; each is a
dictionary look-up of a pre-bound child and an increment, cheap enough for the hot
path (no label dictionaries built, no string formatting per call for known labels):

    connection_opened()                 # a client connected: open +1, total +1
    connection_closed()                 # it went away: open -1
    connection_refused(reason)          # refused at once: limit | per_ip | shutdown
    connection_timeout()                # closed for missing a deadline (421 4.4.2)
    auth_refused()                      # AUTH refused unchecked: too many failures
    command(verb)                       # one SMTP command received ("EHLO", "MAIL", ...)
    reply_sent(code)                    # one reply sent, by basic code (250, 550, ...)
    message_accepted()                  # a message queued (250 after DATA/BDAT)
    message_refused()                   # a message refused at the end of DATA/BDAT
    delivery(outcome, code, latency)    # one recipient's delivery attempt ended:
                                        #   outcome "delivered" | "deferred" | "failed",
                                        #   code the reply code (None: no reply),
                                        #   latency seconds from arrival, for "delivered"
    dns_lookup(result)                  # one DNS query: "data" | "nodata" | "nxdomain" | "error"
    outbound_connection(level, tls)     # one outbound SMTP conversation at TLS `level`
                                        #   (none | may | encrypt | verify), and whether
                                        #   it ran encrypted
    notice(kind)                        # a DSN queued for a sender: failure | delay | success
    auth_result(method, result)         # an inbound check's verdict: spf | dkim | dmarc | arc,
                                        #   pass | fail | ... (RFC 8601 result names)
    worker_error(worker)                # a delivery worker (local | outbound) caught an
                                        #   unexpected error handling a message
    worker_restart(worker)              # a delivery task ended unexpectedly and was restarted

Queue sizes by state are not pushed: `/metrics` asks the queue (`queue.counts()`) when
scraped. `exposition()` gives the text; the web app serves it at `/metrics`. This module
imports nothing of mailgate (a leaf), so the server, the engine, the resolver and the web
app can all use it: the queue's state names are spelled here (`QUEUE_STATES`), and a test
(tests/test_layering.py) keeps them equal to `queue.RecipientState`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

__all__ = [
    "REGISTRY",
    "auth_refused",
    "auth_result",
    "command",
    "connection_closed",
    "connection_opened",
    "connection_refused",
    "connection_timeout",
    "delivery",
    "dns_lookup",
    "exposition",
    "message_accepted",
    "message_refused",
    "notice",
    "outbound_connection",
    "reply_sent",
    "samples",
    "set_queue_counts",
    "worker_error",
    "worker_restart",
]

# `*_created` series (one per labelled child) double the output and no dashboard of ours
# reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
K = TypeVar("K")

CONNECTIONS_OPEN = Gauge(
    "mailgate_connections_open", "SMTP connections open now.", registry=REGISTRY)
CONNECTIONS = Counter(
    "mailgate_connections_total", "SMTP connections accepted.", registry=REGISTRY)
COMMANDS = Counter(
    "mailgate_commands_total", "SMTP commands received, by verb (unknown verbs: other).",
    ["command"], registry=REGISTRY)
REPLIES = Counter(
    "mailgate_replies_total", "SMTP replies sent, by basic reply code.", ["code"],
    registry=REGISTRY)
ACCEPTED = Counter(
    "mailgate_messages_accepted_total", "Messages accepted into the queue.", registry=REGISTRY)
REFUSED = Counter(
    "mailgate_messages_refused_total", "Messages refused at the end of DATA or BDAT.",
    registry=REGISTRY)
DELIVERIES = Counter(
    "mailgate_deliveries_total",
    "Delivery attempts per recipient, by outcome and reply code (none: no reply).",
    ["outcome", "code"], registry=REGISTRY)
QUEUE = Gauge(
    "mailgate_queue_recipients", "Recipients in the queue, by state (read when scraped).",
    ["state"], registry=REGISTRY)
LATENCY = Histogram(
    "mailgate_delivery_latency_seconds",
    "Time from a message's arrival to its delivery, per delivered recipient.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
             24 * 3600, 5 * 24 * 3600),
    registry=REGISTRY)
DNS = Counter(
    "mailgate_dns_lookups_total", "DNS queries sent, by result.", ["result"],
    registry=REGISTRY)
OUTBOUND = Counter(
    "mailgate_outbound_connections_total",
    "Outbound SMTP connections (one kept and used again counts once), by TLS level and "
    "whether they ran encrypted.",
    ["tls_level", "encrypted"], registry=REGISTRY)
REFUSED_CONNECTIONS = Counter(
    "mailgate_connections_refused_total",
    "SMTP connections refused at once, by reason (limit, per_ip, shutdown).",
    ["reason"], registry=REGISTRY)
TIMEOUTS = Counter(
    "mailgate_connection_timeouts_total",
    "SMTP connections closed because the client missed a deadline.", registry=REGISTRY)
AUTH_REFUSED = Counter(
    "mailgate_auth_refused_total",
    "AUTH attempts refused without checking the password: too many recent failures.",
    registry=REGISTRY)
NOTICES = Counter(
    "mailgate_notices_total",
    "Delivery status notifications (RFC 3464) queued for senders, by kind.",
    ["kind"], registry=REGISTRY)

AUTH_RESULTS = Counter(
    "mailgate_auth_results_total",
    "Verdicts of the inbound checks on strangers' mail (SPF once per MAIL FROM, DKIM per "
    "signature, DMARC per From domain, ARC per message), by method and result.",
    ["method", "result"], registry=REGISTRY)

WORKER_ERRORS = Counter(
    "mailgate_delivery_worker_errors_total",
    "Unexpected errors a delivery worker caught while handling a message (the message "
    "is held with the error, the rest keeps moving), by worker.",
    ["worker"], registry=REGISTRY)
WORKER_RESTARTS = Counter(
    "mailgate_delivery_worker_restarts_total",
    "Delivery tasks that ended unexpectedly and were restarted, by worker.",
    ["worker"], registry=REGISTRY)

VERBS = ("HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT",
         "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "ETRN", "ATRN", "other")
DNS_RESULTS = ("data", "nodata", "nxdomain", "error", "other")
OUTCOMES = ("delivered", "deferred", "failed")
TLS_LEVELS = ("none", "may", "encrypt", "verify")
NOTICE_KINDS = ("failure", "delay", "success")
WORKERS = ("local", "outbound")
AUTH_METHODS = ("spf", "dkim", "dmarc", "arc")
AUTH_VERDICTS = ("pass", "fail", "softfail", "neutral", "none", "policy", "temperror",
                 "permerror")
QUEUE_STATES = ("queued", "deferred", "held", "delivered", "failed")  # RecipientState

# Pre-bound children: the hot path only looks them up.
_connections_open_inc = CONNECTIONS_OPEN.inc
_connections_open_dec = CONNECTIONS_OPEN.dec
_connections_inc = CONNECTIONS.inc
_accepted_inc = ACCEPTED.inc
_refused_inc = REFUSED.inc
_command = {v: COMMANDS.labels(v) for v in VERBS}
_command_other = _command["other"]
_reply: dict[int, Counter] = {}
_delivery: dict[tuple[str, int | None], Counter] = {}
_dns = {r: DNS.labels(r) for r in DNS_RESULTS}
_dns_other = _dns["other"]
_queue = {s: QUEUE.labels(s) for s in QUEUE_STATES}
_outbound = {(level, tls): OUTBOUND.labels(level, "yes" if tls else "no")
             for level in TLS_LEVELS for tls in (True, False)}
_notices = {k: NOTICES.labels(k) for k in NOTICE_KINDS}
_refused_connections = {r: REFUSED_CONNECTIONS.labels(r) for r in ("limit", "per_ip", "shutdown")}
_latency_observe = LATENCY.observe
_worker_errors = {w: WORKER_ERRORS.labels(w) for w in WORKERS}
_worker_restarts = {w: WORKER_RESTARTS.labels(w) for w in WORKERS}
_auth_results = {(m, r): AUTH_RESULTS.labels(m, r) for m in AUTH_METHODS
                 for r in AUTH_VERDICTS}

# The codes mailgate itself says most, bound at import so their series exist from the
# start (a rate over a series that appears late misses its first increments).
for _code in (220, 221, 250, 354, 421, 450, 451, 452, 500, 501, 502, 503, 550, 554, 556):
    _reply[_code] = REPLIES.labels(str(_code))


def _count(children: Mapping[K, Counter], key: K) -> None:
    """Increment the pre-bound child for `key`; an unknown key counts nowhere, so a
    caller's typo cannot create series."""
    child = children.get(key)
    if child is not None:
        child.inc()


def connection_opened() -> None:
    _connections_inc()
    _connections_open_inc()


def connection_closed() -> None:
    _connections_open_dec()


def connection_refused(reason: str) -> None:
    _count(_refused_connections, reason)


def connection_timeout() -> None:
    TIMEOUTS.inc()


def auth_refused() -> None:
    AUTH_REFUSED.inc()


def command(verb: str) -> None:
    """One command received; `verb` as the client sent it (any case)."""
    child = _command.get(verb)
    if child is None:
        child = _command.get(verb.upper(), _command_other)
    child.inc()


def reply_sent(code: int) -> None:
    child = _reply.get(code)
    if child is None:
        # Only three-digit codes make series, so a bug cannot explode the label set.
        child = _reply[code] = REPLIES.labels(str(code) if 200 <= code <= 599 else "other")
    child.inc()


def message_accepted() -> None:
    _accepted_inc()


def message_refused() -> None:
    _refused_inc()


def delivery(outcome: str, code: int | None, latency: float | None = None) -> None:
    """One recipient's attempt ended; `latency` (seconds since arrival) when delivered."""
    key = (outcome, code)
    child = _delivery.get(key)
    if child is None:
        label = "none" if code is None else str(code) if 200 <= code <= 599 else "other"
        child = _delivery[key] = DELIVERIES.labels(
            outcome if outcome in OUTCOMES else "other", label)
    child.inc()
    if latency is not None and outcome == "delivered":
        _latency_observe(latency)


def dns_lookup(result: str) -> None:
    """One DNS query answered (or not): data, nodata, nxdomain or error."""
    _dns.get(result, _dns_other).inc()


def outbound_connection(level: str, tls: bool) -> None:
    """One outbound connection's first conversation ended; `tls` whether it ran
    encrypted."""
    _count(_outbound, (level, tls))


def notice(kind: str) -> None:
    """A DSN of `kind` (failure, delay, success) was queued for a sender."""
    _count(_notices, kind)


def auth_result(method: str, result: str) -> None:
    """One verdict of an inbound check (server/authcheck)."""
    _count(_auth_results, (method, result))


def worker_error(worker: str) -> None:
    """A delivery worker (local, outbound) caught an unexpected error."""
    _count(_worker_errors, worker)


def worker_restart(worker: str) -> None:
    """A delivery task (local, outbound) ended unexpectedly and is restarted."""
    _count(_worker_restarts, worker)


def set_queue_counts(counts: Mapping[str, int]) -> None:
    """Set the queue gauge from `queue.counts()`; states it does not name are 0."""
    for state, child in _queue.items():
        child.set(counts.get(state, 0))


Sample = tuple[str, dict[str, str], float]  # name, labels, value
_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def samples() -> list[Sample]:
    """This process's samples, for the worker that serves `/metrics` to add to its own
    (with `[server] workers = N`, siblings.Link carries them as JSON)."""
    return [(s.name, dict(s.labels), s.value) for family in REGISTRY.collect()
            for s in family.samples]


class _Families:
    """A collector of families made already (what `exposition` renders)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def exposition(others: Iterable[Iterable[Sample]] = ()) -> bytes:
    """The Prometheus text of this process's metrics, each sample plus those of the
    same name and labels in `others` (the sibling workers'). Every metric here adds up:
    counters, histograms, open connections, and the queue gauge that only the web
    worker sets."""
    extra: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for rows in others:
        for name, labels, value in rows:
            extra[name, tuple(sorted(labels.items()))] += value
    if not extra:
        return generate_latest(REGISTRY)
    families = []
    for family in REGISTRY.collect():
        summed = Metric(family.name, family.documentation, family.type, family.unit)
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            summed.add_sample(s.name, dict(s.labels), s.value + extra.pop(key, 0.0))
        names = {family.name + suffix for suffix in _SUFFIXES}
        for key in [k for k in extra if k[0] in names]:  # series only a sibling has
            summed.add_sample(key[0], dict(key[1]), extra.pop(key))
        families.append(summed)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
