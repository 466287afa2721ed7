"""The registry of reply codes: facts from `data/registry-*.toml`, prose per language.

Data are read once per process and only for the language asked for, so that a CLI
call stays fast. The Python here knows nothing of any one code: everything about a
code is in the data files (see docs/codes-data.md).

The same folders hold the rest of mailgate's prose, one file per consumer
(`words(lang, "web")`, `"notices"`, `"diagnostics"`), and `languages()` is the one list
of languages: a folder under `data/` with every file of `LANGUAGE_FILES` is a language.

`MAILGATE_CODES_DATA` names another data root (tests use it to add a language without
touching the package); it is read when a function here is first called, and
`clear_caches()` makes a change of it take effect within a process.
"""

from __future__ import annotations

import dataclasses
import functools
import marshal
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
DATA_ENV = "MAILGATE_CODES_DATA"
PROSE_FIELDS = ("title", "summary", "description", "when", "fix")
# Optional per-class advice of an enhanced code (docs/codes-data.md).
CLASS_FIX_FIELDS = {2: "fix_2", 4: "fix_4", 5: "fix_5"}
# The files of a language folder other than code prose: labels and templates (ui), and
# the words of the web pages, of bounce notices, of `mailgate check`/`probe` and of
# whole bounces explained (`explain --bounce`).
WORD_FILES = ("web", "notices", "diagnostics", "bounce")
LANGUAGE_FILES = ("ui.toml", *(f"{name}.toml" for name in WORD_FILES))
# A language's glossary (optional): its words for the terms, not code prose.
GLOSSARY_FILE = "glossary.toml"


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
    # Enhanced codes: basic codes it is sent with in practice (mailgate's own replies
    # among them) that the IANA entry does not list; each has a sentence in the prose.
    used_with: tuple[str, ...] = ()
    # Basic codes: (phase, code) — in reply to that command the client is to treat this
    # code as the other one (552 to RCPT is 452: RFC 5321 4.5.3.1.10), and where it says so.
    treat_as: tuple[tuple[str, str], ...] = ()
    treat_as_ref: str = ""

    def listed_with(self, code: str) -> bool | None:
        """Whether the IANA entry pairs this enhanced code with basic `code`: True when
        it lists it (or says `Any`, or `5XX` for a 5xx code), None when it names no
        basic code (`not given`), False when it names others."""
        words = self.associated.strip().lower()
        if words in ("not given", "-", ""):
            return None
        if words == "any" or code in self.associated_codes:
            return True
        return f"{code[0]}xx" in words.replace("(", " ").split()

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
    # Enhanced codes: advice for one class (`fix_4 = ...` in the data), used instead of
    # `fix` when explaining 4.Y.Z; `fix` stays the advice for the registry form X.Y.Z.
    fix_by_class: dict[int, str] = dataclasses.field(default_factory=dict, hash=False)
    # Enhanced codes: for each basic code of the registry's `used_with`, what that
    # pairing means (`[codes."X.7.0".pairings] "421" = "..."`).
    pairings: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)


@functools.cache
def data_root() -> Path:
    """The data folder: the package's own, or `$MAILGATE_CODES_DATA` when set."""
    return Path(os.environ.get(DATA_ENV) or DATA)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mailgate"


def _load_toml(path: Path) -> dict[str, Any]:
    """Parse a data file, through a marshal cache keyed by the file's size and mtime.

    TOML parsing is pure Python and costs most of a short CLI call's time; the cache
    makes the second call fast. A cache that cannot be read or written is ignored.
    """
    import hashlib  # here, not with the module: most CLI calls never read a data file

    st = path.stat()
    tag = sys.implementation.cache_tag
    # The folder's full path is in the name: another data root (a copy with the same
    # sizes and mtimes) must not share cache entries with the package's data.
    where = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:8]
    cache = _cache_dir() / (
        f"{path.parent.name}-{where}-{path.stem}-{st.st_size}-{st.st_mtime_ns}.{tag}"
    )
    try:
        with cache.open("rb") as f:
            data = marshal.load(f)
        if isinstance(data, dict):
            return data
    except (OSError, EOFError, ValueError, TypeError):
        pass
    import tomllib

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
    for path in sorted(data_root().glob("registry-*.toml")):
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
                used_with=tuple(raw.get("used_with", ())),
                treat_as=tuple((str(k), str(v)) for k, v in raw.get("treat_as", {}).items()),
                treat_as_ref=raw.get("treat_as_ref", ""),
            )
    return out


@functools.cache
def languages() -> tuple[str, ...]:
    """The languages, by folder name (`en`, `zh`): every folder under the data root
    that has all of `LANGUAGE_FILES`. English first (it is the default and the
    fallback), then the others in order of their names."""
    root = data_root()
    found = {
        p.name for p in root.iterdir()
        if p.is_dir() and all((p / name).is_file() for name in LANGUAGE_FILES)
    }
    return tuple(sorted(found, key=lambda name: (name != "en", name)))


def _folder(lang: str) -> Path:
    if lang not in languages():
        raise DataError(
            f"no language {lang!r}: a language is a folder under {data_root()} with "
            f"{', '.join(LANGUAGE_FILES)}"
        )
    return data_root() / lang


@functools.cache
def prose(lang: str) -> dict[str, Prose]:
    """All code prose in one language (every `*.toml` in its folder but LANGUAGE_FILES)."""
    folder = _folder(lang)
    out: dict[str, Prose] = {}
    for path in sorted(folder.glob("*.toml")):
        if path.name in LANGUAGE_FILES or path.name == GLOSSARY_FILE:
            continue
        for key, raw in _load_toml(path).get("codes", {}).items():
            by_class = {
                klass: str(raw[name]).strip()
                for klass, name in CLASS_FIX_FIELDS.items() if name in raw
            }
            out[key] = Prose(
                **{f: str(raw.get(f, "")).strip() for f in PROSE_FIELDS},
                fix_by_class=by_class,
                pairings={str(k): str(v).strip() for k, v in raw.get("pairings", {}).items()},
            )
    return out


@functools.cache
def glossary(lang: str) -> dict[str, str]:
    """The language's glossary (`<lang>/glossary.toml`): term -> the one word used for
    it; empty for a language without one. tests/test_glossary.py enforces it."""
    path = _folder(lang) / GLOSSARY_FILE
    if not path.is_file():
        return {}
    return {name: str(t.get(lang, "")) for name, t in _load_toml(path).get("terms", {}).items()}


@functools.cache
def ui(lang: str) -> dict[str, Any]:
    """Headings, labels and sentence templates in one language."""
    return _load_toml(_folder(lang) / "ui.toml")


@functools.cache
def word_file(lang: str, name: str) -> dict[str, Any]:
    """One of `WORD_FILES` of a language, whole: its settings and its `[words]` table."""
    if name not in WORD_FILES:
        raise ValueError(f"{name!r} is not a word file: use one of {', '.join(WORD_FILES)}")
    return _load_toml(_folder(lang) / f"{name}.toml")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = str(value)
    return out


@functools.cache
def words(lang: str, name: str) -> dict[str, str]:
    """The `[words]` of one of `WORD_FILES` in a language, nested tables flattened to
    dotted keys (`[words.probe.refused] rcpt` is `probe.refused.rcpt`)."""
    return _flatten(word_file(lang, name).get("words", {}))


def clear_caches() -> None:
    """Forget everything read, and the data root (after changing `MAILGATE_CODES_DATA`)."""
    for f in (data_root, registry, languages, prose, glossary, ui, word_file, words):
        f.cache_clear()
