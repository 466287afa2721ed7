"""schemathesis against /api/openapi.json, on the ASGI app itself (no server, no socket):
the public code-reference endpoints answer what their schema says, and never 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case

from mailgate.config import Config, WebConfig
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth

# Starlette's test client (and schemathesis on the ASGI app) sends "Host: testserver".
TESTSERVER = WebConfig(allowed_hosts=("testserver",))

_DATA = tempfile.TemporaryDirectory(prefix="mailgate-schema-")
_DIR = Path(_DATA.name)
APP = create_app(WebContext(config=Config(data_dir=_DIR, web=TESTSERVER), queue=None,
                            auth=AdminAuth(_DIR)))

schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP).include(tag="codes")


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_public_api_conforms_to_its_schema(case: Case[Any]) -> None:
    case.call_and_validate()


def test_the_schema_documents_the_public_endpoints() -> None:
    labels = set()
    for result in schemathesis.openapi.from_asgi("/api/openapi.json", APP).get_all_operations():
        assert isinstance(result, Ok), result  # every operation could be read
        labels.add(result.ok().label)
    assert {"GET /api/codes", "GET /api/codes/{code}", "GET /api/compare/{a}/{b}"} <= labels
