"""One table of endpoints serves the routes and the OpenAPI document.

An `Endpoint` declares its method, path, what the caller needs (`read`,
`admin` or the unix `socket`), its body declaration from `server/bodies.py`
and its query parameters; `to_routes` wraps each handler so that every request
is authenticated, authorised and parsed before the handler runs, and every
error leaves as a problem document. `server/api/openapi.py` reads the same
table, so a route cannot exist undocumented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.api import audit
from server.api.auth import Caller, Needs, authenticate, require
from server.api.problems import Problem, as_problem, problem_response
from server.bodies import MAX_BODY, parse_body
from server.store.interface import Store

__all__ = ["Call", "Endpoint", "Param", "to_routes"]


@dataclass(frozen=True, slots=True)
class Call:
    request: Request
    caller: Caller
    body: Any  # the parsed declaration; raw bytes for a `raw_body` endpoint; None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    description: str
    enum: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    needs: Needs | None = None  # default: read for GET, admin otherwise
    body: type[Any] | None = None  # a declaration in server/bodies.py
    raw_body: str | None = None  # media type of a body taken as bytes (HuJSON)
    query: tuple[Param, ...] = ()
    response: str = "application/json"
    limit: int = MAX_BODY  # bytes of body read at most

    @property
    def required(self) -> Needs:
        if self.needs is not None:
            return self.needs
        return "read" if self.method == "GET" else "admin"


def to_routes(
    endpoints: Sequence[Endpoint], *, local: bool, store: Store, clock: Callable[[], datetime]
) -> list[Route]:
    def wrap(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller: Caller | None = None
            body: Any = None
            try:
                if ep.required == "public":
                    caller = Caller("read", local=local)
                else:
                    caller = authenticate(request, local=local, store=store, now=clock())
                    require(caller, ep.required)
                raw = await _read_body(request, ep.limit)
                if ep.raw_body is not None:
                    body = raw
                elif ep.body is not None:
                    body = parse_body(ep.body, raw)
                result = await ep.handler(Call(request, caller, body))
            except Exception as exc:
                problem = as_problem(exc)
                if problem is None:
                    _record(ep, request, caller, body, 500, "error", type(exc).__name__)
                    raise
                _record(ep, request, caller, body, problem.status, problem.kind, problem.detail)
                return problem_response(problem)
            response = result if isinstance(result, Response) else JSONResponse(result)
            status = response.status_code
            # A handler may answer a refusal itself (OAuth's token endpoint
            # speaks RFC 6749's error shape, not a problem): not an "ok".
            outcome = "ok" if status < 400 else "refused" if status in (401, 403) else "error"
            _record(ep, request, caller, body, status, outcome, None)
            return response

        return endpoint

    def _record(
        ep: Endpoint,
        request: Request,
        caller: Caller | None,
        body: Any,
        status: int,
        result: str,
        detail: str | None,
    ) -> None:
        audit.record(
            store, ep, now=clock(), caller=caller, path_params=request.path_params,
            body=body, status=status, result=result, detail=detail,
        )  # fmt: skip

    return [Route(ep.path, wrap(ep), methods=[ep.method]) for ep in endpoints]


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem("invalid-body", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem("invalid-body", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
