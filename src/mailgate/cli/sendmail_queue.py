"""The message `mailgate-sendmail` submits, and the queue-direct path for when no server
runs.

`read_message` reads standard input the way sendmail does (up to end of file, or a line
holding only `.` unless -i), with every line ending made CRLF. `Submission.build` makes
the envelope and the content: recipients from the command line and, with -t, from To, Cc
and Bcc (Bcc then removed); unqualified addresses get `@hostname`; a missing From (with
-F's name), Date and Message-ID are added, as an MSA does for local submissions (RFC
6409 8.1-8.3).

`queue_directly` is the path of last resort: the server is down (its submission port
refuses connections), so the message is written into the queue itself, with the same
recipient checks and alias expansion the server applies at RCPT; the server delivers it
when it starts. It needs write access to the queue: run by root, it writes as the owner
of the data directory (the user the server runs as), so the files stay the server's.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailgate.config import Config
from mailgate.smtp.address import Address, AddressError, parse_path
from mailgate.smtp.trace import HopCounter, missing_fields

__all__ = ["InputError", "Submission", "TooBig", "UnknownRecipients", "become_queue_owner",
           "queue_directly", "read_message"]

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_BCC = re.compile(rb"^Bcc:.*?\r\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)


class InputError(ValueError):
    """The message or an address cannot be used (EX_DATAERR / EX_USAGE)."""


class TooBig(InputError):
    """The message is larger than [limits] message_size."""


class UnknownRecipients(Exception):
    """Local recipients that are nobody's (EX_NOUSER); `queued` the id for the others."""

    def __init__(self, unknown: list[str], queued: str | None) -> None:
        super().__init__(", ".join(unknown))
        self.unknown = unknown
        self.queued = queued


def read_message(stream: BinaryIO, dot_ends: bool, limit: int) -> bytes:
    """Standard input as the message: CRLF line ends; a line holding only `.` ends it
    unless `dot_ends` is False (-i, -oi). TooBig past `limit` bytes."""
    out = bytearray()
    line_start = True  # a piece read begins a line (a long line comes in pieces)
    while piece := stream.readline(65536):  # bounded: a line without end cannot grow
        if dot_ends and line_start and piece.rstrip(b"\r\n") == b".":
            break
        line_start = piece.endswith(b"\n")
        out += piece
        if len(out) > limit:
            raise TooBig(f"the message is larger than the limit of {limit} bytes "
                         "([limits] message_size)")
    content = _NEWLINES.sub(b"\r\n", bytes(out))
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def qualify(address: str, hostname: str) -> str:
    """`bob` -> `bob@hostname`, as sendmail appends the local domain; others unchanged."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{hostname}"


def _check(address: str, *, sender: bool = False) -> Address:
    try:
        return parse_path(f"<{address}>", utf8=True, allow_null=sender,
                          allow_postmaster=not sender)
    except AddressError as exc:
        raise InputError(f"{address!r} is not a valid address: {exc}") from exc


@dataclass
class Submission:
    """What sendmail was asked to send, ready for SMTP or the queue."""

    sender: str
    recipients: list[str]
    content: bytes
    notify: tuple[str, ...] | None = None
    ret: str | None = None
    envid: str | None = None

    @classmethod
    def build(cls, raw: bytes, config: Config, *, recipients: list[str], extract: bool,
              sender: str | None, full_name: str | None) -> Submission:
        hostname = config.hostname
        end = raw.find(b"\r\n\r\n")
        header_end = len(raw) if end < 0 else end + 2
        head = raw[:header_end]
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        rcpts = [qualify(r, hostname) for r in recipients]
        content = raw
        if extract:
            found = email.utils.getaddresses(
                [str(v) for k in ("To", "Cc", "Bcc") for v in headers.get_all(k, [])])
            rcpts += [qualify(a, hostname) for _, a in found if a]
            content = _BCC.sub(b"", head) + raw[header_end:]
        rcpts = list(dict.fromkeys(r for r in rcpts if r))
        if not rcpts:
            raise InputError("no recipient addresses: give them as arguments, or use -t "
                             "with To, Cc or Bcc in the message")
        if sender is None:
            sender = _login_name()
        sender = "" if sender in ("", "<>") else qualify(sender, hostname)
        _check(sender, sender=True)
        for r in rcpts:
            _check(r)
        added = b""
        if not headers.get_all("From"):
            name = full_name if full_name is not None else os.environ.get("NAME")
            shown = sender or f"MAILER-DAEMON@{hostname}"
            added += (f"From: {email.utils.formataddr((name, shown))}\r\n" if name
                      else f"From: {shown}\r\n").encode("utf-8", "surrogateescape")
        seen = HopCounter()
        seen.feed(content)
        added += missing_fields(seen, hostname)
        return cls(sender, rcpts, added + content)


def _login_name() -> str:
    """Who runs sendmail, as sendmail names the sender: the login name, else the uid."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("LOGNAME") or os.environ.get("USER") or str(os.getuid())


