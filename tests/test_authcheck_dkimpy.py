"""mailgate's DKIM verifier (authcheck/dkimverify.py) against dkimpy's own, message by
message: the same verdict and the same reason for every signature.

mailgate verifies with the body hashes streamed from the spool (`dkimbody.py`) and RSA
done by OpenSSL; dkimpy's `DKIM.verify` on the whole message is the reference (the code
check_dkim ran before, kept here as `reference`). The messages are signed by dkimpy
with RSA (1024 and 512 bits, sha256 and sha1) and Ed25519 keys, simple and relaxed, with
and without l=, and then changed the ways mail is changed on the way and the ways an
attacker would: bodies appended to, trailing blank lines, white space, bare LF line
ends, no final CRLF, refolded and renamed header fields, a second From, bad bh= and
b=, absurd l= values, broken tags. Each message is also fed in random pieces, as the
spool yields it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import re
from collections.abc import Iterator

import dkim
import dkim.canonicalization
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailgate.server.authcheck.dkimcheck import (
    MAX_SIGNATURES,
    MIN_KEY_BITS,
    DKIMResult,
    _logger,
    check_dkim,
    check_dkim_parts,
    verify_each,
)
from mailgate.server.authcheck.dkimverify import (
    _BTAG,
    MAX_HEADER,
    HeaderTooLong,
    _b64_ok,
    _split_h,
    split_message,
)
from mailgate.server.authcheck.lookup import DNSBridge
from mailgate.server.dkimbody import BodyCanon, LimitedHash

DOMAIN = b"example.org"


class Keys(DNSBridge):
    """DNS that knows the test keys (a dict) and nothing else."""

    def __init__(self, records: dict[str, bytes]) -> None:  # no resolver needed
        self.records = records

    def txt(self, name: str) -> list[bytes]:
        return [self.records[name]] if name in self.records else []


def prime(bits: int, rng: random.Random) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31)):
            return n


def small_rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key too short for `cryptography` to generate (and for DKIM to accept)."""
    rng, e = random.Random(bits), 65537
    while True:
        p, q = prime(bits // 2, rng), prime(bits // 2, rng)
        if p != q and (p - 1) % e and (q - 1) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                 rsa.RSAPublicNumbers(e, p * q)).private_key()


def rsa_pair(bits: int) -> tuple[bytes, bytes]:
    key = (rsa.generate_private_key(public_exponent=65537, key_size=bits) if bits >= 1024
           else small_rsa_key(bits))
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def ed_pair() -> tuple[bytes, bytes]:
    sk = nacl.signing.SigningKey.generate()
    return (sk.encode(nacl.encoding.Base64Encoder),
            b"v=DKIM1; k=ed25519; p=" + sk.verify_key.encode(nacl.encoding.Base64Encoder))


# selector -> (private key, algorithms it signs with)
SIGNERS: dict[bytes, tuple[bytes, tuple[bytes, ...]]] = {}
RECORDS: dict[str, bytes] = {}
for _sel, (_priv, _rec), _algs in [
        (b"r1024", rsa_pair(1024), (b"rsa-sha256", b"rsa-sha1")),
        (b"r512", rsa_pair(512), (b"rsa-sha256",)),  # under MIN_KEY_BITS
        (b"ed", ed_pair(), (b"ed25519-sha256",))]:
    SIGNERS[_sel] = (_priv, _algs)
    RECORDS[f"{_sel.decode()}._domainkey.{DOMAIN.decode()}"] = _rec
# A selector whose record is not a key, one with an unknown k=, one with none at all.
RECORDS["junk._domainkey.example.org"] = b"v=DKIM1; k=rsa; p=AAAA"
RECORDS["odd._domainkey.example.org"] = b"v=DKIM1; k=dsa; p=AAAA"


def reference(bridge: DNSBridge, message: bytes) -> tuple[list[DKIMResult], int]:
    """check_dkim as it was: dkimpy's DKIM.verify on the whole message."""
    log, reasons = _logger()
    try:
        signer = dkim.DKIM(message, logger=log, minkey=MIN_KEY_BITS)
    except Exception as exc:
        return [DKIMResult("permerror", reason=f"cannot parse the message: {exc}")], 1
    count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
    return verify_each(signer, count, bridge, reasons), count


