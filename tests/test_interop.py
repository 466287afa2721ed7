"""Real SMTP clients against the live server, each message checked byte for byte.

Python's smtplib and aiosmtplib, swaks, curl, msmtp and `mailgate send` (as a real
subprocess) each send one message; the file local delivery writes must be exactly
`Return-Path:` + mailgate's `Received:` header + the content the client sent, CRLF line
ends, dot-stuffing undone. The message has lines that start with a dot and a line that is
only a dot, so every client's dot-stuffing is exercised too.

The server has no relay networks, so the submission and smtps listeners take mail only
after AUTH (and AUTH only over TLS): a client that did not really authenticate fails.
swaks, curl and msmtp are Debian packages that .ci/run installs; a missing one fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from mailgate.config import Relay
from mailgate.users import UserDB
from tests.support.live import LiveServer
from tests.support.needs import need_tool
from tests.support.smtpwire import Delivered, loopback_config, parse_delivered, unverified_context
from tests.support.smtpwire import wait_for_files as _wait_for_files

USER, PASSWORD = "carol", "correct horse battery"
SENDER = "carol@localhost"
TIMEOUT = 30


def message(tag: str, to: str) -> bytes:
    """A message whose body exercises dot-stuffing; unique per test by `tag`."""
    lines = [
        f"From: Carol <{SENDER}>",
        f"To: <{to}>",
        f"Subject: interop {tag}",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
        f"Message-ID: <{tag}@interop.test>",
        "X-Folded: one",
        "\ttwo",
        "",
        f"Hello from {tag}.",
        ".a line that starts with a dot",
        "..two dots",
        ".",
        "the line above was a lone dot; trailing spaces stay:   ",
        "",
        "end",
    ]
    return "\r\n".join(lines).encode() + b"\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("interop") / "data"
    config = loopback_config(data, relay=Relay(networks=()))
    UserDB(data / "users.json").set_password(USER, PASSWORD)
    with LiveServer(config) as srv:
        yield srv


def tool(name: str) -> str:
    return need_tool(name)


def delivered(server: LiveServer, rcpt: str, n: int = 1) -> list[Delivered]:
    local, _, domain = rcpt.partition("@")
    files = _wait_for_files(server.maildir / domain / local / "new", n)
    assert len(files) == n, f"{len(files)} messages for {rcpt}, expected {n}"
    return [parse_delivered(f.read_bytes()) for f in files]


def check(server: LiveServer, rcpt: str, sent: bytes, proto: str, sender: str = SENDER,
          queue_id: str | None = None) -> Delivered:
    """The one message for `rcpt` is exactly `sent`, received with `proto`."""
    (got,) = delivered(server, rcpt)
    assert got.content == sent, f"content differs:\n sent {sent!r}\n  got {got.content!r}"
    assert got.return_path == sender
    assert got.proto == proto
    assert got.rcpt == rcpt
    assert (got.tls is not None) == proto.startswith("ESMTPS")
    if queue_id is not None:
        assert got.queue_id == queue_id
    return got


def run(argv: list[str], stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT,
                          env=None if env is None else {**os.environ, **env}, check=False)


def ok(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 0, (
        f"{proc.args!r} exited {proc.returncode}\nstdout: {proc.stdout.decode(errors='replace')}"
        f"\nstderr: {proc.stderr.decode(errors='replace')}")


# --- Python's smtplib --------------------------------------------------------------------


def test_smtplib_plain_on_mx(server: LiveServer) -> None:
    rcpt = "smtplib-plain@localhost"
    sent = message("smtplib-plain", rcpt)
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=TIMEOUT) as c:
        c.ehlo("smtplib.test")
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(rcpt)[0] == 250
        code, text = c.data(sent)
    assert code == 250, text
    qid = text.decode().rsplit(" ", 1)[-1]
    got = check(server, rcpt, sent, "ESMTP", queue_id=qid)
    assert got.helo == "smtplib.test"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_starttls_and_auth_on_submission(server: LiveServer, mechanism: str) -> None:
    rcpt = f"smtplib-starttls-{mechanism.lower()}@localhost"
    sent = message(f"smtplib-starttls-{mechanism}", rcpt)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=TIMEOUT) as c:
        c.ehlo("smtplib.test")
        assert not c.has_extn("auth")
        c.starttls(context=unverified_context())
        c.ehlo("smtplib.test")
        assert c.has_extn("auth")
        c.user, c.password = USER, PASSWORD
        auth = c.auth_plain if mechanism == "PLAIN" else c.auth_login
        code, _ = c.auth(mechanism, auth)
        assert code == 235
        assert c.sendmail(SENDER, [rcpt], sent) == {}
    check(server, rcpt, sent, "ESMTPSA")


def test_smtplib_implicit_tls_on_smtps(server: LiveServer) -> None:
    rcpt = "smtplib-smtps@localhost"
    sent = message("smtplib-smtps", rcpt)
    with smtplib.SMTP_SSL("127.0.0.1", server.port("smtps"), timeout=TIMEOUT,
                          context=unverified_context()) as c:
        c.ehlo("smtplib.test")
        assert not c.has_extn("starttls")
        c.login(USER, PASSWORD)
        assert c.sendmail(SENDER, [rcpt], sent) == {}
    check(server, rcpt, sent, "ESMTPSA")


# --- aiosmtplib -------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtplib_starttls_and_auth(server: LiveServer, mechanism: str) -> None:
    rcpt = f"aiosmtplib-{mechanism.lower()}@localhost"
    sent = message(f"aiosmtplib-{mechanism}", rcpt)

    async def send() -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port("submission"),
                                 start_tls=True, tls_context=unverified_context(),
                                 local_hostname="aiosmtplib.test", timeout=TIMEOUT)
        async with client:
            await client.ehlo()  # aiosmtplib would say it lazily after STARTTLS
            assert client.is_ehlo_or_helo_needed is False
            assert client.supports_extension("auth")
            if mechanism == "PLAIN":
                await client.auth_plain(USER, PASSWORD)
            else:
                await client.auth_login(USER, PASSWORD)
            errors, text = await client.sendmail(SENDER, [rcpt], sent)
            assert errors == {}
            return text

    text = asyncio.run(send())
    got = check(server, rcpt, sent, "ESMTPSA", queue_id=text.rsplit(" ", 1)[-1])
    assert got.helo == "aiosmtplib.test"


def test_aiosmtplib_implicit_tls(server: LiveServer) -> None:
    rcpt = "aiosmtplib-smtps@localhost"
    sent = message("aiosmtplib-smtps", rcpt)

    async def send() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port("smtps"),
                                   use_tls=True, tls_context=unverified_context(),
                                   username=USER, password=PASSWORD, timeout=TIMEOUT) as c:
            errors, _ = await c.sendmail(SENDER, [rcpt], sent)
            assert errors == {}

    asyncio.run(send())
    check(server, rcpt, sent, "ESMTPSA")


# --- swaks ------------------------------------------------------------------------------

SWAKS_CASES = {
    "plain": ("mx", [], "ESMTP"),
    "tls-auth-plain": ("submission", ["--tls", "--auth", "PLAIN"], "ESMTPSA"),
    "tls-auth-login": ("submission", ["--tls", "--auth", "LOGIN"], "ESMTPSA"),
    "tls-on-connect": ("smtps", ["--tls-on-connect", "--auth", "PLAIN"], "ESMTPSA"),
}


@pytest.mark.parametrize("case", list(SWAKS_CASES))
def test_swaks(server: LiveServer, tmp_path: Path, case: str) -> None:
    role, options, proto = SWAKS_CASES[case]
    rcpt = f"swaks-{case}@localhost"
    sent = message(f"swaks-{case}", rcpt)
    # swaks ends the data with CRLF . CRLF itself: give it the message without its final
    # line break, or it sends an extra empty line (which would then rightly be delivered).
    data = tmp_path / "message.eml"
    data.write_bytes(sent.removesuffix(b"\r\n"))
    if "--auth" in options:
        options = [*options, "--auth-user", USER, "--auth-password", PASSWORD]
    proc = run([tool("swaks"), "--server", f"127.0.0.1:{server.port(role)}",
                "--ehlo", "swaks.test", "--from", SENDER, "--to", rcpt,
                "--data", f"@{data}", "--timeout", str(TIMEOUT), *options])
    ok(proc)
    out = proc.stdout.decode()
    assert "<-  250 2.0.0 Ok: queued as" in out or "<~  250 2.0.0 Ok: queued as" in out, out
    got = check(server, rcpt, sent, proto)
    assert got.helo == "swaks.test"


# --- curl -------------------------------------------------------------------------------

CURL_CASES = {
    "smtp": ("smtp", "mx", [], "ESMTP"),
    "ssl-reqd": ("smtp", "submission", ["--ssl-reqd", "-k", "--user", f"{USER}:{PASSWORD}"],
                 "ESMTPSA"),
    "smtps": ("smtps", "smtps", ["-k", "--user", f"{USER}:{PASSWORD}"], "ESMTPSA"),
}


@pytest.mark.parametrize("case", list(CURL_CASES))
def test_curl(server: LiveServer, tmp_path: Path, case: str) -> None:
    scheme, role, options, proto = CURL_CASES[case]
    rcpt = f"curl-{case}@localhost"
    sent = message(f"curl-{case}", rcpt)
    data = tmp_path / "message.eml"
    data.write_bytes(sent)
    proc = run([tool("curl"), "--silent", "--show-error", "--max-time", str(TIMEOUT),
                "--url", f"{scheme}://127.0.0.1:{server.port(role)}/curl.test",
                "--mail-from", SENDER, "--mail-rcpt", rcpt, "--upload-file", str(data),
                *options])
    ok(proc)
    got = check(server, rcpt, sent, proto)
    assert got.helo == "curl.test"  # curl says EHLO with the URL's path


def test_curl_refuses_when_tls_is_required_but_auth_is_wrong(server: LiveServer,
                                                             tmp_path: Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(message("curl-bad-auth", "curl-bad-auth@localhost"))
    proc = run([tool("curl"), "--silent", "--max-time", str(TIMEOUT), "--url",
                f"smtp://127.0.0.1:{server.port('submission')}", "--ssl-reqd", "-k",
                "--user", f"{USER}:wrong password", "--mail-from", SENDER,
                "--mail-rcpt", "curl-bad-auth@localhost", "--upload-file", str(data)])
    assert proc.returncode == 67  # CURLE_LOGIN_DENIED
    assert not (server.maildir / "localhost" / "curl-bad-auth").exists()


# --- msmtp ------------------------------------------------------------------------------

MSMTP_CASES = {
    "plain": ("mx", ["tls off", "auth off"], "ESMTP"),
    "starttls-plain": ("submission", ["tls on", "tls_starttls on", "auth plain"], "ESMTPSA"),
    "starttls-login": ("submission", ["tls on", "tls_starttls on", "auth login"], "ESMTPSA"),
    "smtps": ("smtps", ["tls on", "tls_starttls off", "auth plain"], "ESMTPSA"),
}


@pytest.mark.parametrize("case", list(MSMTP_CASES))
def test_msmtp(server: LiveServer, tmp_path: Path, case: str) -> None:
    role, settings, proto = MSMTP_CASES[case]
    rcpt = f"msmtp-{case}@localhost"
    sent = message(f"msmtp-{case}", rcpt)
    config = tmp_path / "msmtprc"
    lines = ["account default", "host 127.0.0.1", f"port {server.port(role)}",
             "domain msmtp.test", f"from {SENDER}", "tls_certcheck off",
             f"timeout {TIMEOUT}", *settings]
    if "auth off" not in settings:
        lines += [f"user {USER}", f"password {PASSWORD}"]
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)  # msmtp refuses a readable file holding a password
    proc = run([tool("msmtp"), "-C", str(config), rcpt], stdin=sent)
    ok(proc)
    got = check(server, rcpt, sent, proto)
    assert got.helo == "msmtp.test"


# --- mailgate send (a real subprocess) --------------------------------------------------


def mailgate(*args: str, stdin: bytes | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return run([sys.executable, "-m", "mailgate", *args], stdin=stdin, env=env)


def test_mailgate_send_explicit_envelope(server: LiveServer, tmp_path: Path) -> None:
    rcpt = "send-explicit@localhost"
    sent = message("send-explicit", rcpt)
    path = tmp_path / "message.eml"
    path.write_bytes(sent)
    proc = mailgate("send", "--server", f"127.0.0.1:{server.port('mx')}", "--from",
                    "someone@example.org", "--to", rcpt, "--helo", "send.test", str(path))
    ok(proc)
    assert re.search(rf"^ok +<{rcpt}>: 250 2\.0\.0 Ok: queued as", proc.stdout.decode(), re.M)
    # STARTTLS is used when offered, as it is on the MX listener.
    got = check(server, rcpt, sent, "ESMTPS", sender="someone@example.org")
    assert got.helo == "send.test"


def test_mailgate_send_with_auth_on_submission(server: LiveServer) -> None:
    rcpt = "send-auth@localhost"
    sent = message("send-auth", rcpt)
    proc = mailgate("send", "--server", f"127.0.0.1:{server.port('submission')}",
                    "--starttls", "--auth", USER, "--to", rcpt, stdin=sent,
                    env={"MAILGATE_PASSWORD": PASSWORD})
    ok(proc)
    check(server, rcpt, sent, "ESMTPSA")  # the sender came from the From: header


def test_mailgate_send_recipients_from_headers_removes_bcc(server: LiveServer) -> None:
    to, cc, bcc, bcc2 = (f"send-headers-{x}@localhost" for x in ("to", "cc", "bcc", "bcc2"))
    head = [
        f"From: Carol <{SENDER}>",
        f"To: Someone <{to}>",
        f"Cc: {cc}",
        f"Bcc: {bcc},",
        f"\t{bcc2}",
        "Subject: recipients from headers",
        "Message-ID: <send-headers@interop.test>",
    ]
    body = ["", "Bcc: this line is in the body and stays", ".", "end"]
    raw = "\n".join(head + body).encode() + b"\n"  # LF line ends: send makes them CRLF
    proc = mailgate("send", "--server", f"127.0.0.1:{server.port('mx')}", stdin=raw)
    ok(proc)
    out = proc.stdout.decode()
    for rcpt in (to, cc, bcc, bcc2):
        assert f"<{rcpt}>: 250 2.0.0" in out, out
    expected = "\r\n".join(head[:3] + head[5:] + body).encode() + b"\r\n"
    queue_ids = set()
    for rcpt in (to, cc, bcc, bcc2):
        (got,) = delivered(server, rcpt)
        # The message had a Message-ID but no Date: send added one, at the top.
        date, _, rest = got.content.partition(b"\r\n")
        assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} [\d:]{8} [+-]\d{4}", date), date
        assert rest == expected, got.content
        assert b"Bcc:" not in got.content.split(b"\r\n\r\n", 1)[0]
        assert got.return_path == SENDER
        queue_ids.add(got.queue_id)
    assert len(queue_ids) == 1  # one message, one transaction, four recipients


def test_mailgate_send_adds_date_and_message_id_when_missing(server: LiveServer) -> None:
    rcpt = "send-fixups@localhost"
    raw = f"From: {SENDER}\nTo: {rcpt}\nSubject: no date\n\nhi\n".encode()
    ok(mailgate("send", "--server", f"127.0.0.1:{server.port('mx')}", stdin=raw))
    (got,) = delivered(server, rcpt)
    head = got.content.split(b"\r\n\r\n", 1)[0]
    assert len(re.findall(rb"^Date: ", head, re.M)) == 1, head
    domain = SENDER.rpartition("@")[2].encode()
    assert len(re.findall(rb"^Message-ID: <[^@>]+@" + re.escape(domain) + rb">$",
                          head.replace(b"\r\n", b"\n"), re.M)) == 1, head
    # A message that has both keeps them as they were, once each.
    rcpt2 = "send-fixups2@localhost"
    ok(mailgate("send", "--server", f"127.0.0.1:{server.port('mx')}", "--to", rcpt2,
                stdin=message("send-fixups2", rcpt2)))
    (got,) = delivered(server, rcpt2)
    assert got.content.count(b"Date: ") == 1 and got.content.count(b"Message-ID: ") == 1


def test_mailgate_send_refused_exits_1(server: LiveServer) -> None:
    # No relay networks: the MX listener takes mail for local domains only.
    proc = mailgate("send", "--server", f"127.0.0.1:{server.port('mx')}", "--to",
                    "victim@remote.example", stdin=message("send-refused", "x@localhost"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout.decode()
    assert "FAIL <victim@remote.example>: 554 5.7.1 Relay access denied" in out, out
    assert "5.7.1" in out.split("Relay access denied", 1)[1]  # followed by the explanation


@pytest.mark.parametrize(
    ("args", "stdin", "complaint"),
    [
        (["--server", "127.0.0.1:99999"], b"", "--server"),
        (["--server", "127.0.0.1:{mx}", "--to", "not an address"], b"From: a@b.example\r\n\r\n",
         "not a valid address"),
        (["--server", "127.0.0.1:{mx}"], b"From: a@localhost\r\nSubject: nobody\r\n\r\nx\r\n",
         "no recipients"),
        (["--server", "127.0.0.1:{mx}", "--to", "x@localhost"], b"Subject: no From\r\n\r\nx\r\n",
         "no sender"),
        (["--no-such-option"], b"", "No such option"),
    ],
    ids=["bad-server", "bad-address", "no-recipients", "no-sender", "unknown-option"],
)
def test_mailgate_send_usage_errors_exit_2(server: LiveServer, args: list[str], stdin: bytes,
                                           complaint: str) -> None:
    port = str(server.port("mx"))
    proc = mailgate("send", *(a.replace("{mx}", port) for a in args), stdin=stdin)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert complaint in proc.stderr.decode(), proc.stderr
    assert proc.stdout == b""
