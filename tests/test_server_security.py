"""The live server under attack, over real TCP (and real TLS).

Not an open relay; AUTH never in plaintext, failed AUTH limited per connection and per
IP; STARTTLS command injection; every SMTP smuggling variant of the dialog files (with
bare newlines normalized and rejected); a slow client and a flood of idle connections
that must not stop anyone else; idle timeouts; too many errors.

Clients bind to different loopback addresses (127.0.0.x) where per-IP state (connection
and AUTH failure counters) must not leak from one test into the next.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import smtplib
import socket
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from mailgate.config import Config, Relay, Timeouts
from mailgate.users import UserDB
from tests.support.dialog import Expect, ExpectMessage, Send, load_dialog
from tests.support.live import LiveServer
from tests.support.smtpwire import (
    Wire,
    loopback_config,
    parse_delivered,
    unverified_context,
    wait_for_files,
    wait_until,
)

USER, PASSWORD = "carol", "correct horse battery"
PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
PLAIN_BAD = base64.b64encode(f"\0{USER}\0not the password".encode()).decode()
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def start(config: Config) -> LiveServer:
    UserDB(config.data_dir / "users.json").set_password(USER, PASSWORD)
    return LiveServer(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No relay networks: local domains from anyone, everything else only after AUTH."""
    data = tmp_path_factory.mktemp("security") / "data"
    with start(loopback_config(data, relay=Relay(networks=()))) as srv:
        yield srv


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`[policy] bare_newlines = "reject"`."""
    data = tmp_path_factory.mktemp("reject") / "data"
    config = loopback_config(data)
    config = dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, bare_newlines="reject"))
    with start(config) as srv:
        yield srv


def queued(server: LiveServer, address: str) -> int:
    """How many queue entries (any state) are for `address`, read from the SQLite file."""
    db = sqlite3.connect(f"file:{server.config.data_dir / 'queue.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT count(*) FROM recipients WHERE address = ?",
                         (address,)).fetchone()
    finally:
        db.close()
    return int(row[0])


def mailbox(server: LiveServer, address: str) -> Path:
    local, _, domain = address.partition("@")
    return server.maildir / domain / local / "new"


def greeted(port: int, source: str = "127.0.0.1", tls: bool = False) -> Wire:
    w = Wire(port, source=source, tls=tls)
    greeting = w.greeting()
    assert greeting == "220 localhost ESMTP mailgate", greeting
    return w


# --- not an open relay ----------------------------------------------------------------


def test_mx_refuses_to_relay_but_takes_local_mail(server: LiveServer) -> None:
    with greeted(server.port("mx")) as w:
        w.ehlo()
        assert w.cmd("MAIL FROM:<spammer@example.net>") == "250 2.1.0 Sender ok"
        for victim in ("victim@remote.example", "victim@[192.0.2.1]", "victim@localhost.example",
                       "@localhost:victim@remote.example"):
            reply = w.cmd(f"RCPT TO:<{victim}>")
            assert reply == "554 5.7.1 Relay access denied", (victim, reply)
        assert w.cmd("RCPT TO:<relay-local@localhost>") == "250 2.1.5 Recipient ok"
        assert w.cmd("DATA").startswith("354")
        w.send(MESSAGE + b".\r\n")
        assert w.reply().startswith("250 2.0.0 Ok: queued as ")
    wait_for_files(mailbox(server, "relay-local@localhost"), 1)
    assert queued(server, "victim@remote.example") == 0


@pytest.mark.parametrize("role", ["submission", "smtps"])
def test_submission_does_not_relay_without_auth(server: LiveServer, role: str) -> None:
    with greeted(server.port(role), tls=role == "smtps") as w:
        w.ehlo()
        if role == "submission":
            assert w.cmd("STARTTLS").startswith("220")
            w.starttls()
            w.ehlo()
        assert w.cmd("MAIL FROM:<carol@localhost>") == "530 5.7.0 Authentication required"
        assert w.cmd("RCPT TO:<victim@remote.example>") == "503 5.5.1 Need MAIL before RCPT"
        # With AUTH the same client may relay.
        assert w.cmd(f"AUTH PLAIN {PLAIN_OK}") == "235 2.7.0 Authentication successful"
        assert w.cmd("MAIL FROM:<carol@localhost>") == "250 2.1.0 Sender ok"
        assert w.cmd("RCPT TO:<friend@remote.example>") == "250 2.1.5 Recipient ok"


# --- AUTH -----------------------------------------------------------------------------


def test_auth_is_never_possible_in_plaintext(server: LiveServer) -> None:
    with greeted(server.port("submission")) as w:
        ehlo = w.ehlo()
        assert "AUTH" not in ehlo and "STARTTLS" in ehlo
        for command in (f"AUTH PLAIN {PLAIN_OK}", "AUTH PLAIN", "AUTH LOGIN"):
            reply = w.cmd(command)
            assert reply == ("538 5.7.11 Encryption required for requested authentication "
                             "mechanism"), (command, reply)
        assert w.cmd("MAIL FROM:<carol@localhost>") == "530 5.7.0 Authentication required"


def test_mx_listener_takes_no_credentials_even_over_tls(server: LiveServer) -> None:
    with greeted(server.port("mx")) as w:
        w.ehlo()
        assert w.cmd("STARTTLS").startswith("220")
        w.starttls()
        assert "AUTH" not in w.ehlo()
        assert w.cmd(f"AUTH PLAIN {PLAIN_OK}") == "502 5.5.1 Authentication not enabled"


def test_failed_auth_is_limited_per_connection(server: LiveServer) -> None:
    with greeted(server.port("smtps"), source="127.0.0.20", tls=True) as w:
        w.ehlo()
        assert w.cmd(f"AUTH PLAIN {PLAIN_BAD}") == "535 5.7.8 Authentication credentials invalid"
        assert w.cmd(f"AUTH PLAIN {PLAIN_BAD}") == "535 5.7.8 Authentication credentials invalid"
        w.send(f"AUTH PLAIN {PLAIN_BAD}\r\n".encode())
        reply = w.reply()
        assert reply == ("421 4.7.0 Too many failed authentication attempts, closing "
                         "connection"), reply
        assert w.closed()
        assert w.pending() == b""  # one 421, nothing after it


def test_failed_auth_is_limited_per_ip(server: LiveServer) -> None:
    attacker, other = "127.0.0.21", "127.0.0.22"
    failures = 0
    while failures < 9:  # three connections, three failures each
        with greeted(server.port("smtps"), source=attacker, tls=True) as w:
            w.ehlo()
            for _ in range(3):
                reply = w.cmd(f"AUTH PLAIN {PLAIN_BAD}")
                failures += 1
                assert reply.startswith("535" if _ < 2 else "421 4.7.0"), reply
            assert w.closed()
    with greeted(server.port("smtps"), source=attacker, tls=True) as w:
        w.ehlo()  # the 10th failure from this address closes at once
        assert w.cmd(f"AUTH PLAIN {PLAIN_BAD}").startswith("421 4.7.0 Too many failed")
        assert w.closed()
    with greeted(server.port("smtps"), source=attacker, tls=True) as w:
        w.ehlo()  # now even the right password is not tried
        assert w.cmd(f"AUTH PLAIN {PLAIN_OK}").startswith("421 4.7.0 Too many failed")
        assert w.closed()
    with greeted(server.port("smtps"), source=other, tls=True) as w:
        w.ehlo()  # another address is not affected
        assert w.cmd(f"AUTH PLAIN {PLAIN_OK}") == "235 2.7.0 Authentication successful"


# --- STARTTLS -------------------------------------------------------------------------


def test_starttls_command_injection_is_discarded(server: LiveServer) -> None:
    """CVE-2011-0411 style: commands pipelined after STARTTLS in the same packet, in
    plaintext, must not run inside the TLS session."""
    with greeted(server.port("mx")) as w:
        w.ehlo()
        w.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<injected@localhost>\r\n")
        assert w.reply() == "220 2.0.0 Ready to start TLS"
        w.starttls()  # asserts nothing else came in plaintext
        # A fresh session: EHLO is needed again, and no MAIL transaction is open.
        assert w.cmd("MAIL FROM:<good@example.org>") == "503 Send EHLO or HELO first"
        assert "STARTTLS" not in w.ehlo()
        assert w.cmd("RCPT TO:<victim@localhost>") == "503 5.5.1 Need MAIL before RCPT"
        assert w.cmd("NOOP") == "250 2.0.0 Ok"
    assert queued(server, "injected@localhost") == 0


def test_starttls_injection_cannot_authenticate(server: LiveServer) -> None:
    with greeted(server.port("submission")) as w:
        w.ehlo()
        w.send(f"STARTTLS\r\nEHLO evil.test\r\nAUTH PLAIN {PLAIN_OK}\r\n".encode())
        assert w.reply() == "220 2.0.0 Ready to start TLS"
        w.starttls()
        w.ehlo()
        assert w.cmd("MAIL FROM:<carol@localhost>") == "530 5.7.0 Authentication required"


def test_first_command_sent_with_the_tls_finished_message_is_answered(
        server: LiveServer) -> None:
    """A TLS 1.3 client may send its first command in the same packet as its Finished
    message (GnuTLS does: msmtp, Exim). That is encrypted data after the handshake, not
    injection: the server must answer it, not drop it and leave the client waiting."""
    with greeted(server.port("mx")) as w:
        w.ehlo()
        assert w.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = unverified_context().wrap_bio(incoming, outgoing)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    w.sock.sendall(outgoing.read())
                data = w.sock.recv(65536)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        assert tls.version() == "TLSv1.3"
        tls.write(b"EHLO early.test\r\n")
        w.sock.sendall(outgoing.read())  # Finished and EHLO together
        answer = b""
        while b"\r\n250 " not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = w.sock.recv(65536)
                assert data, f"the server closed; it said {answer!r}"
                incoming.write(data)
        assert answer.startswith(b"250-localhost Hello early.test\r\n"), answer


# --- SMTP smuggling -------------------------------------------------------------------

DIALOGS = Path(__file__).resolve().parent / "dialogs"
VARIANTS = sorted(p.name.removeprefix("smuggling-").removesuffix("-normalize.dialog")
                  for p in DIALOGS.glob("smuggling-*-normalize.dialog"))


def smuggling_case(variant: str, mode: str, smuggled_rcpt: str
                   ) -> tuple[bytes, list[Expect], bytes | None]:
    """From tests/dialogs/smuggling-VARIANT-MODE.dialog: the chunk the client sends after
    354 (data with a false terminator and a smuggled transaction, the real terminator,
    one more command), the two replies it gets, and the content stored (normalize only).
    The smuggled recipient is made local, so that a smuggled message would be delivered."""
    dialog = load_dialog(DIALOGS / f"smuggling-{variant}-{mode}.dialog")
    steps = list(dialog.steps)
    index = next(i for i, s in enumerate(steps) if isinstance(s, Send) and b"evil@" in s.data)
    send = steps[index]
    assert isinstance(send, Send)
    replies = [s for s in steps[index + 1 : index + 3] if isinstance(s, Expect)]
    assert len(replies) == 2, dialog.name
    stored = next((s.content for s in steps if isinstance(s, ExpectMessage)), None)
    victim = b"victim@example.org"
    assert victim in send.data, dialog.name
    local = smuggled_rcpt.encode()
    return (send.data.replace(victim, local), replies,
            None if stored is None else stored.replace(victim, local))


def test_every_smuggling_variant_is_covered() -> None:
    assert VARIANTS == ["cr-dot-cr", "cr-dot-lf", "crlf-dot-cr", "crlf-dot-lf", "lf-dot-crlf",
                        "lf-dot-lf"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_smuggling_is_one_message_when_normalized(server: LiveServer, variant: str) -> None:
    legit, smuggled = f"smuggle-{variant}@localhost", f"smuggled-{variant}@localhost"
    chunk, replies, stored = smuggling_case(variant, "normalize", smuggled)
    assert stored is not None
    with greeted(server.port("mx")) as w:
        w.ehlo()
        assert w.cmd("MAIL FROM:<sender@example.org>").startswith("250")
        assert w.cmd(f"RCPT TO:<{legit}>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(chunk)  # ends with the real terminator and QUIT
        for expect in replies:
            got = w.line()
            assert expect.matches(got), (str(expect), got)
        assert w.closed()
        assert w.pending() == b""  # no reply to any smuggled command
    (file,) = wait_for_files(mailbox(server, legit), 1)
    content = parse_delivered(file.read_bytes()).content
    assert content == stored  # the smuggled transaction is content of the one message
    assert queued(server, legit) == 1
    assert queued(server, smuggled) == 0
    assert not mailbox(server, smuggled).parent.exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_smuggling_is_refused_when_rejecting(rejecting: LiveServer, variant: str) -> None:
    legit, smuggled = f"smuggle-{variant}@localhost", f"smuggled-{variant}@localhost"
    sentinel = f"after-{variant}@localhost"
    chunk, replies, _ = smuggling_case(variant, "reject", smuggled)
    with greeted(rejecting.port("mx")) as w:
        w.ehlo()
        assert w.cmd("MAIL FROM:<sender@example.org>").startswith("250")
        assert w.cmd(f"RCPT TO:<{legit}>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(chunk)  # ends with the real terminator and NOOP
        first = w.line()
        assert first == ("554 5.6.0 Message contains a bare CR or LF; lines must end "
                         "with <CR><LF>"), first
        assert replies[0].matches(first)
        assert replies[1].matches(w.line())  # NOOP's 250: in step, nothing smuggled ran
        # The session goes on; a proper message afterwards is taken.
        assert w.cmd("MAIL FROM:<sender@example.org>").startswith("250")
        assert w.cmd(f"RCPT TO:<{sentinel}>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(MESSAGE + b".\r\n")
        assert w.reply().startswith("250 2.0.0 Ok: queued as ")
    wait_for_files(mailbox(rejecting, sentinel), 1)
    assert queued(rejecting, legit) == 0
    assert queued(rejecting, smuggled) == 0
    assert not mailbox(rejecting, legit).parent.exists()
    assert not mailbox(rejecting, smuggled).parent.exists()


# --- slow clients, floods, timeouts, errors -------------------------------------------


def send_one(port: int, rcpt: str, source: str = "127.0.0.1") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as c:
        c.ehlo("other.test")
        c.mail("someone@example.org")
        assert c.rcpt(rcpt)[0] == 250
        code, text = c.data(MESSAGE)
    assert code == 250, text
    return text.decode()


def test_slow_client_does_not_stop_others(server: LiveServer) -> None:
    dribbled = threading.Event()
    go = threading.Event()
    with greeted(server.port("mx"), source="127.0.0.30") as slow:

        def dribble() -> None:
            for i, byte in enumerate(b"EHL"):
                slow.send(bytes([byte]))
                if i == 0:
                    go.set()
                if dribbled.wait(1.0):  # one byte a second (set early only on failure)
                    return
            dribbled.set()

        thread = threading.Thread(target=dribble)
        thread.start()
        try:
            assert go.wait(5)
            # While the slow client is mid-command, another one sends a whole message.
            send_one(server.port("mx"), "not-slowed@localhost")
            assert not dribbled.is_set(), "the other client had to wait for the slow one"
        finally:
            thread.join(10)
            dribbled.set()
        slow.send(b"O slow.test\r\n")
        assert slow.reply().startswith("250-localhost Hello slow.test")
    wait_for_files(mailbox(server, "not-slowed@localhost"), 1)


def test_connection_flood_is_bounded_per_ip(server: LiveServer) -> None:
    flooder = "127.0.0.40"
    limit = server.config.limits.connections_per_ip
    with ExitStack() as stack:
        socks = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port("mx")), timeout=10,
                                         source_address=(flooder, 0))
            stack.callback(s.close)
            socks.append(s)
        greetings = [Wire.from_socket(s).line() for s in socks]
        accepted = [g for g in greetings if g.startswith("220 ")]
        refused = [g for g in greetings if not g.startswith("220 ")]
        assert len(accepted) == limit
        assert len(refused) == 300 - limit
        for line in set(refused):
            assert re.fullmatch(r"421 (4\.7\.0 )?Too many connections from your address",
                                line), line
        # Another client is served at once while the 50 flood connections sit idle.
        send_one(server.port("mx"), "during-flood@localhost", source="127.0.0.41")
        with Wire(server.port("mx"), source=flooder) as w:
            assert w.line().startswith("421")
            assert w.closed()
    wait_for_files(mailbox(server, "during-flood@localhost"), 1)

    # Once the flood is gone, the address is welcome again.
    def welcome() -> bool:
        with Wire(server.port("mx"), source=flooder) as w:
            return w.line().startswith("220 ")

    wait_until("the flooding address to be served again", welcome)


def test_total_connection_limit(tmp_path: Path) -> None:
    config = loopback_config(tmp_path / "data")
    config = dataclasses.replace(config, limits=dataclasses.replace(
        config.limits, connections=5, connections_per_ip=5))
    with start(config) as srv, ExitStack() as stack:
        for i in range(5):
            stack.enter_context(greeted(srv.port("mx"), source=f"127.0.0.{50 + i}"))
        with Wire(srv.port("mx"), source="127.0.0.60") as w:
            assert re.fullmatch(r"421 (4\.7\.0 )?Too many connections, try again later",
                                w.line())
            assert w.closed()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("timeouts") / "data"
    config = dataclasses.replace(loopback_config(data),
                                 timeouts=Timeouts(command=0.5, data_block=0.5))
    with start(config) as srv:
        yield srv


def test_idle_client_is_timed_out(impatient: LiveServer) -> None:
    with greeted(impatient.port("mx")) as w:
        w.ehlo()
        assert w.reply(timeout=10) == "421 4.4.2 Timeout exceeded, closing connection"
        assert w.closed()


def test_idle_client_in_data_is_timed_out_and_nothing_is_queued(
        impatient: LiveServer) -> None:
    with greeted(impatient.port("mx")) as w:
        w.ehlo()
        assert w.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert w.cmd("RCPT TO:<half-sent@localhost>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(b"Subject: never finished\r\n\r\nhalf a message\r\n")
        assert w.reply(timeout=10) == "421 4.4.2 Timeout exceeded, closing connection"
        assert w.closed()
    assert queued(impatient, "half-sent@localhost") == 0


def test_active_client_is_not_timed_out(impatient: LiveServer) -> None:
    with greeted(impatient.port("mx")) as w:
        w.ehlo()
        for _ in range(12):  # 1.2 s of NOOPs, 0.1 s apart: longer than the timeout
            assert w.cmd("NOOP") == "250 2.0.0 Ok"
            assert w.pending(0.1) == b""
        assert w.cmd("QUIT") == "221 2.0.0 Bye"


def test_too_many_errors_close_the_connection(server: LiveServer) -> None:
    with greeted(server.port("mx")) as w:
        w.ehlo()
        for _ in range(19):
            assert w.cmd("FOO") == "500 5.5.1 Command unrecognized"
        w.send(b"BAR\r\nNOOP\r\n")  # the 20th error; the pipelined NOOP is not run
        assert w.reply() == "500 5.5.1 Command unrecognized"
        assert w.reply() == "421 4.7.0 Too many errors, closing connection"
        assert w.closed()
        assert w.pending() == b""
