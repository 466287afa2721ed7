"""Render explanations and comparisons as documents: text, Markdown, HTML, JSON.

Each result is first laid out as a small document (headings, paragraphs, labelled
fields, lists); the formats are views of that one layout, so they cannot disagree.
Rich is imported only for terminal text, and only when text is asked for.
"""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from mailgate.codes import registry as reg
from mailgate.codes.compare import Comparison
from mailgate.codes.explain import Explanation, ReplyExplanation

__all__ = ["FORMATS", "Doc", "comparison_doc", "explanation_doc", "render"]

FORMATS = ("text", "markdown", "json", "html")

# What a reply's text may carry that must not reach a terminal raw: C0 controls but the
# line break, DEL, C1 controls, and the bidirectional overrides ("Trojan Source"). An
# explained reply is text from a stranger (a remote server, a pasted bounce); ESC in it
# would set the window title or clear the screen. Shown as escapes instead (`\x1b`), as
# mailgate.textsafe does for the queue commands (codes cannot import it: same layer).
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
        else f"\\u{ord(m.group()):04x}", text)


def _safe(doc: Doc) -> Doc:
    """The document with every string printable."""
    return Doc(
        title=_printable(doc.title), lang=doc.lang,
        blocks=[Block(b.kind, text=_printable(b.text), level=b.level,
                      items=[_printable(t) for t in b.items],
                      pairs=[(_printable(k), _printable(v)) for k, v in b.pairs])
                for b in doc.blocks],
    )


@dataclass
class Block:
    kind: str  # heading | para | fields | numbered | bullets
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Doc:
    title: str
    lang: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("heading", text=text, level=level))

    def para(self, text: str) -> None:
        if text:
            self.blocks.append(Block("para", text=text))

    def fields(self, pairs: list[tuple[str, str]]) -> None:
        self.blocks.append(Block("fields", pairs=[(k, v) for k, v in pairs if v]))

    def numbered(self, items: list[str]) -> None:
        self.blocks.append(Block("numbered", items=items))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Block("bullets", items=items))


def _labels(lang: str) -> dict[str, str]:
    return dict(reg.ui(lang)["labels"])


def _code_section(doc: Doc, e: Explanation, level: int) -> None:
    lab = _labels(e.lang)
    doc.heading(f"{e.code} {e.title}", level)
    doc.para(e.summary)
    klass = f"{e.klass}xx {e.class_name}" if e.kind == "basic" else e.class_name
    second = lab["category"] if e.kind == "basic" else lab["subject"]
    facts = [
        (lab["class"], f"{klass} — {e.class_meaning}" if e.class_meaning else klass),
        (second, f"{e.subject} — {e.subject_meaning}" if e.subject_meaning else e.subject),
    ]
    if e.reference_text:
        facts.append((lab["reference_text"], e.reference_text))
    doc.fields(facts)
    doc.heading(lab["description"], level + 1)
    doc.para(e.description)
    doc.heading(lab["when"], level + 1)
    doc.para(e.when)
    if e.closes:
        doc.para(lab["closes"])
    doc.heading(lab["fix"], level + 1)
    doc.para(e.fix)
    more = []
    if e.see:
        more.append((lab["see"], ", ".join(e.see)))
    if e.related:
        more.append((lab["related"], ", ".join(e.related)))
    if e.rfcs:
        more.append((lab["rfcs"], "; ".join(e.rfcs)))
    if more:
        doc.fields(more)
    if e.notes:
        doc.bullets(list(e.notes))


def explanation_doc(x: Explanation | ReplyExplanation) -> Doc:
    if isinstance(x, Explanation):
        doc = Doc(title=f"SMTP {x.code} {x.title}", lang=x.lang)
        doc.heading(doc.title, 1)
        _code_section(doc, x, 2)
        return doc
    lab = _labels(x.lang)
    r = x.reply
    doc = Doc(title=f"SMTP {lab['reply']}: {r}", lang=x.lang)
    doc.heading(doc.title, 1)
    doc.fields([
        (lab["reply"], f"{r.code}" + (f" {r.enhanced}" if r.enhanced else "")),
        (lab["text"], r.text),
    ])
    for v in x.vendor:  # a provider's own meaning comes first (codes/vendors.py)
        doc.heading(v.heading, 2)
        for p in v.paragraphs:
            doc.para(p)
        doc.fields(list(v.facts))
    for part in x.parts:
        _code_section(doc, part, 2)
    doc.bullets(list(x.notes))
    return doc


