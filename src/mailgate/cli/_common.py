"""What every `mailgate` command shares: the group, the options, failing in one line.

Imports of anything heavy happen inside the commands, so that `mailgate explain`
does not pay for the server or the web stack.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from mailgate.config import Config, QueueSettings

_T = TypeVar("_T")

EXIT_USAGE = 2


def default_lang() -> str:
    """The language the locale names (LC_ALL, then LC_MESSAGES, then LANG) when the
    knowledge base has it (`zh_CN.UTF-8` gives `zh`), else `en`."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            from mailgate.codes.registry import languages

            lang = re.split(r"[_.@-]", value.lower(), maxsplit=1)[0]
            return lang if lang in languages() else "en"
    return "en"


def fail(message: str) -> NoReturn:
    """One line on stderr naming the problem, and exit status 2."""
    click.echo(f"mailgate: {message}", err=True)
    sys.exit(EXIT_USAGE)


if TYPE_CHECKING:
    _StrChoice = click.Choice[str]  # generic from click 8.2 on; plain before
else:
    _StrChoice = click.Choice


class _Language(_StrChoice):
    """`--lang`: one of the knowledge base's languages, as `click.Choice` checks and shows
    them, but listed only when an option is read or help is shown: the registry is not
    loaded for commands that never explain a code (`mailgate queue list`)."""

    def __init__(self) -> None:
        super().__init__(())

    def _listed(self) -> None:
        if not self.choices:
            from mailgate.codes.registry import languages

            self.choices = languages()

    def get_metavar(self, *args: Any, **kwargs: Any) -> str | None:
        self._listed()
        return super().get_metavar(*args, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        self._listed()
        return super().convert(value, param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[Any]:
        self._listed()
        return super().shell_complete(ctx, param, incomplete)


_lang_option = click.option(
    "--lang",
    type=_Language(),
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



_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The TOML configuration file (default: zero-config: ./mailgate-data, loopback ports).",
)


def _load_config(path: Path | None) -> Config:
    from mailgate.config import load_config

    return _loaded(load_config, path)


def _load_queue_settings(path: Path | None) -> QueueSettings:
    """`load_queue_settings`, for the `queue` commands."""
    from mailgate.config import load_queue_settings

    return _loaded(load_queue_settings, path)


def _loaded(load: Callable[[Path | None], _T], path: Path | None) -> _T:
    """What `load` reads from `path`, or one sentence naming the problem and exit 2."""
    from mailgate.config import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the configuration file {path}: {exc.strerror}.")


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
