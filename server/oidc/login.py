"""The web side of an OIDC login: a pending login's URL redirects to the provider, and
the provider sends the browser back to ``/oidc/callback``, where the login completes
(the user and its groups handed to the pending-login seam) or is refused with a page
saying why, and one log line naming the failed check for the operator.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from server.auth.pages import login_page, page
from server.auth.pending import LoginGone, PendingLogins
from server.logs import event

from .flows import Flows
from .identity import Identity, admit
from .provider import Provider
from .refusal import Refusal
from .settings import CALLBACK_PATH, OidcSettings
from .tokens import verify_id_token

__all__ = ["OidcLogin"]

MAX_PARAM = 2048  # characters of a code or state we look at


class OidcLogin:
    """``users()`` maps each tailnet.d email (lower case) to its user name;
    ``record_groups(email, groups)`` stores and applies a login's groups;
    ``admit_runtime(email)`` admits an identity not in tailnet.d as a runtime user
    (with ``admit_unknown`` set; without it such logins are refused)."""

    def __init__(
        self,
        settings: OidcSettings,
        provider: Provider,
        logins: PendingLogins,
        *,
        users: Callable[[], Mapping[str, str]],
        record_groups: Callable[[str, tuple[str, ...]], None],
        admit_runtime: Callable[[str], object] | None = None,
        clock: Callable[[], datetime],
        log: logging.Logger,
        flows: Flows | None = None,
    ) -> None:
        self.settings = settings
        self._provider = provider
        self._logins = logins
        self._users = users
        self._record_groups = record_groups
        self._admit_runtime = admit_runtime
        self._clock = clock
        self._log = log
        self.flows = flows or Flows(settings)

    async def start(self, auth_id: str) -> str | None:
        """Where to send the browser for a waiting login (None: not waiting)."""
        login = self._logins.get(auth_id)
        if login is None or login.state != "waiting":
            return None
        md = await self._provider.metadata()
        _, url = self.flows.start(auth_id, md.authorization_endpoint, self._now())
        return url

    async def finish(self, code: str, state: str, error: str) -> Identity:
        """Complete the login ``state`` belongs to. Raises Refusal (the login refused
        too when the refusal is about the person, not about this browser round trip)."""
        flow = self.flows.take(state, self._now())
        try:
            if error:
                raise Refusal("provider", "The identity provider did not sign you in.")
            id_token = await self._provider.exchange(code, flow.code_verifier)
            claims = await self._verify(id_token, flow.nonce)
            who = admit(claims, self.settings, self._users())
            if not who.declared:
                if self._admit_runtime is None:
                    raise Refusal("unknown_user", f"{who.email} is not a user of this tailnet.")
                self._admit_runtime(who.email)
            self._record_groups(who.email, who.groups)
            self._logins.complete(flow.auth_id, who.user, who.groups)
        except Refusal as refusal:
            self._refuse(flow.auth_id, refusal)
            raise
        except LoginGone as exc:
            raise Refusal("login", f"This login can no longer complete: {exc}.") from None
        return who

    async def _verify(self, id_token: str, nonce: str) -> dict[str, object]:
        keys = await self._provider.keys()
        try:
            return verify_id_token(id_token, keys, self.settings, nonce, self._now())
        except Refusal as first:
            if first.check != "signature":
                raise
            keys = await self._provider.keys(refresh=True)  # the provider may have rotated
            return verify_id_token(id_token, keys, self.settings, nonce, self._now())

    def _refuse(self, auth_id: str, refusal: Refusal) -> None:
        self._log.warning(
            "oidc: login %s refused: check %s failed%s",
            auth_id,
            refusal.check,
            f" for {refusal.email}" if refusal.email else "",
            extra=event(
                "login.oidc_refused", auth_id=auth_id, check=refusal.check, email=refusal.email
            ),
        )
        try:
            self._logins.refuse(auth_id, refusal.message.rstrip("."))
        except LoginGone:
            pass

    def _now(self) -> float:
        return self._clock().timestamp()

    def routes(self) -> list[Route]:
        async def register(request: Request) -> Response:
            auth_id = str(request.path_params["auth_id"])[:128]
            try:
                url = await self.start(auth_id)
            except Refusal as refusal:
                self._log.warning("oidc: %s", refusal.check, extra=event("login.oidc_unavailable"))
                return _page(503, "Sign-in unavailable", refusal.message)
            if url is not None:
                return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})
            status, text = login_page(self._logins.get(auth_id), auth_id, self._clock())
            return HTMLResponse(text, status, headers={"Cache-Control": "no-store"})

        async def callback(request: Request) -> Response:
            q = request.query_params
            try:
                who = await self.finish(
                    q.get("code", "")[:MAX_PARAM],
                    q.get("state", "")[:MAX_PARAM],
                    q.get("error", "")[:MAX_PARAM],
                )
            except Refusal as refusal:
                if refusal.check == "state":
                    self._log.warning(
                        "oidc: callback refused: check state failed",
                        extra=event("login.oidc_refused", check="state"),
                    )
                return _page(403, "Login refused", refusal.message)
            return _page(
                200,
                "Device approved",
                f"You are signed in as {who.email}. The device is logged in; you can close "
                "this page: tailscale up on the device continues by itself.",
            )

        return [
            Route("/register/{auth_id}", register),
            Route(CALLBACK_PATH, callback),
        ]


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = f"<p>{html.escape(text)}</p>\n"
    return HTMLResponse(page(title, body), status, headers={"Cache-Control": "no-store"})
