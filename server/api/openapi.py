"""The OpenAPI 3.1 document of the admin API, generated from the endpoint table.

Request bodies are `server/bodies.py`'s declarations turned into JSON Schema by
`body_schema`, errors are the problem documents of `server/api/problems.py`:
nothing here is written twice, so the document cannot drift from the routes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from server.api.endpoints import Endpoint
from server.api.problems import PROBLEM_TYPES
from server.bodies import NoBody, body_schema

__all__ = ["openapi_document"]

_PARAM = re.compile(r"\{(\w+)\}")
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_NEEDS_TEXT = {
    "public": "No credentials.",
    "read": "Any API key (read or admin scope).",
    "admin": "An API key with the admin scope.",
    "socket": "Only on the server's unix socket.",
}


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An RFC 7807 problem document (application/problem+json).",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {
                "type": "string",
                "enum": [f"urn:tailnetd:problem:{kind}" for kind in PROBLEM_TYPES],
            },
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "message": {
                "type": "string",
                "description": "the detail again, for Tailscale's clients",
            },
            "field": {"type": "string", "description": "the body field at fault"},
        },
    }


def _operation_id(ep: Endpoint) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", _PARAM.sub(r"by_\1", ep.path).lower()).strip("_")
    return f"{ep.method.lower()}_{words}"


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": _operation_id(ep),
        "summary": ep.summary,
        "description": _NEEDS_TEXT[ep.required],
        "tags": [ep.tag],
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(ep.path)
    ]
    for q in ep.query:
        schema: dict[str, Any] = {"type": "string"}
        if q.enum:
            schema["enum"] = list(q.enum)
        params.append(
            {"name": q.name, "in": "query", "required": False, "description": q.description,
             "schema": schema}
        )  # fmt: skip
    if params:
        op["parameters"] = params
    if ep.raw_body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {ep.raw_body: {"schema": {"type": "string"}}},
        }
    elif ep.body is not None and ep.body is not NoBody:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema(ep.body)}},
        }
    op["responses"] = {
        "200": {"description": "OK", "content": {ep.response: {"schema": {}}}},
        "default": {
            "description": "A problem",
            "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
        },
    }
    if ep.required == "public":
        op["security"] = []
    return op


def openapi_document(endpoints: Sequence[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Problem": _problem_schema()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "the API key as the user name, no password",
                },
            },  # fmt: skip
        },
        "security": [{"bearer": []}, {"basic": []}],
    }
