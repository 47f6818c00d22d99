"""The web side of an OIDC login: a pending login's URL redirects to the provider, and
the provider sends the browser back to ``/oidc/callback``, where the login completes
(the user and its groups handed to the pending-login seam) or is refused with a page
saying why, and one log line naming the failed check for the operator.
"""

from __future__ import annotations

import dataclasses
import html
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from server.auth.pages import check_page, login_page, page
from server.auth.pending import LoginGone, PendingLogins, ProviderLogin
from server.auth.sshcheck import SshCheck, SshChecks
from server.logs import event

from .flows import Flow, Flows
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
        admit_unknown: Callable[[], bool] = lambda: False,
        clock: Callable[[], datetime],
        log: logging.Logger,
        flows: Flows | None = None,
        ssh_checks: SshChecks | None = None,
    ) -> None:
        self._checks = ssh_checks  # SSH check mode re-authenticates here too
        self.settings = settings
        self._provider = provider
        self._logins = logins
        self._users = users
        self._record_groups = record_groups
        self._admit_runtime = admit_runtime
        self._admit_unknown = admit_unknown  # the serving commit's settings.yaml says so
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
            who, expires = await self._identify(flow, code, error)
            if not who.declared:
                if self._admit_runtime is None:
                    raise Refusal("unknown_user", f"{who.email} is not a user of this tailnet.")
                self._admit_runtime(who.email)
            self._record_groups(who.email, who.groups)
            proof = ProviderLogin(who.email, expires)
            self._logins.complete(flow.auth_id, who.user, who.groups, proof)
        except Refusal as refusal:
            self._refuse(flow.auth_id, refusal)
            raise
        except LoginGone as exc:
            raise Refusal("login", f"This login can no longer complete: {exc}.") from None
        return who

    async def start_check(self, auth_id: str) -> str | None:
        """Where to send the browser for a waiting SSH check (None: not waiting)."""
        check = self._checks.get(auth_id) if self._checks is not None else None
        if check is None or check.state != "waiting":
            return None
        md = await self._provider.metadata()
        _, url = self.flows.start(auth_id, md.authorization_endpoint, self._now(), "ssh_check")
        return url

    async def finish_check(self, code: str, state: str, error: str) -> tuple[Identity, SshCheck]:
        """Approve the SSH check ``state`` belongs to: only the owner of the node the
        connection comes from may (the user its verified email maps to). Any refusal
        refuses the check too, with one log line naming the failed check."""
        assert self._checks is not None
        flow = self.flows.take(state, self._now())
        check = self._checks.get(flow.auth_id)
        if check is None:
            raise Refusal("login", "This SSH check is unknown or has expired. Connect again.")
        try:
            who, _ = await self._identify(flow, code, error)
            if check.src_user is None:
                raise Refusal(
                    "owner",
                    f"You signed in as {who.email}, but this SSH login comes from a tagged "
                    "device: only an administrator can approve it.",
                    who.email,
                )
            if who.user != check.src_user:
                owner = self._email_of(check.src_user)
                raise Refusal(
                    "owner",
                    f"You signed in as {who.email}, but this SSH login comes from a device of "
                    f"{owner}: only {owner} can approve it. Connect again and sign in as "
                    f"{owner}.",
                    who.email,
                )
            return who, self._checks.complete(flow.auth_id, who.user, self._clock())
        except Refusal as refusal:
            self._log.warning(
                "oidc: ssh check %s refused: check %s failed%s%s",
                flow.auth_id,
                refusal.check,
                f" for {refusal.email}" if refusal.email else "",
                f" (the connection comes from a node of {self._email_of(check.src_user)})"
                if refusal.check == "owner" and check.src_user
                else "",
                extra=event(
                    "ssh.check_refused",
                    auth_id=flow.auth_id,
                    check=refusal.check,
                    email=refusal.email,
                ),
            )
            try:
                self._checks.refuse(flow.auth_id, refusal.message.rstrip("."), logged=True)
            except LoginGone:
                pass
            raise
        except LoginGone as exc:
            raise Refusal("login", f"This SSH check can no longer complete: {exc}.") from None

    def _email_of(self, user: str) -> str:
        return next((e for e, name in self._users().items() if name == user), user)

    async def _identify(self, flow: Flow, code: str, error: str) -> tuple[Identity, datetime]:
        """The person the provider signed in for ``flow``, and when its ID token
        expires. Raises Refusal."""
        if error:
            raise Refusal("provider", "The identity provider did not sign you in.")
        id_token = await self._provider.exchange(code, flow.code_verifier)
        claims = await self._verify(id_token, flow.nonce)
        exp = claims.get("exp")  # verified: present and in the future
        if not isinstance(exp, int | float):
            raise Refusal("id_token", "The identity provider's answer could not be used.")
        settings = self.settings
        if not settings.admit_unknown and self._admit_unknown():
            settings = dataclasses.replace(settings, admit_unknown=True)
        return admit(claims, settings, self._users()), datetime.fromtimestamp(exp, UTC)

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
        def to_provider(
            begin: Callable[[str], Awaitable[str | None]],
            otherwise: Callable[[str], tuple[int, str]],
        ) -> Callable[[Request], Awaitable[Response]]:
            """A URL that sends the browser to the provider while `begin` has somewhere
            to send it, else shows the `otherwise` page (how it ended, or unknown)."""

            async def endpoint(request: Request) -> Response:
                auth_id = str(request.path_params["auth_id"])[:128]
                try:
                    url = await begin(auth_id)
                except Refusal as refusal:
                    self._log.warning(
                        "oidc: %s", refusal.check, extra=event("login.oidc_unavailable")
                    )
                    return _page(503, "Sign-in unavailable", refusal.message)
                if url is not None:
                    return RedirectResponse(url, 302, headers={"Cache-Control": "no-store"})
                status, text = otherwise(auth_id)
                return HTMLResponse(text, status, headers={"Cache-Control": "no-store"})

            return endpoint

        register = to_provider(
            self.start,
            lambda auth_id: login_page(self._logins.get(auth_id), auth_id, self._clock()),
        )
        ssh_check = to_provider(
            self.start_check,
            lambda auth_id: check_page(self._checks.get(auth_id) if self._checks else None),
        )

        async def callback(request: Request) -> Response:
            q = request.query_params
            code, state = q.get("code", "")[:MAX_PARAM], q.get("state", "")[:MAX_PARAM]
            error = q.get("error", "")[:MAX_PARAM]
            try:
                if self.flows.kind(state) == "ssh_check" and self._checks is not None:
                    who, check = await self.finish_check(code, state, error)
                    return _page(
                        200,
                        "SSH login approved",
                        f"You are signed in as {who.email}. The SSH login as {check.local_user} "
                        "continues by itself; you can close this page.",
                    )
                who = await self.finish(code, state, error)
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
            Route("/ssh/check/{auth_id}", ssh_check),
            Route(CALLBACK_PATH, callback),
        ]


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = f"<p>{html.escape(text)}</p>\n"
    return HTMLResponse(page(title, body), status, headers={"Cache-Control": "no-store"})
