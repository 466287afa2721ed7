"""Inbound authentication against the live server: SPF, DKIM, DMARC, ARC (issue 15).

The tests' DNS server on loopback publishes the records; mailgate's `[dns]
nameservers` points at it, so every lookup the checks make is answered there (and
counted). Messages are signed here with dkimpy and keys made for the test. The client
connects from 127.0.0.1, which `[relay] networks` leaves out, so it is a stranger and
the checks apply. What mailgate wrote is read back from the Maildir and parsed with
`authres`, an independent parser of RFC 8601.
"""

from __future__ import annotations

import base64
import dataclasses
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailgate import metrics
from mailgate.config import (
    Aliases,
    AuthChecks,
    Config,
    ConfigError,
    DNSConfig,
    Domains,
    Relay,
    Route,
    parse_config,
)
from mailgate.config.aliases import DEFAULT_ALIASES
from mailgate.config.dkim import load_key
from tests.support.live import LiveServer, live_config
from tests.support.needs import need_tool

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.live", "tests.support.dnsserver"]

HOST = "mx.example.net"
ALL_ON = AuthChecks()


@dataclasses.dataclass(frozen=True)
class Key:
    private: bytes  # PEM, as dkimpy signs with it
    record: str  # the TXT record's text

    @classmethod
    def rsa(cls) -> Key:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())

    @classmethod
    def ed25519(cls) -> Key:
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return cls(base64.b64encode(raw), "v=DKIM1; k=ed25519; p=" +
                   base64.b64encode(pub).decode())

    def zone(self, name: str) -> str:
        """`name TXT "..." "..."`: strings of at most 255 characters (RFC 1035)."""
        parts = [self.record[i:i + 255] for i in range(0, len(self.record), 255)]
        return f"{name} TXT " + " ".join(f'"{p}"' for p in parts)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"good": Key.rsa(), "ed": Key.ed25519(), "fwd": Key.rsa(), "other": Key.rsa(),
            "seal": Key.rsa(), "signer": Key.rsa()}


def zone(keys: dict[str, Key]) -> str:
    includes = " ".join(f"include:i{n}.limit.test" for n in range(11))
    return "\n".join([
        "test. SOA ns.test. hostmaster.test. 1 3600 600 86400 60",
        # good.test: SPF lets loopback send; DKIM keys (RSA and Ed25519); p=reject
        'good.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        keys["good"].zone("sel._domainkey.good.test."),
        keys["ed"].zone("ed._domainkey.good.test."),
        'good.test. TXT "some other text"',
        '_dmarc.good.test. TXT "v=DMARC1; p=reject"',
        # strict.test: p=reject, and loopback is no sender of its mail
        'strict.test. TXT "v=spf1 ip4:192.0.2.1 -all"',
        '_dmarc.strict.test. TXT "v=DMARC1; p=reject; rua=mailto:d@strict.test"',
        # a subdomain found through its organizational domain's record, sp= applies
        'sub.strict.test. TXT "v=spf1 -all"',
        # quar.test: p=quarantine
        'quar.test. TXT "v=spf1 -all"',
        '_dmarc.quar.test. TXT "v=DMARC1; p=quarantine"',
        # nopolicy.test: SPF softfail, p=none
        'nopolicy.test. TXT "v=spf1 ~all"',
        '_dmarc.nopolicy.test. TXT "v=DMARC1; p=none"',
        # two DMARC records: no policy at all (RFC 7489 6.6.3)
        'twice.test. TXT "v=spf1 -all"',
        '_dmarc.twice.test. TXT "v=DMARC1; p=reject"',
        '_dmarc.twice.test. TXT "v=DMARC1; p=none"',
        # flaky.test: its DMARC record cannot be looked up (SERVFAIL)
        'flaky.test. TXT "v=spf1 -all"',
        '_dmarc.flaky.test. TXT "v=DMARC1; p=reject"',
        # slow.test: its DMARC record's query is never answered (the resolver times out)
        'slow.test. TXT "v=spf1 -all"',
        '_dmarc.slow.test. TXT "v=DMARC1; p=reject"',
        # spftemp.test: its SPF record cannot be looked up
        'spftemp.test. TXT "v=spf1 -all"',
        # limit.test: 11 includes, over RFC 7208's 10 lookups
        f'limit.test. TXT "v=spf1 {includes} -all"',
        *[f'i{n}.limit.test. TXT "v=spf1 ip4:192.0.2.{n + 1} -all"' for n in range(11)],
        # fwd.test: a forwarder that ARC-seals
        keys["fwd"].zone("arc._domainkey.fwd.test."),
        'fwd.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        keys["other"].zone("sel._domainkey.other.test."),
        # example.net: mailgate's own domain, whose [dkim] key ARC-seals what it forwards
        keys["seal"].zone("arc._domainkey.example.net."),
        # signer.test: its mail is signed by mailgate A (test_what_a_signs_b_verifies)
        keys["signer"].zone("s1._domainkey.signer.test."),
        'signer.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        '_dmarc.signer.test. TXT "v=DMARC1; p=reject"',
        # RFC 8463 Appendix A.2: the keys of its example message
        "brisbane._domainkey.football.example.com. TXT "
        '"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="',
        "test._domainkey.football.example.com. TXT "
        '"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"'
        ' "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"'
        ' "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"'
        ' "Ip3G+2kryOTIKT+l/K4w3QIDAQAB"',
    ])


