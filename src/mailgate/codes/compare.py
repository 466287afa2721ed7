"""Two codes side by side, derived from their data: any pair works, none is hand-written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.codes import registry as reg
from mailgate.codes.explain import Explanation, explain_code

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The comparison of two codes in one language."""

    lang: str
    a: Explanation
    b: Explanation
    headline: str
    summary: tuple[str, str]
    differences: tuple[str, ...]
    when_to_use: tuple[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "lang": self.lang,
            "headline": self.headline,
            "summary": list(self.summary),
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "differences": list(self.differences),
            "when_to_use": list(self.when_to_use),
        }


def _t(lang: str, name: str, **kw: object) -> str:
    return str(reg.ui(lang)["templates"][name]).format(**kw)


def _class_label(e: Explanation, lang: str) -> str:
    """`5xx Permanent Negative Completion (permanent failure)`; the outcome is left out
    where the class's name already says it (`5.x.x Permanent Failure`)."""
    if e.klass is None:
        return e.class_name or "X"
    label = _t(lang, f"class_label_{e.kind}", klass=e.klass, class_name=e.class_name)
    outcome = str(reg.ui(lang)["outcome"].get(e.outcome, ""))
    if not outcome or outcome.lower() in e.class_name.lower():
        return label
    return _t(lang, "class_with_outcome", label=label, outcome=outcome)


def _summary(e: Explanation, lang: str) -> str:
    if e.kind == "basic":
        return _t(
            lang, "summary_basic", code=e.code, klass=e.klass, class_name=e.class_name,
            summary=e.summary,
        )
    return _t(
        lang, "summary_enhanced", code=e.code, klass=e.klass if e.klass is not None else "X",
        class_name=e.class_name or "-", subject=e.subject, summary=e.summary,
    )


def _punctuation(lang: str) -> dict[str, str]:
    return {k: str(v) for k, v in reg.ui(lang)["punctuation"].items()}


def _glue(left: str, sep: str, right: str, lang: str) -> str:
    """`left + sep + right`; where the language sets `latin_space`, a separator that is a
    word of its own script (Chinese "or") gets a space beside Latin text, as in
    `MAIL FROM` + `RCPT TO`, but not beside text of its own script."""
    if _punctuation(lang).get("latin_space") == "True" and sep.isalpha() and not sep.isascii():
        if left and left[-1].isascii() and left[-1].isalnum():
            sep = " " + sep
        if right and right[0].isascii() and right[0].isalnum():
            sep = sep + " "
    return left + sep + right


def _join(items: list[str], lang: str) -> str:
    """Alternatives: `a or b`, `a, b or c` (the words from ui.toml's [punctuation])."""
    p = _punctuation(lang)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    head = items[0]
    for item in items[1:-1]:
        head = _glue(head, p["list_sep"], item, lang)
    return _glue(head, p["or"], items[-1], lang)


def _codes(codes: list[str] | tuple[str, ...], lang: str) -> str:
    """A list of codes, all of them, joined by the language's list separator."""
    return _punctuation(lang)["list_sep"].join(codes)


def _when_phrase(e: Explanation, lang: str) -> str:
    """Where a code appears, as a phrase, from its phases (basic) or pairings (enhanced):
    the basic codes the IANA entry lists (`Any`: any of its class; `not given`: none),
    then those it is sent with in practice (the registry's `used_with`)."""
    ui = reg.ui(lang)
    if e.kind == "basic":
        # Replies to commands read as one phrase ("in reply to MAIL FROM or RCPT TO"),
        # put where the first of them is; other situations follow as they are.
        commands = [str(ui["phase_command"][p]) for p in e.phases if p in ui["phase_command"]]
        phrases: list[str] = []
        for p in e.phases:
            if p in ui["phase_command"]:
                if p == next(q for q in e.phases if q in ui["phase_command"]):
                    phrases.append(_t(lang, "when_reply_to", commands=_join(commands, lang)))
            elif p in ui["phases"]:
                phrases.append(str(ui["phases"][p]))
        return _join(phrases, lang) if phrases else _t(lang, "when_unknown")
    info = reg.registry().get(e.key)
    words = info.associated.strip().lower() if info is not None else "not given"
    own = str(e.klass) if e.klass is not None else ""
    basics = [c for c in e.associated if c.isdigit() and (not own or c[0] == own)]
    used = [c for c in e.used_with if not own or c[0] == own]
    if basics:
        phrase = _t(lang, "when_enhanced", codes=_codes(basics, lang))
    elif words == "any" or (own and f"{own}xx" in words.replace("(", " ").split()):
        phrase = _t(lang, "when_enhanced_any")
    elif words in ("not given", "-", ""):
        phrase = _t(lang, "when_enhanced_not_given")
    else:  # the registry lists basic codes, none of this class
        phrase = _t(lang, "when_enhanced_other_class",
                    codes=_codes([c for c in e.associated if c.isdigit()], lang))
    if used:
        phrase += _t(lang, "when_enhanced_used", codes=_codes(used, lang))
    return phrase


def _client_action(e: Explanation, lang: str) -> str:
    """What the client does after the code: its class's rule, and any exception the
    RFCs make for one command (552 to RCPT is treated as 452)."""
    ui = reg.ui(lang)
    actions = ui["basic_class_client_action"]
    if e.klass is None:
        return "-"
    out = str(actions[str(e.klass)])
    for phase, as_code in e.treat_as:
        out += _t(lang, "client_treat_as", code=e.code, phase=ui["phases"][phase],
                  as_code=as_code, ref=e.treat_as_ref, action=actions[as_code[0]])
    return out


