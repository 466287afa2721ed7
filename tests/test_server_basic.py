"""The live server through Python's smtplib: the main paths, end to end."""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from mailgate.config import Relay
from mailgate.users import UserDB
from tests.support.live import LiveServer, live_config

pytest_plugins = ["tests.support.live"]

MESSAGE = b"From: alice@example.org\r\nTo: bob@localhost\r\nSubject: hi\r\n\r\nHello.\r\n"


def wait_for_files(folder: Path, n: int, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*")) if folder.exists() else []
        if len(files) >= n:
            return files
        time.sleep(0.02)
    raise AssertionError(f"expected {n} files in {folder}")


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_local_mail_lands_in_the_maildir_byte_for_byte(live_server: LiveServer) -> None:
    with smtplib.SMTP("127.0.0.1", live_server.port("mx")) as c:
        code, _ = c.ehlo("client.test")
        assert code == 250
        c.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
    files = wait_for_files(live_server.maildir / "localhost" / "bob" / "new", 1)
    data = files[0].read_bytes()
    # LF line ends in the file, as Dovecot and mail readers expect (docs/delivery.md),
    # and Dovecot's sizes in the name: S= the file's, W= with CRLF (RFC 822 size).
    assert b"\r" not in data
    assert data.startswith(b"Return-Path: <alice@example.org>\nReceived: from client.test")
    assert data.endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n"))
    lines = data.count(b"\n")
    assert files[0].name.endswith(f",S={len(data)},W={len(data) + lines}")


def test_queued_reply_names_the_queue_id(live_server: LiveServer) -> None:
    with smtplib.SMTP("127.0.0.1", live_server.port("mx")) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        c.rcpt("bob@localhost")
        code, text = c.data(MESSAGE)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    qid = text.split()[-1].decode()
    files = wait_for_files(live_server.maildir / "localhost" / "bob" / "new", 1)
    assert f"id {qid}".encode() in files[0].read_bytes()


def test_not_an_open_relay(tmp_path: Path) -> None:
    config = live_config(tmp_path / "d", relay=Relay(networks=()))
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        code, text = c.rcpt("victim@elsewhere.example")
        assert (code, text) == (554, b"5.7.1 Relay access denied")
        assert c.rcpt("bob@localhost")[0] == 250


def test_submission_requires_auth_and_auth_requires_tls(tmp_path: Path) -> None:
    config = live_config(tmp_path / "d", relay=Relay(networks=()))
    UserDB(config.data_dir / "users.json").set_password("carol", "correct horse")
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("submission")) as c:
        c.ehlo("client.test")
        assert not c.has_extn("auth")  # AUTH is not offered in plaintext
        assert c.docmd("AUTH", "PLAIN AGNhcm9sAGNvcnJlY3QgaG9yc2U=")[0] == 538
        code, text = c.mail("carol@localhost")
        assert (code, text) == (530, b"5.7.0 Authentication required")
        c.rset()
        c.starttls(context=unverified())
        c.ehlo("client.test")
        assert c.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            c.login("carol", "wrong password")
        assert exc.value.smtp_code == 535
        c.login("carol", "correct horse")
        c.sendmail("carol@localhost", ["dave@far.example"], MESSAGE)


def test_implicit_tls_listener(live_server: LiveServer) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", live_server.port("smtps"), context=unverified()) as c:
        c.ehlo("client.test")
        assert not c.has_extn("starttls")
        c.sendmail("alice@localhost", ["erin@localhost"], MESSAGE)
    files = wait_for_files(live_server.maildir / "localhost" / "erin" / "new", 1)
    assert b"with ESMTPS" in files[0].read_bytes()


def test_unknown_local_user_when_not_catch_all(tmp_path: Path) -> None:
    base = live_config(tmp_path / "d")
    domains = dataclasses.replace(base.domains, catch_all=False,
                                  mailboxes=frozenset({"bob@localhost"}))
    with LiveServer(dataclasses.replace(base, domains=domains)) as srv, \
            smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        assert c.rcpt("nobody@localhost") == (550, b"5.1.1 No such user here")
        assert c.rcpt("bob@localhost")[0] == 250
        assert c.rcpt("postmaster@localhost")[0] == 250
