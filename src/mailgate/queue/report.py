"""Queue listings for people (text) and programs (JSON), shared by CLI and web.

Most of what they show was chosen by a stranger (addresses, HELO name, ENVID, headers,
a remote server's reply text), so every line goes through `printable`: a control
character in it is shown as an escape and never reaches the terminal as itself.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import time
from typing import Any

from mailgate.queue import Attempt, QueuedMessage, Recipient
from mailgate.textsafe import json_printable, printable

__all__ = ["list_json", "list_text", "message_json", "show_json", "show_text"]


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
        "recipients": [_rcpt_json(r) for r in m.recipients],
        "attempts": [_attempt_json(rid, a) for rid, a in m.attempts],
    }


def list_json(msgs: list[QueuedMessage], counts: dict[str, int]) -> str:
    return json.dumps({"counts": counts, "messages": [message_json(m) for m in msgs]},
                      indent=2) + "\n"


def list_text(msgs: list[QueuedMessage], counts: dict[str, int]) -> str:
    lines = ["recipients: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    if not msgs:
        lines.append("(no messages)")
    for m in msgs:
        lines.append(f"{m.id}  {_when(m.received_at)}  {m.size:>8}  <{m.sender}>")
        for r in m.recipients:
            last = f"  {r.last_code} {r.last_enhanced or ''} {r.last_text or ''}".rstrip() \
                if r.last_code is not None else ""
            lines.append(f"    {r.state:<9} <{r.address}>{last}")
    return _text(lines)


def _text(lines: list[str]) -> str:
    return "".join(printable(line, keep="\t") + "\n" for line in lines)


def show_json(m: QueuedMessage) -> str:
    data = message_json(m)
    if m.content is not None:
        data["headers"] = _headers(m.content)
    return json_printable(json.dumps(data, indent=2, ensure_ascii=False)) + "\n"


def _headers(content: bytes) -> list[tuple[str, str]]:
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
