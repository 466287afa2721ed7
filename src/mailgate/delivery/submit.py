"""`mailgate send`: submit one RFC 5322 message, like `sendmail -t`, and explain the answer.

Recipients come from `--to`, or else from the message's To, Cc and Bcc headers (Bcc is
then removed, as sendmail -t does); the sender from `--from` or the From header; a
missing Date or Message-ID is added (the Message-ID under the sender's domain). The
conversation is mailgate's own ClientSession, so a refusal is shown with the knowledge
base's explanation of every code in it.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass

from mailgate.codes.reply import Reply
from mailgate.delivery.transport import STAGE_TIMEOUTS, ClientRun, ConnectError, run_client
from mailgate.smtp.address import AddressError, parse_path
from mailgate.smtp.client import ClientConfig, ClientSession, Credentials, Envelope
from mailgate.smtp.trace import HopCounter, missing_fields

__all__ = ["SubmitError", "SubmitOutcome", "prepare", "submit"]

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_BCC = re.compile(rb"^Bcc:.*?\r\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)

EX_TEMPFAIL = 75


class SubmitError(ValueError):
    """The message or the arguments cannot be submitted; the message says why."""


def prepare(raw: bytes, sender: str | None, recipients: list[str]) -> tuple[Envelope, bytes]:
    """Envelope and wire content (CRLF line ends) from a message and the options."""
    content = _NEWLINES.sub(b"\r\n", raw)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    head = content.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    if not recipients:
        found = email.utils.getaddresses(
            [str(v) for k in ("To", "Cc", "Bcc") for v in headers.get_all(k, [])]
        )
        recipients = [addr for _, addr in found if addr]
        if not recipients:
            raise SubmitError("no recipients: give --to, or To/Cc/Bcc headers in the message.")
        header_end = len(head)
        content = _BCC.sub(b"", content[:header_end]) + content[header_end:]
    if sender is None:
        found = email.utils.getaddresses([str(v) for v in headers.get_all("From", [])])
        sender = found[0][1] if found else ""
        if not sender:
            raise SubmitError("no sender: give --from, or a From header in the message.")
    # RFC 6409 8.2, 8.3: as the submission listener does, the fields the message lacks
    # are added here too, so mail sent to an MX (which never adds them) has them.
    seen = HopCounter()
    seen.feed(head)
    domain = sender.rpartition("@")[2] or "localhost"
    content = missing_fields(seen, domain) + content
    for addr in (sender, *recipients):
        try:
            parse_path(f"<{addr}>", utf8=True, allow_null=addr == sender)
        except AddressError as exc:
            raise SubmitError(f"{addr!r} is not a valid address: {exc}") from exc
    try:
        return Envelope.make(sender, recipients), content
    except (AddressError, ValueError) as exc:
        raise SubmitError(str(exc)) from exc


@dataclass
class SubmitOutcome:
    run: ClientRun
    server: str

    @property
    def replies(self) -> list[tuple[str, Reply, bool]]:
        """(recipient, reply, remote) for every recipient."""
        out = []
        for res in self.run.results:
            for r in res.results:
                out.append((str(r.recipient.address), r.outcome.reply, r.outcome.remote))
        return out

    @property
    def exit_status(self) -> int:
        replies = self.replies
        if not replies:
            return EX_TEMPFAIL
        if all(rep.is_success for _, rep, _ in replies):
            return 0
        if any(rep.is_permanent for _, rep, _ in replies):
            return 1
        return EX_TEMPFAIL

    def report(self, lang: str = "en") -> str:
        from mailgate.codes.explain import explain_reply

        lines = []
        tls = f" ({self.run.tls})" if self.run.tls else ""
        lines.append(f"server {self.server}{tls}")
        shown: set[str] = set()
        for rcpt, reply, remote in self.replies:
            mark = "ok  " if reply.is_success else ("TEMP" if reply.is_transient else "FAIL")
            who = "" if remote else " (decided by this client)"
            lines.append(f"{mark} <{rcpt}>: {reply}{who}")
            key = f"{reply.code} {reply.enhanced}"
            if not reply.is_success and key not in shown:
                shown.add(key)
                x = explain_reply(reply, lang)
                for part in x.parts:
                    lines.append(f"     {part.code} {part.title}: {part.summary}")
                    lines.append(f"     -> {part.fix}")
        if self.run.closed is not None and self.run.closed.reason is not None and not self.replies:
            lines.append(f"FAIL session ended: {self.run.closed.reason.reply}")
        return "\n".join(lines) + "\n"


async def submit(host: str, port: int, raw: bytes, *, sender: str | None = None,
                 recipients: list[str] | None = None, require_tls: bool = False,
                 implicit_tls: bool = False, user: str | None = None,
                 password: str | None = None, helo: str = "localhost",
                 timeout: float = 60.0) -> SubmitOutcome:
    envelope, content = prepare(raw, sender, recipients or [])
    creds = Credentials(user, password or "") if user else None
    session = ClientSession(
        ClientConfig(helo_name=helo, tls="require" if require_tls else "may", credentials=creds),
        tls_active=implicit_tls,
    )
    timeouts = dict.fromkeys(STAGE_TIMEOUTS, timeout)
    try:
        run = await run_client(host, port, session, [(envelope, content)],
                               implicit_tls=implicit_tls, timeouts=timeouts)
    except ConnectError as exc:
        raise SubmitError(f"{exc}. Is `mailgate serve` running there?") from exc
    return SubmitOutcome(run, f"{host}:{port}")