# RFC 8463 Appendix A.3: a message signed twice, Ed25519 and RSA, by an implementation
# other than dkimpy (the RFC's author's); both signatures must verify.
RFC8463_MESSAGE = """\
DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
"""


@pytest.fixture(scope="module")
def dns(keys: dict[str, Key]) -> Iterator[DNSServer]:
    from tests.support.dnsserver import DNSServer

    with DNSServer(zone(keys), servfail=["_dmarc.flaky.test", "spftemp.test"],
                   drop=["_dmarc.slow.test"]) as server:
        yield server


def checked_config(data_dir: Path, dns: DNSServer, **changes: Any) -> Config:
    """The live server with every check on, loopback a stranger, DNS from the tests."""
    changes.setdefault("auth_checks", ALL_ON)
    return live_config(data_dir, hostname=HOST, relay=Relay(networks=()),
                       dns=DNSConfig((dns.nameserver,)),
                       domains=Domains(local=("example.net",), catch_all=True), **changes)


@pytest.fixture
def server(tmp_path: Path, dns: DNSServer) -> Iterator[LiveServer]:
    with LiveServer(checked_config(tmp_path / "data", dns)) as srv:
        yield srv


def message(sender: str, *, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"{extra}From: Someone <{sender}>\r\nTo: bob@example.net\r\n"
            f"Subject: test\r\nMessage-ID: <{time.monotonic_ns()}@test>\r\n"
            f"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\n{body}").encode()


def signed(msg: bytes, key: Key, domain: str, selector: str,
           algorithm: bytes = b"rsa-sha256") -> bytes:
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key.private,
                    signature_algorithm=algorithm,
                    include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return bytes(sig) + msg


def send(srv: LiveServer, sender: str, msg: bytes,
         rcpt: str = "bob@example.net") -> tuple[int, bytes]:
    """MAIL, RCPT, DATA; the first refusal's (code, text), or DATA's."""
    with smtplib.SMTP("127.0.0.1", srv.port("mx"), timeout=60) as c:
        c.ehlo("client.test")
        code, text = c.mail(sender)
        if code != 250:
            return code, text
        code, text = c.rcpt(rcpt)
        if code != 250:
            return code, text
        return c.data(msg)


def delivered(srv: LiveServer, n: int = 1, timeout: float = 15.0) -> list[bytes]:
    folder = srv.maildir / "example.net" / "bob" / "new"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*")) if folder.exists() else []
        if len(files) >= n:
            return [f.read_bytes() for f in files]
        time.sleep(0.02)
    raise AssertionError(f"expected {n} messages in {folder}")


