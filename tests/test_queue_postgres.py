"""The PostgreSQL queue against a real PostgreSQL (a private cluster, tests/support/
postgres.py): the same contract tests as the SQLite backend (imported from its test
modules and run here on a PostgresQueue), then what only a shared queue has: several
nodes claiming at once, heartbeats, NOTIFY, schema versions, a restarting server.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from mailgate.queue import NewMessage, NewRecipient, QueueError, RecipientState, WorkItem
from mailgate.queue.postgres import SCHEMA_VERSION, PostgresQueue, migrate
from mailgate.queue.spool import SpoolFile
from tests.support.postgres import PgCluster
from tests.test_queue_ids import TAKEN, trace

# The backend-neutral contract, as the SQLite backend's tests state it: pytest runs each
# imported test here again, with this module's `q` (a PostgresQueue).
from tests.test_queue_sqlite import (  # noqa: F401
    attempt,
    count_calls_into,
    message,
    test_claim_by_destination_looks_past_a_domain_holding_most_of_the_work,
    test_claim_by_destination_takes_each_domain_s_due_messages_together,
    test_claim_domain_filters,
    test_claim_record_and_schedule,
    test_claim_takes_oldest_due_messages_up_to_limit,
    test_concurrent_async_enqueues_share_commits,
    test_enqueue_then_show_returns_everything,
    test_expired_lease_makes_work_due_again,
    test_final_state_is_not_undone_by_a_late_report,
    test_hold_keeps_its_reason_until_released,
    test_hold_release_hold_and_retry,
    test_list_filters_and_pagination,
    test_mark_delay_notified_sets_the_flag_once,
    test_message_without_recipients_is_refused,
    test_record_checks_its_arguments,
    test_release_gives_work_back,
    test_the_crlf_flag_is_stored_with_the_message,
)
from tests.test_retention import (  # noqa: F401
    test_content_goes_when_the_last_recipient_is_final,
    test_purge_removes_only_records_finished_before_the_cutoff,
)

pytest_plugins = ["tests.support.postgres"]


@pytest.fixture
def q(pg_dsn: str) -> Iterator[PostgresQueue]:
    with PostgresQueue(pg_dsn, node="test") as queue:
        yield queue


def _msg(rcpt: str = "bob@example.net") -> NewMessage:
    return NewMessage("a@x.example", [NewRecipient(rcpt)], b"Subject: s\r\n\r\nhi\r\n",
                      time.time())


# ---------------------------------------------------------------------- ids and content


def test_a_taken_id_gets_a_fresh_one_and_the_trace_field_follows(
        q: PostgresQueue, tmp_path: Path) -> None:
    body = b"Subject: x\r\n\r\nwith ESMTP id " + TAKEN.encode() + b" in the body\r\n"
    first = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                 trace(TAKEN) + body, time.time(), id=TAKEN))
    second = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                  trace(TAKEN) + body, time.time(), id=TAKEN))
    assert first == TAKEN and second != TAKEN and re.fullmatch(r"[0-9a-f]{22}", second)
    assert q.show(second, content=True).content == trace(second) + body


def test_clashes_within_one_group_commit_all_succeed(q: PostgresQueue) -> None:
    async def go() -> list[str]:
        return await asyncio.gather(*(q.enqueue_async(NewMessage(
            "a@x.example", [NewRecipient("b@x.example")], trace(TAKEN) + b"\r\nhi\r\n",
            time.time(), id=TAKEN)) for _ in range(30)))

    ids = asyncio.run(go())
    assert len(set(ids)) == 30 and TAKEN in ids
    for qid in ids:
        assert q.show(qid, content=True).content == trace(qid) + b"\r\nhi\r\n"


def _parked(q: PostgresQueue) -> threading.Event:
    """Park the writer inside a batch until the event is set: what is submitted
    meanwhile lands together in the next batch."""
    gate, entered = threading.Event(), threading.Event()

    def op(conn: object) -> None:
        entered.set()
        gate.wait(10)

    q._engine.submit(op, "wait")
    assert entered.wait(10)
    return gate


def test_a_batch_of_async_writes_is_answered_with_one_call_into_the_loop(
        q: PostgresQueue) -> None:
    """As on SQLite: twenty enqueues behind one batch commit together, and the writer
    hands their answers to the event loop in one call, not one wrapped Future each. One
    cancelled before the writer took it is not written at all."""
    async def main() -> list[str]:
        gate = _parked(q)
        calls = count_calls_into(asyncio.get_running_loop())
        tasks = [asyncio.create_task(q.enqueue_async(_msg(f"u{i}@example.net")))
                 for i in range(20)]
        gone = asyncio.create_task(q.enqueue_async(_msg("gone@example.net")))
        await asyncio.sleep(0)  # every request is queued behind the parked batch
        gone.cancel()
        gate.set()
        ids = await asyncio.gather(*tasks)
        assert calls() == 1, calls()
        return ids

    ids = asyncio.run(main())
    listed = q.list()
    assert {m.id for m in listed} == set(ids) and len(ids) == 20
    assert "gone@example.net" not in {r.address for m in listed for r in m.recipients}


def test_a_spooled_message_is_stored_in_pieces(q: PostgresQueue, pg_dsn: str,
                                               tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path, "big", head=trace(TAKEN))
    body = b"Subject: big\r\n\r\n" + bytes(range(256)) * 8000 + b"\r\n"  # 2 MB
    spool.write(body)
    spool.finish()
    assert spool.spilled
    qid = q.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")], b"",
                               time.time(), id=TAKEN, spool=spool))
    spool.discard()
    assert q.show(qid, content=True).content == trace(TAKEN) + body
    with psycopg.connect(pg_dsn) as conn:
        pieces, biggest = conn.execute(
            "SELECT count(*), max(length(data)) FROM contents").fetchone() or (0, 0)
    assert pieces >= 8 and biggest <= 256 * 1024


# ---------------------------------------------------------------------- schema


def test_a_newer_schema_is_refused_and_an_older_one_asks_for_migrate(pg_dsn: str) -> None:
    PostgresQueue(pg_dsn).close()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE mailgate_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(QueueError, match=rf"schema version {SCHEMA_VERSION + 1}.*knows only"):
        PostgresQueue(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE mailgate_schema SET version = 0")
        with pytest.raises(QueueError, match="newer"):
            conn.execute("UPDATE mailgate_schema SET version = %s", (SCHEMA_VERSION + 1,))
            migrate(conn, "here")


def test_a_version_2_database_is_migrated_and_its_mail_is_checked_at_delivery(
        pg_dsn: str) -> None:
    with PostgresQueue(pg_dsn) as queue:
        old = queue.enqueue(NewMessage("a@x.example", [NewRecipient("b@x.example")],
                                       b"Subject: old\r\n\r\nhi\r\n", time.time(), crlf=True))
    with psycopg.connect(pg_dsn) as conn:  # as a mailgate of version 2 left it
        conn.execute("ALTER TABLE messages DROP COLUMN crlf")
        conn.execute("UPDATE mailgate_schema SET version = 2")
    with pytest.raises(QueueError, match=r"version 2 and this mailgate needs 3.*migrate"):
        PostgresQueue(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        assert migrate(conn, "here") == (2, SCHEMA_VERSION) == (2, 3)
    with PostgresQueue(pg_dsn) as queue:
        assert queue.show(old, content=True).crlf is False  # unknown: checked, as before
        new = queue.enqueue(NewMessage("a@x.example", [NewRecipient("c@x.example")],
                                       b"Subject: new\r\n\r\nhi\r\n", time.time(), crlf=True))
        assert queue.show(new).crlf is True


def test_nodes_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        queues = list(pool.map(lambda i: PostgresQueue(pg_dsn, node=f"n{i}"), range(6)))
    for queue in queues:
        queue.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM mailgate_schema").fetchone() == (1,)


def test_unreachable_database_names_the_host_never_the_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    dsn = f"postgresql://mailgate:s3cret-pw@127.0.0.1:{port}/mail"
    with pytest.raises(QueueError) as info:
        PostgresQueue(dsn)
    text = str(info.value)
    assert f"127.0.0.1:{port}/mail" in text and "s3cret-pw" not in text


# ---------------------------------------------------------------------- several nodes


def test_nodes_claiming_at_once_never_take_the_same_recipient(pg_dsn: str) -> None:
    queues = [PostgresQueue(pg_dsn, node=f"n{i}") for i in range(3)]
    try:
        for i in range(300):
            queues[i % 3].enqueue(_msg(f"u{i}@example.net"))
        taken: list[list[int]] = [[] for _ in queues]

        def drain(i: int) -> None:
            while items := queues[i].claim(time.time(), 7, 300):
                taken[i] += [r.id for item in items for r in item.recipients]

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [rid for ids in taken for rid in ids]
        assert len(every) == len(set(every)) == 300
        assert sum(1 for ids in taken if ids) >= 2  # the work was shared
    finally:
        for queue in queues:
            queue.close()


def test_a_dead_node_s_claims_come_back_once_its_heartbeat_is_stale(pg_dsn: str) -> None:
    dead = PostgresQueue(pg_dsn, node="dead", heartbeat=0.2, stale=2.0)
    live = PostgresQueue(pg_dsn, node="live", heartbeat=0.2, stale=2.0)
    try:
        live.enqueue(_msg())
        assert len(dead.claim(time.time(), 10, 3600)) == 1
        # The dead node stops beating (as if killed: no close, no release).
        dead._engine._node_stop.set()
        assert dead._engine._node_thread is not None
        dead._engine._node_thread.join()
        live.recover_claims()
        assert live.claim(time.time(), 10, 60) == []  # alive a moment ago: not yet
        deadline = time.monotonic() + 30
        items: list[WorkItem] = []
        while not items and time.monotonic() < deadline:
            time.sleep(0.2)
            items = live.claim(time.time(), 10, 60)
        assert len(items) == 1  # back long before the hour's lease
    finally:
        live.close()
        dead.close()


def test_a_live_node_s_claims_stay_with_it(pg_dsn: str) -> None:
    a = PostgresQueue(pg_dsn, node="a", heartbeat=0.2, stale=1.0)
    b = PostgresQueue(pg_dsn, node="b", heartbeat=0.2, stale=1.0)
    try:
        a.enqueue(_msg())
        assert len(a.claim(time.time(), 10, 3600)) == 1
        end = time.monotonic() + 3  # three times `stale`
        while time.monotonic() < end:
            assert b.recover_claims() == 0
            assert b.claim(time.time(), 10, 60) == []
            time.sleep(0.2)
    finally:
        a.close()
        b.close()


def test_a_claim_whose_commit_was_not_confirmed_is_given_back(
        q: PostgresQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database goes away after a claim committed and before the node heard so: the
    node, alive, must not keep that work for the lease (an hour here)."""
    qid = q.enqueue(_msg())
    q.recover_claims()  # the node is started (registered, heartbeating) before the outage
    engine = q._engine
    real_run = engine.run

    def lost_ack(what: str, op: object) -> object:
        real_run(what, op)  # type: ignore[arg-type]
        raise QueueError("the queue database is unreachable (server closed the connection)")

    monkeypatch.setattr(engine, "run", lost_ack)
    with pytest.raises(QueueError):
        q.claim(time.time(), 10, 3600)
    monkeypatch.setattr(engine, "run", real_run)
    [item] = q.claim(time.time(), 10, 3600)  # given back first, then claimed again
    assert item.message.id == qid


