"""What providers mean by their replies, as data with sources.

Microsoft, Google, Yahoo and the others use registered codes in their own ways
(Exchange's 5.1.10 is "recipient not found", not the registry's null MX) or put the
meaning in the text (`RESOLVER.ADR.RecipientNotFound`, `[TSS04]`, `AS(201806281)`).
The knowledge is data, editable without Python (docs/codes-data.md):

- `data/vendors/*.toml`: the facts, one `[entries.<id>]` table per reply pattern (the
  provider, the basic codes, the enhanced codes, a regular expression on the text, who
  must act, the registry key whose meaning it replaces, the provider's own pages, and
  example lines that must match) and one `[providers.<id>]` table per provider (a
  pattern on the remote host, a pattern on the text that shows the provider's hand);
- `data/<lang>/vendors/*.toml`: the words, per language: each entry's `title`,
  `meaning`, `differs` (how it differs from the registry, where it does) and `fix`;
  each provider's `name`; the names of the actors, the labels and the notes.

`match` finds the entries a reply fits, best first; `explain_vendor` gives them in a
language. Nothing here imports the rest of mailgate but the registry's data loader.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.codes import registry as reg

__all__ = [
    "ACTORS",
    "Entry",
    "VendorExplanation",
    "check",
    "entries",
    "explain_vendor",
    "match",
    "words",
]

ACTORS = ("sender", "sender_admin", "sender_domain_owner", "recipient", "recipient_admin",
          "nobody")
ANY = "any"  # the provider of entries that hold for every server
MAX_MATCH_TEXT = 2048  # characters of reply text the patterns see
_ENHANCED_RANGE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:-([0-9]{1,3}))?\Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """One vendor pattern's facts (language-neutral)."""

    id: str
    provider: str
    codes: tuple[int, ...]
    enhanced: tuple[tuple[int, int, int, int], ...]  # (class, subject, low, high) detail range
    text_pattern: str | None  # compiled on first use (`text`): compiling all costs ~10 ms
    actors: tuple[str, ...]
    registry: str  # the registry key whose meaning this replaces ("" when it does not)
    sources: tuple[str, ...]
    examples: tuple[str, ...]
    related: tuple[str, ...]
    file: str
    needs_provider: bool = False  # fits only a reply that shows the provider's hand

    @property
    def text(self) -> re.Pattern[str] | None:
        return _rx(f"[entries.{self.id}] in {self.file}", self.text_pattern)


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    hosts_pattern: str | None
    marks_pattern: str | None

    @property
    def hosts(self) -> re.Pattern[str] | None:
        return _rx(f"[providers.{self.id}] hosts", self.hosts_pattern)

    @property
    def marks(self) -> re.Pattern[str] | None:
        return _rx(f"[providers.{self.id}] marks", self.marks_pattern)


def _folder() -> Path:
    return reg.data_root() / "vendors"


def _pattern(where: str, pattern: object) -> str | None:
    if pattern in (None, ""):
        return None
    if not isinstance(pattern, str):
        raise reg.DataError(f"{where}: a pattern must be a string")
    return pattern


_COMPILED: dict[str, re.Pattern[str]] = {}


def _rx(where: str, pattern: str | None) -> re.Pattern[str] | None:
    """A pattern compiled (case-insensitive) the first time it is needed."""
    if pattern is None:
        return None
    rx = _COMPILED.get(pattern)
    if rx is None:
        try:
            rx = _COMPILED[pattern] = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise reg.DataError(f"{where}: bad regular expression: {exc}") from None
    return rx


def check() -> None:
    """Compile every pattern now: DataError naming the first bad one (for tests)."""
    for p in providers().values():
        _ = (p.hosts, p.marks)
    for e in entries():
        _ = e.text


def _enhanced_ranges(where: str, values: list[str]) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for v in values:
        m = _ENHANCED_RANGE.match(v.strip())
        if m is None:
            raise reg.DataError(f"{where}: {v!r} is not an enhanced code or a range 5.7.606-649")
        low = int(m[3])
        out.append((int(m[1]), int(m[2]), low, int(m[4]) if m[4] else low))
    return tuple(out)


