"""The ts2021 ("controlbase") transport: Noise IK framed the way Tailscale frames it.

Sans-IO, like h2: feed received bytes to `NoiseTransport.receive_data`, queue
plaintext with `send`, and write out whatever `data_to_send` returns. The
asyncio front door owns the socket; nothing here blocks or reads a clock.

Wire format (ts:control/controlbase/messages.go, conn.go; protocol.md §3.3):

* initiation  `u16 version ‖ u8 1 ‖ u16 96 ‖ e ‖ sealed s ‖ tag`  (101 bytes)
* response    `u8 2 ‖ u16 48 ‖ e ‖ tag`                            (51 bytes)
* error       `u8 3 ‖ u16 len ‖ text`   (unauthenticated hint, server → client)
* record      `u8 4 ‖ u16 len ‖ ChaCha20-Poly1305(plaintext)`      (≤ 4096 bytes)

Two things differ from textbook Noise and make off-the-shelf libraries fail:
the prologue is "Tailscale Control Protocol v<client version>", and transport
nonces put the 64-bit counter in the last 8 bytes BIG-endian.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from server.protocol.keys import ChallengePublic, MachinePrivate, MachinePublic
from server.protocol.noise_handshake import (
    PROTOCOL_NAME,
    TAG_LEN,
    HandshakeError,
    Initiator,
    NoiseError,
    Responder,
)

__all__ = [
    "INITIATION_LEN",
    "MAX_PLAINTEXT",
    "MAX_RECORD",
    "PROTOCOL_NAME",
    "RESPONSE_LEN",
    "Accepted",
    "ClientHandshake",
    "HandshakeError",
    "NoiseError",
    "NoiseTransport",
    "accept_initiation",
    "early_payload",
    "error_message",
    "prologue",
]

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_ERROR = 3
MSG_RECORD = 4

HEADER_LEN = 3
INITIATION_HEADER_LEN = 5
INITIATION_LEN = 101
RESPONSE_LEN = 51

# Every record limit derives from this one, as in controlbase/conn.go.
MAX_RECORD = 4096
MAX_CIPHERTEXT = MAX_RECORD - HEADER_LEN
MAX_PLAINTEXT = MAX_CIPHERTEXT - TAG_LEN

# 2^64-1 is never used as a nonce, matching controlbase's invalidNonce.
_NONCE_LIMIT = (1 << 64) - 1
_MAX_ERROR_TEXT = 0xFFFF

_INITIATION_HEADER = struct.Struct(">HBH")
_HEADER = struct.Struct(">BH")
_NONCE = struct.Struct(">IQ")  # 4 zero bytes, then the counter big-endian

_PROTOCOL_VERSION_PREFIX = b"Tailscale Control Protocol v"
EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"

Rng = Callable[[int], bytes]


def prologue(version: int) -> bytes:
    """The prologue both sides mix in: the client's version, in decimal."""
    return _PROTOCOL_VERSION_PREFIX + str(version).encode("ascii")


def _nonce(counter: int) -> bytes:
    return _NONCE.pack(0, counter)