def test_work_queued_on_one_node_wakes_the_others(pg_dsn: str) -> None:
    a = PostgresQueue(pg_dsn, node="a")
    b = PostgresQueue(pg_dsn, node="b")
    woken = threading.Event()
    try:
        b.watch(woken.set)
        time.sleep(0.5)
        woken.clear()  # the wake-up every watcher gets when it (re)connects
        a.enqueue(_msg())
        assert woken.wait(10)
        woken.clear()
        a.retry(None, time.time())
        assert woken.wait(10)
    finally:
        a.close()
        b.close()


def test_close_gives_back_what_the_node_had_claimed(pg_dsn: str) -> None:
    with PostgresQueue(pg_dsn) as a:
        a.enqueue(_msg())
        assert len(a.claim(time.time(), 10, 3600)) == 1
    with PostgresQueue(pg_dsn) as b:
        assert len(b.claim(time.time(), 10, 60)) == 1
        assert b.counts()[RecipientState.QUEUED.value] == 1


# ---------------------------------------------------------------------- the server restarts


def test_a_restart_fails_writes_under_way_and_the_node_reconnects(
        pg_cluster: PgCluster, pg_dsn: str) -> None:
    with PostgresQueue(pg_dsn) as queue:
        stored = [queue.enqueue(_msg()) for _ in range(5)]
        pg_cluster.stop()
        try:
            with pytest.raises(QueueError, match=r"unreachable|cannot reach"):
                queue.enqueue(_msg())
            with pytest.raises(QueueError, match=r"unreachable|cannot reach"):
                queue.list()
        finally:
            pg_cluster.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                stored.append(queue.enqueue(_msg()))
                break
            except QueueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert {m.id for m in queue.list()} == set(stored)


