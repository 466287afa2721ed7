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
  queue_section.py  the builder of [queue] (retention, backend, PostgreSQL dsn, node)
  reader.py     _Reader (key paths, the problem sentences) and the value converters
  values.py     the frozen settings: Config, Listener, Domains, Limits, ... and ConfigError
  dkimkey.py    DKIMKey (a loaded signing key) and keys_for(config.dkim, domain)
  syntax.py     sizes, durations, domain names, host:port, next hops
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

# The names the rest of mailgate and the tests use (`__all__`), and the others that
# `mailgate.config` has always offered, from where they now live.
from mailgate.config.aliases import Aliases, QueueConfig
from mailgate.config.reader import _SECTIONS as _SECTIONS
from mailgate.config.reader import SMTPS_PORT as SMTPS_PORT
from mailgate.config.reader import _Reader
from mailgate.config.sections import _build
from mailgate.config.syntax import parse_duration, parse_size
from mailgate.config.values import BARE_NEWLINES as BARE_NEWLINES
from mailgate.config.values import (
    DEFAULT_LISTENERS,
    TLS_LEVELS,
    AuthChecks,
    AuthConfig,
    Config,
    ConfigError,
    Delivery,
    DNSConfig,
    Domains,
    Limits,
    Listener,
    LogConfig,
    MaildirOwner,
    Policy,
    Relay,
    Relayhost,
    Route,
    ServerConfig,
    Submission,
    Timeouts,
    TLSConfig,
    TLSLevel,
    WebConfig,
)
from mailgate.config.values import LOG_LEVELS as LOG_LEVELS
from mailgate.config.values import MIN_MESSAGE_SIZE as MIN_MESSAGE_SIZE
from mailgate.config.values import MIN_RECIPIENTS as MIN_RECIPIENTS
from mailgate.config.values import ROLES as ROLES
from mailgate.config.values import BareNewlines as BareNewlines
from mailgate.config.values import KiB as KiB
from mailgate.config.values import LogLevel as LogLevel
from mailgate.config.values import MiB as MiB
from mailgate.config.values import Network as Network
from mailgate.config.values import Role as Role

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
    "parse_config",
    "parse_duration",
    "parse_size",
]

# --- entry points -------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at `path`; None gives the zero-config defaults.

    Relative paths in the file resolve against the file's directory; the default
    data_dir against the current directory.
    """
    if path is None:
        return _build({}, _Reader("(defaults)", Path.cwd()), None)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([
            f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        ]) from None
    return parse_config(text, str(path), base_dir=path.absolute().parent)


def parse_config(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Validate TOML `text`; `source` names it in messages, `base_dir` (default: the
    current directory) is where relative paths resolve."""
    text = text.removeprefix("\ufeff")  # a BOM some editors write; TOML has no use for it
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(source, text, exc)]) from None
    base = (base_dir if base_dir is not None else Path.cwd()).expanduser().absolute()
    return _build(doc, _Reader(source, base), source)


def _syntax_problem(source: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
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
