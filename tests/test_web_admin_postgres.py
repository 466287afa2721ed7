"""The admin pages and the API on a cluster's PostgreSQL queue: every test of
tests/test_web_admin.py that needs only its `env` runs again here, with the queue a
PostgresQueue (as another node sees it) instead of the SQLite file."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

import tests.test_web_admin as admin
from mailgate.config import Config
from mailgate.queue.postgres import PostgresQueue
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth

pytest_plugins = ["tests.support.postgres"]


@dataclasses.dataclass
class PgEnv(admin.Env):
    dsn: str = ""

    def age(self, qid: str, seconds: float) -> None:
        with psycopg.connect(self.dsn) as db:
            db.execute("UPDATE messages SET queued_at = queued_at - %s, "
                       "received_at = received_at - %s WHERE id = %s", (seconds, seconds, qid))


@pytest.fixture
def env(tmp_path: Path, pg_dsn: str) -> Iterator[admin.Env]:
    queue = PostgresQueue(pg_dsn, node="web")
    auth = AdminAuth(tmp_path)
    auth.set_password(admin.PASSWORD)
    due: list[int] = []
    stats: dict[str, Any] = {"refused": 7, "accepted": 3, "connections_open": 1}
    ctx = WebContext(config=Config(data_dir=tmp_path), queue=queue, auth=auth,
                     server_stats=lambda: stats, on_due=lambda: due.append(1))
    with TestClient(create_app(ctx), base_url="http://127.0.0.1:8025") as client:
        yield PgEnv(tmp_path, queue, auth, client, due, stats, pg_dsn)  # type: ignore[arg-type]
    queue.close()


for _name, _fn in list(vars(admin).items()):
    if _name.startswith("test_") and list(inspect.signature(_fn).parameters) == ["env"]:
        globals()[_name] = _fn