def test_a_missing_database_is_refused_for_good_not_waited_for(pg_cluster: PgCluster) -> None:
    from mailgate.queue import QueueUnavailable

    with pytest.raises(QueueError, match="does not exist") as info:
        PostgresQueue(pg_cluster.dsn("no_such_db"))
    assert not isinstance(info.value, QueueUnavailable)


def test_connection_slots_are_the_cluster_s_in_all(pg_dsn: str) -> None:
    a = PostgresQueue(pg_dsn, node="a", heartbeat=0.2, stale=1.5)
    b = PostgresQueue(pg_dsn, node="b", heartbeat=0.2, stale=1.5)
    try:
        first, second = a.take_slot("mx.example", 2, 600), b.take_slot("mx.example", 2, 600)
        assert first and second and first != second
        assert b.take_slot("mx.example", 2, 600) is None  # two in all, not two per node
        assert a.take_slot("other.example", 2, 600) is not None  # per destination
        a.give_slot(first)
        third = b.take_slot("mx.example", 2, 600)
        assert third is not None
        assert a.take_slot("mx.example", 3, 600) is not None  # a raised limit
        # A node that dies holding a slot: free once its heartbeat is stale.
        b._engine._node_stop.set()
        assert b._engine._node_thread is not None
        b._engine._node_thread.join()
        assert a.take_slot("mx.example", 3, 600) is None
        deadline = time.monotonic() + 30
        while a.take_slot("mx.example", 3, 600) is None:
            assert time.monotonic() < deadline, "the dead node's slot never came free"
            time.sleep(0.2)
    finally:
        a.close()
        b.close()


