"""The public reply-code reference: the code index and search, one page per code, two
codes compared, and the same as JSON under `/api/`.

Everything shown comes from `mailgate.codes`: the page of a code is the layout that
`mailgate explain` prints (`render.explanation_doc`), the compare page the layout of
`mailgate compare` (`render.comparison_doc`), and the JSON bodies are exactly
`render(..., "json")`, so web, CLI and API cannot disagree.

Speed: the knowledge base is loaded once per process, explanations and comparisons
are cached per (code, lang), and whole pages are cached as bytes per (page, lang):
none of them depends on anything but its URL and the language, so a repeated request
costs a dictionary look-up, not a template render. Every cache is a bounded LRU, sized
so that a client walking through every possible URL costs tens of MB at most.

Language: which one a request gets, and the page chrome in it, are `web/lang.py`,
shared with the admin pages.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ExceptionHandler

from mailgate.codes import registry as reg
from mailgate.codes.compare import Comparison, compare
from mailgate.codes.explain import Explanation, explain_code
from mailgate.codes.render import Block, Doc, comparison_doc, explanation_doc, render
from mailgate.codes.reply import ReplyError
from mailgate.web.context import static_version, templates
from mailgate.web.lang import Chrome, chrome_at, html_lang, pick_lang, remember_lang, web_text

__all__ = [
    "OPENAPI_PATHS",
    "exception_handlers",
    "routes",
    "search",
    "suggest",
]

MAX_QUERY = 200  # characters of a search kept; longer queries are cut, not refused
SUGGESTIONS = 6


JS_URL = f"/static/search.js?v={static_version('search.js')}"


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
    return tuple(k for _, _, k in sorted(scored))


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
        raise CodeNotFound(
            s, f"{s} names a whole {info.kind} of enhanced status codes, not one code; "
               f"the codes of that {info.kind} are listed at /codes#{s}.",
            near[:SUGGESTIONS])
    try:
        e = explanation(s, lang)
    except ReplyError as exc:
        raise CodeNotFound(s, str(exc), suggest(s)) from None
    if not e.registered:
        kind, parts = (("reply code", "class and category") if e.kind == "basic"
                       else ("enhanced status code", "class and subject"))
        raise CodeNotFound(
            s, f"{e.code} is a well-formed {kind}, but no RFC or registry defines it; "
               f"it can only be read from its {parts}.",
            suggest(e.code), unregistered=e)
    return e


def _error_json(message: str, status: int, suggestions: Iterable[str] = ()) -> JSONResponse:
    return JSONResponse({"error": message, "suggestions": list(suggestions)}, status_code=status)


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
    return _page(
        "public/codes.html", chrome_at(lang, "/codes", params),
        q=q, results=results, basic=basic, enhanced=enhanced, classes=classes,
        js_url=JS_URL,
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


def _tidy(code: str) -> str:
    """Forgive what people type: spaces around, a lower-case x (`x.1.10`)."""
    s = code.strip()
    return "X" + s[1:] if re.fullmatch(r"x\.[0-9]+\.[0-9]+", s) else s


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


def _check_code(code: str, lang: str) -> str:
    """The code as shown if it can be compared (well-formed); ReplyError otherwise."""
    s = _tidy(code)
    info = reg.registry().get(s)
    if info is not None and info.kind in ("class", "subject"):
        raise ReplyError(
            f"{s} names a whole {info.kind} of enhanced status codes, not one "
            "code: give a code such as 5.1.10."
        )
    return explanation(s, lang).code


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
            errors[k] = str(exc)
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
            errors[k] = str(exc)
    if errors:
        return _form_page(request, lang, {"a": a, "b": b}, errors, 404,
                          web_text(lang)["fix_codes"])
    if (shown["a"], shown["b"]) != (a, b):
        return _redirect(request, f"/compare/{shown['a']}/{shown['b']}", 301, keep_query=True)
    return _html(request, _compare_page(a, b, lang), lang)


# --- JSON API -------------------------------------------------------------------------


def _api_lang(request: Request) -> str | JSONResponse:
    q = request.query_params.get("lang")
    if q is not None and q not in reg.languages():
        return _error_json(f"lang must be one of {', '.join(reg.languages())}, not {q!r}.", 400)
    return pick_lang(request)


def _json(body: bytes, lang: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json",
                    headers=_headers(lang))


@functools.lru_cache(maxsize=64)
def _api_list_body(q: str, lang: str) -> bytes:
    items = _code_list_items(lang)
    index = {k: i for i, k in enumerate(code_keys())}
    chosen = [items[index[k]] for k in search(q)] if q else list(items)
    return (json.dumps(chosen, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


async def api_codes(request: Request) -> Response:
    lang = _api_lang(request)
    if isinstance(lang, Response):
        return lang
    q = normalize_query(request.query_params.get("q", ""))
    return _json(_api_list_body(q, lang), lang)


async def api_code(request: Request) -> Response:
    lang = _api_lang(request)
    if isinstance(lang, Response):
        return lang
    try:
        e = lookup(request.path_params["code"], lang)
    except CodeNotFound as exc:
        return _error_json(exc.message, 404, exc.suggestions)
    return _json(_json_body("code", e.code, "", lang), lang)


async def api_compare(request: Request) -> Response:
    lang = _api_lang(request)
    if isinstance(lang, Response):
        return lang
    shown = []
    for code in (request.path_params["a"], request.path_params["b"]):
        try:
            shown.append(_check_code(code, lang))
        except ReplyError as exc:
            return _error_json(str(exc), 404, suggest(code))
    return _json(_json_body("comparison", shown[0], shown[1], lang), lang)


def routes() -> list[BaseRoute]:
    return [
        Route("/", home, name="home"),
        Route("/codes", codes_index, name="codes"),
        Route("/codes/{code}", code_page, name="code"),
        Route("/compare", compare_form, name="compare_form"),
        Route("/compare/{a}/{b}", compare_page, name="compare"),
        Route("/api/codes", api_codes, name="api_codes"),
        Route("/api/codes/{code}", api_code, name="api_code"),
        Route("/api/compare/{a}/{b}", api_compare, name="api_compare"),
    ]


# --- OpenAPI --------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_LANG_PARAM: dict[str, Any] = {
    "name": "lang", "in": "query", "required": False,
    "description": "Language of the prose. Without it: the `mailgate_lang` cookie, then "
                   "Accept-Language (zh* gives zh), then en.",
    "schema": {"type": "string", "enum": list(reg.languages())},
}
_BAD_LANG = _json_response(f"`lang` is not one of {', '.join(reg.languages())}.",
                           _ref("Error"))


def _code_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}, "example": "556"}


OPENAPI_PATHS: dict[str, Any] = {
    "/api/codes": {
        "get": {
            "operationId": "listCodes",
            "tags": ["codes"],
            "summary": "Every registered basic and enhanced code, or those matching a search",
            "description": "Public, no token. Items are the code objects of "
                           "`mailgate explain --format json`; enhanced codes in registry "
                           "form (X.1.10). With `q`, best matches first.",
            "parameters": [
                {"name": "q", "in": "query", "required": False,
                 "description": "Numbers (556, 5.1.10) or words in English or Chinese; "
                                "every word must match.",
                 "schema": {"type": "string"}},
                _LANG_PARAM,
            ],
            "responses": {
                "200": _json_response("The codes.", {"type": "array", "items": _ref("Code")}),
                "400": _BAD_LANG,
            },
        }
    },
    "/api/codes/{code}": {
        "get": {
            "operationId": "getCode",
            "tags": ["codes"],
            "summary": "One code explained",
            "description": "Public, no token. The body of `mailgate explain CODE --format "
                           "json`. A malformed or unregistered code is 404 with near codes.",
            "parameters": [
                _code_param("code", "A basic code (556), an enhanced code (5.1.10) or its "
                                    "registry form (X.1.10)."),
                _LANG_PARAM,
            ],
            "responses": {
                "200": _json_response("The explanation.", _ref("Code")),
                "400": _BAD_LANG,
                "404": _json_response("Malformed or unregistered code; `suggestions` "
                                      "lists near codes.", _ref("Error")),
            },
        }
    },
    "/api/compare/{a}/{b}": {
        "get": {
            "operationId": "compareCodes",
            "tags": ["codes"],
            "summary": "Two codes compared",
            "description": "Public, no token. The body of `mailgate compare A B --format "
                           "json`. Any two well-formed codes compare.",
            "parameters": [
                _code_param("a", "The first code."),
                _code_param("b", "The second code."),
                _LANG_PARAM,
            ],
            "responses": {
                "200": _json_response("The comparison.", _ref("Comparison")),
                "400": _BAD_LANG,
                "404": _json_response("A malformed code; `suggestions` lists near codes.",
                                      _ref("Error")),
            },
        }
    },
}


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
