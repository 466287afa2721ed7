"""Local delivery: queued recipients in local domains go into Maildirs.

The worker claims due local recipients, writes each message into the recipient's
Maildir (durably), and only then records the recipient delivered. A crash between the
two repeats the delivery after the claim's lease runs out: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from mailgate import metrics
from mailgate.config import Config
from mailgate.delivery.maildir import MaildirError, deliver
from mailgate.queue import Attempt, Queue, WorkItem

__all__ = ["LocalDelivery"]

log = logging.getLogger("mailgate.local")


class LocalDelivery:
    """One asyncio task that empties the queue of local recipients."""

    LEASE = 300.0
    BATCH = 64
    POLL = 30.0  # seconds between looks when nothing woke the worker (retries, restarts)

    def __init__(self, config: Config, queue: Queue) -> None:
        self.config = config
        self.queue = queue
        self.root: Path = config.data_dir / "maildir"
        self.domains = tuple(config.domains.local)
        self._wake = asyncio.Event()
        self._stopping = False
        self.delivered = 0

    def wake(self) -> None:
        """New local mail was queued."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            items = await asyncio.to_thread(self.queue.claim, time.time(), self.BATCH,
                                            self.LEASE, self.domains)
            for item in items:
                if self._stopping:
                    await asyncio.to_thread(self.queue.release, item.claim_token)
                    continue
                await asyncio.to_thread(self._deliver_item, item)
            if items and len(items) == self.BATCH:
                continue  # more may be due at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.POLL)

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
                self.queue.record(
                    rcpt.id,
                    Attempt(at=now, host="maildir", code=451, enhanced="4.3.0",
                            text=f"Cannot write to the mailbox: {exc.strerror}",
                            outcome="deferred", remote=False),
                    next_attempt=now + delay, claim_token=item.claim_token,
                )
                continue
            self.queue.record(
                rcpt.id,
                Attempt(at=now, host="maildir", code=250, enhanced="2.0.0",
                        text=f"Delivered to maildir as {path.name}", outcome="delivered",
                        remote=False),
                claim_token=item.claim_token,
            )
            self.delivered += 1
            metrics.delivery("delivered", 250, now - msg.received_at)
            log.info("%s: to=<%s>, relay=local, delay=%.2f, status=sent (delivered to maildir)",
                     msg.id, rcpt.address, now - msg.received_at)
