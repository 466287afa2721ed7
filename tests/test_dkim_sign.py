"""DKIM signing (server/dkimsign.py): what mailgate signs checks out with two independent
verifiers, dkimpy's and OpenDKIM's (libopendkim through tests/support/opendkim.py), for
RSA and Ed25519, small messages and ones that spill to a file; tampering breaks it."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path

import dkim
import dkim.canonicalization
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.config.dkim import DKIMKey, generate_key, parse_key, public_record
from mailgate.server.dkimbody import BodyHash
from mailgate.server.dkimsign import MAX_HEADER, SigningError, sign, signatures
from tests.support import opendkim

MESSAGE = (
    b"Received: from client (client [127.0.0.1]) by mx.example.org; "
    b"Sat, 05 Dec 2026 06:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject:  Lunch   on\r\n\tFriday? \r\n"
    b"Date: Sat, 05 Dec 2026 06:00:00 +0000\r\n"
    b"Message-ID: <lunch.1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Bcc: secret@example.net\r\n"
    b"\r\n"
    b"Hi  Bob, \t\r\n"
    b"shall we?\r\n"
    b"\r\n"
    b"\r\n"
)


def make_key(algorithm: str, domain: str = "example.org", selector: str = "s1") -> DKIMKey:
    key = parse_key(generate_key(algorithm), algorithm, Path("k"))  # type: ignore[arg-type]
    return DKIMKey(domain, selector, key.algorithm, key.key_file, key.private, key.public,
                   key.bits)


@pytest.fixture(scope="module")
def rsa_key() -> DKIMKey:
    return make_key("rsa-sha256", selector="r2026")


@pytest.fixture(scope="module")
def ed_key() -> DKIMKey:
    return make_key("ed25519-sha256", selector="e2026")


def records(*keys: DKIMKey) -> dict[str, str]:
    return {k.record_name: public_record(k) for k in keys}


def dkimpy_verdicts(message: bytes, keys: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text = keys.get(name.decode().rstrip("."))
        return text.encode() if text is not None else None

    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    out = []
    for i in range(count):
        try:
            out.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:  # dkimpy raises on a body hash mismatch
            out.append(False)
    return out


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# --- the body hash, streamed -----------------------------------------------------------

_body_bytes = st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"\r\n", b"\r", b"\n",
                                        b"\r\n\r\n", b"  \r\n", b"\xc3\xa9"]),
                       max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(body=_body_bytes, cuts=st.lists(st.integers(1, 7), max_size=20),
       relaxed=st.booleans())
def test_streamed_body_hash_equals_dkimpys_whole_body_hash(body: bytes, cuts: list[int],
                                                           relaxed: bool) -> None:
    algorithm = dkim.canonicalization.Relaxed if relaxed else dkim.canonicalization.Simple
    if not body.endswith(b"\r\n") and body:
        body += b"\r\n"  # SMTP content always ends in CRLF; dkimpy and RFC differ otherwise
    expected = hashlib.sha256(algorithm.canonicalize_body(body)).digest()
    h = BodyHash(relaxed=relaxed)
    at = 0
    for cut in cuts:
        h.update(body[at:at + cut])
        at += cut
    h.update(body[at:])
    assert h.digest() == expected


def test_a_line_longer_than_many_pieces(rsa_key: DKIMKey) -> None:
    """BDAT puts no limit on line length: a 3 MiB line fed in 4 KiB pieces hashes as
    dkimpy hashes it whole (and is not copied over and over on the way)."""
    body = b"x" * (3 * 1024 * 1024) + b" \t y  \r\n\r\nend\r\n\r\n"
    for relaxed in (True, False):
        algorithm = (dkim.canonicalization.Relaxed if relaxed
                     else dkim.canonicalization.Simple)
        h = BodyHash(relaxed)
        for piece in pieces(body, 4096):
            h.update(piece)
        assert h.digest() == hashlib.sha256(algorithm.canonicalize_body(body)).digest()


def test_rfc6376_body_examples() -> None:
    """RFC 6376 3.4.5: the example body under relaxed and simple canonicalization."""
    body = b" C \r\nD \t E\r\n\r\n\r\n"
    relaxed, simple = BodyHash(True), BodyHash(False)
    for piece in pieces(body, 3):
        relaxed.update(piece)
        simple.update(piece)
    assert relaxed.digest() == hashlib.sha256(b" C\r\nD E\r\n").digest()
    assert simple.digest() == hashlib.sha256(b" C \r\nD \t E\r\n").digest()
    assert BodyHash(True).digest() == hashlib.sha256(b"").digest()  # 3.4.4: empty body
    assert BodyHash(False).digest() == hashlib.sha256(b"\r\n").digest()  # 3.4.3


# --- signatures checked by two verifiers ------------------------------------------------


@pytest.mark.parametrize("size", ["small", "large"])
def test_dual_signature_verifies_with_dkimpy_and_opendkim(rsa_key: DKIMKey, ed_key: DKIMKey,
                                                          size: str) -> None:
    message = MESSAGE
    if size == "large":  # past the 256 KiB the spool keeps in memory, in odd pieces
        message += b"".join(b"line %06d  with \t spaces   \r\n" % i for i in range(12000))
    fields = sign(pieces(message, 4093), [rsa_key, ed_key], now=time.time() - 60)
    signed = fields + message
    keys = records(rsa_key, ed_key)
    assert dkimpy_verdicts(signed, keys) == [True, True]
    verdicts = opendkim.verify(signed, keys)
    assert [(v.selector, v.passed, v.body_hash_ok, v.error) for v in verdicts] == [
        ("r2026", True, True, 0), ("e2026", True, True, 0)]
    # dkimpy's own sign() makes the same body hash from the message in one piece.
    whole = dkim.sign(message, b"r2026", b"example.org", rsa_key.private,
                      canonicalize=(b"relaxed", b"relaxed"))
    bh = re.search(rb"bh=([^;]+);", fields.replace(b"\r\n ", b""))
    assert bh and bh.group(1) in whole.replace(b"\r\n ", b"")


def test_what_is_signed(rsa_key: DKIMKey) -> None:
    fields = sign([MESSAGE], [rsa_key], now=1796450000)
    unfolded = fields.replace(b"\r\n ", b" ").decode()
    assert unfolded.startswith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; "
                               "d=example.org; s=r2026; t=1796450000; ")
    h = re.search(r"h=([^;]+);", unfolded)
    assert h is not None
    signed = [name.strip() for name in h.group(1).split(":")]
    # RFC 6376 5.4.1's fields that the message has, From once more (5.4.2, oversigned);
    # never Received or Bcc.
    assert signed == ["from", "to", "subject", "date", "message-id", "mime-version",
                      "content-type", "from"]
    assert " l=" not in unfolded  # the whole body
    assert fields.endswith(b"\r\n") and all(len(line) <= 78 for line in fields.split(b"\r\n"))


@pytest.mark.parametrize(("change", "what"), [
    ((b"shall we?", b"shall we!"), "body"),
    ((b"To: bob@", b"To: eve@"), "to"),
    ((b"Subject:  Lunch", b"Subject:  Dinner"), "subject"),
    ((b"\r\n\r\nHi", b"\r\nFrom: ceo@example.org\r\n\r\nHi"), "a second From"),
])
def test_tampering_breaks_the_signature_for_both_verifiers(
        rsa_key: DKIMKey, ed_key: DKIMKey, change: tuple[bytes, bytes], what: str) -> None:
    signed = sign([MESSAGE], [rsa_key, ed_key]) + MESSAGE
    tampered = signed.replace(*change)
    assert tampered != signed, what
    keys = records(rsa_key, ed_key)
    assert dkimpy_verdicts(tampered, keys) == [False, False], what
    assert [v.passed for v in opendkim.verify(tampered, keys)] == [False, False], what


def test_relaxed_canonicalization_survives_rewrapping(rsa_key: DKIMKey) -> None:
    """What relaxed/relaxed is for: a hop that refolds a header or changes spacing."""
    signed = sign([MESSAGE], [rsa_key]) + MESSAGE
    moved = signed.replace(b"Subject:  Lunch   on\r\n\tFriday? ",
                           b"Subject: Lunch on Friday?").replace(b"Hi  Bob, \t", b"Hi Bob,")
    assert dkimpy_verdicts(moved, records(rsa_key)) == [True]
    assert [v.passed for v in opendkim.verify(moved, records(rsa_key))] == [True]


def test_a_wrong_published_key_fails(rsa_key: DKIMKey) -> None:
    other = make_key("rsa-sha256", selector="r2026")
    signed = sign([MESSAGE], [rsa_key]) + MESSAGE
    assert dkimpy_verdicts(signed, records(other)) == [False]
    [verdict] = opendkim.verify(signed, records(other))
    assert not verdict.passed and verdict.error == 28  # DKIM_SIGERROR_BADSIG


# --- which mail is signed, and what cannot be ---------------------------------------------


def test_signatures_pick_the_keys_of_the_from_domain(rsa_key: DKIMKey, ed_key: DKIMKey
                                                     ) -> None:
    table = {"example.org": (rsa_key, ed_key)}
    fields, domain = signatures([MESSAGE], table)
    assert domain == "example.org" and fields.count(b"DKIM-Signature:") == 2
    sub = MESSAGE.replace(b"alice@example.org", b"alice@News.Example.ORG")
    assert signatures([sub], table)[1] == "example.org"  # the parent's keys
    other = MESSAGE.replace(b"alice@example.org", b"alice@example.com")
    assert signatures([other], table) == (b"", None)


def test_what_cannot_be_signed(rsa_key: DKIMKey) -> None:
    no_from = MESSAGE.replace(b"From: Alice Example <alice@example.org>\r\n", b"")
    with pytest.raises(SigningError, match="no From"):
        sign([no_from], [rsa_key])
    huge = b"X-Filler: " + b"a" * (MAX_HEADER + 10) + b"\r\n" + MESSAGE
    with pytest.raises(SigningError, match="header section is over"):
        sign(pieces(huge, 65536), [rsa_key])
    # Headers alone (no body) still sign: the body is empty.
    headers_only = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    signed = sign([headers_only], [rsa_key]) + headers_only
    assert dkimpy_verdicts(signed, records(rsa_key)) == [True]


def test_body_hash_of_the_signature_is_base64_sha256(rsa_key: DKIMKey) -> None:
    fields = sign([MESSAGE], [rsa_key]).replace(b"\r\n ", b"")
    bh = re.search(rb"bh=([^;]+);", fields)
    assert bh is not None
    body = MESSAGE.split(b"\r\n\r\n", 1)[1]
    expected = hashlib.sha256(dkim.canonicalization.Relaxed.canonicalize_body(body)).digest()
    assert base64.b64decode(bh.group(1)) == expected


# --- RFC 8463 (Ed25519 for DKIM), appendix A ---------------------------------------------

RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_PUBLIC = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)
RFC8463_BODY_HASH = "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="


def test_rfc8463_key_body_hash_and_signature(tmp_path: Path) -> None:
    """The RFC's Ed25519 key, loaded as a key file, gives the RFC's public key; the
    RFC's message gives the RFC's body hash; signing it with that key verifies against
    the RFC's DNS record in dkimpy and OpenDKIM."""
    from mailgate.config.dkim import load_key

    path = tmp_path / "brisbane.key"
    path.write_text(RFC8463_SEED + "\n")
    loaded = load_key(path, "ed25519-sha256", "football.example.com", "brisbane")
    assert loaded.public == RFC8463_PUBLIC
    fields = sign([RFC8463_MESSAGE], [loaded])
    bh = re.search(rb"bh=([^;]+);", fields.replace(b"\r\n ", b""))
    assert bh is not None and bh.group(1).decode() == RFC8463_BODY_HASH
    record = {"brisbane._domainkey.football.example.com":
              f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"}
    signed = fields + RFC8463_MESSAGE
    assert dkimpy_verdicts(signed, record) == [True]
    assert [v.passed for v in opendkim.verify(signed, record)] == [True]


def test_signing_from_many_threads_at_once(rsa_key: DKIMKey, ed_key: DKIMKey) -> None:
    """The server signs in worker threads, several messages at once, with one parsed
    key object per key: every signature must still be its own message's."""
    from concurrent.futures import ThreadPoolExecutor

    messages = [MESSAGE.replace(b"shall we?", b"shall we? %d" % i) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(lambda m: sign([m], [rsa_key, ed_key]) + m, messages))
    keys = records(rsa_key, ed_key)
    assert all(dkimpy_verdicts(m, keys) == [True, True] for m in signed)
    # What makes that hold: a signature is a value of its own, never state kept on the
    # shared key object that the next thread's signing would overwrite.
    from mailgate.server.dkimsign import _private_key

    shared = _private_key(rsa_key.algorithm, rsa_key.private)
    first = shared.sign(hashlib.sha256(b"one").digest())
    second = shared.sign(hashlib.sha256(b"two").digest())
    assert first.signature != second.signature
