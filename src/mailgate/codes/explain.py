"""Explain a code or a whole reply, in one language, from the registry's data."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from mailgate.codes import registry as reg
from mailgate.codes.reply import (
    Reply,
    ReplyError,
    parse_basic_code,
    parse_enhanced_code,
    parse_reply,
)

if TYPE_CHECKING:  # imported when a reply is explained: a code alone does not pay for it
    from mailgate.codes import vendors

__all__ = ["Explanation", "ReplyExplanation", "explain", "explain_code", "explain_reply"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_KEY_RE = re.compile(r"X\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\Z")
_ZERO_KEY_RE = re.compile(r"X\.[0-9]{1,3}\.[0-9]{1,3}\Z")  # X.01.10: leading zeros


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything the knowledge base says about one code, in one language."""

    code: str  # as shown: "556", "5.1.10", "X.1.10"
    key: str  # registry key: "556", "X.1.10"
    kind: str  # basic | enhanced
    lang: str
    registered: bool
    standard: bool
    klass: int | None  # first digit / enhanced class; None for an X.Y.Z key
    class_name: str
    class_meaning: str
    outcome: str  # success | intermediate | transient | permanent | "" for X.Y.Z
    subject: str  # enhanced: subject title; basic: category of the second digit
    subject_meaning: str
    title: str
    summary: str
    description: str
    when: str
    fix: str
    reference_text: str
    rfcs: tuple[str, ...]
    related: tuple[str, ...]
    associated: tuple[str, ...]
    see: tuple[str, ...]
    phases: tuple[str, ...]
    closes: bool
    deprecated: bool
    notes: tuple[str, ...] = ()
    used_with: tuple[str, ...] = ()  # enhanced: basic codes it is sent with beyond IANA's list
    treat_as: tuple[tuple[str, str], ...] = ()  # basic: (phase, code) read as that code there
    treat_as_ref: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "key": self.key,
            "kind": self.kind,
            "lang": self.lang,
            "registered": self.registered,
            "standard": self.standard,
            "class": self.klass,
            "class_name": self.class_name,
            "class_meaning": self.class_meaning,
            "outcome": self.outcome or None,
            "subject": self.subject,
            "subject_meaning": self.subject_meaning,
            "title": self.title,
            "summary": self.summary,
            "description": self.description,
            "when": self.when,
            "fix": self.fix,
            "reference_text": self.reference_text,
            "rfcs": list(self.rfcs),
            "related": list(self.related),
            "associated": list(self.associated),
            "see": list(self.see),
            "phases": list(self.phases),
            "closes_connection": self.closes,
            "deprecated": self.deprecated,
            "notes": list(self.notes),
            "used_with": list(self.used_with),
        }


@dataclass(frozen=True, slots=True)
class ReplyExplanation:
    """A whole reply line explained: the reply, then each of its codes."""

    reply: Reply
    lang: str
    parts: tuple[Explanation, ...]
    notes: tuple[str, ...] = field(default=())
    # What a provider means by this reply, where it is known (codes/vendors.py).
    vendor: tuple[vendors.VendorExplanation, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "reply": {
                "code": self.reply.code,
                "enhanced": self.reply.enhanced,
                "lines": list(self.reply.lines),
                "outcome": self.reply.outcome,
                "subject": self.reply.subject.slug if self.reply.subject is not None else None,
            },
            "lang": self.lang,
            "parts": [p.to_json() for p in self.parts],
            "notes": list(self.notes),
            "vendor": [v.to_json() for v in self.vendor],
        }


def _ui(lang: str) -> dict[str, Any]:
    return reg.ui(lang)


def _t(lang: str, name: str, **kw: object) -> str:
    return str(_ui(lang)["templates"][name]).format(**kw)


def _prose(lang: str, key: str) -> reg.Prose | None:
    return reg.prose(lang).get(key)


