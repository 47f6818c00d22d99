"""The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`), without framing or I/O.

This is plain Noise as the specification (revision 34) defines it, so it can be
checked against the published Noise test vectors. Tailscale's controlbase puts
its own headers around these messages and uses big-endian transport nonces;
both live in `noise.py`, which is the module the rest of the server uses.

    <- s
    ...
    -> e, es, s, ss
    <- e, ee, se

Every key that MixKey produces encrypts at most one message, always with the
all-zero nonce, so there is no handshake nonce counter to get wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from server.protocol.keys import MachinePrivate, MachinePublic, NodePrivate

__all__ = [
    "PROTOCOL_NAME",
    "HandshakeError",
    "Initiator",
    "NoiseError",
    "Responder",
    "SessionKeys",
    "SymmetricState",
    "hkdf2",
    "public_of",
]

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
DH_LEN = 32
TAG_LEN = 16
_ZERO_NONCE = bytes(12)
# -> e (32 clear) ‖ s (32 + tag) ‖ payload tag
INITIATION_BODY_MIN = DH_LEN + (DH_LEN + TAG_LEN) + TAG_LEN
# <- e (32 clear) ‖ payload tag
RESPONSE_BODY_MIN = DH_LEN + TAG_LEN


class NoiseError(Exception):
    """The peer broke the Noise protocol; the connection cannot continue.

    Messages are fixed text (numbers at most) and never contain peer bytes, so
    they are safe to log and to send back in an error frame.
    """


class HandshakeError(NoiseError):
    """The handshake could not be completed."""


def _blake2s(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.blake2s)


def hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs (spec §4.3), HMAC-BLAKE2s underneath."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


@lru_cache(maxsize=4)
def _static_public(private: MachinePrivate) -> bytes:
    """A server's long-lived public key, derived once (every handshake mixes it)."""
    return public_of(private)


def public_of(private: MachinePrivate | NodePrivate) -> bytes:
    """X25519(k, 9), as `private.public_raw()` gives it, by libsodium's
    fixed-base tables: 17 against 33 us through OpenSSL's key load. Each
    connection derives two (the handshake's ephemeral, the challenge); keys.py
    keeps OpenSSL's so that nacl stays off the start path
    (tests/unit/test_cold_start.py)."""
    from nacl.bindings import crypto_scalarmult_base

    return crypto_scalarmult_base(private.raw)


def _dh(private: MachinePrivate, public: MachinePublic) -> bytes:
    # X25519 through libsodium, as public_of: the same function as OpenSSL's,
    # with no key object to load (loading one derives its public key too).
    import nacl.exceptions
    from nacl.bindings import crypto_scalarmult

    try:
        return crypto_scalarmult(private.raw, public.raw)
    except nacl.exceptions.RuntimeError:
        # A low-order point gives an all-zero secret; libsodium refuses such
        # points, as Go's curve25519 does, so the handshake fails on both sides alike.
        raise HandshakeError("handshake used an invalid public key") from None


class SymmetricState:
    """The running hash `h` and chaining key `ck` of one handshake."""

    __slots__ = ("ck", "h")

    def __init__(self, prologue: bytes) -> None:
        # The name is longer than HASHLEN, so the spec says hash it.
        self.h = _blake2s(PROTOCOL_NAME)
        self.ck = self.h
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = _blake2s(self.h + data)

    def mix_dh(self, private: MachinePrivate, public: MachinePublic) -> bytes:
        """MixKey(DH(private, public)); returns the single-use cipher key."""
        self.ck, key = hkdf2(self.ck, _dh(private, public))
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes, what: str) -> bytes:
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag:
            raise HandshakeError(f"handshake {what} failed authentication") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return hkdf2(self.ck, b"")