def header_fields(data: bytes, name: str) -> list[str]:
    """The unfolded values of every `name` field of a stored (LF) message."""
    head = data.split(b"\n\n", 1)[0].decode()
    fields: list[str] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] += " " + line.strip()
        else:
            fields.append(line)
    prefix = name.lower() + ":"
    return [f.split(":", 1)[1].strip() for f in fields if f.lower().startswith(prefix)]


def ours(data: bytes) -> str:
    """The value of our Authentication-Results field (there is exactly one)."""
    values = [v for v in header_fields(data, "Authentication-Results")
              if v.split(";")[0].strip() == HOST]
    assert len(values) == 1, values
    return values[0]


def results(data: bytes) -> dict[str, list[Any]]:
    """Our Authentication-Results field, parsed by authres: method -> results."""
    parsed = authres.AuthenticationResultsHeader.parse_value(ours(data))
    assert parsed.authserv_id == HOST
    out: dict[str, list[Any]] = {}
    for r in parsed.results:
        out.setdefault(r.method, []).append(r)
    return out


def auth_count(method: str, result: str) -> float:
    """mailgate_auth_results_total{method, result}, as /metrics shows it."""
    series = f'mailgate_auth_results_total{{method="{method}",result="{result}"}} '
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(series):
            return float(line[len(series):])
    raise AssertionError(f"no series {series}")


def test_aligned_dkim_and_spf_pass(server: LiveServer, keys: dict[str, Key],
                                   dns: DNSServer) -> None:
    before = {m: auth_count(m, "pass") for m in ("spf", "dkim", "dmarc")}
    msg = signed(message("alice@good.test"), keys["good"], "good.test", "sel")
    code, text = send(server, "alice@good.test", msg)
    assert code == 250, text
    [data] = delivered(server)
    res = results(data)
    assert [r.result for r in res["spf"]] == ["pass"]
    assert [r.result for r in res["dkim"]] == ["pass"]
    assert res["dkim"][0].header_d == "good.test"
    assert [r.result for r in res["dmarc"]] == ["pass"]
    assert [r.result for r in res["arc"]] == ["none"]
    # The verdicts are counted for /metrics.
    assert {m: auth_count(m, "pass") - before[m] for m in before} == {
        "spf": 1, "dkim": 1, "dmarc": 1}
    # Every answer came from the tests' DNS server, through [dns] nameservers.
    assert dns.count("sel._domainkey.good.test", "TXT") >= 1
    assert dns.count("_dmarc.good.test", "TXT") >= 1
    assert dns.count("good.test", "TXT") >= 1


def test_every_signature_is_verified_ed25519_too(server: LiveServer,
                                                  keys: dict[str, Key]) -> None:
    msg = signed(message("alice@good.test"), keys["good"], "good.test", "sel")
    msg = signed(msg, keys["ed"], "good.test", "ed", b"ed25519-sha256")
    # and one whose key is not the one published: it fails, the others pass
    msg = signed(msg, keys["fwd"], "good.test", "sel")
    code, text = send(server, "alice@good.test", msg)
    assert code == 250, text
    [data] = delivered(server)
    dkims = results(data)["dkim"]
    assert sorted(r.result for r in dkims) == ["fail", "pass", "pass"]
    assert {r.header_a for r in dkims if r.result == "pass"} == {"rsa-sha256", "ed25519-sha256"}


def test_a_changed_body_fails_dkim_and_p_reject_refuses_at_end_of_data(
        server: LiveServer, keys: dict[str, Key]) -> None:
    msg = signed(message("alice@strict.test"), keys["good"], "strict.test", "sel")
    msg = msg.replace(b"Hello.", b"Hellooo")
    code, text = send(server, "alice@strict.test", msg)
    assert code == 550
    assert text.startswith(b"5.7.1 Rejected by the DMARC policy of strict.test (p=reject)")
    assert b"publish an SPF record" in text and b"d=strict.test" in text
    assert not (server.maildir / "example.net").exists()


