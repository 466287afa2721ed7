"""The reference's HTML pages: the code index and search, one page per code, two codes
compared, and the site's error pages (404 and 500, or JSON under `/api/`).

The page of a code is the layout that `mailgate explain` prints
(`render.explanation_doc`), the compare page the layout of `mailgate compare`
(`render.comparison_doc`). Whole pages are cached as bytes per (page, lang): none
depends on anything but its URL and the language.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ExceptionHandler

from mailgate.codes import registry as reg
from mailgate.codes.render import Block, Doc, comparison_doc, explanation_doc
from mailgate.codes.reply import ReplyError
from mailgate.web.context import static_version, templates
from mailgate.web.lang import Chrome, chrome_at, html_lang, pick_lang, remember_lang, web_text
from mailgate.web.public.knowledge import (
    MAX_QUERY,
    CodeNotFound,
    _check_code,
    _error_json,
    _tidy,
    class_forms,
    code_keys,
    comparison,
    explanation,
    holds_reply,
    lookup,
    normalize_query,
    search,
    suggest,
)

__all__ = ["DocView", "Group", "IndexRow", "exception_handlers", "routes"]

JS_URL = f"/static/search.js?v={static_version('search.js')}"


# --- rendering ------------------------------------------------------------------------

# A code mentioned in prose: 556, 5.1.10, X.7.27; not a section number (§4.2.1) or part
# of a longer number.
_MENTION_RE = re.compile(
    r"(?<![\w.§/#-])((?:[2-5][0-9][0-9])|(?:[245X]\.[0-9]{1,3}\.[0-9]{1,3}))(?![\w-]|\.[0-9])"
)


def _code_href(code: str) -> str:
    info = reg.registry().get(code)
    if info is not None and info.kind in ("class", "subject"):
        return f"/codes#{code}"
    return f"/codes/{quote(code, safe='.')}"


def _is_known(code: str) -> bool:
    key = code if code[0].isdigit() and "." not in code else f"X{code[1:]}"
    return key in reg.registry()


def link_codes(text: str) -> Markup:
    """Escape `text` and link every registered code it mentions to its page."""
    escaped = html.escape(text, quote=False)

    def sub(m: re.Match[str]) -> str:
        code = m.group(1)
        if not _is_known(code):
            return code
        return f'<a href="{_code_href(code)}">{code}</a>'

    return Markup(_MENTION_RE.sub(sub, escaped))


_RFC_RE = re.compile(r"RFC\s?([0-9]{3,5})(?:\s*§\s*([0-9.]+))?", re.IGNORECASE)


def rfc_link(ref: str) -> Markup:
    """`RFC7504 §4` -> a link to that section on rfc-editor.org."""
    m = _RFC_RE.match(ref.strip())
    if m is None:
        return Markup(html.escape(ref))
    url = f"https://www.rfc-editor.org/rfc/rfc{m[1]}"
    if m[2]:
        url += f"#section-{m[2].rstrip('.')}"
    return Markup(f'<a href="{url}" rel="external">{html.escape(ref)}</a>')


def code_title(code: str, lang: str) -> str:
    """The title of a registry key (code, class or subject), or "" if none."""
    key = code if code in reg.registry() else f"X{code[1:]}"
    p = reg.prose(lang).get(key)
    return p.title if p is not None else ""


templates.env.filters.setdefault("link_codes", link_codes)
templates.env.filters.setdefault("rfc_link", rfc_link)
templates.env.globals.setdefault("code_href", _code_href)
templates.env.globals.setdefault("code_title", code_title)


@dataclass(frozen=True, slots=True)
class DocView:
    """A render.Doc as the templates show it: which fields hold code lists or RFCs."""

    blocks: tuple[Block, ...]
    lang: str
    related_label: str
    see_label: str
    rfcs_label: str


def _view(blocks: Iterable[Block], lang: str) -> DocView:
    lab = reg.ui(lang)["labels"]
    return DocView(tuple(blocks), lang, lab["related"], lab["see"], lab["rfcs"])


def _code_doc_blocks(doc: Doc) -> list[Block]:
    """The explain layout for a page: its h1 is the page title, so the section's own
    heading (the same words) goes and the headings under it move up one level."""
    blocks = list(doc.blocks[1:])
    if blocks and blocks[0].kind == "heading" and blocks[0].level == 2:
        blocks = blocks[1:]
    return [Block(b.kind, b.text, max(2, b.level - 1), b.items, b.pairs)
            if b.kind == "heading" else b for b in blocks]


def _split_sections(blocks: list[Block]) -> list[list[Block]]:
    """Blocks cut at each level-2 heading: [intro, section, section, ...]."""
    out: list[list[Block]] = [[]]
    for b in blocks:
        if b.kind == "heading" and b.level == 2:
            out.append([])
        out[-1].append(b)
    return out


def _page(template: str, chrome: Chrome, **context: Any) -> bytes:
    return templates.get_template(template).render(chrome=chrome, **context).encode("utf-8")


def _headers(lang: str) -> dict[str, str]:
    return {"Content-Language": html_lang(lang), "Vary": "Accept-Language, Cookie"}


def _html(request: Request, body: bytes, lang: str, status: int = 200) -> HTMLResponse:
    response = HTMLResponse(body, status_code=status, headers=_headers(lang))
    remember_lang(request, response)
    return response


@functools.lru_cache(maxsize=4096)
def _code_page(code: str, lang: str) -> bytes:
    e = explanation(code, lang)
    doc = explanation_doc(e)
    related = [(c, code_title(c, lang)) for c in e.related]
    forms = [f for f in class_forms(e.key) if f != e.code] if e.kind == "enhanced" else []
    return _page(
        "public/code.html", chrome_at(lang, f"/codes/{e.code}", ()),
        e=e, title=doc.title, view=_view(_code_doc_blocks(doc), lang), related=related,
        forms=forms, json_url=f"/api/codes/{e.code}?lang={lang}",
    )


@dataclass(frozen=True, slots=True)
class IndexRow:
    code: str
    title: str
    summary: str
    standard: bool
    deprecated: bool
    forms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    heading: str
    intro: str
    subgroups: tuple[tuple[str, str, tuple[IndexRow, ...]], ...]  # (id, heading, rows)


def _row(key: str, lang: str) -> IndexRow:
    info = reg.registry()[key]
    p = reg.prose(lang)[key]
    return IndexRow(key, p.title, p.summary, info.standard, info.deprecated, class_forms(key))


@functools.cache
def _groups(lang: str) -> tuple[tuple[Group, ...], tuple[Group, ...]]:
    """(basic classes with categories, enhanced subjects), for the index."""
    ui = reg.ui(lang)
    prose = reg.prose(lang)
    basic = []
    for d1 in "2345":
        subgroups = []
        for d2 in "0123456789":
            rows = tuple(_row(k, lang) for k in code_keys() if k.isdigit() and k[:2] == d1 + d2)
            if rows:
                subgroups.append((f"{d1}{d2}x", f"{d1}{d2}x · {ui['basic_category'][d2]}", rows))
        basic.append(Group(f"{d1}xx", f"{d1}xx {ui['basic_class'][d1]}",
                           ui["basic_class_meaning"][d1], tuple(subgroups)))
    enhanced = []
    for s in range(8):
        skey = f"X.{s}.X"
        if skey not in prose:
            continue
        rows = tuple(_row(k, lang) for k in code_keys() if k.startswith(f"X.{s}."))
        enhanced.append(Group(skey, f"{skey} {prose[skey].title}", prose[skey].summary,
                              (("", "", rows),)))
    return tuple(basic), tuple(enhanced)


@functools.lru_cache(maxsize=256)
def _index_page(q: str, lang: str) -> bytes:
    basic, enhanced = _groups(lang)
    prose = reg.prose(lang)
    classes = [(k, prose[k].title, prose[k].summary) for k in ("2.X.X", "4.X.X", "5.X.X")
               if k in prose]
    results = [_row(k, lang) for k in search(q)] if q else None
    params = (("q", q),) if q else ()
    explain_href = f"/explain?{urlencode({'q': q})}" if q and holds_reply(q) else None
    return _page(
        "public/codes.html", chrome_at(lang, "/codes", params),
        q=q, results=results, basic=basic, enhanced=enhanced, classes=classes,
        js_url=JS_URL, explain_href=explain_href,
    )


@functools.cache
def _datalist(lang: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, reg.prose(lang)[k].title) for k in code_keys())


@functools.lru_cache(maxsize=1024)
def _compare_page(a: str, b: str, lang: str) -> bytes:
    c = comparison(a, b, lang)
    doc = comparison_doc(c)
    sections = _split_sections(list(doc.blocks[1:]))
    return _page(
        "public/compare.html", chrome_at(lang, f"/compare/{c.a.code}/{c.b.code}", ()),
        c=c, title=c.headline, intro=_view(sections[0], lang),
        sides=[(e.code, _view(s, lang)) for e, s in zip((c.a, c.b), sections[1:3], strict=False)],
        rest=[_view(s, lang) for s in sections[3:]],
        form={"a": c.a.code, "b": c.b.code}, errors={}, suggestions={}, message="",
        datalist=_datalist(lang),
        json_url=f"/api/compare/{c.a.code}/{c.b.code}?lang={lang}",
    )


def _form_page(request: Request, lang: str, form: dict[str, str], errors: dict[str, str],
               status: int, message: str = "") -> HTMLResponse:
    params = tuple((k, v) for k, v in request.query_params.multi_items() if k != "lang")
    body = _page(
        "public/compare.html", chrome_at(lang, request.url.path, params),
        c=None, title=web_text(lang)["compare_title"], form=form, errors=errors, message=message,
        datalist=_datalist(lang),
        suggestions={k: suggest(v) for k, v in form.items() if k in errors and v.strip()},
    )
    return _html(request, body, lang, status)


def _not_found_page(request: Request, lang: str, exc: CodeNotFound) -> HTMLResponse:
    body = _page(
        "public/not_found.html", chrome_at(lang, request.url.path, ()),
        code=exc.code, message=exc.message, suggestions=exc.suggestions,
        unregistered=exc.unregistered,
    )
    return _html(request, body, lang, 404)


# --- pages ----------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return RedirectResponse("/codes", status_code=307)


async def codes_index(request: Request) -> Response:
    lang = pick_lang(request)
    q = normalize_query(request.query_params.get("q", ""))
    return _html(request, _index_page(q, lang), lang)


def _canonical(code: str) -> str | None:
    """The form a code's page lives at (`x.01.10` -> `X.1.10`), or None if malformed."""
    try:
        return explanation(_tidy(code), "en").code
    except ReplyError:
        return None


