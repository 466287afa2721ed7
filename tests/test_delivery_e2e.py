"""Delivery end to end through `mailgate serve` (tests/support/live.py): a relay client hands
mailgate a message over SMTP, mailgate routes it with real DNS (tests/support/dnsserver.py) to
real receiving MTAs on 127.0.0.2 / 127.0.0.3 (aiosmtpd, tests/support/fakemx.py; and Debian's
Postfix in one test), and bounces come back into the local sender's Maildir.

Every wait polls with a deadline. The engine looks at the queue every
`DeliveryEngine.POLL` seconds (1 s) when nothing woke it; the tests shorten that (a
retry made due by `mailgate queue retry` from another process wakes nobody), and shorten
the retry schedule where a test waits for a retry to come due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailgate.config import Delivery, DNSConfig, Domains, Listener, Relayhost, Route, Submission
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.local import LocalDelivery
from mailgate.delivery.transport import ClientRun, run_client
from mailgate.queue import QueuedMessage, Recipient, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.smtp.client import ClientConfig, ClientSession, Envelope
from mailgate.users import UserDB
from tests.support.fakemx import DSN, MX1, MX2, FakeMX, parse_dsn, wait_until
from tests.support.live import LiveServer, live_config
from tests.support.needs import need, need_tool
from tests.support.smtpwire import wire_form
from tests.support.tlscerts import TestCA

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

POSTFIX = Path("/usr/sbin/postfix")
SENDER = "alice@localhost"
CONTENT = (b"From: Alice <alice@localhost>\r\nTo: Bob <bob@example.test>\r\n"
           b"Subject: end to end\r\nDate: Sat, 01 Mar 2025 12:00:00 +0000\r\n"
           b"Message-ID: <e2e@localhost>\r\n\r\nHello, Bob.\r\n.leading dot\r\n"
           b"Caf\xc3\xa9 in UTF-8 body.\r\n")

DELIVERED = RecipientState.DELIVERED
DEFERRED = RecipientState.DEFERRED
FAILED = RecipientState.FAILED


class Mailgate:
    """A running `mailgate serve` and what a test does with it."""

    def __init__(self, live: LiveServer, tmp_path: Path) -> None:
        self.live = live
        self.queue = SQLiteQueue(live.config.data_dir / "queue.db")
        self.config_file = tmp_path / "mailgate.toml"
        self.config_file.write_text(f'data_dir = "{live.config.data_dir}"\n')

    def send(self, recipients: list[str], sender: str = SENDER, content: bytes = CONTENT,
             client: smtplib.SMTP | None = None) -> str:
        """One message over SMTP (the MX port, from 127.0.0.1: a relay client); its
        queue id."""
        if client is None:
            with smtplib.SMTP("127.0.0.1", self.live.port("mx"), timeout=10) as c:
                return self.send(recipients, sender, content, c)
        client.ehlo_or_helo_if_needed()
        code, text = client.mail(sender)
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, text = client.data(content)
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
        return text.split()[-1].decode()

    def recipient(self, qid: str, address: str) -> Recipient:
        return next(r for r in self.queue.show(qid).recipients if r.address == address)

    def wait(self, qid: str, address: str, state: RecipientState, timeout: float = 10.0
             ) -> Recipient:
        def check() -> Recipient | None:
            r = self.recipient(qid, address)
            return r if r.state == state else None

        return wait_until(check, timeout, f"<{address}> of {qid} to be {state}")

    def maildir_files(self, user: str = "alice") -> list[Path]:
        new = self.live.maildir / "localhost" / user / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def wait_dsns(self, n: int, timeout: float = 10.0) -> list[DSN]:
        """The DSNs in alice's Maildir, once there are `n`; each checked for the trace
        local delivery adds: a DSN's reverse-path is <> (RFC 3464, RFC 5321 4.5.5)."""
        def enough() -> list[Path] | None:
            files = self.maildir_files()
            return files if len(files) >= n else None

        files = wait_until(enough, timeout, f"{n} DSN(s) in alice's Maildir")
        assert len(files) == n, files
        out = []
        for f in files:
            data = wire_form(f.read_bytes())
            assert data.startswith(b"Return-Path: <>\r\n"), data[:200]
            out.append(parse_dsn(data))
        return out

    def messages(self) -> list[QueuedMessage]:
        return self.queue.list(limit=1000)

    def cli(self, *args: str) -> str:
        """`mailgate ARGS --config FILE` in its own process, as an administrator runs it."""
        p = subprocess.run([sys.executable, "-m", "mailgate.cli", *args,
                            "--config", str(self.config_file)],
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, (p.stdout, p.stderr)
        return p.stdout


@pytest.fixture
def mailgate(tmp_path: Path, dns_server: DNSServer, mx_port: int,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Mailgate]]:
    """`start(null_check=False, retry=(1.0,), delay_warning=4h)` -> a running `mailgate
    serve` that asks the test DNS server and delivers to port `mx_port`."""
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    running: list[Mailgate] = []

    def start(null_check: bool = False, retry: tuple[float, ...] = (1.0,),
              tls_policy: dict[str, str] | None = None, routes: dict[str, Route] | None = None,
              mx_listener: int = 0, **delivery: Any) -> Mailgate:
        config = live_config(
            tmp_path / "data",
            dns=DNSConfig((dns_server.nameserver,)),
            delivery=Delivery(smtp_port=mx_port, retry_schedule=retry, **delivery),
            tls_policy=tls_policy or {},
            routes=routes or {},
        )
        if mx_listener:
            config = dataclasses.replace(config, listen=(
                Listener("mx", "127.0.0.1", mx_listener), *config.listen[1:]))
        config = dataclasses.replace(config, policy=dataclasses.replace(
            config.policy, recipient_null_mx_check=null_check))
        live = LiveServer(config).__enter__()
        running.append(Mailgate(live, tmp_path))
        return running[-1]

    yield start
    for m in running:
        m.live.stop()
        m.queue.close()


