"""The queue's JSON API under `/api/`, and its description for `/api/openapi.json`.

It accepts `Authorization: Bearer <token>` (tokens from `mailgate admin token`, stored
hashed) or the logged-in session, whose writes need the `X-CSRF-Token` header. Errors
are JSON. `OPENAPI_PATHS` / `OPENAPI_COMPONENTS` describe it; `web/openapi.py` reads
them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mailgate.queue import NotFound, QueuedMessage, QueueError, RecipientState
from mailgate.queue.report import message_json
from mailgate.web.admin.pages import (
    _ID_RE,
    DOMAIN_PATTERN,
    ID_PATTERN,
    MAX_AGE_HOURS,
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    SENDER_PATTERN,
    _act,
    _headers,
    _load_page,
    _stats,
    parse_filters,
)
from mailgate.web.admin.render import Endpoint
from mailgate.web.admin.session import _csrf_error, _ctx, _logged_in, _state

__all__ = ["OPENAPI_COMPONENTS", "OPENAPI_PATHS", "routes"]

# ---------------------------------------------------------------------- JSON API


def _json_error(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": text, "status": status}, status_code=status,
                        headers=dict(headers or {}))


async def _no_store(response: Awaitable[Response]) -> Response:
    r = await response
    r.headers.setdefault("Cache-Control", "no-store")
    return r


def _api(fn: Endpoint) -> Endpoint:
    """An API endpoint: a bearer token, or a logged-in session (with CSRF on writes)."""

    async def endpoint(request: Request) -> Response:
        return await _no_store(checked(request))

    async def checked(request: Request) -> Response:
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or _state(request).tokens.verify(token.strip()) is None:
                return _json_error(401, "invalid token: create one with `mailgate admin token`",
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        elif _logged_in(request):
            if request.method not in ("GET", "HEAD"):
                problem = _csrf_error(request, request.headers.get("x-csrf-token"))
                if problem is not None:
                    return _json_error(403, problem)
        else:
            return _json_error(
                401, "authentication required: send Authorization: Bearer <token> "
                "(from `mailgate admin token`), or log in at /admin/login",
                {"WWW-Authenticate": "Bearer"})
        if _ctx(request).queue is None:
            return _json_error(503, "no queue: the web app runs without a server")
        try:
            return await fn(request)
        except NotFound as exc:
            return _json_error(404, str(exc))
        except QueueError as exc:
            return _json_error(503, str(exc))

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def _message_id(request: Request) -> str:
    message_id: str = request.path_params["id"]
    if not _ID_RE.match(message_id):
        raise NotFound(f"{message_id!r} is not a queue id")
    return message_id


@_api
async def api_queue(request: Request) -> Response:
    ctx = _ctx(request)
    assert ctx.queue is not None
    f, errors = parse_filters(request.query_params, strict=True)
    if errors:
        return _json_error(400, " ".join(errors))
    for cursor in (f.before, f.after):
        if cursor is not None:
            await ctx.run(ctx.queue.show, cursor)  # NotFound -> 404 names the cursor
    page = await _load_page(ctx, f)
    counts = await ctx.run(ctx.queue.counts)
    return JSONResponse({
        "filters": f.as_json(),
        "counts": counts,
        "messages": [message_json(m) for m in page.messages],
        "newer": page.newer,
        "older": page.older,
    })


@_api
async def api_message(request: Request) -> Response:
    ctx = _ctx(request)
    assert ctx.queue is not None
    msg: QueuedMessage = await ctx.run(ctx.queue.show, _message_id(request), True)
    data = message_json(msg)
    data["headers"] = [[k, v] for k, v in _headers(msg.content or b"")]
    return JSONResponse(data)


@_api
async def api_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ("retry", "hold", "release"):
        return _json_error(404, f"no action {action!r}: use retry, hold or release "
                           "(DELETE /api/queue/{id} deletes)")
    message_id = _message_id(request)
    n = await _act(_ctx(request), action, message_id)
    return JSONResponse({"id": message_id, "action": action, "recipients": n})


@_api
async def api_delete(request: Request) -> Response:
    message_id = _message_id(request)
    await _act(_ctx(request), "delete", message_id)
    return JSONResponse({"id": message_id, "action": "delete", "recipients": None})


async def api_message_or_delete(request: Request) -> Response:
    # One route for both methods, so a 405 lists them all in its Allow header.
    if request.method == "DELETE":
        return await api_delete(request)
    return await api_message(request)


@_api
async def api_stats(request: Request) -> Response:
    stats = await _stats(_ctx(request))
    del stats["_buckets"]
    return JSONResponse(stats)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/queue", api_queue, methods=["GET"]),
        Route("/api/queue/{id}", api_message_or_delete, methods=["GET", "DELETE"]),
        Route("/api/queue/{id}/{action}", api_action, methods=["POST"]),
        Route("/api/stats", api_stats, methods=["GET"]),
    ]


# ---------------------------------------------------------------------- OpenAPI

_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
_ERR = {"description": "Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/AdminError"}}}}
_ERRORS = {
    "401": {**_ERR, "description": "No valid token or session"},
    "503": {**_ERR, "description": "No queue, or the queue failed"},
}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "description": "Queue id",
             "schema": {"type": "string", "pattern": ID_PATTERN}}
_NULLABLE_STR = {"type": ["string", "null"]}
_REPLY = {"type": ["object", "null"], "properties": {
    "code": {"type": "integer"}, "enhanced": _NULLABLE_STR, "text": _NULLABLE_STR}}

OPENAPI_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A token from `mailgate admin token`."},
        "session": {"type": "apiKey", "in": "cookie", "name": "mailgate_session",
                    "description": "The admin's login session (same-origin use; writes "
                                   "need the X-CSRF-Token header)."},
    },
    "schemas": {
        "AdminError": {"type": "object", "required": ["error", "status"], "properties": {
            "error": {"type": "string"}, "status": {"type": "integer"}}},
        "QueueRecipient": {"type": "object", "required": ["id", "address", "state"],
                           "properties": {
                               "id": {"type": "integer"}, "address": {"type": "string"},
                               "state": {"type": "string",
                                         "enum": [s.value for s in RecipientState]},
                               "attempts": {"type": "integer"},
                               "next_attempt": {"type": ["number", "null"]},
                               "delay_notified": {
                                   "type": "boolean",
                                   "description": "the sender got a delay notice about "
                                                  "this recipient"},
                               "held_reason": {
                                   **_NULLABLE_STR,
                                   "description": "why the recipient is held, when "
                                                  "mailgate held it (a message that broke "
                                                  "delivery) or the hold said why"},
                               "last_reply": _REPLY}},
        "QueueAttempt": {"type": "object", "properties": {
            "recipient_id": {"type": "integer"}, "at": {"type": "number"},
            "host": {"type": "string"}, "code": {"type": "integer"},
            "enhanced": _NULLABLE_STR, "text": {"type": "string"},
            "outcome": {"type": "string", "enum": ["delivered", "deferred", "failed"]},
            "remote": {"type": "boolean"}, "tls": _NULLABLE_STR}},
        "QueueMessage": {"type": "object",
                         "required": ["id", "sender", "received_at", "size", "recipients"],
                         "properties": {
                             "id": {"type": "string"}, "sender": {"type": "string"},
                             "received_at": {"type": "number"}, "size": {"type": "integer"},
                             "client": {"type": "object"}, "dsn": {"type": "object"},
                             "smtputf8": {"type": "boolean"}, "body_8bit": {"type": "boolean"},
                             "finished_at": {
                                 "type": ["number", "null"],
                                 "description": "when the last recipient became final (its "
                                                "content is deleted then; the record is "
                                                "kept for [queue] keep_records); null "
                                                "while live"},
                             "recipients": {"type": "array", "items": {
                                 "$ref": "#/components/schemas/QueueRecipient"}},
                             "attempts": {"type": "array", "items": {
                                 "$ref": "#/components/schemas/QueueAttempt"}},
                             "headers": {"type": "array", "items": {
                                 "type": "array", "items": {"type": "string"},
                                 "minItems": 2, "maxItems": 2}}}},
        "QueuePage": {"type": "object", "required": ["counts", "messages"], "properties": {
            "filters": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "messages": {"type": "array",
                         "items": {"$ref": "#/components/schemas/QueueMessage"}},
            "newer": {**_NULLABLE_STR, "description": "`after` for the page of newer ones"},
            "older": {**_NULLABLE_STR, "description": "`before` for the page of older ones"},
        }},
        "QueueActionResult": {"type": "object", "required": ["id", "action"], "properties": {
            "id": {"type": "string"},
            "action": {"type": "string", "enum": ["retry", "hold", "release", "delete"]},
            "recipients": {"type": ["integer", "null"],
                           "description": "How many recipients the action changed"}}},
        "QueueStats": {"type": "object", "properties": {
            "now": {"type": "number"},
            "last_hour": {"type": "object", "additionalProperties": {"type": "integer"}},
            "last_day": {"type": "object", "additionalProperties": {"type": "integer"}},
            "refused": {"type": ["integer", "null"],
                        "description": "Refused by the server since it started"},
            "queue": {"type": "object", "additionalProperties": {"type": "integer"}},
            "server": {"type": "object"},
            "started": {"type": "number"},
            "hourly": {"type": "array", "items": {"type": "object"}}}},
    },
}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _filter_params() -> list[dict[str, Any]]:
    def q(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": text,
                "schema": schema}

    return [
        q("state", {"type": "string", "enum": [s.value for s in RecipientState]},
          "Only messages with a recipient in this state"),
        q("domain", {"type": "string", "pattern": DOMAIN_PATTERN},
          "Only messages with a recipient in this domain"),
        q("sender", {"type": "string", "pattern": SENDER_PATTERN},
          "Only messages from this sender (<> for the null sender)"),
        q("older_than", {"type": "number", "minimum": 0, "maximum": MAX_AGE_HOURS},
          "Only messages queued more than this many hours ago"),
        q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                    "default": PAGE_SIZE}, "Page size"),
        q("before", {"type": "string", "pattern": ID_PATTERN},
          "Page of messages older than this one (`older` of a page)"),
        q("after", {"type": "string", "pattern": ID_PATTERN},
          "Page of messages newer than this one (`newer` of a page)"),
        q("all", {"type": "string", "enum": ["1", "true", "0", "false"]},
          "1 or true: finished messages too (delivered or bounced, kept for "
          "[queue] keep_records); by default only live ones"),
    ]


OPENAPI_PATHS: dict[str, Any] = {
    "/api/queue": {"get": {
        "tags": ["queue"], "summary": "List the queue, newest first (filters, keyset pages)",
        "operationId": "listQueue", "security": _SECURITY, "parameters": _filter_params(),
        "responses": {"200": _ok("A page of messages", "QueuePage"),
                      "400": {**_ERR, "description": "Bad filter"},
                      "404": {**_ERR, "description": "The cursor message is gone"},
                      **_ERRORS}}},
    "/api/queue/{id}": {
        "get": {"tags": ["queue"], "summary": "One message with headers and every attempt",
                "operationId": "showMessage", "security": _SECURITY,
                "parameters": [_ID_PARAM],
                "responses": {"200": _ok("The message", "QueueMessage"),
                              "404": {**_ERR, "description": "Not in the queue"},
                              **_ERRORS}},
        "delete": {"tags": ["queue"], "summary": "Delete a message (no bounce is sent)",
                   "operationId": "deleteMessage", "security": _SECURITY,
                   "parameters": [_ID_PARAM],
                   "responses": {"200": _ok("Deleted", "QueueActionResult"),
                                 "403": {**_ERR, "description": "CSRF check failed"},
                                 "404": {**_ERR, "description": "Not in the queue"},
                                 **_ERRORS}}},
    **{
        f"/api/queue/{{id}}/{action}": {"post": {
            "tags": ["queue"], "summary": summary, "operationId": f"{action}Message",
            "security": _SECURITY, "parameters": [_ID_PARAM],
            "responses": {"200": _ok("Done", "QueueActionResult"),
                          "403": {**_ERR, "description": "CSRF check failed"},
                          "404": {**_ERR, "description": "Not in the queue"},
                          **_ERRORS}}}
        for action, summary in (
            ("retry", "Make queued and deferred recipients due now"),
            ("hold", "Hold undelivered recipients"),
            ("release", "Release held recipients, due now"),
        )
    },
    "/api/stats": {"get": {
        "tags": ["queue"], "summary": "Accepted, delivered, deferred, bounced, refused; "
        "queue size by state; hourly activity of the last 24 hours",
        "operationId": "queueStats", "security": _SECURITY,
        "responses": {"200": _ok("Counts", "QueueStats"), **_ERRORS}}},
}
