"""The durable queue: messages and per-recipient state.

The interface is backend-neutral; `queue/sqlite/` is the default backend (one file,
WAL, `synchronous=FULL`, group commit) and a PostgreSQL backend for clusters will
implement the same `Queue` protocol. Nothing outside `queue/` knows which one it has.

A message is accepted (`250`) only after `enqueue()` has returned: by then the message
and its envelope are on stable storage. Delivery is at-least-once: a crash may repeat a
delivery (a claim expires and the work becomes due again), never lose one.
"""

from __future__ import annotations

import builtins
import enum
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mailgate.queue.spool import SpoolFile

__all__ = [
    "ActivityBucket",
    "Attempt",
    "Enqueue",
    "NewMessage",
    "NewRecipient",
    "NoQueue",
    "NotFound",
    "Queue",
    "QueueError",
    "QueueFull",
    "QueueUnavailable",
    "QueuedMessage",
    "Recipient",
    "RecipientState",
    "WorkItem",
    "domain_of",
    "new_queue_id",
]


class QueueError(RuntimeError):
    """The queue could not do what was asked (storage error, unknown id, ...)."""


class QueueFull(QueueError):
    """Storage is full or failed while writing: answer 452 4.3.1, keep what is stored."""


class QueueUnavailable(QueueError):
    """The queue's database cannot be reached now (a PostgreSQL server restarting, the
    network down): nothing was stored; the same request may succeed in a moment. The
    server answers 451 4.3.0, and `serve` waits for it at start."""


class NotFound(QueueError):
    """The id names no message (or recipient) in the queue: it may have been delivered
    and removed, or deleted by an administrator. The web page answers 404, the CLI says so."""


class NoQueue(QueueError):
    """`open_queue(..., create=False)` found no queue where the configuration points."""


class RecipientState(enum.StrEnum):
    QUEUED = "queued"  # due for (another) attempt at next_attempt
    DEFERRED = "deferred"  # a temporary failure; due again at next_attempt
    HELD = "held"  # an administrator put it on hold; never due until released
    DELIVERED = "delivered"
    FAILED = "failed"  # permanent failure (a bounce is owed unless NOTIFY says otherwise)


FINAL_STATES = frozenset({RecipientState.DELIVERED, RecipientState.FAILED})


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str  # as the envelope has it: "user@example.org" (no angle brackets)
    orcpt: str | None = None  # DSN ORCPT "rfc822;user@example.org"
    notify: tuple[str, ...] | None = None  # DSN NOTIFY


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What the server hands the queue at the end of DATA."""

    sender: str  # reverse-path without brackets; "" for the null sender <>
    recipients: Sequence[NewRecipient]
    content: bytes  # the message as it will be delivered (trace headers included)
    received_at: float  # unix time
    client_address: str = ""  # "192.0.2.1" or "[::1]" style is not required: plain IP
    client_helo: str = ""
    protocol: str = "ESMTP"  # ESMTP, ESMTPS, ESMTPSA, SMTP, ...
    authenticated_as: str | None = None
    envid: str | None = None  # DSN ENVID
    ret: str | None = None  # DSN RET: FULL | HDRS
    smtputf8: bool = False
    body_8bit: bool = False
    # Every line end of `content` is CRLF (the server's DATA reader made it so): stored
    # with the message, so that delivery need not check it again (`Envelope.crlf`).
    crlf: bool = False
    id: str | None = None  # chosen by the caller (it is in the Received header), or by enqueue
    # The content written to a spool file as it arrived (the server's way: a big message
    # is never whole in memory); when set, `content` is unused and the backend reads the
    # file in pieces. The caller removes the file after enqueue returns.
    spool: SpoolFile | None = None

    @property
    def size(self) -> int:
        return self.spool.size if self.spool is not None else len(self.content)

    def with_id(self, new_id: str) -> NewMessage:
        """The message under another queue id: what a backend does when the id the caller
        chose is taken (a clash must never reach the client as an error).

        A caller-chosen id appears in the content once, in mailgate's own trace field at
        the top (`... with ESMTP id <qid>;`, or `id <qid>` at the end of a line, after a
        space or a tab); that one occurrence is rewritten, in the spool's head (kept in
        memory, so the body is never read) or in `content`. The spool's head is changed
        in place."""
        old = f"id {self.id}".encode() if self.id else b""
        new = f"id {new_id}".encode()
        if self.spool is not None:
            if old:
                self.spool.head = _replace_in_head(self.spool.head, old, new)
            return replace(self, id=new_id)
        content = _replace_in_head(bytes(self.content), old, new) if old else self.content
        return replace(self, id=new_id, content=content)


def _replace_in_head(data: bytes, old: bytes, new: bytes) -> bytes:
    """`old` replaced once within the header section of `data` (the trace field mailgate
    wrote comes first; nothing in the body is touched)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end + 2]
    at = head.find(old)
    # A whole word: after a space or tab, before `;` or the line's end (not a longer id
    # that starts with this one, nor "pid ...").
    while at >= 0 and not (head[at - 1:at] in (b" ", b"\t")
                           and head[at + len(old):at + len(old) + 1] in (b";", b"\r")):
        at = head.find(old, at + 1)
    return data if at < 0 else data[:at] + new + data[at + len(old):]