@functools.cache
def _facts() -> tuple[dict[str, Provider], tuple[Entry, ...]]:
    providers: dict[str, Provider] = {}
    found: list[Entry] = []
    seen: set[str] = set()
    for path in sorted(_folder().glob("*.toml")):
        data = reg._load_toml(path)
        for pid, raw in data.get("providers", {}).items():
            if pid in providers:
                raise reg.DataError(f"{path.name}: provider {pid} is defined twice")
            providers[pid] = Provider(pid, _pattern(f"{path.name} {pid} hosts", raw.get("hosts")),
                                      _pattern(f"{path.name} {pid} marks", raw.get("marks")))
        for eid, raw in data.get("entries", {}).items():
            where = f"{path.name} [entries.{eid}]"
            if eid in seen:
                raise reg.DataError(f"{where}: defined twice")
            seen.add(eid)
            found.append(Entry(
                id=eid, provider=str(raw.get("provider", ANY)),
                codes=tuple(int(c) for c in raw.get("codes", ())),
                enhanced=_enhanced_ranges(where, list(raw.get("enhanced", ()))),
                text_pattern=_pattern(where, raw.get("text")),
                actors=tuple(raw.get("actors", ())),
                registry=str(raw.get("registry", "")),
                sources=tuple(raw.get("sources", ())),
                examples=tuple(raw.get("examples", ())),
                related=tuple(raw.get("related", ())),
                file=path.name,
                needs_provider=bool(raw.get("needs_provider", not raw.get("text"))),
            ))
    return providers, tuple(found)


def entries() -> tuple[Entry, ...]:
    """Every entry, in file order."""
    return _facts()[1]


def providers() -> dict[str, Provider]:
    return _facts()[0]


@functools.cache
def words(lang: str) -> dict[str, dict[str, Any]]:
    """The words of one language: tables `entries`, `providers`, `actors`, `labels`,
    `notes`, merged from every file of `data/<lang>/vendors/`."""
    folder = reg.data_root() / lang / "vendors"
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.toml")):
        for table, values in reg._load_toml(path).items():
            if not isinstance(values, dict):
                raise reg.DataError(f"{lang}/vendors/{path.name}: {table} must be a table")
            into = out.setdefault(table, {})
            for key, value in values.items():
                if key in into:
                    raise reg.DataError(f"{lang}/vendors/{path.name}: {table}.{key} twice")
                into[key] = value
    return out


def _recognised(provider: str, host: str | None, text: str) -> str:
    """How the reply shows a provider's hand: `host`, `marks`, or "" if it does not."""
    if provider == ANY:
        return "any"
    p = providers().get(provider)
    if p is None:
        return ""
    if host and p.hosts is not None and p.hosts.search(host[:255]):
        return "host"
    if p.marks is not None and p.marks.search(text):
        return "marks"
    return ""


def _enhanced_fits(entry: Entry, enhanced: str | None) -> bool:
    if not entry.enhanced:
        return True
    if enhanced is None:
        return False
    try:
        k, s, d = (int(x) for x in enhanced.split("."))
    except ValueError:
        return False
    return any(k == ek and s == es and lo <= d <= hi for ek, es, lo, hi in entry.enhanced)