async def code_page(request: Request) -> Response:
    lang = pick_lang(request)
    code: str = request.path_params["code"]
    info = reg.registry().get(code)
    if info is not None and info.kind in ("class", "subject"):
        return _redirect(request, f"/codes#{code}", 302)
    canonical = _canonical(code)
    if canonical is not None and canonical != code:
        return _redirect(request, f"/codes/{canonical}", 301, keep_query=True)
    try:
        e = lookup(code, lang)
    except CodeNotFound as exc:
        return _not_found_page(request, lang, exc)
    return _html(request, _code_page(e.code, lang), lang)


def _redirect(request: Request, target: str, status: int,
              keep_query: bool = False) -> RedirectResponse:
    if keep_query and request.url.query:
        target += f"?{request.url.query}"
    response = RedirectResponse(target, status_code=status)
    remember_lang(request, response)
    return response


async def compare_form(request: Request) -> Response:
    lang = pick_lang(request)
    form = {k: request.query_params.get(k, "")[:MAX_QUERY] for k in ("a", "b")}
    errors: dict[str, str] = {}
    if not form["a"].strip() and not form["b"].strip():
        # The bare form, or the form sent empty (then say what is missing).
        if "a" not in request.query_params and "b" not in request.query_params:
            return _form_page(request, lang, form, errors, 200)
        errors = dict.fromkeys(form, web_text(lang)["empty_code"])
        return _form_page(request, lang, form, errors, 400, web_text(lang)["fix_codes"])
    shown: dict[str, str] = {}
    for k, v in form.items():
        if not v.strip():
            errors[k] = web_text(lang)["empty_code"]
            continue
        try:
            shown[k] = _check_code(v, lang)
        except ReplyError as exc:
            errors[k] = exc.text(lang)
    if errors:
        return _form_page(request, lang, form, errors, 400, web_text(lang)["fix_codes"])
    target = f"/compare/{shown['a']}/{shown['b']}"
    if request.query_params.get("lang") in reg.languages():
        target += f"?lang={lang}"
    return _redirect(request, target, 303)