def in_pieces(message: bytes, cuts: list[int]) -> Iterator[bytes]:
    """`message` cut after each of `cuts` bytes in turn (as a spool is read back)."""
    at = 0
    for cut in cuts:
        yield message[at:at + cut]
        at += cut
    yield message[at:]


def ours_in_pieces(message: bytes, cuts: list[int]) -> tuple[list[DKIMResult], int]:
    header, body = split_message(in_pieces(message, cuts))
    return check_dkim_parts(Keys(RECORDS), header, body)


def sign(message: bytes, selector: bytes, algorithm: bytes, canon: tuple[bytes, bytes],
         length: bool) -> bytes:
    private, _ = SIGNERS[selector]
    sig = dkim.sign(message, selector, DOMAIN, private, canonicalize=canon, length=length,
                    signature_algorithm=algorithm,
                    include_headers=[b"from", b"to", b"subject", b"date"],
                    logger=logging.getLogger("test.dkimpy"))
    return bytes(sig) + message


def flip(message: bytes, tag: bytes) -> bytes:
    """The first character of the first `tag`= value (b or bh) changed."""
    found = re.search(rb"[;\s]" + tag + rb"=([A-Za-z0-9+/])", message)
    if found is None:
        return message
    c = found.group(1)
    new = b"B" if c != b"B" else b"C"
    return message[:found.start(1)] + new + message[found.end(1):]


def mutate(message: bytes, how: str) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    if how == "append_body":
        return message + b"appended by a list\r\n"
    if how == "trailing_blank_lines":
        return message + b"\r\n\r\n\r\n"
    if how == "more_white_space":
        return head + b"\r\n\r\n" + body.replace(b" ", b" \t ", 1).replace(b"\r\n",
                                                                           b"  \r\n", 1)
    if how == "bare_lf":
        return message.replace(b"\r\n", b"\n")
    if how == "bare_lf_body":
        return head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n")
    if how == "no_final_crlf":
        return message.rstrip(b"\r\n")
    if how == "last_line_white_space":
        return message.rstrip(b"\r\n") + b" \t "
    if how == "refold_subject":
        return message.replace(b"Subject: ", b"Subject:\r\n \t ", 1)
    if how == "rename_subject":
        return message.replace(b"Subject:", b"SUBJECT :", 1)
    if how == "second_from":
        return b"From: mallory@evil.test\r\n" + message
    if how == "bad_bh":
        return flip(message, b"bh")
    if how == "bad_b":
        return flip(message, b"b")
    if how == "huge_l":
        return re.sub(rb"l=\d+", b"l=" + b"9" * 70, message, count=1)
    if how == "zero_l":
        return re.sub(rb"l=\d+", b"l=0", message, count=1)
    if how == "empty_l":
        return re.sub(rb"l=\d+", b"l=", message, count=1)
    if how == "broken_tag":
        return message.replace(b"v=1;", b"v=1; ;=x;", 1)
    if how == "unknown_c":
        return re.sub(rb"c=[a-z/]+", b"c=fancy/relaxed", message, count=1)
    if how == "junk_key":
        return message.replace(b"s=r1024", b"s=junk", 1).replace(b"s=ed;", b"s=odd;", 1)
    if how == "no_key":
        return re.sub(rb"s=[a-z0-9]+", b"s=nokey", message, count=1)
    if how == "empty_line_first":
        return b"\r\n" + message
    return message


BODY_PARTS = [b"Hello", b" ", b"\t", b"   ", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n\r\n",
              b" \r\n", b"x" * 90, b"\xc3\xa9", b"."]
BODIES = st.lists(st.sampled_from(BODY_PARTS), max_size=40).map(b"".join)
SUBJECTS = st.sampled_from([b"Hi", b"  Lunch   on\r\n\tFriday? ", b"a\r\n b\r\n  c", b"",
                            b"\xc3\xa9t\xc3\xa9"])
MUTATIONS = ["append_body", "trailing_blank_lines", "more_white_space", "bare_lf",
             "bare_lf_body", "no_final_crlf", "last_line_white_space", "refold_subject",
             "rename_subject", "second_from", "bad_bh", "bad_b", "huge_l", "zero_l",
             "empty_l", "broken_tag", "unknown_c", "junk_key", "no_key",
             "empty_line_first"]