def assert_null_mx_dsn(dsn: DSN, address: str, domain: str) -> None:
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"].lower() == f"rfc822; {address}"
    assert (rcpt["action"], rcpt["status"]) == ("failed", "5.1.10")
    kind, _, diagnostic = rcpt["diagnostic-code"].partition(";")
    # A failure mailgate decided itself: its own diagnostic type, not smtp (RFC 3464
    # 2.3.6), since no remote server sent this reply.
    assert kind.strip() and kind.strip().lower() != "smtp", rcpt["diagnostic-code"]
    assert diagnostic.strip().startswith("556 5.1.10 ")
    assert "null MX" in diagnostic and domain in diagnostic
    assert "remote-mta" not in rcpt


# --- null MX -------------------------------------------------------------------------


def test_rcpt_to_a_null_mx_domain_is_refused_556_on_the_spot(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mg = mailgate(null_check=True)
    with smtplib.SMTP("127.0.0.1", mg.live.port("mx"), timeout=10) as c:
        c.ehlo("client.test")
        assert c.mail(SENDER)[0] == 250
        for refused in ("bob@null.test", "bob@mixed.test", "bob@alias-null.test"):
            code, text = c.rcpt(refused)
            assert (code, text[:7]) == (556, b"5.1.10 "), (refused, code, text)
        assert c.rcpt("carol@one.test")[0] == 250
        code, text = c.data(CONTENT)
        assert code == 250, text
    qid = text.split()[-1].decode()
    # Only the accepted recipient was queued; it is delivered, and no DSN is owed: the
    # client was told at once.
    assert [r.address for r in mg.queue.show(qid).recipients] == ["carol@one.test"]
    mg.wait(qid, "carol@one.test", DELIVERED)
    assert mx1.all_rcpts() == ["carol@one.test"]
    assert mg.maildir_files() == []


def test_queued_mail_to_a_null_mx_domain_fails_without_connecting_and_bounces(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX],
        dns_server: DNSServer) -> None:
    mxs = fake_mx(MX1), fake_mx(MX2)
    mg = mailgate(null_check=False)  # accepted at RCPT: delivery must decide
    qid = mg.send(["bob@null.test"])
    r = mg.wait(qid, "bob@null.test", FAILED)
    assert (r.last_code, r.last_enhanced) == (556, "5.1.10")
    [dsn] = mg.wait_dsns(1)
    assert_null_mx_dsn(dsn, "bob@null.test", "null.test")
    assert [mx.connections for mx in mxs] == [0, 0]
    assert dsn.returned is not None and dsn.returned["Message-ID"] == "<e2e@localhost>"


