"""Opening the queue the configuration names: the only constructor code outside `queue/`
sees. It lives apart from the interface (`mailgate.queue`) because it imports the
backends, and the backends import the interface: in one module that would be a circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailgate.queue import NoQueue, Queue, QueueUnavailable

if TYPE_CHECKING:
    import logging

    from mailgate.config import Config, QueueSettings

__all__ = ["migrate_queue", "open_queue", "open_queue_patiently"]

_BACKOFF_MAX = 30.0


def open_queue(config: Config | QueueSettings, *, create: bool = True) -> Queue:
    """The queue the configuration names: the only way code outside `queue/` gets one.

    `[queue] backend` chooses: "sqlite" (the default) is `data_dir/queue.db`;
    "postgresql" is the database `[queue] dsn` names, shared by every node of a cluster
    (QueueError naming its host when it cannot be reached). With `create=False`
    (the `queue` commands, which must not make an empty queue in the wrong place) a
    missing SQLite queue raises NoQueue instead."""
    if config.queue.backend == "postgresql":
        from mailgate.queue.postgres import PostgresQueue

        return PostgresQueue(config.queue.dsn, node=config.queue.node)
    from mailgate.queue.sqlite import SQLiteQueue

    path = config.data_dir / "queue.db"
    if not create and not path.exists():
        raise NoQueue(f"there is no queue at {path}")
    return SQLiteQueue(path, secure_delete=config.queue.secure_delete)


async def open_queue_patiently(config: Config, log: logging.Logger,
                               first_delay: float = 1.0) -> Queue:
    """`open_queue` for `serve`: while the queue's database cannot be reached (a cluster
    node starting before PostgreSQL, or while it restarts), say so, naming the host (never
    the password), and try again with a backoff from `first_delay` up to 30 s. Any other
    problem (a schema from a newer mailgate, a wrong password) ends the start at once."""
    import asyncio  # here, not with the module: the `queue` commands never load it

    delay = first_delay
    while True:
        try:
            return await asyncio.to_thread(open_queue, config)
        except QueueUnavailable as exc:
            log.error("%s; trying again in %g s", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _BACKOFF_MAX)


def migrate_queue(config: Config | QueueSettings) -> tuple[int, int]:
    """Create the queue's tables or bring them up to date (`mailgate queue migrate`);
    (schema version before, version after). QueueError for a newer schema."""
    if config.queue.backend == "postgresql":
        from mailgate.queue.postgres import migrate_database

        return migrate_database(config.queue.dsn)
    import sqlite3

    from mailgate.queue.sqlite import SCHEMA_VERSION, SQLiteQueue

    path = config.data_dir / "queue.db"
    before = 0
    if path.exists():
        with sqlite3.connect(path) as conn:
            before = int(conn.execute("PRAGMA user_version").fetchone()[0])
    SQLiteQueue(path).close()  # opening migrates (QueueError for a newer file)
    return before, SCHEMA_VERSION
