"""The attacks of issue 11, each replayed against the live server over real sockets.

A stranger on port 25 (the MX listener, `[relay] networks = []`) tries to make mailgate
relay, loop, crash its delivery, hold its memory or its connection slots, or race its
AUTH limits. Each test is the attack as it was run; each now holds: refused with the
right code, or handled with nothing lost and nothing amplified.

Clients bind to their own loopback addresses (127.0.0.x) where per-address state
(connection and AUTH counters) must not leak from one test into the next.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailgate.config import Config, Delivery, Domains, Limits, Relay, Timeouts
from mailgate.server.policy import ConnectionInfo, Policy
from mailgate.smtp.server import AuthAttempt
from mailgate.users import UserDB
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import (
    Wire,
    loopback_config,
    wait_for_files,
    wait_until,
    wire_form,
)

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver"]

USER, PASSWORD = "carol", "correct horse battery"
PLAIN_BAD = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
LOCAL = ("example.test", "xn--bcher-kva.test")


def rows(config: Config, sql: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{config.data_dir / 'queue.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def send(w: Wire, sender: str, rcpts: list[str], content: bytes = MESSAGE,
         mail_params: str = "") -> str:
    assert w.cmd(f"MAIL FROM:<{sender}>{mail_params}").startswith("250")
    for rcpt in rcpts:
        reply = w.cmd(f"RCPT TO:<{rcpt}>")
        assert reply.startswith("250"), (rcpt, reply)
    assert w.cmd("DATA").startswith("354")
    w.send(content + b".\r\n")
    return w.reply()


@pytest.fixture(scope="module")
def stranger_mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Local domains example.test and bücher.test; no relay networks at all."""
    data = tmp_path_factory.mktemp("attacks") / "data"
    config = loopback_config(data, relay=Relay(networks=()),
                             domains=Domains(local=LOCAL, catch_all=True))
    with LiveServer(config) as srv:
        yield srv


# --- 1. <postmaster> is delivered here, never relayed ---------------------------------


def test_bare_postmaster_is_delivered_to_the_local_postmaster(stranger_mx: LiveServer) -> None:
    with Wire(stranger_mx.port("mx"), source="127.0.0.31") as w:
        w.greeting()
        w.ehlo()
        reply = send(w, "attacker@victim.example", ["postmaster", "PostMaster"],
                     mail_params=" RET=FULL")
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    # RFC 5321 4.5.1: the postmaster of the first local domain gets it, here.
    (path,) = wait_for_files(stranger_mx.maildir / "example.test" / "postmaster" / "new", 1)
    assert wire_form(path.read_bytes()).endswith(MESSAGE)
    assert rows(stranger_mx.config, "SELECT count(*) FROM recipients WHERE domain = ''") == [(0,)]
    # Nothing goes out and no bounce is owed: the only message is the one accepted.
    assert rows(stranger_mx.config, "SELECT count(*) FROM messages") >= [(1,)]
    assert rows(stranger_mx.config,
                "SELECT count(*) FROM messages WHERE sender = ''") == [(0,)]


# --- 2. look-alikes of a local domain are that domain ---------------------------------


@pytest.mark.parametrize(("typed", "box"), [
    ("ｅｘａｍｐｌｅ.test", "example.test"),  # fullwidth letters
    ("example。test", "example.test"),  # ideographic full stop
    ("exam\u00adple.test", "example.test"),  # soft hyphen
    ("EXAMPLE.TEST", "example.test"),
    ("bücher.test", "xn--bcher-kva.test"),  # the U-label of a local IDN
])
def test_look_alike_local_domains_are_delivered_locally(stranger_mx: LiveServer, typed: str,
                                                        box: str) -> None:
    user = f"la{abs(hash(typed)) % 10**8}"
    with Wire(stranger_mx.port("mx"), source="127.0.0.32") as w:
        w.greeting()
        w.ehlo()
        reply = send(w, "someone@example.org", [f"{user}@{typed}"],
                     mail_params=" SMTPUTF8")
        assert reply.startswith("250 2.0.0"), reply
    wait_for_files(stranger_mx.maildir / box / user / "new", 1)
    assert rows(stranger_mx.config, "SELECT domain FROM recipients WHERE address LIKE ?",
                f"{user}@%") == [(box,)]


