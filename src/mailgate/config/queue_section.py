"""[queue]: retention, and the backend that holds the queue.

`backend = "sqlite"` (the default) keeps the queue in data_dir/queue.db. `backend =
"postgresql"` shares one PostgreSQL database between several nodes (docs/cluster.md):
`dsn` names it (`postgresql://user@host:port/db`), or `dsn_file` names a file holding
the DSN when it carries a password; `node` names this node (default, "": the host
name, chosen by the backend).
A DSN may hold a password, so no sentence here ever quotes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mailgate.config.aliases import QueueConfig
from mailgate.config.reader import _choice, _duration, _Reader, _string
from mailgate.config.syntax import _Bad

__all__ = ["BACKENDS", "SECURE_DELETE", "data_dir_setting", "queue_section"]

BACKENDS = ("sqlite", "postgresql")
SECURE_DELETE = ("fast", "on")


def _dsn(value: object) -> str:
    text = _string(value).strip()
    if not text.startswith(("postgresql://", "postgres://")) and "=" not in text:
        raise _Bad('must be a PostgreSQL URI, like "postgresql://mailgate@db.example.org/'
                   'mailgate", or key=value pairs')
    return text


def data_dir_setting(doc: Mapping[str, object], r: _Reader) -> Path:
    """`data_dir`: the queue's home when it is SQLite (data_dir/queue.db), and much else's;
    by default mailgate-data beside the file."""
    return r.get(doc, (), "data_dir", r.path, r.base / "mailgate-data")


def queue_section(doc: Mapping[str, object], r: _Reader) -> QueueConfig:
    qt = r.section(doc, "queue")
    path = ("queue",)
    keep = r.get(qt, path, "keep_records", _duration(True), QueueConfig().keep_records)
    backend = r.get(qt, path, "backend", _choice(BACKENDS), "sqlite")
    secure_delete = r.get(qt, path, "secure_delete", _choice(SECURE_DELETE), "fast")
    node = r.get(qt, path, "node", _string, "").strip()
    dsn = ""
    if backend != "postgresql":
        pass  # dsn and dsn_file are for PostgreSQL only: left unread
    elif "dsn" in qt and "dsn_file" in qt:
        r.report_key("queue.dsn_file", "give dsn or dsn_file, not both")
    elif "dsn" in qt:
        try:
            dsn = _dsn(qt["dsn"])
        except _Bad as exc:  # never quote the value: it may hold a password
            r.report_key("queue.dsn", str(exc))
    elif "dsn_file" in qt:
        file = r.get(qt, path, "dsn_file", r.file, None)
        if file is not None:
            try:
                lines = file.read_text(encoding="utf-8").strip().splitlines()
                dsn = _dsn(lines[0] if lines else "")
            except OSError as exc:
                r.report_key("queue.dsn_file", f"cannot be read: {exc.strerror}")
            except _Bad as exc:
                r.report_key("queue.dsn_file", f"its first line {exc}")
    if backend == "postgresql" and not dsn and r.ok("queue.dsn", "queue.dsn_file"):
        r.report_key("queue.dsn", 'missing: backend = "postgresql" needs dsn (or dsn_file) '
                     'naming the database, like "postgresql://mailgate@db.example.org/mailgate"')
    return QueueConfig(keep_records=keep, backend=backend, dsn=dsn, node=node,
                       secure_delete=secure_delete)
