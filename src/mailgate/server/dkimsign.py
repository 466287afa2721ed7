"""DKIM signing (RFC 6376, RFC 8463) at queue time, with dkimpy.

A message is signed once, when it is queued, so that every retry and every destination
sends the same bytes. The server signs what a client it answers for sends
(authenticated, or in [relay] networks) when the From: domain, or a parent of it, has
keys in [dkim] (`config.dkim`, `keys_for`); a list of keys gives one signature each
(Ed25519 beside RSA, RFC 8463). Mail from strangers is never signed, whatever its From:.

What is signed: the header fields RFC 6376 5.4.1 recommends that the message has (From,
Subject, Date, To, Cc, Message-ID, MIME fields, List-*, ...), From once more than it
appears (oversigned, 5.4.2: no second From: can be added without breaking the
signature), never Received, Return-Path or Bcc; relaxed/relaxed canonicalization (3.4),
the body whole (no l=).

The message is not held in memory twice: the content streams from the spool (a file
past 256 KiB) through the body canonicalization and hash here, piece by piece, and only
the header section is kept (at most `MAX_HEADER` bytes). dkimpy then canonicalizes and
hashes the header fields and writes the DKIM-Signature field; its own `sign` would want
the whole message in one bytes object. The RSA operation itself is OpenSSL's (`_RSA`),
Ed25519 is PyNaCl's, as dkimpy uses it. `BodyHash` (`dkimbody.py`, which verification
shares) follows dkimpy's canonicalization functions line by line; the tests check it
against dkimpy's whole-body result and against OpenDKIM.

Everything signing needs is imported with this module, which `serve` loads before it
drops root: the user it becomes may not be able to read root's Python.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import dkim
import dkim.canonicalization
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from mailgate.config.dkim import DKIMKey, keys_for
from mailgate.server.dkimbody import BodyHash

__all__ = ["MAX_HEADER", "SigningError", "from_domain", "sign", "sign_content",
           "sign_spool", "signatures"]

log = logging.getLogger("mailgate.dkim")

MAX_HEADER = 1024 * 1024  # bytes of header section kept to sign; more is not signed
_CANON = (b"relaxed", b"relaxed")


class SigningError(Exception):
    """The message cannot be signed (no From:, a header section past MAX_HEADER, ...)."""


def _split_header(chunks: Iterable[bytes]) -> tuple[bytes, bytes, Iterator[bytes]]:
    """(the header section up to and with its last CRLF, the first piece of the body,
    the rest of the pieces); SigningError past MAX_HEADER."""
    header = bytearray()
    it = iter(chunks)
    for piece in it:
        searched = max(len(header) - 3, 0)  # what came before holds no empty line
        header += piece
        # The empty line that ends the header section: "\r\n\r\n" (a header section
        # starts with a field), or an empty line first (no header section at all).
        end = 0 if header.startswith(b"\r\n") else header.find(b"\r\n\r\n", searched)
        if end >= 0:
            cut = end + 2 if end else 0
            if cut > MAX_HEADER:
                break
            first = bytes(header[cut + 2:])
            del header[cut:]
            return bytes(header), first, it
        if len(header) > MAX_HEADER:
            break
    else:  # no body: the header section alone
        if not header.endswith(b"\r\n"):
            header += b"\r\n"
        return bytes(header), b"", it
    raise SigningError(f"the header section is over {MAX_HEADER} bytes")


def _body_hash(first: bytes, rest: Iterator[bytes]) -> bytes:
    body = BodyHash(relaxed=_CANON[1] == b"relaxed")
    body.update(first)
    for piece in rest:
        body.update(piece)
    return body.digest()


def from_domain(header: bytes) -> str | None:
    """The domain of the (first) From: address, lower case; None without one."""
    for name, value in dkim.rfc822_parse(header + b"\r\n")[0]:
        if name.lower().strip() != b"from":
            continue
        # The first 4 KiB are plenty for the first address, and keep the parser's work
        # bounded whatever a client wrote.
        text = value[:4096].decode("utf-8", "surrogateescape")
        for _, address in email.utils.getaddresses([text]):
            local, at, domain = address.rpartition("@")
            if at and local and domain:
                return domain.strip().lower().rstrip(".")
        return None
    return None


class _RSA:
    """An RSA key that signs a SHA-256 digest with OpenSSL (the `cryptography` package).

    dkimpy's own RSA is pure Python: about 7 ms of CPU per signature with a 2048-bit key,
    holding the GIL, against well under 1 ms here (bench/dkim_sign.py). It is handed to
    dkimpy's header signing the way an Ed25519 key is: `sign(digest).signature`. One
    object serves every thread that signs with the key: `sign` keeps no state."""

    __slots__ = ("_key",)

    def __init__(self, pem: bytes) -> None:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningError("the rsa-sha256 key is not an RSA key")
        self._key = key

    def sign(self, digest: bytes) -> _Signed:
        return _Signed(self._key.sign(digest, padding.PKCS1v15(),
                                      utils.Prehashed(hashes.SHA256())))


class _Signed:
    """What dkimpy reads a signature from (as from PyNaCl's SignedMessage)."""

    __slots__ = ("signature",)

    def __init__(self, signature: bytes) -> None:
        self.signature = signature


@functools.lru_cache(maxsize=64)
def _private_key(algorithm: str, private: bytes) -> Any:
    """The key object for a DKIMKey's private key, parsed once (parsing an RSA key costs
    more than signing with it)."""
    if algorithm == "rsa-sha256":
        return _RSA(private)
    return nacl.signing.SigningKey(private, encoder=nacl.encoding.Base64Encoder)


class _Signer(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM, signing with a body hash computed beforehand (`BodyHash`)."""

    def sign_with(self, key: DKIMKey, body_hash: bytes, now: int) -> bytes:
        algorithm = key.algorithm.encode()
        self.hasher = dkim.HASH_ALGORITHMS[algorithm]  # SHA-256 for both
        # dkimpy's gen_header signs with `pk.sign(digest).signature` on its Ed25519 branch;
        # our RSA key (OpenSSL) takes that branch too. The a= tag says what it is.
        self.signature_algorithm = b"ed25519-sha256"
        pk = _private_key(key.algorithm, key.private)
        include = tuple(x.lower() for x in self.default_sign_headers())
        if b"from" not in include:
            raise SigningError("the message has no From: field (RFC 5322 3.6 requires one)")
        policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"/".join(_CANON))
        fields = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", policy.to_c_value()),
            (b"d", key.domain.encode()),
            (b"s", key.selector.encode()),
            (b"t", str(now).encode()),
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hash)),
            (b"b", b"0" * 60),  # b= folds onto a line of its own (dkimpy's way)
        ]
        value: bytes = self.gen_header(fields, include, policy, b"DKIM-Signature", pk)
        return b"DKIM-Signature: " + value


def sign(chunks: Iterable[bytes], keys: Sequence[DKIMKey], *, now: float | None = None
         ) -> bytes:
    """DKIM-Signature fields, CRLF-ended, one per key, to put at the top of the message
    whose content (header section, empty line, body) `chunks` yields. SigningError
    when it cannot be signed."""
    header, first, rest = _split_header(chunks)
    return _sign_header(header, _body_hash(first, rest), keys, now)


def _sign_header(header: bytes, body_hash: bytes, keys: Sequence[DKIMKey],
                 now: float | None) -> bytes:
    signer = _Signer(header + b"\r\n", logger=log, linesep=b"\r\n")
    stamp = int(time.time() if now is None else now)
    out = []
    for key in keys:
        try:
            out.append(signer.sign_with(key, body_hash, stamp))
        except dkim.DKIMException as exc:
            raise SigningError(f"dkimpy: {exc}") from exc
    return b"".join(out)


def signatures(chunks: Iterable[bytes], table: Mapping[str, tuple[DKIMKey, ...]],
               *, now: float | None = None) -> tuple[bytes, str | None]:
    """The signatures for a message from a client mailgate answers for: one per key of
    its From: domain (or of a parent domain); nothing when [dkim] has none, and then the
    body is not read. Returns (the fields, the signing domain)."""
    header, first, rest = _split_header(chunks)
    domain = from_domain(header)
    keys = keys_for(table, domain) if domain is not None else ()
    if not keys:
        return b"", None
    return _sign_header(header, _body_hash(first, rest), keys, now), keys[0].domain


class _Spool(Protocol):
    head: bytes

    @property
    def spilled(self) -> bool: ...

    def chunks(self, size: int = ...) -> Iterator[bytes]: ...



async def sign_spool(spool: _Spool, table: Mapping[str, tuple[DKIMKey, ...]], qid: str
                     ) -> None:
    """Sign a finished spool in place: the signatures go at the top of its head. A
    message that cannot be signed is logged and goes unsigned (it was accepted: refusing
    it now would be worse than sending it as every MTA without DKIM does).

    A message still in memory (the spool's first 256 KiB: most mail) is signed on the
    event loop: half a millisecond of CPU, less than a hand-off to a thread costs, and
    under the GIL a thread would hold the loop up as long (bench/results: acceptance
    with signing on). A bigger one is read back from its file and hashed in a thread."""
    try:
        if not spool.spilled:
            fields, domain = signatures(spool.chunks(), table)
        else:
            fields, domain = await asyncio.to_thread(signatures, spool.chunks(), table)
    except (SigningError, OSError) as exc:
        log.warning("%s: not DKIM-signed: %s", qid, exc)
        return
    if fields:
        spool.head = fields + spool.head
        selectors = ", ".join(k.selector for k in keys_for(table, domain or ""))
        log.info("%s: DKIM-Signature added (d=%s, s=%s)", qid, domain, selectors)


async def sign_content(content: bytes, table: Mapping[str, tuple[DKIMKey, ...]], what: str
                       ) -> bytes:
    """`content` (a message mailgate wrote itself: a bounce, a delay notice) with the
    signatures of its From: domain's keys on top; as it is when there are none or they
    cannot be made (logged)."""
    try:
        fields, domain = await asyncio.to_thread(signatures, [content], table)
    except SigningError as exc:
        log.warning("%s: not DKIM-signed: %s", what, exc)
        return content
    if fields:
        log.info("%s: DKIM-Signature added (d=%s)", what, domain)
    return fields + content