@dataclass(frozen=True, slots=True, repr=False)
class SessionKeys:
    """What a finished handshake yields. k1 carries initiator→responder traffic."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes
    handshake_hash: bytes


def _finish(state: SymmetricState) -> SessionKeys:
    k1, k2 = state.split()
    return SessionKeys(k1, k2, state.h)


class Initiator:
    """The client side: knows the responder's static key before it starts."""

    def __init__(
        self,
        prologue: bytes,
        static: MachinePrivate,
        ephemeral: MachinePrivate,
        responder_static: MachinePublic,
    ) -> None:
        self._static = static
        self._ephemeral = ephemeral
        self._remote_static = responder_static
        self._state = SymmetricState(prologue)
        self._state.mix_hash(responder_static.raw)
        self._step = 0

    def write_message(self, payload: bytes = b"") -> bytes:
        """-> e, es, s, ss: returns e ‖ encrypted s ‖ encrypted payload."""
        self._advance(0)
        st = self._state
        e_pub = public_of(self._ephemeral)
        st.mix_hash(e_pub)
        key = st.mix_dh(self._ephemeral, self._remote_static)
        static_pub = public_of(self._static)
        sealed_static = st.encrypt_and_hash(key, static_pub)
        key = st.mix_dh(self._static, self._remote_static)
        return e_pub + sealed_static + st.encrypt_and_hash(key, payload)

    def read_message(self, message: bytes) -> tuple[bytes, SessionKeys]:
        """<- e, ee, se: returns the responder's payload and the session keys."""
        self._advance(1)
        if len(message) < RESPONSE_BODY_MIN:
            raise HandshakeError("handshake response is too short")
        st = self._state
        remote_ephemeral = MachinePublic(message[:DH_LEN])
        st.mix_hash(remote_ephemeral.raw)
        # ee only feeds the chaining key: nothing is encrypted under it.
        st.mix_dh(self._ephemeral, remote_ephemeral)
        key = st.mix_dh(self._static, remote_ephemeral)
        payload = st.decrypt_and_hash(key, message[DH_LEN:], "response")
        return payload, _finish(st)

    def _advance(self, expected: int) -> None:
        if self._step != expected:
            raise RuntimeError("Noise initiator messages used out of order")
        self._step += 1


class Responder:
    """The server side: learns the initiator's static key from the first message."""

    def __init__(self, prologue: bytes, static: MachinePrivate) -> None:
        self._static = static
        self._state = SymmetricState(prologue)
        self._state.mix_hash(_static_public(static))
        self._remote_ephemeral: MachinePublic | None = None
        self._remote_static: MachinePublic | None = None

    def read_message(self, message: bytes) -> tuple[MachinePublic, bytes]:
        """-> e, es, s, ss: returns the initiator's static key and its payload."""
        if self._remote_ephemeral is not None:
            raise RuntimeError("Noise responder read twice")
        if len(message) < INITIATION_BODY_MIN:
            raise HandshakeError("handshake initiation is too short")
        st = self._state
        remote_ephemeral = MachinePublic(message[:DH_LEN])
        st.mix_hash(remote_ephemeral.raw)
        key = st.mix_dh(self._static, remote_ephemeral)
        sealed_end = DH_LEN + DH_LEN + TAG_LEN
        remote_static = MachinePublic(
            st.decrypt_and_hash(key, message[DH_LEN:sealed_end], "machine key")
        )
        key = st.mix_dh(self._static, remote_static)
        payload = st.decrypt_and_hash(key, message[sealed_end:], "initiation")
        self._remote_ephemeral = remote_ephemeral
        self._remote_static = remote_static
        return remote_static, payload

    def write_message(
        self, ephemeral: MachinePrivate, payload: bytes = b""
    ) -> tuple[bytes, SessionKeys]:
        """<- e, ee, se: returns e ‖ encrypted payload, and the session keys."""
        remote_ephemeral, remote_static = self._remote_ephemeral, self._remote_static
        if remote_ephemeral is None or remote_static is None:
            raise RuntimeError("Noise responder must read the initiation first")
        self._remote_ephemeral = self._remote_static = None
        st = self._state
        e_pub = public_of(ephemeral)
        st.mix_hash(e_pub)
        st.mix_dh(ephemeral, remote_ephemeral)
        key = st.mix_dh(ephemeral, remote_static)
        body = e_pub + st.encrypt_and_hash(key, payload)
        return body, _finish(st)
