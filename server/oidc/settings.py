"""What the operator configured for OIDC, read once (server options) and frozen.

The client secret comes from a file or the environment, never from git.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CALLBACK_PATH", "OidcSettings", "oidc_settings", "read_client_secret"]

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


def _names(text: str | None) -> frozenset[str]:
    return frozenset(p.strip().lower() for p in (text or "").split(",") if p.strip())


def oidc_settings(
    v: Mapping[str, Any], *, server_url: str, login_ttl: float, env: Mapping[str, str]
) -> OidcSettings:
    """From the server options (`oidc_*` keys, parsed). Raises ValueError."""
    issuer = str(v["oidc_issuer"]).rstrip("/")
    if not issuer.startswith(("https://", "http://")):
        raise ValueError(f"--oidc-issuer must be an http(s) URL, got {issuer!r}")
    client_id = v.get("oidc_client_id")
    if not client_id:
        raise ValueError("--oidc-issuer needs --oidc-client-id")
    scopes = tuple(s.strip() for s in str(v.get("oidc_scopes") or "").split(",") if s.strip())
    if "openid" not in scopes:
        raise ValueError("--oidc-scopes must include openid")
    return OidcSettings(
        issuer=issuer,
        client_id=str(client_id),
        client_secret=read_client_secret(v.get("oidc_client_secret_file"), env),
        server_url=server_url,
        scopes=scopes,
        allowed_emails=_names(v.get("oidc_allowed_emails")),
        allowed_domains=_names(v.get("oidc_allowed_domains")),
        allowed_groups=frozenset(
            g.strip() for g in str(v.get("oidc_allowed_groups") or "").split(",") if g.strip()
        ),
        groups_claim=str(v.get("oidc_groups_claim") or "groups"),
        groups_prefix=str(v.get("oidc_groups_prefix") or ""),
        allow_unverified_email=bool(v.get("oidc_allow_unverified_email")),
        admit_unknown=bool(v.get("oidc_admit_unknown")),
        login_ttl=login_ttl,
    )