def test_forged_from_of_a_p_reject_domain_is_refused(server: LiveServer,
                                                      keys: dict[str, Key]) -> None:
    # SPF passes for the envelope (other.test... here good.test's loopback) and DKIM for
    # another domain: neither aligns with From: strict.test.
    msg = signed(message("ceo@strict.test"), keys["other"], "other.test", "sel")
    code, text = send(server, "alice@good.test", msg)
    assert code == 550 and text.startswith(b"5.7.1 "), text


def test_a_subdomain_follows_the_organizational_domain_policy(
        server: LiveServer) -> None:
    code, text = send(server, "x@sub.strict.test", message("x@sub.strict.test"))
    assert code == 550 and b"sub.strict.test" in text, text


def test_quarantine_is_accepted_and_marked(server: LiveServer) -> None:
    code, text = send(server, "alice@quar.test", message("alice@quar.test"))
    assert code == 250, text
    [data] = delivered(server)
    res = results(data)
    assert res["spf"][0].result == "fail"
    assert res["dmarc"][0].result == "fail"
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quar.test" in ours(data)
    assert header_fields(data, "X-Mailgate-Quarantine") == [
        "DMARC policy of quar.test (p=quarantine)"]


def test_p_none_and_two_records_only_report(server: LiveServer) -> None:
    assert send(server, "a@nopolicy.test", message("a@nopolicy.test"))[0] == 250
    assert send(server, "a@twice.test", message("a@twice.test"))[0] == 250
    first, second = delivered(server, 2)
    by_sender = {b"nopolicy" in first: first, b"nopolicy" in second: second}
    res = results(by_sender[True])
    assert res["spf"][0].result == "softfail" and res["dmarc"][0].result == "fail"
    res = results(by_sender[False])
    assert res["dmarc"][0].result == "none"


def test_spf_lookup_limit_is_a_permerror(server: LiveServer) -> None:
    assert send(server, "a@limit.test", message("a@limit.test"))[0] == 250
    [data] = delivered(server)
    assert results(data)["spf"][0].result == "permerror"


def test_dmarc_temperror_defers_with_451(server: LiveServer) -> None:
    code, text = send(server, "a@flaky.test", message("a@flaky.test"))
    assert code == 451 and text.startswith(b"4.7.0 "), text


def test_spf_reject_at_mail_from(tmp_path: Path, dns: DNSServer) -> None:
    checks = dataclasses.replace(ALL_ON, spf_reject=True)
    with LiveServer(checked_config(tmp_path / "d", dns, auth_checks=checks)) as srv:
        code, text = send(srv, "a@strict.test", message("a@strict.test"))
        assert code == 550 and text.startswith(b"5.7.23 SPF validation failed: strict.test")
        code, text = send(srv, "a@spftemp.test", message("a@spftemp.test"))
        assert code == 451 and text.startswith(b"4.7.24 "), text
        # softfail is no fail: accepted, marked
        assert send(srv, "a@nopolicy.test", message("a@nopolicy.test"))[0] == 250


def test_spf_fail_is_only_reported_by_default(server: LiveServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("mx")) as c:
        c.ehlo("client.test")
        assert c.mail("a@strict.test")[0] == 250


def test_forged_results_claiming_our_id_are_removed(server: LiveServer,
                                                    keys: dict[str, Key]) -> None:
    forged = (f"Authentication-Results: {HOST};\r\n\tdkim=pass header.d=bank.test\r\n"
              f"Authentication-Results: (comment) {HOST.upper()}; spf=pass\r\n"
              "Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n")
    msg = signed(message("alice@good.test", extra=forged), keys["good"], "good.test", "sel")
    assert send(server, "alice@good.test", msg)[0] == 250
    [data] = delivered(server)
    values = header_fields(data, "Authentication-Results")
    assert len(values) == 2
    assert values[1] == "other.example; spf=pass smtp.mailfrom=x.test"
    assert "bank.test" not in data.decode()
    assert results(data)["dkim"][0].result == "pass"


