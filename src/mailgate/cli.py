"""The `mailgate` command: parse arguments, call the library, print.

Imports of anything heavy happen inside the commands, so that `mailgate explain`
does not pay for the server or the web stack.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import click

from mailgate.codes.registry import languages

if TYPE_CHECKING:
    from mailgate.config import Config
    from mailgate.queue import Queue
    from mailgate.users import UserDB

EXIT_USAGE = 2


def default_lang() -> str:
    """The language the locale names (LC_ALL, then LC_MESSAGES, then LANG) when the
    knowledge base has it (`zh_CN.UTF-8` gives `zh`), else `en`."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            lang = re.split(r"[_.@-]", value.lower(), maxsplit=1)[0]
            return lang if lang in languages() else "en"
    return "en"


def fail(message: str) -> NoReturn:
    """One line on stderr naming the problem, and exit status 2."""
    click.echo(f"mailgate: {message}", err=True)
    sys.exit(EXIT_USAGE)


_lang_option = click.option(
    "--lang",
    type=click.Choice(languages()),
    default=None,
    help="Language of the explanation (default: from the locale; LANG=zh_CN.UTF-8 gives zh).",
)
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json", "html"]),
    default="text",
    show_default=True,
    help="Output format; json follows the schema in docs/json.md.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailgate")
def main() -> None:
    """mailgate: a mail transfer agent that explains every SMTP reply."""


def _print(result: object, fmt: str) -> None:
    from mailgate.codes.render import render

    color = None if fmt == "text" and sys.stdout.isatty() else False
    out = render(result, fmt, color=color)  # type: ignore[arg-type]
    sys.stdout.write(out)


@main.command()
@click.argument("codes", nargs=-1, required=True)
@_lang_option
@_format_option
def explain(codes: tuple[str, ...], lang: str | None, fmt: str) -> None:
    """Explain reply codes: 556, 5.1.10, or a whole reply line.

    \b
    mailgate explain 556
    mailgate explain 5.1.10 --lang zh
    mailgate explain "556 5.1.10 Recipient address has null MX"
    """
    from mailgate.codes.explain import explain as do_explain
    from mailgate.codes.reply import ReplyError

    lang = lang or default_lang()
    results = []
    for code in codes:
        try:
            results.append(do_explain(code, lang))
        except ReplyError as exc:
            fail(str(exc))
    if fmt == "json" and len(results) > 1:
        import json

        from mailgate.codes.render import render

        items = [json.loads(render(r, "json")) for r in results]
        sys.stdout.write(json.dumps(items, ensure_ascii=False, indent=2) + "\n")
        return
    for i, r in enumerate(results):
        if i and fmt in ("text", "markdown"):
            sys.stdout.write("\n")
        _print(r, fmt)


@main.command()
@click.argument("code_a")
@click.argument("code_b")
@_lang_option
@_format_option
def compare(code_a: str, code_b: str, lang: str | None, fmt: str) -> None:
    """Compare two codes side by side: mailgate compare 221 556."""
    from mailgate.codes.compare import compare as do_compare
    from mailgate.codes.reply import ReplyError

    try:
        result = do_compare(code_a, code_b, lang or default_lang())
    except ReplyError as exc:
        fail(str(exc))
    _print(result, fmt)


# --- the server ----------------------------------------------------------------------

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The TOML configuration file (default: zero-config: ./mailgate-data, loopback ports).",
)


def _load_config(path: Path | None) -> Config:
    from mailgate.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the configuration file {path}: {exc.strerror}.")


@main.command()
@_config_option
def serve(config_path: Path | None) -> None:
    """Run the mail server (with no options: zero-config on loopback ports)."""
    from mailgate.queue import QueueError
    from mailgate.serve import StartupError, run

    config = _load_config(config_path)
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


# --- queue -----------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Look at and act on the mail queue."""


