"""The backend-neutral face of the queue: `open_queue` and the `Queue` protocol."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mailgate.config import Config
from mailgate.queue import NewMessage, NewRecipient, NoQueue, Queue
from mailgate.queue.backends import open_queue
from mailgate.queue.postgres import PostgresQueue
from mailgate.queue.sqlite import SQLiteQueue

# What the backends have beyond the protocol, on purpose: tests and benchmarks of that
# backend use them, nothing in src/ does.
BACKEND_ONLY = {"integrity_check", "commit_count", "committed_requests", "checkpoint_count",
                "node_id"}
BACKENDS = (SQLiteQueue, PostgresQueue)


def test_open_queue_makes_the_queue_in_data_dir(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    queue = open_queue(config)
    try:
        qid = queue.enqueue(NewMessage(sender="", recipients=[NewRecipient("a@example.net")],
                                       content=b"x", received_at=0.0))
    finally:
        queue.close()
    assert (tmp_path / "data" / "queue.db").is_file()
    again = open_queue(config, create=False)
    try:
        assert again.show(qid).recipients[0].address == "a@example.net"
    finally:
        again.close()


def test_open_queue_without_create_refuses_a_missing_queue(tmp_path: Path) -> None:
    with pytest.raises(NoQueue, match=r"there is no queue at .*queue\.db"):
        open_queue(Config(data_dir=tmp_path), create=False)
    assert not (tmp_path / "queue.db").exists()


def _public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_the_protocol_declares_every_method_of_the_backend(backend: type) -> None:
    """Callers see only `Queue`: a method the backend offers them (an async variant, say)
    must be declared there, or they would have to probe for it."""
    assert set(_public(backend)) - BACKEND_ONLY == set(_public(Queue))


def _parameters(fn: object) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults (annotations are strings spelt differently)."""
    assert callable(fn)
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("name", sorted(_public(Queue)))
def test_the_backend_matches_the_protocol(name: str, backend: type) -> None:
    declared, built = getattr(Queue, name), getattr(backend, name)
    assert _parameters(built) == _parameters(declared), name
    assert inspect.iscoroutinefunction(built) == inspect.iscoroutinefunction(declared), name


def test_the_writer_engine_knows_nothing_of_the_queue_s_tables() -> None:
    """queue/sqlite/writer.py runs writes it is given: it imports nothing of the package
    that knows messages (rows, schema, owners, SQLiteQueue), only the queue's errors and
    its own hand-over to event loops, which imports nothing of mailgate at all."""
    import ast

    from mailgate.queue import handover
    from mailgate.queue.sqlite import writer

    def imported(module: object) -> set[tuple[str | None, str]]:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[attr-defined]
        return {(node.module, alias.name) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("mailgate") for alias in node.names}

    assert imported(writer) == {("mailgate.queue", "QueueError"),
                                ("mailgate.queue", "QueueFull"),
                                ("mailgate.queue.handover", "LoopSlot"),
                                ("mailgate.queue.handover", "hand_over")}
    assert imported(handover) == set()
