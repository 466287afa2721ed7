"""Opening the queue the configuration names: the only constructor code outside `queue/`
sees. It lives apart from the interface (`mailgate.queue`) because it imports the
backends, and the backends import the interface: in one module that would be a circle.
"""

from __future__ import annotations

from mailgate.config import Config
from mailgate.queue import NoQueue, Queue

__all__ = ["open_queue"]


def open_queue(config: Config, *, create: bool = True) -> Queue:
    """The queue the configuration names: the only way code outside `queue/` gets one.

    Today that is the SQLite backend on `data_dir/queue.db`; a backend for clusters will
    be chosen here from the configuration, and no caller changes. With `create=False`
    (the `queue` commands, which must not make an empty queue in the wrong place) a
    missing queue raises NoQueue instead."""
    from mailgate.queue.sqlite import SQLiteQueue

    path = config.data_dir / "queue.db"
    if not create and not path.exists():
        raise NoQueue(f"there is no queue at {path}")
    return SQLiteQueue(path)
