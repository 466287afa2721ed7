"""DKIM signing end to end: a key made by `mailgate dkim keygen`, its record served by the
tests' DNS server, a message submitted over SMTP with AUTH to a running mailgate, and
what a real receiver (aiosmtpd) gets carries an RSA and an Ed25519 signature that both
dkimpy and OpenDKIM verify against that DNS record. A retried delivery sends the same
bytes; a stranger's mail is not signed."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosmtplib
import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.config import Delivery, DNSConfig, Domains, Relay, Route, parse_config
from mailgate.config.dkim import generate_key
from mailgate.delivery.engine import DeliveryEngine
from mailgate.dns import Resolver
from mailgate.users import UserDB
from tests.support import opendkim
from tests.support.fakemx import wait_until
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import wire_form

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver"]

TIMEOUT = 20.0


class Receiver:
    """An aiosmtpd MX on loopback keeping every DATA it is sent; `defer_first` answers
    the first one 451 (the message is retried)."""

    def __init__(self, defer_first: bool = False) -> None:
        self.defer_first = defer_first
        self.attempts: list[bytes] = []  # every DATA, deferred or not
        self.accepted: list[bytes] = []
        self._lock = threading.Lock()
        with socket.socket() as probe:  # aiosmtpd's Controller cannot be given port 0
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     server_hostname="mx.example.net", ready_timeout=5.0)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("refuse@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self._lock:
            self.attempts.append(data)
            if self.defer_first and len(self.attempts) == 1:
                return "451 4.3.0 try again later"
            self.accepted.append(data)
        return "250 2.0.0 ok"

    def __enter__(self) -> Receiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def signer_setup(tmp_path: Path, dns_server_factory: Any) -> Iterator[dict[str, Any]]:
    """Two keys for example.org made by `mailgate dkim keygen`, the printed zone lines
    served by a DNS server, and the [dkim] table that names the key files."""
    keys = tmp_path / "keys"
    keys.mkdir()
    lines = []
    for selector, algorithm in (("r2026", "rsa-sha256"), ("e2026", "ed25519-sha256")):
        run = subprocess.run(
            [sys.executable, "-m", "mailgate", "dkim", "keygen", "example.org",
             "--selector", selector, "--algorithm", algorithm,
             "--out", str(keys / f"{selector}.key")],
            capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        lines.append(run.stdout.strip())
    server: DNSServer = dns_server_factory(
        "example.org. SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60\n"
        + "\n".join(lines))
    table = parse_config(
        '[[dkim."example.org"]]\nselector = "r2026"\nkey_file = "keys/r2026.key"\n'
        '[[dkim."example.org"]]\nselector = "e2026"\nkey_file = "keys/e2026.key"\n'
        'algorithm = "ed25519-sha256"\n', "dkim.toml", base_dir=tmp_path).dkim
    yield {"dns": server, "dkim": table, "zone": lines}


def published(server: DNSServer) -> dict[str, str]:
    """The DKIM records as the DNS server serves them, through mailgate's resolver."""
    resolver = Resolver([server.nameserver], timeout=3)
    out = {}
    for name in ("r2026._domainkey.example.org", "e2026._domainkey.example.org"):
        answer = asyncio.run(resolver.txt(name))
        assert answer.status == "data", answer
        [out[name]] = answer.records
    return out


def dkimpy_verify_all(message: bytes, server: DNSServer) -> list[bool]:
    resolver = Resolver([server.nameserver], timeout=3)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        answer = asyncio.run(resolver.txt(name.decode().rstrip(".")))
        return answer.records[0].encode() if answer.records else None

    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    return [bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]


def message(sender: str, rcpt: str, body: bytes = b"See you at noon.\r\n") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: <{rcpt}>\r\nSubject: lunch\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode() + body


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def submit(port: int, sender: str, rcpt: str, data: bytes) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               tls_context=unverified(), timeout=TIMEOUT) as client:
        await client.ehlo()  # aiosmtplib says it lazily after STARTTLS
        await client.auth_plain("alice", "lunch secret")
        errors, _ = await client.sendmail(sender, [rcpt], data)
        assert errors == {}


def start(tmp_path: Path, setup: dict[str, Any], receiver: Receiver, **changes: Any
          ) -> LiveServer:
    changes.setdefault(
        "routes", {"example.net": Route("example.net", "127.0.0.1", receiver.port, False)})
    config = live_config(
        tmp_path / "data", hostname="mx.example.org",
        domains=Domains(local=("example.org",), catch_all=True),
        dns=DNSConfig((setup["dns"].nameserver,)),
        delivery=Delivery(retry_schedule=(0.5,)),
        dkim=setup["dkim"], **changes)
    UserDB(config.data_dir / "users.json").set_password("alice", "lunch secret")
    return LiveServer(config)


