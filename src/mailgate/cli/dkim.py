"""`mailgate dkim keygen`: a DKIM signing key and the DNS record that publishes it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mailgate.cli._common import fail, main


@main.group()
def dkim() -> None:
    """DKIM signing keys (docs/authentication.md)."""


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", required=True, help="The s= tag: the key is published at "
              "SELECTOR._domainkey.DOMAIN.")
@click.option("--algorithm", type=click.Choice(["rsa-sha256", "ed25519-sha256"]),
              default="rsa-sha256", show_default=True, help="The kind of key.")
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True,
              help="RSA key size.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the private key (mode 0600; never overwritten). "
                   "Default: DOMAIN.SELECTOR.key in the current directory.")
def keygen(domain: str, selector: str, algorithm: str, bits: int, out: Path | None) -> None:
    """Make a private key for DOMAIN and print the TXT record to publish.

    The record is one zone-file line, its text split into quoted strings of at most
    255 characters. Then add a [dkim."DOMAIN"] table naming the key file, selector and
    algorithm to the configuration, and `mailgate check DOMAIN --selector SELECTOR`
    tells whether the published record matches the key.
    """
    from typing import cast

    from mailgate.config.dkim import (
        DKIMAlgorithm,
        _selector,
        generate_key,
        parse_key,
        public_record,
        zone_line,
    )
    from mailgate.config.syntax import _Bad, _domain

    try:
        name = _domain(domain)
    except _Bad as exc:
        fail(f"{domain!r} {exc}.")
    try:
        _selector(selector)
    except _Bad as exc:
        fail(f"--selector {selector!r} {exc}.")
    path = out if out is not None else Path(f"{name}.{selector}.key")
    data = generate_key(cast(DKIMAlgorithm, algorithm), bits)
    key = parse_key(data, cast(DKIMAlgorithm, algorithm), path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
    except FileExistsError:
        fail(f"{path} already exists; a key is never overwritten: remove it or give "
             "another --out.")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    click.echo(f"; private key written to {path} (mode 0600); publish this record:",
               err=True)
    click.echo(zone_line(f"{selector}._domainkey.{name}", public_record(key)))