def test_names_idna_2008_keeps_apart_are_not_local(stranger_mx: LiveServer) -> None:
    """IDNA 2003 maps faß to fass; IDNA 2008 keeps them apart, so the look-alike of a
    local fass.test is a remote domain (no relay here), not a local one."""
    with Wire(stranger_mx.port("mx"), source="127.0.0.33") as w:
        w.greeting()
        w.ehlo()
        assert w.cmd("MAIL FROM:<a@example.org> SMTPUTF8").startswith("250")
        assert w.cmd("RCPT TO:<x@faß.test>") == "554 5.7.1 Relay access denied"
        reply = w.cmd("RCPT TO:<x@ex\u200dample.test>")  # a joiner out of context
        assert reply.startswith(("553 5.1.3", "501 5.1.3")), reply


def test_mailgate_as_its_own_mx_does_not_loop(tmp_path: Path,
                                              dns_server_factory: object) -> None:
    """The domain's MX is this very server: mail for it that is not local must not
    come back again and again (it became 1,524 messages in 23 s)."""
    port = free_port()
    dns: DNSServer = dns_server_factory(  # type: ignore[operator]
        "test. SOA ns.test. h.test. 1 3600 600 86400 60\n"
        "loop.test. MX 10 mx.loop.test.\nmx.loop.test. A 127.0.0.1\n")
    base = live_config(tmp_path / "data", dns=dataclasses.replace(
        live_config(tmp_path).dns, nameservers=(dns.nameserver,)))
    config = dataclasses.replace(
        base, listen=tuple(dataclasses.replace(lst, port=port) if lst.role == "mx" else lst
                           for lst in base.listen),
        delivery=Delivery(smtp_port=port, retry_schedule=(0.2,)))
    with LiveServer(config) as srv:
        with Wire(port) as w:  # from loopback: a relay client
            w.greeting()
            w.ehlo()
            assert send(w, "alice@localhost", ["bob@loop.test"]).startswith("250")
        # The engine meets its own greeting, fails the recipient (5.4.6) and bounces.
        (bounce,) = wait_for_files(srv.maildir / "localhost" / "alice" / "new", 1, 20)
        assert b"5.4.6" in bounce.read_bytes()
        assert b"loops back to myself" in bounce.read_bytes()
        time.sleep(0.5)
        assert rows(config, "SELECT count(*) FROM messages") == [(2,)]  # message + bounce