class NoiseTransport:
    """One direction pair of record ciphers for an established connection.

    A receive failure kills the receive side for good (the peers are no longer
    in step), as controlbase does; the send side is independent of it.
    """

    def __init__(self, *, send_key: bytes, receive_key: bytes) -> None:
        self._send_cipher = ChaCha20Poly1305(send_key)
        self._send_counter = 0
        # Only the key is kept: a cipher object holds ~2.3 KB of OpenSSL
        # contexts outside Python's heap, and a streaming client sends a few
        # records at the start and little after (making one per call: ~1 us).
        self._receive_key: bytes | None = receive_key
        self._receive_counter = 0
        self._inbound = bytearray()
        self._outbound = bytearray()

    def receive_data(self, data: bytes) -> list[bytes]:
        """Decrypt every whole record now buffered; keeps any partial tail.

        Empty records are legal and yield nothing. On NoiseError the records
        decrypted earlier in the same call are dropped too: the connection is
        closing, and its remaining bytes cannot be trusted to be in order.
        """
        if self._receive_key is None:
            raise NoiseError("connection is unusable after an earlier protocol error")
        self._inbound += data
        plaintexts: list[bytes] = []
        pos = 0
        cipher: ChaCha20Poly1305 | None = None
        try:
            while (end := self._record_end(pos)) is not None:
                if cipher is None:
                    cipher = ChaCha20Poly1305(self._receive_key)
                plaintext = self._open(cipher, bytes(self._inbound[pos + HEADER_LEN : end]))
                pos = end
                if plaintext:
                    plaintexts.append(plaintext)
        except NoiseError:
            self._receive_key = None
            self._inbound.clear()
            raise
        del self._inbound[:pos]
        return plaintexts

    def _record_end(self, pos: int) -> int | None:
        """Checks the header at `pos`; returns where the record ends if it is all here."""
        if len(self._inbound) - pos < HEADER_LEN:
            return None
        msg_type, length = _HEADER.unpack_from(self._inbound, pos)
        if msg_type != MSG_RECORD:
            raise NoiseError(f"received message type {msg_type} where a record was expected")
        if HEADER_LEN + length > MAX_RECORD:
            raise NoiseError(
                f"received a {HEADER_LEN + length}-byte record; the limit is {MAX_RECORD}"
            )
        if length < TAG_LEN:
            raise NoiseError("received a record too short to hold its authentication tag")
        end = pos + HEADER_LEN + length
        return end if end <= len(self._inbound) else None

    def _open(self, cipher: ChaCha20Poly1305, ciphertext: bytes) -> bytes:
        if self._receive_counter >= _NONCE_LIMIT:
            raise NoiseError("too many records received on one connection")
        nonce = _nonce(self._receive_counter)
        self._receive_counter += 1
        try:
            return cipher.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise NoiseError("received a record that failed authentication") from None

    def send(self, plaintext: bytes) -> None:
        """Encrypt `plaintext` into as many records as it needs (none if empty)."""
        if 0 < len(plaintext) <= MAX_PLAINTEXT:  # one record (a delta): no slicing
            self._seal(bytes(plaintext))
            return
        view = memoryview(plaintext)
        for start in range(0, len(view), MAX_PLAINTEXT):
            self._seal(bytes(view[start : start + MAX_PLAINTEXT]))

    def sealed(self, plaintext: bytes) -> bytes:
        """`send(plaintext)` then `data_to_send()`: what is queued and
        `plaintext` as records. A plaintext that fits one record, with
        nothing queued, is that record, made without the queue."""
        if self._outbound or not 0 < len(plaintext) <= MAX_PLAINTEXT:
            self.send(plaintext)
            return self.data_to_send()
        return self._record(plaintext)

    def _seal(self, chunk: bytes) -> None:
        self._outbound += self._record(chunk)

    def _record(self, chunk: bytes) -> bytes:
        counter = self._send_counter
        if counter >= _NONCE_LIMIT:
            raise NoiseError("too many records sent on one connection")
        # The nonce packed here, not through `_nonce`: a mesh wave seals a
        # record per peer, and the call and concatenation were a fifth of it.
        ciphertext = self._send_cipher.encrypt(_NONCE.pack(0, counter), chunk, None)
        self._send_counter = counter + 1
        return _HEADER.pack(MSG_RECORD, len(ciphertext)) + ciphertext

    def data_to_send(self) -> bytes:
        """Drain the ciphertext queued by `send`."""
        out = bytes(self._outbound)
        self._outbound.clear()
        return out


@dataclass(frozen=True, slots=True)
class Accepted:
    """A completed server-side handshake."""

    response: bytes
    machine_key: MachinePublic
    version: int
    transport: NoiseTransport
    handshake_hash: bytes


