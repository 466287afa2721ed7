"""Queue ids: a clash never reaches a client (issue 17: two messages of one millisecond
drew the same 24 random bits, and the client got 451). The queue stores the message under
a fresh id and rewrites the id in its trace field, so logs, Received: and the 250 agree."""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from pathlib import Path

import pytest

import mailgate.queue
from mailgate.queue import NewMessage, NewRecipient, new_queue_id
from mailgate.queue.spool import SpoolFile
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.server import listener
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import parse_delivered, wait_for_files

TAKEN = "0123456789abcdef012345"


def trace(qid: str) -> bytes:
    return (f"Received: from a ([127.0.0.1])\r\n\tby localhost (mailgate) with ESMTP "
            f"id {qid}\r\n\tfor <b@x.example>;\r\n\tdate\r\n").encode()


def test_ids_are_22_hex_digits_time_first() -> None:
    ids = [new_queue_id(1_700_000_000.0 + i / 1000) for i in range(100)]
    assert all(re.fullmatch(r"[0-9a-f]{22}", i) for i in ids)
    assert ids == sorted(ids) or [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_a_taken_id_gets_a_fresh_one_and_the_trace_field_follows(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "queue.db") as q:
        body = b"Subject: x\r\n\r\nwith ESMTP id " + TAKEN.encode() + b" in the body\r\n"
        first = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                     trace(TAKEN) + body, time.time(), id=TAKEN))
        assert first == TAKEN
        second = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                      trace(TAKEN) + body, time.time(), id=TAKEN))
        assert second != TAKEN and re.fullmatch(r"[0-9a-f]{22}", second)
        stored = q.show(second, content=True).content
        assert stored == trace(second) + body  # the body's look-alike is left alone
        # Spooled content: the head is rewritten, the body never read.
        spool = SpoolFile(tmp_path, "spooled", head=trace(TAKEN))
        spool.write(b"Subject: big\r\n\r\n" + b"y" * 300_000 + b"\r\n")
        spool.finish()
        third = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")], b"",
                                     time.time(), id=TAKEN, spool=spool))
        spool.discard()
        assert third not in (TAKEN, second)
        stored = q.show(third, content=True).content
        assert stored is not None and stored.startswith(trace(third) + b"Subject: big")


def test_clashes_within_one_group_commit_all_succeed(tmp_path: Path) -> None:
    async def go(q: SQLiteQueue) -> list[str]:
        return await asyncio.gather(*(q.enqueue_async(NewMessage(
            "a@x.example", [NewRecipient("b@x.example")], trace(TAKEN) + b"\r\nhi\r\n",
            time.time(), id=TAKEN)) for _ in range(50)))

    with SQLiteQueue(tmp_path / "queue.db") as q:
        ids = asyncio.run(go(q))
        assert len(set(ids)) == 50 and TAKEN in ids
        for qid in ids:
            assert q.show(qid, content=True).content == trace(qid) + b"\r\nhi\r\n"


def test_a_clash_in_a_live_server_still_gets_250(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener's id source made constant (a clash forced): every message the
    server receives draws the id the one before it drew."""
    monkeypatch.setattr(listener, "new_queue_id", lambda: TAKEN)
    with LiveServer(live_config(tmp_path / "data")) as srv, \
            smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        replies = []
        for n in range(3):
            c.ehlo("client.test")
            c.mail("a@example.org")
            c.rcpt("bob@localhost")
            replies.append(c.data(f"Subject: {n}\r\n\r\nx\r\n".encode()))
        files = wait_for_files(srv.maildir / "localhost" / "bob" / "new", 3)
    assert all(code == 250 for code, _ in replies), replies
    ids = [text.decode().rsplit(" ", 1)[1] for _, text in replies]
    assert ids[0] == TAKEN and len(set(ids)) == 3
    # Each delivered copy names, in its Received field, the id its client was told.
    assert sorted(parse_delivered(f.read_bytes()).queue_id for f in files) == sorted(ids)


def test_the_random_source_repeating_is_survived(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """new_queue_id's own random part forced to repeat: the fallback ids clash as well,
    and the queue keeps drawing until one is free."""
    draws = iter(["0000000000"] * 3 + [f"{i:010x}" for i in range(1, 100)])
    monkeypatch.setattr(mailgate.queue, "_random_hex", lambda n: next(draws))
    fixed = 1_800_000_000.0
    with SQLiteQueue(tmp_path / "queue.db") as q:
        a = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")], b"x\r\n",
                                 fixed, id=new_queue_id(fixed)))
        taken = new_queue_id(fixed)
        assert taken == a
        monkeypatch.setattr(time, "time", lambda: fixed)
        b = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")], b"x\r\n",
                                 fixed, id=taken))
        assert b != a and b.startswith(a[:12])


def test_the_direct_path_s_trace_field_follows_a_new_id_too(tmp_path: Path) -> None:
    """mailgate-sendmail's own trace field puts the id after a tab (`\\tid X;`)."""
    head = f"Received: by h (mailgate-sendmail, from userid 0)\r\n\tid {TAKEN};\r\n\td\r\n"
    with SQLiteQueue(tmp_path / "queue.db") as q:
        for _ in range(2):
            qid = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                       head.encode() + b"\r\nhi\r\n", time.time(), id=TAKEN))
        stored = q.show(qid, content=True).content
        assert qid != TAKEN and stored is not None and f"\tid {qid};".encode() in stored
