"""The cost of DKIM-signing one message: mailgate's signer beside its peers, in one run.

Run by hand: `python3 bench/dkim_sign.py [-n 200]`. For each key (RSA 2048, Ed25519) and
message (2 KiB and 100 KiB of text, 100 KiB of base64 as an attachment is), times signing
one message, as CPU time per message (median of `n`; the machine is shared, CPU time is
the steady figure):

- mailgate: `mailgate.server.dkimsign.sign`, fed the message in 64 KiB pieces as the
  spool gives it (body hash streamed, header signed by dkimpy);
- dkimpy: `dkim.sign` on the whole message in memory (the library's own path);
- OpenDKIM: libopendkim's signer (what the OpenDKIM milter runs for Postfix), through
  ctypes; each of its signatures is checked with dkimpy before it is timed, and a key
  kind it cannot sign is left out.

Ratios are mailgate's time over the peer's (below 1: mailgate is faster). Results in
bench/results/dkim-sign-DATE.md.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.metadata
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dkim  # noqa: E402

from mailgate.config.dkim import DKIMKey, generate_key, parse_key, public_record  # noqa: E402
from mailgate.server.dkimsign import sign  # noqa: E402

SIZES = {"2 KiB": 2 * 1024, "100 KiB": 100 * 1024, "100 KiB base64": -100 * 1024}


def message(size: int) -> bytes:
    """A text message of `size` bytes; negative: that size of base64 (an attachment)."""
    if size < 0:
        import base64
        import random

        data = random.Random(1).randbytes(-size * 3 // 4)
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
        return message(0).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    head = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
            b"Subject: a message to sign\r\nDate: Sat, 05 Dec 2026 06:00:00 +0000\r\n"
            b"Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog,  again and again.\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n" if body else head


def key(algorithm: str) -> DKIMKey:
    k = parse_key(generate_key(algorithm), algorithm, Path("bench"))  # type: ignore[arg-type]
    return DKIMKey("example.org", "bench", k.algorithm, k.key_file, k.private, k.public,
                   k.bits)


def cpu_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm
    times = []
    for _ in range(n):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times)


def verifies(signed: bytes, k: DKIMKey) -> bool:
    record = public_record(k).encode()
    try:
        return bool(dkim.verify(signed, dnsfunc=lambda _name, timeout=5: record))
    except dkim.DKIMException:
        return False


class OpenDKIM:
    """libopendkim's signer; None of `make` when the library is missing."""

    ALGORITHMS: ClassVar[dict[str, int]] = {"rsa-sha256": 1, "ed25519-sha256": 2}  # dkim.h

    def __init__(self) -> None:
        name = ctypes.util.find_library("opendkim") or "libopendkim.so.11"
        lib = ctypes.CDLL(name)
        vp = ctypes.c_void_p
        lib.dkim_init.restype = vp
        lib.dkim_init.argtypes = [vp, vp]
        lib.dkim_sign.restype = vp
        lib.dkim_sign.argtypes = [vp, ctypes.c_char_p, vp, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_int)]
        lib.dkim_chunk.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t]
        lib.dkim_eom.argtypes = [vp, ctypes.POINTER(ctypes.c_bool)]
        lib.dkim_getsighdr_d.argtypes = [vp, ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_char_p),
                                         ctypes.POINTER(ctypes.c_size_t)]
        lib.dkim_free.argtypes = [vp]
        self.lib = lib
        self.handle = lib.dkim_init(None, None)

    @classmethod
    def make(cls) -> OpenDKIM | None:
        try:
            return cls()
        except OSError:
            return None

    def sign(self, msg: bytes, k: DKIMKey) -> bytes:
        lib = self.lib
        status = ctypes.c_int()
        d = lib.dkim_sign(self.handle, b"bench", None, k.private, k.selector.encode(),
                          k.domain.encode(), 1, 1, self.ALGORITHMS[k.algorithm], -1,
                          ctypes.byref(status))
        if not d:
            raise RuntimeError(f"dkim_sign: status {status.value}")
        try:
            for start in range(0, len(msg), 65536):
                piece = msg[start:start + 65536]
                lib.dkim_chunk(d, piece, len(piece))
            lib.dkim_chunk(d, None, 0)
            if lib.dkim_eom(d, None) != 0:
                raise RuntimeError("dkim_eom failed")
            buf, length = ctypes.c_char_p(), ctypes.c_size_t()
            if lib.dkim_getsighdr_d(d, len("DKIM-Signature: "), ctypes.byref(buf),
                                    ctypes.byref(length)) != 0:
                raise RuntimeError("dkim_getsighdr_d failed")
            value = ctypes.string_at(buf, length.value)
            return b"DKIM-Signature: " + value + b"\r\n"
        finally:
            lib.dkim_free(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="messages per measurement")
    args = parser.parse_args()
    opendkim = OpenDKIM.make()
    keys = {"RSA 2048": key("rsa-sha256"), "Ed25519": key("ed25519-sha256")}
    rows = []
    for key_name, k in keys.items():
        for size_name, size in SIZES.items():
            msg = message(size)
            pieces = [msg[i:i + 65536] for i in range(0, len(msg), 65536)]
            assert verifies(sign(pieces, [k]) + msg, k), "mailgate's signature must verify"
            ours = cpu_ms(lambda p=pieces, k=k: sign(p, [k]), args.n)
            peer_dkimpy = cpu_ms(lambda m=msg, k=k: dkim.sign(
                m, b"bench", b"example.org", k.private,
                signature_algorithm=k.algorithm.encode(),
                canonicalize=(b"relaxed", b"relaxed")), args.n)
            peer_od: float | None = None
            if opendkim is not None:
                try:
                    ok = verifies(opendkim.sign(msg, k) + msg, k)
                except RuntimeError:
                    ok = False
                if ok:
                    peer_od = cpu_ms(lambda m=msg, k=k: opendkim.sign(m, k), args.n)
            rows.append((key_name, size_name, ours, peer_dkimpy, peer_od))
    dual = {}
    for size_name, size in SIZES.items():
        msg = message(size)
        dual[size_name] = cpu_ms(lambda m=msg: sign([m], list(keys.values())), args.n)

    lines = [
        f"# DKIM signing cost per message ({time.strftime('%Y-%m-%d')})",
        "",
        f"`python3 bench/dkim_sign.py -n {args.n}` on {platform.machine()}, Python "
        f"{platform.python_version()}, dkimpy {importlib.metadata.version('dkimpy')}; CPU ms "
        "per message, median. Ratio: mailgate / peer (below 1: mailgate is faster).",
        "",
        "| key | message | mailgate ms | dkimpy `dkim.sign` ms | ratio | "
        "OpenDKIM (libopendkim) ms | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key_name, size_name, ours, dp, od in rows:
        od_text = f"{od:.3f} | {ours / od:.2f}" if od else "n/a | n/a"
        lines.append(f"| {key_name} | {size_name} | {ours:.3f} | {dp:.3f} | {ours / dp:.2f} | "
                     f"{od_text} |")
    lines += ["", "Dual signing (RSA 2048 + Ed25519, one body hash shared): "
              + ", ".join(f"{s}: {ms:.3f} ms" for s, ms in dual.items()), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