SIGNATURE = st.tuples(
    st.sampled_from([(b"r1024", b"rsa-sha256"), (b"r1024", b"rsa-sha1"),
                     (b"r512", b"rsa-sha256"), (b"ed", b"ed25519-sha256")]),
    st.sampled_from([(h, b) for h in (b"simple", b"relaxed") for b in (b"simple", b"relaxed")]),
    st.booleans())


def test_a_bare_cr_before_a_bare_lf_is_not_a_line_end() -> None:
    """Found by the test below: "\rHello\n" holds one CR and one LF, not a CRLF; the
    LF is a line end to make CRLF, as dkimpy makes it, and the signature holds."""
    msg = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Hi\r\n"
           b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\n\rHello\n")
    msg = sign(msg, b"r1024", b"rsa-sha256", (b"simple", b"simple"), False)
    expected = reference(Keys(RECORDS), msg)
    assert [r.result for r in expected[0]] == ["pass"]
    assert check_dkim(Keys(RECORDS), msg) == expected
    assert ours_in_pieces(msg, [len(msg) - 3]) == expected


@settings(max_examples=400, deadline=None)
@given(body=BODIES, subject=SUBJECTS, signatures=st.lists(SIGNATURE, min_size=1, max_size=3),
       mutations=st.lists(st.sampled_from(MUTATIONS), max_size=3),
       cuts=st.lists(st.integers(1, 200), max_size=8))
def test_same_verdicts_as_dkimpy(body: bytes, subject: bytes,
                                 signatures: list[tuple[tuple[bytes, bytes],
                                                        tuple[bytes, bytes], bool]],
                                 mutations: list[str], cuts: list[int]) -> None:
    msg = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: " + subject
           + b"\r\nDate: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\n" + body)
    for (selector, algorithm), canon, length in signatures:
        msg = sign(msg, selector, algorithm, canon, length)
    for how in mutations:
        msg = mutate(msg, how)
    expected = reference(Keys(RECORDS), msg)
    for r in expected[0]:  # (--hypothesis-show-statistics: what the examples were)
        event(f"{r.result}: {r.reason.split(' (')[0][:40]}")
    assert check_dkim(Keys(RECORDS), msg) == expected
    assert ours_in_pieces(msg, cuts) == expected


def test_the_comparison_sees_passes_and_each_kind_of_failure() -> None:
    """The random messages above are not all failures: this is what they look like."""
    msg = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Hi\r\n"
           b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\nHello  there \r\n\r\n")
    seen = {}
    for selector, algorithm in [(b"r1024", b"rsa-sha256"), (b"r1024", b"rsa-sha1"),
                                (b"r512", b"rsa-sha256"), (b"ed", b"ed25519-sha256")]:
        signed = sign(msg, selector, algorithm, (b"relaxed", b"relaxed"), True)
        for how in ["", "append_body", "bad_bh", "bad_b", "empty_l", "no_key"]:
            changed = mutate(signed, how)
            [result], _ = check_dkim(Keys(RECORDS), changed)
            assert [result] == reference(Keys(RECORDS), changed)[0]
            seen[selector, algorithm, how] = result.result
    assert seen[b"r1024", b"rsa-sha256", ""] == "pass"
    assert seen[b"ed", b"ed25519-sha256", ""] == "pass"
    assert seen[b"r1024", b"rsa-sha256", "append_body"] == "pass"  # l= honoured
    assert seen[b"r1024", b"rsa-sha1", ""] == "policy"
    assert seen[b"r512", b"rsa-sha256", ""] == "permerror"  # key too short
    for sel, alg in [(b"r1024", b"rsa-sha256"), (b"ed", b"ed25519-sha256")]:
        assert seen[sel, alg, "bad_bh"] == "permerror"  # body hash mismatch
        assert seen[sel, alg, "bad_b"] == "fail"
        assert seen[sel, alg, "no_key"] == "fail"
        assert seen[sel, alg, "empty_l"] == "permerror"


