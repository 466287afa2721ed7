"""`mailgate queue ...`: look at and act on the mail queue."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailgate.cli._common import (
    _config_option,
    _load_queue_settings,
    default_lang,
    fail,
    main,
)

if TYPE_CHECKING:
    from mailgate.config import QueueSettings
    from mailgate.queue import Queue


@main.group()
def queue() -> None:
    """Look at and act on the mail queue."""


def _open_queue(config_path: Path | None) -> tuple[QueueSettings, Queue]:
    from mailgate.queue import NoQueue, QueueError
    from mailgate.queue.backends import open_queue

    config = _load_queue_settings(config_path)
    try:
        return config, open_queue(config, create=False)
    except NoQueue as exc:
        fail(f"{exc}: start `mailgate serve` first, or pass --config.")
    except QueueError as exc:  # a cluster's database unreachable, a schema to migrate
        fail(str(exc))


@queue.command("migrate")
@_config_option
def queue_migrate(config_path: Path | None) -> None:
    """Create the queue's tables, or bring them up to this mailgate's schema version.

    A PostgreSQL queue is migrated only by this command (once, from any node: see
    docs/cluster.md on rolling upgrades); a SQLite queue is also migrated when opened."""
    from mailgate.queue import QueueError
    from mailgate.queue.backends import migrate_queue

    config = _load_queue_settings(config_path)
    try:
        before, after = migrate_queue(config)
    except QueueError as exc:
        fail(str(exc))
    if before == after:
        click.echo(f"queue schema version {after}: up to date")
    elif before == 0:
        click.echo(f"queue created with schema version {after}")
    else:
        click.echo(f"queue schema migrated from version {before} to {after}")


_qformat = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                        show_default=True)


@queue.command("list")
@_config_option
@_qformat
@click.option("--state", type=click.Choice(["queued", "deferred", "held", "delivered", "failed"]),
              default=None, help="Only messages with a recipient in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--all", "everything", is_flag=True,
              help="Finished messages too (delivered or bounced, kept for [queue] "
                   "keep_records); by default only live ones.")
def queue_list(config_path: Path | None, fmt: str, state: str | None, limit: int,
               everything: bool) -> None:
    """Messages in the queue, newest first: those still to be delivered (--all: and
    the finished ones still on record). Streams: any --limit is fine."""
    from mailgate.queue import QueueError, RecipientState
    from mailgate.queue.report import stream_list

    _, q = _open_queue(config_path)
    try:
        for piece in stream_list(q, limit, fmt, live_only=not everything,
                                 state=RecipientState(state) if state else None):
            sys.stdout.write(piece)
        sys.stdout.flush()
    except QueueError as exc:
        fail(str(exc))
    finally:
        q.close()


@queue.command("purge")
@_config_option
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Keep records finished within this time (default: [queue] keep_records); "
                   "0 removes every finished record.")
def queue_purge(config_path: Path | None, older_than: str | None) -> None:
    """Remove the records of finished messages (delivered, bounced, expired) kept past
    [queue] keep_records. Live mail is never touched. The server does this by itself
    every few minutes; this is for doing it now."""
    import time

    from mailgate.config import parse_duration
    from mailgate.queue import QueueError

    config, q = _open_queue(config_path)
    keep = config.queue.keep_records
    if older_than is not None:
        try:
            keep = parse_duration(older_than)
        except ValueError as exc:
            q.close()
            fail(f"--older-than {older_than!r}: {exc}.")
    total = 0
    try:
        cutoff = time.time() - keep
        while n := q.purge(cutoff):
            total += n
    except QueueError as exc:
        fail(str(exc))
    finally:
        q.close()
    click.echo(f"{total} finished message record(s) purged")


@queue.command("export")
@_config_option
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def queue_export(config_path: Path | None, file: str) -> None:
    """Write the whole queue (live messages with their content, and the finished
    records) to FILE ("-": standard output), to move it to another backend with
    `queue import`: from SQLite to a PostgreSQL cluster, or back. Stop the nodes first
    for an exact copy."""
    from mailgate.queue import QueueError
    from mailgate.queue.transfer import export_queue

    _, q = _open_queue(config_path)
    try:
        if file == "-":
            n = export_queue(q, sys.stdout)
        else:
            with open(file, "x", encoding="utf-8") as out:
                n = export_queue(q, out)
    except FileExistsError:
        fail(f"{file} exists already: give a new file name")
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}")
    except QueueError as exc:
        fail(str(exc))
    finally:
        q.close()
    click.echo(f"{n} message(s) exported", err=True)


@queue.command("import")
@_config_option
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def queue_import(config_path: Path | None, file: str) -> None:
    """Read an export (FILE, "-": standard input) into this queue: every message with its
    id, recipients' states and attempts. Messages already here are skipped, so an import
    cut short can be run again."""
    from mailgate.queue import QueueError
    from mailgate.queue.backends import open_queue
    from mailgate.queue.transfer import import_queue

    config = _load_queue_settings(config_path)
    try:
        q = open_queue(config)  # importing into a new queue creates it
    except QueueError as exc:
        fail(str(exc))
    try:
        if file == "-":
            stored, skipped = import_queue(q, sys.stdin)
        else:
            with open(file, encoding="utf-8") as source:
                stored, skipped = import_queue(q, source)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{file}: not a mailgate queue export (not UTF-8 text)")
    except QueueError as exc:
        fail(f"{file}: {exc}")
    finally:
        q.close()
    click.echo(f"{stored} message(s) imported, {skipped} already there")


@main.command("mailq")
@_config_option
def mailq(config_path: Path | None) -> None:
    """The mail queue as Postfix's mailq prints it (also: mailgate-sendmail -bp)."""
    from mailgate.queue import QueueError
    from mailgate.queue.report import mailq as mailq_lines

    _, q = _open_queue(config_path)
    try:
        for piece in mailq_lines(q):
            sys.stdout.write(piece)
        sys.stdout.flush()
    except QueueError as exc:
        fail(str(exc))
    finally:
        q.close()


