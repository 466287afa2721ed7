"""The PostgreSQL queue's tables, versioned like the SQLite file's.

The version is a row of `mailgate_schema`. A new (empty) database gets the tables when a
node first opens it; a database from an older mailgate is brought up to date by
`mailgate queue migrate` (not by whichever node starts first: in a rolling upgrade the
operator decides when the schema moves), and one from a newer mailgate is refused.
Creating and migrating hold a transaction-level advisory lock, so nodes starting
together do not both create tables.

Times are Unix seconds (`double precision`), as the `Queue` protocol passes them. Node
liveness (`nodes.heartbeat_at`) uses the database's own clock, so clocks of the nodes
that differ by a few seconds do not make a live node look dead.
"""

from __future__ import annotations

import psycopg

from mailgate.queue import QueueError

__all__ = ["FOLD", "FULL_COUNTS", "SCHEMA_VERSION", "check_schema", "fold_counts", "migrate"]

SCHEMA_VERSION = 3
_LOCK = 0x6D61696C67617465  # "mailgate": the advisory lock creating the tables

# As in the SQLite schema: messages (small rows, listed) apart from their content;
# content in pieces of at most a few hundred KiB (`contents.n` orders them), so neither
# storing nor reading a message needs it whole in one value. recipients.due_at is the one
# column claim() looks at (next_attempt while unclaimed, the lease's end while claimed,
# NULL when never due). `nodes` are the processes that claim work, with their heartbeat.
_SCHEMA = (
    "CREATE TABLE mailgate_schema (version integer NOT NULL)",
    """CREATE TABLE messages (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        sender text NOT NULL,
        received_at double precision NOT NULL,
        queued_at double precision NOT NULL,
        size bigint NOT NULL,
        client_address text NOT NULL,
        client_helo text NOT NULL,
        protocol text NOT NULL,
        authenticated_as text,
        envid text,
        ret text,
        smtputf8 boolean NOT NULL,
        body_8bit boolean NOT NULL,
        finished_at double precision,
        crlf boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX messages_sender ON messages (lower(sender), seq)",
    "CREATE INDEX messages_live ON messages (seq) WHERE finished_at IS NULL",
    "CREATE INDEX messages_finished ON messages (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX messages_queued ON messages (queued_at)",
    """CREATE TABLE contents (
        seq bigint NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
        n integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (seq, n)
    )""",
    """CREATE TABLE recipients (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        msg_seq bigint NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
        address text NOT NULL,
        domain text NOT NULL,
        orcpt text,
        notify text,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision,
        due_at double precision,
        last_code integer,
        last_enhanced text,
        last_text text,
        claim_token text,
        claim_until double precision,
        claim_owner text,
        updated_at double precision NOT NULL,
        delay_notified boolean NOT NULL DEFAULT false,
        held_reason text
    )""",
    "CREATE INDEX recipients_due ON recipients (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_domain_due ON recipients (domain, due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_message ON recipients (msg_seq)",
    "CREATE INDEX recipients_state ON recipients (state, msg_seq)",
    "CREATE INDEX recipients_domain ON recipients (domain, msg_seq)",
    "CREATE INDEX recipients_claim ON recipients (claim_token) WHERE claim_token IS NOT NULL",
    "CREATE INDEX recipients_owner ON recipients (claim_owner) WHERE claim_owner IS NOT NULL",
    """CREATE TABLE attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        recipient_id bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
        at double precision NOT NULL,
        host text NOT NULL,
        code integer NOT NULL,
        enhanced text,
        text text NOT NULL,
        outcome text NOT NULL,
        remote boolean NOT NULL,
        tls text
    )""",
    "CREATE INDEX attempts_recipient ON attempts (recipient_id)",
    "CREATE INDEX attempts_outcome ON attempts (outcome, at)",
    """CREATE TABLE nodes (
        id text PRIMARY KEY,
        name text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
    )""",
    # Connection slots per destination, held across the cluster (take_slot): a row per
    # slot, taken with SKIP LOCKED, free when `holder` is NULL, its lease past, or its
    # node gone from `nodes`.
    """CREATE TABLE slots (
        key text NOT NULL,
        slot integer NOT NULL,
        holder text,
        node text,
        until double precision,
        PRIMARY KEY (key, slot)
    )""",
    "CREATE INDEX slots_holder ON slots (holder) WHERE holder IS NOT NULL",
    # AUTH failures shared by the cluster's nodes (share_counts): per node, kind ("ip",
    # "user"), key and bucket of BUCKET seconds; a node reads the others' sums over the
    # window and never its own (it counts those itself, exactly).
    """CREATE TABLE counts (
        node text NOT NULL,
        kind text NOT NULL,
        key text NOT NULL,
        bucket bigint NOT NULL,
        n integer NOT NULL,
        PRIMARY KEY (node, kind, key, bucket)
    )""",
    "CREATE INDEX counts_bucket ON counts (bucket)",
)
# Counts kept as the rows change (version 2), as the SQLite schema's version 5 keeps them:
# `counts()` (every queue page, `/metrics`, `queue list`) and `activity()` (the dashboard)
# would otherwise count rows, a whole index at a million recipients. Triggers keep them
# in the transaction that changes the rows, so they are exactly as durable as the rows
# and every writer (any node's enqueue, record, hold, purge, a cascade, an
# administrator's own SQL, a node of version 1 still running during a rolling upgrade)
# keeps them right without knowing.
#
# Unlike SQLite, several nodes write at once, so a counter row per state would be a hot
# spot: every transaction that queues mail would update the row 'queued' and hold its
# lock until its commit's WAL flush, and the nodes' group commits would queue up behind
# each other on that one row. Instead the triggers only INSERT into delta tables
# (`state_deltas`, `activity_deltas`: no index, no key, so nothing two writers could both
# want), and the node thread of one node at a time (an advisory lock taken with "try")
# folds them every heartbeat into the totals (`state_counts`, `activity_minutes`). A read
# adds the totals and the deltas not yet folded in one statement, one snapshot: a fold
# deletes deltas and adds them to the totals in one transaction, so a reader sees either
# both before or both after, never a delta twice or not at all.
#
# Minutes as in SQLite: the minute of a time t is trunc(t)::bigint / 60 (whole seconds,
# integer division), so "minute in [a, b)" is exactly "t in [60a, 60b)" for t >= 0.
# INSERT and DELETE are counted per statement from its transition table (one delta row
# per state or minute, however many rows the statement wrote: a group commit's enqueue
# statement writes one or two for the whole batch). So is an UPDATE of recipients (a
# batch's records are one statement; a claim, which changes no state, writes none); an
# UPDATE of messages or attempts (by hand, rare) per row, and only when the counted
# columns changed.
_MINUTE = "trunc({})::bigint / 60"
_COUNT_TABLES = (
    "CREATE TABLE state_counts (state text PRIMARY KEY, n bigint NOT NULL)",
    """CREATE TABLE activity_minutes (
        series text NOT NULL,
        minute bigint NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (series, minute)
    )""",
    "CREATE TABLE state_deltas (state text NOT NULL, n bigint NOT NULL)",
    "CREATE TABLE activity_deltas (series text NOT NULL, minute bigint NOT NULL, "
    "n bigint NOT NULL)",
    # The bounced series' partial minutes, counted in an index as the others are.
    "CREATE INDEX messages_bounces ON messages (queued_at) WHERE sender = ''",
)


def _function(name: str, body: str) -> str:
    return (f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{body} RETURN NULL; END $$")


def _messages_rows(rows: str, sign: str) -> str:
    minute = _MINUTE.format("queued_at")
    return (f"INSERT INTO activity_deltas (series, minute, n) SELECT 'accepted', {minute}, "
            f"{sign}count(*) FROM {rows} GROUP BY 2; "
            f"INSERT INTO activity_deltas (series, minute, n) SELECT 'bounced', {minute}, "
            f"{sign}count(*) FROM {rows} WHERE sender = '' GROUP BY 2;")


def _attempts_rows(rows: str, sign: str) -> str:
    return (f"INSERT INTO activity_deltas (series, minute, n) SELECT outcome, "
            f"{_MINUTE.format('at')}, {sign}count(*) FROM {rows} GROUP BY 1, 2;")


def _recipients_rows(rows: str, sign: str) -> str:
    return (f"INSERT INTO state_deltas (state, n) SELECT state, {sign}count(*) FROM {rows} "
            "GROUP BY 1;")


def _row(rows: str) -> str:
    return rows.replace(" FROM new_rows", " FROM (SELECT NEW.*) AS r").replace(
        " FROM old_rows", " FROM (SELECT OLD.*) AS r")


_COUNT_TRIGGERS = (
    _function("mailgate_messages_in", _messages_rows("new_rows", "")),
    _function("mailgate_messages_out", _messages_rows("old_rows", "-")),
    _function("mailgate_messages_moved", _row(_messages_rows("old_rows", "-")
                                              + " " + _messages_rows("new_rows", ""))),
    _function("mailgate_recipients_in", _recipients_rows("new_rows", "")),
    _function("mailgate_recipients_out", _recipients_rows("old_rows", "-")),
    # An UPDATE turns its old rows into its new ones one for one, so what it did to the
    # states is the new rows' states counted less the old rows' (no join on the key).
    _function("mailgate_recipients_moved",
              "INSERT INTO state_deltas (state, n) SELECT state, sum(n) FROM (SELECT state, "
              "1 AS n FROM new_rows UNION ALL SELECT state, -1 FROM old_rows) AS d "
              "GROUP BY state HAVING sum(n) <> 0;"),
    _function("mailgate_attempts_in", _attempts_rows("new_rows", "")),
    _function("mailgate_attempts_out", _attempts_rows("old_rows", "-")),
    _function("mailgate_attempts_moved", _row(_attempts_rows("old_rows", "-") + " "
                                              + _attempts_rows("new_rows", ""))),
    *(f"CREATE TRIGGER {table}_counted AFTER INSERT ON {table} REFERENCING NEW TABLE AS "
      f"new_rows FOR EACH STATEMENT EXECUTE FUNCTION mailgate_{table}_in()"
      for table in ("messages", "recipients", "attempts")),
    *(f"CREATE TRIGGER {table}_uncounted AFTER DELETE ON {table} REFERENCING OLD TABLE AS "
      f"old_rows FOR EACH STATEMENT EXECUTE FUNCTION mailgate_{table}_out()"
      for table in ("messages", "recipients", "attempts")),
    "CREATE TRIGGER messages_recounted AFTER UPDATE OF queued_at, sender ON messages "
    "FOR EACH ROW WHEN (OLD.queued_at IS DISTINCT FROM NEW.queued_at OR OLD.sender IS "
    "DISTINCT FROM NEW.sender) EXECUTE FUNCTION mailgate_messages_moved()",
    "CREATE TRIGGER recipients_recounted AFTER UPDATE ON recipients REFERENCING OLD TABLE "
    "AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION mailgate_recipients_moved()",
    "CREATE TRIGGER attempts_recounted AFTER UPDATE OF at, outcome ON attempts FOR EACH ROW "
    "WHEN (OLD.at IS DISTINCT FROM NEW.at OR OLD.outcome IS DISTINCT FROM NEW.outcome) "
    "EXECUTE FUNCTION mailgate_attempts_moved()",
)
# What the rows come to, for a database that had no counts yet (the migration) and for
# a test that compares the kept counts with a full count.
FULL_COUNTS = (
    "INSERT INTO state_counts (state, n) SELECT state, count(*) FROM recipients "
    "GROUP BY state",
    f"INSERT INTO activity_minutes (series, minute, n) SELECT 'accepted', "
    f"{_MINUTE.format('queued_at')} AS m, count(*) FROM messages GROUP BY m",
    f"INSERT INTO activity_minutes (series, minute, n) SELECT 'bounced', "
    f"{_MINUTE.format('queued_at')} AS m, count(*) FROM messages WHERE sender = '' "
    "GROUP BY m",
    f"INSERT INTO activity_minutes (series, minute, n) SELECT outcome, "
    f"{_MINUTE.format('at')} AS m, count(*) FROM attempts GROUP BY outcome, m",
)
# The fold: deltas out and into the totals, in one transaction; totals that reach zero
# go (a state keeps its row: five rows at most).
FOLD = (
    "WITH d AS (DELETE FROM state_deltas RETURNING state, n) "
    "INSERT INTO state_counts AS s (state, n) SELECT state, sum(n) FROM d GROUP BY state "
    "ON CONFLICT (state) DO UPDATE SET n = s.n + EXCLUDED.n",
    "WITH d AS (DELETE FROM activity_deltas RETURNING series, minute, n) "
    "INSERT INTO activity_minutes AS a (series, minute, n) SELECT series, minute, sum(n) "
    "FROM d GROUP BY series, minute HAVING sum(n) <> 0 "
    "ON CONFLICT (series, minute) DO UPDATE SET n = a.n + EXCLUDED.n RETURNING series, "
    "minute, n",
)
_FOLD_LOCK = _LOCK + 1  # one folding node at a time (the others skip their turn)
# The statements that add counts to a version 1 database. The tables are locked against
# writes first: a node of version 1 still running must not commit rows between the full
# count and the triggers' creation (they would never be counted).
_ADD_COUNTS = (
    "LOCK TABLE messages, recipients, attempts IN SHARE ROW EXCLUSIVE MODE",
    *_COUNT_TABLES, *FULL_COUNTS, *_COUNT_TRIGGERS,
)
# What takes a database from the version before to each version, oldest first.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: _ADD_COUNTS,
    # 3: content whose line ends are all CRLF already (delivery skips that check). A
    # column with a constant default: no table rewrite; nodes of version 2 still running
    # store false, which only means "check it", as before.
    3: ("ALTER TABLE messages ADD COLUMN crlf boolean NOT NULL DEFAULT false",),
}


def fold_counts(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Fold the count deltas into the totals, in the open transaction; False (nothing
    done) when another node is folding right now."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_FOLD_LOCK,)).fetchone()
    if not row or not row[0]:
        return False
    conn.execute(FOLD[0])
    zero = [(s, m) for s, m, n in conn.execute(FOLD[1]).fetchall() if n == 0]
    if zero:
        conn.execute("DELETE FROM activity_minutes WHERE (series, minute) IN "
                     "(SELECT * FROM unnest(%s::text[], %s::bigint[])) AND n = 0",
                     ([s for s, _ in zero], [m for _, m in zero]))
    return True


def _version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """0 for a database without mailgate's tables."""
    row = conn.execute("SELECT to_regclass('mailgate_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT max(version) FROM mailgate_schema").fetchone()
    return int(str(got[0])) if got and got[0] is not None else 0