def arc_sealed(msg: bytes, key: Key, results_text: str) -> bytes:
    """What fwd.test sends on: its own verdict, then an ARC set over it."""
    msg = f"Authentication-Results: fwd.test; {results_text}\r\n".encode() + msg
    seal = dkim.arc_sign(msg, b"arc", b"fwd.test", key.private, b"fwd.test")
    return b"".join(seal) + msg


def test_arc_chain_is_validated(server: LiveServer, keys: dict[str, Key]) -> None:
    # From a p=none domain, so a broken chain is reported, not refused
    original = signed(message("alice@nopolicy.test"), keys["other"], "other.test", "sel")
    sealed = arc_sealed(original, keys["fwd"], "dkim=pass header.d=other.test")
    assert send(server, "list@fwd.test", sealed)[0] == 250
    # the same chain after a change on the way: the seal no longer holds
    broken = sealed.replace(b"Subject: test", b"Subject: [list] test")
    assert send(server, "list@fwd.test", broken)[0] == 250
    first, second = delivered(server, 2)
    arcs = sorted(results(d)["arc"][0].result for d in (first, second))
    assert arcs == ["fail", "pass"]


def test_checks_skip_relay_networks_and_can_be_off(tmp_path: Path, dns: DNSServer) -> None:
    trusted = dataclasses.replace(checked_config(tmp_path / "a", dns),
                                  relay=Relay())  # loopback trusted
    with LiveServer(trusted) as srv:
        assert send(srv, "a@strict.test", message("a@strict.test"))[0] == 250
        [data] = delivered(srv)
        assert header_fields(data, "Authentication-Results") == []
    off = checked_config(tmp_path / "b", dns, auth_checks=AuthChecks(
        spf=False, dkim=False, dmarc=False, arc=False))
    with LiveServer(off) as srv:
        assert send(srv, "a@strict.test", message("a@strict.test"))[0] == 250


def test_dmarc_reject_off_accepts_and_reports(tmp_path: Path, dns: DNSServer) -> None:
    checks = dataclasses.replace(ALL_ON, dmarc_reject=False)
    with LiveServer(checked_config(tmp_path / "d", dns, auth_checks=checks)) as srv:
        assert send(srv, "a@strict.test", message("a@strict.test"))[0] == 250
        [data] = delivered(srv)
        dmarc = results(data)["dmarc"][0]
        assert dmarc.result == "fail" and "(p=reject dis=reject)" in ours(data)


def test_auth_checks_config() -> None:
    config = parse_config("[auth_checks]\nspf_reject = true\narc = false\n", "t.toml")
    assert config.auth_checks == AuthChecks(arc=False, spf_reject=True)
    assert parse_config("", "t.toml").auth_checks == AuthChecks()
    with pytest.raises(ConfigError, match=r"auth_checks\.dmarc_reject"):
        parse_config('[auth_checks]\ndmarc_reject = "yes"\n', "t.toml")



def test_cached_answers_give_the_same_verdict_without_asking_again(
        server: LiveServer, keys: dict[str, Key], dns: DNSServer) -> None:
    # The second message finds every answer in mailgate's cache: it is checked on the
    # event loop without a lookup, and must be judged exactly like the first.
    big = "x" * 78 + "\r\n"
    for body in ("Hello.\r\n", big * 1000):  # small: inline when cached; 80 KiB too
        msg = signed(message("alice@good.test", body=body), keys["good"], "good.test", "sel")
        assert send(server, "alice@good.test", msg)[0] == 250
    before = dns.count()
    for body in ("Hello.\r\n", big * 1000):
        msg = signed(message("alice@good.test", body=body), keys["good"], "good.test", "sel")
        assert send(server, "alice@good.test", msg)[0] == 250
    assert dns.count() == before
    verdicts = [{m: [r.result for r in rs] for m, rs in results(d).items()}
                for d in delivered(server, 4)]
    assert verdicts == [{"spf": ["pass"], "dkim": ["pass"], "dmarc": ["pass"],
                         "arc": ["none"]}] * 4
    # and a forged From of a p=reject domain is refused from the cache alone as well
    assert send(server, "alice@good.test", message("ceo@strict.test"))[0] == 550
    assert send(server, "alice@good.test", message("ceo@strict.test"))[0] == 550


