"""Local delivery: queued recipients in local domains go into Maildirs.

The worker claims due local recipients, writes each message into the recipient's
Maildir (durably), and only then records the recipient delivered. A crash between the
two repeats the delivery after the claim's lease runs out: at-least-once, never lost.

Whose Maildir it is decides who writes it (`maildir.mailbox_for`): mailgate's own tree
under the data directory, and a mailbox whose owner is the server's own user, are
written by the server; one that a [maildir] entry gives to another owner (a system
user's `~/Maildir`, a virtual-mail uid) is written by the mailbox helper, which kept
root when `serve` dropped it (`delivery/helper.py`). Without a helper (mailgate was not
started as root) such a mailbox cannot be written, and its mail is deferred, saying so.

A Maildir that cannot be written (a full disk, a broken mailbox) defers the recipient;
past `delivery.delay_warning` the sender gets a delay notice, by the same rule as for
outbound mail (`delivery/notices.py`); past `delivery.max_queue_lifetime` it fails. A
mailbox that does not exist (a [maildir] "system" domain and no such user) fails at
once; failures are bounced to the sender (RFC 3464).

The loop around it (claim, pause on storage errors, hold a message that breaks
delivery, release on shutdown) is the worker's (`delivery/worker.py`); this module is
the Maildir target, and the LMTP target (`delivery/lmtp.py`) extends it. An unexpected
error while delivering one message is logged with its traceback, counted
(mailgate_delivery_worker_errors_total{worker="local"}), and that message's undelivered
recipients are held with the error as the reason; the worker goes on with the next
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mailgate import metrics
from mailgate.codes.reply import Reply
from mailgate.config import Config
from mailgate.delivery.helper import HelperClient
from mailgate.delivery.maildir import MaildirError, deliver, deliver_to, mailbox_for
from mailgate.delivery.notices import notify_success, send_notice, warn_delayed
from mailgate.delivery.worker import Worker
from mailgate.queue import (
    Attempt,
    Enqueue,
    NotFound,
    Queue,
    QueueError,
    Recipient,
    WorkItem,
)

__all__ = ["LocalDelivery"]

log = logging.getLogger("mailgate.local")
T = TypeVar("T")


class LocalDelivery(Worker):
    """The Maildir target: claimed work for the local domains goes into mailboxes."""

    KIND = "local"
    LEASE = 300.0
    BATCH = 64
    # Messages written at once, each in a thread of its own: their Maildir fsyncs overlap,
    # and the records of one round share the queue's commits (one thread recording
    # message after message paid a commit, and its fsync, for each). 2 KiB x20 into
    # Maildirs, end to end: about 300 msgs/s with one, 470 with eight. One connection
    # at a time it is as fast as before, for 5-9 % more CPU (the threads share the GIL).
    CONCURRENCY = 8

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None = None,
                 helper: HelperClient | None = None) -> None:
        super().__init__(config, queue, enqueue, log)
        self.root: Path = config.data_dir / "maildir"
        # Local domains whose mail goes by LMTP are the LMTP target's.
        self.domains = tuple(d for d in config.domains.local if config.lmtp_route(d) is None)
        self.helper = helper
        self.delivered = 0
        self._counting = threading.Lock()  # `delivered` is counted in the delivering threads
        # Threads of its own: the loop's default pool may have fewer than CONCURRENCY.
        self._pool: ThreadPoolExecutor | None = None
        # Outcomes the queue could not store (its disk was full): stored first when the
        # worker comes round again, so a Maildir already written is not written twice.
        self._unrecorded: list[tuple[int, Attempt, float | None, str]] = []

    def claim(self, now: float) -> list[WorkItem]:
        """Due recipients in the local domains (those delivered to Maildirs)."""
        if not self.domains:
            return []
        return self.queue.claim(now, self.BATCH, self.LEASE, self.domains)

    async def claim_async(self, now: float) -> list[WorkItem]:
        if not self.domains:
            return []
        return await self.queue.claim_async(now, self.BATCH, self.LEASE, self.domains)

    async def settle(self) -> None:
        if self._unrecorded:  # else no thread for nothing, at every wake
            await asyncio.to_thread(self._record_pending)

    async def deliver(self, items: Sequence[WorkItem]) -> None:
        """CONCURRENCY messages at a time, taken in order; one that breaks is held, the
        others go on. Once stopping, the rest of the batch is left to be released."""
        waiting = iter(items)

        async def lane() -> None:
            for item in waiting:  # shared: each message goes to the first lane free
                if self.stopping:
                    return
                try:
                    await self._deliver(item)
                except QueueError as exc:
                    # The claim stays to its lease; the next message may still be stored.
                    log.error("%s: local delivery paused: %s", item.message.id, exc)
                except Exception as exc:
                    await self.quarantine(item, exc, "delivering it to a mailbox")

        await asyncio.gather(*(lane() for _ in range(min(self.CONCURRENCY, len(items)))))

    async def _deliver(self, item: WorkItem) -> None:
        """Deliver the claimed message, then send the notices it may now owe."""
        failed = await self.in_thread(self._deliver_item, item)
        await self.after(item, failed)

    def in_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` in one of this target's CONCURRENCY threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.CONCURRENCY, thread_name_prefix="local")
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def after(self, item: WorkItem, failed: set[int]) -> None:
        """The notices a delivered message may now owe: success (`Action: delivered`,
        RFC 3461 5.3) for recipients whose NOTIFY asks for it, a failure notice for
        `failed`, and a delay notice."""
        if self.enqueue is None:
            return
        delivered = {r.id for r in item.recipients} - failed
        await self.notice_guarded(item, "writing its success notice", notify_success(
            self.queue, self.enqueue, self.config, item, "delivered", delivered,
            self.clock()))
        if failed:
            await self.notice_guarded(item, "writing its failure notice",
                                      self._bounce(item, failed))
        await self.notice_guarded(item, "writing its delay notice", warn_delayed(
            self.queue, self.enqueue, self.config, item, self.clock()))

    async def _bounce(self, item: WorkItem, failed_ids: set[int]) -> str | None:
        """One DSN for the recipients of `item` that failed in this round."""
        from mailgate.delivery.bounce import recipient_from_attempt

        msg = item.message
        if not msg.sender or self.enqueue is None:
            return None  # a bounce that fails is dropped, never bounced
        try:
            shown = await asyncio.to_thread(self.queue.show, msg.id, True)
        except NotFound:
            return None
        attempts = dict(shown.attempts)
        failed = [r for r in shown.recipients
                  if r.id in failed_ids and str(r.state) == "failed"]
        if not failed:
            return None
        qid = await send_notice(
            self.enqueue, shown, [recipient_from_attempt(r, attempts.get(r.id))
                                  for r in failed],
            kind="failure", reporting_mta=self.config.hostname, now=self.clock())
        if qid is not None:
            log.info("%s: sender non-delivery notification: %s", msg.id, qid)
        return qid

    def decide(self, item: WorkItem, rcpt: Recipient, reply: Reply, host: str,
               remote: bool, relay: str) -> str:
        """Record one recipient's outcome from `reply` (2xx delivered, 5xx failed, 4xx
        deferred on the retry schedule, or failed once the queue lifetime is over);
        return it. Runs in a thread."""
        now = self.clock()
        msg = item.message
        next_attempt = None
        if reply.is_success:
            outcome = "delivered"
            with self._counting:
                self.delivered += 1
        elif reply.is_permanent:
            outcome = "failed"
        elif now - msg.received_at >= self.config.delivery.max_queue_lifetime:
            outcome = "failed"  # RFC 5321 4.5.4.1
            reply = Reply.make(554, "5.4.7", "Delivery time expired: gave up retrying; "
                               f"last: {reply}")
        else:
            outcome = "deferred"
            next_attempt = now + self.config.delivery.retry_delay(rcpt.attempts + 1)
        log.info("%s: to=<%s>, relay=%s, delay=%.2f, status=%s (%s)", msg.id, rcpt.address,
                 relay, now - msg.received_at, {"delivered": "sent"}.get(outcome, outcome),
                 reply)
        metrics.delivery(outcome, reply.code, now - msg.received_at)
        self._record(rcpt.id, Attempt(at=now, host=host, code=reply.code,
                                      enhanced=reply.enhanced,
                                      text=reply.text.replace("\n", " "), outcome=outcome,
                                      remote=remote),
                     next_attempt, item.claim_token)
        return outcome

    def _record(self, recipient_id: int, attempt: Attempt, next_attempt: float | None,
                claim_token: str) -> None:
        try:
            self.queue.record(recipient_id, attempt, next_attempt=next_attempt,
                              claim_token=claim_token)
        except NotFound:
            pass  # deleted meanwhile by an administrator
        except QueueError as exc:
            log.error("cannot record the outcome for recipient %d yet: %s", recipient_id, exc)
            self._unrecorded.append((recipient_id, attempt, next_attempt, claim_token))
        self.decided(recipient_id)

    def _record_pending(self) -> None:
        """Store the outcomes that could not be stored before; QueueError if still not."""
        while self._unrecorded:
            recipient_id, attempt, next_attempt, token = self._unrecorded[0]
            with contextlib.suppress(NotFound):
                self.queue.record(recipient_id, attempt, next_attempt=next_attempt,
                                  claim_token=token)
            self._unrecorded.pop(0)

    def _deliver_item(self, item: WorkItem) -> set[int]:
        """Write the message into each recipient's Maildir; the ids of those failed."""
        msg = item.message
        assert msg.content is not None
        # RFC 5321 4.4: the final delivery adds Return-Path with the reverse-path.
        content = f"Return-Path: <{msg.sender}>\r\n".encode("utf-8", "surrogateescape")
        content += msg.content
        failed: set[int] = set()
        for rcpt in item.recipients:
            try:
                path = self._write(rcpt.address, content)
            except MaildirError as exc:
                why = exc.strerror or str(exc)
                reply = (Reply.make(550, "5.1.1", f"No such mailbox: {why}")
                         if exc.permanent else
                         Reply.make(451, "4.3.0", f"Cannot write to the mailbox: {why}"))
                if self.decide(item, rcpt, reply, "maildir", False, "local") == "failed":
                    failed.add(rcpt.id)
                continue
            self.decide(item, rcpt, Reply.make(250, "2.0.0", "Delivered to maildir as "
                                               f"{path.name}"), "maildir", False, "local")
        return failed

    def _write(self, address: str, content: bytes) -> Path:
        """Into the recipient's Maildir: by the server itself when it is mailgate's own
        tree or the owner is the server's user, else through the mailbox helper."""
        owner = self.config.maildir_owner(address)
        if owner is None:
            return deliver(self.root, address, content, self.config.hostname)
        box = mailbox_for(owner, self.root, address)
        if box.uid == os.geteuid() and box.gid in (os.getegid(), *os.getgroups()):
            return deliver_to(box, content, self.config.hostname)
        if self.helper is None:
            raise MaildirError(errno.EPERM, f"the mailbox {box.path} belongs to uid "
                               f"{box.uid}, and mailgate runs as uid {os.geteuid()} with "
                               "no mailbox helper (start mailgate as root to have one)")
        return self.helper.deliver(address, content, self.config.hostname)
