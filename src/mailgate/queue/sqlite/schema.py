"""The queue's tables: the schema a new file gets, the migrations that bring a file
written by an older mailgate up to date, and the indexes added since version 1.

Opening a file runs `create_schema` once, in the transaction that opens it.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

from mailgate.queue import QueueError

__all__ = ["FULL_COUNTS", "SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 6

# Messages live in `messages` (envelope and metadata, small rows) and their bodies in
# `contents`: list and show scan many message rows, and with bodies inline each row would
# fill a page or more, so the scans would read the whole spool.
#
# `seq` (the rowid) is the join key and "newest first" order: integers index smaller than
# the 18-character queue ids, and rowids grow in commit order across processes.
#
# recipients.due_at is the one column claim() looks at: next_attempt while the recipient is
# queued/deferred and unclaimed, the claim's expiry while claimed, NULL when it is never
# due (held, delivered, failed). Claimed work thus stays out of the way of claim() scans
# and comes back by itself when a crashed worker's lease runs out.
#
# `owners` holds the processes that claim work (claim owners, see owners.py for why).
_OWNERS_TABLE = """CREATE TABLE owners (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started TEXT NOT NULL,
        boot TEXT NOT NULL,
        registered_at REAL NOT NULL
    )"""
_OWNER_INDEX = (
    "CREATE INDEX recipients_owner ON recipients (claim_owner) WHERE claim_owner IS NOT NULL")
# Retention (version 4): `finished_at` is set, and the content deleted, when a message's
# last recipient becomes final. Live messages are those without it: listed by default,
# walked in seq order through a partial index that holds only them, so a queue with a
# million delivered records lists its ten live messages at once; the purge walks
# the finished ones oldest first.
_RETENTION_INDEXES = (
    "CREATE INDEX messages_live ON messages (seq) WHERE finished_at IS NULL",
    "CREATE INDEX messages_finished ON messages (finished_at) WHERE finished_at IS NOT NULL",
)
# Counts kept as the rows change (version 5). `counts()` (every queue page, `/metrics`,
# `queue list`) and `activity()` (the dashboard) would otherwise count rows: recipients by
# state read a whole index (0.14 s at a million), a day of activity every entry of the day.
# Triggers keep them in the transaction that changes the rows, so they are exactly as
# durable as the rows: a crash rolls both back together, and every writer (an enqueue, a
# record, hold, release, retry, delete, purge, a foreign key's cascade, an administrator's
# own SQL) keeps them right without knowing they exist.
#
# `state_counts`: recipients per state. `activity_minutes`: per series (accepted, bounced,
# delivered, deferred, failed) and minute, how many rows the series' index holds with a
# time in that minute; the minute of a time t is CAST(t AS INTEGER) / 60, integer
# arithmetic throughout, so "minute in [a, b)" is exactly "t in [60a, 60b)" for t >= 0
# and activity() can add whole minutes and count only the partial minutes at its edges.
# A minute whose count falls to zero is deleted: the table holds only minutes that
# still have rows (purge removes old records, and with them their minutes).
_COUNT_TABLES = (
    "CREATE TABLE state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE activity_minutes (
        series TEXT NOT NULL,
        minute INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (series, minute)
    ) WITHOUT ROWID""",
)
_UP_STATE = ("INSERT INTO state_counts (state, n) VALUES (new.state, 1) "
             "ON CONFLICT (state) DO UPDATE SET n = n + 1;")
_DOWN_STATE = "UPDATE state_counts SET n = n - 1 WHERE state = old.state;"


def _up(series: str, at: str, when: str = "true") -> str:
    # INSERT ... SELECT with an upsert needs its WHERE (SQLite's parsing rule).
    return (f"INSERT INTO activity_minutes (series, minute, n) SELECT {series}, "
            f"CAST({at} AS INTEGER) / 60, 1 WHERE {when} "
            "ON CONFLICT (series, minute) DO UPDATE SET n = n + 1;")


def _down(series: str, at: str, when: str = "true") -> str:
    minute = f"CAST({at} AS INTEGER) / 60"
    return (f"UPDATE activity_minutes SET n = n - 1 WHERE {when} AND series = {series} "
            f"AND minute = {minute}; DELETE FROM activity_minutes WHERE {when} AND "
            f"series = {series} AND minute = {minute} AND n <= 0;")


