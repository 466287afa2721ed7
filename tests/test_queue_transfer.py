"""`mailgate queue export` / `import` between SQLite and PostgreSQL with nothing lost, and
the queue commands run against a cluster's database from any node's configuration."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from mailgate.queue import Attempt, NewMessage, NewRecipient, QueuedMessage, RecipientState
from mailgate.queue.postgres import PostgresQueue
from mailgate.queue.sqlite import SQLiteQueue

pytest_plugins = ["tests.support.postgres"]


def cli(config: Path, *args: str, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", *args, "--config", str(config)],
                          input=input, capture_output=True, text=True, timeout=120,
                          check=False)


def sqlite_config(folder: Path) -> Path:
    path = folder / "sqlite.toml"
    path.write_text(f'data_dir = "{folder / "data"}"\n')
    return path


def pg_config(folder: Path, dsn: str, node: str = "a") -> Path:
    path = folder / f"pg-{node}.toml"
    path.write_text(f'data_dir = "{folder / ("data-" + node)}"\n[queue]\n'
                    f'backend = "postgresql"\ndsn = "{dsn}"\nnode = "{node}"\n')
    return path


def fill(q: SQLiteQueue | PostgresQueue) -> None:
    """A queue with a bit of everything: queued, deferred with an attempt, held with a
    reason, a delay notice sent, a finished record, a big body, DSN parameters."""
    now = time.time()
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 40_000 + b"\r\n"
    q.enqueue(NewMessage("a@x.example", [NewRecipient("q@example.net", orcpt="rfc822;q@e",
                                                      notify=("SUCCESS", "DELAY"))],
                         big, now - 50, client_address="192.0.2.1", client_helo="h.example",
                         protocol="ESMTPS", authenticated_as="alice", envid="e1", ret="HDRS",
                         smtputf8=True, body_8bit=True))
    q.enqueue(NewMessage("b@x.example", [NewRecipient("d@example.org"),
                                         NewRecipient("ok@example.org")],
                         b"Subject: d\r\n\r\nd\r\n", now - 40))
    held = q.enqueue(NewMessage("", [NewRecipient("h@example.com")],
                                b"Subject: h\r\n\r\nh\r\n", now - 30))
    q.enqueue(NewMessage("c@x.example", [NewRecipient("f@example.com")],
                         b"Subject: f\r\n\r\nf\r\n", now - 20))
    for item in q.claim(time.time(), 10, 60):
        for r in item.recipients:
            if r.address == "d@example.org":
                q.record(r.id, Attempt(now, "mx[192.0.2.9]:25", 451, "4.7.1", "later",
                                       "deferred"), next_attempt=now + 600,
                         claim_token=item.claim_token)
                q.mark_delay_notified([r.id])
            elif r.address in ("ok@example.org", "f@example.com"):
                q.record(r.id, Attempt(now, "mx[192.0.2.9]:25", 250, "2.0.0", "ok",
                                       "delivered"), claim_token=item.claim_token)
        q.release(item.claim_token)
    q.hold(held, "looked odd")


def comparable(m: QueuedMessage) -> dict[str, object]:
    """A message without what a new queue numbers afresh (recipient ids)."""
    d = dataclasses.asdict(m)
    rids = {r.id: i for i, r in enumerate(m.recipients)}
    for r in d["recipients"]:
        r.pop("id")
    d["attempts"] = [(rids[rid], a) for rid, a in d["attempts"]]
    return d


def everything(q: SQLiteQueue | PostgresQueue) -> dict[str, dict[str, object]]:
    return {m.id: comparable(q.show(m.id, content=True)) for m in q.list(limit=1000)}


def test_sqlite_to_postgresql_and_back_loses_nothing(tmp_path: Path, pg_dsn: str) -> None:
    lite = sqlite_config(tmp_path)
    with SQLiteQueue(tmp_path / "data" / "queue.db") as q:
        fill(q)
        original = everything(q)
    assert len(original) == 4
    states = sorted(r["state"] for m in original.values() for r in m["recipients"])  # type: ignore[attr-defined]
    assert states == ["deferred", "delivered", "delivered", "held", "queued"]
    assert sum(m["finished_at"] is not None for m in original.values()) == 1
    dump = tmp_path / "queue.jsonl"
    done = cli(lite, "queue", "export", str(dump))
    assert done.returncode == 0, done.stderr
    pg = pg_config(tmp_path, pg_dsn)
    done = cli(pg, "queue", "import", str(dump))
    assert done.returncode == 0, done.stderr
    assert "4 message(s) imported, 0 already there" in done.stdout
    with PostgresQueue(pg_dsn) as q:
        assert everything(q) == original
        assert q.integrity_check() == ["ok"]
        # The deferred recipient keeps its schedule, the held one its hold: only the
        # queued one is due.
        due = [r.address for item in q.claim(time.time(), 10, 60) for r in item.recipients]
        assert due == ["q@example.net"]
    again = cli(pg, "queue", "import", str(dump))
    assert "0 message(s) imported, 4 already there" in again.stdout
    # And back into a new SQLite queue.
    back = tmp_path / "back.jsonl"
    assert cli(pg, "queue", "export", str(back)).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    done = cli(sqlite_config(other), "queue", "import", str(back))
    assert done.returncode == 0, done.stderr
    with SQLiteQueue(other / "data" / "queue.db") as q:
        assert everything(q) == original


def test_a_damaged_or_cut_export_is_refused_with_a_sentence(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "data" / "queue.db") as q:
        fill(q)
    lite = sqlite_config(tmp_path)
    dump = tmp_path / "q.jsonl"
    assert cli(lite, "queue", "export", str(dump)).returncode == 0
    lines = dump.read_text().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(lines[:-2]))
    (tmp_path / "junk.jsonl").write_text("hello\n")
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe\x00")
    target = tmp_path / "t"
    target.mkdir()
    conf = sqlite_config(target)
    for name, words in (("cut", "cut short"), ("junk", "is not JSON"),
                        ("bad", "not UTF-8")):
        done = cli(conf, "queue", "import", str(tmp_path / f"{name}.jsonl"))
        assert done.returncode == 2 and words in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr
    # What came before the cut is in; the whole file then adds the rest.
    done = cli(conf, "queue", "import", str(dump))
    assert "1 message(s) imported, 3 already there" in done.stdout, done.stdout


def test_every_queue_command_works_on_the_cluster_from_any_node(
        tmp_path: Path, pg_dsn: str) -> None:
    with PostgresQueue(pg_dsn, node="b") as q:  # queued through node b
        qid = q.enqueue(NewMessage("a@x.example", [NewRecipient("r@example.net")],
                                   b"Subject: s\r\n\r\nx\r\n", time.time()))
    a = pg_config(tmp_path, pg_dsn, "a")  # administered from node a
    listed = json.loads(cli(a, "queue", "list", "--format", "json").stdout)
    assert [m["id"] for m in listed["messages"]] == [qid]
    assert "Subject: s" in cli(a, "queue", "show", qid).stdout
    assert "1 recipient(s) held" in cli(a, "queue", "hold", qid).stdout
    assert "1 recipient(s) released" in cli(a, "queue", "release", qid).stdout
    assert "1 recipient(s) due now" in cli(a, "queue", "retry", qid).stdout
    assert qid in cli(a, "mailq").stdout
    assert "deleted" in cli(a, "queue", "delete", qid).stdout
    gone = cli(a, "queue", "show", qid)
    assert gone.returncode == 2 and "not in the queue" in gone.stderr
    assert "0 finished" in cli(a, "queue", "purge").stdout
    with PostgresQueue(pg_dsn) as q:
        assert q.counts() == {s.value: 0 for s in RecipientState}


def test_the_queue_commands_name_an_unreachable_database(tmp_path: Path) -> None:
    conf = pg_config(tmp_path, "postgresql://mg:pw-hidden@127.0.0.1:1/mail")
    done = cli(conf, "queue", "list")
    assert done.returncode == 2
    assert "127.0.0.1:1/mail" in done.stderr and "pw-hidden" not in done.stderr
    assert "Traceback" not in done.stderr
    done = cli(conf, "queue", "migrate")
    assert done.returncode == 2 and "127.0.0.1:1/mail" in done.stderr
    assert "pw-hidden" not in done.stderr


def test_migrate_creates_and_then_finds_nothing_to_do(tmp_path: Path, pg_dsn: str) -> None:
    conf = pg_config(tmp_path, pg_dsn)
    assert "created with schema version" in cli(conf, "queue", "migrate").stdout
    assert "up to date" in cli(conf, "queue", "migrate").stdout
