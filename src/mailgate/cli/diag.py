"""`mailgate check` and `mailgate probe`: where mail for a domain goes, how its MX answers."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailgate.cli._common import (
    _config_option,
    _diag_format,
    _diag_nameserver,
    _diag_nameservers,
    _diag_seconds,
    _lang_option,
    _load_config,
    default_lang,
    fail,
    main,
)


@main.command()
@click.argument("domain")
@_diag_nameserver
@_config_option
@click.option("--selector", "selectors", multiple=True, metavar="S",
              help="A DKIM selector whose key record to check (repeatable); the [dkim] "
                   "keys of --config for DOMAIN are checked too.")
@click.option("--timeout", "timeout_text", default="5", show_default=True,
              help="Seconds per DNS lookup.")
@_diag_format
@_lang_option
def check(domain: str, nameservers: tuple[str, ...], config_path: Path | None,
          selectors: tuple[str, ...], timeout_text: str, fmt: str, lang: str | None) -> None:
    """Where mail for DOMAIN would go, and how receivers authenticate mail from it.

    Shows the MX hosts with preferences and addresses, an implicit MX, a null MX
    (RFC 7505), or the DNS failure, each explained; also the local domains, [routes]
    entries and relayhost of --config (without it, of the zero-config defaults that a
    plain `mailgate serve` runs with: `check localhost` says it is delivered locally).
    Then the SPF, DKIM (--selector), DMARC, MTA-STS and TLS-RPT records, what is wrong
    with them and how to fix it.
    Exit status (routing only): 0 deliverable, 1 null MX or permanent failure,
    75 temporary failure, 2 bad input.
    """
    import asyncio

    from mailgate.delivery.check import check as do_check
    from mailgate.dns import Resolver

    timeout = _diag_seconds("--timeout", timeout_text)
    # Without --config, the zero-config defaults that a plain `mailgate serve` runs with:
    # `check localhost` next to such a server must say that mailgate delivers it itself.
    config = _load_config(config_path)
    servers = _diag_nameservers(nameservers)
    if not servers and config_path is not None:
        servers = list(config.dns.nameservers)
    try:
        resolver = Resolver(servers, timeout=timeout)
        report = asyncio.run(do_check(domain, resolver, config, selectors=selectors))
    except ValueError as exc:
        fail(str(exc))
    sys.stdout.write(report.render(fmt, lang or default_lang()))
    sys.exit(report.exit_status)


@main.command()
@click.argument("target")
@click.option("--port", "port_text", default="25", show_default=True,
              help="Port of the MX hosts (a HOST:PORT target gives its own).")
@click.option("--from", "mail_from", default=None, metavar="ADDR",
              help="MAIL FROM address (needs --rcpt; default with --rcpt: <>).")
@click.option("--rcpt", default=None, metavar="ADDR", help="RCPT TO address to try.")
@click.option("--starttls/--no-starttls", "starttls", default=None,
              help="Require STARTTLS / never use it (default: use it when offered).")
@click.option("--verify", is_flag=True,
              help="Require TLS and check the certificate as the TLS level verify does.")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM file of the CAs --verify trusts (default: the system's).")
@_diag_nameserver
@click.option("--helo", default="localhost", show_default=True, help="Name to give in EHLO.")
@click.option("--timeout", "timeout_text", default="30", show_default=True,
              help="Seconds to wait for the connection and for each reply.")
@_diag_format
@_lang_option
def probe(target: str, port_text: str, mail_from: str | None, rcpt: str | None,
          starttls: bool | None, verify: bool, ca_file: Path | None,
          nameservers: tuple[str, ...], helo: str, timeout_text: str, fmt: str,
          lang: str | None) -> None:
    """Talk to the mail server of TARGET as a delivery would, without sending a message.

    TARGET is a DOMAIN (its MX hosts are tried in order until one answers), or a host
    to connect to directly: HOST:PORT, IP, [IP]:PORT. Runs EHLO, STARTTLS, optionally
    MAIL FROM and RCPT TO, then RSET and QUIT; never DATA. Prints every reply with its
    explanation, the TLS certificate, and a verdict. A null-MX domain is reported
    without connecting.
    Exit status: 0 accepted, 1 refused, 75 temporary failure or no answer, 2 bad input.
    """
    import asyncio

    from mailgate.delivery.probe import StartTLSPolicy
    from mailgate.delivery.probe import probe as do_probe
    from mailgate.dns import Resolver

    if not (port_text.isdigit() and 0 < int(port_text) < 65536):
        fail(f"--port {port_text!r}: the port must be a number from 1 to 65535.")
    port = int(port_text)
    timeout = _diag_seconds("--timeout", timeout_text)
    policy: StartTLSPolicy = "may" if starttls is None else "require" if starttls else "never"
    servers = _diag_nameservers(nameservers)
    try:
        resolver = Resolver(servers, timeout=min(timeout, 5.0))
        report = asyncio.run(do_probe(
            target, resolver=resolver, port=port, helo=helo, mail_from=mail_from, rcpt=rcpt,
            starttls=policy, timeout=timeout, verify=verify, ca_file=ca_file,
        ))
    except ValueError as exc:
        fail(str(exc))
    sys.stdout.write(report.render(fmt, lang or default_lang()))
    sys.exit(report.exit_status)
