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

The parts, each importing only those above it in this list:

- `knowledge.py`: the knowledge base, cached; search, suggestions, look-up;
- `pages.py`: the HTML pages and the site's error pages;
- `api.py`: the JSON API and its OpenAPI description.

This module gathers their routes and the error handlers for `web/app.py`.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute
from starlette.types import ExceptionHandler

from mailgate.web.public import api, explain, pages

__all__ = ["exception_handlers", "routes"]


def routes() -> list[BaseRoute]:
    return [*pages.routes(), *explain.routes(), *api.routes()]


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """HTTP errors as pages (or JSON under /api/)."""
    return pages.exception_handlers()
