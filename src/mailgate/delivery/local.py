"""Local delivery: queued recipients in local domains go into Maildirs.

The worker claims due local recipients, writes each message into the recipient's
Maildir (durably), and only then records the recipient delivered. A crash between the
two repeats the delivery after the claim's lease runs out: at-least-once, never lost.

A Maildir that cannot be written (a full disk, a broken mailbox) defers the recipient;
past `delivery.delay_warning` the sender gets a delay notice, by the same rule as for
outbound mail (`delivery/notices.py`).

No message can stop local delivery: an unexpected error while delivering one is logged
with its traceback, counted (mailgate_delivery_worker_errors_total{worker="local"}),
and that message's undelivered recipients are held with the error as the reason, as the
outbound engine does; the worker goes on with the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from mailgate import metrics
from mailgate.config import Config
from mailgate.delivery.engine import held_reason
from mailgate.delivery.maildir import MaildirError, deliver
from mailgate.delivery.notices import notify_success, warn_delayed
from mailgate.queue import Attempt, Enqueue, NotFound, Queue, QueueError, WorkItem

__all__ = ["LocalDelivery"]

log = logging.getLogger("mailgate.local")


class LocalDelivery:
    """One asyncio task that empties the queue of local recipients."""

    LEASE = 300.0
    BATCH = 64
    POLL = 1.0  # seconds between looks when nothing woke it; see DeliveryEngine.POLL
    STORAGE_RETRY = 1.0  # seconds between tries while the queue cannot be written

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None = None) -> None:
        self.config = config
        self.queue = queue
        self.enqueue = enqueue  # queues the notices it owes senders; None: sends none
        self.root: Path = config.data_dir / "maildir"
        self.domains = tuple(config.domains.local)
        self._wake = asyncio.Event()
        self._stopping = False
        self.delivered = 0
        # Outcomes the queue could not store (its disk was full): stored first when the
        # worker comes round again, so a Maildir already written is not written twice.
        self._unrecorded: list[tuple[int, Attempt, float | None, str]] = []

    def wake(self) -> None:
        """New local mail was queued."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """`stop()` was called: `run` returning now is the end, not a failure."""
        return self._stopping

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await asyncio.to_thread(self._record_pending)
                items = await asyncio.to_thread(self.queue.claim, time.time(), self.BATCH,
                                                self.LEASE, self.domains)
            except QueueError as exc:
                # The queue cannot be written (disk full): a storage error must not end
                # local delivery for good. Claimed work stays claimed (its lease brings
                # it back); try again soon.
                log.error("local delivery paused: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.STORAGE_RETRY)
                continue
            for item in items:
                if self._stopping:
                    with contextlib.suppress(QueueError):
                        await asyncio.to_thread(self.queue.release, item.claim_token)
                    continue
                await self._deliver_guarded(item)
            if self._unrecorded or (items and len(items) == self.BATCH):
                continue  # more may be due at once, or outcomes wait to be stored
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.POLL)
        with contextlib.suppress(QueueError):  # else the leases bring the work back
            await asyncio.to_thread(self._record_pending)

    async def run_once(self) -> int:
        """Claim and deliver what is due now; return how many messages were claimed."""
        items = await asyncio.to_thread(self.queue.claim, time.time(), self.BATCH, self.LEASE,
                                        self.domains)
        for item in items:
            await self._deliver(item)
        return len(items)

    async def _deliver_guarded(self, item: WorkItem) -> None:
        """`_deliver`, where nothing the message holds can end the worker: a storage
        error leaves the claim to its lease, anything else holds the message."""
        try:
            await self._deliver(item)
        except QueueError as exc:
            log.error("%s: local delivery paused: %s", item.message.id, exc)
        except Exception as exc:
            msg_id = item.message.id
            log.error("%s: unexpected error while delivering it locally; the message is "
                      "held so the rest of the queue keeps moving (`mailgate queue release "
                      "%s` once the cause is fixed)", msg_id, msg_id, exc_info=exc)
            metrics.worker_error("local")
            try:
                await asyncio.to_thread(self.queue.hold, msg_id,
                                        held_reason(exc, "delivering it to a mailbox"))
            except NotFound:
                pass
            except QueueError as err:
                log.error("%s: could not hold the message (%s); it is due again when its "
                          "claim's lease ends", msg_id, err)

    async def _deliver(self, item: WorkItem) -> None:
        """Deliver the claimed message, then send the notices it may now owe: success
        (`Action: delivered`, RFC 3461 5.3) for recipients whose NOTIFY asks for it, and
        a delay notice."""
        await asyncio.to_thread(self._deliver_item, item)
        if self.enqueue is not None:
            await notify_success(self.queue, self.enqueue, self.config, item, "delivered",
                                 {r.id for r in item.recipients}, time.time())
            await warn_delayed(self.queue, self.enqueue, self.config, item, time.time())

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

    def _record_pending(self) -> None:
        """Store the outcomes that could not be stored before; QueueError if still not."""
        while self._unrecorded:
            recipient_id, attempt, next_attempt, token = self._unrecorded[0]
            with contextlib.suppress(NotFound):
                self.queue.record(recipient_id, attempt, next_attempt=next_attempt,
                                  claim_token=token)
            self._unrecorded.pop(0)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _deliver_item(self, item: WorkItem) -> None:
        msg = item.message
        assert msg.content is not None
        # RFC 5321 4.4: the final delivery adds Return-Path with the reverse-path.
        content = f"Return-Path: <{msg.sender}>\r\n".encode("utf-8", "surrogateescape")
        content += msg.content
        for rcpt in item.recipients:
            now = time.time()
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