def test_auth_failures_on_one_node_count_on_the_others(pg_dsn: str, tmp_path: Path) -> None:
    from mailgate.config import Config
    from mailgate.server.policy import ConnectionInfo, Policy
    from mailgate.users import UserDB

    a = PostgresQueue(pg_dsn, node="a")
    b = PostgresQueue(pg_dsn, node="b")
    config = Config(data_dir=tmp_path)
    policy_a = Policy(config, None, UserDB(tmp_path / "users.json"))
    policy_b = Policy(config, None, UserDB(tmp_path / "users.json"))
    window = Policy.AUTH_FAIL_WINDOW
    client = ConnectionInfo("submission", "192.0.2.7", 40000)
    try:
        for _ in range(Policy.AUTH_FAILS_PER_IP - 1):  # failures on node a, one short
            assert policy_a.auth_reserve(client, "alice") is not None
        ok = policy_a.auth_reserve(client, "bob")
        assert ok is not None
        policy_a.auth_release(ok)  # a success is no failure: not shared either
        assert a.share_counts(policy_a.take_unshared(), window) == {}
        policy_b.others = b.share_counts(policy_b.take_unshared(), window)
        assert policy_b.others == {("ip", "192.0.2.7"): Policy.AUTH_FAILS_PER_IP - 1,
                                   ("user", "alice"): Policy.AUTH_FAILS_PER_IP - 1}
        # Node b allows one more from that address, then refuses it as node a would.
        assert policy_b.auth_reserve(client, "carol") is not None
        assert policy_b.auth_reserve(client, "carol") is None
        assert policy_b.auth_blocked(client)
        other = ConnectionInfo("submission", "192.0.2.8", 40000)
        assert policy_b.auth_reserve(other, "dave") is not None  # another address is not
        # And back: a sees b's failures (and never its own: it counts those itself).
        b.share_counts(policy_b.take_unshared(), window)
        assert a.share_counts({}, window) == {("ip", "192.0.2.7"): 1, ("user", "carol"): 1,
                                              ("ip", "192.0.2.8"): 1, ("user", "dave"): 1}
    finally:
        a.close()
        b.close()