def test_too_many_received_fields_is_a_loop(stranger_mx: LiveServer) -> None:
    hops = b"".join(b"Received: from hop%d.example (hop%d.example [192.0.2.1])\r\n"
                    b"\tby next.example; Thu, 3 Dec 2026 10:00:00 +0000\r\n" % (i, i)
                    for i in range(50))
    with Wire(stranger_mx.port("mx"), source="127.0.0.34") as w:
        w.greeting()
        w.ehlo()
        reply = send(w, "a@example.org", ["hops@example.test"], hops + MESSAGE)
        assert reply.startswith("554 5.4.6 Too many hops"), reply
        assert send(w, "a@example.org", ["hops@example.test"],
                    hops[: len(hops) // 2] + MESSAGE).startswith("250")


# --- 3. validate at the door ------------------------------------------------------------


@pytest.mark.parametrize("envid", ["+0D+0A", "+00", "+7F", "+C3", "+1B]0;owned+07", "a+20b"])
def test_dsn_envid_with_control_characters_is_refused(stranger_mx: LiveServer,
                                                      envid: str) -> None:
    with Wire(stranger_mx.port("mx"), source="127.0.0.35") as w:
        w.greeting()
        w.ehlo()
        reply = w.cmd(f"MAIL FROM:<a@example.org> ENVID={envid}")
        assert reply.startswith("501 5.5.4 ENVID must decode to printable"), reply
        assert w.cmd("MAIL FROM:<a@example.org> ENVID=ok-123").startswith("250")
        reply = w.cmd("RCPT TO:<x@example.test> ORCPT=rfc822;x+0D+0Ay@example.test")
        assert reply.startswith("501 5.5.4 ORCPT must decode to printable"), reply


# --- 5. slowloris: deadlines, not idle timers -----------------------------------------


def test_a_command_trickled_byte_by_byte_still_times_out(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data",
                         timeouts=Timeouts(command=1.0, data_block=1.0))
    with LiveServer(config) as srv, Wire(srv.port("mx"), source="127.0.0.36") as w:
        w.greeting()
        started = time.monotonic()
        closed = False
        for byte in b"EHLO slowloris.example.with.a.long.name.that.never.ends":
            try:
                w.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if w.closed(0.15):
                closed = True
                break
        assert closed, "one byte every 0.15 s held the connection for ever"
        assert time.monotonic() - started < 5


def test_trickling_clients_cannot_keep_every_slot(tmp_path: Path) -> None:
    """1,000 slow connections once kept every slot, and fresh clients got 421 the whole
    time. Under stress (80 % of the slots taken) the short timeouts apply."""
    config = live_config(
        tmp_path / "data", limits=Limits(connections=10, connections_per_ip=10),
        timeouts=Timeouts(stress_command=1.0, stress_data_block=1.0))
    stop = threading.Event()
    with LiveServer(config) as srv:
        port = srv.port("mx")
        held = threading.Semaphore(0)

        def loris(source: str) -> None:
            with contextlib.suppress(OSError), Wire(port, source=source) as w:
                if not w.pending(1.0).startswith(b"220"):
                    return  # no slot left for this one
                held.release()
                while not stop.is_set() and not w.eof:
                    w.send(b"N")  # one byte of a command that never ends
                    w.pending(0.3)

        threads = [threading.Thread(target=loris, args=(f"127.0.1.{i}",), daemon=True)
                   for i in range(12)]
        for t in threads:
            t.start()
        try:
            for _ in range(10):
                assert held.acquire(timeout=10), "the attacker could not take every slot"
            with Wire(port, source="127.0.0.37") as w:
                assert w.greeting().startswith("421"), "every slot should be taken now"

            def fresh_client_served() -> bool:
                with Wire(port, source="127.0.0.37") as w:
                    return w.greeting().startswith("220") and w.cmd("QUIT").startswith("221")

            wait_until("a fresh client to be served", fresh_client_served, 15, 0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(5)


# --- 6. every connection counts -------------------------------------------------------


def test_tls_handshakes_in_progress_count_against_the_limits(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data", limits=Limits(connections=4, connections_per_ip=4),
                         timeouts=Timeouts(tls_handshake=1.0))
    with LiveServer(config) as srv:
        silent = [socket.create_connection(("127.0.0.1", srv.port("smtps")))
                  for _ in range(4)]  # TCP only: no ClientHello, ever
        try:
            time.sleep(0.2)
            with Wire(srv.port("mx"), source="127.0.0.38") as w:
                assert w.greeting().startswith("421 Too many connections")
            # The handshakes have their own deadline: the slots come back.
            for s in silent:
                s.settimeout(5)
                assert s.recv(100) == b""
            wait_until("a slot to be free again", lambda: Wire(
                srv.port("mx"), source="127.0.0.38").greeting().startswith("220"), 5, 0.1)
        finally:
            for s in silent:
                s.close()


# --- 7. AUTH failure limits cannot be raced -------------------------------------------


class CountingPolicy(Policy):
    checked = 0

    def check_password(self, ev: AuthAttempt) -> bool:
        type(self).checked += 1
        time.sleep(0.05)  # as slow as scrypt, so the attempts overlap
        return super().check_password(ev)


def test_parallel_auth_attempts_cannot_race_the_failure_limit(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data")
    UserDB(config.data_dir / "users.json").set_password(USER, PASSWORD)
    CountingPolicy.checked = 0
    with LiveServer(config, policy=CountingPolicy) as srv:
        ready = threading.Barrier(40)
        answers: list[str] = []

        def attempt() -> None:
            with Wire(srv.port("smtps"), tls=True, source="127.0.0.39", timeout=20) as w:
                w.greeting()
                w.ehlo()
                ready.wait(10)
                answers.append(w.cmd(f"AUTH PLAIN {PLAIN_BAD}"))

        threads = [threading.Thread(target=attempt) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(answers) == 40
    assert CountingPolicy.checked <= Policy.AUTH_FAILS_PER_IP, CountingPolicy.checked
    assert sum(a.startswith("421 4.7.0") for a in answers) >= 40 - Policy.AUTH_FAILS_PER_IP


# --- 8. the rest ----------------------------------------------------------------------


def test_a_client_that_never_reads_its_replies_is_not_buffered_for(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data")
    with LiveServer(config) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port("mx")),
                                        source_address=("127.0.0.40", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.5)
        sent = 0
        try:
            chunk = b"NOOP\r\n" * 10000
            while sent < 64 * 1024 * 1024:
                try:
                    sent += sock.send(chunk)
                except TimeoutError:
                    break  # the server stopped reading from us: that is the point
            assert srv.server is not None
            conns = list(srv.server.connections)
            assert conns
            buffered = max(c.transport.get_write_buffer_size() for c in conns
                           if c.transport is not None)
            assert sent < 64 * 1024 * 1024, "the server read 64 MiB it could not answer"
            assert buffered < 4 * 1024 * 1024, buffered
        finally:
            sock.close()


def test_an_authenticated_user_sends_only_as_their_own_addresses(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data", relay=Relay(networks=()))
    UserDB(config.data_dir / "users.json").set_password(USER, PASSWORD)
    with LiveServer(config) as srv, Wire(srv.port("smtps"), tls=True) as w:
        w.greeting()
        w.ehlo()
        assert w.cmd(f"AUTH PLAIN {PLAIN_OK}").startswith("235")
        reply = w.cmd("MAIL FROM:<alice@localhost>")
        assert reply.startswith("553 5.7.1 Sender address is not yours"), reply
        assert w.cmd("MAIL FROM:<ceo@bank.example>").startswith("553 5.7.1")
        assert w.cmd("MAIL FROM:<Carol@localhost>").startswith("250")
        assert w.cmd("RSET").startswith("250")
        assert w.cmd("MAIL FROM:<>").startswith("250")


def test_a_stranger_cannot_ask_for_success_notices(stranger_mx: LiveServer) -> None:
    with Wire(stranger_mx.port("mx"), source="127.0.0.41") as w:
        w.greeting()
        w.ehlo()
        assert w.cmd("MAIL FROM:<victim@elsewhere.example> RET=FULL").startswith("250")
        assert w.cmd("RCPT TO:<notify@example.test> NOTIFY=SUCCESS").startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(MESSAGE + b".\r\n")
        assert w.reply().startswith("250")
    wait_for_files(stranger_mx.maildir / "example.test" / "notify" / "new", 1)
    time.sleep(0.5)
    assert rows(stranger_mx.config, "SELECT notify FROM recipients WHERE address = ?",
                "notify@example.test") == [("NEVER",)]
    assert rows(stranger_mx.config, "SELECT count(*) FROM recipients r JOIN messages m "
                "ON m.seq = r.msg_seq WHERE m.sender = '' AND r.address LIKE 'victim@%'"
                ) == [(0,)]


def test_a_big_message_streams_through_the_spool_byte_for_byte(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data")
    line = b"x" * 74 + b"\r\n"
    content = b"Subject: big\r\n\r\n" + line * (3 * 1024 * 1024 // len(line))
    with LiveServer(config) as srv, Wire(srv.port("mx")) as w:
        w.greeting()
        w.ehlo()
        assert send(w, "a@example.org", ["big@localhost"], content).startswith("250")
        (path,) = wait_for_files(srv.maildir / "localhost" / "big" / "new", 1)
        assert wire_form(path.read_bytes()).endswith(content)
        assert list((config.data_dir / "spool").iterdir()) == []  # removed once queued


def test_user_names_a_stranger_tries_do_not_stay_in_memory(tmp_path: Path) -> None:
    """Each AUTH attempt reserves a failure under the user name it gives; names whose
    failures expired are swept, so a spray of made-up names cannot grow memory for good."""
    policy = Policy(live_config(tmp_path / "data"), None, UserDB(tmp_path / "users.json"))
    conn = ConnectionInfo(role="submission", ip="192.0.2.1", port=0)
    window, sweep = Policy.AUTH_FAIL_WINDOW, Policy.AUTH_TABLE_SWEEP
    for i in range(sweep + 1):
        conn.ip = f"2001:db8::{i:x}"  # a spray from many addresses
        assert policy.auth_reserve(conn, f"user{i}", now=float(i) / sweep) is not None
    assert len(policy._user_fails) == sweep + 1  # nothing has expired yet
    later = window + 10.0  # every failure so far has expired
    assert policy.auth_reserve(conn, "one-more", now=later) is not None
    assert len(policy._user_fails) == 1 and len(policy._auth_fails) <= 1
