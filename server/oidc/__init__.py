"""OIDC login: a pending login's auth URL sends the user to the identity provider,
and the callback turns the provider's answer into a user (and its groups) or a refusal.

Pure parts: `settings` (what the operator configured), `flows` (state, nonce, PKCE:
bound to one pending login, single use, expiring), `tokens` (the ID token checked with
authlib), `identity` (claims -> a user of tailnet.d, allow-lists, groups). The I/O part,
`provider`, fetches the discovery document and keys and exchanges the code.
"""

from typing import TYPE_CHECKING, Any

from .identity import Identity, admit
from .refusal import Refusal
from .settings import OidcSettings

if TYPE_CHECKING:
    from .flows import Flow, Flows
    from .tokens import verify_id_token

__all__ = [
    "Flow",
    "Flows",
    "Identity",
    "OidcSettings",
    "Refusal",
    "admit",
    "verify_id_token",
]

# authlib and joserfc load only when a login needs them: `tailnetd serve`
# reads the settings (server.config) whether or not OIDC is configured.
_LAZY = {"Flow": ".flows", "Flows": ".flows", "verify_id_token": ".tokens"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
