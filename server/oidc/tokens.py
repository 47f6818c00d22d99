"""The ID token: its signature against the provider's keys (JWKS), then its claims
(issuer, audience, expiry, nonce) with authlib's OIDC rules.

The signature is checked with joserfc, the JOSE library authlib itself now builds on
(authlib's own ``authlib.jose`` is deprecated in its favour); the claims with authlib's
``CodeIDToken``. ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from .refusal import Refusal
from .settings import OidcSettings

__all__ = ["ALGORITHMS", "MAX_TOKEN", "verify_id_token"]

# Asymmetric only: an HS256 token would be "signed" with the client secret.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
MAX_TOKEN = 16 * 1024  # bytes; providers' ID tokens are a few KB at most
LEEWAY = 60  # seconds of clock skew allowed


def verify_id_token(
    token: str, jwks: Mapping[str, Any], settings: OidcSettings, nonce: str, now: float
) -> dict[str, Any]:
    """The ID token's claims once signature, issuer, audience, expiry and nonce hold.

    Raises Refusal naming the check that failed (``signature``, ``issuer``, ``audience``,
    ``expired``, ``nonce``, ``id_token``)."""
    if len(token) > MAX_TOKEN:
        raise Refusal("id_token", "The identity provider's answer was too large.")
    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as exc:
        raise Refusal("signature", "The identity provider's answer could not be verified.") from exc
    claims = CodeIDToken(
        dict(decoded.claims),
        dict(decoded.header),
        options={
            "iss": {"essential": True, "value": settings.issuer},
            "aud": {"essential": True, "value": settings.client_id},
            "exp": {"essential": True},
            "nonce": {"essential": True, "value": nonce},
        },
        params={"nonce": nonce, "client_id": settings.client_id},
    )
    try:
        claims.validate(now=int(now), leeway=LEEWAY)
    except ExpiredTokenError as exc:
        raise Refusal("expired", "The identity provider's answer has expired.") from exc
    except (InvalidClaimError, MissingClaimError) as exc:
        name = getattr(exc, "claim", "")
        check = {"iss": "issuer", "aud": "audience", "azp": "audience", "nonce": "nonce"}.get(
            name, "id_token"
        )
        message = "The identity provider's answer was not meant for this login."
        raise Refusal(check, message) from exc
    except JoseError as exc:
        raise Refusal("id_token", "The identity provider's answer could not be used.") from exc
    return dict(claims)
