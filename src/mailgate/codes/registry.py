"""The registry of reply codes: facts from `data/registry-*.toml`, prose per language.

Data are read once per process and only for the language asked for, so that a CLI
call stays fast. The Python here knows nothing of any one code: everything about a
code is in the data files (see docs/codes-data.md).
"""

from __future__ import annotations

import functools
import marshal
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
PROSE_FIELDS = ("title", "summary", "description", "when", "fix")


class DataError(RuntimeError):
    """The knowledge base's data files are inconsistent (a packaging or editing bug)."""


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """Language-neutral facts about one registry key (`556`, `X.1.10`, `5.X.X`, `X.1.X`)."""

    key: str
    kind: str  # basic | enhanced | class | subject
    reference_text: str
    rfcs: tuple[str, ...]
    associated: str
    related: tuple[str, ...]
    standard: bool = True
    see: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    closes: bool = False
    deprecated: bool = False

    @property
    def associated_codes(self) -> tuple[str, ...]:
        """The associated codes as keys; words like `Any` or `not given` give none."""
        out = []
        for part in self.associated.replace("(", ",").split(","):
            tok = part.strip().split(" ")[0]
            if (len(tok) == 3 and tok.isdigit()) or (tok.startswith("X.") and tok.count(".") == 2):
                out.append(tok)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Prose:
    """What one code means, in one language."""

    title: str
    summary: str
    description: str
    when: str
    fix: str


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mailgate"


def _load_toml(path: Path) -> dict[str, Any]:
    """Parse a data file, through a marshal cache keyed by the file's size and mtime.

    TOML parsing is pure Python and costs most of a short CLI call's time; the cache
    makes the second call fast. A cache that cannot be read or written is ignored.
    """
    st = path.stat()
    tag = sys.implementation.cache_tag
    cache = _cache_dir() / f"{path.parent.name}-{path.stem}-{st.st_size}-{st.st_mtime_ns}.{tag}"
    try:
        with cache.open("rb") as f:
            data = marshal.load(f)
        if isinstance(data, dict):
            return data
    except (OSError, EOFError, ValueError, TypeError):
        pass
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            marshal.dump(data, f)
        os.replace(tmp, cache)
    except (OSError, ValueError):
        pass
    return data


@functools.cache
def registry() -> dict[str, CodeInfo]:
    """Every registry key with its facts."""
    out: dict[str, CodeInfo] = {}
    for path in sorted(DATA.glob("registry-*.toml")):
        for key, raw in _load_toml(path).get("codes", {}).items():
            if key in out:
                raise DataError(f"{path.name}: code {key} is defined twice.")
            out[key] = CodeInfo(
                key=key,
                kind=raw["kind"],
                reference_text=raw["reference_text"],
                rfcs=tuple(raw.get("rfcs", ())),
                associated=raw.get("associated", "-"),
                related=tuple(raw.get("related", ())),
                standard=raw.get("standard", True),
                see=tuple(raw.get("see", ())),
                phases=tuple(raw.get("phases", ())),
                closes=raw.get("closes", False),
                deprecated=raw.get("deprecated", False),
            )
    return out


def languages() -> tuple[str, ...]:
    """Languages with prose, by folder name (`en`, `zh`)."""
    return tuple(sorted(p.name for p in DATA.iterdir() if p.is_dir() and (p / "ui.toml").exists()))


@functools.cache
def prose(lang: str) -> dict[str, Prose]:
    """All code prose in one language (every `*.toml` in its folder but ui.toml)."""
    folder = DATA / lang
    if not (folder / "ui.toml").exists():
        raise DataError(f"no language {lang!r}: expected {folder}/ui.toml")
    out: dict[str, Prose] = {}
    for path in sorted(folder.glob("*.toml")):
        if path.name == "ui.toml":
            continue
        for key, raw in _load_toml(path).get("codes", {}).items():
            out[key] = Prose(**{f: str(raw.get(f, "")).strip() for f in PROSE_FIELDS})
    return out


@functools.cache
def ui(lang: str) -> dict[str, Any]:
    """Headings, labels and sentence templates in one language."""
    return _load_toml(DATA / lang / "ui.toml")
