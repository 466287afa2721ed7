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

__all__ = ["SCHEMA_VERSION", "check_schema", "migrate"]

SCHEMA_VERSION = 1
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
        finished_at double precision
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
# What takes a database from the version before to each version, oldest first.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}


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
    for statement in _SCHEMA:
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
