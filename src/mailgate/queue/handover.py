"""How a queue's writer thread answers callers on an event loop (the SQLite backend's
`GroupCommitWriter`, the PostgreSQL backend's `Engine`): a slot per request, settled on
the loop together with the rest of its batch (one call_soon_threadsafe per loop and
batch: `hand_over`), instead of a concurrent Future wrapped for asyncio for each write."""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

__all__ = ["LoopSlot", "hand_over", "settle"]

T = TypeVar("T")


class LoopSlot(Generic[T]):
    """The writer's end of an asyncio future, in place of a concurrent Future (the four
    methods the writer calls): the outcome waits for the batch's end, when one call per
    event loop settles every slot (`_hand_over`). A concurrent Future wrapped for asyncio
    cost each write a Condition, two chained callbacks and a call_soon_threadsafe."""

    __slots__ = ("_done", "_settled", "error", "loop", "value", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[T],
                 settled: list[LoopSlot[Any]]) -> None:
        self.loop = loop
        self.waiter = waiter
        self.value: T | None = None
        self.error: BaseException | None = None
        self._done = False
        self._settled = settled  # the writer's list of slots to hand over

    def set_running_or_notify_cancel(self) -> bool:
        # The waiter is the loop's; reading whether it was cancelled is one attribute
        # read. A cancel after this moment finds the write under way, as with a Future.
        return not self.waiter.cancelled()

    def done(self) -> bool:
        return self._done

    def set_result(self, value: T) -> None:
        self.value, self._done = value, True
        self._settled.append(self)

    def set_exception(self, error: BaseException) -> None:
        self.error, self._done = error, True
        self._settled.append(self)


def settle(slots: list[LoopSlot[Any]]) -> None:
    """On the event loop: give each waiter still waiting its slot's outcome."""
    for slot in slots:
        waiter = slot.waiter
        if waiter.done():  # cancelled meanwhile: its caller has gone
            continue
        if slot.error is not None:
            waiter.set_exception(slot.error)
        else:
            waiter.set_result(slot.value)


def hand_over(settled: list[LoopSlot[Any]]) -> None:
    """In the writer thread, after a batch: settle its slots (`settled`, emptied), one
    call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[LoopSlot[Any]]] = {}
    for slot in settled:
        by_loop.setdefault(slot.loop, []).append(slot)
    settled.clear()
    for loop, slots in by_loop.items():
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, slots)
