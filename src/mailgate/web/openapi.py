"""The OpenAPI 3.1 document of the JSON API, served at `/api/openapi.json`.

Each part of the web app documents its own endpoints next to their code:
`OPENAPI_PATHS` of `public/api.py` (the reply-code reference) and of `admin/api.py`
(the queue, behind a token), plus the components admin adds in its `OPENAPI_COMPONENTS`
(its schemas and security schemes). The code schemas here are those of docs/json.md
(`mailgate.codes/1`), which the API shares with `mailgate explain/compare --format json`.
"""

from __future__ import annotations

import functools
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailgate.codes import registry as reg
from mailgate.web.admin import api as admin_api
from mailgate.web.public import api as public_api

__all__ = ["SCHEMAS", "document", "routes"]

_STR_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}}

# A code object as docs/json.md describes it; inside a comparison it has no
# `schema`/`type` of its own. Fields are only ever added within a schema version, so
# clients must accept unknown ones.
_CODE_BODY: dict[str, Any] = {
    "type": "object",
    "description": "One code explained, in one language (docs/json.md).",
    "required": [
        "code", "key", "kind", "lang", "registered", "standard", "class", "class_name",
        "class_meaning", "outcome", "subject", "subject_meaning", "title", "summary",
        "description", "when", "fix", "reference_text", "rfcs", "related", "associated",
        "see", "phases", "closes_connection", "deprecated", "notes",
    ],
    "properties": {
        "code": {"type": "string", "description": "As shown: 556, 5.1.10, X.1.10.",
                 "examples": ["556"]},
        "key": {"type": "string", "description": "Registry key: 556, X.1.10."},
        "kind": {"type": "string", "enum": ["basic", "enhanced"]},
        "lang": {"type": "string", "enum": list(reg.languages())},
        "registered": {"type": "boolean"},
        "standard": {"type": "boolean"},
        "class": {"type": ["integer", "null"],
                  "description": "First digit / enhanced class; null for an X.Y.Z key."},
        "class_name": {"type": "string"},
        "class_meaning": {"type": "string"},
        "outcome": {
            "oneOf": [
                {"type": "string",
                 "enum": ["success", "intermediate", "transient", "permanent"]},
                {"type": "null"},
            ],
        },
        "subject": {"type": "string"},
        "subject_meaning": {"type": "string"},
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "description": {"type": "string"},
        "when": {"type": "string"},
        "fix": {"type": "string"},
        "reference_text": {"type": "string"},
        "rfcs": {**_STR_LIST, "description": "Such as \"RFC7504 §4\"."},
        "related": {**_STR_LIST, "description": "Codes in key form."},
        "associated": _STR_LIST,
        "see": _STR_LIST,
        "phases": _STR_LIST,
        "closes_connection": {"type": "boolean"},
        "deprecated": {"type": "boolean"},
        "notes": _STR_LIST,
    },
}

SCHEMAS: dict[str, Any] = {
    "CodeBody": _CODE_BODY,
    "Code": {
        "description": "A code, as `mailgate explain CODE --format json` prints it.",
        "allOf": [
            {"$ref": "#/components/schemas/CodeBody"},
            {
                "type": "object",
                "required": ["schema", "type"],
                "properties": {
                    "schema": {"const": "mailgate.codes/1"},
                    "type": {"const": "code"},
                },
            },
        ],
    },
    "Comparison": {
        "type": "object",
        "description": "Two codes, as `mailgate compare A B --format json` prints them.",
        "required": ["schema", "type", "lang", "headline", "summary", "a", "b",
                     "differences", "when_to_use"],
        "properties": {
            "schema": {"const": "mailgate.codes/1"},
            "type": {"const": "comparison"},
            "lang": {"type": "string", "enum": list(reg.languages())},
            "headline": {"type": "string"},
            "summary": {**_STR_LIST, "minItems": 2, "maxItems": 2},
            "a": {"$ref": "#/components/schemas/CodeBody"},
            "b": {"$ref": "#/components/schemas/CodeBody"},
            "differences": _STR_LIST,
            "when_to_use": {**_STR_LIST, "minItems": 2, "maxItems": 2},
        },
    },
    "Error": {
        "type": "object",
        "description": "What was wrong, as a sentence, and codes near the one asked for.",
        "required": ["error", "suggestions"],
        "properties": {
            "error": {"type": "string"},
            "suggestions": _STR_LIST,
        },
    },
}

DESCRIPTION = """\
The JSON face of mailgate's web page.

**Reply-code reference** (`/api/codes`, `/api/compare`): public, no token needed. The
bodies are exactly those of `mailgate explain --format json` and `mailgate compare
--format json` (schema `mailgate.codes/1`), in English or Chinese (`?lang=en|zh`, else
the `mailgate_lang` cookie, else `Accept-Language`).

**Queue** (`/api/queue...`): needs an API token, sent as `Authorization: Bearer <token>`.

Errors are JSON objects `{"error": "...", "suggestions": [...]}`.
"""


def _version() -> str:
    try:
        return version("mailgate")
    except PackageNotFoundError:
        return "0"


@functools.cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document, built once per process."""
    paths: dict[str, Any] = {**public_api.OPENAPI_PATHS, **admin_api.OPENAPI_PATHS}
    components: dict[str, Any] = {"schemas": dict(SCHEMAS)}
    for section, entries in admin_api.OPENAPI_COMPONENTS.items():
        components.setdefault(section, {}).update(entries)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailgate",
            "version": _version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "This mailgate's web address"}],
        "tags": [
            {"name": "codes", "description": "The SMTP reply-code reference (public)."},
            {"name": "queue", "description": "The mail queue (API token)."},
        ],
        "paths": paths,
        "components": components,
    }


@functools.cache
def _body() -> bytes:
    return (json.dumps(document(), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


async def openapi_json(request: Request) -> Response:
    return Response(_body(), media_type="application/json")


def routes() -> list[BaseRoute]:
    return [Route("/api/openapi.json", openapi_json, name="openapi")]
