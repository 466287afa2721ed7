"""The inbound checks on hostile input: whatever a stranger sends, a verdict, no crash.

The checks parse what strangers wrote: header sections, DKIM-Signature and ARC fields,
From addresses, DNS records. Each function below is fed arbitrary input (hypothesis)
and must answer with a result, never raise: an exception would turn the end of DATA
into a `451` for every retry of that message. DNS is a cache-only bridge over an empty
cache, so every lookup misses at once, as fast as a broken domain can make it.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.dns import Resolver
from mailgate.server.authcheck.dkimcheck import check_arc, check_dkim
from mailgate.server.authcheck.dmarc import _tags, from_domains, organizational_domain
from mailgate.server.authcheck.lookup import DNSBridge
from mailgate.server.authcheck.results import ResultsFilter, authserv_id_of

FIELDS = st.sampled_from([
    b"From", b"from", b"DKIM-Signature", b"ARC-Seal", b"ARC-Message-Signature",
    b"ARC-Authentication-Results", b"Authentication-Results", b"Subject", b"To"])
VALUES = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([
        b" v=1; a=rsa-sha256; d=x.test; s=s; h=from; bh=; b=",
        b" v=1; a=ed25519-sha256; d=; s=; h=; bh=AAAA; b=AAAA",
        b" i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=",
        b" i=99; cv=pass",
        b" a=rsa-sha256; d=\xff\xfe; s=..; h=from:from:from; bh=====; b====",
        b" <a@[1.2.3.4]>, \"x\" <b@>, c@d@e, (comment) <@>",
        b" =?utf-8?b?w7w=?= <u@b\xc3\xbccher.test>",
        b" mx.example.net; dkim=pass",
    ]))
HEADERS = st.lists(st.tuples(FIELDS, VALUES), max_size=12)
BODIES = st.binary(max_size=300)


def message(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    return b"".join(name + b":" + value + b"\r\n" for name, value in headers) + b"\r\n" + body


def bridge() -> DNSBridge:
    loop = asyncio.new_event_loop()
    loop.close()  # never used: a cache-only bridge misses before reaching the loop
    return DNSBridge(Resolver([("127.0.0.1", 9)]), loop, max_lookups=40, timeout=5,
                     cache_only=True)


@settings(max_examples=300, deadline=None)
@given(HEADERS, BODIES)
def test_dkim_and_arc_checks_always_give_a_result(headers: list[tuple[bytes, bytes]],
                                                   body: bytes) -> None:
    msg = message(headers, body)
    results, count = check_dkim(bridge(), msg)
    assert count >= len(results)
    assert all(r.result in ("pass", "fail", "policy", "temperror", "permerror")
               for r in results)
    assert check_arc(bridge(), msg).result in ("pass", "fail", "none")


@settings(max_examples=300, deadline=None)
@given(HEADERS, BODIES)
def test_from_domains_never_raises(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    for domain in from_domains(message(headers, body)):
        assert isinstance(domain, str) and domain
        organizational_domain(domain)


@given(st.text(max_size=200))
def test_dmarc_tags_and_authserv_ids_never_raise(text: str) -> None:
    assert isinstance(_tags(text), dict)
    assert isinstance(authserv_id_of(text), str)


@settings(max_examples=300, deadline=None)
@given(HEADERS, BODIES, st.integers(1, 50))
def test_the_filter_only_ever_removes_whole_fields(headers: list[tuple[bytes, bytes]],
                                                   body: bytes, size: int) -> None:
    msg = message(headers, body)
    f = ResultsFilter("mx.example.net")
    out = b"".join(f.feed(msg[i:i + size]) for i in range(0, len(msg), size)) + f.finish()
    whole = ResultsFilter("mx.example.net")
    assert out == whole.feed(msg) + whole.finish()  # however it was cut
    if f.removed == 0:
        assert out == msg
    else:
        assert len(out) < len(msg) and out.endswith(b"\r\n" + body)