_ACCEPTED, _BOUNCED = "'accepted'", "'bounced'"
_NEW_BOUNCE, _OLD_BOUNCE = "new.sender = ''", "old.sender = ''"
_COUNT_TRIGGERS = (
    f"CREATE TRIGGER recipients_counted AFTER INSERT ON recipients BEGIN {_UP_STATE} END",
    f"CREATE TRIGGER recipients_uncounted AFTER DELETE ON recipients BEGIN {_DOWN_STATE} END",
    "CREATE TRIGGER recipients_recounted AFTER UPDATE OF state ON recipients "
    f"WHEN old.state IS NOT new.state BEGIN {_DOWN_STATE} {_UP_STATE} END",
    "CREATE TRIGGER messages_counted AFTER INSERT ON messages BEGIN "
    f"{_up(_ACCEPTED, 'new.queued_at')} "
    f"{_up(_BOUNCED, 'new.queued_at', _NEW_BOUNCE)} END",
    "CREATE TRIGGER messages_uncounted AFTER DELETE ON messages BEGIN "
    f"{_down(_ACCEPTED, 'old.queued_at')} "
    f"{_down(_BOUNCED, 'old.queued_at', _OLD_BOUNCE)} END",
    "CREATE TRIGGER messages_recounted AFTER UPDATE OF queued_at, sender ON messages "
    "WHEN old.queued_at IS NOT new.queued_at OR old.sender IS NOT new.sender BEGIN "
    f"{_down(_ACCEPTED, 'old.queued_at')} "
    f"{_down(_BOUNCED, 'old.queued_at', _OLD_BOUNCE)} "
    f"{_up(_ACCEPTED, 'new.queued_at')} "
    f"{_up(_BOUNCED, 'new.queued_at', _NEW_BOUNCE)} END",
    f"CREATE TRIGGER attempts_counted AFTER INSERT ON attempts BEGIN "
    f"{_up('new.outcome', 'new.at')} END",
    f"CREATE TRIGGER attempts_uncounted AFTER DELETE ON attempts BEGIN "
    f"{_down('old.outcome', 'old.at')} END",
    "CREATE TRIGGER attempts_recounted AFTER UPDATE OF at, outcome ON attempts "
    "WHEN old.at IS NOT new.at OR old.outcome IS NOT new.outcome BEGIN "
    f"{_down('old.outcome', 'old.at')} {_up('new.outcome', 'new.at')} END",
)
# What a file's rows come to, for a file that had no counts yet (the migration) and for
# a test that compares the kept counts with a full count.
FULL_COUNTS = (
    "INSERT INTO state_counts (state, n) SELECT state, count(*) FROM recipients "
    "GROUP BY state",
    "INSERT INTO activity_minutes (series, minute, n) SELECT 'accepted', "
    "CAST(queued_at AS INTEGER) / 60 AS m, count(*) FROM messages GROUP BY m",
    "INSERT INTO activity_minutes (series, minute, n) SELECT 'bounced', "
    "CAST(queued_at AS INTEGER) / 60 AS m, count(*) FROM messages WHERE sender = '' "
    "GROUP BY m",
    "INSERT INTO activity_minutes (series, minute, n) SELECT outcome, "
    "CAST(at AS INTEGER) / 60 AS m, count(*) FROM attempts GROUP BY outcome, m",
)
_SCHEMA = (
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        received_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        size INTEGER NOT NULL,
        client_address TEXT NOT NULL,
        client_helo TEXT NOT NULL,
        protocol TEXT NOT NULL,
        authenticated_as TEXT,
        envid TEXT,
        ret TEXT,
        smtputf8 INTEGER NOT NULL,
        body_8bit INTEGER NOT NULL,
        finished_at REAL,
        crlf INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX messages_sender ON messages (sender COLLATE NOCASE, seq)",
    """CREATE TABLE contents (
        seq INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
        content BLOB NOT NULL
    )""",
    """CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        msg_seq INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        due_at REAL,
        last_code INTEGER,
        last_enhanced TEXT,
        last_text TEXT,
        claim_token TEXT,
        claim_until REAL,
        updated_at REAL NOT NULL,
        delay_notified INTEGER NOT NULL DEFAULT 0,
        held_reason TEXT,
        claim_owner TEXT
    )""",
    "CREATE INDEX recipients_due ON recipients (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_message ON recipients (msg_seq)",
    "CREATE INDEX recipients_state ON recipients (state, msg_seq)",
    "CREATE INDEX recipients_domain ON recipients (domain, msg_seq)",
    "CREATE INDEX recipients_domain_due ON recipients (domain, due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_claim ON recipients (claim_token) WHERE claim_token IS NOT NULL",
    """CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        host TEXT NOT NULL,
        code INTEGER NOT NULL,
        enhanced TEXT,
        text TEXT NOT NULL,
        outcome TEXT NOT NULL,
        remote INTEGER NOT NULL,
        tls TEXT
    )""",
    "CREATE INDEX attempts_recipient ON attempts (recipient_id)",
    _OWNERS_TABLE,
    _OWNER_INDEX,
    *_RETENTION_INDEXES,
    *_COUNT_TABLES,
    *_COUNT_TRIGGERS,
)
# What takes a file from the version before to each version, run by _create_schema in the
# transaction that opens the file, oldest step first. A step only adds (a column with a
# default, for instance): rows written by the older mailgate stay as they are, and a new
# file made from _SCHEMA ends up with the same tables as a migrated one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: the delay notice is sent at most once per recipient (delivery/notices.py).
    2: ("ALTER TABLE recipients ADD COLUMN delay_notified INTEGER NOT NULL DEFAULT 0",),
    # 3: why a recipient is held (a message that broke delivery is held with the error),
    # and who holds each claim, so a crashed process's claims come back at restart.
    3: ("ALTER TABLE recipients ADD COLUMN held_reason TEXT",
        "ALTER TABLE recipients ADD COLUMN claim_owner TEXT",
        _OWNERS_TABLE,
        _OWNER_INDEX),
    # 4: retention. Messages whose recipients are all final already are finished as of
    # their last recipient's update, and their content goes, as it would have with this
    # version; the records stay until [queue] keep_records has passed.
    4: ("ALTER TABLE messages ADD COLUMN finished_at REAL",
        "UPDATE messages SET finished_at = (SELECT max(updated_at) FROM recipients r "
        "WHERE r.msg_seq = messages.seq) WHERE NOT EXISTS (SELECT 1 FROM recipients r "
        "WHERE r.msg_seq = messages.seq AND r.state NOT IN ('delivered', 'failed'))",
        "DELETE FROM contents WHERE seq IN (SELECT seq FROM messages "
        "WHERE finished_at IS NOT NULL)",
        *_RETENTION_INDEXES),
    # 5: counts kept by triggers, filled once from the rows (a few seconds at a million).
    5: (*_COUNT_TABLES, *FULL_COUNTS, *_COUNT_TRIGGERS),
    # 6: content whose line ends are all CRLF already, so delivery skips that check.
    # Messages queued before it are checked as they always were.
    6: ("ALTER TABLE messages ADD COLUMN crlf INTEGER NOT NULL DEFAULT 0",),
}
# Indexes added after version 1 first shipped: made on every open when missing (a file
# written by an older mailgate gets them then; older code ignores them). They cover the
# dashboard's activity() and the age filter of list(): each count reads one index range,
# never the table, so a day with 100,000 messages costs a few milliseconds.
_ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_queued ON messages (queued_at)",
    "CREATE INDEX IF NOT EXISTS messages_bounces ON messages (queued_at) WHERE sender = ''",
    "CREATE INDEX IF NOT EXISTS attempts_outcome ON attempts (outcome, at)",
)