def new_queue_id(now: float | None = None) -> str:
    """A queue id: 12 hex digits of Unix milliseconds, then 10 random hex digits.

    Time first so ids sort roughly by arrival (handy in logs and file names); the random
    part (40 bits: a clash needs a million ids in one millisecond to become likely) keeps
    ids apart without coordination. A clash that still happens is caught by the backend,
    which stores the message under a fresh id (`NewMessage.with_id`): it is never an error
    (the 24 random bits ids once had made one in about a million messages fail)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{_random_hex(5)}"


def _random_hex(nbytes: int) -> str:
    """The random part of an id (a function of its own so a test can force a clash)."""
    return os.urandom(nbytes).hex()  # what secrets.token_hex does, without its imports


def domain_of(address: str) -> str:
    """The domain of a stored address, as routing and the queue's domain column see it:
    what follows the last `@`, lower-case (the listener stores domains as lower-case
    A-labels already, so this only guards older data); "" for an address without one
    (the null sender)."""
    return address.rpartition("@")[2].lower() if "@" in address else ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt for one recipient."""

    at: float
    host: str  # "mx1.example.org[192.0.2.1]:25", "maildir", "" when nothing was contacted
    code: int
    enhanced: str | None
    text: str
    outcome: str  # delivered | deferred | failed
    remote: bool = True  # a reply the remote server sent (False: decided locally)
    tls: str | None = None  # "TLSv1.3 TLS_AES_256_GCM_SHA384" when used