def _fix_phrase(e: Explanation, lang: str) -> str:
    """The first sentence of the advice for this code's own class (explain chose it)."""
    if e.outcome == "success":
        return _t(lang, "nothing_to_fix")
    return _first_sentence(e.fix, lang)


def _first_sentence(text: str, lang: str) -> str:
    end = _punctuation(lang)["sentence_end"]
    i = text.find(end)
    return text if i == -1 else text[: i + len(end.rstrip())]


def _paired(a: Explanation, b: Explanation) -> tuple[Explanation, Explanation] | None:
    """(basic, enhanced) when the registry lists the two together."""
    if {a.kind, b.kind} != {"basic", "enhanced"}:
        return None
    basic, enh = (a, b) if a.kind == "basic" else (b, a)
    if enh.klass is not None and basic.klass != enh.klass:
        return None
    if basic.code in enh.associated or enh.key in basic.associated:
        return basic, enh
    return None


def _used_together(a: Explanation, b: Explanation) -> tuple[Explanation, Explanation] | None:
    """(basic, enhanced) when they are sent together outside the IANA entry's list."""
    if {a.kind, b.kind} != {"basic", "enhanced"}:
        return None
    basic, enh = (a, b) if a.kind == "basic" else (b, a)
    if enh.klass is not None and basic.klass != enh.klass:
        return None
    return (basic, enh) if basic.code in enh.used_with else None


def compare(code_a: str, code_b: str, lang: str = "en") -> Comparison:
    """Compare two codes (basic or enhanced); ReplyError names a malformed one."""
    a = explain_code(code_a, lang)
    b = explain_code(code_b, lang)
    ui = reg.ui(lang)
    labels = ui["labels"]
    diffs: list[str] = []

    if a.klass == b.klass and a.kind == b.kind == "basic":
        diffs.append(
            _t(lang, "diff_class_same", klass=a.klass, class_name=a.class_name,
               meaning=a.class_meaning)
        )
    else:
        outcomes = ui["outcome"]
        diffs.append(
            _t(lang, "diff_class", a=a.code, b=b.code, class_a=_class_label(a, lang),
               class_b=_class_label(b, lang), outcome_a=outcomes.get(a.outcome, "-"),
               outcome_b=outcomes.get(b.outcome, "-"))
        )
    if a.kind != b.kind:
        diffs.append(
            _t(lang, "diff_kind", a=a.code, b=b.code, kind_a=labels[f"kind_{a.kind}"],
               kind_b=labels[f"kind_{b.kind}"])
        )
    diffs.append(_t(lang, "diff_meaning", a=a.code, b=b.code, title_a=a.title, title_b=b.title))
    if a.kind == b.kind == "enhanced" and a.subject != b.subject:
        diffs.append(
            _t(lang, "diff_subject", a=a.code, b=b.code, subject_a=a.subject,
               subject_b=b.subject)
        )
    diffs.append(
        _t(lang, "diff_when", a=a.code, b=b.code, when_a=_when_phrase(a, lang),
           when_b=_when_phrase(b, lang))
    )
    if a.kind == b.kind == "basic" and (a.closes or b.closes):
        if a.closes and b.closes:
            diffs.append(_t(lang, "diff_connection_both"))
        else:
            closing, other = (a, b) if a.closes else (b, a)
            diffs.append(_t(lang, "diff_connection", closing=closing.code, open=other.code))
    if a.klass != b.klass and a.klass is not None and b.klass is not None:
        diffs.append(
            _t(lang, "diff_client", a=a.code, b=b.code, action_a=_client_action(a, lang),
               action_b=_client_action(b, lang))
        )
    diffs.append(
        _t(lang, "diff_fix", a=a.code, b=b.code, fix_a=_fix_phrase(a, lang),
           fix_b=_fix_phrase(b, lang))
    )
    pair = _paired(a, b)
    if pair is not None:
        diffs.append(_t(lang, "diff_pair", a=a.code, b=b.code, basic=pair[0].code,
                        enhanced=pair[1].code))
    else:
        used = _used_together(a, b)
        if used is not None:
            diffs.append(_t(lang, "diff_pair_used", basic=used[0].code, enhanced=used[1].code))
    if a.standard != b.standard and a.registered and b.registered:
        nonstd, std = (a, b) if not a.standard else (b, a)
        diffs.append(
            _t(lang, "diff_standard", nonstd=nonstd.code, std=std.code,
               see=_codes(nonstd.see, lang) or "?")
        )

    headline = _t(lang, "headline", a=a.code, b=b.code, title_a=a.title, title_b=b.title)
    use = tuple(
        _t(lang, "use_code", code=e.code, when=_lower_first(e.when, lang)) for e in (a, b)
    )
    return Comparison(
        lang=lang, a=a, b=b, headline=headline,
        summary=(_summary(a, lang), _summary(b, lang)),
        differences=tuple(diffs), when_to_use=(use[0], use[1]),
    )


def _lower_first(text: str, lang: str) -> str:
    if lang != "en" or not text:
        return text
    # "Sent in reply to QUIT" -> "sent in reply to QUIT"; leave acronyms alone.
    first = text.split(" ", 1)[0]
    if first.isupper() or any(c.isdigit() for c in first):
        return text
    return text[0].lower() + text[1:]
