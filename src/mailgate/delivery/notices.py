"""Notices to the sender: queueing DSNs.

Whoever decides an outcome tells the sender the same way: `send_notice` writes the DSN
(`bounce.make_dsn`) and queues it from `<>` to the original's reverse-path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from mailgate.queue import (
    NewMessage,
    NewRecipient,
    QueuedMessage,
)

if TYPE_CHECKING:  # bounce.py loads the code knowledge base: only when a notice is due
    from mailgate.delivery.bounce import DSNKind, DSNRecipient

__all__ = ["Enqueue", "send_notice"]

Enqueue = Callable[[NewMessage], Awaitable[str]]


async def send_notice(enqueue: Enqueue, message: QueuedMessage,
                      recipients: Sequence[DSNRecipient], *, kind: DSNKind,
                      reporting_mta: str, now: float) -> str | None:
    """Queue a DSN about `recipients` of `message` (which needs its content) to its
    sender; the notice's queue id, or None when none is owed (the original came from
    `<>`, or NOTIFY asked for no notice about these recipients)."""
    from mailgate.delivery.bounce import make_dsn

    dsn = make_dsn(message, recipients, reporting_mta=reporting_mta, kind=kind, now=now)
    if dsn is None:
        return None
    # The original's flags: a notice about SMTPUTF8 or 8-bit mail carries it (bounce.py).
    return await enqueue(NewMessage(
        sender="", recipients=[NewRecipient(message.sender)], content=dsn, received_at=now,
        client_address="", client_helo=reporting_mta, protocol="local",
        smtputf8=message.smtputf8, body_8bit=message.body_8bit,
    ))
