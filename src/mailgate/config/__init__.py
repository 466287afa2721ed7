"""mailgate's settings: one TOML file -> typed, validated, frozen values.

`load_config(path)` reads the file (or, given None, returns the zero-config defaults);
`parse_config(text, source)` does the same from text. Every problem found is reported
at once in a `ConfigError`, one line each, naming the file, the key as a dotted path
(`limits.recipients`, `listen[0].role`, `routes."example.org"`), the value given and
what is allowed, so that a bad file stops startup with a message a person can act on.

The keys, their types and defaults are documented in docs/configuration.md.

The package's parts, each importing only those listed after it:

  sections.py   the section builders: TOML document -> Config, every problem collected
  mailstore.py  the builders of [maildir], [auth], server.user and the LMTP route check
  dkim.py       the builder of [dkim]: the signing keys, each read and checked at load time
  queue_section.py  the builders of data_dir and [queue] (retention, backend, dsn, node)
  reader.py     _Reader (key paths, the problem sentences) and the value converters
  values.py     the frozen settings: Config, Listener, Domains, Limits, ...
  dkimkey.py    DKIMKey (a loaded signing key) and keys_for(config.dkim, domain)
  syntax.py     sizes, durations, domain names, host:port, next hops; ConfigError
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.config.syntax import ConfigError

if TYPE_CHECKING:
    from mailgate.config.aliases import Aliases, QueueConfig, QueueSettings
    from mailgate.config.reader import _SECTIONS as _SECTIONS
    from mailgate.config.reader import SMTPS_PORT as SMTPS_PORT
    from mailgate.config.syntax import parse_duration, parse_size
    from mailgate.config.values import *  # noqa: F403  (its __all__: the settings)

__all__ = [
    "DEFAULT_LISTENERS",
    "TLS_LEVELS",
    "Aliases",
    "AuthChecks",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DNSConfig",
    "Delivery",
    "Domains",
    "Limits",
    "Listener",
    "LogConfig",
    "MaildirOwner",
    "Policy",
    "QueueConfig",
    "QueueSettings",
    "Relay",
    "Relayhost",
    "Route",
    "ServerConfig",
    "Submission",
    "TLSConfig",
    "TLSLevel",
    "Timeouts",
    "WebConfig",
    "load_config",
    "load_queue_settings",
    "parse_config",
    "parse_duration",
    "parse_size",
]

# The names the rest of mailgate and the tests use (`__all__`), and the others that
# `mailgate.config` has always offered, each loaded from where it lives on first use
# (PEP 562): importing one part of the package (the `queue` commands read only
# queue_section.py) then costs only that part, not the dozens of settings classes.
# Every name in values.py's `__all__` is offered too: the settings are listed there once.
_WHERE: dict[str, str] = {
    **dict.fromkeys(("Aliases", "QueueConfig", "QueueSettings"), "aliases"),
    **dict.fromkeys(("_SECTIONS", "SMTPS_PORT"), "reader"),
    **dict.fromkeys(("parse_duration", "parse_size"), "syntax"),
}


def __getattr__(name: str) -> object:
    module = importlib.import_module(f"{__name__}.{_WHERE.get(name, 'values')}")
    if name not in _WHERE and name not in module.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    from mailgate.config import values

    return sorted({*globals(), *_WHERE, *values.__all__})


# --- entry points -------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at `path`; None gives the zero-config defaults.

    Relative paths in the file resolve against the file's directory; the default
    data_dir against the current directory.
    """
    from mailgate.config.reader import _Reader
    from mailgate.config.sections import _build

    if path is None:
        return _build({}, _Reader("(defaults)", Path.cwd()), None)
    text = _read(path)
    return parse_config(text, str(path), base_dir=path.absolute().parent)


def parse_config(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Validate TOML `text`; `source` names it in messages, `base_dir` (default: the
    current directory) is where relative paths resolve."""
    from mailgate.config.reader import _Reader
    from mailgate.config.sections import _build

    doc = _document(text, source)
    base = (base_dir if base_dir is not None else Path.cwd()).expanduser().absolute()
    return _build(doc, _Reader(source, base), source)


def load_queue_settings(path: Path | None) -> QueueSettings:
    """Where the queue is, and no more: `data_dir` and [queue], read and checked as
    `load_config` reads them, for the `queue` commands.

    The file must still be TOML and name only known sections (a misspelt [queue] would
    otherwise send the commands to the wrong queue), but the other sections are not
    read: a mistake in [tls] does not stop anyone looking at the queue, and `mailgate
    queue list` does not load the settings classes of the whole server."""
    from mailgate.config.aliases import QueueSettings
    from mailgate.config.queue_section import data_dir_setting, queue_section
    from mailgate.config.reader import _ROOT_KEYS, _Reader

    if path is None:
        doc: dict[str, object] = {}
        r = _Reader("(defaults)", Path.cwd())
    else:
        doc = _document(_read(path), str(path))
        r = _Reader(str(path), path.absolute().parent)
    r.check_keys(doc, (), _ROOT_KEYS)
    settings = QueueSettings(data_dir_setting(doc, r), queue_section(doc, r))
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def _read(path: Path) -> str:
    """The text of the file at `path`, or ConfigError saying why it cannot be had."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([
            f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        ]) from None


def _document(text: str, source: str) -> dict[str, object]:
    """TOML `text` as a table, or ConfigError naming the line that is not TOML."""
    import tomllib

    text = text.removeprefix("\ufeff")  # a BOM some editors write; TOML has no use for it
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(source, text, exc)]) from None


def _syntax_problem(source: str, text: str, exc: Exception) -> str:
    import re

    message = str(exc)
    lines = text.splitlines()
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)\Z", message)
    if at:
        line, column = int(at.group(1)), int(at.group(2))
        where = f"line {line}, column {column}"
        message = message[: at.start()]
    else:
        message = message.removesuffix(" (at end of document)")
        line = len(lines)
        where = f"line {line} (end of file)"
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"{source}, {where}: not valid TOML: {message}\n    {line} | {shown}"
