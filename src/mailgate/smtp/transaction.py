"""One message on its way through a `ClientSession`: what is written for it (MAIL FROM,
RCPT TO, the DATA payload or the BDAT chunks) and what became of each recipient.

The session decides when each line goes and what each reply means; this holds the
message's side of that: its commands, built from what the server offers, and one
outcome per recipient, none lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.codes.reply import Reply
from mailgate.smtp.client_events import (
    EIGHTBIT_UNSUPPORTED,
    SIZE_TOO_BIG,
    UTF8_ADDRESS_UNSUPPORTED,
    UTF8_HEADERS_UNSUPPORTED,
    Capabilities,
    Envelope,
    MessageResult,
    Outcome,
    RecipientResult,
)
from mailgate.smtp.commands import bdat_command, mail_command, rcpt_command
from mailgate.smtp.framing import dot_stuff_sized

__all__ = ["Message", "Transaction"]


@dataclass(slots=True)
class Message:
    """A message the shell gave to `send()`, with the handle its result repeats."""

    handle: int
    envelope: Envelope
    content: bytes

    def result(self, out: Outcome) -> MessageResult:
        """Every recipient decided alike (a local refusal, or the session failed)."""
        env = self.envelope
        return MessageResult(self.handle, env, tuple(RecipientResult(r, out)
                                                     for r in env.recipients))


@dataclass(slots=True)
class Transaction:
    """One mail transaction in flight."""

    msg: Message
    use_bdat: bool
    payload: bytes  # dot-stuffed DATA content, or the raw content for BDAT
    mail_cmd: str
    results: list[Outcome | None]
    mail_ok: bool = False
    accepted: list[int] = field(default_factory=list)
    data_decided: bool = False  # accepted recipients have their final reply
    completed: bool = False  # the server ended the transaction itself
    next_chunk: int = 0  # offset of the next BDAT chunk to send

    @classmethod
    def prepare(cls, msg: Message, caps: Capabilities, *, verify_only: bool,
                prefer_bdat: bool) -> Transaction | MessageResult:
        """Choose DATA or BDAT, check what the server can take, build MAIL FROM; or the
        result of a message refused here, without a word to the server."""
        env = msg.envelope
        content = b"" if verify_only else msg.content
        use_bdat = prefer_bdat and caps.chunking and not verify_only
        if use_bdat:
            payload = content
            size = len(payload)
        else:
            payload, size = dot_stuff_sized(content, env.crlf)
        refusal: Reply | None = None
        utf8 = env.needs_smtputf8
        eightbit = not content.isascii()
        if caps.size_limit is not None and size > caps.size_limit:
            refusal = Reply.make(
                552, "5.3.4",
                f"{SIZE_TOO_BIG.text} ({size} > {caps.size_limit} octets; RFC 1870)",
            )
        elif utf8 and not caps.smtputf8:
            addr_utf8 = env.sender.is_utf8 or any(r.address.is_utf8 for r in env.recipients)
            refusal = UTF8_ADDRESS_UNSUPPORTED if addr_utf8 else UTF8_HEADERS_UNSUPPORTED
        elif eightbit and not caps.eightbitmime and not (utf8 and caps.smtputf8):
            refusal = EIGHTBIT_UNSUPPORTED
        if refusal is not None:
            return msg.result(Outcome(refusal, False, "mail"))
        mail = mail_command(
            env.sender, size=size if caps.size and not verify_only else None,
            eightbit=eightbit and caps.eightbitmime, smtputf8=utf8,
            ret=env.ret if caps.dsn else None, envid=env.envid if caps.dsn else None,
        )
        return cls(msg, use_bdat, payload, mail, [None] * len(env.recipients))

    def rcpt_cmd(self, i: int, dsn: bool) -> str:
        """RCPT TO for recipient `i`; `dsn`: the server offers DSN (RFC 3461)."""
        r = self.msg.envelope.recipients[i]
        if not dsn:
            return rcpt_command(r.address)
        return rcpt_command(r.address, notify=r.notify, orcpt=r.orcpt)

    def chunk(self, size: int) -> tuple[str, bytes, bool]:
        """The next BDAT chunk of at most `size` octets: (command line, octets, last)."""
        data = self.payload
        start = self.next_chunk
        end = min(start + size, len(data))
        last = end == len(data)
        self.next_chunk = end
        return bdat_command(end - start, last), data[start:end], last

    def decide(self, indices: list[int], out: Outcome) -> None:
        """`out` for the recipients at `indices` not yet decided."""
        for i in indices:
            if self.results[i] is None:
                self.results[i] = out

    def decide_all(self, out: Outcome) -> None:
        self.decide(list(range(len(self.results))), out)

    def result(self) -> MessageResult:
        env = self.msg.envelope
        return MessageResult(
            self.msg.handle, env,
            tuple(RecipientResult(r, o) for r, o in zip(env.recipients, self.results, strict=True)
                  if o is not None),
        )
