"""Which language a page is in, and the page chrome that goes with it.

Language: `?lang=` (any of the registry's languages, `codes.registry.languages()`) wins
and is remembered in a cookie; then the cookie; on a first visit `Accept-Language`. The
pages' own words are data too, in `codes/data/<lang>/web.toml`. Templates get the
page's chrome (language, navigation, the switch to the other languages) from
`chrome_for(request)`, which is registered as a context processor of the shared
`templates` when this module is imported, so every page extending `base.html`, public
or admin, gets it.

Both the public reference and the admin pages use this module; neither imports the other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from mailgate.codes import registry as reg
from mailgate.web.context import static_version, templates

__all__ = [
    "CSS_URL",
    "LANG_COOKIE",
    "Chrome",
    "chrome_at",
    "chrome_for",
    "html_lang",
    "pick_lang",
    "remember_lang",
    "web_text",
]

LANG_COOKIE = "mailgate_lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600


# The words of the web pages themselves are in codes/data/<lang>/web.toml (the knowledge
# base's own labels, in ui.toml, are used wherever one fits); the languages are the
# registry's.


def web_text(lang: str) -> Mapping[str, str]:
    """The words of the web pages in `lang` (codes/data/<lang>/web.toml)."""
    return reg.words(lang, "web")


def html_lang(lang: str) -> str:
    """The language tag of pages in `lang` (`zh-CN`), from its ui.toml."""
    return str(reg.ui(lang)["html_lang"])


CSS_URL = f"/static/style.css?v={static_version('style.css')}"


def _accept_language(header: str) -> str | None:
    """The preferred of the languages in an Accept-Language header, or None. A tag
    matches by its primary subtag: `zh-CN` and `zh-Hant` give zh, `en-GB` gives en."""
    best: tuple[float, int, str] | None = None
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = tag.split("-")[0]
        if lang not in reg.languages() or q <= 0:
            continue
        if best is None or (q, -i) > (best[0], best[1]):
            best = (q, -i, lang)
    return None if best is None else best[2]


def pick_lang(request: Request) -> str:
    """`?lang=`, then the cookie, then Accept-Language, then English."""
    q = request.query_params.get("lang")
    if q in reg.languages():
        return q
    c = request.cookies.get(LANG_COOKIE)
    if c in reg.languages():
        return c
    return _accept_language(request.headers.get("accept-language", "")) or "en"


def remember_lang(request: Request, response: Response) -> None:
    """Keep a `?lang=` choice in a cookie (admin pages may call this too)."""
    q = request.query_params.get("lang")
    if q in reg.languages() and request.cookies.get(LANG_COOKIE) != q:
        response.set_cookie(LANG_COOKIE, q, max_age=LANG_COOKIE_MAX_AGE, samesite="lax")


@dataclass(frozen=True, slots=True)
class Chrome:
    """What base.html needs: language, labels, navigation, the language switch."""

    lang: str
    html_lang: str
    t: Mapping[str, str]
    section: str  # codes | compare | explain | admin | ""
    switch: tuple[tuple[str, str, str, str | None], ...]  # (lang, html lang, name, href)
    css_url: str = CSS_URL


def _url(path: str, params: Iterable[tuple[str, str]]) -> str:
    qs = urlencode(list(params))
    return f"{path}?{qs}" if qs else path


def _section(path: str) -> str:
    for name in ("codes", "compare", "explain", "admin"):
        if path == f"/{name}" or path.startswith(f"/{name}/"):
            return name
    return ""


@functools.lru_cache(maxsize=4096)
def chrome_at(lang: str, path: str, params: tuple[tuple[str, str], ...]) -> Chrome:
    """The chrome of the page at `path?params` (params without `lang`)."""
    switch = tuple(
        (other, html_lang(other), str(reg.ui(other)["name"]),
         None if other == lang else _url(path, [*params, ("lang", other)]))
        for other in reg.languages()
    )
    return Chrome(lang=lang, html_lang=html_lang(lang), t=web_text(lang),
                  section=_section(path), switch=switch)


def chrome_for(request: Request) -> dict[str, Any]:
    """Context processor: `chrome` for any template extending base.html."""
    params = tuple((k, v) for k, v in request.query_params.multi_items() if k != "lang")
    return {"chrome": chrome_at(pick_lang(request), request.url.path, params)}


if chrome_for not in templates.context_processors:
    templates.context_processors.append(chrome_for)