def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Make the tables of a new file, or migrate one from an older mailgate, and add the
    indexes added since; QueueError for a file from a newer mailgate."""
    # BEGIN IMMEDIATE: two processes starting together must not both see version 0
    # and both create tables.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif not 1 <= version <= SCHEMA_VERSION:
            raise QueueError(
                f"{path} has queue schema version {version}, but this mailgate "
                f"knows only versions 1 to {SCHEMA_VERSION}; run the mailgate that "
                "wrote it"
            )
        elif version < SCHEMA_VERSION:
            # A file from an older mailgate: brought up to date in this transaction,
            # so other processes opening it meanwhile wait and then see the new
            # version; a failure leaves the file as it was.
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in _ADDED_INDEXES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version == 0:
        # SQLite syncs the directory when it creates the WAL but not when it creates
        # the database file; without this a crash could lose the new file, and with
        # it everything checkpointed into it.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def whole_minutes(lo: float, hi: float) -> tuple[int, int]:
    """The minutes [first, last) that lie wholly within [lo, hi): the smallest `first`
    with 60 * first >= lo and the largest `last` with 60 * last <= hi, in exact integer
    terms (a row's minute is CAST(t AS INTEGER) / 60, see schema.py). Minutes from 1 on
    only: a time before 60 (or negative) is never summed, its rows are counted instead.
    first >= last when no whole minute fits."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0, 0
    first = max(1, math.ceil(lo / 60))
    while first > 1 and (first - 1) * 60 >= lo:
        first -= 1
    while first * 60 < lo:
        first += 1
    last = math.floor(hi / 60)
    while (last + 1) * 60 <= hi:
        last += 1
    while last * 60 > hi:
        last -= 1
    return first, last
