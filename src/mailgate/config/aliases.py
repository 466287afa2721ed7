"""Aliases and the queue's retention, as values; alias expansion and its loop check.

`[aliases]` maps a local part (`info`: at every local domain) or an address
(`info@example.org`: that one only) to one or more addresses, local or remote; a target
without `@` is that local part at the domain of the address being expanded. An aliases
file in the traditional format (`name: target, target`, as /etc/aliases) may add more
(`[domains] aliases_file`). `postmaster` and `abuse` are defined by default.

Expansion happens once, when a recipient is accepted, so the queue holds the final
recipients; an alias that names itself among its targets is delivered to its own
mailbox as well (`bob = ["bob", "bob@elsewhere.example"]`), and any other way back to
an address already being expanded is a loop, refused when the configuration is loaded
(`expand` raises AliasError). The plus-address `bob+tag` finds bob's alias when it has
none of its own (`recipient_delimiter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mailgate.config.syntax import _Bad, _domain

__all__ = ["DEFAULT_ALIASES", "AliasError", "Aliases", "QueueConfig", "expand",
           "parse_aliases_file", "parse_target"]

# Targets one recipient may expand to, and how deep aliases may nest: beyond either the
# configuration is refused (mailing lists belong in a list manager, not in aliases).
MAX_EXPANSION = 1000
MAX_DEPTH = 20
# RFC 2142: abuse@ goes where postmaster@ goes unless the administrator says otherwise;
# postmaster itself goes to [domains] postmaster (RFC 5321 4.5.1).
DEFAULT_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({"abuse": ("postmaster",)})


class AliasError(ValueError):
    """An alias cannot be expanded: a loop, or too many targets or levels."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """[queue]: how long the record of a finished message (delivered, bounced, expired)
    stays for the listings after its content was deleted; and which backend holds the
    queue: "sqlite" (data_dir/queue.db, the default) or "postgresql" (a cluster of nodes
    sharing one database: `dsn`, read from `dsn_file` when the password is a secret,
    and `node`, this node's name, by default the host name); and `secure_delete`, how
    SQLite deletes a delivered message's content ("fast" or "on")."""

    keep_records: float = 7 * 86400.0  # seconds
    backend: str = "sqlite"
    dsn: str = field(default="", repr=False)  # may hold a password: never shown
    node: str = ""  # "": the host name
    # SQLite's secure_delete for queue.db: "fast" (what a delete writes anyway is zeroed)
    # or "on" (every page a delete frees is overwritten with zeros, at the cost of
    # writing a delivered message's content a second time). PostgreSQL: not used.
    secure_delete: str = "fast"


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Where the queue is: what the `queue` commands read of the file
    (`load_queue_settings`), and all that `open_queue` needs of a Config."""

    data_dir: Path
    queue: QueueConfig


@dataclass(frozen=True, slots=True)
class Aliases:
    """Key (`local` or `local@domain`, lower case, A-label domain) -> targets (`local` or
    `local@domain`). `source` names where each key was defined, for error sentences."""

    table: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_ALIASES)

    def lookup(self, local: str, domain: str, delimiter: str = "") -> tuple[str, ...] | None:
        """The targets of local@domain: its own entry (address, then local part), else
        those of its base when it is a plus-address (`bob+tag` -> `bob`)."""
        return _lookup(self.table, local.lower(), domain, delimiter)


def _lookup(table: Mapping[str, tuple[str, ...]], local: str, domain: str,
            delimiter: str) -> tuple[str, ...] | None:
    candidates = [local]
    if delimiter and delimiter in local[1:]:
        candidates.append(local[: local.index(delimiter, 1)])
    for name in candidates:
        for key in (f"{name}@{domain}", name):
            found = table.get(key)
            if found is not None:
                return found
    return None


def expand(aliases: Aliases, local: str, domain: str, *, is_local: Callable[[str], bool],
           delimiter: str = "") -> list[tuple[str, str]] | None:
    """The final recipients of local@domain as (local part, domain) pairs, in order and
    without repeats: remote addresses, and local ones that are no alias (mailboxes: the
    caller decides whether they exist). None when local@domain is no alias at all.
    AliasError for a loop or an expansion past MAX_EXPANSION / MAX_DEPTH."""
    local = local.lower()
    if _lookup(aliases.table, local, domain, delimiter) is None:
        return None
    out: dict[tuple[str, str], None] = {}

    def walk(name: str, dom: str, path: tuple[tuple[str, str], ...]) -> None:
        key = (name, dom)
        targets = _lookup(aliases.table, name, dom, delimiter) if is_local(dom) else None
        if targets is None:
            out[key] = None
        else:
            if key in path:
                shown = " -> ".join(f"{n}@{d}" for n, d in (*path, key))
                raise AliasError(f"the aliases form a loop: {shown}")
            if len(path) >= MAX_DEPTH:
                raise AliasError(f"aliases nest more than {MAX_DEPTH} levels deep "
                                 f"under {name}@{dom}")
            for target in targets:
                t_local, _, t_domain = target.rpartition("@")
                if not _:
                    t_local, t_domain = target, dom
                if (t_local, t_domain) == key:
                    out[key] = None  # named among its own targets: its mailbox too
                else:
                    walk(t_local, t_domain, (*path, key))
        if len(out) > MAX_EXPANSION:
            raise AliasError(f"{local}@{domain} expands to more than {MAX_EXPANSION} "
                             "addresses")

    walk(local, domain, ())
    return list(out)


def parse_target(value: object) -> str:
    """One alias target: `user@example.org` (domain canonical) or a bare local part."""
    if not isinstance(value, str):
        raise _Bad("must be an address in double quotes, or a list of them")
    text = value.strip().removeprefix("\\")  # aliases(5): \name, no further expansion
    if text[:1] in ("|", "/") or text.startswith(":include:"):
        raise _Bad("is a command, file or :include: target, which mailgate does not "
                   "deliver to; give addresses only")
    local, at, domain = text.rpartition("@")
    if not at:
        local = text
    if not local or any(c.isspace() or c in '<>",' or not c.isprintable() for c in local):
        raise _Bad('must be an address like "user@example.org", or a local part like "bob"')
    return f"{local.lower()}@{_domain(domain)}" if at else local.lower()


def parse_aliases_file(path: Path) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The entries of an aliases(5) file (`name: target, target`; `#` comments; a line
    starting with a space continues the one before), and one sentence per bad line."""
    problems: list[str] = []
    entries: dict[str, tuple[str, ...]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        return {}, [f"{path}: cannot be read: {exc}"]
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[:1].isspace() and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + line.strip())
        else:
            logical.append((number, line.strip()))
    for number, line in logical:
        name, colon, rest = line.partition(":")
        name = name.strip().lower()
        where = f"{path}, line {number}"
        if not colon or not name or any(c.isspace() for c in name):
            problems.append(f"{where}: expected `name: address, address`")
            continue
        targets: list[str] = []
        for item in _split_targets(rest):
            try:
                targets.append(parse_target(item))
            except _Bad as exc:
                problems.append(f"{where}: {item!r} {exc}")
        if name in entries:
            problems.append(f"{where}: {name} is defined twice")
        elif targets:
            entries[name] = tuple(targets)
    return entries, problems


def _split_targets(text: str) -> Iterable[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