def match(code: int | None, enhanced: str | None, text: str,
          host: str | None = None) -> list[tuple[int, Entry, tuple[str, ...]]]:
    """The entries a reply fits, best first: (score, entry, what matched).

    An entry fits when every condition it has holds (its basic codes, its enhanced
    codes, its text pattern). One without a text pattern (or with `needs_provider`)
    fits only a reply that shows its provider's hand (the remote host, or the
    provider's marks in the text), so a bare `550 5.7.1` from anyone is not read as
    Gmail's.
    """
    text = text[:MAX_MATCH_TEXT]
    out = []
    for i, e in enumerate(entries()):
        if e.codes and code not in e.codes:
            continue
        if not _enhanced_fits(e, enhanced):
            continue
        rx = e.text
        if rx is not None and not rx.search(text):
            continue
        seen = _recognised(e.provider, host, text)
        if e.needs_provider and not seen:
            continue
        by = tuple(name for name, hit in (("code", bool(e.codes)), ("enhanced", bool(e.enhanced)),
                                          ("text", rx is not None),
                                          (seen, seen in ("host", "marks"))) if hit)
        score = (4 if rx is not None else 0) + (2 if e.enhanced else 0) + (
            1 if e.codes else 0) + (2 if seen in ("host", "marks") else 0)
        out.append((score, i, e, by))
    out.sort(key=lambda t: (-t[0], t[1]))
    return [(score, e, by) for score, _, e, by in out]


@dataclass(frozen=True, slots=True)
class VendorExplanation:
    """One provider's reading of a reply, in one language."""

    id: str
    provider: str
    provider_name: str
    lang: str
    title: str
    meaning: str
    differs: str
    registry: str
    actors: tuple[str, ...]
    actor_names: tuple[str, ...]
    fix: str
    sources: tuple[str, ...]
    related: tuple[str, ...]
    score: int
    matched_by: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # heading, meaning, differs, actors, fix, sources

    @property
    def heading(self) -> str:
        key = "heading_any" if self.provider == ANY else "heading"
        return dict(self.labels)[key].format(provider=self.provider_name, title=self.title)

    @property
    def paragraphs(self) -> tuple[str, ...]:
        return tuple(p for p in (self.meaning, self.differs) if p)

    @property
    def facts(self) -> tuple[tuple[str, str], ...]:
        lab = dict(self.labels)
        sep = lab["list_sep"]
        sources = lab["sources_any" if self.provider == ANY else "sources"]
        return (
            (lab["actors"], sep.join(self.actor_names)),
            (lab["fix"], self.fix),
            (sources.format(provider=self.provider_name), " ".join(self.sources)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "provider": self.provider, "provider_name": self.provider_name,
            "title": self.title, "meaning": self.meaning,
            "differs_from_registry": bool(self.differs), "differs": self.differs or None,
            "registry": self.registry or None, "actors": list(self.actors),
            "actor_names": list(self.actor_names), "fix": self.fix,
            "sources": list(self.sources), "related": list(self.related),
            "score": self.score, "matched_by": list(self.matched_by),
        }


def _explain_one(score: int, e: Entry, by: tuple[str, ...], lang: str) -> VendorExplanation:
    w = words(lang)
    prose = w.get("entries", {}).get(e.id)
    if prose is None:
        raise reg.DataError(f"vendor entry {e.id} has no {lang} words")
    labels = w["labels"]
    actor_names = tuple(str(w["actors"][a]) for a in e.actors)
    provider_name = str(w["providers"].get(e.provider, e.provider))
    return VendorExplanation(
        id=e.id, provider=e.provider, provider_name=provider_name, lang=lang,
        title=str(prose["title"]).strip(), meaning=str(prose["meaning"]).strip(),
        differs=str(prose.get("differs", "")).strip() if e.registry else "",
        registry=e.registry, actors=e.actors, actor_names=actor_names,
        fix=str(prose["fix"]).strip(), sources=e.sources, related=e.related,
        score=score, matched_by=by,
        labels=tuple((k, str(v)) for k, v in labels.items()),
    )


def explain_vendor(code: int | None, enhanced: str | None, text: str, lang: str = "en",
                   host: str | None = None, limit: int = 3) -> tuple[VendorExplanation, ...]:
    """The best entries for a reply, explained in `lang`: those with the best score
    (several when they tie), at most `limit`."""
    found = match(code, enhanced, text, host)
    if not found:
        return ()
    best = found[0][0]
    return tuple(_explain_one(s, e, by, lang) for s, e, by in found[:limit] if s == best)


def clear_caches() -> None:
    _facts.cache_clear()
    words.cache_clear()
    _COMPILED.clear()
