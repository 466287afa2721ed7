"""The delivery worker loop, once: claim due work, hand it to a target, stop cleanly.

A delivery target says where mail goes and how: the outbound engine (`engine.py`,
SMTP to other domains) and local delivery (`local.py`, Maildirs), and later LMTP. Each
is a `Worker` that fills in the small interface below; the loop around it, which used
to be copied into each, lives here:

- claim due work (`claim`: which recipients this target takes) in batches, under a
  lease, and deliver it (`deliver`: the target's whole job for one batch, recording
  each recipient's outcome as it goes);
- a storage error (`QueueError`: the disk is full) pauses the worker, it never ends
  it: claimed work not recorded comes back when its lease ends (at-least-once);
- no message can stop delivery: an error a target pins on one message holds that
  message (`quarantine`), with the error as its reason; one it cannot pin makes the
  worker deliver the batch one message at a time, holding the one that fails alone;
- notices (failure, delay, success) go through `notice_guarded`: one that fails is
  logged and counted, and the others still go;
- `stop()` claims nothing more; work still claimed and not recorded when `run` ends is
  given back (`queue.release`), due again at once for the next start.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import ClassVar

from mailgate import metrics
from mailgate.config import Config
from mailgate.queue import Enqueue, NotFound, Queue, QueueError, WorkItem

__all__ = ["Worker", "held_reason"]


class Worker(abc.ABC):
    """One asyncio task that keeps a delivery target's part of the queue moving.

    A target sets `KIND` (its name in logs and metrics), `LEASE`, `BATCH`, and
    implements `claim` and `deliver`; `settle` is for outcomes it owes the queue."""

    KIND: ClassVar[str]
    LEASE: ClassVar[float]
    BATCH: ClassVar[int]
    # Seconds between looks when nothing woke it: retries coming due, and work made due
    # by another process (`mailgate queue retry`, another node). An idle look is one
    # indexed SELECT, so a second costs nothing measurable.
    POLL: ClassVar[float] = 1.0
    STORAGE_RETRY: ClassVar[float] = 1.0  # seconds between tries while the queue is stuck
    # Wake-ups closer together than this share one look. Every message queued rings,
    # this target's or not, and each look is a trip to the queue's writer thread: with
    # mail flowing to other targets, the local worker looked 1,400 times a second and
    # found nothing. An isolated wake-up still looks at once.
    PACE: ClassVar[float] = 0.02

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None,
                 log: logging.Logger, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.queue = queue
        self.enqueue = enqueue  # queues the notices owed to senders; None: sends none
        self.clock = clock
        self.log = log
        self._wake = asyncio.Event()
        self._stopping = False
        # Claimed work being delivered now: claim token -> its recipients' ids.
        self._claimed: dict[str, tuple[int, ...]] = {}
        # Claim tokens of messages held for breaking delivery in this round, and the
        # recipients whose outcome this round decided (a retry one by one skips them,
        # and a release at shutdown leaves their message alone).
        self._poisoned: set[str] = set()
        self._recorded: set[int] = set()
        # Claims of a round whose outcomes could not be stored (the queue went away):
        # given back once it answers again, so their work is due at once rather than
        # when the lease ends (minutes) while this node, alive, keeps the claim.
        self._to_give_back: set[str] = set()

    # --- what a target fills in -------------------------------------------------------

    @abc.abstractmethod
    def claim(self, now: float) -> list[WorkItem]:
        """Claim this target's due work (called in a thread)."""

    async def claim_async(self, now: float) -> list[WorkItem]:
        """`claim` from the event loop: in a thread, unless the target asks its queue's
        own `claim_async`, which needs none."""
        return await asyncio.to_thread(self.claim, now)

    @abc.abstractmethod
    async def deliver(self, items: Sequence[WorkItem]) -> None:
        """Deliver claimed work, recording each recipient's outcome (`decided`), and
        send the notices it owes. An error it can pin on one message it hands to
        `quarantine`; any other error goes to the worker; QueueError pauses it."""

    async def settle(self) -> None:  # noqa: B027 (a hook: most targets need none)
        """Store what the target owes the queue before the next claim (QueueError if it
        still cannot); also called once when `run` ends. Nothing, unless the target
        keeps outcomes of its own."""

    # --- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        """New work was queued."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """`stop()` was called: `run` returning now is the end, not a failure."""
        return self._stopping

    def stop(self) -> None:
        """Claim nothing more; deliveries under way may finish. Work still claimed when
        `run` ends (finished or cancelled) is released, due again at once for the next
        start instead of after its lease."""
        self._stopping = True
        self._wake.set()

    def decided(self, recipient_id: int) -> None:
        """The target has this recipient's outcome (recorded, or kept to record)."""
        self._recorded.add(recipient_id)

    async def run(self) -> None:
        looked = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                await self.settle()
                if self._to_give_back:
                    await asyncio.to_thread(self._give_back_claims)
                looked = time.monotonic()
                items = await self.claim_async(self.clock())
            except QueueError as exc:
                # The queue cannot be written now (disk full): pause, never die; claimed
                # work that could not be recorded comes back when its lease ends.
                await self._pause(exc)
                continue
            if items:
                tokens = {item.claim_token for item in items}
                self._claimed.update(
                    (item.claim_token, tuple(r.id for r in item.recipients))
                    for item in items)
                self._recorded.clear()
                try:
                    try:
                        await self.deliver(items)
                    except QueueError:
                        raise
                    except Exception as exc:
                        # Not pinned on a message (the target pins what it can): deliver
                        # the round's messages one by one to find the one at fault.
                        self.log.error("%s delivery of %d message(s) failed; delivering "
                                       "them one by one", self.KIND, len(items),
                                       exc_info=exc)
                        metrics.worker_error(self.KIND)
                        await self._deliver_one_by_one(items)
                except QueueError as exc:
                    # An outcome could not be stored: the claim is given back when the
                    # queue answers again (or its lease ends first), so at worst a
                    # delivery repeats (at-least-once).
                    self._to_give_back.update(
                        token for token in tokens
                        if not all(i in self._recorded for i in self._claimed.get(token, ())))
                    await self._pause(exc)
                finally:
                    if self._stopping:
                        self._release_claims()
                    for token in tokens:
                        self._claimed.pop(token, None)
                continue  # more may be due
            # asyncio.timeout, not wait_for: on 3.11 wait_for makes a task at every wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.POLL):
                    await self._wake.wait()
            early = self.PACE - (time.monotonic() - looked)
            if early > 0 and not self._stopping:
                await asyncio.sleep(early)
        with contextlib.suppress(QueueError):  # else the leases bring the work back
            await self.settle()

    async def run_once(self) -> int:
        """Claim and deliver what is due now; return how many messages were claimed."""
        items = await self.claim_async(self.clock())
        if items:
            await self.deliver(items)
        return len(items)

    async def _pause(self, exc: QueueError) -> None:
        self.log.error("%s delivery paused: %s", self.KIND, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.STORAGE_RETRY)

    def _give_back_claims(self) -> None:
        """Release the claims a failed round kept (QueueError while the queue is still
        down: the caller pauses and tries again)."""
        for token in sorted(self._to_give_back):
            self.queue.release(token)
            self._to_give_back.discard(token)

    def _release_claims(self) -> None:
        """Give back what this worker claimed and has no outcome for (shutting down).

        Synchronous on purpose: it runs when the task may be cancelled, where an await
        could be cut short. A message whose every recipient has its outcome is left
        alone, so this only ever makes unfinished work due again; a message cut off
        mid-DATA may then be delivered twice, never lost."""
        for token, ids in sorted(self._claimed.items()):
            if all(i in self._recorded for i in ids):
                continue
            try:
                self.queue.release(token)
            except QueueError as exc:
                self.log.warning("could not release claimed work (%s); it is due again "
                                 "when its lease ends", exc)
        self._claimed.clear()

    async def _deliver_one_by_one(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            left = tuple(r for r in item.recipients if r.id not in self._recorded)
            if not left or item.claim_token in self._poisoned:
                continue
            try:
                await self.deliver([dataclasses.replace(item, recipients=left)])
            except QueueError:
                raise
            except Exception as exc:
                await self.quarantine(item, exc, "delivering it")

    # --- what targets share -----------------------------------------------------------

    async def quarantine(self, item: WorkItem, exc: BaseException, doing: str) -> None:
        """Hold the message whose handling raised `exc`, with the error as the reason, so
        it cannot stop delivery of the rest; log it with its traceback and count it."""
        self._poisoned.add(item.claim_token)
        msg_id = item.message.id
        self.log.error("%s: unexpected error while %s; the message is held so the rest of "
                       "the queue keeps moving (`mailgate queue release %s` once the cause "
                       "is fixed)", msg_id, doing, msg_id, exc_info=exc)
        metrics.worker_error(self.KIND)
        try:
            await asyncio.to_thread(self.queue.hold, msg_id, held_reason(exc, doing))
        except NotFound:
            pass  # deleted meanwhile
        except QueueError as err:
            self.log.error("%s: could not hold the message (%s); it is due again when its "
                           "claim's lease ends", msg_id, err)

    async def notice_guarded(self, item: WorkItem, doing: str,
                             notice: Coroutine[None, None, str | None]) -> str | None:
        """A notice that fails unexpectedly is logged and counted; the message's
        outcomes are recorded already, and the other messages' notices still go."""
        try:
            return await notice
        except QueueError:
            raise
        except Exception as exc:
            self.log.error("%s: unexpected error while %s; no notice sent",
                           item.message.id, doing, exc_info=exc)
            metrics.worker_error(self.KIND)
            return None


def held_reason(exc: BaseException, doing: str) -> str:
    """Why a message was held after breaking delivery: one printable line, short."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    what = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in what)
    if len(what) > 300:
        what = what[:300] + "..."
    return (f"delivery failed with an internal error while {doing} ({what}); held so the "
            "rest of the queue keeps moving; release it once the cause is fixed")
