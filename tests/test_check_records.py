"""`mailgate check DOMAIN`'s authentication records (delivery/authrecords.py): SPF, DKIM,
DMARC, MTA-STS and TLS-RPT read from the tests' DNS server through mailgate's resolver,
each judged and explained in English and Chinese, with the fix."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailgate.config import parse_config
from mailgate.config.dkim import generate_key, parse_key, public_record, zone_line
from mailgate.delivery.authrecords import AuthReport, check_records
from mailgate.delivery.check import check
from mailgate.dns import Resolver
from tests.test_dkim_config import _rsa512_pem

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver"]


def spki(bits: int) -> str:
    key = (serialization.load_pem_private_key(_rsa512_pem(), None) if bits == 512
           else rsa.generate_private_key(public_exponent=65537, key_size=bits))
    return base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


def txt(name: str, text: str) -> str:
    """A zone line for `text`, split into strings of at most 255 characters."""
    return zone_line(name, text).replace(" IN TXT ", " TXT ")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "s1.key").write_bytes(generate_key("rsa-sha256"))
    (folder / "e1.key").write_bytes(generate_key("ed25519-sha256"))
    (folder / "old.key").write_bytes(generate_key("rsa-sha256"))
    config = parse_config(
        '[[dkim."good.test"]]\nselector = "s1"\nkey_file = "s1.key"\n'
        '[[dkim."good.test"]]\nselector = "e1"\nkey_file = "e1.key"\n'
        'algorithm = "ed25519-sha256"\n'
        '[dkim."mismatch.test"]\nselector = "s1"\nkey_file = "old.key"\n',
        "k.toml", base_dir=folder)
    other = parse_key(generate_key("rsa-sha256"), "rsa-sha256", folder / "x")
    return {"config": config, "folder": folder, "other": public_record(other)}


@pytest.fixture(scope="module")
def zone(keys: dict[str, Any]) -> str:
    s1, e1 = keys["config"].dkim["good.test"]
    many = " ".join(f"include:n{i}.spf.test" for i in range(11))
    lines = [
        "test. SOA ns.test. hostmaster.test. 1 3600 600 86400 60",
        # good.test: everything right, its keys as [dkim] has them
        'good.test. TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.good.test -all"',
        'good.test. TXT "google-site-verification=abc"',  # other TXT records are not SPF
        '_spf.good.test. TXT "v=spf1 ip4:198.51.100.0/24 ~all"',
        '_dmarc.good.test. TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"',
        '_mta-sts.good.test. TXT "v=STSv1; id=20260101T000000"',
        '_smtp._tls.good.test. TXT "v=TLSRPTv1; rua=mailto:tls@good.test"',
        txt(s1.record_name, public_record(s1)),
        txt(e1.record_name, public_record(e1)),
        # bad.test: every mistake check explains
        f'bad.test. TXT "v=spf1 {many} ptr +all"',
        *(f'n{i}.spf.test. TXT "v=spf1 ip4:203.0.113.{i} -all"' for i in range(11)),
        '_dmarc.bad.test. TXT "v=DMARC1; p=none"',
        '_mta-sts.bad.test. TXT "v=STSv1; id="',
        '_smtp._tls.bad.test. TXT "v=TLSRPTv1; rua=ftp://x"',
        txt("weak._domainkey.bad.test", f"v=DKIM1; k=rsa; p={spki(512)}"),
        txt("short._domainkey.bad.test", f"v=DKIM1; k=rsa; t=y; p={spki(1024)}"),
        'revoked._domainkey.bad.test. TXT "v=DKIM1; k=rsa; p="',
        'junk._domainkey.bad.test. TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"',
        # twice.test: two SPF, two DMARC records
        'twice.test. TXT "v=spf1 -all"',
        'twice.test. TXT "v=spf1 mx -all"',
        '_dmarc.twice.test. TXT "v=DMARC1; p=reject"',
        '_dmarc.twice.test. TXT "v=DMARC1; p=none"',
        # void.test: includes of domains that are not there; no all
        'void.test. TXT "v=spf1 include:gone1.test include:gone2.test include:gone3.test"',
        # loop.test: a redirect back to itself through another
        'loop.test. TXT "v=spf1 redirect=loop2.test"',
        'loop2.test. TXT "v=spf1 include:loop.test"',
        # mismatch.test: a key published that is not the configured one
        txt("s1._domainkey.mismatch.test", keys["other"]),
        # sub.good.test has no DMARC record of its own: good.test's applies
        'sub.good.test. A 192.0.2.1',
        # empty.test exists but publishes nothing
        'empty.test. A 192.0.2.2',
        # hostile.test: terminal escapes in its records
        # (dnslib reads \\DDD as octal: \\033 is ESC, \\302\\233 the UTF-8 of CSI)
        'hostile.test. TXT "v=spf1 \\033[2J\\302\\233 -all"',
        '_dmarc.hostile.test. TXT "v=DMARC1; p=\\033]0;owned\\007"',
    ]
    return "\n".join(lines)


@pytest.fixture
def resolver(dns_server_factory: Any, zone: str) -> Iterator[Resolver]:
    server: DNSServer = dns_server_factory(zone, servfail=["_dmarc.servfail.test"])
    yield Resolver([server.nameserver], timeout=3)


def records(resolver: Resolver, domain: str, config: Any = None,
            selectors: tuple[str, ...] = ()) -> AuthReport:
    report: AuthReport = asyncio.run(check_records(domain, resolver, config, selectors))
    return report


def codes(report: AuthReport, kind: str) -> list[tuple[str, str]]:
    return [(f.status, f.code) for f in report.findings if f.kind == kind]


def test_a_domain_with_everything_right(resolver: Resolver, keys: dict[str, Any]) -> None:
    report = records(resolver, "good.test", keys["config"])
    assert codes(report, "spf") == [("ok", "ok")]
    assert report.findings[0].params["count"] == 1  # one include
    # The [dkim] keys of good.test are checked without --selector, and match.
    assert codes(report, "dkim") == [("ok", "matches"), ("ok", "ok"), ("ok", "matches"),
                                     ("ok", "ok")]
    assert codes(report, "dmarc") == [("ok", "p_reject")]
    assert codes(report, "mta_sts") == [("ok", "ok")] and codes(report, "tls_rpt") == [
        ("ok", "ok")]
    text = "\n".join(report.lines("en"))
    assert "SPF [ok] one SPF record; 1 of the 10 DNS lookups allowed; ends in -all" in text
    assert "rsa key of 2048 bits for selector s1" in text
    assert "ed25519 key of 256 bits for selector e1" in text
    assert "is the one in" in text and "fix:" not in text


def test_every_mistake_is_named_with_its_fix(resolver: Resolver) -> None:
    report = records(resolver, "bad.test",
                     selectors=("weak", "short", "revoked", "junk", "absent"))
    assert set(codes(report, "spf")) == {("error", "too_many_lookups"),
                                         ("error", "pass_all"), ("warn", "ptr")}
    over = next(f for f in report.findings if f.code == "too_many_lookups")
    assert over.params["count"] == 12  # 11 includes and ptr
    assert codes(report, "dkim") == [
        ("error", "weak"), ("ok", "ok"), ("warn", "testing"), ("warn", "short"),
        ("warn", "revoked"), ("error", "bad_key"), ("error", "missing")]
    assert set(codes(report, "dmarc")) == {("warn", "p_none"), ("warn", "no_rua")}
    assert codes(report, "mta_sts") == [("error", "syntax")]
    assert codes(report, "tls_rpt") == [("error", "syntax")]
    en = "\n".join(report.lines("en"))
    assert "needs 12 DNS lookups" in en and "more than the 10 RFC 7208 4.6.4 allows" in en
    assert "replace include/a/mx with the ip4:/ip6: ranges" in en
    assert "the RSA key has 512 bits; receivers must not accept keys under 1,024 bits" in en
    assert "p=none: receivers only report" in en and "move to p=quarantine" in en
    assert "+all: every server on the Internet passes SPF" in en
    zh = "\n".join(report.lines("zh"))
    assert "认证记录：" in zh
    assert "需要 12 次 DNS 查询" in zh and "超过 RFC 7208 4.6.4 允许的 10 次" in zh
    assert "RSA 密钥只有 512 位" in zh and "p=none：收件方只发送报告" in zh
    assert "[问题]" in zh and "[警告]" in zh and "修复：" in zh
    for finding in report.findings:  # every warning and problem comes with a fix
        assert (finding.fix("en") is not None) == (finding.status in ("warn", "error"))


def test_multiple_records_void_lookups_loops(resolver: Resolver) -> None:
    twice = records(resolver, "twice.test")
    assert codes(twice, "spf") == [("error", "multiple")]
    assert codes(twice, "dmarc") == [("error", "multiple")]
    assert "2 SPF records at twice.test" in "\n".join(twice.lines())
    void = records(resolver, "void.test")
    assert set(codes(void, "spf")) == {("error", "void_lookups"), ("error", "include_missing"),
                                       ("warn", "no_all")}
    loop = records(resolver, "loop.test")
    assert ("error", "loop") in codes(loop, "spf")


def test_missing_records_and_inherited_dmarc(resolver: Resolver) -> None:
    empty = records(resolver, "empty.test")
    assert codes(empty, "spf") == [("warn", "missing")]
    assert codes(empty, "dkim") == [("info", "no_selector")]
    assert codes(empty, "dmarc") == [("warn", "missing")]
    assert codes(empty, "mta_sts") == [("info", "missing")]
    assert codes(empty, "tls_rpt") == [("info", "missing")]
    text = "\n".join(empty.lines())
    assert 'e.g. "v=spf1 mx -all"' in text
    assert "v=DMARC1; p=none; rua=mailto:dmarc-reports@empty.test" in text
    sub = records(resolver, "sub.good.test")
    assert codes(sub, "dmarc") == [("info", "inherited"), ("ok", "p_reject")]
    assert "the policy of good.test applies" in "\n".join(sub.lines())


def test_a_published_key_that_is_not_the_configured_one(resolver: Resolver,
                                                        keys: dict[str, Any]) -> None:
    report = records(resolver, "mismatch.test", keys["config"])
    assert ("error", "mismatch") in codes(report, "dkim")
    [key] = keys["config"].dkim["mismatch.test"]
    text = "\n".join(report.lines())
    assert f"is not the one in {key.key_file}" in text
    assert zone_line(key.record_name, public_record(key)) in text  # the record to publish
    # A configured key with no record at all: the fix is the record to publish.
    none = records(resolver, "empty.test", parse_config(
        f'[dkim."empty.test"]\nselector = "s1"\nkey_file = "{keys["folder"] / "old.key"}"\n',
        "k.toml"))
    assert codes(none, "dkim") == [("error", "missing_configured")]


def test_dns_failure_is_temporary(resolver: Resolver) -> None:
    report = records(resolver, "servfail.test")
    assert codes(report, "dmarc") == [("temp", "temp")]
    assert "SERVFAIL" in report.findings[-3].params["reason"] or any(
        "SERVFAIL" in f.params.get("reason", "") for f in report.findings)


def test_check_json_and_exit_status_stay_about_routing(resolver: Resolver) -> None:
    report = asyncio.run(check("bad.test", resolver, selectors=("weak",)))
    data = report.to_json("zh")
    kinds = [a["kind"] for a in data["authentication"]]
    assert kinds[0] == "spf" and "dkim" in kinds
    weak = next(a for a in data["authentication"] if a["code"] == "weak")
    assert weak["status"] == "error" and "512" in weak["text"] and weak["fix"]
    assert data["exit_status"] == report.exit_status  # the records do not change it
    with pytest.raises(ValueError, match="is not a selector"):
        asyncio.run(check("bad.test", resolver, selectors=("no good",)))


def test_cli_check_with_selector_in_both_languages(dns_server_factory: Any, zone: str,
                                                   keys: dict[str, Any]) -> None:
    server: DNSServer = dns_server_factory(zone)
    conf = keys["folder"] / "mailgate.toml"
    conf.write_text(f'[dns]\nnameservers = ["{server.address}"]\n'
                    '[dkim."good.test"]\nselector = "s1"\nkey_file = "s1.key"\n')
    env = {**os.environ, "LANG": "C.UTF-8"}
    run = subprocess.run([sys.executable, "-m", "mailgate", "check", "good.test", "--config",
                          str(conf), "--selector", "e1", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    data = json.loads(run.stdout)
    dkim = [(a["name"], a["code"]) for a in data["authentication"] if a["kind"] == "dkim"]
    assert ("s1._domainkey.good.test", "matches") in dkim
    assert ("e1._domainkey.good.test", "ok") in dkim
    zh = subprocess.run([sys.executable, "-m", "mailgate", "check", "bad.test", "--nameserver",
                         server.address, "--selector", "weak"],
                        capture_output=True, text=True, timeout=60,
                        env={**env, "LANG": "zh_CN.UTF-8"}, check=False)
    assert "认证记录：" in zh.stdout and "RSA 密钥只有 512 位" in zh.stdout, zh.stderr
    bad = subprocess.run([sys.executable, "-m", "mailgate", "check", "bad.test",
                          "--nameserver", server.address, "--selector", "a b"],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert bad.returncode == 2 and "is not a selector" in bad.stderr


def test_resolver_txt_joins_the_strings_and_says_what_failed(dns_server_factory: Any) -> None:
    long = "v=DKIM1; k=rsa; p=" + "A" * 400
    server: DNSServer = dns_server_factory(
        "test. SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n"
        + txt("long.test", long) + '\nlong.test. TXT "second"\nbare.test. A 192.0.2.1\n',
        servfail=["broken.test"])
    resolver = Resolver([server.nameserver], timeout=3)
    answer = asyncio.run(resolver.txt("long.test"))
    assert answer.status == "data" and sorted(answer.records) == sorted([long, "second"])
    assert asyncio.run(resolver.txt("bare.test")).status == "nodata"
    assert asyncio.run(resolver.txt("nothing.test")).status == "nxdomain"
    broken = asyncio.run(resolver.txt("broken.test"))
    assert broken.status == "error" and "SERVFAIL" in broken.reason
    assert asyncio.run(resolver.txt("not a name")).status == "nxdomain"
    # Cached like the routing lookups: asked again, no new query.
    before = server.count("long.test", "TXT")
    asyncio.run(resolver.txt("long.test"))
    assert server.count("long.test", "TXT") == before


def test_what_dns_says_reaches_the_terminal_escaped(resolver: Resolver) -> None:
    report = asyncio.run(check("hostile.test", resolver))
    text = report.render("text")
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text
    assert "\\x1b[2J" in text and "\\x9b" in text
    as_json = report.render("json")
    assert "\x9b" not in as_json and "\\u009b" in as_json
    assert json.loads(as_json)["authentication"][0]["record"].startswith("v=spf1 \x1b[2J")


def test_a_subdomain_s_dmarc_is_looked_up_at_its_organizational_domain_only(
        dns_server_factory: Any) -> None:
    """RFC 7489 6.6.3: without a record of its own, the one at `_dmarc.` + the
    organizational domain (by the public suffix list) applies, and no other: not a
    nearer parent's (receivers do not ask it), not a public suffix's (co.uk's record is
    nobody's policy). Every DMARC query the DNS server received is checked."""
    server: DNSServer = dns_server_factory("\n".join([
        "uk. SOA ns.uk. hostmaster.uk. 1 3600 600 86400 60",
        '_dmarc.example.co.uk. TXT "v=DMARC1; p=reject; rua=mailto:d@example.co.uk"',
        '_dmarc.b.example.co.uk. TXT "v=DMARC1; p=none"',  # a parent, not the org domain
        '_dmarc.co.uk. TXT "v=DMARC1; p=quarantine"',  # a public suffix
        "x.nobody.co.uk. A 192.0.2.3",
    ]), servfail=["_dmarc.flaky.co.uk"])
    resolver = Resolver([server.nameserver], timeout=3)

    def asked() -> set[str]:
        return {q.name for q in server.queries if q.name.startswith("_dmarc.")}

    sub = records(resolver, "a.b.example.co.uk")
    assert codes(sub, "dmarc") == [("info", "inherited"), ("ok", "p_reject")]
    assert "the policy of example.co.uk applies" in "\n".join(sub.lines())
    assert asked() == {"_dmarc.a.b.example.co.uk", "_dmarc.example.co.uk"}
    server.reset_counts()
    orphan = records(resolver, "x.nobody.co.uk")
    assert codes(orphan, "dmarc") == [("warn", "missing")]
    assert asked() == {"_dmarc.x.nobody.co.uk", "_dmarc.nobody.co.uk"}
    # The organizational domain's record cannot be read: temporary, not "missing".
    assert codes(records(resolver, "www.flaky.co.uk"), "dmarc") == [("temp", "temp")]
    server.reset_counts()
    run = subprocess.run([sys.executable, "-m", "mailgate", "check", "a.b.example.co.uk",
                          "--nameserver", server.address],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LANG": "C.UTF-8"}, check=False)
    assert "the policy of example.co.uk applies" in run.stdout, run.stdout + run.stderr
    assert "_dmarc.b.example.co.uk" not in asked() and "_dmarc.co.uk" not in asked()