def comparison_doc(c: Comparison) -> Doc:
    lab = _labels(c.lang)
    doc = Doc(title=c.headline, lang=c.lang)
    doc.heading(c.headline, 1)
    doc.para(str(reg.ui(c.lang)["punctuation"]["sentence_sep"]).join(c.summary))
    for e in (c.a, c.b):
        _code_section(doc, e, 2)
    doc.heading(lab["key_differences"], 2)
    doc.numbered(list(c.differences))
    doc.heading(lab["when_to_use"], 2)
    doc.bullets(list(c.when_to_use))
    return doc


def to_markdown(doc: Doc) -> str:
    out: list[str] = []
    for b in doc.blocks:
        if b.kind == "heading":
            out.append("#" * b.level + " " + b.text)
        elif b.kind == "para":
            out.append(b.text)
        elif b.kind == "fields":
            out.append("\n".join(f"- **{k}:** {v}" for k, v in b.pairs))
        elif b.kind == "numbered":
            out.append("\n".join(f"{i}. {t}" for i, t in enumerate(b.items, 1)))
        elif b.kind == "bullets":
            out.append("\n".join(f"- {t}" for t in b.items))
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1d232a}h1{font-size:1.5rem}h2{border-bottom:1px solid #ccd;"
    "padding-bottom:.2rem;margin-top:2rem}dl{display:grid;grid-template-columns:max-content "
    "1fr;gap:.2rem 1rem}dt{font-weight:600}dd{margin:0}"
)


def to_html_fragment(doc: Doc) -> str:
    e = html.escape
    out: list[str] = []
    for b in doc.blocks:
        if b.kind == "heading":
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif b.kind == "para":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "fields":
            rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in b.pairs)
            out.append(f"<dl>{rows}</dl>")
        elif b.kind in ("numbered", "bullets"):
            tag = "ol" if b.kind == "numbered" else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{e(t)}</li>" for t in b.items) + f"</{tag}>")
    return "\n".join(out)


def to_html(doc: Doc) -> str:
    lang = str(reg.ui(doc.lang).get("html_lang", doc.lang))
    return (
        f'<!doctype html>\n<html lang="{lang}">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"{to_html_fragment(doc)}\n</body>\n</html>\n"
    )


def _terminal() -> tuple[bool, int | None]:
    """Whether standard output is a terminal that shows colour (rich's reading of it:
    a tty, TERM not dumb, NO_COLOR unset, or FORCE_COLOR set), and its width."""
    from rich.console import Console

    out = Console(highlight=False)
    color = out.is_terminal and out.color_system is not None and not out.no_color
    return color, (out.width if out.is_terminal else None)


def to_text(doc: Doc, color: bool | None = None, width: int | None = None) -> str:
    """Terminal text with rich: bold headings, aligned fields, wrapped paragraphs.

    `color=None` asks standard output: colour and its width when it is a terminal that
    shows colour, plain text otherwise. (The text is written to a buffer first, which
    is never a terminal: asking the buffer gave plain text on every terminal.)
    """
    from rich.console import Console
    from rich.text import Text

    if color is None:
        color, tty_width = _terminal()
        width = width or tty_width
    console = Console(
        record=True, force_terminal=color, no_color=not color, width=width,
        highlight=False, soft_wrap=False, file=io.StringIO(),
    )
    for i, b in enumerate(doc.blocks):
        if b.kind == "heading":
            if i:
                console.print()
            style = "bold underline" if b.level == 1 else ("bold cyan" if b.level == 2 else "bold")
            console.print(Text(b.text, style=style))
        elif b.kind == "para":
            console.print(Text(b.text))
        elif b.kind == "fields":
            colon = str(reg.ui(doc.lang)["punctuation"]["colon"])
            for k, v in b.pairs:
                t = Text()
                t.append(f"{k}{colon}", style="bold")
                t.append(v)
                console.print(t)
        elif b.kind == "numbered":
            for n, item in enumerate(b.items, 1):
                console.print(Text(f"{n}. {item}"))
        elif b.kind == "bullets":
            for item in b.items:
                console.print(Text(f"• {item}"))
    return console.export_text(styles=color)


def render(
    x: Explanation | ReplyExplanation | Comparison,
    fmt: str,
    color: bool | None = None,
    width: int | None = None,
) -> str:
    """The result in one of FORMATS."""
    if fmt == "json":
        data: dict[str, Any] = {"schema": "mailgate.codes/1", **x.to_json()}
        data["type"] = "comparison" if isinstance(x, Comparison) else (
            "reply" if isinstance(x, ReplyExplanation) else "code"
        )
        out = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    doc = _safe(comparison_doc(x) if isinstance(x, Comparison) else explanation_doc(x))
    if fmt == "markdown":
        return to_markdown(doc)
    if fmt == "html":
        return to_html(doc)
    if fmt == "text":
        return to_text(doc, color=color, width=width)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