def test_null_mx_published_after_acceptance(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX],
        dns_server: DNSServer) -> None:
    mxs = fake_mx(MX1), fake_mx(MX2)
    dns_server.servfail.add("later.test")
    mg = mailgate(null_check=True, retry=(0.3,))  # DNS trouble at RCPT: no refusal
    qid = mg.send(["bob@later.test"])
    r = mg.wait(qid, "bob@later.test", DEFERRED)
    assert (r.last_code, r.last_enhanced) == (451, "4.4.3")
    # The owner publishes a null MX while the message waits (data first, so no retry
    # in between can see the name without records).
    dns_server.add("later.test. MX 0 .")
    dns_server.servfail.discard("later.test")
    r = mg.wait(qid, "bob@later.test", FAILED)
    assert (r.last_code, r.last_enhanced) == (556, "5.1.10") and r.attempts >= 2
    [dsn] = mg.wait_dsns(1)
    assert_null_mx_dsn(dsn, "bob@later.test", "later.test")
    assert [mx.connections for mx in mxs] == [0, 0]


# --- MX hosts, retries, bounces ------------------------------------------------------


def test_first_mx_down_delivers_to_the_second(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX], mx_port: int
        ) -> None:
    mx2 = fake_mx(MX2)  # pref.test: MX 10 mx1.test (nothing listens), MX 20 mx2.test
    mg = mailgate()
    qid = mg.send(["bob@pref.test"])
    mg.wait(qid, "bob@pref.test", DELIVERED)
    [got] = mx2.received
    assert got.rcpt_tos == ("bob@pref.test",) and got.mail_from == SENDER
    assert got.content.endswith(CONTENT)  # after mailgate's Received header
    [(_, attempt)] = mg.queue.show(qid).attempts
    assert attempt.host == f"mx2.test[{MX2}]:{mx_port}"