def check_schema(conn: psycopg.Connection[tuple[object, ...]], where: str) -> None:
    """Create the tables in an empty database; QueueError for one that is older (run
    `mailgate queue migrate`) or newer (run the mailgate that wrote it) than this code."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        version = _version(conn)
        if version == 0:
            _create(conn)
            return
    if version > SCHEMA_VERSION:
        raise QueueError(
            f"the queue database at {where} has schema version {version}, but this "
            f"mailgate knows only versions 1 to {SCHEMA_VERSION}; run the mailgate that "
            "wrote it (upgrade this node)")
    if version < SCHEMA_VERSION:
        raise QueueError(
            f"the queue database at {where} has schema version {version} and this "
            f"mailgate needs {SCHEMA_VERSION}: run `mailgate queue migrate` once (see "
            "docs/cluster.md, rolling upgrade)")


def _create(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    for statement in (*_SCHEMA, *_COUNT_TABLES, *_COUNT_TRIGGERS):
        conn.execute(statement)
    conn.execute("INSERT INTO mailgate_schema (version) VALUES (%s)", (SCHEMA_VERSION,))


def migrate(conn: psycopg.Connection[tuple[object, ...]], where: str) -> tuple[int, int]:
    """Create or bring the tables up to date; (version before, version after)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the queue database at {where} has schema version {version}, newer than "
                f"this mailgate's {SCHEMA_VERSION}: nothing to do here; upgrade mailgate")
        if version == 0:
            _create(conn)
        else:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute("UPDATE mailgate_schema SET version = %s", (SCHEMA_VERSION,))
    return version, SCHEMA_VERSION
