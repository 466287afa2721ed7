"""The /explain page: paste a reply line, a log line or a bounce's Diagnostic-Code and
see what mailgate found where and what each part means, as `mailgate explain` prints
it (`codes.pasted`). Pages are cached as bytes per (text, lang).

A whole bounce goes in the second box, posted (it is too long for a URL): each failed
or delayed recipient explained as `mailgate explain --bounce` does (`codes.bounce`).
The body read is bounded (`MAX_WEB_BOUNCE` characters of text, a few times that in
bytes as the form encodes it); a longer one is refused with 413 before it is parsed.
Text in that box that is no mail message (a single reply line) is explained as the
first box does."""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailgate.codes.explain import Explanation, ReplyExplanation
from mailgate.codes.pasted import PasteExplanation, explain_text, paste_doc
from mailgate.codes.render import Block, Doc, explanation_doc
from mailgate.codes.reply import ReplyError
from mailgate.web.lang import chrome_at, pick_lang
from mailgate.web.public.pages import _html, _page, _view

__all__ = ["MAX_WEB_BOUNCE", "MAX_WEB_PASTE", "routes"]

MAX_WEB_PASTE = 4000  # characters of a paste the page reads (it travels in the URL)
MAX_WEB_BOUNCE = 256 * 1024  # characters of a posted bounce
_MAX_BODY = MAX_WEB_BOUNCE * 3 + 1024  # bytes of the form body: %XX triples at worst
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9\-]{0,60}:[ \t]", re.MULTILINE)


def _doc(x: Explanation | ReplyExplanation | PasteExplanation) -> Doc:
    return paste_doc(x) if isinstance(x, PasteExplanation) else explanation_doc(x)


def _under_h2(blocks: list[Block]) -> list[Block]:
    """The layout's headings one level down: the page's h1 is its own title."""
    return [Block(b.kind, b.text, min(6, b.level + 1), b.items, b.pairs)
            if b.kind == "heading" else b for b in blocks]


@functools.lru_cache(maxsize=512)
def _explain_page(q: str, lang: str) -> tuple[bytes, int]:
    result = error = None
    status = 200
    if q.strip():
        try:
            doc = _doc(explain_text(q, lang))
            result = (doc.title, _view(_under_h2(doc.blocks[1:]), lang))
        except ReplyError as exc:
            error = exc.text(lang)
            status = 400
    params = (("q", q),) if q else ()
    body = _page("public/explain.html", chrome_at(lang, "/explain", params),
                 q=q, result=result, error=error, max_chars=MAX_WEB_PASTE,
                 bounce="", bounce_error=None, max_bounce=MAX_WEB_BOUNCE)
    return body, status


def _is_message(text: str) -> bool:
    """Whether pasted text is a whole message: header fields, then a body."""
    head = text.lstrip()[:8192].replace("\r\n", "\n").split("\n\n", 1)[0]
    return len(_HEADER_LINE.findall(head)) >= 2


def _bounce_page(text: str, lang: str) -> tuple[bytes, int]:
    from mailgate.codes.bounce import BounceError, read_bounce
    from mailgate.codes.bounce.explained import bounce_doc
    from mailgate.codes.registry import words

    result = error = None
    status = 200
    try:
        if _is_message(text):
            doc = bounce_doc(read_bounce(text.encode("utf-8", "replace")), lang)
        else:
            doc = _doc(explain_text(text[:MAX_WEB_PASTE], lang))
        result = (doc.title, _view(_under_h2(doc.blocks[1:]), lang))
    except BounceError as exc:
        error = words(lang, "bounce").get(f"errors.{exc.key}", str(exc)).format(**exc.values)
        status = 400
    except ReplyError as exc:
        error = str(exc)
        status = 400
    body = _page("public/explain.html", chrome_at(lang, "/explain", ()), q="", result=result,
                 error=None, max_chars=MAX_WEB_PASTE, bounce=text, bounce_error=error,
                 max_bounce=MAX_WEB_BOUNCE)
    return body, status


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None when it is longer than `_MAX_BODY` (not read further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        return None
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > _MAX_BODY:
            return None
    return bytes(out)


async def explain_post(request: Request) -> Response:
    lang = pick_lang(request)
    body = await _read_body(request)
    if body is None:
        from mailgate.codes.registry import words

        message = words(lang, "web")["bounce_too_large"].format(limit=MAX_WEB_BOUNCE)
        page = _page("public/explain.html", chrome_at(lang, "/explain", ()), q="",
                     result=None, error=None, max_chars=MAX_WEB_PASTE, bounce="",
                     bounce_error=message, max_bounce=MAX_WEB_BOUNCE)
        return _html(request, page, lang, 413)
    try:
        fields = parse_qs(body.decode("ascii", "replace"), max_num_fields=8)
    except ValueError:  # more fields than the form has
        fields = {}
    text = (fields.get("bounce") or [""])[0][:MAX_WEB_BOUNCE]
    if not text.strip():
        body_bytes, status = _explain_page("", lang)
        return _html(request, body_bytes, lang, status)
    page, status = _bounce_page(text, lang)
    return _html(request, page, lang, status)


async def explain_page(request: Request) -> Response:
    lang = pick_lang(request)
    q = request.query_params.get("q", "")[:MAX_WEB_PASTE]
    body, status = _explain_page(q, lang)
    return _html(request, body, lang, status)


def routes() -> list[BaseRoute]:
    return [Route("/explain", explain_page, name="explain"),
            Route("/explain", explain_post, methods=["POST"], name="explain_post")]