def test_ten_signatures_with_different_l_hash_the_body_once_each_way() -> None:
    """Twelve signatures over one body, each with its own l= (each signed a shorter
    version of the body, which then grew) and canonicalization: the first ten are
    verified, each against its own body hash (the one pass snapshots the hash at each
    length)."""
    head = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n"
            b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\n")
    lines = [b"line %d  with\tspace \r\n" % i for i in range(200)]
    sigs = []
    for i in range(12):
        canon = (b"relaxed", b"relaxed" if i % 2 else b"simple")
        one = sign(head + b"".join(lines[:10 * i + 1]), b"ed", b"ed25519-sha256", canon,
                   True)
        sigs.append(one[:one.index(b"\r\nFrom:") + 2])
    signed = b"".join(sigs) + head + b"".join(lines)
    ours, count = check_dkim(Keys(RECORDS), signed)
    assert count == 12 and len(ours) == MAX_SIGNATURES
    assert [r.result for r in ours] == ["pass"] * MAX_SIGNATURES
    assert (ours, count) == reference(Keys(RECORDS), signed)
    # The same with each l= one less: every body hash differs, and says so.
    shorter = re.sub(rb"l=(\d+)", lambda m: b"l=%d" % (int(m.group(1)) - 1), signed)
    ours, _ = check_dkim(Keys(RECORDS), shorter)
    assert all(r.reason.startswith("body hash mismatch") for r in ours)
    assert (ours, count) == reference(Keys(RECORDS), shorter)


# --- the pieces --------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(body=BODIES, cuts=st.lists(st.integers(1, 9), max_size=20), relaxed=st.booleans(),
       lengths=st.lists(st.one_of(st.none(), st.integers(0, 400)), min_size=1, max_size=4))
def test_canonical_body_and_lengths_are_dkimpys(body: bytes, cuts: list[int],
                                                relaxed: bool,
                                                lengths: list[int | None]) -> None:
    """BodyCanon (dkimpy's way with a last line without CRLF) and LimitedHash against
    dkimpy's whole-body canonicalization and its slice for l=."""
    algorithm = dkim.canonicalization.Relaxed if relaxed else dkim.canonicalization.Simple
    expected = algorithm.canonicalize_body(body)
    sha = LimitedHash("sha256", lengths)
    sha1 = LimitedHash("sha1", [None])
    canon = BodyCanon(relaxed, [sha, sha1], rfc_last_line=False)
    at = 0
    for cut in [*cuts, len(body)]:
        canon.update(body[at:at + cut])
        at += cut
    canon.finish()
    sha.finish()
    sha1.finish()
    for n in lengths:
        assert sha.digests[n] == hashlib.sha256(expected[:n]).digest()
    assert sha1.digests[None] == hashlib.sha1(expected).digest()


@settings(max_examples=300, deadline=None)
@given(message=st.lists(st.sampled_from([b"A: 1", b"B:2", b" cont", b"\r\n", b"\n", b"\r",
                                         b"body", b"\r\n\r\n", b"\n\n"]),
                        max_size=20).map(b"".join),
       cuts=st.lists(st.integers(1, 5), max_size=10))
def test_header_and_body_divide_where_dkimpy_divides_them(message: bytes,
                                                          cuts: list[int]) -> None:
    try:
        want_headers, want_body = dkim.rfc822_parse(message)
    except Exception:
        want_headers = None
    header, body = split_message(in_pieces(message, cuts))
    got_body = b"".join(body)
    if want_headers is None:
        with pytest.raises(Exception):  # noqa: B017  (dkimpy's own errors)
            dkim.rfc822_parse(header + b"\r\n\r\n")
        return
    assert got_body == want_body
    end = b"\r\n" if header and not header.endswith(b"\n") else b""
    assert dkim.rfc822_parse(header + end + b"\r\n")[0] == want_headers


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"b", b"=", b" ", b"\t", b"\r\n", b"\n", b"\r", b";", b"A",
                                 b"+", b"!", b"bh=", b" b =", b"\r\n b="]), max_size=25))