def _basic(code: int, lang: str) -> Explanation:
    ui = _ui(lang)
    key = f"{code:03d}"
    d1, d2 = key[0], key[1]
    class_name = ui["basic_class"][d1]
    class_meaning = ui["basic_class_meaning"][d1]
    category = ui["basic_category"][d2]
    category_meaning = ui["basic_category_meaning"][d2]
    full_stop = str(ui["punctuation"]["sentence_end"]).strip()
    info = reg.registry().get(key)
    p = _prose(lang, key)
    outcome = ("success", "intermediate", "transient", "permanent")[int(d1) - 2]
    if info is None or p is None:
        return Explanation(
            code=key, key=key, kind="basic", lang=lang, registered=False, standard=False,
            klass=int(d1), class_name=class_name, class_meaning=class_meaning,
            outcome=outcome, subject=category, subject_meaning=category_meaning,
            title=_t(lang, "unregistered_title", code=key),
            summary=class_meaning,
            description=_t(
                lang, "unregistered_basic", code=key, class_name=class_name,
                class_meaning=class_meaning.rstrip("." + full_stop), category=category,
                category_meaning=category_meaning,
            ),
            when=_t(lang, "unregistered_when"),
            fix=_t(lang, "unregistered_fix", action=ui["basic_class_client_action"][d1]),
            reference_text="", rfcs=(), related=(), associated=(), see=(), phases=(),
            closes=False, deprecated=False,
            notes=(_t(lang, "unregistered_note", code=key),),
        )
    notes = []
    if not info.standard:
        see = str(ui["punctuation"]["list_sep"]).join(info.see)
        notes.append(_t(lang, "nonstandard_note", code=key, see=see or "?"))
    for phase, as_code in info.treat_as:
        notes.append(_t(
            lang, "treat_as_note", code=key, phase=ui["phases"][phase], as_code=as_code,
            ref=info.treat_as_ref, action=ui["basic_class_client_action"][as_code[0]],
        ))
    return Explanation(
        code=key, key=key, kind="basic", lang=lang, registered=True, standard=info.standard,
        klass=int(d1), class_name=class_name, class_meaning=class_meaning, outcome=outcome,
        subject=category, subject_meaning=category_meaning,
        title=p.title, summary=p.summary, description=p.description, when=p.when, fix=p.fix,
        reference_text=info.reference_text, rfcs=info.rfcs, related=info.related,
        associated=info.associated_codes, see=info.see, phases=info.phases,
        closes=info.closes, deprecated=False, notes=tuple(notes),
        treat_as=info.treat_as, treat_as_ref=info.treat_as_ref,
    )


def _enhanced(klass: int | None, subject: int, detail: int, lang: str) -> Explanation:
    """An enhanced code; `klass=None` explains the registry form X.subject.detail."""
    key = f"X.{subject}.{detail}"
    shown = key if klass is None else f"{klass}.{subject}.{detail}"
    subj_key = f"X.{subject}.X"
    subj = _prose(lang, subj_key)
    if subj is None or subj_key not in reg.registry():
        raise ReplyError(key="enhanced_subject", text=shown, subject=subject)
    if klass is None:
        class_name = class_meaning = outcome = ""
    else:
        cls = _prose(lang, f"{klass}.X.X")
        if cls is None:
            raise reg.DataError(f"no prose for class {klass}.X.X in {lang}")
        class_name, class_meaning = cls.title, cls.summary
        outcome = {2: "success", 4: "transient", 5: "permanent"}[klass]
    info = reg.registry().get(key)
    p = _prose(lang, key)
    if info is None or p is None:
        action = _ui(lang)["basic_class_client_action"][str(klass or 5)]
        return Explanation(
            code=shown, key=key, kind="enhanced", lang=lang, registered=False, standard=False,
            klass=klass, class_name=class_name, class_meaning=class_meaning, outcome=outcome,
            subject=subj.title, subject_meaning=subj.summary,
            title=_t(lang, "unregistered_title", code=shown),
            summary=subj.summary,
            description=_t(
                lang, "unregistered_enhanced", code=shown,
                class_name=class_name or "?", subject=subj.title,
            ),
            when=_t(lang, "unregistered_when"),
            fix=_t(lang, "unregistered_fix", action=action),
            reference_text="", rfcs=(), related=(subj_key,), associated=(), see=(), phases=(),
            closes=False, deprecated=False,
            notes=(_t(lang, "unregistered_note", code=shown),),
        )
    notes = []
    if info.deprecated:
        notes.append(_t(lang, "deprecated_note", code=shown))
    return Explanation(
        code=shown, key=key, kind="enhanced", lang=lang, registered=True, standard=True,
        klass=klass, class_name=class_name, class_meaning=class_meaning, outcome=outcome,
        subject=subj.title, subject_meaning=subj.summary,
        title=p.title, summary=p.summary, description=p.description, when=p.when,
        fix=_fix_for_class(p, klass, shown, lang),
        reference_text=info.reference_text, rfcs=info.rfcs, related=info.related,
        associated=info.associated_codes, see=(), phases=(), closes=False,
        deprecated=info.deprecated, notes=tuple(notes), used_with=info.used_with,
    )


