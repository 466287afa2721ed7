"""Explain a code or a whole reply, in one language, from the registry's data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

_KEY_RE = re.compile(r"X\.([0-9]{1,3})\.([0-9]{1,3})\Z")


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
        notes.append(_t(lang, "nonstandard_note", code=key, see=", ".join(info.see) or "?"))
    return Explanation(
        code=key, key=key, kind="basic", lang=lang, registered=True, standard=info.standard,
        klass=int(d1), class_name=class_name, class_meaning=class_meaning, outcome=outcome,
        subject=category, subject_meaning=category_meaning,
        title=p.title, summary=p.summary, description=p.description, when=p.when, fix=p.fix,
        reference_text=info.reference_text, rfcs=info.rfcs, related=info.related,
        associated=info.associated_codes, see=info.see, phases=info.phases,
        closes=info.closes, deprecated=False, notes=tuple(notes),
    )


def _enhanced(klass: int | None, subject: int, detail: int, lang: str) -> Explanation:
    """An enhanced code; `klass=None` explains the registry form X.subject.detail."""
    key = f"X.{subject}.{detail}"
    shown = key if klass is None else f"{klass}.{subject}.{detail}"
    subj_key = f"X.{subject}.X"
    subj = _prose(lang, subj_key)
    if subj is None or subj_key not in reg.registry():
        raise ReplyError(
            f"{shown} is not an enhanced status code: subject {subject} is not defined "
            "(RFC 3463 defines subjects 0 to 7)."
        )
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
        title=p.title, summary=p.summary, description=p.description, when=p.when, fix=p.fix,
        reference_text=info.reference_text, rfcs=info.rfcs, related=info.related,
        associated=info.associated_codes, see=(), phases=(), closes=False,
        deprecated=info.deprecated, notes=tuple(notes),
    )


def explain_code(code: str, lang: str = "en") -> Explanation:
    """Explain `556`, `5.1.10` or the registry form `X.1.10`; ReplyError if malformed."""
    s = code.strip()
    m = _KEY_RE.match(s)
    if m:
        return _enhanced(None, int(m.group(1)), int(m.group(2)), lang)
    if "." in s:
        e = parse_enhanced_code(s)
        return _enhanced(e.klass, e.subject, e.detail, lang)
    if s in reg.registry():  # known codes outside the grammar too (471, 571)
        return _basic(int(s), lang)
    return _basic(parse_basic_code(s), lang)


def explain_reply(reply: Reply | str, lang: str = "en") -> ReplyExplanation:
    """Explain a whole reply: its basic code, its enhanced code, and any inconsistency."""
    r = parse_reply(reply) if isinstance(reply, str) else reply
    parts = [_basic(r.code, lang)]
    notes: list[str] = []
    seen = r.enhanced  # the enhanced code as written, even of another class (vendors)
    if r.enhanced is not None:
        parts.append(explain_code(r.enhanced, lang))
    else:
        first = r.lines[0].split(" ", 1)[0]
        if re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", first):
            notes.append(_t(lang, "mismatch_note", enhanced=first, code=r.code))
            seen = first
    from mailgate.codes import vendors

    vendor = vendors.explain_vendor(r.code, seen, " ".join(r.lines), lang)
    return ReplyExplanation(reply=r, lang=lang, parts=tuple(parts), notes=tuple(notes),
                            vendor=vendor)


def explain(query: str, lang: str = "en") -> Explanation | ReplyExplanation:
    """A code alone, or a whole reply line such as `556 5.1.10 Recipient has null MX`."""
    s = query.strip()
    if not s:
        raise ReplyError("nothing to explain: give a code such as 556 or 5.1.10, or a reply line.")
    if " " not in s and "\n" not in s and "-" not in s:
        if not (s[0].isdigit() or s.startswith("X.")):
            raise ReplyError(
                f"{s!r} is not a reply code: give three digits (556), an enhanced status "
                "code (5.1.10) or a whole reply line."
            )
        return explain_code(s, lang)
    return explain_reply(s, lang)
