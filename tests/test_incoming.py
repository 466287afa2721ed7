"""What the listener hands the queue (server/incoming.py): the `crlf` flag it vouches for."""

from __future__ import annotations

from pathlib import Path

from mailgate.queue.spool import SpoolFile
from mailgate.server.incoming import new_message
from mailgate.server.policy import ConnectionInfo
from mailgate.smtp.server import MailFrom, RcptTo, ServerSession
from tests.test_server_session import CONFIG, ENVELOPE, events


def envelope() -> tuple[MailFrom, RcptTo]:
    s = ServerSession(CONFIG)
    s.greet()
    seen = events(s, ENVELOPE)
    [mail] = [e for e in seen if isinstance(e, MailFrom)]
    [rcpt] = [e for e in seen if isinstance(e, RcptTo)]
    return mail, rcpt


def test_crlf_is_vouched_for_only_when_what_mailgate_added_is_crlf_too(tmp_path: Path) -> None:
    # The body came by DATA (CRLF throughout); the fields mailgate puts on top (trace,
    # Authentication-Results, DKIM-Signature, a submission's Date:) are checked here, so
    # that one built with a bare LF can never go out unchecked.
    mail, rcpt = envelope()
    info = ConnectionInfo("mx", "192.0.2.1", 25, helo="c.test", esmtp=True)

    def stored(head: bytes, crlf: bool) -> bool:
        spool = SpoolFile(tmp_path, "m", head=head)
        spool.write(b"Subject: x\r\n\r\nhi\r\n")
        spool.finish()
        try:
            return new_message("q1", info, mail, [rcpt], spool, True, crlf).crlf
        finally:
            spool.discard()

    good = b"Received: from c.test\r\n\tby mx.test; Sun, 6 Dec 2026 18:00:00 +0000\r\n"
    assert stored(good, crlf=True) is True
    assert stored(b"", crlf=True) is True
    assert stored(good, crlf=False) is False  # BDAT: never vouched for
    assert stored(good.replace(b"\r\n\tby", b"\n\tby"), crlf=True) is False
    assert stored(good.replace(b"\r\n\tby", b"\r\tby"), crlf=True) is False
