"""`mailgate user ...`: AUTH users."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailgate.cli._common import (
    _config_option,
    _load_config,
    fail,
    main,
)

if TYPE_CHECKING:
    from mailgate.users import UserDB


@main.group()
def user() -> None:
    """AUTH users (stored as scrypt hashes in the data directory)."""


def _users(config_path: Path | None) -> UserDB:
    from mailgate.users import UserDB

    config = _load_config(config_path)
    return UserDB(config.data_dir / "users.json")


@user.command("add")
@click.argument("name")
@_config_option
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def user_add(name: str, config_path: Path | None, password_stdin: bool) -> None:
    """Add a user, or set a user's password."""
    from mailgate.users import UserError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        _users(config_path).set_password(name, password)
    except UserError as exc:
        fail(str(exc))
    click.echo(f"user {name}: password set")


@user.command("del")
@click.argument("name")
@_config_option
def user_del(name: str, config_path: Path | None) -> None:
    """Delete a user."""
    from mailgate.users import UserError

    try:
        _users(config_path).delete(name)
    except UserError as exc:
        fail(str(exc))
    click.echo(f"user {name}: deleted")


@user.command("list")
@_config_option
def user_list(config_path: Path | None) -> None:
    """List user names."""
    for name in _users(config_path).names():
        click.echo(name)