def become_queue_owner(data_dir: Path) -> None:
    """Run as the owner of the data directory, when started as root and it belongs to
    someone else (the user the server runs as): files the queue creates (its WAL, a new
    database) must stay the server's, or the server could no longer open its own queue.
    This process only queues or reads, so it keeps nothing of root's."""
    if os.geteuid() != 0:
        return
    # What the queue needs is imported now: the new user may not read root's Python.
    import mailgate.queue.sqlite  # noqa: F401

    try:
        st = os.stat(data_dir)
    except OSError:
        return
    if st.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)


def _dkim_signed(config: Config, content: bytes, qid: str) -> bytes:
    """`content` with the DKIM signatures of its From: domain's keys ([dkim]) on top;
    as it is when they cannot be made (said on stderr) or this user may not read them."""
    from mailgate.server.dkimsign import SigningError, signatures

    try:
        fields, _ = signatures([content], config.dkim)
    except SigningError as exc:
        print(f"sendmail: {qid}: not DKIM-signed: {exc}", file=sys.stderr)
        return content
    return fields + content


def queue_directly(config: Config, message: Submission) -> str:
    """Write the message into the queue (the server is down); its queue id. Recipients
    are checked and expanded as the server would at RCPT; UnknownRecipients after the
    others were queued when some local ones are nobody's. QueueError (and OSError) when
    the queue cannot be written."""
    from mailgate.datadir import prepare_data_dir
    from mailgate.queue import NewMessage, NewRecipient, new_queue_id
    from mailgate.queue.backends import open_queue
    from mailgate.server.policy import Policy
    from mailgate.users import UserDB

    policy = Policy(config, None, UserDB(config.data_dir / "users.json"))
    final: dict[Address, NewRecipient] = {}
    unknown: list[str] = []
    for rcpt in message.recipients:
        address = _check(rcpt)
        targets = policy.final_recipients(address)
        if targets is None:
            unknown.append(rcpt)
            continue
        orcpt = None if targets == [address] else f"rfc822;{address}"
        for target in targets:
            final.setdefault(target, NewRecipient(str(target), orcpt=orcpt,
                                                  notify=message.notify))
    if not final:
        raise UnknownRecipients(unknown, None)
    qid = new_queue_id()
    now = time.time()
    trace = (f"Received: by {config.hostname} (mailgate-sendmail, from userid "
             f"{os.getuid()})\r\n\tid {qid};\r\n\t{email.utils.formatdate(now, localtime=True)}"
             "\r\n").encode()
    content = trace + message.content
    if config.dkim:  # signed here as the server signs what local users hand it
        content = _dkim_signed(config, content, qid)
    become_queue_owner(config.data_dir)
    prepare_data_dir(config.data_dir)
    queue = open_queue(config)
    try:
        qid = queue.enqueue(NewMessage(
            sender=message.sender, recipients=list(final.values()),
            content=content, received_at=now, client_address="127.0.0.1",
            client_helo=config.hostname, protocol="local", envid=message.envid,
            ret=message.ret, id=qid,
            smtputf8=not all(str(r).isascii() for r in (message.sender, *final)),
            body_8bit=not message.content.isascii()))
    finally:
        queue.close()
    if unknown:
        raise UnknownRecipients(unknown, qid)
    return qid

