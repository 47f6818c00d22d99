"""RFC 7807 problem documents: every error the API answers, in one shape.

Handlers raise `Problem` (or let a store or body error rise); `problem_response`
turns it into `application/problem+json` once, at the edge of the route. Each
document has `type`, `title`, `status` and `detail`; a body that does not match
its declaration also names the `field`. The same text is repeated as `message`,
the one field Tailscale's own API clients (gitops-pusher, the Go client) read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from server.bodies import BodyError
from server.store.model import Conflict, InvalidName, KeyRejected, NotFound, StoreError

__all__ = ["PROBLEM_TYPES", "Problem", "as_problem", "problem_response"]

MEDIA_TYPE = "application/problem+json"
_BASE = "urn:tailnetd:problem:"

# slug -> (status, title): the documented kinds of problem, listed in the OpenAPI document.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-body": (400, "The request body does not match its declaration"),
    "invalid-request": (400, "The request cannot be carried out as asked"),
    "unauthorized": (401, "An API key is needed"),
    "forbidden": (403, "The API key may not do this"),
    "not-found": (404, "No such thing"),
    "conflict": (409, "The change clashes with existing state"),
    "managed-in-git": (405, "This is changed by a commit, not through the API"),
}


@dataclass(slots=True)
class Problem(Exception):
    kind: str  # a key of PROBLEM_TYPES
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_TYPES:
            raise ValueError(f"undocumented problem kind {self.kind!r}")  # a programming error

    @property
    def status(self) -> int:
        return PROBLEM_TYPES[self.kind][0]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": _BASE + self.kind,
            "title": PROBLEM_TYPES[self.kind][1],
            "status": self.status,
            "detail": self.detail,
            "message": self.detail,
            **self.extra,
        }


def as_problem(exc: Exception) -> Problem | None:
    """The problem an error raised by a handler means to the client, or None
    when it is not one the API knows (a bug: let it rise)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, BodyError):
        extra = {"field": exc.field} if exc.field is not None else {}
        return Problem("invalid-body", str(exc), extra)
    if isinstance(exc, KeyRejected | NotFound):
        return Problem("not-found", str(exc))
    if isinstance(exc, Conflict):
        return Problem("conflict", str(exc))
    if isinstance(exc, InvalidName | StoreError | ValueError):
        return Problem("invalid-request", str(exc))
    return None


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.to_json(), problem.status, headers=problem.headers, media_type=MEDIA_TYPE
    )
