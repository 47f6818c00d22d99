"""ACME HTTP-01: the answers the CA fetches from
`http://<domain>/.well-known/acme-challenge/<token>` (RFC 8555 §8.3), served
by wrapping the public ASGI app rather than adding a route to it.

Tokens are added by the issuing thread and read by the event loop; single
dict operations are atomic under the GIL, which is all this needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PREFIX", "ChallengeResponder"]

PREFIX = "/.well-known/acme-challenge/"


class ChallengeResponder:
    def __init__(self) -> None:
        self._answers: dict[str, str] = {}

    def add(self, token: str, key_authorization: str) -> None:
        self._answers[token] = key_authorization

    def remove(self, token: str) -> None:
        self._answers.pop(token, None)

    def answer(self, path: str) -> str | None:
        if not path.startswith(PREFIX):
            return None
        return self._answers.get(path[len(PREFIX) :])

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """`app`, with the challenge path answered in front of it."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope.get("type") != "http" or not path.startswith(PREFIX):
                await app(scope, receive, send)
                return
            answer = self.answer(path)
            body = answer.encode() if answer is not None else b"no such ACME challenge\n"
            # RFC 8555 §8.3: the body is the key authorization, nothing else.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if answer is not None else 404,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return wrapped
