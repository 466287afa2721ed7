"""`mailgate check` and `mailgate probe` against a real DNS server and real SMTP servers.

DNS is tests/support/dnsserver.py's ROUTING_ZONE on 127.0.0.1 (mx1.test is 127.0.0.2, mx2.test
is 127.0.0.3); the receiving MTAs are aiosmtpd servers on those addresses. An MX host's
port is the probe's `port`, so each server listens on a port where the other address has
nothing: "mx1 is down" is literally nothing listening there.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner

from mailgate.cli import main
from mailgate.config import parse_config
from mailgate.delivery.check import EX_TEMPFAIL, CheckReport, check
from mailgate.delivery.probe import ProbeReport, Target, parse_target, probe
from mailgate.dns import Resolver
from mailgate.server.tls import ensure_self_signed, server_context
from tests.support.tlscerts import TestCA
from tests.support.tlscerts import server_context as ca_server_context

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver"]

MX1, MX2 = "127.0.0.2", "127.0.0.3"


# --- receiving servers ------------------------------------------------------------------


@dataclass
class Handler:
    """Accepts every recipient but `bad*` (550 5.1.1); remembers what it was told."""

    commands: list[str] = field(default_factory=list)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.commands.append(f"EHLO {hostname}")
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.commands.append(f"MAIL {address}")
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.commands.append(f"RCPT {address}")
        if address.startswith("bad"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")  # a probe must never get here
        return "250 2.0.0 queued"


class CountingController(Controller):
    """An aiosmtpd server that counts the connections it is handed."""

    connections = 0

    def factory(self) -> SMTP:
        self.connections += 1
        server: SMTP = super().factory()  # type: ignore[no-untyped-call]
        return server


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of `hosts` (the MX "machines" share the probe's port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port: int = s.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as t:
                    t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass
class MTA:
    host: str
    port: int
    handler: Handler
    controller: CountingController

    @property
    def connections(self) -> int:
        return self.controller.connections


def start_mta(host: str, port: int, **options: Any) -> MTA:
    handler = Handler()
    ctl = CountingController(handler, hostname=host, port=port,
                             server_hostname=f"mta-{host}", **options)
    ctl.start()
    ctl.connections = 0  # start() makes one connection of its own
    return MTA(host, port, handler, ctl)


@pytest.fixture(scope="module")
def mx2_only() -> Iterator[MTA]:
    """An MTA on mx2.test (127.0.0.3); on the same port mx1.test has nothing listening."""
    mta = start_mta(MX2, free_port(MX2, MX1))
    yield mta
    mta.controller.stop()


@pytest.fixture(scope="module")
def mx1_mta() -> Iterator[MTA]:
    """An MTA on mx1.test (127.0.0.2)."""
    mta = start_mta(MX1, free_port(MX1))
    yield mta
    mta.controller.stop()


@pytest.fixture(scope="module")
def tls_mta(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MTA]:
    """An MTA on mx1.test offering STARTTLS with a self-signed certificate."""
    cert, key = ensure_self_signed(tmp_path_factory.mktemp("tls"), "mx1.test")
    mta = start_mta(MX1, free_port(MX1), tls_context=server_context(cert, key))
    yield mta
    mta.controller.stop()


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.nameserver], timeout=3.0)


# --- check --------------------------------------------------------------------------------


def do_check(resolver: Resolver, domain: str, config: Any = None) -> CheckReport:
    report: CheckReport = asyncio.run(check(domain, resolver, config))
    return report


@pytest.mark.parametrize("domain", ["null.test", "mixed.test", "alias-null.test"])
def test_check_null_mx(resolver: Resolver, domain: str) -> None:
    report = do_check(resolver, domain)
    assert report.result == "null_mx" and report.exit_status == 1
    data = report.to_json()
    assert data["route"]["kind"] == "null_mx"
    assert data["route"]["reply"] == {"code": 556, "enhanced": "5.1.10",
                                      "lines": [f"Recipient address has null MX: {domain}"]}
    assert [p["code"] for p in data["route"]["explanation"]] == ["556", "5.1.10"]
    text = report.render()
    assert "RFC 7505" in text and "accepts no mail" in text
    assert "never connects" in text and "556 5.1.10" in text
    assert "Recipient Address Has Null MX" in text  # from the knowledge base


def test_check_mx_list_with_two_preferences(resolver: Resolver) -> None:
    report = do_check(resolver, "pref.test")
    assert report.result == "deliverable" and report.exit_status == 0
    hosts = report.to_json()["route"]["hosts"]
    assert hosts == [
        {"name": "mx1.test", "preference": 10, "addresses": [MX1]},
        {"name": "mx2.test", "preference": 20, "addresses": [MX2]},
    ]
    text = report.render()
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "mx1.test" in line)
    assert "10" in lines[first] and MX1 in lines[first]
    assert "20" in lines[first + 1] and "mx2.test" in lines[first + 1]
    assert "Verdict: deliverable" in text


def test_check_implicit_mx(resolver: Resolver) -> None:
    report = do_check(resolver, "implicit.test")
    assert report.result == "deliverable" and report.exit_status == 0
    data = report.to_json()
    assert data["route"]["kind"] == "implicit_mx"
    assert data["route"]["hosts"] == [{"name": "implicit.test", "preference": 0,
                                       "addresses": [MX1]}]
    assert "implicit MX" in report.render()


def test_check_nxdomain(resolver: Resolver) -> None:
    report = do_check(resolver, "no-such-domain.test")
    assert report.result == "perm_fail" and report.exit_status == 1
    data = report.to_json()
    assert data["route"]["reply"]["code"] == 550
    assert data["route"]["reply"]["enhanced"] == "5.1.2"
    assert "NXDOMAIN" in data["route"]["reason"]
    text = report.render()
    assert "bounces with 550 5.1.2" in text and "Bad Destination System Address" in text


def test_check_servfail(resolver: Resolver) -> None:
    report = do_check(resolver, "servfail.test")
    assert report.result == "temp_fail" and report.exit_status == EX_TEMPFAIL
    data = report.to_json()
    assert "SERVFAIL" in data["route"]["reason"]
    assert data["route"]["reply"]["enhanced"] == "4.4.3"
    assert "Directory Server Failure" in report.render()
    assert "deferred and retried" in report.render()


def test_check_timeout(dns_server: DNSServer) -> None:
    report = do_check(Resolver([dns_server.nameserver], timeout=0.3), "timeout.test")
    assert report.result == "temp_fail" and report.exit_status == EX_TEMPFAIL
    assert "no DNS answer" in report.to_json()["route"]["reason"]


def test_check_with_config_local_route_and_relayhost(resolver: Resolver) -> None:
    config = parse_config(
        '[domains]\nlocal = ["here.test"]\n'
        '[routes]\n"null.test" = "smtp:[127.0.0.2]:2526"\n"pref.test" = "smtp:mx2.test:2527"\n',
        "test.toml",
    )
    local = do_check(resolver, "here.test", config)
    assert local.local and local.result == "local" and local.exit_status == 0
    assert "local domain" in local.render()
    # A [routes] entry overrides DNS, even a null MX: the next hop decides.
    routed = do_check(resolver, "null.test", config)
    assert routed.result == "deliverable" and routed.exit_status == 0
    data = routed.to_json()
    assert data["nexthop"]["via"] == "route"
    assert data["nexthop"]["nexthop"] == "smtp:[127.0.0.2]:2526"
    assert data["nexthop"]["route"]["kind"] == "host"
    assert data["route"]["kind"] == "null_mx"  # what DNS says, shown for reference
    assert "[routes] sends mail for null.test" in routed.render()
    # A bare host name in [routes] is resolved like a mail domain.
    pref = do_check(resolver, "pref.test", config)
    assert pref.to_json()["nexthop"]["route"]["hosts"][0]["addresses"] == [MX2]
    relay = parse_config('[delivery]\nrelayhost = "[127.0.0.3]:2588"\n', "relay.toml")
    via = do_check(resolver, "servfail.test", relay)
    assert via.result == "deliverable" and via.to_json()["nexthop"]["via"] == "relayhost"


def test_check_with_config_names_the_tls_level(resolver: Resolver) -> None:
    config = parse_config('[tls_policy]\n"pref.test" = "verify"\n', "test.toml")
    strict = do_check(resolver, "pref.test", config)
    assert strict.to_json()["tls_level"] == "verify"
    assert "outbound TLS level verify" in strict.render()
    assert "外发 TLS 级别 verify" in strict.render("text", "zh")
    default = do_check(resolver, "one.test", config)
    assert default.to_json()["tls_level"] == "may"
    assert do_check(resolver, "one.test").to_json()["tls_level"] is None  # no config


def test_check_chinese_headings(resolver: Resolver) -> None:
    text = do_check(resolver, "null.test").render("text", "zh")
    for heading in ("域名：", "路由：", "含义：", "投递：", "代码说明：", "结论："):
        assert heading in text
    assert "收件域名声明 null MX" in text  # the knowledge base, in Chinese
    data = do_check(resolver, "null.test").to_json("zh")
    assert data["lang"] == "zh" and "不接收任何邮件" in data["verdict"]["text"]


def test_check_bad_domain(resolver: Resolver) -> None:
    for bad in ("exa mple.test", "a..b", "", "user@example.test", "[300.1.1.1]"):
        with pytest.raises(ValueError):
            do_check(resolver, bad)


# --- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("example.test", Target("domain", "example.test", 25)),
        ("mx1.test:2525", Target("host", "mx1.test", 2525)),
        ("[mx1.test]", Target("host", "mx1.test", 25)),
        ("127.0.0.2", Target("host", "127.0.0.2", 25)),
        ("127.0.0.2:2525", Target("host", "127.0.0.2", 2525)),
        ("[127.0.0.2]:2525", Target("host", "127.0.0.2", 2525)),
        ("[::1]:2525", Target("host", "::1", 2525)),
        ("[IPv6:::1]:2525", Target("host", "::1", 2525)),
        ("::1", Target("host", "::1", 25)),
        ("bücher.test", Target("domain", "bücher.test", 25)),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("bad", ["", "a b", "x.test:", "x.test:0", "x.test:99999", "[x.test",
                                 "[::1]2525", "::1:99:x", "a@b.test"])
def test_parse_target_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_target(bad)


# --- probe ----------------------------------------------------------------------------------


def do_probe(resolver: Resolver, target: str, **kw: Any) -> ProbeReport:
    kw.setdefault("helo", "probe.test")
    kw.setdefault("timeout", 2.0)
    report: ProbeReport = asyncio.run(probe(target, resolver=resolver, **kw))
    return report


@pytest.mark.parametrize("domain", ["null.test", "mixed.test"])
def test_probe_null_mx_connects_nowhere(resolver: Resolver, mx1_mta: MTA, domain: str) -> None:
    # mixed.test also lists mx1.test, where a server listens on this very port.
    report = do_probe(resolver, domain, port=mx1_mta.port, rcpt=f"user@{domain}")
    assert report.result == "null_mx" and report.exit_status == 1
    assert report.attempts == []
    assert mx1_mta.connections == 0 and mx1_mta.handler.commands == []
    assert f"null MX: {domain} accepts no mail — not connected" in report.render()
    data = report.to_json()
    assert data["verdict"]["reply"]["code"] == 556 and data["attempts"] == []


def test_probe_first_mx_down_second_accepts(resolver: Resolver, mx2_only: MTA) -> None:
    before = len(mx2_only.handler.commands)
    report = do_probe(resolver, "pref.test", port=mx2_only.port, mail_from="a@sender.test",
                      rcpt="good@pref.test")
    assert report.result == "accepted" and report.exit_status == 0
    first, second = report.attempts
    assert (first.host, first.address, first.connected) == ("mx1.test", MX1, False)
    assert first.error  # e.g. "Connection refused"
    assert (second.host, second.address, second.established) == ("mx2.test", MX2, True)
    sent = [x.sent for x in second.transcript]
    assert sent == [None, "EHLO probe.test", "MAIL FROM:<a@sender.test>",
                    "RCPT TO:<good@pref.test>", "RSET", "QUIT"]
    codes = [x.reply.code for x in second.transcript if x.reply is not None]
    assert codes == [220, 250, 250, 250, 250, 221]
    assert mx2_only.handler.commands[before:] == [
        "EHLO probe.test", "MAIL a@sender.test", "RCPT good@pref.test", "RSET",
    ]  # and never DATA
    text = report.render()
    assert "cannot connect" in text
    assert "accepted: mx2.test [127.0.0.3]" in text and "accepts mail for <good@pref.test>" in text
    assert "Destination Address Valid" in text  # 2.1.5 explained


def test_probe_refused_rcpt(resolver: Resolver, mx2_only: MTA) -> None:
    report = do_probe(resolver, f"{MX2}:{mx2_only.port}", rcpt="bad@pref.test")
    assert report.result == "refused" and report.exit_status == 1
    assert report.stage == "rcpt"
    assert report.reply is not None and (report.reply.code, report.reply.enhanced) == (550, "5.1.1")
    (attempt,) = report.attempts
    assert attempt.transcript[2].sent == "MAIL FROM:<>"  # --rcpt alone: the null sender
    text = report.render()
    assert "refuses <bad@pref.test>: 550 5.1.1 No such user here" in text
    assert "Bad Destination Mailbox Address" in text
    assert "DATA" not in mx2_only.handler.commands


def test_probe_without_rcpt_is_ready(resolver: Resolver, mx2_only: MTA) -> None:
    report = do_probe(resolver, f"[{MX2}]:{mx2_only.port}")
    assert report.result == "ready" and report.exit_status == 0
    assert [x.sent for x in report.attempts[0].transcript] == [None, "EHLO probe.test", "QUIT"]


def test_probe_starttls(resolver: Resolver, tls_mta: MTA) -> None:
    report = do_probe(resolver, "one.test", port=tls_mta.port, rcpt="good@one.test")
    assert report.result == "accepted"
    (attempt,) = report.attempts
    assert attempt.tls is not None and attempt.tls.version.startswith("TLSv1.")
    assert attempt.tls.cipher and attempt.tls.bits
    sent = [x.sent for x in attempt.transcript]
    assert sent[:4] == [None, "EHLO probe.test", "STARTTLS", None]  # None: the handshake
    assert attempt.transcript[3].note == str(attempt.tls)
    assert sent[4] == "EHLO probe.test"  # RFC 3207: EHLO again over TLS
    assert attempt.capabilities is not None and not attempt.capabilities.starttls
    data = report.to_json()
    assert data["tls"]["version"] == attempt.tls.version
    assert data["tls"]["cipher"] == attempt.tls.cipher
    assert "TLS established" in report.render()
    # --no-starttls: never asked, even when offered.
    plain = do_probe(resolver, "one.test", port=tls_mta.port, starttls="never")
    assert plain.result == "ready" and plain.attempts[0].tls is None
    assert "STARTTLS" not in [x.sent for x in plain.attempts[0].transcript]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


def test_probe_shows_the_certificate_unchecked_by_default(
        resolver: Resolver, ca: TestCA) -> None:
    cert, key = ca.issue("mx1.test", "127.0.0.2")
    mta = start_mta(MX1, free_port(MX1), tls_context=ca_server_context(cert, key))
    try:
        report = do_probe(resolver, "one.test", port=mta.port)
    finally:
        mta.controller.stop()
    tls = report.attempts[0].tls
    assert tls is not None and tls.certificate is not None and not tls.verified
    assert tls.certificate.subject == "CN=mx1.test"
    assert tls.certificate.names == ("mx1.test", "127.0.0.2")
    assert tls.certificate.issuer == "CN=mailgate test CA"
    text = report.render()
    assert "Certificate: CN=mx1.test; names mx1.test, 127.0.0.2; issued by CN=mailgate " \
        "test CA; valid until " in text
    assert "not checked (--verify" in text
    assert "证书：CN=mx1.test" in report.render("text", "zh")
    assert report.to_json()["tls"]["certificate"]["names"] == ["mx1.test", "127.0.0.2"]


def test_probe_verify_passes_a_certificate_from_a_trusted_ca(
        resolver: Resolver, ca: TestCA) -> None:
    cert, key = ca.issue("mx1.test")
    mta = start_mta(MX1, free_port(MX1), tls_context=ca_server_context(cert, key))
    try:
        report = do_probe(resolver, "one.test", port=mta.port, rcpt="good@one.test",
                          verify=True, ca_file=ca.ca_file)
    finally:
        mta.controller.stop()
    assert report.result == "accepted", report.render()
    tls = report.attempts[0].tls
    assert tls is not None and tls.verified
    assert report.to_json()["tls"]["verified"] is True
    assert "verified: it chains to a trusted CA and names mx1.test" in report.render()


@pytest.mark.parametrize(("names", "self_signed", "why"), [
    (("mx9.test",), False, "Hostname mismatch"),
    (("mx1.test",), True, "certificate verify failed"),
])
def test_probe_verify_refuses_a_certificate_that_does_not_check_out(
        resolver: Resolver, ca: TestCA, names: tuple[str, ...], self_signed: bool,
        why: str) -> None:
    cert, key = ca.issue(*names, self_signed=self_signed)
    mta = start_mta(MX1, free_port(MX1), tls_context=ca_server_context(cert, key))
    try:
        report = do_probe(resolver, "one.test", port=mta.port, rcpt="good@one.test",
                          verify=True, ca_file=ca.ca_file)
    finally:
        mta.controller.stop()
    assert report.result == "temporary" and report.exit_status == EX_TEMPFAIL
    assert report.stage == "tls"
    assert report.reply is not None and report.reply.enhanced == "4.7.5"
    assert why in str(report.reply)
    assert not any(c.startswith(("MAIL", "RCPT")) for c in mta.handler.commands)


def test_probe_require_tls_without_starttls_is_temporary(resolver: Resolver,
                                                         mx2_only: MTA) -> None:
    report = do_probe(resolver, f"{MX2}:{mx2_only.port}", starttls="require")
    assert report.result == "temporary" and report.exit_status == EX_TEMPFAIL
    assert report.reply is not None and report.reply.enhanced == "4.7.4"
    local = [x for x in report.attempts[0].transcript if not x.remote]
    assert local and local[0].reply is not None and local[0].reply.enhanced == "4.7.4"
    assert "decided by mailgate" in report.render()


def test_probe_silent_server_times_out(resolver: Resolver) -> None:
    """A host that takes the connection but never greets: a local 451 4.4.2, temporary."""

    async def scenario() -> ProbeReport:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, MX1, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await probe(f"[{MX1}]:{port}", resolver=resolver, helo="probe.test",
                               timeout=0.3)

    report: ProbeReport = asyncio.run(scenario())
    (attempt,) = report.attempts
    assert attempt.connected and not attempt.established
    (greeting,) = attempt.transcript
    assert greeting.stage == "greeting" and not greeting.remote
    assert greeting.reply is not None and greeting.reply.code == 451
    assert report.result == "temporary" and report.exit_status == EX_TEMPFAIL
    assert "Timed out" in report.render()


def test_probe_4xx_greeting_moves_to_the_next_mx(resolver: Resolver, mx2_only: MTA) -> None:
    """RFC 5321 5.1: a 421 at greeting on the first MX host; the second one answers."""

    async def scenario() -> ProbeReport:
        async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"421 4.3.2 Too busy, try another host\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(busy, MX1, mx2_only.port)
        async with server:
            return await probe("pref.test", resolver=resolver, port=mx2_only.port,
                               helo="probe.test", rcpt="good@pref.test", timeout=5.0)

    report: ProbeReport = asyncio.run(scenario())
    first, second = report.attempts
    assert first.connected and not first.established and not first.answered
    assert first.transcript[0].reply is not None and first.transcript[0].reply.code == 421
    assert second.host == "mx2.test" and report.result == "accepted"


def test_probe_no_mx_answers(resolver: Resolver) -> None:
    port = free_port(MX1, MX2)
    report = do_probe(resolver, "pref.test", port=port, rcpt="a@pref.test")
    assert report.result == "no_answer" and report.exit_status == EX_TEMPFAIL
    assert [a.connected for a in report.attempts] == [False, False]
    assert "no MX host answered (2 tried)" in report.render()


def test_probe_dns_failures(resolver: Resolver) -> None:
    temp = do_probe(resolver, "servfail.test", port=2)
    assert temp.result == "dns_temp_fail" and temp.exit_status == EX_TEMPFAIL
    assert temp.attempts == []
    perm = do_probe(resolver, "no-such-domain.test", port=2)
    assert perm.result == "dns_perm_fail" and perm.exit_status == 1
    assert "5.1.2" in perm.render()


def test_probe_bad_input(resolver: Resolver) -> None:
    with pytest.raises(ValueError, match="--from needs --rcpt"):
        do_probe(resolver, "pref.test", mail_from="a@b.test")
    with pytest.raises(ValueError, match="--rcpt"):
        do_probe(resolver, "pref.test", rcpt="not an address")
    with pytest.raises(ValueError, match="--helo"):
        do_probe(resolver, "pref.test", helo="two words")
    with pytest.raises(ValueError):
        do_probe(resolver, "a b")


def test_probe_json_schema(resolver: Resolver, mx2_only: MTA) -> None:
    report = do_probe(resolver, "pref.test", port=mx2_only.port, rcpt="bad@pref.test")
    data = json.loads(report.render("json"))
    assert set(data) == {"target", "lang", "starttls", "mail_from", "rcpt", "route",
                         "attempts", "server", "tls", "capabilities", "verdict",
                         "exit_status"}
    assert data["target"] == {"name": "pref.test", "kind": "domain", "port": mx2_only.port}
    assert set(data["route"]) == {"kind", "domain", "meaning", "delivery", "hosts", "reason",
                                  "reply", "explanation"}
    assert [a["connected"] for a in data["attempts"]] == [False, True]
    assert set(data["attempts"][1]) == {"host", "preference", "address", "port", "connected",
                                        "error", "established", "tls", "capabilities",
                                        "transcript"}
    step = data["attempts"][1]["transcript"][3]
    assert set(step) == {"stage", "sent", "reply", "remote", "note", "explanation"}
    assert step["stage"] == "rcpt" and step["sent"] == "RCPT TO:<bad@pref.test>"
    assert step["reply"] == {"code": 550, "enhanced": "5.1.1", "lines": ["No such user here"]}
    assert [p["code"] for p in step["explanation"]] == ["550", "5.1.1"]
    assert data["server"] == {"host": "mx2.test", "address": MX2, "port": mx2_only.port}
    assert data["capabilities"]["size_limit"] == 33554432
    assert data["verdict"]["result"] == "refused" and data["verdict"]["stage"] == "rcpt"
    assert data["exit_status"] == 1


def test_probe_chinese_headings(resolver: Resolver, mx2_only: MTA) -> None:
    report = do_probe(resolver, "pref.test", port=mx2_only.port, rcpt="good@pref.test")
    text = report.render("text", "zh")
    for heading in ("目标：", "路由：", "连接尝试 1：", "无法连接：", "服务器能力：", "结论："):
        assert heading in text
    assert "接受发给 <good@pref.test> 的邮件" in text
    assert "收件人地址有效" in text  # 2.1.5 from the Chinese knowledge base


# --- the CLI in real processes ------------------------------------------------------------


def cli(*args: str, lang: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    if lang:
        env["LANG"] = lang
    return subprocess.run([sys.executable, "-m", "mailgate.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_cli_check_exit_codes(dns_server: DNSServer) -> None:
    ns = ["--nameserver", dns_server.address, "--timeout", "3"]
    ok = cli("check", "pref.test", *ns)
    assert ok.returncode == 0, ok.stderr
    assert "mx1.test" in ok.stdout and "Verdict: deliverable" in ok.stdout
    null = cli("check", "null.test", *ns, "--format", "json")
    assert null.returncode == 1
    data = json.loads(null.stdout)
    assert data["route"]["kind"] == "null_mx" and data["exit_status"] == 1
    assert cli("check", "servfail.test", *ns).returncode == EX_TEMPFAIL
    zh = cli("check", "no-such-domain.test", *ns, lang="zh_CN.UTF-8")
    assert zh.returncode == 1 and "结论：" in zh.stdout


def test_cli_check_localhost_is_local_without_config(dns_server: DNSServer) -> None:
    """Next to a zero-config `mailgate serve`, `check localhost` must not say "not
    deliverable": the defaults it runs with make localhost a local domain."""
    run = cli("check", "localhost", "--nameserver", dns_server.address, "--timeout", "3",
              "--format", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(run.stdout)
    assert data["local"] is True and data["verdict"]["result"] == "local"


def test_cli_probe_exit_codes(dns_server: DNSServer, mx2_only: MTA) -> None:
    ns = ["--nameserver", dns_server.address, "--port", str(mx2_only.port), "--timeout", "2"]
    ok = cli("probe", "pref.test", *ns, "--rcpt", "good@pref.test", "--helo", "probe.test")
    assert ok.returncode == 0, ok.stderr
    assert "accepts mail for <good@pref.test>" in ok.stdout
    refused = cli("probe", "pref.test", *ns, "--rcpt", "bad@pref.test", "--format", "json",
                  "--lang", "zh")
    assert refused.returncode == 1
    data = json.loads(refused.stdout)
    assert data["verdict"]["result"] == "refused" and data["lang"] == "zh"
    null = cli("probe", "null.test", *ns)
    assert null.returncode == 1 and "not connected" in null.stdout
    assert cli("probe", "servfail.test", *ns).returncode == EX_TEMPFAIL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "exa mple.test"], "not a valid domain name"),
        (["check", "x.test", "--nameserver", "ns.example:53"], "--nameserver"),
        (["check", "x.test", "--timeout", "soon"], "--timeout"),
        (["probe", "x.test", "--port", "0"], "--port"),
        (["probe", "x.test", "--from", "a@b.test"], "--from needs --rcpt"),
        (["probe", "x.test:99999"], "port"),
        (["probe", "x.test", "--rcpt", "nobody"], "--rcpt"),
        (["probe", "x.test", "--timeout", "-1"], "--timeout"),
        (["probe", "x.test", "--ca-file", "ca.pem"], "--ca-file is what --verify trusts"),
        (["probe", "x.test", "--verify", "--no-starttls"], "cannot go with --no-starttls"),
        (["probe", "x.test", "--verify", "--ca-file", "/nonexistent/ca.pem"],
         "--ca-file /nonexistent/ca.pem: not a PEM file"),
    ],
)
def test_cli_bad_input_one_line_exit_2(args: list[str], message: str) -> None:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailgate: ") and message in lines[0]


def test_cli_bad_input_in_a_real_process() -> None:
    p = cli("probe", "pref.test", "--from", "a@b.test")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "mailgate: --from needs --rcpt: the probe sends MAIL FROM only with a " \
        "RCPT TO.\n"
