"""The /explain page: paste a reply line, a log line or a bounce's Diagnostic-Code and
see what mailgate found where and what each part means, as `mailgate explain` prints
it (`codes.pasted`). Pages are cached as bytes per (text, lang)."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailgate.codes.explain import Explanation, ReplyExplanation
from mailgate.codes.pasted import PasteExplanation, explain_text, paste_doc
from mailgate.codes.render import Block, Doc, explanation_doc
from mailgate.codes.reply import ReplyError
from mailgate.web.lang import chrome_at, pick_lang
from mailgate.web.public.pages import _html, _page, _view

__all__ = ["MAX_WEB_PASTE", "routes"]

MAX_WEB_PASTE = 4000  # characters of a paste the page reads (it travels in the URL)


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
                 q=q, result=result, error=error, max_chars=MAX_WEB_PASTE)
    return body, status


async def explain_page(request: Request) -> Response:
    lang = pick_lang(request)
    q = request.query_params.get("q", "")[:MAX_WEB_PASTE]
    body, status = _explain_page(q, lang)
    return _html(request, body, lang, status)


def routes() -> list[BaseRoute]:
    return [Route("/explain", explain_page, name="explain")]
