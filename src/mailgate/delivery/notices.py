"""Notices to the sender: queueing DSNs, and when a delay notice is owed.

The outbound engine and local delivery both decide outcomes, and both tell the sender
the same way: `send_notice` writes the DSN (`bounce.make_dsn`) and queues it from `<>`
to the original's reverse-path. `warn_delayed` holds the rule for delay notices
(RFC 3464 `Action: delayed`, RFC 3461 `NOTIFY=DELAY`): after a round, a message queued
at least `delivery.delay_warning` seconds whose recipients were deferred gets one
notice for those not yet warned about, and each recipient is warned about once
(`Recipient.delay_notified`, kept in the queue so a restart does not warn again).
`notify_success` holds the rule for success notices (RFC 3461 5.2.2 and 5.3): a
recipient whose NOTIFY asks for SUCCESS gets `Action: delivered` when mailgate put the
message in its Maildir, and `Action: relayed` when the next hop took it without
offering DSN (one that offers DSN got NOTIFY passed along and reports for itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from mailgate import metrics
from mailgate.config import Config
from mailgate.queue import (
    Enqueue,
    NewMessage,
    NewRecipient,
    Queue,
    QueuedMessage,
    QueueError,
    RecipientState,
    WorkItem,
)

if TYPE_CHECKING:  # bounce.py loads the code knowledge base: only when a notice is due
    from mailgate.delivery.bounce import DSNKind, DSNRecipient

__all__ = ["notify_success", "send_notice", "wants_success", "warn_delayed"]

log = logging.getLogger("mailgate.delivery")


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
    qid = await enqueue(NewMessage(
        sender="", recipients=[NewRecipient(message.sender)], content=dsn, received_at=now,
        client_address="", client_helo=reporting_mta, protocol="local",
        smtputf8=message.smtputf8, body_8bit=message.body_8bit,
    ))
    metrics.notice(kind)
    return qid


async def warn_delayed(queue: Queue, enqueue: Enqueue, config: Config, item: WorkItem,
                       now: float) -> str | None:
    """The delay notice a round owes for claimed work, once the round has recorded an
    outcome for it; the notice's queue id, or None.

    Call it whenever some of `item`'s recipients got their outcome. A message whose
    recipients went to several destinations is looked at by each; only when every
    recipient still to be warned about has an attempt more than it had when claimed
    (the round is over for all of them) are the deferred ones reported, so the message
    gets one notice, not one per destination.

    The recipients are marked before the notice is queued, in one step that hands each
    id to one caller only: two destinations of a message finishing together cannot
    both send it. A crash (or a full disk) between the two loses that warning, never
    the mail, and a later failure still gets its notice. Recipients NOTIFY keeps from
    being warned (NEVER, or a list without DELAY) are marked all the same, so they are
    not looked at again every round."""
    msg = item.message
    warning = config.delivery.delay_warning
    # Cheap tests first: most rounds end here without reading the queue.
    if warning <= 0 or not msg.sender or now - msg.received_at < warning:
        return None
    unwarned = {r.id: r.attempts for r in item.recipients if not r.delay_notified}
    if not unwarned:
        return None
    try:
        shown = await asyncio.to_thread(queue.show, msg.id)
        current = {r.id: r for r in shown.recipients}
        if any(rid not in current or current[rid].attempts <= attempts
               for rid, attempts in unwarned.items()):
            return None  # deleted meanwhile, or another destination is still at work
        deferred = [current[rid] for rid in unwarned
                    if current[rid].state is RecipientState.DEFERRED]
        if not deferred:
            return None
        marked = set(await _mark_delay_notified(queue, [r.id for r in deferred]))
    except QueueError as exc:
        # Nothing marked: the next round that defers them tries again.
        log.error("%s: cannot decide on a delay notice now: %s", msg.id, exc)
        return None
    deferred = [r for r in deferred if r.id in marked]
    if not deferred:
        return None
    from mailgate.delivery.bounce import recipient_from_attempt

    last = dict(shown.attempts)  # in time order: the last attempt of each recipient wins
    until = msg.received_at + config.delivery.max_queue_lifetime
    rcpts = [recipient_from_attempt(r, last.get(r.id), will_retry_until=until)
             for r in deferred]
    try:
        qid = await send_notice(enqueue, replace(shown, content=msg.content), rcpts,
                                kind="delay", reporting_mta=config.hostname, now=now)
    except QueueError as exc:
        log.error("%s: the delay notice for %s could not be queued and is not sent: %s",
                  msg.id, ", ".join(f"<{r.address}>" for r in deferred), exc)
        return None
    if qid is not None:
        log.info("%s: sender delay notification: %s", msg.id, qid)
    return qid


async def _mark_delay_notified(queue: Queue, ids: list[int]) -> list[int]:
    """Through the backend's writer, without a thread of our own."""
    return await queue.mark_delay_notified_async(ids)


def wants_success(notify: Sequence[str] | None) -> bool:
    """Whether a recipient's NOTIFY asks for a notice when it is delivered: only an
    explicit SUCCESS does (RFC 3461 4.1)."""
    return bool(notify) and any(w.strip().upper() == "SUCCESS" for w in notify or ())


async def notify_success(queue: Queue, enqueue: Enqueue, config: Config, item: WorkItem,
                         action: Literal["delivered", "relayed"], ids: Collection[int],
                         now: float) -> str | None:
    """The success notice owed for the recipients `ids` of claimed `item` that are now
    delivered and whose NOTIFY asks for SUCCESS: one DSN with `action` for them all; its
    queue id, or None. Nothing is read from the queue unless one of them asked."""
    msg = item.message
    asked = {r.id for r in item.recipients if r.id in ids and wants_success(r.notify)}
    if not asked or not msg.sender:
        return None
    try:
        shown = await asyncio.to_thread(queue.show, msg.id)
    except QueueError as exc:
        log.error("%s: cannot read the message for its success notice: %s", msg.id, exc)
        return None
    done = [r for r in shown.recipients
            if r.id in asked and r.state is RecipientState.DELIVERED]
    if not done:
        return None
    from mailgate.delivery.bounce import recipient_from_attempt

    last = dict(shown.attempts)  # in time order: the last attempt of each recipient wins
    rcpts = [recipient_from_attempt(r, last.get(r.id), action=action) for r in done]
    try:
        qid = await send_notice(enqueue, replace(shown, content=msg.content), rcpts,
                                kind="success", reporting_mta=config.hostname, now=now)
    except QueueError as exc:
        log.error("%s: the success notice for %s could not be queued: %s", msg.id,
                  ", ".join(f"<{r.address}>" for r in done), exc)
        return None
    if qid is not None:
        log.info("%s: sender delivery status notification (%s): %s", msg.id, action, qid)
    return qid
