"""`mailgate serve` and `mailgate send`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click

from mailgate.cli._common import (
    _config_option,
    _load_config,
    default_lang,
    fail,
    main,
)


@main.command()
@_config_option
@click.option("--log-format", "log_format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines as text or one JSON object each (default: [log] format, text).")
def serve(config_path: Path | None, log_format: str | None) -> None:
    """Run the mail server (with no options: zero-config on loopback ports)."""
    import dataclasses

    from mailgate.config.dkim import unreadable_keys
    from mailgate.queue import QueueError
    from mailgate.serve import StartupError, run

    config = _load_config(config_path)
    if problems := unreadable_keys(config.dkim):
        fail("\n".join(problems))
    if log_format is not None:
        config = dataclasses.replace(
            config, log=dataclasses.replace(config.log, format=log_format))  # type: ignore[arg-type]
    try:
        status = run(config)
    except StartupError as exc:
        fail(str(exc))
    except (QueueError, ValueError) as exc:
        fail(f"cannot start: {exc}")
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"cannot start:{where} {exc.strerror or exc}.")
    sys.exit(status)


# --- send ------------------------------------------------------------------------------


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--server {text!r}: expected HOST or HOST:PORT, e.g. 127.0.0.1:2587.")
    return host, int(port)


@main.command()
@click.option("--server", "server", default="127.0.0.1:2587", show_default=True,
              help="Where to submit: HOST:PORT.")
@click.option("--from", "sender", default=None, help="Envelope sender (default: From:).")
@click.option("--to", "recipients", multiple=True,
              help="Envelope recipient; repeat. Default: To, Cc and Bcc of the message.")
@click.option("--starttls", is_flag=True, help="Require STARTTLS (default: use it if offered).")
@click.option("--ssl", "implicit_tls", is_flag=True, help="Implicit TLS (port 465 style).")
@click.option("--auth", "user", default=None,
              help="AUTH as USER; the password comes from $MAILGATE_PASSWORD or a prompt.")
@click.option("--helo", default="localhost", show_default=True, help="Name to give in EHLO.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait per step.")
@click.argument("file", type=click.File("rb"), default="-")
def send(server: str, sender: str | None, recipients: tuple[str, ...], starttls: bool,
         implicit_tls: bool, user: str | None, helo: str, timeout: float,
         file: BinaryIO) -> None:
    """Submit a message (from FILE or standard input), like sendmail -t.

    Prints the server's answer; on a refusal, each reply with what it means.
    Exit status: 0 accepted, 1 refused, 75 temporary failure (try again), 2 bad input.
    """
    import asyncio
    import os

    from mailgate.delivery.submit import SubmitError, submit

    host, port = _hostport(server, 2587)
    raw = file.read()
    password = None
    if user:
        password = os.environ.get("MAILGATE_PASSWORD")
        if password is None:
            password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    try:
        outcome = asyncio.run(submit(
            host, port, raw, sender=sender, recipients=list(recipients),
            require_tls=starttls, implicit_tls=implicit_tls, user=user, password=password,
            helo=helo, timeout=timeout,
        ))
    except SubmitError as exc:
        fail(str(exc))
    click.echo(outcome.report(default_lang()), nl=False)
    sys.exit(outcome.exit_status)
