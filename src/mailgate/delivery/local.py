"""Local delivery: queued recipients in local domains go into Maildirs.

The worker claims due local recipients, writes each message into the recipient's
Maildir (durably), and only then records the recipient delivered. A crash between the
two repeats the delivery after the claim's lease runs out: at-least-once, never lost.

A Maildir that cannot be written (a full disk, a broken mailbox) defers the recipient;
past `delivery.delay_warning` the sender gets a delay notice, by the same rule as for
outbound mail (`delivery/notices.py`).

The loop around it (claim, pause on storage errors, hold a message that breaks
delivery, release on shutdown) is the worker's (`delivery/worker.py`); this module is
the Maildir target. An unexpected error while delivering one message is logged with its
traceback, counted (mailgate_delivery_worker_errors_total{worker="local"}), and that
message's undelivered recipients are held with the error as the reason; the worker goes
on with the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from mailgate import metrics
from mailgate.config import Config
from mailgate.delivery.maildir import MaildirError, deliver
from mailgate.delivery.notices import notify_success, warn_delayed
from mailgate.delivery.worker import Worker
from mailgate.queue import Attempt, Enqueue, NotFound, Queue, QueueError, WorkItem

__all__ = ["LocalDelivery"]

log = logging.getLogger("mailgate.local")


class LocalDelivery(Worker):
    """The Maildir target: claimed work for the local domains goes into mailboxes."""

    KIND = "local"
    LEASE = 300.0
    BATCH = 64

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None = None) -> None:
        super().__init__(config, queue, enqueue, log)
        self.root: Path = config.data_dir / "maildir"
        self.domains = tuple(config.domains.local)
        self.delivered = 0
        # Outcomes the queue could not store (its disk was full): stored first when the
        # worker comes round again, so a Maildir already written is not written twice.
        self._unrecorded: list[tuple[int, Attempt, float | None, str]] = []

    def claim(self, now: float) -> list[WorkItem]:
        """Due recipients in the local domains."""
        return self.queue.claim(now, self.BATCH, self.LEASE, self.domains)

    async def settle(self) -> None:
        await asyncio.to_thread(self._record_pending)

    async def deliver(self, items: Sequence[WorkItem]) -> None:
        """One message after the other; one that breaks is held, the next goes on. Once
        stopping, the rest of the batch is left to be released."""
        for item in items:
            if self.stopping:
                return
            try:
                await self._deliver(item)
            except QueueError as exc:
                # The claim stays to its lease; the next message may still be stored.
                log.error("%s: local delivery paused: %s", item.message.id, exc)
            except Exception as exc:
                await self.quarantine(item, exc, "delivering it to a mailbox")

    async def _deliver(self, item: WorkItem) -> None:
        """Deliver the claimed message, then send the notices it may now owe: success
        (`Action: delivered`, RFC 3461 5.3) for recipients whose NOTIFY asks for it, and
        a delay notice."""
        await asyncio.to_thread(self._deliver_item, item)
        if self.enqueue is not None:
            await self.notice_guarded(item, "writing its success notice", notify_success(
                self.queue, self.enqueue, self.config, item, "delivered",
                {r.id for r in item.recipients}, self.clock()))
            await self.notice_guarded(item, "writing its delay notice", warn_delayed(
                self.queue, self.enqueue, self.config, item, self.clock()))

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

    def _deliver_item(self, item: WorkItem) -> None:
        msg = item.message
        assert msg.content is not None
        # RFC 5321 4.4: the final delivery adds Return-Path with the reverse-path.
        content = f"Return-Path: <{msg.sender}>\r\n".encode("utf-8", "surrogateescape")
        content += msg.content
        for rcpt in item.recipients:
            now = self.clock()
            try:
                path = deliver(self.root, rcpt.address, content, self.config.hostname)
            except MaildirError as exc:
                failures = rcpt.attempts + 1
                delay = self.config.delivery.retry_delay(failures)
                log.error("%s: to=<%s>, relay=local, status=deferred (%s)", msg.id,
                          rcpt.address, exc)
                metrics.delivery("deferred", 451)
                self._record(
                    rcpt.id,
                    Attempt(at=now, host="maildir", code=451, enhanced="4.3.0",
                            text=f"Cannot write to the mailbox: {exc.strerror}",
                            outcome="deferred", remote=False),
                    now + delay, item.claim_token,
                )
                continue
            self._record(
                rcpt.id,
                Attempt(at=now, host="maildir", code=250, enhanced="2.0.0",
                        text=f"Delivered to maildir as {path.name}", outcome="delivered",
                        remote=False),
                None, item.claim_token,
            )
            self.delivered += 1
            metrics.delivery("delivered", 250, now - msg.received_at)
            log.info("%s: to=<%s>, relay=local, delay=%.2f, status=sent (delivered to maildir)",
                     msg.id, rcpt.address, now - msg.received_at)