def _open_queue(config_path: Path | None) -> tuple[Config, Queue]:
    from mailgate.queue import NoQueue
    from mailgate.queue.backends import open_queue

    config = _load_config(config_path)
    try:
        return config, open_queue(config, create=False)
    except NoQueue as exc:
        fail(f"{exc}: start `mailgate serve` first, or pass --config.")


_qformat = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                        show_default=True)


@queue.command("list")
@_config_option
@_qformat
@click.option("--state", type=click.Choice(["queued", "deferred", "held", "delivered", "failed"]),
              default=None, help="Only messages with a recipient in this state.")
@click.option("--limit", default=100, show_default=True)
def queue_list(config_path: Path | None, fmt: str, state: str | None, limit: int) -> None:
    """Messages in the queue, newest first."""
    from mailgate.queue import RecipientState
    from mailgate.queue.report import list_json, list_text

    _, q = _open_queue(config_path)
    try:
        msgs = q.list(state=RecipientState(state) if state else None, limit=limit)
        click.echo(list_json(msgs, q.counts()) if fmt == "json" else list_text(msgs, q.counts()),
                   nl=False)
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


# --- users -----------------------------------------------------------------------------


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


# --- diagnostics: check and probe --------------------------------------------------------


def _diag_nameservers(values: tuple[str, ...]) -> list[tuple[str, int]]:
    """`--nameserver 127.0.0.1:5353` (or `[::1]:53`, or an address alone for port 53)."""
    import ipaddress

    servers: list[tuple[str, int]] = []
    for text in values:
        host, port = text, "53"
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                port = rest.removeprefix(":") if rest.startswith(":") else "x"
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            fail(f"--nameserver {text!r}: expected an IP address with a port, "
                 "e.g. 127.0.0.1:5353 or [::1]:53.")
        if not port.isdigit() or not 0 < int(port) < 65536:
            fail(f"--nameserver {text!r}: the port must be a number from 1 to 65535.")
        servers.append((host, int(port)))
    return servers


def _diag_seconds(option: str, text: str) -> float:
    """A positive number of seconds for `option`, or one line naming the problem (exit 2)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        fail(f"{option} {text!r}: expected a positive number of seconds.")
    return value


_diag_format = click.option("--format", "fmt", type=click.Choice(["text", "json"]),
                            default="text", show_default=True,
                            help="Output format; json is described in docs/cli.md.")
_diag_nameserver = click.option(
    "--nameserver", "nameservers", multiple=True, metavar="HOST:PORT",
    help="DNS server to ask (repeatable); default: [dns] nameservers, else the system's.",
)


@main.command()
@click.argument("domain")
@_diag_nameserver
@_config_option
@click.option("--timeout", "timeout_text", default="5", show_default=True,
              help="Seconds per DNS lookup.")
@_diag_format
@_lang_option
def check(domain: str, nameservers: tuple[str, ...], config_path: Path | None,
          timeout_text: str, fmt: str, lang: str | None) -> None:
    """Where mail for DOMAIN would go, and what that means for delivery.

    Shows the MX hosts with preferences and addresses, an implicit MX, a null MX
    (RFC 7505), or the DNS failure, each explained; with --config also local domains,
    [routes] entries and the relayhost.
    Exit status: 0 deliverable, 1 null MX or permanent failure, 75 temporary failure,
    2 bad input.
    """
    import asyncio

    from mailgate.delivery.check import check as do_check
    from mailgate.dns import Resolver

    timeout = _diag_seconds("--timeout", timeout_text)
    config = _load_config(config_path) if config_path is not None else None
    servers = _diag_nameservers(nameservers)
    if not servers and config is not None:
        servers = list(config.dns.nameservers)
    try:
        resolver = Resolver(servers, timeout=timeout)
        report = asyncio.run(do_check(domain, resolver, config))
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


# --- the web admin: password and API tokens ----------------------------------------------


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


if __name__ == "__main__":  # pragma: no cover
    main()