def accept_initiation(
    server_key: MachinePrivate,
    initiation: bytes,
    *,
    ephemeral: MachinePrivate | None = None,
    rng: Rng = os.urandom,
) -> Accepted:
    """Answer a client's 101-byte initiation (from X-Tailscale-Handshake).

    Raises HandshakeError; its text may be sent back with `error_message`.
    """
    # Bounds first: nothing is parsed until the size is exactly right.
    if len(initiation) != INITIATION_LEN:
        raise HandshakeError("wrong handshake initiation size")
    version, msg_type, length = _INITIATION_HEADER.unpack_from(initiation)
    if msg_type != MSG_INITIATION:
        raise HandshakeError("unexpected handshake message type")
    if length != INITIATION_LEN - INITIATION_HEADER_LEN:
        raise HandshakeError("wrong handshake initiation length")
    # Any version is accepted here; the caller decides what it supports once
    # the handshake has authenticated it (as controlbase.Server does).
    responder = Responder(prologue(version), server_key)
    # The fixed size leaves room for an empty payload only.
    machine_key, _ = responder.read_message(initiation[INITIATION_HEADER_LEN:])
    body, keys = responder.write_message(ephemeral or MachinePrivate.generate(rng))
    transport = NoiseTransport(
        send_key=keys.responder_to_initiator, receive_key=keys.initiator_to_responder
    )
    return Accepted(
        response=_HEADER.pack(MSG_RESPONSE, len(body)) + body,
        machine_key=machine_key,
        version=version,
        transport=transport,
        handshake_hash=keys.handshake_hash,
    )


def error_message(text: str) -> bytes:
    """A type-3 frame refusing a handshake. Pass fixed text, never peer bytes."""
    payload = text.encode("utf-8")[:_MAX_ERROR_TEXT]
    return _HEADER.pack(MSG_ERROR, len(payload)) + payload


def early_payload(challenge: ChallengePublic) -> bytes:
    """The optional plaintext sent before HTTP/2 (protocol.md §3.4).

    Its 9-byte header is the size of an HTTP/2 frame header, which is how the
    client tells the two apart.
    """
    body = json.dumps({"nodeKeyChallenge": challenge.text}, separators=(",", ":"))
    encoded = body.encode("ascii")
    return EARLY_PAYLOAD_MAGIC + len(encoded).to_bytes(4, "big") + encoded


class ClientHandshake:
    """The initiator side, for tests and our own test clients."""

    def __init__(
        self,
        machine_key: MachinePrivate,
        server_public: MachinePublic,
        version: int,
        *,
        ephemeral: MachinePrivate | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        if not 0 <= version <= 0xFFFF:
            raise ValueError("protocol version must fit in 16 bits")
        self._initiator = Initiator(
            prologue(version), machine_key, ephemeral or MachinePrivate.generate(rng), server_public
        )
        body = self._initiator.write_message()
        self._initiation = _INITIATION_HEADER.pack(version, MSG_INITIATION, len(body)) + body
        self.handshake_hash: bytes | None = None

    def initiation(self) -> bytes:
        return self._initiation

    def finish(self, response: bytes) -> NoiseTransport:
        """Complete the handshake with exactly the server's response bytes."""
        if len(response) >= HEADER_LEN and response[0] == MSG_ERROR:
            (length,) = struct.unpack_from(">H", response, 1)
            text = response[HEADER_LEN : HEADER_LEN + min(length, 200)]
            raise HandshakeError(f"server refused the handshake: {text!r}")
        if len(response) != RESPONSE_LEN:
            raise HandshakeError("wrong handshake response size")
        msg_type, length = _HEADER.unpack_from(response)
        if msg_type != MSG_RESPONSE:
            raise HandshakeError("unexpected handshake message type")
        if length != RESPONSE_LEN - HEADER_LEN:
            raise HandshakeError("wrong handshake response length")
        _, keys = self._initiator.read_message(response[HEADER_LEN:])
        self.handshake_hash = keys.handshake_hash
        return NoiseTransport(
            send_key=keys.initiator_to_responder, receive_key=keys.responder_to_initiator
        )