def test_the_b_tag_is_cut_where_dkimpy_cuts_it(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert _BTAG.sub(b"\\1", value) == dkim.RE_BTAG.sub(b"\\1", value)


def test_white_space_checks_are_dkimpys() -> None:
    for value in [b"", b" ", b"=", b" =", b"AAAA", b"AA AA==", b"AB=CD", b"A!", b"\r\n A",
                  b"AAAA= =\r\n", b"==A", b"\t"]:
        want = re.match(rb"[\s0-9A-Za-z+/]+[\s=]*$", value) is not None
        assert _b64_ok(value) == want, value
    for value in [b"from", b" From : To ", b"a:b::c", b": :", b"\r\n from \r\n:\tto"]:
        assert _split_h(value) == [x.lower() for x in re.split(rb"\s*:\s*", value)]


# --- hostile signatures --------------------------------------------------------------------

def signed_small() -> bytes:
    msg = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n"
           b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n")
    return sign(msg, b"ed", b"ed25519-sha256", (b"relaxed", b"relaxed"), False)


@pytest.mark.parametrize("where", [b"b=", b"bh=", b"h=from"])
def test_long_white_space_runs_in_tags_are_refused_at_once(where: bytes) -> None:
    """dkimpy's patterns for b=, bh= and h= backtrack quadratically on a long run of
    white space (200,000 spaces: minutes); ours scan once."""
    msg = signed_small().replace(where, where + b" " * 200_000 + b"!", 1)
    [result], _ = check_dkim(Keys(RECORDS), msg)
    assert result.result in ("permerror", "fail")


def test_many_h_entries_select_from_an_index() -> None:
    """h= naming 20,000 fields none of which is there, over 2,000 header fields: the
    selection is an index lookup per entry, not a scan of every field."""
    msg = signed_small()
    msg = msg.replace(b"h=", b"h=" + b"x-none:" * 20_000, 1)
    msg = b"".join(b"X-Pad-%d: y\r\n" % i for i in range(2000)) + msg
    [result], _ = check_dkim(Keys(RECORDS), msg)
    assert result.result == "fail"
    assert [result] == reference(Keys(RECORDS), msg)[0]


def der_int(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return b"\x02" + der_len(len(raw)) + raw


def der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


@pytest.mark.parametrize(("bits", "e_bits", "why"), [
    (17000, 17, "RSA key over 16384 bits"),
    (4096, 2000, "RSA key over 3072 bits with an exponent over 64 bits")])
def test_rsa_keys_that_would_cost_seconds_are_refused(bits: int, e_bits: int,
                                                      why: str) -> None:
    """A key an attacker publishes: dkimpy's pure-Python RSA would spend seconds per
    signature on it; OpenSSL refuses such keys and so does mailgate, as a key it cannot
    use (a fail with the reason, as dkimpy reports a key it cannot read)."""
    n = (1 << (bits - 1)) | 1
    e = (1 << (e_bits - 1)) | 1
    seq = der_int(n) + der_int(e)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(b"\x30" + der_len(len(seq)) + seq)
    records = {**RECORDS, "big._domainkey.example.org": record}
    msg = signed_small().replace(b"s=ed;", b"s=big;", 1)
    [result], _ = check_dkim(Keys(records), msg)
    assert (result.result, result.reason) == ("fail", why)


def test_a_header_section_over_the_limit_is_a_permerror() -> None:
    with pytest.raises(HeaderTooLong):
        split_message([b"X: " + b"y" * MAX_HEADER + b"\r\n\r\nbody\r\n"])
    [result], _ = check_dkim(Keys(RECORDS), b"X: " + b"y" * MAX_HEADER + b"\r\n\r\nb\r\n")
    assert result.result == "permerror" and "over" in result.reason


def test_the_body_is_read_no_further_than_the_longest_l() -> None:
    """Every signature with l=: the spool is read up to the longest, not to the end."""
    msg = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n"
           b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n")
    signed = sign(msg, b"ed", b"ed25519-sha256", (b"simple", b"simple"), True)
    header, body = split_message([signed])
    read = []

    def spool() -> Iterator[bytes]:
        for piece in body:
            read.append(piece)
            yield piece
        while True:  # an endless body: only a bounded read ends
            read.append(b"x")
            yield b"x\r\n" * 1000

    results, _ = check_dkim_parts(Keys(RECORDS), header, spool())
    assert [r.result for r in results] == ["pass"]
    assert len(read) <= 3
