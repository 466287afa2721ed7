"""`mailgate admin ...`: the web admin's password and API tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailgate.cli._common import (
    _config_option,
    _load_config,
    fail,
    main,
)


@main.group()
def admin() -> None:
    """The web admin: its password and its API tokens."""


@admin.command("set-password")
@_config_option
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def admin_set_password(config_path: Path | None, password_stdin: bool) -> None:
    """Set the web admin's password; every open admin session ends."""
    from mailgate.users import UserError
    from mailgate.web.auth import AdminAuth

    config = _load_config(config_path)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New admin password", hide_input=True,
                                confirmation_prompt=True, err=True)
    try:
        AdminAuth(config.data_dir).set_password(password)
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write to {config.data_dir}: {exc.strerror or exc}.")
    click.echo("admin password set; every open admin session has ended")


@admin.command("token")
@_config_option
@click.option("--name", default="", help="What the token is for (shown by --list).")
@click.option("--list", "show_list", is_flag=True, help="List the tokens (ids and names).")
@click.option("--revoke", "revoke_id", default=None, metavar="ID", help="Revoke a token.")
def admin_token(config_path: Path | None, name: str, show_list: bool,
                revoke_id: str | None) -> None:
    """Create an API token for /api/queue and /api/stats (printed once, stored hashed).

    \b
    mailgate admin token --name monitoring
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8025/api/stats
    mailgate admin token --list
    mailgate admin token --revoke 1a2b3c4d
    """
    import time

    from mailgate.web.tokens import TokenStore

    config = _load_config(config_path)
    store = TokenStore(config.data_dir)
    if show_list and revoke_id is not None:
        fail("give --list or --revoke, not both.")
    try:
        if show_list:
            for info in store.entries():
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
                click.echo(f"{info.id}  {when}  {info.name}".rstrip())
            return
        if revoke_id is not None:
            if not store.revoke(revoke_id):
                fail(f"there is no token {revoke_id!r} (see --list).")
            click.echo(f"token {revoke_id}: revoked")
            return
        info, token = store.create(name)
    except OSError as exc:
        fail(f"cannot write to {config.data_dir}: {exc.strerror or exc}.")
    click.echo(token)
    click.echo(f"token {info.id} created; it is shown only this once. Use it as "
               "'Authorization: Bearer <token>'.", err=True)