def test_what_a_signs_b_verifies(tmp_path: Path, keys: dict[str, Key], dns: DNSServer
                                 ) -> None:
    """Both halves of issue 15 between two live servers: mailgate A relays a trusted
    client's message and DKIM-signs it with its [dkim."signer.test"] key; mailgate B,
    the MX, finds A's signature valid and aligned, so DMARC passes under p=reject. The
    same message altered after signing (a body byte) is refused by B at end of DATA."""
    key_file = tmp_path / "signer.test.s1.key"
    key_file.write_bytes(keys["signer"].private)
    key = load_key(key_file, "rsa-sha256", "signer.test", "s1")
    b_config = dataclasses.replace(
        checked_config(tmp_path / "b", dns), hostname="mx.remote.test",
        domains=Domains(local=("remote.test",), catch_all=True))
    with LiveServer(b_config) as b:
        a_config = live_config(
            tmp_path / "a", hostname="out.signer.test", dns=DNSConfig((dns.nameserver,)),
            dkim={"signer.test": (key,)},  # loopback is in the default [relay] networks
            routes={"remote.test": Route("remote.test", "127.0.0.1", b.port("mx"), False)})
        with LiveServer(a_config) as a:
            msg = message("alice@signer.test").replace(b"bob@example.net",
                                                       b"carol@remote.test")
            assert send(a, "alice@signer.test", msg, "carol@remote.test")[0] == 250
            folder = b.maildir / "remote.test" / "carol" / "new"
            deadline = time.monotonic() + 30
            while not (list(folder.glob("*")) if folder.exists() else []):
                assert time.monotonic() < deadline, "B did not receive the message"
                time.sleep(0.05)
            [data] = [f.read_bytes() for f in folder.iterdir()]
            # What A signed, one body byte changed and sent on by a stranger whose SPF
            # does not align, fails DMARC at B (B drops the Authentication-Results that
            # claim its own name).
            tampered, tampered_text = send(b, "relay@strict.test",
                                           data.replace(b"\n", b"\r\n") + b"X\r\n",
                                           "carol@remote.test")
    [signature] = header_fields(data, "DKIM-Signature")
    assert "d=signer.test" in signature.replace(" ", "")
    values = [v for v in header_fields(data, "Authentication-Results")
              if v.startswith("mx.remote.test;")]
    assert len(values) == 1, values
    parsed = authres.AuthenticationResultsHeader.parse_value(values[0])
    by_method = {r.method: r for r in parsed.results}
    assert by_method["dkim"].result == "pass" and by_method["dkim"].header_d == "signer.test"
    assert by_method["spf"].result == "pass"
    assert by_method["dmarc"].result == "pass"
    assert tampered == 550 and tampered_text.startswith(b"5.7.1"), tampered_text


