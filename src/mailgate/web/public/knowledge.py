"""The knowledge base as the reference pages and API read it: cached explanations and
comparisons, the search and the suggestions, and the look-up that says what is wrong
with a code that has no page.

Everything here depends only on its arguments, so it is cached: the registry once per
process, explanations and comparisons per (code, lang), searches per query, each in a
bounded LRU.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from mailgate.codes import registry as reg
from mailgate.codes.compare import Comparison, compare
from mailgate.codes.explain import Explanation, explain_code
from mailgate.codes.paste import read_paste
from mailgate.codes.render import render
from mailgate.codes.reply import ReplyError

__all__ = [
    "MAX_QUERY",
    "CodeNotFound",
    "class_forms",
    "code_keys",
    "comparison",
    "explanation",
    "holds_reply",
    "lookup",
    "normalize_query",
    "pasted_codes",
    "search",
    "suggest",
]

MAX_QUERY = 200  # characters of a search kept; longer queries are cut, not refused
SUGGESTIONS = 6


# --- the knowledge base, cached -------------------------------------------------------


def _order(key: str) -> tuple[int, int, int]:
    if key.isdigit():
        return (0, int(key), 0)
    _, s, d = key.split(".")
    return (1, int(s), int(d))


@functools.cache
def code_keys() -> tuple[str, ...]:
    """Every registered basic and enhanced code, basic first, in numeric order."""
    return tuple(sorted(
        (k for k, v in reg.registry().items() if v.kind in ("basic", "enhanced")), key=_order
    ))


_CLASS_RE = re.compile(r"(?<![0-9])([245])(?:[0-9][0-9]|xx)(?![0-9])", re.IGNORECASE)


@functools.cache
def class_forms(key: str) -> tuple[str, ...]:
    """The classed forms of an enhanced key its registry entry pairs with: X.1.10 -> 5.1.10."""
    info = reg.registry().get(key)
    if info is None or info.kind != "enhanced":
        return ()
    classes = sorted({m.group(1) for m in _CLASS_RE.finditer(info.associated)})
    return tuple(f"{c}{key[1:]}" for c in classes)


@functools.lru_cache(maxsize=8192)
def explanation(code: str, lang: str) -> Explanation:
    """explain_code, cached; ReplyError (not cached) for a malformed code."""
    return explain_code(code, lang)


@functools.lru_cache(maxsize=2048)
def comparison(a: str, b: str, lang: str) -> Comparison:
    return compare(a, b, lang)


@functools.lru_cache(maxsize=2048)
def _json_body(kind: str, a: str, b: str, lang: str) -> bytes:
    x = comparison(a, b, lang) if kind == "comparison" else explanation(a, lang)
    return render(x, "json").encode("utf-8")


@functools.cache
def _code_list_items(lang: str) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(_json_body("code", k, "", lang)) for k in code_keys())


# --- search and suggestions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    forms: tuple[str, ...]  # casefolded: "x.1.10", "5.1.10"
    fields: tuple[tuple[int, str, str], ...]  # (weight, text, text without spaces)


def _fold(text: str) -> tuple[str, str]:
    t = text.casefold()
    return t, re.sub(r"\s+", "", t)


@functools.cache
def _search_index() -> tuple[_Entry, ...]:
    out = []
    for key in code_keys():
        info = reg.registry()[key]
        fields: list[tuple[int, str, str]] = []
        for lang in reg.languages():
            p = reg.prose(lang).get(key)
            if p is None:
                continue
            fields.append((10, *_fold(p.title)))
            fields.append((4, *_fold(p.summary)))
            fields.append((1, *_fold(" ".join((p.description, p.when, p.fix)))))
        fields.append((1, *_fold(info.reference_text)))
        forms = tuple(f.casefold() for f in (key, *class_forms(key)))
        out.append(_Entry(key=key, forms=forms, fields=tuple(fields)))
    return tuple(out)


_CODEISH_RE = re.compile(r"[0-9x.]+\Z")
_ENHANCED_Q_RE = re.compile(r"([245x])\.([0-9]{1,3})\.([0-9]{1,3})\Z")


def _token_score(entry: _Entry, token: str) -> int:
    if _CODEISH_RE.match(token) and any(ch.isdigit() for ch in token):
        m = _ENHANCED_Q_RE.match(token)
        if token in entry.forms or (m and entry.key == f"X.{int(m[2])}.{int(m[3])}"):
            return 100
        if any(f.startswith(token) for f in entry.forms):
            return 50
    best = 0
    for weight, text, nospace in entry.fields:
        if weight > best and (token in text or token in nospace):
            best = weight
    return best


def normalize_query(q: str) -> str:
    return " ".join(q[:MAX_QUERY].split())


@functools.lru_cache(maxsize=1024)
def search(q: str) -> tuple[str, ...]:
    """Codes matching every word of `q` (numbers or words, English or Chinese), best first."""
    tokens = normalize_query(q).casefold().split()
    if not tokens:
        return code_keys()
    scored = []
    for i, entry in enumerate(_search_index()):
        total = 0
        for tok in tokens:
            s = _token_score(entry, tok)
            if s == 0:
                break
            total += s
        else:
            scored.append((-total, i, entry.key))
    found = tuple(k for _, _, k in sorted(scored))
    return found or pasted_codes(q)


def pasted_codes(q: str) -> tuple[str, ...]:
    """The registered codes of a reply pasted into the search box (a reply line, a log
    line, a Diagnostic-Code field): its basic code, then its enhanced code's key."""
    p = read_paste(q[:MAX_QUERY])
    keys = []
    if p.code is not None and f"{p.code:03d}" in reg.registry():
        keys.append(f"{p.code:03d}")
    if p.enhanced is not None:
        key = "X." + p.enhanced.split(".", 1)[1]
        if key in reg.registry():
            keys.append(key)
    return tuple(keys)


