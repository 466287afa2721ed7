"""Moving a queue between backends: `mailgate queue export` and `mailgate queue import`.

The export is JSON Lines: a header line, one line per message with everything the
`Queue` protocol shows of it (envelope, content in base64 while the message is live,
every recipient with its state, schedule and flags, every attempt), and a trailer that
counts the messages, so an import can tell a file cut short from a whole one. Both sides
use only the protocol (`list`, `show`, `restore`), so any backend moves to any other:
SQLite to PostgreSQL when a site grows into a cluster, and back.

One message is in memory at a time. Import skips messages whose id is already there,
so an import that stopped half way can simply be run again.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import IO, Any

from mailgate.queue import (
    Attempt,
    NotFound,
    Queue,
    QueuedMessage,
    QueueError,
    Recipient,
    RecipientState,
)
from mailgate.queue.report import pages

__all__ = ["FORMAT", "export_queue", "import_queue"]

FORMAT = "mailgate-queue-export"
VERSION = 1


def _recipient(r: Recipient) -> dict[str, Any]:
    return {"id": r.id, "address": r.address, "state": r.state.value,
            "attempts": r.attempts, "next_attempt": r.next_attempt, "orcpt": r.orcpt,
            "notify": None if r.notify is None else list(r.notify),
            "last_code": r.last_code, "last_enhanced": r.last_enhanced,
            "last_text": r.last_text, "updated_at": r.updated_at,
            "delay_notified": r.delay_notified, "held_reason": r.held_reason}


def _line(m: QueuedMessage) -> dict[str, Any]:
    return {
        "id": m.id, "sender": m.sender, "received_at": m.received_at, "size": m.size,
        "client_address": m.client_address, "client_helo": m.client_helo,
        "protocol": m.protocol, "authenticated_as": m.authenticated_as, "envid": m.envid,
        "ret": m.ret, "smtputf8": m.smtputf8, "body_8bit": m.body_8bit,
        "finished_at": m.finished_at,
        "content": None if m.content is None else base64.b64encode(m.content).decode(),
        "recipients": [_recipient(r) for r in m.recipients],
        "attempts": [{"recipient_id": rid, "at": a.at, "host": a.host, "code": a.code,
                      "enhanced": a.enhanced, "text": a.text, "outcome": a.outcome,
                      "remote": a.remote, "tls": a.tls} for rid, a in m.attempts],
    }


def export_queue(queue: Queue, out: IO[str]) -> int:
    """Write every message (live and finished records) to `out`; how many."""
    out.write(json.dumps({"format": FORMAT, "version": VERSION,
                          "exported_at": time.time()}) + "\n")
    n = 0
    for batch in pages(queue, 1 << 62, live_only=False):
        for listed in batch:
            try:
                m = queue.show(listed.id, content=True)
            except NotFound:
                continue  # purged or deleted meanwhile
            out.write(json.dumps(_line(m)) + "\n")
            n += 1
    out.write(json.dumps({"end": True, "messages": n}) + "\n")
    out.flush()
    return n


def _message(d: dict[str, Any]) -> QueuedMessage:
    content = d["content"]
    return QueuedMessage(
        id=str(d["id"]), sender=str(d["sender"]), received_at=float(d["received_at"]),
        size=int(d["size"]), client_address=str(d["client_address"]),
        client_helo=str(d["client_helo"]), protocol=str(d["protocol"]),
        authenticated_as=d["authenticated_as"], envid=d["envid"], ret=d["ret"],
        smtputf8=bool(d["smtputf8"]), body_8bit=bool(d["body_8bit"]),
        finished_at=d["finished_at"],
        content=None if content is None else base64.b64decode(content, validate=True),
        recipients=tuple(Recipient(
            id=int(r["id"]), message_id=str(d["id"]), address=str(r["address"]),
            state=RecipientState(r["state"]), attempts=int(r["attempts"]),
            next_attempt=r["next_attempt"], orcpt=r["orcpt"],
            notify=None if r["notify"] is None else tuple(r["notify"]),
            last_code=r["last_code"], last_enhanced=r["last_enhanced"],
            last_text=r["last_text"], updated_at=float(r["updated_at"]),
            delay_notified=bool(r["delay_notified"]), held_reason=r["held_reason"])
            for r in d["recipients"]),
        attempts=tuple((int(a["recipient_id"]), Attempt(
            at=float(a["at"]), host=str(a["host"]), code=int(a["code"]),
            enhanced=a["enhanced"], text=str(a["text"]), outcome=str(a["outcome"]),
            remote=bool(a["remote"]), tls=a["tls"])) for a in d["attempts"]),
    )


def _lines(source: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in enumerate(source, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise QueueError(f"line {number} is not JSON ({exc.args[0]})") from None
        if not isinstance(value, dict):
            raise QueueError(f"line {number} is not a JSON object")
        yield number, value


def import_queue(queue: Queue, source: IO[str]) -> tuple[int, int]:
    """Restore every message of an export into `queue`; (stored, already there).
    QueueError naming the line for a file that is not an export, is damaged, or ends
    before its trailer (what came before it is stored)."""
    lines = _lines(source)
    first = next(lines, None)
    if first is None or first[1].get("format") != FORMAT:
        raise QueueError("not a mailgate queue export (its first line should name "
                         f"format {FORMAT!r})")
    if first[1].get("version") != VERSION:
        raise QueueError(f"export format version {first[1].get('version')!r}: this "
                         f"mailgate reads version {VERSION}")
    stored = skipped = 0
    for number, d in lines:
        if d.get("end") is True:
            if d.get("messages") != stored + skipped:
                raise QueueError(f"line {number}: the export counts {d.get('messages')} "
                                 f"messages but holds {stored + skipped}")
            return stored, skipped
        try:
            message = _message(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise QueueError(f"line {number}: not a message as exported ({exc!r})") from None
        if queue.restore(message):
            stored += 1
        else:
            skipped += 1
    raise QueueError(f"the export ends before its last line after {stored + skipped} "
                     "messages: it was cut short; those were imported, run the import "
                     "again with the whole file")
