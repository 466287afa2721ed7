"""The reference as JSON under `/api/`: the bodies are exactly `render(..., "json")`,
the output of `mailgate explain/compare --format json`, cached as bytes per (URL, lang).
`OPENAPI_PATHS` describes these endpoints; `web/openapi.py` reads it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mailgate.codes import registry as reg
from mailgate.codes.reply import ReplyError
from mailgate.web.lang import pick_lang
from mailgate.web.public.knowledge import (
    CodeNotFound,
    _check_code,
    _code_list_items,
    _error_json,
    _json_body,
    code_keys,
    lookup,
    normalize_query,
    search,
    suggest,
)
from mailgate.web.public.pages import _headers

__all__ = ["OPENAPI_PATHS", "routes"]

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
            return _error_json(exc.text(lang), 404, suggest(code))
    return _json(_json_body("comparison", shown[0], shown[1], lang), lang)


def routes() -> list[BaseRoute]:
    return [
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
