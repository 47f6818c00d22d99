"""OIDC login: a pending login's auth URL sends the user to the identity provider,
and the callback turns the provider's answer into a user (and its groups) or a refusal.

Pure parts: `settings` (what the operator configured), `flows` (state, nonce, PKCE:
bound to one pending login, single use, expiring), `tokens` (the ID token checked with
authlib), `identity` (claims -> a user of tailnet.d, allow-lists, groups). The I/O part,
`provider`, fetches the discovery document and keys and exchanges the code.
"""

from .flows import Flow, Flows
from .identity import Identity, admit
from .refusal import Refusal
from .settings import OidcSettings
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