@dataclass(frozen=True, slots=True)
class Recipient:
    id: int
    message_id: str
    address: str
    state: RecipientState
    attempts: int
    next_attempt: float | None
    orcpt: str | None = None
    notify: tuple[str, ...] | None = None
    last_code: int | None = None
    last_enhanced: str | None = None
    last_text: str | None = None
    updated_at: float = 0.0
    # The sender was sent a delay notice for this recipient (or was owed none: NOTIFY),
    # so no second one goes out however long the recipient stays deferred.
    delay_notified: bool = False
    # Why the recipient is held, when mailgate held it (a message that broke delivery)
    # or whoever held it said why; None otherwise.
    held_reason: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message as `list`/`show` return it; `content` only when asked for."""

    id: str
    sender: str
    received_at: float
    size: int
    recipients: tuple[Recipient, ...]
    client_address: str = ""
    client_helo: str = ""
    protocol: str = ""
    authenticated_as: str | None = None
    envid: str | None = None
    ret: str | None = None
    smtputf8: bool = False
    body_8bit: bool = False
    content: bytes | None = None
    crlf: bool = False  # NewMessage.crlf, as stored
    attempts: tuple[tuple[int, Attempt], ...] = field(default=())  # (recipient id, attempt)
    # When the last recipient became final (delivered or failed): the content was
    # deleted then, and the record stays until `purge` (`[queue] keep_records`). None
    # while the message is live (a recipient queued, deferred or held).
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class ActivityBucket:
    """What happened in one interval [start, start + seconds) (the admin's dashboard).

    `accepted` counts messages queued (bounces included), `bounced` those of them with
    the null sender (delivery status notifications); `delivered`, `deferred` and `failed`
    count delivery attempts by outcome, one per recipient and attempt."""

    start: float
    seconds: float
    accepted: int = 0
    bounced: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class WorkItem:
    """Claimed work: one message and those of its recipients that are due."""

    message: QueuedMessage  # content included
    recipients: tuple[Recipient, ...]
    claim_token: str


# How the server and delivery hand a message to the queue (`Queue.enqueue_async`, or a
# wrapper of it that also counts and logs): the queue id once the message is stored.
Enqueue = Callable[[NewMessage], Awaitable[str]]


class Queue(Protocol):
    """What every backend provides. All methods are blocking; the server calls them from a
    thread (`asyncio.to_thread`) or through the backend's own async wrapper."""

    def enqueue(self, message: NewMessage) -> str:
        """Store durably; return the queue id. Raises QueueFull on storage errors.

        When `message.id` is already taken, the message is stored under a fresh id
        (`message.with_id(new_queue_id())`, which also rewrites the id in its trace
        field) and that id is returned: a clash is never an error."""
        ...

    async def enqueue_async(self, message: NewMessage) -> str:
        """`enqueue` for the asyncio server: waits for the durable commit without blocking
        the event loop (and without holding a thread of the default executor per session,
        which would cap concurrent DATA completions at the executor's size)."""
        ...

    def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from any thread) when work may have become due that this process
        did not queue itself: another node queued, retried or released it, or took back
        a dead node's claims. The server's delivery workers sleep until woken or until
        their poll interval. Backends shared by one process only may never call it."""
        ...

    def claim(self, now: float, limit: int, lease: float, domains: Sequence[str] | None = None,
              exclude_domains: Sequence[str] | None = None,
              per_domain: int | None = None) -> list[WorkItem]:
        """Take up to `limit` messages with due recipients (queued/deferred with
        next_attempt <= now), optionally only recipients in / not in the given domains;
        the claim lasts `lease` seconds, after which the work is due again (crash safety).

        Messages are taken in the order their first due recipient came due. With
        `per_domain`, at most that many are taken for any one domain (the domain of the
        due recipient that brought the message in): one destination holding most of the
        due work leaves room in the claim for the others, and the delivery engine gets
        each destination's messages together, for one connection.

        The backend notes which process holds each claim (its claim owner: this host,
        this process, this boot), so that `recover_claims` in a later process can take
        back the claims of one that died without waiting for the lease."""
        ...

    def recover_claims(self) -> int:
        """Make the work claimed by processes that have certainly ended (killed, crashed,
        or from before a reboot) due again now; return how many recipients. Claims whose
        owner may still run (it lives, or is on another host) wait for their lease.
        `mailgate serve` calls this at start, before its workers claim anything."""
        ...

    def record(self, recipient_id: int, attempt: Attempt, next_attempt: float | None = None,
               claim_token: str | None = None) -> None:
        """Store an attempt and move the recipient to delivered / deferred (with
        next_attempt) / failed according to attempt.outcome; releases the claim.

        Retention: when this leaves every recipient of the message final (delivered or
        failed), in the same transaction the message's content is deleted and its
        `finished_at` set to now; the record (envelope, recipients, attempts) stays for
        the listings until `purge`."""
        ...

    async def claim_async(self, now: float, limit: int, lease: float,
                          domains: Sequence[str] | None = None,
                          exclude_domains: Sequence[str] | None = None,
                          per_domain: int | None = None) -> list[WorkItem]:
        """`claim` for the asyncio delivery workers, without blocking the event loop (a
        backend with a writer thread of its own hands it over directly)."""
        ...

    async def record_async(self, recipient_id: int, attempt: Attempt,
                           next_attempt: float | None = None,
                           claim_token: str | None = None) -> None:
        """`record` for the asyncio delivery engine: without blocking the event loop or
        holding a thread per attempt (concurrent calls may share one commit)."""
        ...

    def release(self, claim_token: str) -> None:
        """Give claimed work back unchanged (graceful shutdown)."""
        ...

    def mark_delay_notified(self, recipient_ids: Sequence[int]) -> builtins.list[int]:
        """Set `delay_notified` on these recipients; return those it was not set on before
        (ids unknown to the queue are left out). Whoever gets an id back owns that
        recipient's delay notice: two workers marking the same recipient at once cannot
        both send one."""
        ...

    async def mark_delay_notified_async(self, recipient_ids: Sequence[int]
                                        ) -> builtins.list[int]:
        """`mark_delay_notified` without blocking the event loop."""
        ...

    def list(self, state: RecipientState | None = None, limit: int = 100, offset: int = 0,
             sender: str | None = None, recipient_domain: str | None = None, *,
             queued_before: float | None = None, before: str | None = None,
             after: str | None = None, live_only: bool = False) -> list[QueuedMessage]:
        """Messages, newest first, with their recipients (no content).

        `live_only` keeps messages that are not finished (`finished_at` is None: some
        recipient is queued, deferred or held), what `queue list`, mailq and the admin
        show by default; False includes the finished ones still on record.

        `queued_before` keeps messages queued before that Unix time (the age filter).
        `before` / `after` page by key: only messages queued before / after the message
        with that id (NotFound if it is gone); with `after`, the `limit` messages just
        newer than it, still newest first (both: the messages between the two). Keyed
        pages cost the same at any depth, where a large `offset` walks every row it skips."""
        ...

    def show(self, message_id: str, content: bool = False) -> QueuedMessage:
        """One message with recipients and every attempt; NotFound if unknown."""
        ...

    def delete(self, message_id: str) -> None:
        """Remove the message, its recipients and their attempts; NotFound if unknown."""
        ...

    def hold(self, message_id: str, reason: str | None = None) -> int:
        """Hold every undelivered recipient (with why, shown to the administrator);
        return how many. Claims on them end."""
        ...

    def release_hold(self, message_id: str) -> int:
        """Release held recipients, due now; return how many."""
        ...

    def retry(self, message_id: str | None, now: float) -> int:
        """Make deferred/queued recipients of one message (None: all) due now."""
        ...

    def counts(self) -> dict[str, int]:
        """Recipients per state."""
        ...

    def purge(self, finished_before: float, limit: int = 1000) -> int:
        """Remove the records (message, recipients, attempts) of up to `limit` messages
        finished before that Unix time; return how many. Live messages are never touched.
        The server calls it periodically with now - `[queue] keep_records`, in small
        batches so that no one transaction holds the writer for long; `mailgate queue
        purge` calls it until it returns 0."""
        ...

    def activity(self, since: float, bucket_seconds: float, until: float | None = None
                 ) -> builtins.list[ActivityBucket]:
        """Messages queued and delivery attempts by outcome in consecutive buckets of
        `bucket_seconds` from `since` up to `until` (default: now), oldest first."""
        ...

    def take_slot(self, key: str, limit: int, lease: float) -> str | None:
        """One of `limit` connection slots for destination `key`, shared by every process
        using this queue (a cluster's nodes: `concurrency_per_destination` is the
        cluster's in all); its token, or None while all are taken. The slot lasts `lease`
        seconds unless given back (`give_slot`), and comes free at once when its node is
        found dead. A backend used by one process only may always grant it: the delivery
        engine's own semaphores are the limit there."""
        ...

    def give_slot(self, token: str) -> None:
        """Give back a slot `take_slot` granted."""
        ...

    def share_counts(self, deltas: Mapping[tuple[str, str], int], window: float
                     ) -> dict[tuple[str, str], int]:
        """Add this process's counts (AUTH failures by ("ip", address) and ("user",
        name)) to those shared by every process using the queue, and return the counts of
        all the others within the last `window` seconds: a cluster's nodes then refuse a
        client that failed too often on any of them. A backend used by one process only
        returns {} (its counts are all its own)."""
        ...

    def restore(self, message: QueuedMessage) -> bool:
        """Store a message exactly as another queue had it (`mailgate queue import`): its
        id, envelope, content (None once finished), every recipient with its state,
        schedule and flags, and every attempt; no claims. False, and nothing stored,
        when a message with that id is already here (an import run twice)."""
        ...

    def close(self) -> None: ...
