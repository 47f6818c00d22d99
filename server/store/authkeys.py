"""Key text for pre-auth keys and API keys: generation, parsing and the stored hash.

A pre-auth key reads `tskey-auth-<prefix>-<secret>` (the layout of headscale's
and Tailscale's own keys), an API key `tskey-api-<prefix>-<secret>`. The prefix
is public: it names the row, shows up in `list` output and logs. Only a hash
of the secret is stored.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from server.store._rand import ALNUM, LOWER_ALNUM, random_text
from server.store.model import Rng

__all__ = [
    "API_KEY",
    "AUTH_KEY",
    "KEY_TEXT_PREFIX",
    "PREFIX_LEN",
    "SECRET_LEN",
    "KeyFormat",
    "generate_key",
    "hash_secret",
    "parse_key",
    "secret_matches",
]

PREFIX_LEN = 12
SECRET_LEN = 48  # 48 chars of 62 symbols: about 285 bits
_PREFIX_CHARS = frozenset(LOWER_ALNUM)
_SECRET_CHARS = frozenset(ALNUM)


@dataclass(frozen=True, slots=True)
class KeyFormat:
    """One kind of key: its text prefix, and a hash domain of its own so a
    hash copied from one kind's table never matches in the other's."""

    text_prefix: str
    hash_domain: bytes

    def generate(self, rng: Rng) -> tuple[str, str, str]:
        """(full key text, prefix, secret) for a new key."""
        prefix = random_text(rng, LOWER_ALNUM, PREFIX_LEN)
        secret = random_text(rng, ALNUM, SECRET_LEN)
        return f"{self.text_prefix}{prefix}-{secret}", prefix, secret

    def parse(self, text: str) -> tuple[str, str] | None:
        """(prefix, secret) of a well-formed key, else None.

        Callers answer a malformed key exactly like an unknown one, so nothing
        about the format or the stored prefixes leaks to whoever is guessing.
        """
        text = text.strip()
        if not text.startswith(self.text_prefix):
            return None
        prefix, sep, secret = text[len(self.text_prefix) :].partition("-")
        if (
            not sep
            or len(prefix) != PREFIX_LEN
            or not set(prefix) <= _PREFIX_CHARS
            or len(secret) != SECRET_LEN
            or not set(secret) <= _SECRET_CHARS
        ):
            return None
        return prefix, secret

    def hash_secret(self, prefix: str, secret: str) -> bytes:
        # Plain SHA-256, no salt or stretching: those defend low-entropy passwords
        # against guessing, and this secret is ~285 random bits, so there is nothing
        # to guess and no two keys share a secret to precompute. The prefix and a
        # domain string are hashed in so a hash copied to another row never matches.
        data = self.hash_domain + prefix.encode() + b"\x00" + secret.encode()
        return hashlib.sha256(data).digest()

    def secret_matches(self, prefix: str, secret: str, stored: bytes) -> bool:
        return hmac.compare_digest(self.hash_secret(prefix, secret), stored)


AUTH_KEY = KeyFormat("tskey-auth-", b"tailnetd pre-auth key v1\x00")
API_KEY = KeyFormat("tskey-api-", b"tailnetd api key v1\x00")

KEY_TEXT_PREFIX = AUTH_KEY.text_prefix
generate_key = AUTH_KEY.generate
parse_key = AUTH_KEY.parse
hash_secret = AUTH_KEY.hash_secret
secret_matches = AUTH_KEY.secret_matches
