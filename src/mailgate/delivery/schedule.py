"""Who may claim what next: the outbound engine's bookkeeping of work in flight.

The engine claims by destination (`Queue.claim(..., per_domain=...)`: each domain's due
messages together, up to one connection's worth) and starts one task per destination
as soon as its claim returns; it never waits for a whole claim to finish before the
next one (no head-of-line blocking). What keeps that fair is here, as Postfix's queue
manager keeps its active queue:

- connections in flight per destination (`concurrency_per_destination`, reached by a
  slow start: one connection until one has delivered, then one more per connection
  that did) and in all (`concurrency`): a destination whose slots are all in use is
  left out of the next claim, so its due work stays in the queue instead of taking the
  claim's room, and goes together over its next connection;
- messages and bytes in flight (claimed, content in memory): in all at most
  `max_messages` / `max_bytes`, and one destination at most half of either, so a slow
  or unreachable destination holding many messages leaves the others room to go on.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from mailgate import metrics
from mailgate.config import Config
from mailgate.delivery.worker import Worker
from mailgate.queue import Enqueue, Queue, QueueError, Recipient, WorkItem, domain_of

__all__ = ["ByDestination", "Schedule"]


@dataclass
class _Load:
    connections: int = 0
    messages: int = 0
    bytes: int = 0
    domains: Counter[str] = field(default_factory=Counter)


class Schedule:
    WINDOWS_KEPT = 100_000

    def __init__(self, concurrency: int, per_destination: int, batch: int,
                 max_messages: int, max_bytes: int) -> None:
        self.concurrency = concurrency
        self.per_destination = per_destination
        self.batch = batch
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.connections = 0
        self.messages = 0
        self.bytes = 0
        self._loads: dict[str, _Load] = {}
        self._windows: dict[str, int] = {}  # past 1 only, most recently used last

    def room(self) -> int:
        """How many messages the next claim may take (0: wait for work to end)."""
        if self.connections >= self.concurrency or self.bytes >= self.max_bytes:
            return 0
        return max(0, min(self.batch, self.max_messages - self.messages))

    def window(self, key: str) -> int:
        """Connections destination `key` may have now: 1 until one of its connections
        delivered something, then one more per connection that did, up to
        `per_destination`; back to 1 after one that delivered nothing (a slow start,
        as Postfix's: a destination that does not answer gets one connection, and the
        messages that come meanwhile wait in the queue to share the next)."""
        return self._windows.get(key, 1)

    def feedback(self, key: str, delivered: bool) -> None:
        """A connection to `key` ended, having delivered something or nothing."""
        grown = min(self.per_destination, self.window(key) + 1) if delivered else 1
        self._windows.pop(key, None)
        if grown > 1:
            self._windows[key] = grown
            if len(self._windows) > self.WINDOWS_KEPT:  # forget the longest unused
                del self._windows[next(iter(self._windows))]

    def full(self, key: str) -> bool:
        """Whether destination `key` may be given no more work now."""
        load = self._loads.get(key)
        return load is not None and (
            load.connections >= self.window(key)
            or load.messages * 2 >= self.max_messages
            or load.bytes * 2 >= self.max_bytes)

    def excluded(self) -> list[str]:
        """The domains to leave out of the next claim: those of full destinations."""
        return sorted({d for key, load in self._loads.items() if self.full(key)
                       for d in load.domains})

    def add(self, key: str, domains: Counter[str], connections: int, messages: int,
            size: int) -> None:
        load = self._loads.setdefault(key, _Load())
        load.connections += connections
        load.messages += messages
        load.bytes += size
        load.domains.update(domains)
        self.connections += connections
        self.messages += messages
        self.bytes += size

    def done(self, key: str, domains: Counter[str], connections: int, messages: int,
             size: int) -> None:
        load = self._loads[key]
        load.connections -= connections
        load.messages -= messages
        load.bytes -= size
        load.domains.subtract(domains)
        load.domains = +load.domains  # drop the domains no longer in flight
        self.connections -= connections
        self.messages -= messages
        self.bytes -= size
        if load.connections <= 0 and load.messages <= 0:
            del self._loads[key]

    def in_flight(self) -> dict[str, int]:
        """Connections in flight per destination (tests, diagnostics)."""
        return {key: load.connections for key, load in self._loads.items()}


class _Group(Protocol):
    """One destination's share of claimed work (the engine's `_Destination`)."""

    key: str
    domain: str

    @property
    def units(self) -> Sequence[_UnitLike]: ...


class _UnitLike(Protocol):
    @property
    def item(self) -> WorkItem: ...

    @property
    def recipients(self) -> Sequence[Recipient]: ...

    @property
    def sent(self) -> bool: ...

    @property
    def decided(self) -> bool: ...


G = TypeVar("G", bound=_Group)


class ByDestination(Worker, Generic[G]):
    """The worker loop for a target that claims by destination (the outbound engine).

    Unlike `Worker.run` (claim a batch, deliver all of it, claim again), each
    destination's share of a claim runs as a task of its own and the next claim comes
    as soon as there is room (`Schedule`): a slow destination never holds up the rest
    of its claim, nor the claims after it."""

    MESSAGES_PER_CONNECTION: ClassVar[int]
    MAX_BYTES_IN_FLIGHT: ClassVar[int] = 256 * 1024 * 1024  # claimed content, in all
    # While mail is flowing (a claim found work less than GATHER_AFTER seconds ago), a
    # wake-up waits GATHER seconds before claiming: what arrives meanwhile is claimed,
    # sent and recorded together, one claim and one commit for several messages instead
    # of one each (one message at a time: half the deliverer's CPU per message). A
    # message after a quiet spell is claimed at once.
    GATHER: ClassVar[float] = 0.02
    GATHER_AFTER: ClassVar[float] = 1.0
    # While no claim finds work, looks are paced by what they cost: the next comes no
    # sooner than LOOK_SHARE times the last one's duration after it. A destination that
    # is full (slow, or not answering) with thousands of due messages makes every look
    # walk past them: with mail arriving, a look at every doorbell kept a core busy
    # (10,000 due for a stuck destination: 0.9 ms of CPU for each message queued). A
    # cheap look (a millisecond) is still as prompt as before. While mail flows, GATHER
    # alone spaces the looks, as before.
    LOOK_SHARE: ClassVar[float] = 10.0

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None,
                 log: logging.Logger, clock: Callable[[], float]) -> None:
        super().__init__(config, queue, enqueue, log, clock)
        d = config.delivery
        self.local_domains = tuple(config.domains.local)
        self.schedule = Schedule(
            d.concurrency, d.concurrency_per_destination, self.BATCH,
            max(self.BATCH, 2 * d.concurrency_per_destination * self.MESSAGES_PER_CONNECTION),
            self.MAX_BYTES_IN_FLIGHT)
        # Destination tasks of each claimed message not ended yet (claim token -> count).
        self._tasks_left: dict[str, int] = {}
        self._storage_error: QueueError | None = None  # met by a destination task
        # Claims whose outcomes could not be recorded (the queue failed): given back as
        # soon as the queue takes writes again, not after their lease.
        self._unreleased: set[str] = set()
        self._worked_at = -math.inf  # time.monotonic() of the last claim that found work

    @abc.abstractmethod
    def _group(self, items: Sequence[WorkItem]) -> list[G]:
        """Claimed work by destination."""

    @abc.abstractmethod
    async def _deliver_destination_guarded(self, dest: G) -> None:
        """Deliver one destination's share; QueueError when the queue cannot be written."""

    def _forget(self, token: str) -> None:
        """Every destination of the claimed message is done."""

    async def _wind_down(self) -> None:
        """The loop ends (`run`, `run_once`): close what the target kept open."""

    def claim(self, now: float) -> list[WorkItem]:
        """Up to the schedule's room in messages, each domain's due messages together (up
        to one connection's worth), leaving out the local domains and those of
        destinations that are full."""
        limit, excluded = self._claim_room()
        if limit <= 0:
            return []
        return self.queue.claim(now, limit, self.LEASE, None, excluded,
                                per_domain=self.MESSAGES_PER_CONNECTION)

    async def claim_async(self, now: float) -> list[WorkItem]:
        limit, excluded = self._claim_room()
        if limit <= 0:
            return []
        return await self.queue.claim_async(now, limit, self.LEASE, None, excluded,
                                            per_domain=self.MESSAGES_PER_CONNECTION)

    def _claim_room(self) -> tuple[int, tuple[str, ...]]:
        return self.schedule.room(), (*self.local_domains, *self.schedule.excluded())

    async def run(self) -> None:
        """Claim by destination and start each destination's delivery at once, without
        waiting for the rest of its claim: a slow or unreachable destination occupies
        its own connection slots and its share of the work in flight (`Schedule`),
        never the room the others need. Storage errors pause the claiming; `stop()`
        claims nothing more, lets the deliveries under way end, and gives back what
        they did not record."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                if self._storage_error is not None:
                    exc, self._storage_error = self._storage_error, None
                    await self._pause(exc)
                    continue
                try:
                    await self.settle()
                    await self._give_back()
                    looked = time.monotonic()
                    items = await self.claim_async(self.clock())
                except QueueError as exc:
                    await self._pause(exc)
                    continue
                if items:
                    self._worked_at = time.monotonic()
                    tasks.update(self._start(items, tasks.discard))
                    continue  # more may be due, for other destinations
                took = time.monotonic() - looked
                with contextlib.suppress(TimeoutError):  # not wait_for: no task a wait
                    async with asyncio.timeout(self.POLL):
                        await self._wake.wait()
                if self._wake.is_set() and not self._stopping:
                    now = time.monotonic()
                    if now - self._worked_at < self.GATHER_AFTER:
                        await asyncio.sleep(self.GATHER)
                    elif (wait := looked + self.LOOK_SHARE * took - now) > 0:
                        await asyncio.sleep(wait)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            self._release_claims()
            with contextlib.suppress(QueueError):  # else the leases bring the work back
                await self.settle()
            await self._wind_down()

    async def _give_back(self) -> None:
        for token in sorted(self._unreleased):
            await asyncio.to_thread(self.queue.release, token)
            self._unreleased.discard(token)

    async def run_once(self) -> int:
        """Claim and deliver what is due now, destination by destination as `run` does,
        until nothing more is due; return how many messages were claimed."""
        tasks: set[asyncio.Task[None]] = set()
        claimed = 0
        while True:
            items = await self.claim_async(self.clock())
            claimed += len(items)
            if items:
                tasks.update(self._start(items, tasks.discard))
            elif not tasks:
                break
            else:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            if self._storage_error is not None:
                exc, self._storage_error = self._storage_error, None
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._wind_down()
                raise exc
        await self._wind_down()
        return claimed

    async def deliver(self, items: Sequence[WorkItem]) -> None:
        """Deliver claimed work: one task per destination, all awaited."""
        await asyncio.gather(*self._start(items), return_exceptions=True)
        if self._storage_error is not None:
            exc, self._storage_error = self._storage_error, None
            raise exc

    def _start(self, items: Sequence[WorkItem],
               ended: Callable[[asyncio.Task[None]], None] | None = None
               ) -> list[asyncio.Task[None]]:
        """Group claimed work by destination and start one task for each. A grouping
        that fails (a bug one message's domain triggers) is done again message by
        message, and the message that fails alone is held."""
        for item in items:
            self._claimed[item.claim_token] = tuple(r.id for r in item.recipients)
        tasks: list[asyncio.Task[None]] = []
        try:
            groups = self._group(items)
        except Exception as exc:
            self.log.error("%s: grouping %d message(s) by destination failed; grouping "
                           "them one by one", self.KIND, len(items), exc_info=exc)
            metrics.worker_error(self.KIND)
            groups = []
            for item in items:
                try:
                    groups += self._group([item])
                except Exception as alone:
                    self._claimed.pop(item.claim_token, None)
                    self._forget(item.claim_token)
                    tasks.append(asyncio.create_task(
                        self.quarantine(item, alone, "grouping it by destination")))
        for group in groups:
            for token in {u.item.claim_token for u in group.units}:
                self._tasks_left[token] = self._tasks_left.get(token, 0) + 1
        for group in groups:
            # Counted now, not when the task first runs: the next claim, made before
            # that, must already see this destination's share in flight.
            units = group.units
            load = (group.key,
                    Counter(domain_of(r.address) for u in units for r in u.recipients),
                    -(-len(units) // self.MESSAGES_PER_CONNECTION), len(units),
                    sum(len(u.item.message.content or b"") for u in units))
            self.schedule.add(*load)
            task = asyncio.create_task(self._deliver_tracked(group, load))
            if ended is not None:
                task.add_done_callback(ended)
            tasks.append(task)
        return tasks

    async def _deliver_tracked(self, dest: G,
                               load: tuple[str, Counter[str], int, int, int]) -> None:
        """One destination's share of a claim, counted in the schedule (`load`) until it
        ends; each message whose every destination is done is forgotten."""
        units = dest.units
        cancelled = False
        try:
            await self._deliver_destination_guarded(dest)
        except QueueError as exc:
            self._storage_error = exc
            self._unreleased.update(u.item.claim_token for u in units if not u.decided)
        except asyncio.CancelledError:
            cancelled = True  # shutting down: its claims are given back (`run`)
            raise
        except Exception as exc:  # the guard pins what it can: this is a bug
            self.log.error("delivery to %s failed", dest.domain, exc_info=exc)
            metrics.worker_error(self.KIND)
        finally:
            self.schedule.done(*load)
            if not cancelled:
                self.schedule.feedback(dest.key, any(u.sent for u in units))
                for token in {u.item.claim_token: None for u in units}:
                    self._ended(token)
            self._wake.set()  # room for more work

    def _ended(self, token: str) -> None:
        left = self._tasks_left.get(token, 1) - 1
        if left > 0:
            self._tasks_left[token] = left
            return
        self._tasks_left.pop(token, None)
        self._forget(token)
        self._poisoned.discard(token)
        self._recorded.difference_update(self._claimed.pop(token, ()))
