"""DKIM body canonicalization (RFC 6376 3.4.3 simple, 3.4.4 relaxed), streamed.

Shared by signing (`dkimsign.py`) and verification (`authcheck/dkimverify.py`): the body
is fed in pieces of any size, as they come from the spool, and never held whole. Lines
are canonicalized as whole lines come; empty lines are held back until a line with
content follows (trailing ones are ignored). Where dkimpy runs two regular expressions
over the whole body, this looks for whitespace to change first (three `in` scans, in C)
and only then runs dkimpy's own functions on those lines: base64 parts and most text
have none.

`BodyCanon` hands the canonical bytes to sinks: `BodyHash` (SHA-256 of it all, for
signing) or `LimitedHash` (one hash algorithm, any number of `l=` lengths, for
verification: one pass, whatever the number of signatures). The tests compare both
with dkimpy's whole-body functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import dkim.canonicalization

__all__ = ["BodyCanon", "BodyHash", "LimitedHash"]

_strip = dkim.canonicalization.strip_trailing_whitespace
_compress = dkim.canonicalization.compress_whitespace


class BodyCanon:
    """The canonical form of a body fed in pieces, handed to `sinks` as it is made.

    `rfc_last_line`: a last line without CRLF gets one and is then canonicalized as any
    line (RFC 6376 3.4.4). dkimpy adds the CRLF after canonicalizing, so under relaxed
    such a line keeps its trailing whitespace (compressed to one space); the verifier
    does as dkimpy does (False), so that its verdicts are dkimpy's. SMTP's DATA always
    ends the content with CRLF; only BDAT can leave it without."""

    __slots__ = ("_empty", "_partial", "_relaxed", "_rfc_last", "_seen", "_sinks")

    def __init__(self, relaxed: bool, sinks: Iterable[Callable[[bytes], object]],
                 rfc_last_line: bool = True) -> None:
        self._relaxed = relaxed
        self._rfc_last = rfc_last_line
        self._sinks = tuple(sinks)
        # The end of what came so far, after its last CRLF (appended to in place: a
        # line that spans many pieces, which BDAT allows, costs no quadratic copying).
        self._partial = bytearray()
        self._empty = 0  # empty lines held back
        self._seen = False  # a line with content was emitted

    def update(self, data: bytes) -> None:
        if data[:1] == b"\n" and self._partial[-1:] == b"\r":  # a CRLF across two pieces
            line = bytes(self._partial) + b"\n"
            self._partial.clear()
            self._lines(line)
            data = data[1:]
        cut = data.rfind(b"\r\n")
        if cut < 0:
            self._partial += data
            return
        lines = bytes(self._partial) + data[:cut + 2] if self._partial else data[:cut + 2]
        self._partial = bytearray(data[cut + 2:])
        self._lines(lines)

    def _emit(self, data: bytes) -> None:
        for sink in self._sinks:
            sink(data)

    def _lines(self, lines: bytes, last: bool = False) -> None:
        """Whole lines (ending in CRLF): canonicalized, trailing empty ones held back."""
        if self._relaxed and (b"\t" in lines or (b" " in lines and (
                b"  " in lines or b" \r\n" in lines))):
            # (only then is there whitespace to strip or compress: a few scans cost less
            # than two regex passes; one-byte scans are the fastest, and base64 has none)
            lines = _compress(lines) if last else _compress(_strip(lines))
        end = len(lines)
        while end >= 2 and lines[end - 2:end] == b"\r\n" and (
                end == 2 or lines[end - 4:end - 2] == b"\r\n"):
            end -= 2
        if end == 0:
            self._empty += len(lines) // 2
            return
        if self._empty:
            self._emit(b"\r\n" * self._empty)
        self._emit(lines[:end])
        self._seen = True
        self._empty = (len(lines) - end) // 2

    def finish(self) -> None:
        """The end of the body: the last line, or the empty body's canonical form."""
        if self._partial:  # a last line without CRLF: it gets one (RFC 6376 3.4.3, 3.4.4)
            partial = bytes(self._partial)
            self._partial.clear()
            if self._rfc_last:
                self._lines(partial + b"\r\n")
            else:  # dkimpy: compressed, not stripped, then the CRLF (it holds none)
                self._lines(partial, last=True)
                self._emit(b"\r\n")
        if not self._seen and not self._relaxed:
            self._seen = True
            self._emit(b"\r\n")  # simple: an empty body is one CRLF


class BodyHash:
    """SHA-256 of a body canonicalized simple or relaxed, fed in pieces of any size."""

    __slots__ = ("_canon", "_hash")

    def __init__(self, relaxed: bool = True) -> None:
        self._hash = hashlib.sha256()
        self._canon = BodyCanon(relaxed, (self._hash.update,))

    def update(self, data: bytes) -> None:
        self._canon.update(data)

    def digest(self) -> bytes:
        self._canon.finish()
        return self._hash.digest()


class LimitedHash:
    """One hash algorithm over one canonical body, for several lengths at once: each
    `l=` value of the signatures that use it, and None for the whole body (no l=). A
    length past the end of the body is the whole body, as in dkimpy (a slice).
    `digests` holds them once `finish` was called; `done` is true as soon as no more
    bytes are wanted (only lengths, all reached)."""

    __slots__ = ("_hash", "_n", "_pending", "_whole", "digests")

    def __init__(self, algorithm: str, lengths: Iterable[int | None]) -> None:
        self._hash = hashlib.new(algorithm)
        wanted = set(lengths)
        self._whole = None in wanted
        self._pending = sorted((x for x in wanted if x is not None), reverse=True)
        self._n = 0
        self.digests: dict[int | None, bytes] = {}

    @property
    def done(self) -> bool:
        return not self._whole and not self._pending

    def __call__(self, data: bytes) -> None:
        pending = self._pending
        while pending and self._n + len(data) >= pending[-1]:
            take = pending[-1] - self._n
            self._hash.update(data[:take])
            self._n += take
            data = data[take:]
            self.digests[pending.pop()] = self._hash.copy().digest()
        if self._whole or pending:
            self._hash.update(data)
            self._n += len(data)

    def finish(self) -> None:
        digest = self._hash.digest()
        while self._pending:
            self.digests[self._pending.pop()] = digest
        if self._whole:
            self.digests[None] = digest
