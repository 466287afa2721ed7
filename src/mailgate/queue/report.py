"""Queue listings for people (text) and programs (JSON), shared by CLI and web.

Most of what they show was chosen by a stranger (addresses, HELO name, ENVID, headers,
a remote server's reply text), so every line goes through `printable`: a control
character in it is shown as an escape and never reaches the terminal as itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from mailgate.queue import (
    FINAL_STATES,
    Attempt,
    NotFound,
    Queue,
    QueuedMessage,
    Recipient,
    RecipientState,
)
from mailgate.textsafe import json_printable, printable

__all__ = ["list_json", "list_text", "mailq", "message_json", "pages", "show_json",
           "show_text", "stream_list"]

PAGE = 500  # messages read at a time by the streaming listings


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _rcpt_json(r: Recipient) -> dict[str, Any]:
    return {
        "id": r.id,
        "address": r.address,
        "state": str(r.state),
        "attempts": r.attempts,
        "next_attempt": r.next_attempt,
        "delay_notified": r.delay_notified,
        "held_reason": r.held_reason,
        "last_reply": None if r.last_code is None else {
            "code": r.last_code, "enhanced": r.last_enhanced, "text": r.last_text,
        },
    }


def _attempt_json(rid: int, a: Attempt) -> dict[str, Any]:
    return {"recipient_id": rid, "at": a.at, "host": a.host, "code": a.code,
            "enhanced": a.enhanced, "text": a.text, "outcome": a.outcome, "remote": a.remote,
            "tls": a.tls}


def message_json(m: QueuedMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "sender": m.sender,
        "received_at": m.received_at,
        "size": m.size,
        "client": {"address": m.client_address, "helo": m.client_helo,
                   "protocol": m.protocol, "authenticated_as": m.authenticated_as},
        "dsn": {"envid": m.envid, "ret": m.ret},
        "smtputf8": m.smtputf8,
        "body_8bit": m.body_8bit,
        "finished_at": m.finished_at,
        "recipients": [_rcpt_json(r) for r in m.recipients],
        "attempts": [_attempt_json(rid, a) for rid, a in m.attempts],
    }


def list_json(msgs: list[QueuedMessage], counts: dict[str, int]) -> str:
    import json  # here, not with the module: the text listing never needs it

    return json.dumps({"counts": counts, "messages": [message_json(m) for m in msgs]},
                      indent=2) + "\n"


def list_text(msgs: list[QueuedMessage], counts: dict[str, int] | None) -> str:
    """The listing; without `counts`, only the messages (a page of a streamed listing)."""
    lines = []
    if counts is not None:
        lines.append("recipients: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if not msgs:
            lines.append("(no messages)")
    for m in msgs:
        lines.append(f"{m.id}  {_when(m.received_at)}  {m.size:>8}  <{m.sender}>")
        for r in m.recipients:
            last = f"  {r.last_code} {r.last_enhanced or ''} {r.last_text or ''}".rstrip() \
                if r.last_code is not None else ""
            lines.append(f"    {r.state:<9} <{r.address}>{last}")
    return _text(lines)


def pages(queue: Queue, limit: int, *, state: RecipientState | None = None,
          live_only: bool = True, page: int = PAGE) -> Iterator[list[QueuedMessage]]:
    """Up to `limit` messages, newest first, a page at a time: only one page is ever in
    memory, whatever the limit (a listing of a million messages streams).

    Pages are keyed (`before` the last id seen), so each costs the same at any depth. If
    the message a page ended on has gone meanwhile (delivered and purged, or deleted),
    the next page starts before the one before it."""
    left = limit
    cursor: list[str] = []
    while left > 0:
        size = min(page, left)
        batch: list[QueuedMessage] | None = None
        while batch is None:
            try:
                batch = queue.list(state=state, limit=size, live_only=live_only,
                                   before=cursor[-1] if cursor else None)
            except NotFound:
                cursor.pop()
                if not cursor:
                    return
        if not batch:
            return
        yield batch
        left -= len(batch)
        if len(batch) < size:
            return
        cursor = [m.id for m in batch]


def stream_list(queue: Queue, limit: int, fmt: str, *, state: RecipientState | None = None,
                live_only: bool = True) -> Iterator[str]:
    """`queue list` as pieces of text to write one after the other: the same JSON (or
    text) as `list_json` / `list_text`, without building the list first."""
    counts = queue.counts()
    found = False
    if fmt == "json":
        import json

        yield '{\n  "counts": ' + json.dumps(counts) + ',\n  "messages": ['
        for batch in pages(queue, limit, state=state, live_only=live_only):
            for m in batch:
                yield ("," if found else "") + "\n    " + json.dumps(message_json(m))
                found = True
        yield ("\n  " if found else "") + "]\n}\n"
        return
    yield _text(["recipients: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))])
    for batch in pages(queue, limit, state=state, live_only=live_only):
        found = True
        yield list_text(batch, None)
    if not found:
        yield _text(["(no messages)"])


def mailq(queue: Queue) -> Iterator[str]:
    """The live queue as Postfix's `mailq` prints it (its showq format): one entry per
    message, its queue id (`!` after it when held), size, arrival time and sender
    (MAILER-DAEMON for <>), then each recipient still to be delivered, the reason of its
    last failed attempt above it in parentheses; last, `-- N Kbytes in M Requests.` or
    `Mail queue is empty`. Streams, a page of messages at a time."""
    count = size = 0
    for batch in pages(queue, 2**62):
        for m in batch:
            lines = [] if count == 0 else [""]
            if count == 0:
                lines.append(f"{'-Queue ID-':<10} {'--Size--':>8} {'----Arrival Time----':<20} "
                             "-Sender/Recipient-------")
            waiting = [r for r in m.recipients if r.state not in FINAL_STATES]
            held = bool(waiting) and all(r.state is RecipientState.HELD for r in waiting)
            when = time.asctime(time.localtime(m.received_at))[:19]  # as asctime(3)
            lines.append(f"{m.id:<10}{'!' if held else ' '}{m.size:>8} {when:<20.20} "
                         f"{m.sender or 'MAILER-DAEMON'}")
            shown = None
            for r in waiting:
                reason = _reason(r)
                if reason and reason != shown:
                    lines.append(f"{reason:>78}")
                    shown = reason
                lines.append(f"{'':<41}{r.address}")
            count += 1
            size += m.size
            yield _text(lines)
    if count == 0:
        yield "Mail queue is empty\n"
    else:
        yield f"\n-- {size // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}.\n"


def _reason(r: Recipient) -> str:
    """Why the recipient is still waiting, as mailq shows it: in parentheses."""
    if r.state is RecipientState.HELD:
        return f"(held: {r.held_reason})" if r.held_reason else "(held)"
    if r.last_code is None:
        return ""
    return "(" + " ".join(p for p in (str(r.last_code), r.last_enhanced, r.last_text) if p) + ")"


def _text(lines: list[str]) -> str:
    return "".join(printable(line, keep="\t") + "\n" for line in lines)


def show_json(m: QueuedMessage) -> str:
    import json

    data = message_json(m)
    if m.content is not None:
        data["headers"] = _headers(m.content)
    return json_printable(json.dumps(data, indent=2, ensure_ascii=False)) + "\n"


def _headers(content: bytes) -> list[tuple[str, str]]:
    import email.parser  # here, not with the module: `queue list` never parses a message
    import email.policy

    head = content.split(b"\r\n\r\n", 1)[0]
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    # Bytes beyond ASCII come back as surrogates; most are UTF-8 (RFC 6532).
    return [(k, v.encode("ascii", "surrogateescape").decode("utf-8", "replace"))
            for k, v in msg.raw_items()]


def show_text(m: QueuedMessage, lang: str = "en") -> str:
    from mailgate.codes.explain import explain_code

    lines = [
        f"message   {m.id}",
        f"from      <{m.sender}>",
        f"received  {_when(m.received_at)} from {m.client_helo or '?'} [{m.client_address}]"
        f" with {m.protocol}" + (f" as {m.authenticated_as}" if m.authenticated_as else ""),
        f"size      {m.size} octets",
    ]
    if m.envid or m.ret:
        lines.append(f"dsn       envid={m.envid or '-'} ret={m.ret or '-'}")
    if m.finished_at is not None:
        lines.append(f"finished  {_when(m.finished_at)} (content deleted; the record "
                     "stays for [queue] keep_records)")
    for r in m.recipients:
        lines.append(f"to        <{r.address}>  {r.state}, {r.attempts} attempt(s), next "
                     f"{_when(r.next_attempt)}"
                     + (", sender told of the delay" if r.delay_notified else ""))
        if r.held_reason:
            lines.append(f"  held: {r.held_reason}")
        for rid, a in m.attempts:
            if rid != r.id:
                continue
            lines.append(f"  {_when(a.at)}  {a.host or '(no connection)'}  {a.code} "
                         f"{a.enhanced or ''} {a.text}  [{a.outcome}"
                         + (f", {a.tls}]" if a.tls else "]"))
            if a.code >= 400:
                try:
                    e = explain_code(a.enhanced or str(a.code), lang)
                    lines.append(f"      {e.code} {e.title}: {e.summary}")
                except ValueError:
                    pass
    if m.content is not None:
        lines.append("headers")
        # Unfolded (RFC 5322 2.2.3): a folded header is one line here.
        lines += [f"  {k}: {_UNFOLD.sub('', v)}" for k, v in _headers(m.content)]
    return _text(lines)


_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