def test_forwarding_through_an_alias_keeps_the_arc_chain_valid(
        tmp_path: Path, keys: dict[str, Key], dns: DNSServer) -> None:
    """Issue 15 end to end: mailgate A verifies a stranger's message to an alias whose
    target is on mailgate B, ARC-seals it with its [dkim."example.net"] key and forwards
    it; B, another stranger's server to A, validates the chain A extended."""
    key_file = tmp_path / "example.net.arc.key"
    key_file.write_bytes(keys["seal"].private)
    seal = load_key(key_file, "rsa-sha256", "example.net", "arc")
    b_config = dataclasses.replace(
        checked_config(tmp_path / "b", dns), hostname="mx.remote.test",
        domains=Domains(local=("remote.test",), catch_all=True))
    with LiveServer(b_config) as b:
        a_config = checked_config(
            tmp_path / "a", dns,
            aliases=Aliases({**DEFAULT_ALIASES, "list@example.net": ("carol@remote.test",)}),
            routes={"remote.test": Route("remote.test", "127.0.0.1", b.port("mx"), False)},
            dkim={"example.net": (seal,)})
        with LiveServer(a_config) as a:
            # one message as its author sent it, one already sealed by fwd.test (i=1)
            original = signed(message("alice@good.test"), keys["good"], "good.test", "sel")
            assert send(a, "alice@good.test", original, "list@example.net")[0] == 250
            sealed = arc_sealed(original, keys["fwd"], "dkim=pass header.d=good.test")
            assert send(a, "alice@good.test", sealed, "list@example.net")[0] == 250
            folder = b.maildir / "remote.test" / "carol" / "new"
            deadline = time.monotonic() + 30
            while len(list(folder.glob("*")) if folder.exists() else []) < 2:
                assert time.monotonic() < deadline, "B did not receive both messages"
                time.sleep(0.05)
            received = [f.read_bytes() for f in sorted(folder.iterdir())]
    instances = []
    for data in received:
        values = [v for v in header_fields(data, "Authentication-Results")
                  if v.startswith("mx.remote.test;")]
        assert len(values) == 1
        parsed = authres.AuthenticationResultsHeader.parse_value(values[0])
        by_method = {r.method: r.result for r in parsed.results}
        assert by_method["arc"] == "pass", values
        assert by_method["dkim"] == "pass" and by_method["dmarc"] == "pass"
        seals = header_fields(data, "ARC-Seal")
        ours = [v for v in seals if "d=example.net" in v.replace(" ", "")]
        assert len(ours) == 1
        tags = dict(t.strip().split("=", 1) for t in ours[0].replace(" ", "").split(";")
                    if "=" in t)
        instances.append((tags["i"], tags["cv"]))
        # A's verdict travels in the set it sealed
        aar = [v for v in header_fields(data, "ARC-Authentication-Results")
               if f"i={tags['i']}" in v.replace(" ", "")]
        assert len(aar) == 1 and HOST in aar[0]
    assert sorted(instances) == [("1", "none"), ("2", "pass")]


def test_null_sender_is_checked_by_its_helo_name(server: LiveServer) -> None:
    # RFC 7208 2.4: for MAIL FROM:<> the HELO identity is checked
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=60) as c:
        c.ehlo("good.test")
        assert c.mail("<>")[0] == 250
        assert c.rcpt("bob@example.net")[0] == 250
        assert c.data(message("mailer-daemon@good.test"))[0] == 250
    [data] = delivered(server)
    spf = results(data)["spf"][0]
    assert spf.result == "pass" and spf.smtp_helo == "good.test"


def test_only_the_first_ten_signatures_are_verified(server: LiveServer,
                                                    keys: dict[str, Key]) -> None:
    msg = message("alice@nopolicy.test")
    for _ in range(12):
        msg = signed(msg, keys["other"], "other.test", "sel")
    assert send(server, "a@nopolicy.test", msg)[0] == 250
    [data] = delivered(server)
    assert [r.result for r in results(data)["dkim"]] == ["pass"] * 10
    assert "2 more signatures not checked" in ours(data)