def holds_reply(q: str) -> bool:
    """Whether a search is a pasted reply (a code and words), worth explaining whole."""
    return len(q.split()) > 1 and bool(pasted_codes(q))


def suggest(text: str, limit: int = SUGGESTIONS) -> list[str]:
    """Registered codes near `text`: the same class, neighbouring numbers, the same subject."""
    s = text.strip()
    enhanced = re.fullmatch(r"([0-9xX])\.([0-9]{1,4})(?:\.([0-9]{1,4}))?", s)
    keys = code_keys()
    out: list[str] = []
    if enhanced:
        klass = enhanced[1].upper()
        subj = int(enhanced[2])
        detail = int(enhanced[3]) if enhanced[3] is not None else None

        def near_e(k: str) -> tuple[int, int, int]:
            _, ks, kd = (int(x) if x.isdigit() else 0 for x in k.split("."))
            return (ks != subj, abs(ks - subj), abs(kd - detail) if detail is not None else kd)

        cands = sorted((k for k in keys if not k.isdigit()), key=near_e)
        out = [f"{klass}{k[1:]}" if klass in "245" else k for k in cands]
    elif (digits := re.search(r"[0-9]+", s)) is not None:
        d = digits[0]
        if len(d) < 3:
            cands = [k for k in keys if k.isdigit() and k.startswith(d)]
            n = int(d.ljust(3, "0"))
        else:
            cands = []
            n = int(d[:3])
        first = str(n)[0]
        cands += sorted((k for k in keys if k.isdigit() and k not in cands),
                        key=lambda k: (k[0] != first, abs(int(k) - n)))
        out = cands
    else:
        q = normalize_query(s)
        out = list(search(q)) if q else []
    return [c for c in out if c.casefold() != s.casefold()][:limit]


# --- errors ---------------------------------------------------------------------------


class CodeNotFound(Exception):
    """A code page or API call for a code that is malformed or not registered."""

    def __init__(self, code: str, message: str, suggestions: list[str],
                 unregistered: Explanation | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.suggestions = suggestions
        self.unregistered = unregistered


def lookup(code: str, lang: str) -> Explanation:
    """A registered code's explanation; CodeNotFound saying what is wrong otherwise."""
    s = _tidy(code)
    info = reg.registry().get(s)
    if info is not None and info.kind in ("class", "subject"):
        near = [r for r in info.related
                if r in reg.registry() and reg.registry()[r].kind in ("basic", "enhanced")]
        raise CodeNotFound(s, ReplyError(key=f"code_is_{info.kind}", code=s).text(lang),
                           near[:SUGGESTIONS])
    try:
        e = explanation(s, lang)
    except ReplyError as exc:
        raise CodeNotFound(s, exc.text(lang), suggest(s)) from None
    if not e.registered:
        key = "unregistered_basic" if e.kind == "basic" else "unregistered_enhanced"
        raise CodeNotFound(s, ReplyError(key=key, code=e.code).text(lang),
                           suggest(e.code), unregistered=e)
    return e


def _error_json(message: str, status: int, suggestions: Iterable[str] = ()) -> JSONResponse:
    return JSONResponse({"error": message, "suggestions": list(suggestions)}, status_code=status)


def _tidy(code: str) -> str:
    """Forgive what people type in a URL: spaces around, a lower-case x (`x.1.10`), and
    leading zeros (`5.01.010`), which RFC 3463 forbids in a code: the page redirects to
    the code as it must be written."""
    s = code.strip()
    m = re.fullmatch(r"([245xX])\.([0-9]{1,3})\.([0-9]{1,3})", s)
    if m:
        first = "X" if m.group(1) in "xX" else m.group(1)
        return f"{first}.{int(m.group(2))}.{int(m.group(3))}"
    return s


def _check_code(code: str, lang: str) -> str:
    """The code as shown if it can be compared (well-formed); ReplyError otherwise."""
    s = _tidy(code)
    info = reg.registry().get(s)
    if info is not None and info.kind in ("class", "subject"):
        raise ReplyError(key=f"compare_{info.kind}", code=s)
    return explanation(s, lang).code
