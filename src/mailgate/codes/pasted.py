"""Explain what people paste: the parts `paste.read_paste` found, where, and what each
means (the provider's reading first, then the registry's).

`explain_text` is what `mailgate explain` and the web's /explain page call: a code or
a clean reply line is explained exactly as `explain.explain` does; anything else is
read as a paste. The words are data (`data/<lang>/vendors/words.toml`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailgate.codes.explain import (
    Explanation,
    ReplyExplanation,
    explain,
    explain_code,
    explain_reply,
)
from mailgate.codes.render import Block, Doc, explanation_doc, to_html, to_markdown, to_text
from mailgate.codes.reply import ReplyError, parse_reply

if TYPE_CHECKING:  # imported when a paste is read: a code alone does not pay for them
    from mailgate.codes import vendors
    from mailgate.codes.paste import Pasted

__all__ = ["PasteExplanation", "explain_paste", "explain_text", "paste_doc", "render_any"]

@dataclass(frozen=True, slots=True)
class PasteExplanation:
    """A paste explained: what was found where, and each part's meaning."""

    pasted: Pasted
    lang: str
    reply: ReplyExplanation | None  # when an SMTP reply was found
    codes: tuple[Explanation, ...]  # when only an enhanced code was found (Status: 5.1.1)
    vendor: tuple[vendors.VendorExplanation, ...]
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "paste": self.pasted.to_json(),
            "lang": self.lang,
            "reply": None if self.reply is None else self.reply.to_json(),
            "codes": [c.to_json() for c in self.codes],
            "vendor": [v.to_json() for v in self.vendor],
            "notes": list(self.notes),
        }


def _notes(p: Pasted, lang: str) -> tuple[str, ...]:
    from mailgate.codes import vendors
    from mailgate.codes.paste import MAX_PASTE

    templates = vendors.words(lang)["notes"]
    out = []
    for key in p.notes:
        out.append(str(templates[key]).format(
            limit=MAX_PASTE, code=p.code, status=_status(p) or "", enhanced=p.enhanced or ""))
    return tuple(out)


def _status(p: Pasted) -> str | None:
    return next((f.value for f in p.found if f.part == "status"), None)


def explain_paste(p: Pasted, lang: str = "en") -> PasteExplanation:
    """Explain what `read_paste` found. ReplyError when it found no code at all."""
    from mailgate.codes import vendors

    if p.empty:
        raise ReplyError(key="paste_empty")
    vendor = vendors.explain_vendor(p.code, p.enhanced, p.text, lang, host=p.host)
    reply: ReplyExplanation | None = None
    codes: tuple[Explanation, ...] = ()
    if p.reply is not None:
        reply = dataclasses.replace(explain_reply(p.reply, lang), vendor=vendor)
        if p.enhanced is not None and p.reply.enhanced is None:
            codes = (explain_code(p.enhanced, lang),)  # a class that does not match
    elif p.enhanced is not None:
        codes = (explain_code(p.enhanced, lang),)
    elif not vendor:
        assert p.code is not None
        raise ReplyError(f"{p.code} is not an SMTP reply code, and mailgate knows no "
                         "program that reports it.")
    return PasteExplanation(pasted=p, lang=lang, reply=reply, codes=codes, vendor=vendor,
                            notes=_notes(p, lang))


def explain_text(text: str, lang: str = "en") -> Explanation | ReplyExplanation | PasteExplanation:
    """A code or a reply line as `explain` does it; anything else read as a paste."""
    s = text.strip()
    clean = True
    try:
        r = parse_reply(s) if s[:1].isdigit() and len(s) > 3 else None
        if r is not None and re.match(rf"{r.code}(?:[ \-]|$)", r.lines[0]):
            clean = False  # the code written twice: read as a paste
    except ReplyError:
        pass
    if clean:
        try:
            return explain(text, lang)
        except ReplyError as exc:
            error = exc
    else:
        error = ReplyError(key="paste_no_code", size=len(text))
    if len(str(error)) > 300:  # never echo a long paste back
        error = ReplyError(key="paste_no_code", size=len(text))
    if re.fullmatch(r"[0-9Xx]{1,3}(?:\.[0-9]{1,4}){1,3}", s):
        raise error  # one enhanced code the strict reader refused (5.01.1): not a paste
    from mailgate.codes.paste import read_paste

    p = read_paste(text)
    if p.empty:
        raise error
    try:
        return explain_paste(p, lang)
    except ReplyError:
        raise error from None


def paste_doc(x: PasteExplanation) -> Doc:
    """The layout: what was found where, the notes, then the explanation of each part."""
    from mailgate.codes import vendors

    w = vendors.words(x.lang)
    lab, parts, forms = w["labels"], w["parts"], w["forms"]
    p = x.pasted
    doc = Doc(title=str(lab["paste_title"]), lang=x.lang)
    doc.heading(doc.title, 1)
    facts = [(str(lab["form"]), str(forms.get(p.form, p.form)))]
    for f in p.found:
        where = str(lab["where"]).format(line=f.line, column=f.column)
        facts.append((str(parts.get(f.part, f.part)),
                      str(lab["found_at"]).format(value=f.value, where=where)))
    doc.fields(facts)
    if p.command is not None and p.command in w.get("commands", {}):
        doc.para(str(w["commands"][p.command]))
    doc.bullets(list(x.notes))
    if x.reply is not None:  # the reply's own layout, its headings one level down
        doc.blocks.extend(Block(b.kind, b.text, min(6, b.level + 1), b.items, b.pairs)
                          if b.kind == "heading" else b
                          for b in explanation_doc(x.reply).blocks)
    else:
        for v in x.vendor:
            doc.heading(v.heading, 2)
            for para in v.paragraphs:
                doc.para(para)
            doc.fields(list(v.facts))
    for c in x.codes:
        doc.blocks.extend(explanation_doc(c).blocks[1:])
    return doc


def render_any(x: Explanation | ReplyExplanation | PasteExplanation, fmt: str,
               color: bool | None = None) -> str:
    """`render.render` for everything `explain_text` returns."""
    if not isinstance(x, PasteExplanation):
        from mailgate.codes.render import render

        return render(x, fmt, color=color)
    if fmt == "json":
        data = {"schema": "mailgate.codes/1", "type": "paste", **x.to_json()}
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    doc = paste_doc(x)
    if fmt == "markdown":
        return to_markdown(doc)
    if fmt == "html":
        return to_html(doc)
    if fmt == "text":
        return to_text(doc, color=color)
    raise ValueError(f"unknown format {fmt!r}")
