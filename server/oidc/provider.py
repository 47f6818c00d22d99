"""The identity provider over HTTP: its discovery document, its keys (JWKS), and the
exchange of an authorization code (with the PKCE verifier) for tokens.

authlib's httpx2 client does the token request (client authentication, the form, the
error answers); discovery and keys are two GETs. Both are cached; the keys are
fetched again once when a token names a key we do not have (the provider rotated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client

from .refusal import Refusal
from .settings import OidcSettings

__all__ = ["Metadata", "Provider"]

TIMEOUT = 10.0  # seconds for each request to the provider
MAX_DOCUMENT = 256 * 1024  # bytes: discovery documents and key sets are a few KB


@dataclass(frozen=True, slots=True)
class Metadata:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class Provider:
    def __init__(self, settings: OidcSettings, client: httpx2.AsyncClient | None = None) -> None:
        self._settings = settings
        self._client = client or httpx2.AsyncClient(timeout=TIMEOUT)
        self._metadata: Metadata | None = None
        self._jwks: dict[str, Any] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def metadata(self) -> Metadata:
        if self._metadata is None:
            issuer = self._settings.issuer.rstrip("/")
            doc = await self._get_json(issuer + "/.well-known/openid-configuration")
            if str(doc.get("issuer", "")).rstrip("/") != issuer:
                raise Refusal("discovery", _UNAVAILABLE)
            try:
                self._metadata = Metadata(
                    authorization_endpoint=str(doc["authorization_endpoint"]),
                    token_endpoint=str(doc["token_endpoint"]),
                    jwks_uri=str(doc["jwks_uri"]),
                )
            except KeyError:
                raise Refusal("discovery", _UNAVAILABLE) from None
        return self._metadata

    async def keys(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._jwks is None or refresh:
            self._jwks = await self._get_json((await self.metadata()).jwks_uri)
        return self._jwks

    async def exchange(self, code: str, code_verifier: str) -> str:
        """The ID token for ``code``. Raises Refusal (check ``token``)."""
        s = self._settings
        md = await self.metadata()
        async with AsyncOAuth2Client(
            client_id=s.client_id,
            client_secret=s.client_secret,
            redirect_uri=s.redirect_uri,
            timeout=TIMEOUT,
        ) as client:
            try:
                token = await client.fetch_token(
                    md.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                )
            except Exception as exc:  # authlib's OAuthError, httpx's errors, bad JSON
                raise Refusal("token", _UNAVAILABLE) from exc
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise Refusal("token", "The identity provider sent no ID token (is openid a scope?).")
        return id_token

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._client.get(url)
            response.raise_for_status()
            if len(response.content) > MAX_DOCUMENT:
                raise ValueError("too large")
            doc = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise Refusal("discovery", _UNAVAILABLE) from exc
        if not isinstance(doc, dict):
            raise Refusal("discovery", _UNAVAILABLE)
        return doc


_UNAVAILABLE = "The identity provider could not be reached or answered unexpectedly. Try again."
