"""DKIM verification (RFC 6376) with the body streamed and RSA done by OpenSSL.

dkimpy's own `DKIM.verify` holds the message whole, several copies over, runs its
relaxed body canonicalization as regular expressions over all of it (about 2.4 ms per
100 KiB) and does RSA in pure Python (about 0.4 ms per signature). Here:

- only the header section is kept (at most `MAX_HEADER` bytes) and given to dkimpy,
  which parses it, the tags of each signature, and canonicalizes and hashes the signed
  header fields exactly as before;
- the body streams from the spool once, through `dkimbody.BodyCanon` (shared with
  signing), for every body hash the signatures ask for: each canonicalization used
  (simple, relaxed) runs once, each hash algorithm once over it, every `l=` length a
  copy of the hash state on the way; so ten signatures cost about what one does;
- RSA signatures are checked by OpenSSL (the `cryptography` package), Ed25519 ones by
  PyNaCl (libsodium) as dkimpy does: it is native code already, and libsodium's
  acceptance rules (small-order keys, non-canonical signatures) are not OpenSSL's.

What dkimpy would say is what this says: `_Verifier` overrides only dkimpy's body hash
and public-key steps and keeps its messages, exceptions and order of checks, and the
tests compare the two on many varied messages (tests/test_authcheck_dkimpy.py). Where
OpenSSL's RSA is stricter than dkimpy's arithmetic (a signature of the wrong length, or
not below the modulus, which dkimpy reduces), dkimpy's own function decides.

Hostile input is bounded: the header section (`MAX_HEADER`), the regular expressions of
dkimpy that backtrack quadratically on long runs of white space (b=, bh=, h=) replaced
by linear scans, header selection by an index instead of a scan per h= name, and RSA
keys over 16,384 bits, or over 3,072 bits with an exponent over 64 bits (what OpenSSL
refuses too; pure Python would take seconds), are a key error.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import dkim
import dkim.crypto
import dkim.util
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from mailgate.server.dkimbody import BodyCanon, LimitedHash

__all__ = ["MAX_HEADER", "HeaderTooLong", "Verifier", "split_message"]

MAX_HEADER = 1024 * 1024  # bytes of header section kept; a longer one is a permerror
MAX_RSA_BITS = 16384  # OpenSSL's own limit (OPENSSL_RSA_MAX_MODULUS_BITS)
_PIECE = 64 * 1024  # bytes of body canonicalized at a time
_BOUNDARY = re.compile(rb"\n\r?\n")  # the empty line after the header section, as
# dkimpy finds it: lines end in CRLF or a bare LF
# dkimpy's RE_BTAG (the b= value, removed from the signature field before hashing it),
# whose folding white space `(?:(?:\s*\r?\n)?\s+)?` is any run of white space: the same
# matches, without nested optional groups (a tenth of the time).
_BTAG = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=]+)*(?:\r?\n\Z)?")
_WS = b" \t\r\n\x0b\x0c"  # what \s matches in a bytes pattern
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" + _WS


class HeaderTooLong(Exception):
    """The header section is longer than MAX_HEADER."""


def split_message(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """(the header section, up to and with its last line end; the body's pieces) of the
    message `chunks` yields, divided where dkimpy's parser divides it, the body's bare
    LFs made CRLF as dkimpy makes them. The body is read as it is iterated."""
    it = iter(chunks)
    buf = bytearray()
    for piece in it:
        searched = max(len(buf) - 2, 0)
        buf += piece
        if buf[:1] == b"\n" or buf[:2] == b"\r\n":  # an empty first line: no header
            start = 1 if buf[:1] == b"\n" else 2
            return b"", _crlf(bytes(buf[start:]), it)
        if buf == b"\r":
            continue  # perhaps the start of an empty first line
        found = _BOUNDARY.search(buf, searched)
        if found is not None:
            if found.start() >= MAX_HEADER:
                break
            return bytes(buf[:found.start() + 1]), _crlf(bytes(buf[found.end():]), it)
        if len(buf) > MAX_HEADER:
            break
    else:
        return bytes(buf), iter(())
    raise HeaderTooLong(f"the header section is over {MAX_HEADER} bytes")


def _crlf(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """The pieces with every bare LF made CRLF (a CR ending a piece waits for the next:
    it may be the start of a CRLF cut in two)."""
    carry = b""
    for got in _pieces(first, rest):
        piece = carry + got if carry else got
        carry = b""
        if piece[-1:] == b"\r":
            piece, carry = piece[:-1], b"\r"
        # Counted in the piece itself: its line ends alone would pair a bare CR with a
        # later bare LF ("\rHello\n") and miss the LF.
        if piece.count(b"\n") != piece.count(b"\r\n"):
            piece = piece.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if piece:
            yield piece
    if carry:
        yield carry


def _pieces(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """At most _PIECE bytes at a time: the canonical copies stay small."""
    if first:
        yield from _cut(first)
    for piece in rest:
        yield from _cut(piece)


def _cut(piece: bytes) -> Iterator[bytes]:
    if len(piece) <= _PIECE:
        yield piece
        return
    for at in range(0, len(piece), _PIECE):
        yield piece[at:at + _PIECE]


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except Exception:
        return None
    return tags


def body_requests(values: Iterable[bytes], parsed: dict[int, dict[bytes, bytes]] | None = None
                  ) -> dict[tuple[bytes, str], set[int | None]]:
    """What body hashes the DKIM-Signature values ask for: (canonicalization, hash
    algorithm) -> the l= lengths (None: the whole body). A signature whose tags are
    broken asks for none (verifying it fails before its body hash is looked at). The
    tags parsed go into `parsed` (by position), for verifying not to parse them again."""
    wanted: dict[tuple[bytes, str], set[int | None]] = {}
    for idx, value in enumerate(values):
        sig = _tags(value)
        if sig is not None and parsed is not None:
            parsed[idx] = sig
        if sig is None or sig.get(b"a") not in dkim.HASH_ALGORITHMS:
            continue
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            continue
        length: int | None = None
        if b"l" in sig:
            if not sig[b"l"].isdigit() or len(sig[b"l"]) > 76:
                continue
            length = int(sig[b"l"])
        algorithm = dkim.HASH_ALGORITHMS[sig[b"a"]]().name
        wanted.setdefault((policy.body_algorithm.name, algorithm), set()).add(length)
    return wanted


def body_hashes(body: Iterable[bytes], wanted: dict[tuple[bytes, str], set[int | None]]
                ) -> dict[tuple[bytes, str, int | None], bytes]:
    """The body hashes `wanted` (`body_requests`), in one pass over `body`, which is read
    no further than the longest l= when every signature has one."""
    sinks: dict[tuple[bytes, str], LimitedHash] = {
        key: LimitedHash(key[1], lengths) for key, lengths in wanted.items()}
    canons = []
    for name in {c for c, _ in wanted}:
        mine = [s for (c, _), s in sinks.items() if c == name]
        canons.append((BodyCanon(name == b"relaxed", mine, rfc_last_line=False), mine))
    if canons:
        for piece in body:
            live = [(c, s) for c, s in canons if not all(x.done for x in s)]
            if not live:
                break
            for canon, _ in live:
                canon.update(piece)
        for canon, _ in canons:
            canon.finish()
    out: dict[tuple[bytes, str, int | None], bytes] = {}
    for (c, a), sink in sinks.items():
        sink.finish()
        for length, digest in sink.digests.items():
            out[c, a, length] = digest
    return out


# --- dkimpy's steps, linear on hostile input -------------------------------------------

def _b64_ok(value: bytes) -> bool:
    """re.match(rb"[\\s0-9A-Za-z+/]+[\\s=]*$", value) without its quadratic backtracking."""
    rest = value.rstrip(b"=" + _WS)
    if not rest:
        return value[:1] != b"" and value[0] in _WS
    return not rest.translate(None, _B64)  # nothing left once those are deleted


def _split_h(value: bytes) -> list[bytes]:
    """re.split(rb"\\s*:\\s*", value), lowered, without its quadratic backtracking."""
    parts = value.split(b":")
    last = len(parts) - 1
    out = []
    for i, part in enumerate(parts):
        text = part.lstrip(_WS) if i > 0 else part
        out.append((text.rstrip(_WS) if i < last else text).lower())
    return out


def _validate(sig: dict[bytes, bytes]) -> None:
    """dkimpy's validate_signature_fields for DKIM, its b=/bh= patterns made linear."""
    for field in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if field not in sig:
            raise dkim.ValidationError(f"missing {field!r}=")
    if sig[b"a"] not in dkim.HASH_ALGORITHMS:
        raise dkim.ValidationError(f"unknown signature algorithm: {sig[b'a']!r}")
    plain = dict(sig)
    for tag in (b"b", b"bh"):
        # dkimpy tests the b= value under both names (its pattern check of bh= reads
        # b=); the length test reads each.
        if not _b64_ok(sig[b"b"]) or len(re.sub(rb"\s+", b"", sig[tag])) % 4 != 0:
            raise dkim.ValidationError(f"{tag.decode()}= value is not valid base64 "
                                       f"({sig[tag]!r})")
        plain[tag] = b"AAAA"  # checked: dkimpy's own pass below is then linear
    dkim.validate_signature_fields(plain)


def _select(headers: list[tuple[bytes, bytes]], include: list[bytes], relaxed: bool
            ) -> list[tuple[bytes, bytes]]:
    """dkimpy's select_headers (the last unused instance of each name, bottom up), from
    an index of names instead of a scan of every field for each h= entry. It runs on
    the fields as they are, named as canonicalization would name them (relaxed strips
    the name's trailing white space), so that only the fields selected need to be
    canonicalized."""
    where: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(headers):
        where.setdefault(name.lower().rstrip() if relaxed else name.lower(), []).append(i)
    out = []
    last: dict[bytes, int] = {}
    for h in include:
        positions = where.get(h, [])
        j = bisect.bisect_left(positions, last.get(h, len(headers))) - 1
        if j >= 0:
            out.append(headers[positions[j]])
            last[h] = positions[j]
        else:
            last[h] = 0
    return out


def _canonical(policy: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """policy.canonicalize_headers(headers), without dkimpy's two regular expressions for
    a relaxed value that has no folding, tab or double space to change."""
    if policy.header_algorithm is not dkim.canonicalization.Relaxed:
        return list(policy.canonicalize_headers(headers))
    out = []
    for name, value in headers:
        core = value[:-2] if value.endswith(b"\r\n") else value
        if b"\n" in core or b"\t" in core or b"  " in core:
            out.extend(policy.canonicalize_headers([(name, value)]))
        else:
            out.append((name.lower().rstrip(), core.strip() + b"\r\n"))
    return out


def _hash_headers(hasher: Any, policy: Any, headers: list[tuple[bytes, bytes]],
                  include: list[bytes], sig_header: tuple[bytes, bytes]
                  ) -> list[tuple[bytes, bytes]]:
    """dkimpy's hash_headers (on fields canonicalized beforehand), with `_select` on the
    fields as they are and only those selected canonicalized."""
    relaxed = policy.header_algorithm is dkim.canonicalization.Relaxed
    signed = _canonical(policy, _select(headers, include, relaxed))
    own = policy.canonicalize_headers([(sig_header[0], _BTAG.sub(b"\\1", sig_header[1]))])
    for x, y in signed + [(x, y.rstrip()) for x, y in own]:
        hasher.update(x)
        hasher.update(b":")
        hasher.update(y)
    return signed


@functools.lru_cache(maxsize=256)
def _key(record: bytes) -> tuple[Any, int, bytes | None, bool, rsa.RSAPublicKey | None]:
    """dkimpy's reading of a key record (parsed once per record, not per message), and
    the RSA key as OpenSSL's when OpenSSL takes it. Raises as dkimpy's evaluate_pk."""
    pk, bits, ktag, tlsrpt = dkim.evaluate_pk(b"", record)
    native = None
    if ktag == b"rsa":
        n, e = pk["modulus"], pk["publicExponent"]
        if n.bit_length() > MAX_RSA_BITS:
            raise dkim.KeyFormatError(f"RSA key over {MAX_RSA_BITS} bits")
        if n.bit_length() > 3072 and e.bit_length() > 64:
            raise dkim.KeyFormatError("RSA key over 3072 bits with an exponent over 64 bits")
        try:
            native = rsa.RSAPublicNumbers(e, n).public_key()
        except Exception:  # (an even modulus, e < 3, ...): dkimpy's arithmetic decides
            native = None
    return pk, bits, ktag, tlsrpt, native


_DIGESTS = {"sha256": (hashes.SHA256(), 19 + 32), "sha1": (hashes.SHA1(), 15 + 20)}


def _rsa_verify(h: Any, signature: bytes, pk: Any, native: rsa.RSAPublicKey | None
                ) -> bool:
    """dkimpy's RSASSA_PKCS1_v1_5_verify, by OpenSSL when OpenSSL would not be stricter
    than dkimpy's arithmetic (exact length, below the modulus, room for the digest)."""
    n = pk["modulus"]
    size = max((n.bit_length() + 7) // 8, 1)
    known = _DIGESTS.get(h.name)
    if (native is not None and known is not None and len(signature) == size
            and known[1] + 11 <= size and int.from_bytes(signature, "big") < n):
        try:
            native.verify(signature, h.digest(), padding.PKCS1v15(),
                          utils.Prehashed(known[0]))
            return True
        except InvalidSignature:
            return False
        except Exception:  # e.g. a digest OpenSSL is set to refuse: dkimpy's way
            pass
    return bool(dkim.crypto.RSASSA_PKCS1_v1_5_verify(h, signature, pk))


class Verifier(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM over the header section alone, verifying with body hashes computed
    beforehand (`hash_bodies`) and keys parsed once (`_key`)."""

    def __init__(self, header: bytes, logger: logging.Logger, minkey: int) -> None:
        # The header section and an empty line: dkimpy parses the fields as it would in
        # the whole message (the body is never given to it).
        end = b"\r\n" if header and not header.endswith(b"\n") else b""
        super().__init__(header + end + b"\r\n", logger=logger, minkey=minkey)
        self.bodies: dict[tuple[bytes, str, int | None], bytes] = {}
        self.native: rsa.RSAPublicKey | None = None
        self.sig_values = [v for n, v in self.headers if n.lower() == b"dkim-signature"]
        self.parsed: dict[int, dict[bytes, bytes]] = {}  # tags, by position

    def hash_bodies(self, body: Iterable[bytes], count: int) -> None:
        """The body hashes the first `count` signatures ask for, in one pass."""
        wanted = body_requests(self.sig_values[:count], self.parsed)
        self.bodies = body_hashes(body, wanted)

    def verify_headerprep(self, idx: int = 0) -> Any:
        sigheaders = [(x, y) for x, y in self.headers if x.lower() == b"dkim-signature"]
        if len(sigheaders) <= idx:
            return False
        sig = self.parsed.get(idx)
        if sig is None:
            try:
                sig = dkim.util.parse_tag_value(sigheaders[idx][1])
            except dkim.util.InvalidTagValueList as e:
                raise dkim.MessageFormatError(e) from e
        self.signature_fields = sig
        _validate(sig)
        self.domain = sig[b"d"]
        self.selector = sig[b"s"]
        include_headers = _split_h(sig[b"h"])
        self.include_headers = tuple(include_headers)
        return sig, include_headers, sigheaders

    def verify_sig(self, sig: Any, include_headers: Any, sig_header: Any, dnsfunc: Any
                   ) -> Any:
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            record = dnsfunc(name, timeout=self.timeout)
            if not record:
                dkim.evaluate_pk(name, record)  # raises dkimpy's "missing public key"
            if isinstance(record, str):
                record = record.encode("ascii")
            self.pk, self.keysize, self.ktag, self.seqtlsrpt, self.native = _key(record)
        except dkim.KeyFormatError as e:
            self.logger.error(str(e))
            return False
        except binascii.Error as e:
            self.logger.error(f"KeyFormatError: {e}")
            return False
        except dkim.DnsTimeoutError as e:
            self.logger.error(f"DnsTimeoutError: Domain: {sig[b'd']!r} Selector: "
                              f"{sig[b's']!r} Error message: {e}")
            return False
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)

    def verify_sig_process(self, sig: Any, include_headers: Any, sig_header: Any,
                           dnsfunc: Any) -> Any:
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as e:
            raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]!r}") from e
        hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]
        if b"bh" in sig:
            length = int(sig[b"l"]) if b"l" in sig else None
            key = (policy.body_algorithm.name, hasher().name, length)
            if key not in self.bodies:
                raise dkim.InternalError("the body hash was not computed")
            bodyhash = self.bodies[key]
            try:
                bh = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except TypeError as e:
                raise dkim.MessageFormatError(str(e)) from e
            if bodyhash != bh:
                raise dkim.ValidationError(f"body hash mismatch (got "
                                           f"{base64.b64encode(bodyhash)!r}, expected "
                                           f"{sig[b'bh']!r})")
        if b"from" in include_headers:
            include_headers.append(b"from")
        h = hasher()
        self.signed_headers = _hash_headers(h, policy, self.headers, include_headers,
                                            sig_header)
        signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
        if self.ktag == b"rsa":
            try:
                res = _rsa_verify(h, signature, self.pk, self.native)
                if res and self.keysize < self.minkey:
                    raise dkim.KeyFormatError(f"public key too small: {self.keysize}")
                return res
            except (TypeError, dkim.crypto.DigestTooLargeError) as e:
                raise dkim.KeyFormatError(f"digest too large for modulus: {e}") from e
        if self.ktag == b"ed25519":
            try:
                self.pk.verify(h.digest(), signature)
                return True
            except nacl.exceptions.BadSignatureError:
                return False
        raise dkim.UnknownKeyTypeError(self.ktag)
