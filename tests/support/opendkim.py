"""OpenDKIM's verifier, for checking mailgate's signatures with an independent
implementation: libopendkim (Debian's `libopendkim11`, the library the OpenDKIM milter
is built on) called through ctypes.

Why not the command-line tools: `opendkim-testmsg` on Debian 12 verifies only against
live DNS (no way to name a test nameserver or key file), and `opendkim-testkey` checks
a key against DNS, not a message. The library takes its keys from a file instead
(`DKIM_QUERY_FILE`, OpenDKIM's own test mechanism): one line per key, the DNS name
(`selector._domainkey.domain`) and the record's text.

`verify(message, keys)` returns one `Verdict` per DKIM-Signature field. `need_opendkim()`
skips locally naming the package when the library is missing, and fails under CI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.needs import need

__all__ = ["Verdict", "need_opendkim", "verify"]

# From libopendkim's dkim.h (OpenDKIM 2.11).
_OP_SETOPT = 1
_OPTS_QUERYMETHOD = 6
_OPTS_QUERYINFO = 7
_QUERY_FILE = 1
_SIGFLAG_PROCESSED = 0x02
_SIGFLAG_PASSED = 0x04
_SIGBH_MATCH = 0


@dataclass(frozen=True)
class Verdict:
    domain: str
    selector: str
    passed: bool  # the header signature checks out with the key and bh= with the body
    body_hash_ok: bool  # bh= matches the body (OpenDKIM reports it apart)
    error: int  # DKIM_SIGERROR_*: 0 none, 28 bad signature, 22 no key, ...


def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("opendkim") or "libopendkim.so.11"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.dkim_init.restype = vp
    lib.dkim_init.argtypes = [vp, vp]
    lib.dkim_options.argtypes = [vp, i, i, vp, sz]
    lib.dkim_verify.restype = vp
    lib.dkim_verify.argtypes = [vp, ctypes.c_char_p, vp, ctypes.POINTER(i)]
    lib.dkim_chunk.argtypes = [vp, ctypes.c_char_p, sz]
    lib.dkim_eom.argtypes = [vp, ctypes.POINTER(ctypes.c_bool)]
    lib.dkim_getsiglist.argtypes = [vp, ctypes.POINTER(ctypes.POINTER(vp)), ctypes.POINTER(i)]
    lib.dkim_sig_getflags.restype = ctypes.c_uint
    lib.dkim_sig_getflags.argtypes = [vp]
    lib.dkim_sig_getbh.argtypes = [vp]
    lib.dkim_sig_geterror.argtypes = [vp]
    lib.dkim_sig_getdomain.restype = ctypes.c_char_p
    lib.dkim_sig_getdomain.argtypes = [vp]
    lib.dkim_sig_getselector.restype = ctypes.c_char_p
    lib.dkim_sig_getselector.argtypes = [vp]
    lib.dkim_free.argtypes = [vp]
    lib.dkim_close.argtypes = [vp]
    return lib


def need_opendkim() -> ctypes.CDLL:
    lib = _library()
    need(lib is not None, "libopendkim (Debian package libopendkim11)")
    assert lib is not None
    return lib


def verify(message: bytes, keys: Mapping[str, str]) -> list[Verdict]:
    """Verify every signature of `message` (CRLF line ends) with OpenDKIM; `keys` maps
    `selector._domainkey.domain` to the TXT record's text."""
    lib = need_opendkim()
    with tempfile.TemporaryDirectory() as tmp:
        keyfile = Path(tmp) / "keys"
        keyfile.write_text("".join(f"{name} {text}\n" for name, text in keys.items()))
        handle = lib.dkim_init(None, None)
        assert handle, "dkim_init failed"
        try:
            method = ctypes.c_int(_QUERY_FILE)
            assert lib.dkim_options(handle, _OP_SETOPT, _OPTS_QUERYMETHOD,
                                    ctypes.byref(method), ctypes.sizeof(method)) == 0
            path = ctypes.create_string_buffer(str(keyfile).encode())
            assert lib.dkim_options(handle, _OP_SETOPT, _OPTS_QUERYINFO, path,
                                    len(path.value)) == 0
            return _verify(lib, handle, message)
        finally:
            lib.dkim_close(handle)


def _verify(lib: ctypes.CDLL, handle: int, message: bytes) -> list[Verdict]:
    status = ctypes.c_int()
    dkim = lib.dkim_verify(handle, b"mailgate-test", None, ctypes.byref(status))
    assert dkim and status.value == 0, f"dkim_verify: status {status.value}"
    try:
        for start in range(0, len(message), 65536):  # in pieces, as a milter gets it
            piece = message[start:start + 65536]
            assert lib.dkim_chunk(dkim, piece, len(piece)) == 0
        assert lib.dkim_chunk(dkim, None, 0) == 0
        testkey = ctypes.c_bool()
        lib.dkim_eom(dkim, ctypes.byref(testkey))  # its status is the first signature's
        sigs = ctypes.POINTER(ctypes.c_void_p)()
        count = ctypes.c_int()
        if lib.dkim_getsiglist(dkim, ctypes.byref(sigs), ctypes.byref(count)) != 0:
            return []
        out = []
        for index in range(count.value):
            sig = sigs[index]
            flags = lib.dkim_sig_getflags(sig)
            body_ok = lib.dkim_sig_getbh(sig) == _SIGBH_MATCH
            out.append(Verdict(
                domain=(lib.dkim_sig_getdomain(sig) or b"").decode(),
                selector=(lib.dkim_sig_getselector(sig) or b"").decode(),
                passed=bool(flags & _SIGFLAG_PROCESSED and flags & _SIGFLAG_PASSED) and body_ok,
                body_hash_ok=body_ok,
                error=lib.dkim_sig_geterror(sig),
            ))
        return out
    finally:
        lib.dkim_free(dkim)
