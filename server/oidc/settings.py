"""What the operator configured for OIDC, read once (server options) and frozen.

The client secret comes from a file or the environment, never from git.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CALLBACK_PATH", "OidcSettings", "read_client_secret"]

CALLBACK_PATH = "/oidc/callback"
SECRET_ENV = "TAILNETD_OIDC_CLIENT_SECRET"


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    server_url: str
    scopes: tuple[str, ...] = ("openid", "email", "profile", "groups")
    allowed_emails: frozenset[str] = frozenset()
    allowed_domains: frozenset[str] = frozenset()
    allowed_groups: frozenset[str] = frozenset()
    groups_claim: str = "groups"
    groups_prefix: str = ""  # claim value "eng" -> policy group "group:<prefix>eng"
    admit_unknown: bool = False  # an identity not in tailnet.d becomes a runtime user
    allow_unverified_email: bool = False
    login_ttl: float = 600.0  # seconds a state (and its pending login) stays usable

    @property
    def redirect_uri(self) -> str:
        return self.server_url.rstrip("/") + CALLBACK_PATH


def read_client_secret(path: Path | None, env: Mapping[str, str]) -> str:
    """From the file when given, else from $TAILNETD_OIDC_CLIENT_SECRET. Raises ValueError."""
    if path is not None:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the client secret from {path}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"{path} is empty: it must hold the OIDC client secret")
        return secret
    secret = env.get(SECRET_ENV, "").strip()
    if not secret:
        raise ValueError(
            f"an OIDC issuer needs a client secret: --oidc-client-secret-file FILE or ${SECRET_ENV}"
        )
    return secret