def test_submitted_mail_arrives_signed_twice_and_verifies(
        tmp_path: Path, signer_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    # The printed zone lines split long text into quoted strings of at most 255.
    rsa_line = signer_setup["zone"][0]
    assert rsa_line.startswith('r2026._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=')
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', rsa_line))
    body = b"".join(b"line %05d of a longer message\r\n" % i for i in range(12000))  # > 256 KiB
    with Receiver() as rx, start(tmp_path, signer_setup, rx) as srv:
        asyncio.run(submit(srv.port("submission"), "alice@example.org", "bob@example.net",
                           message("alice@example.org", "bob@example.net", body)))
        [got] = wait_until(lambda: list(rx.accepted), TIMEOUT, "the message at the receiver")
    assert got.count(b"DKIM-Signature:") == 2
    assert got.index(b"DKIM-Signature:") < got.index(b"Received:")  # at the top
    assert dkimpy_verify_all(got, signer_setup["dns"]) == [True, True]
    verdicts = opendkim.verify(got, published(signer_setup["dns"]))
    assert [(v.selector, v.passed) for v in verdicts] == [("r2026", True), ("e2026", True)]


def test_a_retry_sends_the_same_signed_bytes(
        tmp_path: Path, signer_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    with Receiver(defer_first=True) as rx, start(tmp_path, signer_setup, rx) as srv:
        asyncio.run(submit(srv.port("submission"), "alice@example.org", "bob@example.net",
                           message("alice@example.org", "bob@example.net")))
        wait_until(lambda: rx.accepted, TIMEOUT, "the retried message at the receiver")
    first, second = rx.attempts
    assert first == second and b"DKIM-Signature:" in first
    assert dkimpy_verify_all(second, signer_setup["dns"]) == [True, True]


def test_a_strangers_mail_is_not_signed(
        tmp_path: Path, signer_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On the MX port, a client that is neither authenticated nor in [relay] networks
    gets no signature, even with a From: at a signing domain."""
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    with Receiver() as rx, start(tmp_path, signer_setup, rx, relay=Relay(networks=())) as srv:
        async def send() -> None:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port("mx"),
                                       start_tls=False, timeout=TIMEOUT) as client:
                errors, _ = await client.sendmail(
                    "someone@example.com", ["alice@example.org"],
                    message("ceo@example.org", "alice@example.org"))
                assert errors == {}

        asyncio.run(send())
        box = srv.maildir / "example.org" / "alice" / "new"
        [file] = wait_until(lambda: list(box.iterdir()) if box.is_dir() else None, TIMEOUT,
                            "the message in alice's Maildir")
        delivered = wire_form(file.read_bytes())
    assert b"DKIM-Signature" not in delivered
    assert b"From: Alice <ceo@example.org>" in delivered


def test_sendmail_with_the_server_down_queues_signed_mail(
        tmp_path: Path, signer_setup: dict[str, Any]) -> None:
    """The direct path of mailgate-sendmail (no server to hand it to) signs as the server
    would: the queued content carries signatures that verify."""
    from mailgate.queue.sqlite import SQLiteQueue

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the server is "down"
        port = closed.getsockname()[1]
        conf = tmp_path / "mailgate.toml"
        conf.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[[listen]]\nrole = "submission"\n'
            f'address = "127.0.0.1:{port}"\n[domains]\nlocal = ["example.org"]\n'
            '[[dkim."example.org"]]\nselector = "r2026"\nkey_file = "keys/r2026.key"\n'
            '[[dkim."example.org"]]\nselector = "e2026"\nkey_file = "keys/e2026.key"\n'
            'algorithm = "ed25519-sha256"\n')
        run = subprocess.run(
            [sys.executable, "-m", "mailgate.cli.sendmail", "-C", str(conf), "-t",
             "-f", "alice@example.org"],
            input=b"From: alice@example.org\nTo: bob@example.net\nSubject: cron\n\nran\n",
            capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    with SQLiteQueue(tmp_path / "data" / "queue.db") as q:
        [item] = q.list(limit=10)
        content = q.show(item.id, content=True).content
    assert content is not None and content.count(b"DKIM-Signature:") == 2
    assert dkimpy_verify_all(content, signer_setup["dns"]) == [True, True]


def test_serve_started_as_root_signs_with_a_root_only_key_after_dropping_root() -> None:
    """The key file is root's alone (0600); `serve` reads it before it becomes the
    mailgate user, and everything signing needs is loaded by then: mail it relays after
    the drop arrives signed."""
    import os
    import shutil
    import signal
    import smtplib
    import tempfile

    from mailgate.config.dkim import load_key, public_record
    from tests.support.dovecot import ensure_system_user, free_port
    from tests.support.needs import need

    if os.geteuid() != 0:
        pytest.skip("needs root: serve drops root only when started as root")
    mailgate = ensure_system_user("mailgate")
    src = str(Path(__file__).resolve().parent.parent / "src")
    readable = subprocess.run(
        ["setpriv", f"--reuid={mailgate.pw_uid}", f"--regid={mailgate.pw_gid}",
         "--clear-groups", sys.executable, "-c", "import mailgate.serve, dkim, nacl"],
        env={**os.environ, "PYTHONPATH": src}, cwd="/", capture_output=True, check=False)
    need(readable.returncode == 0, f"a Python the mailgate user can read ({sys.prefix})")
    folder = Path(tempfile.mkdtemp(prefix="mg-dkim-"))
    folder.chmod(0o755)
    try:
        keys = folder / "keys"
        keys.mkdir(mode=0o700)
        key_file = keys / "s1.key"
        key_file.write_bytes(generate_key("rsa-sha256"))
        key_file.chmod(0o600)
        key = load_key(key_file, "rsa-sha256", "example.org", "s1")
        port = free_port()
        with Receiver() as rx:
            config = folder / "mailgate.toml"
            config.write_text(
                f'hostname = "mx.example.org"\ndata_dir = "{folder / "data"}"\n'
                f'[[listen]]\nrole = "mx"\naddress = "127.0.0.1:{port}"\n'
                '[web]\naddress = ""\n[policy]\nsender_null_mx_check = false\n'
                'recipient_null_mx_check = false\n'
                f'[routes]\n"example.net" = "smtp:[127.0.0.1]:{rx.port}"\n'
                f'[dkim."example.org"]\nselector = "s1"\nkey_file = "{key_file}"\n')
            log = folder / "serve.log"
            with log.open("ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
                    env={**os.environ, "PYTHONPATH": src}, cwd="/",
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            try:
                def greets() -> bool:
                    assert proc.poll() is None, log.read_text()
                    try:
                        with smtplib.SMTP("127.0.0.1", port, timeout=5):
                            return True
                    except OSError:
                        return False

                wait_until(greets, 30, "serve to listen")
                status = Path(f"/proc/{proc.pid}/status").read_text()
                uid_line = next(x for x in status.splitlines() if x.startswith("Uid:"))
                assert uid_line.split()[1:] == [str(mailgate.pw_uid)] * 4, uid_line
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    client.sendmail("alice@example.org", ["bob@example.net"],
                                    message("alice@example.org", "bob@example.net"))
                [got] = wait_until(lambda: list(rx.accepted), 30, "the relayed message")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log_text = log.read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, log_text
    assert "not DKIM-signed" not in log_text
    records = {key.record_name: public_record(key)}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text = records.get(name.decode().rstrip("."))
        return text.encode() if text else None

    assert got.count(b"DKIM-Signature:") == 1
    assert dkim.verify(got, dnsfunc=dnsfunc)


def test_a_message_that_cannot_be_signed_is_still_sent(
        tmp_path: Path, signer_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A header section past 1 MiB is not signed (the signer keeps only the header in
    memory): the message is accepted all the same, sent unsigned, and the log says why.
    Without a From: field there is no domain to sign for: sent unsigned too."""
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    caplog.set_level("INFO", logger="mailgate.dkim")
    filler = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"a" * 900) for i in range(1200))
    huge = filler + message("alice@example.org", "bob@example.net", b"big head\r\n")
    no_from = b"To: <bob@example.net>\r\nSubject: lunch\r\n\r\nwho am I?\r\n"
    with Receiver() as rx, start(tmp_path, signer_setup, rx) as srv:
        for data in (huge, no_from):
            asyncio.run(submit(srv.port("submission"), "alice@example.org",
                               "bob@example.net", data))
        got = wait_until(lambda: list(rx.accepted) if len(rx.accepted) == 2 else None,
                         TIMEOUT, "both messages at the receiver")
    assert all(b"DKIM-Signature" not in m for m in got)
    assert {m.rsplit(b"\r\n", 2)[-2] for m in got} == {b"big head", b"who am I?"}
    said = [r.getMessage() for r in caplog.records]
    assert sum("not DKIM-signed: the header section is over 1048576 bytes" in m
               for m in said) == 1, said


def test_a_bounce_mailgate_writes_is_signed_for_its_host_name_s_domain(
        tmp_path: Path, signer_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """mailgate's own notices are signed too: From: MAILER-DAEMON@mx.example.org takes
    example.org's keys (the parent domain's)."""
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    with Receiver() as rx:
        routes = {d: Route(d, "127.0.0.1", rx.port, False)
                  for d in ("example.net", "gone.example")}
        with start(tmp_path, signer_setup, rx, routes=routes) as srv:
            async def send() -> None:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port("mx"),
                                           start_tls=False, timeout=TIMEOUT) as client:
                    errors, _ = await client.sendmail(
                        "carol@example.net", ["refuse@gone.example"],
                        message("carol@example.net", "refuse@gone.example"))
                    assert errors == {}

            asyncio.run(send())
            [bounce] = wait_until(lambda: list(rx.accepted), TIMEOUT, "the bounce")
    assert b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>" in bounce
    assert b"550 5.1.1" in bounce
    assert bounce.count(b"DKIM-Signature:") == 2
    assert b"d=example.org;" in bounce
    assert dkimpy_verify_all(bounce, signer_setup["dns"]) == [True, True]
