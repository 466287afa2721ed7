"""Build the seed corpora under bench/fuzz/corpus/ from the dialog files and a few lines.

    PYTHONPATH=src python3 bench/fuzz/make_corpus.py

Seeds are small and realistic: the client side of each tests/dialogs/*.dialog (for the
session), the paths and parameters in them (address, params), the DATA content in them
(framing), their server side grouped into replies (reply), and server transcripts for
the client. File names are content hashes, so running it again adds nothing twice; it
never deletes, so inputs added by hand stay.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dialog import Expect, Send, parse_dialog  # noqa: E402

CORPUS = HERE / "corpus"


def _session_flags(options: dict[str, str]) -> int:
    on = {k for k, v in options.items() if v.lower() in ("true", "yes", "1")}
    flags = 0
    flags |= 1 if "starttls" in on else 0
    flags |= 2 if "auth" in on else 0
    flags |= 4 if options.get("auth_requires_tls", "").lower() == "false" else 0
    flags |= 8 if options.get("bare_newlines") == "reject" else 0
    flags |= 16 if options.get("chunking", "").lower() == "false" else 0
    flags |= 32 if options.get("smtputf8", "").lower() == "false" else 0
    flags |= 64 if options.get("dsn", "").lower() == "false" else 0
    flags |= 128 if "tls_active" in on else 0
    return flags


def _save(target: str, data: bytes, seeds: dict[str, set[bytes]]) -> None:
    seeds.setdefault(target, set()).add(data)


_PATH_RE = re.compile(rb"^(?:MAIL FROM|RCPT TO):\s*(\S+)\s*(.*)$", re.IGNORECASE)


def from_dialogs(seeds: dict[str, set[bytes]]) -> None:
    for path in sorted((ROOT / "tests" / "dialogs").glob("*.dialog")):
        dialog = parse_dialog(path.read_text(encoding="utf-8"), path.name)
        sent = b"".join(s.data for s in dialog.steps if isinstance(s, Send))
        flags = _session_flags(dialog.options)
        _save("session", bytes([flags, 0, 0]) + sent, seeds)
        # The server side, as replies (for the reply parser and, whole, for the client).
        replies: list[list[str]] = []
        current: list[str] = []
        for step in dialog.steps:
            if isinstance(step, Expect):
                current.append(step.text + ("x" if step.prefix else ""))
                if len(step.text) < 4 or step.text[3] != "-":
                    replies.append(current)
                    current = []
        for reply in replies:
            _save("reply", b"\x00" + "\r\n".join(reply).encode() + b"\r\n", seeds)
        server = "".join("\r\n".join(r) + "\r\n" for r in replies).encode()
        _save("client", b"\x01\x00\x00" + server, seeds)
        for line in sent.split(b"\r\n"):
            m = _PATH_RE.match(line)
            if m:
                _save("address", b"\x07" + m.group(1), seeds)
                if m.group(2):
                    rcpt = line[:4].upper() == b"RCPT"
                    _save("params", (b"\x89" if rcpt else b"\x7c") + m.group(2), seeds)
        # DATA content: what follows a DATA line up to and including the terminator.
        for m in re.finditer(rb"DATA\r\n(.*?\r\n\.\r\n)", sent, re.DOTALL):
            _save("framing", b"\x00\x00\x00" + m.group(1), seeds)
            _save("framing", b"\x01\x07\x03" + m.group(1), seeds)


_CLIENT = [
    # plain ESMTP delivery, pipelined
    b"220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME"
    b"\r\n250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n250 2.1.0 ok\r\n"
    b"250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n250 2.0.0 queued\r\n221 bye\r\n",
    # STARTTLS, then AUTH PLAIN, then CHUNKING
    b"220 mx.test ESMTP\r\n250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n220 go\r\n"
    b"250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-CHUNKING\r\n250 PIPELINING\r\n"
    b"235 2.7.0 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n221 bye\r\n",
    # AUTH LOGIN challenges, no pipelining
    b"220 mx.test\r\n250-mx.test\r\n250 AUTH=LOGIN\r\n334 VXNlcm5hbWU6\r\n"
    b"334 UGFzc3dvcmQ6\r\n235 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n",
    # refusals and an old server
    b"554 go away\r\n221 bye\r\n",
    b"220 old\r\n502 what\r\n250 old\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n",
    b"220 mx\r\n250-mx\r\n250 SIZE 10\r\n221 bye\r\n",
    b"220 mx\r\n421 4.3.2 shutting down\r\n",
]


def by_hand(seeds: dict[str, set[bytes]]) -> None:
    for server in _CLIENT:
        for header in (b"\x01\x00\x00", b"\x05\x00\x07", b"\x25\x21\x00", b"\x41\x03\x00",
                       b"\x8c\x40\x00"):
            _save("client", header + server, seeds)
    for text in (b"<user@example.org>", b'<"john doe"@example.org>', b"<@a.example,@b.example:"
                 b"u@c.example>", b"<u@[192.0.2.1]>", b"<u@[IPv6:2001:db8::1]>",
                 b"<u@[tag:x]>", b"<>", b"<Postmaster>", "<ü@bücher.example>".encode()):
        for flags in (0, 1, 6, 7):
            _save("address", bytes([flags]) + text, seeds)
        _save("address", b"\x09" + text.strip(b"<>"), seeds)
    for text in (b"SIZE=100 BODY=7BIT RET=FULL ENVID=QQ+2B1 SMTPUTF8 AUTH=<>",
                 b"AUTH=alice+40example.org ENVID=a+20b"):
        _save("params", b"\x7c" + text, seeds)
    for text in (b"NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+40example.org",
                 "ORCPT=utf-8;ü@example.org".encode()):
        _save("params", b"\x89" + text, seeds)
    for text in (b"abc+2B+3D", b"+0D+0A", b""):
        _save("params", b"\x02" + text, seeds)
    for text in (b"250 ok\r\n", b"250-mx\r\n250-SIZE\r\n250 2.0.0 ok\r\n", b"571 no\r\n",
                 b"550-5.1.1 a\r\n550 5.1.1 b\r\n", b"421\r\n"):
        _save("reply", b"\x00" + text, seeds)
    for header, text in ((b"\x01", b"250-x"), (b"\x02", b"550"), (b"\x06", b"571"),
                         (b"\x0a", b"5.1.10")):
        _save("reply", header + text, seeds)
    for text in (b"..\r\nline\r\n.\r\n", b"a\nb\r.\r\n.\r\nRSET\r\n",
                 b"x" * 120 + b"\r\n.\r\n"):
        _save("framing", b"\x02\x01\x09" + text, seeds)
    _save("framing", b"\x04\x00\x00.start\r\nmid\n.\r\nend", seeds)


def main() -> None:
    seeds: dict[str, set[bytes]] = {}
    from_dialogs(seeds)
    by_hand(seeds)
    for target, inputs in sorted(seeds.items()):
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        added = 0
        for data in inputs:
            name = d / hashlib.sha1(data).hexdigest()[:16]
            if not name.exists():
                name.write_bytes(data)
                added += 1
        print(f"{target}: {len(inputs)} seeds, {added} new")


if __name__ == "__main__":
    main()
