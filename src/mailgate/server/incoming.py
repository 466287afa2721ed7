"""A message on its way in: spooled as it arrives, traced, then what the queue stores.

The listener (`listener.py`) runs the conversation; what it receives between DATA (or
the first BDAT) and the end of the message is an `Incoming`: the queue id chosen at
its start, the spool file its content streams to (`queue.spool`: to a file past 256
KiB, so memory stays bounded), and the Received: fields counted on the way
(`smtp.trace.HopCounter`, mail loops). The trace header mailgate adds comes first
(`received_header`, RFC 5321 4.4), and `new_message` turns the accepted envelope and
the spool into the queue's `NewMessage`.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from mailgate.queue import NewMessage, NewRecipient
from mailgate.queue.spool import SpoolFile
from mailgate.server.authcheck.results import ResultsFilter
from mailgate.server.policy import ConnectionInfo
from mailgate.smtp.framing import all_crlf
from mailgate.smtp.server import MailFrom, RcptTo
from mailgate.smtp.trace import HopCounter, missing_fields

__all__ = ["Incoming", "new_message", "received_header"]

log = logging.getLogger("mailgate.smtpd")

_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The RFC 5322 date of the Received header, formatted once per second."""
    global _date_cache  # noqa: PLW0603 - a one-entry cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


class Incoming:
    """One message being received. A spool that cannot be written is dropped (`error`
    says why); the rest of the content is then read and discarded, and the end of the
    message gets 452."""

    __slots__ = ("error", "forged", "hops", "peer", "qid", "spool")

    def __init__(self, spool_dir: Path, qid: str, trace: bytes, peer: str,
                 authserv_id: str = "") -> None:
        self.qid = qid
        self.peer = peer  # the client's address, for the log
        self.hops = HopCounter()
        # Authentication-Results fields claiming our authserv-id are forged: dropped
        # as they arrive (RFC 8601 5), whoever the client is.
        self.forged = ResultsFilter(authserv_id) if authserv_id else None
        self.spool: SpoolFile | None = None
        self.error: OSError | None = None
        # The trace field is the spool's head, kept apart from the body: the fields a
        # submission lacks go after it at the end, and the backend may rewrite its id.
        self.spool = SpoolFile(spool_dir, qid, head=trace)

    def write(self, data: bytes) -> None:
        self.hops.feed(data)
        if self.spool is None:
            return  # failed before
        if self.forged is not None and not self.forged.done:
            data = self.forged.feed(data)
        try:
            self.spool.write(data)
        except OSError as exc:
            self._failed(exc)

    def submission_fixups(self, spool: SpoolFile, hostname: str) -> None:
        """Add the Date: and Message-ID: fields the message lacks (RFC 6409 8.2, 8.3),
        after the trace field: for the submission ports only, never on the MX."""
        spool.head += missing_fields(self.hops, hostname)

    def take(self) -> SpoolFile | None:
        """The spool file, now the caller's to finish or discard."""
        if self.forged is not None and self.spool is not None:
            held = self.forged.finish()  # counted by `hops` when it arrived
            if held:
                try:
                    self.spool.write(held)
                except OSError as exc:
                    self._failed(exc)
        spool, self.spool = self.spool, None
        return spool

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()
            self.spool = None

    def _failed(self, exc: OSError) -> None:
        log.error("cannot spool the message from [%s]: %s", self.peer, exc)
        self.error = exc
        self.discard()


def received_header(info: ConnectionInfo, hostname: str, qid: str,
                    rcpts: Sequence[RcptTo]) -> bytes:
    """RFC 5321 4.4 trace header; the TLS part follows Postfix's habit."""
    ip = info.ip
    literal = f"IPv6:{ip}" if ":" in ip else ip
    tls = f"\r\n\t(using {info.tls_version} with cipher {info.tls_cipher})" if info.tls else ""
    rcpt = f"\r\n\tfor <{rcpts[0].recipient}>" if len(rcpts) == 1 else ""
    date = _date_now()
    hdr = (f"Received: from {info.helo or 'unknown'} ([{literal}]){tls}\r\n"
           f"\tby {hostname} (mailgate) with {info.protocol} "
           f"id {qid}{rcpt};\r\n\t{date}\r\n")
    return hdr.encode("utf-8", "surrogateescape")


def new_message(qid: str, info: ConnectionInfo, sender: MailFrom, rcpts: Sequence[RcptTo],
                spool: SpoolFile, trusted: bool, crlf: bool = False) -> NewMessage:
    """What the queue stores of an accepted message: the envelope as the session parsed
    it (one canonical form, nothing re-parsed), its content in `spool`.

    `crlf`: the body's line ends are all CRLF (it came by DATA). The flag is stored only
    if what mailgate put at the top (trace, Authentication-Results, DKIM-Signature, the
    fields a submission lacked) is CRLF throughout as well: checked here, a few hundred
    octets, so a field made with a bare LF can never reach a receiver unchecked."""
    return NewMessage(
        id=qid,
        sender=str(sender.sender),
        recipients=[
            NewRecipient(
                address=str(r.recipient),
                orcpt=f"{r.params.orcpt[0]};{r.params.orcpt[1]}" if r.params.orcpt else None,
                notify=r.params.notify if trusted else _untrusted_notify(r.params.notify),
            )
            for r in rcpts
        ],
        content=b"",
        spool=spool,
        crlf=crlf and all_crlf(spool.head),
        received_at=time.time(),
        client_address=info.ip,
        client_helo=info.helo,
        protocol=info.protocol,
        authenticated_as=info.authenticated,
        envid=sender.params.envid,
        ret=sender.params.ret,
        smtputf8=sender.params.smtputf8,
        body_8bit=sender.params.body == "8BITMIME",
    )


def _untrusted_notify(notify: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """NOTIFY from a client we do not answer for, without SUCCESS: a success notice would
    send the message's headers to whatever sender a stranger names (backscatter).
    Failure and delay notices stay as asked (RFC 3461); SUCCESS alone becomes NEVER."""
    if notify is None or "SUCCESS" not in notify:
        return notify
    rest = tuple(n for n in notify if n != "SUCCESS")
    return rest or ("NEVER",)