@queue.command("show")
@click.argument("message_id")
@_config_option
@_qformat
def queue_show(message_id: str, config_path: Path | None, fmt: str) -> None:
    """One message: envelope, headers, recipients and every delivery attempt."""
    from mailgate.queue import QueueError
    from mailgate.queue.report import show_json, show_text

    _, q = _open_queue(config_path)
    try:
        msg = q.show(message_id, content=True)
    except QueueError as exc:
        fail(str(exc))
    finally:
        q.close()
    click.echo(show_json(msg) if fmt == "json" else show_text(msg, default_lang()), nl=False)


def _queue_action(name: str, help_text: str) -> None:
    @queue.command(name, help=help_text)
    @click.argument("message_id", required=name != "retry")
    @click.option("--all", "everything", is_flag=True, hidden=name != "retry",
                  help="Every deferred message.")
    @_config_option
    def action(message_id: str | None, everything: bool, config_path: Path | None) -> None:
        import time

        from mailgate.queue import QueueError

        if name == "retry" and not message_id and not everything:
            fail("give a message id, or --all.")
        _, q = _open_queue(config_path)
        try:
            if name == "delete":
                assert message_id is not None
                q.delete(message_id)
                click.echo(f"{message_id}: deleted")
            elif name == "hold":
                assert message_id is not None
                click.echo(f"{message_id}: {q.hold(message_id)} recipient(s) held")
            elif name == "release":
                assert message_id is not None
                click.echo(f"{message_id}: {q.release_hold(message_id)} recipient(s) released")
            else:
                n = q.retry(None if everything else message_id, time.time())
                click.echo(f"{message_id or 'all'}: {n} recipient(s) due now")
        except QueueError as exc:
            fail(str(exc))
        finally:
            q.close()


_queue_action("delete", "Delete a message and all its recipients.")
_queue_action("hold", "Hold a message: no delivery until released.")
_queue_action("release", "Release a held message: due now.")
_queue_action("retry", "Make deferred recipients due now (one message, or --all).")