def test_the_rfc_8463_example_verifies(server: LiveServer) -> None:
    msg = RFC8463_MESSAGE.replace("\n", "\r\n").encode()
    assert send(server, "joe@football.example.com", msg)[0] == 250
    [data] = delivered(server)
    dkims = results(data)["dkim"]
    assert [(r.result, r.header_a) for r in dkims] == [
        ("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]
    assert {r.header_d for r in dkims} == {"football.example.com"}


def test_an_unanswered_lookup_defers_and_blocks_nobody(server: LiveServer,
                                                       keys: dict[str, Key]) -> None:
    # The DMARC query of slow.test is never answered: after the resolver's timeout the
    # message gets 451, and meanwhile other clients are served.
    outcome: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: outcome.append(
        send(server, "a@slow.test", message("a@slow.test"))))
    slow.start()
    msg = signed(message("alice@good.test"), keys["good"], "good.test", "sel")
    assert send(server, "alice@good.test", msg)[0] == 250
    slow.join(60)
    [(code, text)] = outcome
    assert code == 451 and text.startswith(b"4.7.0 "), text


def test_large_messages_are_verified_one_at_a_time_from_the_spool_file(
        server: LiveServer, keys: dict[str, Key]) -> None:
    # Over 1 MiB: the spool went to a file, and such checks take turns (memory bound)
    line = "y" * 78 + "\r\n"
    msgs = [signed(message("alice@good.test", body=line * 20000 + f"{i}\r\n"),
                   keys["good"], "good.test", "sel") for i in range(3)]
    outcomes: list[int] = []
    threads = [threading.Thread(target=lambda m=m: outcomes.append(
        send(server, "alice@good.test", m)[0])) for m in msgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert outcomes == [250, 250, 250]
    for data in delivered(server, 3):
        assert [r.result for r in results(data)["dkim"]] == ["pass"]


def test_a_message_signed_by_opendkim(server: LiveServer, tmp_path: Path,
                                      dns: DNSServer) -> None:
    """OpenDKIM's signer (opendkim-testmsg, which signs rsa-sha1) and dkimpy agree on
    the signature; mailgate then refuses to count it, as RFC 8301 3.1 requires."""
    tool = need_tool("opendkim-testmsg", "opendkim-tools")
    key = Key.rsa()
    (tmp_path / "od.key").write_bytes(key.private)
    dns.add(key.zone("od._domainkey.opendkim.test."))
    signed_msg = subprocess.run(
        [tool, "-C", "-d", "opendkim.test", "-s", "od", "-k", str(tmp_path / "od.key")],
        input=message("joe@opendkim.test"), capture_output=True, timeout=60, check=True,
    ).stdout
    assert signed_msg.startswith(b"DKIM-Signature:")
    assert send(server, "joe@opendkim.test", signed_msg)[0] == 250
    [data] = delivered(server)
    [verdict] = results(data)["dkim"]
    assert (verdict.result, verdict.header_d, verdict.header_a) == (
        "policy", "opendkim.test", "rsa-sha1")
    assert "valid rsa-sha1 signature, which RFC 8301 forbids to accept" in ours(data)


def test_the_checks_threads_end_when_the_server_stops(tmp_path: Path, dns: DNSServer) -> None:
    """At a clean shutdown `serve` closes the checks' thread pool, once, after the
    listeners have stopped and the last session has ended: its threads end with the
    server instead of waiting, idle, for the interpreter's exit."""
    from mailgate.server.policy import Policy

    closed: list[bool] = []

    class Watched(Policy):
        def close(self) -> None:
            assert srv.server is not None
            closed.append(srv.server.closing and not srv.server.connections)
            super().close()

    def pool() -> set[threading.Thread]:
        return {t for t in threading.enumerate()
                if t.name.startswith("mailgate-authcheck") and t.is_alive()}

    others = pool()  # earlier servers' in this process
    srv = LiveServer(checked_config(tmp_path / "data", dns), policy=Watched)
    with srv:
        # Nothing cached yet: SPF is asked from one of the pool's threads.
        assert send(srv, "a@good.test", message("a@good.test"))[0] == 250
        ours = pool() - others
        assert ours
    deadline = time.monotonic() + 10
    while ours & pool() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ours & pool(), "the checks' threads outlived the server"
    assert closed == [True]
