"""Date: and Message-ID: added to submitted mail that lacks them (RFC 6409 8.2, 8.3), on
the submission listeners only, never on the MX; big messages (spooled to a file) too."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import parse_delivered, wait_for_files


def header_names(content: bytes) -> list[bytes]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return [m.group(1).lower() for m in re.finditer(rb"^([!-9;-~]+):", head, re.M)]


def test_submission_adds_what_is_missing_and_the_mx_adds_nothing(tmp_path: Path) -> None:
    bare = b"From: a@localhost\r\nSubject: bare\r\n\r\nbody\r\n"
    complete = (b"From: a@localhost\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
                b"Message-ID: <given@example.org>\r\nSubject: complete\r\n\r\nbody\r\n")
    big = b"From: a@localhost\r\nSubject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 600
    with LiveServer(live_config(tmp_path / "data")) as srv:
        with smtplib.SMTP("127.0.0.1", srv.port("submission")) as c:  # loopback: relay
            c.sendmail("a@localhost", ["sub-bare@localhost"], bare)
            c.sendmail("a@localhost", ["sub-complete@localhost"], complete)
            c.sendmail("a@localhost", ["sub-big@localhost"], big)
        with smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
            c.sendmail("a@example.org", ["mx-bare@localhost"], bare)
        got = {name: parse_delivered(wait_for_files(
            srv.maildir / "localhost" / name / "new", 1)[0].read_bytes())
            for name in ("sub-bare", "sub-complete", "sub-big", "mx-bare")}
    fixed = got["sub-bare"].content
    assert header_names(fixed) == [b"date", b"message-id", b"from", b"subject"]
    assert re.search(rb"^Message-ID: <[0-9a-f]+\.[0-9a-f]{16}@localhost>\r$", fixed, re.M)
    assert fixed.endswith(b"\r\n" + bare)
    assert got["sub-complete"].content == complete  # nothing twice
    assert header_names(got["sub-big"].content)[:2] == [b"date", b"message-id"]
    assert got["sub-big"].content.endswith(big)  # the spooled body, untouched
    assert got["mx-bare"].content == bare  # the MX relays what it is given