def _pairing_note(code: int, enhanced: str, lang: str) -> str | None:
    """What the pairing of a reply's two codes means, when the IANA entry of the
    enhanced code does not list the basic one: the data's sentence for a pairing in
    use, or a note that the registry pairs it otherwise."""
    key = "X." + enhanced.split(".", 1)[1]
    info = reg.registry().get(key)
    p = _prose(lang, key)
    basic = f"{code:03d}"
    if info is None or p is None or info.listed_with(basic):
        return None
    if basic in info.used_with and basic in p.pairings:
        return p.pairings[basic]
    if info.listed_with(basic) is None:
        return _t(lang, "pairing_not_given", code=basic, enhanced=enhanced, key=key)
    return _t(lang, "pairing_unlisted", code=basic, enhanced=enhanced, key=key,
              listed=", ".join(info.associated_codes) or info.associated)


def _fix_for_class(p: reg.Prose, klass: int | None, shown: str, lang: str) -> str:
    """The advice for this class only: `fix_<class>` when the data has it; for 2.x.x
    without one, that a success needs no fixing; else `fix` (the registry form's)."""
    if klass is None:
        return p.fix
    own = p.fix_by_class.get(klass)
    if own:
        return own
    if klass == 2:
        return _t(lang, "fix_success", code=shown)
    return p.fix


def _localised(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Errors of `fn` in the language asked for (its `lang` argument, second or named)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except ReplyError as exc:
            lang = str(kwargs.get("lang", args[1] if len(args) > 1 else "en"))
            if not exc.key or lang == "en":
                raise
            raise ReplyError(exc.text(lang), key=exc.key, **exc.params) from None

    return wrapper


def normalise(text: str) -> str:
    """A code as people type it, in one form: NFKC (full-width digits are digits, an
    ideographic space a space), surrounding white space removed."""
    return unicodedata.normalize("NFKC", text).strip()


def _normalise_reply(text: str) -> str:
    """A reply with the codes at the start of each line in NFKC form and its text as
    written (NFKC would also turn the text's full-width punctuation into ASCII)."""
    out = []
    for line in text.strip().split("\n"):
        i = 0
        while i < len(line):
            ch = unicodedata.normalize("NFKC", line[i])
            if not ch or any(c not in _HEAD_CHARS for c in ch):
                break
            i += 1
        out.append(unicodedata.normalize("NFKC", line[:i]) + line[i:])
    return "\n".join(out).strip()


_HEAD_CHARS = frozenset("0123456789.- \r")


@_localised
def explain_code(code: str, lang: str = "en") -> Explanation:
    """Explain `556`, `5.1.10` or the registry form `X.1.10`; ReplyError if malformed."""
    s = normalise(code)
    m = _KEY_RE.match(s)
    if m:
        return _enhanced(None, int(m.group(1)), int(m.group(2)), lang)
    if _ZERO_KEY_RE.match(s):
        raise ReplyError(key="enhanced_leading_zero", text=s)
    if "." in s:
        e = parse_enhanced_code(s)
        return _enhanced(e.klass, e.subject, e.detail, lang)
    if s in reg.registry():  # known codes outside the grammar too (471, 571)
        return _basic(int(s), lang)
    return _basic(parse_basic_code(s), lang)


@_localised
def explain_reply(reply: Reply | str, lang: str = "en") -> ReplyExplanation:
    """Explain a whole reply: its basic code, its enhanced code, and any inconsistency."""
    r = parse_reply(_normalise_reply(reply)) if isinstance(reply, str) else reply
    parts = [_basic(r.code, lang)]
    notes: list[str] = []
    seen = r.enhanced  # the enhanced code as written, even of another class (vendors)
    if r.enhanced is not None:
        parts.append(explain_code(r.enhanced, lang))
        note = _pairing_note(r.code, r.enhanced, lang)
        if note:
            notes.append(note)
    else:
        first = r.lines[0].split(" ", 1)[0]
        if re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", first):
            if any(len(n) > 1 and n[0] == "0" for n in first.split(".")[1:]):
                notes.append(_t(lang, "leading_zero_note", enhanced=first))
            else:
                notes.append(_t(lang, "mismatch_note", enhanced=first, code=r.code))
            seen = first
    from mailgate.codes import vendors

    vendor = vendors.explain_vendor(r.code, seen, " ".join(r.lines), lang)
    return ReplyExplanation(reply=r, lang=lang, parts=tuple(parts), notes=tuple(notes),
                            vendor=vendor)


@_localised
def explain(query: str, lang: str = "en") -> Explanation | ReplyExplanation:
    """A code alone, or a whole reply line such as `556 5.1.10 Recipient has null MX`."""
    s = normalise(query)
    if not s:
        raise ReplyError(key="nothing_to_explain")
    if " " not in s and "\n" not in s and "-" not in s:
        if not (s[0].isdigit() or s.startswith("X.")):
            raise ReplyError(key="not_a_code", text=s)
        return explain_code(s, lang)
    return explain_reply(query, lang)