async def compare_page(request: Request) -> Response:
    lang = pick_lang(request)
    a: str = request.path_params["a"]
    b: str = request.path_params["b"]
    errors: dict[str, str] = {}
    shown: dict[str, str] = {}
    for k, v in (("a", a), ("b", b)):
        try:
            shown[k] = _check_code(v, lang)
        except ReplyError as exc:
            errors[k] = exc.text(lang)
    if errors:
        return _form_page(request, lang, {"a": a, "b": b}, errors, 404,
                          web_text(lang)["fix_codes"])
    if (shown["a"], shown["b"]) != (a, b):
        return _redirect(request, f"/compare/{shown['a']}/{shown['b']}", 301, keep_query=True)
    return _html(request, _compare_page(a, b, lang), lang)


def routes() -> list[BaseRoute]:
    return [
        Route("/", home, name="home"),
        Route("/codes", codes_index, name="codes"),
        Route("/codes/{code}", code_page, name="code"),
        Route("/compare", compare_form, name="compare_form"),
        Route("/compare/{a}/{b}", compare_page, name="compare"),
    ]


# --- error pages ----------------------------------------------------------------------


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    if _wants_json(request):
        return JSONResponse({"error": str(exc.detail), "suggestions": []},
                            status_code=exc.status_code, headers=headers)
    lang = pick_lang(request)
    t = web_text(lang)
    if exc.status_code == 404:
        heading, text = t["page_not_found"], t["page_not_found_text"].format(path=request.url.path)
    else:
        heading, text = f"{exc.status_code}", str(exc.detail)
    body = _page("public/error.html", chrome_at(lang, request.url.path, ()),
                 heading=heading, text=text)
    return HTMLResponse(body, status_code=exc.status_code,
                        headers={**_headers(lang), **headers})


async def _server_error(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return _error_json("The server could not answer this request.", 500)
    lang = pick_lang(request)
    t = web_text(lang)
    body = _page("public/error.html", chrome_at(lang, request.url.path, ()),
                 heading=t["error_title"], text=t["error_text"])
    return HTMLResponse(body, status_code=500, headers=_headers(lang))


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """HTTP errors as pages (or JSON under /api/)."""
    return {HTTPException: _http_exception, 500: _server_error}
