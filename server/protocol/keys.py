"""Typed Curve25519 keys with Tailscale's text prefixes.

Each key kind is its own type, as tailscale's `types/key` does, so a node key
can never be passed where a machine key is meant. Text form is the prefix plus
64 lowercase hex digits; parsing is strict. Equality is constant-time.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = [
    "ChallengePublic",
    "DiscoPublic",
    "KeyFormatError",
    "MachinePrivate",
    "MachinePublic",
    "NLPublic",
    "NodePrivate",
    "NodePublic",
]

KEY_LEN = 32
_HEX = frozenset("0123456789abcdef")


class KeyFormatError(ValueError):
    """A key's text or byte form is malformed."""


class _Key:
    # A plain immutable class, not a dataclass: decoders that map dataclasses
    # to JSON objects (msgspec, server/wire/) must see a key as one opaque value.
    __slots__ = ("raw",)
    PREFIX: ClassVar[str] = ""
    raw: bytes

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise KeyFormatError(f"{self.PREFIX}key must be {KEY_LEN} bytes, got {len(raw)}")
        object.__setattr__(self, "raw", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[Self], tuple[bytes]]:
        return (type(self), (self.raw,))

    @classmethod
    def parse(cls, text: str) -> Self:
        if not isinstance(text, str) or not text.startswith(cls.PREFIX):
            raise KeyFormatError(f"key must start with {cls.PREFIX!r}")
        digits = text[len(cls.PREFIX) :]
        if len(digits) != 2 * KEY_LEN or not set(digits) <= _HEX:
            raise KeyFormatError(f"{cls.PREFIX} key must be 64 lowercase hex digits")
        return cls(bytes.fromhex(digits))

    @classmethod
    def zero(cls) -> Self:
        return cls(bytes(KEY_LEN))

    @property
    def is_zero(self) -> bool:
        return hmac.compare_digest(self.raw, bytes(KEY_LEN))

    @property
    def text(self) -> str:
        return self.PREFIX + self.raw.hex()

    def short(self) -> str:
        """A short form for logs, like tailscale's ShortString."""
        return f"[{self.raw[:5].hex()}]"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Key)
        return hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.raw))


class MachinePublic(_Key):
    __slots__ = ()
    PREFIX = "mkey:"


class NodePublic(_Key):
    __slots__ = ()
    PREFIX = "nodekey:"


class DiscoPublic(_Key):
    __slots__ = ()
    PREFIX = "discokey:"


class NLPublic(_Key):
    __slots__ = ()
    PREFIX = "nlpub:"


class ChallengePublic(_Key):
    __slots__ = ()
    PREFIX = "chalpub:"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class _Private:
    PREFIX: ClassVar[str] = "privkey:"
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise KeyFormatError(f"private key must be {KEY_LEN} bytes")

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Self:
        return cls(rng(KEY_LEN))

    @classmethod
    def parse(cls, text: str) -> Self:
        if not text.startswith(cls.PREFIX):
            raise KeyFormatError("private key must start with 'privkey:'")
        digits = text[len(cls.PREFIX) :].strip()
        if len(digits) != 2 * KEY_LEN or not set(digits) <= _HEX:
            raise KeyFormatError("private key must be 64 lowercase hex digits")
        return cls(bytes.fromhex(digits))

    @property
    def text(self) -> str:
        return self.PREFIX + self.raw.hex()

    def public_raw(self) -> bytes:
        return X25519PrivateKey.from_private_bytes(self.raw).public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<hidden>)"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Private)
        return hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)


class MachinePrivate(_Private):
    """The control server's Noise static key (and a client's machine key in tests)."""

    def public(self) -> MachinePublic:
        return MachinePublic(self.public_raw())


class NodePrivate(_Private):
    """A WireGuard/DERP identity key (the DERP server's key, test clients)."""

    def public(self) -> NodePublic:
        return NodePublic(self.public_raw())