def test_450_is_deferred_then_delivered_after_queue_retry(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mx1.once("bob@one.test", "450 4.2.1 Mailbox busy, try again later")
    mg = mailgate(retry=(3600.0,))  # only `queue retry` brings it back today
    qid = mg.send(["bob@one.test"])
    r = mg.wait(qid, "bob@one.test", DEFERRED)
    assert (r.last_code, r.last_enhanced, r.attempts) == (450, "4.2.1", 1)
    assert r.next_attempt is not None and r.next_attempt > time.time() + 3000
    assert "1 recipient(s) due now" in mg.cli("queue", "retry", qid)
    r = mg.wait(qid, "bob@one.test", DELIVERED)
    assert r.attempts == 2 and mx1.all_rcpts() == ["bob@one.test"]
    assert mg.maildir_files() == []


def test_421_is_deferred_then_delivered_when_the_retry_comes_due(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mx1.once("bob@one.test", "421 4.3.2 Going down for maintenance")
    mg = mailgate(retry=(0.3,))
    qid = mg.send(["bob@one.test"])
    r = mg.wait(qid, "bob@one.test", DEFERRED)
    assert (r.last_code, r.last_enhanced) == (421, "4.3.2")
    r = mg.wait(qid, "bob@one.test", DELIVERED, timeout=5.0)
    assert r.attempts == 2 and mx1.connections == 2


def test_550_for_one_of_two_recipients_bounces_only_that_one_in_one_dsn(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mg = mailgate()
    qid = mg.send(["bob@one.test", "refuse-550@one.test"])
    mg.wait(qid, "bob@one.test", DELIVERED)
    mg.wait(qid, "refuse-550@one.test", FAILED)
    assert mx1.all_rcpts() == ["bob@one.test"]
    [dsn] = mg.wait_dsns(1)
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"].lower() == "rfc822; refuse-550@one.test"
    assert (rcpt["action"], rcpt["status"]) == ("failed", "5.1.1")
    assert rcpt["remote-mta"].lower() == "dns; mx1.test"
    assert rcpt["diagnostic-code"] == "smtp; 550 5.1.1 No such user here"
    assert dsn.per_message["reporting-mta"].lower() == "dns; localhost"
    # One DSN, queued when the message's round ended: the queue holds it and the
    # original, nothing else.
    assert sorted(m.id == qid for m in mg.messages()) == [False, True]


def test_local_and_remote_recipients_of_one_message(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mg = mailgate()
    qid = mg.send(["bob@localhost", "carol@one.test", "refuse-550@one.test"])
    for address, state in (("bob@localhost", DELIVERED), ("carol@one.test", DELIVERED),
                           ("refuse-550@one.test", FAILED)):
        mg.wait(qid, address, state)
    [copy] = mg.maildir_files("bob")
    assert wire_form(copy.read_bytes()).endswith(CONTENT)
    assert mx1.all_rcpts() == ["carol@one.test"]
    [dsn] = mg.wait_dsns(1)
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; refuse-550@one.test"]


def test_a_failing_message_from_the_null_sender_is_not_bounced(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    fake_mx(MX1)
    mg = mailgate()
    null = mg.send(["refuse-550@one.test"], sender="")
    mg.wait(null, "refuse-550@one.test", FAILED)
    # A failing message from alice, after it: its DSN arriving shows the engine is past
    # the first message, and anything that message owed would be queued by now.
    other = mg.send(["refuse-552@one.test"])
    mg.wait(other, "refuse-552@one.test", FAILED)
    [dsn] = mg.wait_dsns(1)
    assert dsn.recipients[0]["final-recipient"].lower() == "rfc822; refuse-552@one.test"
    messages = {m.id: m for m in mg.messages()}
    bounces = [m for i, m in messages.items() if i not in (null, other)]
    assert len(messages) == 3 and len(bounces) == 1, messages
    assert bounces[0].sender == "" and [r.address for r in bounces[0].recipients] == [SENDER]


def test_a_deferred_message_gets_one_delay_notice_in_the_senders_maildir(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    mx1 = fake_mx(MX1)
    mg = mailgate(retry=(0.2,), delay_warning=0.5)
    qid = mg.send(["defer-450@one.test"])
    [dsn] = mg.wait_dsns(1)
    [rcpt] = dsn.recipients
    assert (rcpt["action"], rcpt["status"]) == ("delayed", "4.2.1")
    assert "will-retry-until" in rcpt
    # The original's headers only, not its body.
    assert dsn.returned is not None
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    headers = dsn.returned.get_payload()
    assert isinstance(headers, str)
    assert "Message-ID: <e2e@localhost>" in headers and "Hello, Bob." not in headers
    # Retried on, never warned about again.
    attempts = mg.recipient(qid, "defer-450@one.test").attempts
    wait_until(lambda: mg.recipient(qid, "defer-450@one.test").attempts >= attempts + 3,
               10, "three more attempts")
    assert len(mg.maildir_files()) == 1 and len(mx1.rcpts) >= 4


def test_a_mailbox_that_cannot_be_written_gets_a_delay_notice(
        mailgate: Callable[..., Mailgate], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalDelivery, "POLL", 0.1)
    mg = mailgate(retry=(0.2,), delay_warning=0.5)
    box = mg.live.maildir / "localhost" / "bob"
    box.parent.mkdir(parents=True, exist_ok=True)
    box.write_bytes(b"")  # a file where bob's Maildir should be: every delivery fails
    qid = mg.send(["bob@localhost"])
    [dsn] = mg.wait_dsns(1)
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"] == "rfc822; bob@localhost"
    assert (rcpt["action"], rcpt["status"]) == ("delayed", "4.3.0")
    r = mg.recipient(qid, "bob@localhost")
    assert r.state == DEFERRED and r.delay_notified


def test_twenty_messages_to_one_destination_go_over_few_connections(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    # A slow server: the first connection waits at EHLO until all 20 messages are
    # queued, so whatever the first claim missed is due at once for the next.
    gate = threading.Event()
    mx1 = fake_mx(MX1, ehlo_gate=gate)
    mg = mailgate()
    with smtplib.SMTP("127.0.0.1", mg.live.port("mx"), timeout=10) as c:
        ids = [mg.send([f"user{i}@one.test"], client=c) for i in range(20)]
    gate.set()
    for i, qid in enumerate(ids):
        mg.wait(qid, f"user{i}@one.test", DELIVERED)
    assert len(mx1.received) == 20
    assert mx1.connections in (1, 2), mx1.connections  # not one per message
    per_connection = [sum(1 for m in mx1.received if m.connection == n)
                      for n in range(1, mx1.connections + 1)]
    assert sum(per_connection) == 20 and min(per_connection) >= 1, per_connection


def send_raw(port: int, rcpt: str, how: str, body: bytes) -> str:
    """One message by DATA or BDAT over a plain socket (smtplib would fix its line
    ends); its queue id."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        replies = s.makefile("rb")

        def reply(send: bytes) -> bytes:
            """The reply to `send`, its lines joined."""
            if send:
                s.sendall(send)
            lines = [replies.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(replies.readline())
            return b"".join(lines)

        reply(b"")
        assert b"250-CHUNKING" in reply(b"EHLO c.test\r\n")
        assert reply(f"MAIL FROM:<{SENDER}>\r\n".encode()).startswith(b"250")
        assert reply(f"RCPT TO:<{rcpt}>\r\n".encode()).startswith(b"250")
        if how == "DATA":
            assert reply(b"DATA\r\n").startswith(b"354")
            end = reply(body.replace(b"\n.", b"\n..") + b"\r\n.\r\n")
        else:
            end = reply(b"BDAT %d LAST\r\n" % len(body) + body)
        assert end.startswith(b"250 2.0.0 Ok: queued as "), (how, end)
        reply(b"QUIT\r\n")
        return end.split()[-1].decode()


def test_bare_line_ends_go_out_as_crlf_whether_data_or_bdat_brought_them(
        mailgate: Callable[..., Mailgate], fake_mx: Callable[..., FakeMX]) -> None:
    # DATA's reader makes every line end CRLF, and the queue stores that it did, so
    # delivery skips its own check; BDAT's octets are stored as they came, unvouched for,
    # and delivery's check makes their line ends CRLF before they go out by DATA. Either
    # way the receiver never sees a bare CR or LF (the stuff of SMTP smuggling).
    mx1 = fake_mx(MX1)
    mg = mailgate()
    body = b"Subject: bare\nX-Test: 1\r\n\r\nline one\nline two\rline three\r\n.dot\n"
    ids = {how: send_raw(mg.live.port("mx"), f"{how.lower()}@one.test", how, body)
           for how in ("DATA", "BDAT")}
    assert mg.queue.show(ids["DATA"]).crlf is True
    assert mg.queue.show(ids["BDAT"]).crlf is False
    for how, qid in ids.items():
        mg.wait(qid, f"{how.lower()}@one.test", DELIVERED)
    got = {m.rcpt_tos[0]: m.content for m in mx1.received}
    for content in got.values():
        assert re.search(rb"\r(?!\n)|(?<!\r)\n", content) is None, content
    crlf = b"Subject: bare\r\nX-Test: 1\r\n\r\nline one\r\nline two\r\nline three\r\n.dot\r\n"
    # DATA's terminator needs a CRLF of its own after the last bare LF: an empty line.
    assert got["data@one.test"].endswith(b"\r\n" + crlf + b"\r\n")
    assert got["bdat@one.test"].endswith(b"\r\n" + crlf)


# --- Postfix as the receiving MX -----------------------------------------------------


MASTER_CF = """\
{address} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
tlsmgr    unix  - - n 1000? 1 tlsmgr
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
local_header_rewrite_clients =
smtpd_peername_lookup = no
virtual_mailbox_domains = pf.test
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/etc/vmailbox
virtual_minimum_uid = 1
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
smtputf8_enable = no
biff = no
"""


class Postfix:
    """A private Postfix instance: `postfix -c DIR start`, its smtpd on one address.

    Postfix's daemons run as the `postfix` user and must reach the queue and data
    directories, which pytest's tmp_path (mode 0700, root's) does not allow: the instance
    lives in a directory of its own under the system temp directory, removed on stop.
    Mail for `pf.test` goes into a Maildir, `<root>/mail/pf.test/<user>/`, by virtual(8)
    (which refuses uid 0: it delivers as the postfix user).
    """

    def __init__(self, address: str, port: int, users: tuple[str, ...],
                 tls: tuple[Path, Path] | None = None) -> None:
        self.address = f"{address}:{port}"
        self.users = users
        self.tls = tls  # (certificate, key) for STARTTLS, or none offered
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
        self.etc = self.root / "etc"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=60, check=False)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"

    def start(self) -> Postfix:
        need_tool("postfix", path=str(POSTFIX))
        need(os.geteuid() == 0, "root: a private Postfix instance runs its master as root "
             "and its daemons as the postfix user")
        try:
            owner = pwd.getpwnam("postfix")
        except KeyError:
            pytest.fail("there is no `postfix` user: the Debian package `postfix` creates it")
        self.root.chmod(0o755)
        closed = [d for d in self.root.parents if not d.stat().st_mode & 0o001]
        if closed:
            pytest.fail(f"Postfix's daemons (user postfix) cannot reach {self.root}: "
                        f"{closed[0]} is not searchable by others; set TMPDIR to a directory "
                        "they can reach, such as /tmp")
        for sub in ("etc", "spool", "data", "mail"):
            (self.root / sub).mkdir()
        for sub in ("data", "mail"):
            os.chown(self.root / sub, owner.pw_uid, owner.pw_gid)
        main_cf = MAIN_CF.format(root=self.root, uid=owner.pw_uid, gid=owner.pw_gid)
        if self.tls is not None:
            # smtpd reads its key as root, before it drops privileges: etc/ will do.
            cert, key = (shutil.copy(f, self.etc / f.name) for f in self.tls)
            main_cf += (f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
                        "smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\n")
        (self.etc / "main.cf").write_text(main_cf)
        (self.etc / "master.cf").write_text(MASTER_CF.format(address=self.address))
        (self.etc / "vmailbox").write_text(
            "".join(f"{u}@pf.test pf.test/{u}/\n" for u in self.users))
        p = self._run("start")
        if p.returncode != 0:
            pytest.fail(f"Postfix did not start (exit {p.returncode}): {p.stdout}{p.stderr}\n"
                        f"{self.log()}")
        host, port = self.address.rsplit(":", 1)

        def listening() -> bool:
            try:
                with smtplib.SMTP(host, int(port), timeout=2) as c:
                    return c.noop()[0] == 250
            except OSError:
                return False

        try:
            wait_until(listening, 10, f"Postfix's smtpd on {self.address}")
        except AssertionError as exc:
            pytest.fail(f"{exc}\n{self.log()}")
        return self

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / "pf.test" / user / "new"

    def stop(self) -> None:
        self._run("stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postfix(mx_port: int) -> Iterator[Postfix]:
    """Postfix on 127.0.0.3 (mx2.test) at the MX port, taking mail for bob@pf.test."""
    pf = Postfix(MX2, mx_port, ("bob",)).start()
    yield pf
    pf.stop()


def postfix_maildir(postfix: Postfix, user: str) -> bytes:
    try:
        [box] = wait_until(lambda: list(postfix.maildir(user).glob("*")), 10,
                           "the message in Postfix's Maildir")
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{postfix.log()}")
    return box.read_bytes()


def test_postfix_receives_the_message_byte_for_byte(
        mailgate: Callable[..., Mailgate], postfix: Postfix, dns_server: DNSServer,
        mx_port: int) -> None:
    dns_server.add("pf.test. MX 10 mx2.test.")
    mg = mailgate()
    qid = mg.send(["bob@pf.test"])
    queued = mg.queue.show(qid, content=True).content
    assert queued is not None and queued.endswith(CONTENT)
    r = mg.wait(qid, "bob@pf.test", DELIVERED)
    assert r.last_code == 250 and r.last_enhanced == "2.0.0", r
    assert r.last_text is not None and "queued as" in r.last_text
    [(_, attempt)] = mg.queue.show(qid).attempts
    assert attempt.host == f"mx2.test[{MX2}]:{mx_port}" and attempt.remote
    try:
        [box] = wait_until(lambda: list(postfix.maildir("bob").glob("*")), 10,
                           "the message in Postfix's Maildir")
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{postfix.log()}")
    data = box.read_bytes()
    # A Maildir file has LF line ends; Postfix puts its own headers first (Return-Path,
    # X-Original-To, Delivered-To, its Received); everything after is mailgate's
    # message as queued (mailgate's Received header, then what the client sent).
    expected = queued.replace(b"\r\n", b"\n")
    assert data.endswith(expected), (data, expected)
    added = data[: len(data) - len(expected)].decode()
    names = [line.split(":", 1)[0] for line in added.splitlines() if not line[:1].isspace()]
    assert names == ["Return-Path", "X-Original-To", "Delivered-To", "Received"], added
    assert added.startswith(f"Return-Path: <{SENDER}>\n")
    assert "by postfix.test (Postfix)" in added


def test_postfix_takes_messages_pipelined_behind_each_other(
        postfix: Postfix, mx_port: int) -> None:
    """Five messages over one connection to a real Postfix, each message's MAIL, RCPT and
    DATA written behind the content of the one before (RFC 2920 3.1): Postfix's smtpd
    answers each in order, files each byte for byte, and logs no pipelining complaint;
    the third, for a user Postfix does not know, is refused at RCPT alone."""
    users = ["bob", "bob", "nobody", "bob", "bob"]
    messages = [(Envelope.make(SENDER, [f"{u}@pf.test"]),
                 CONTENT.replace(b"Subject: ", f"Subject: {i} ".encode(), 1))
                for i, u in enumerate(users)]
    tap = _SentTap()
    session = ClientSession(ClientConfig(helo_name="mailgate.test", tls="never"))
    run: ClientRun = asyncio.run(run_client(MX2, mx_port, session, messages, tap=tap))
    assert run.established is not None and run.established.capabilities.pipelining
    codes = [[r.outcome.reply.code for r in m.results] for m in run.results]
    assert codes == [[250], [250], [550], [250], [250]], (codes, postfix.log())
    # The content of one message and the next one's commands left in one write.
    assert any(b".\r\nMAIL FROM:" in chunk for chunk in tap.chunks), tap.chunks
    def four() -> list[Path] | None:
        found = sorted(postfix.maildir("bob").glob("*"))
        return found if len(found) == 4 else None

    boxes = wait_until(four, 10, "four messages in Postfix's Maildir")
    bodies = sorted(b.read_bytes() for b in boxes)
    for i in (0, 1, 3, 4):
        sent = messages[i][1].replace(b"\r\n", b"\n")
        assert sum(body.endswith(sent) for body in bodies) == 1, (i, bodies)
    log = postfix.log()
    assert "pipelining" not in log.lower(), log
    # One connection carried all five; the RSET follows the message nobody took.
    assert "ehlo=1 mail=5 rcpt=4/5 data=4/5 rset=1 quit=1" in log, log


class _SentTap:
    """The bytes a client wrote, one entry per write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def sent(self, data: bytes) -> None:
        self.chunks.append(data)

    def received(self, data: bytes) -> None:
        pass

    def tls_up(self, ssl_object: Any) -> None:
        pass


def test_verify_against_postfix_with_a_ca_signed_certificate(
        mailgate: Callable[..., Mailgate], dns_server: DNSServer, mx_port: int,
        tmp_path: Path) -> None:
    """TLS level `verify` with a real Postfix: its certificate, signed by a CA mailgate is
    told to trust, names mx2.test, the MX host name; the attempt records the cipher and
    Postfix's Received header says the message came over TLS."""
    ca = TestCA.create(tmp_path / "ca")
    pf = Postfix(MX2, mx_port, ("bob",), tls=ca.issue("mx2.test")).start()
    try:
        dns_server.add("pf.test. MX 10 mx2.test.")
        mg = mailgate(tls_policy={"pf.test": "verify"}, tls_ca_file=ca.ca_file)
        qid = mg.send(["bob@pf.test"])
        mg.wait(qid, "bob@pf.test", DELIVERED)
        [(_, attempt)] = mg.queue.show(qid).attempts
        assert attempt.tls is not None and attempt.tls.startswith("TLSv1.3 "), attempt
        data = postfix_maildir(pf, "bob").decode(errors="replace")
        assert f"(using {attempt.tls.split()[0]} with cipher {attempt.tls.split()[1]}" in data
    finally:
        pf.stop()


def test_verify_refuses_postfix_with_an_untrusted_certificate(
        mailgate: Callable[..., Mailgate], dns_server: DNSServer, mx_port: int,
        tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    pf = Postfix(MX2, mx_port, ("bob",), tls=ca.issue("mx2.test", self_signed=True)).start()
    try:
        dns_server.add("pf.test. MX 10 mx2.test.")
        mg = mailgate(tls_policy={"pf.test": "verify"}, tls_ca_file=ca.ca_file)
        qid = mg.send(["bob@pf.test"])
        r = mg.wait(qid, "bob@pf.test", DEFERRED)
        assert (r.last_code, r.last_enhanced) == (451, "4.7.5"), r
        assert r.last_text is not None and "certificate verify failed" in r.last_text
        assert not pf.maildir("bob").exists() or not list(pf.maildir("bob").iterdir())
    finally:
        pf.stop()


# --- a relayhost that wants AUTH: a second mailgate's submission port ------------------


def test_relayhost_auth_at_a_second_mailgate(
        mailgate: Callable[..., Mailgate], tmp_path: Path) -> None:
    """mailgate A sends everything to mailgate B's submission port (STARTTLS, AUTH PLAIN,
    B's self-signed certificate: the relayhost's level is `encrypt`); B takes mail for
    b.test into its Maildir. Both ends are the production code."""
    # B has a name of its own: a server that greets with ours is ourselves (a loop).
    # A relays for all its senders: B lets its user a-node send as anyone.
    b_config = live_config(tmp_path / "b", hostname="mx.b.test",
                           domains=Domains(local=("b.test",)),
                           submission=Submission(sender_login_check=False))
    UserDB(b_config.data_dir / "users.json").set_password("a-node", "relay secret")
    with LiveServer(b_config) as b:
        relay = Relayhost("127.0.0.1", b.port("submission"), False, username="a-node",
                          password="relay secret")
        a = mailgate(relayhost=relay)
        qid = a.send(["carol@b.test"])
        a.wait(qid, "carol@b.test", DELIVERED)
        [(_, attempt)] = a.queue.show(qid).attempts
        assert attempt.tls is not None and attempt.remote
        box = b.maildir / "b.test" / "carol" / "new"
        [file] = wait_until(lambda: list(box.iterdir()) if box.is_dir() else None, 10,
                            "the message in B's Maildir")
        data = wire_form(file.read_bytes())
        assert data.endswith(CONTENT)
        # B's trace header: submitted over TLS, authenticated (RFC 3848 ESMTPSA).
        received = data.split(b"\r\n\r\n", 1)[0].split(b"Received:")[1]
        assert b"with ESMTPSA" in received, received


def test_relayhost_refusing_the_password_keeps_the_mail(
        mailgate: Callable[..., Mailgate], tmp_path: Path) -> None:
    # B has a name of its own: a server that greets with ours is ourselves (a loop).
    # A relays for all its senders: B lets its user a-node send as anyone.
    b_config = live_config(tmp_path / "b", hostname="mx.b.test",
                           domains=Domains(local=("b.test",)),
                           submission=Submission(sender_login_check=False))
    UserDB(b_config.data_dir / "users.json").set_password("a-node", "relay secret")
    with LiveServer(b_config) as b:
        relay = Relayhost("127.0.0.1", b.port("submission"), False, username="a-node",
                          password="wrong")
        a = mailgate(relayhost=relay)
        qid = a.send(["carol@b.test"])
        r = a.wait(qid, "carol@b.test", DEFERRED)
        assert (r.last_code, r.last_enhanced) == (451, "4.7.8"), r
        assert r.last_text is not None and "535 5.7.8" in r.last_text
        assert a.maildir_files() == []  # no bounce: the fault is the password


# --- NOTIFY=SUCCESS across two mailgates -------------------------------------------------


def test_notify_success_is_reported_by_the_mta_that_delivers(
        mailgate: Callable[..., Mailgate], tmp_path: Path) -> None:
    """RFC 3461 5.2.1 and 5.3: A hands the message to B, which offers DSN, so A passes
    NOTIFY=SUCCESS on and reports nothing itself; B delivers into its Maildir and sends
    the `delivered` notice, which comes back through A to the sender's Maildir."""
    a_port = free_port()
    b_config = live_config(tmp_path / "b", hostname="mx.b.test",
                           domains=Domains(local=("b.test",)),
                           routes={"localhost": Route("localhost", "127.0.0.1", a_port, False)})
    with LiveServer(b_config) as b:
        a = mailgate(mx_listener=a_port,
                     routes={"b.test": Route("b.test", "127.0.0.1", b.port("mx"), False)})
        with smtplib.SMTP("127.0.0.1", a_port, timeout=10) as c:
            c.ehlo()
            code, _ = c.mail(SENDER, ["RET=HDRS", "ENVID=e2e-success"])
            assert code == 250
            code, _ = c.rcpt("carol@b.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;carol@b.test"])
            assert code == 250
            code, text = c.data(CONTENT)
            assert code == 250, text
            qid = text.split()[-1].decode()
        a.wait(qid, "carol@b.test", DELIVERED)
        [dsn] = a.wait_dsns(1)
    assert dsn.per_message["reporting-mta"] == "dns; mx.b.test"  # B, not A
    assert dsn.per_message["original-envelope-id"] == "e2e-success"
    [rcpt] = dsn.recipients
    assert (rcpt["action"], rcpt["status"]) == ("delivered", "2.0.0")
    assert rcpt["original-recipient"] == "rfc822; carol@b.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
