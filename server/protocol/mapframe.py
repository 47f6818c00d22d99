"""Framing of MapResponse bodies on /machine/map (protocol.md §4.2.2).

Each message is `u32 little-endian length ‖ zstd frame of the JSON`. The client
zstd-decodes every message unconditionally, so even a keep-alive is compressed.
Sans-IO: the encoder returns bytes for the HTTP/2 stream, the decoder (for tests
and our own tools) takes bytes in any chunking.
"""

from __future__ import annotations

import struct
import threading
from typing import cast

import zstandard

__all__ = [
    "KEEPALIVE_JSON",
    "MAX_MESSAGE",
    "MapFrameDecoder",
    "MapFrameEncoder",
    "MapFrameError",
    "SharedMessage",
    "SplicedMessage",
]

# What Go's encoding/json makes of MapResponse{KeepAlive: true}.
KEEPALIVE_JSON = b'{"KeepAlive":true}'
# Decoder bound on both the declared (compressed) length and the JSON it
# inflates to; far above any real netmap, far below what hurts a test run.
MAX_MESSAGE = 64 << 20

_LENGTH = struct.Struct("<I")


class MapFrameError(Exception):
    """A map-response stream is malformed."""


_contexts = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compression context per thread and level, shared by every stream.

    Each message is a complete frame, so streams need no context of their
    own; one per stream held on to a workspace sized for its largest map
    (about 200 KB each, a gigabyte for 5,000 connected nodes). Contexts are
    not thread-safe: hence one per thread.
    """
    by_level: dict[int, zstandard.ZstdCompressor] | None = getattr(_contexts, "by_level", None)
    if by_level is None:
        by_level = _contexts.by_level = {}
    compressor = by_level.get(level)
    if compressor is None:
        # Content size in every frame header lets a decoder size its buffer up front.
        compressor = by_level[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True
        )
    return compressor


# Messages many streams send as the very same object (a mesh's join delta)
# are compressed once: the last few framed, by identity, per thread and level.
SHARED_FRAMES = 16

# Frames shorter than this (a node's own commit message under autogroup:self,
# the spans between a spliced message's pieces, deltas) are compressed at
# `FAST_LEVEL`: zstd's negative levels skip Huffman-coding the literals, at
# level 1 a fixed ~3 us a call and most of the cost of a short frame (1.2 KB:
# 4.9 -> 2.6 us for 13% more bytes; 200 B: 3.2 -> 1.4 us for 15%). A commit
# frames one or two of them per session; long frames keep the stream's level.
FAST_BELOW = 2048
FAST_LEVEL = -1


class SharedMessage(bytes):
    """A message that many streams send as this very object (the maker
    says so): `MapFrameEncoder` compresses it once for all of them."""

    __slots__ = ()


class SplicedMessage(bytes):
    """A message that holds long pieces many other messages hold too (a
    user's packet-filter sources, the DERP map), each the very object its
    maker keeps: ``pieces`` are (offset, piece) in order. `MapFrameEncoder`
    compresses each piece once, into a zstd frame of its own shared by every
    message holding it, and the spans between pieces per message: the body
    is several concatenated frames, which decode to the same JSON (RFC 8878
    §3.1: a zstd stream is one or more frames; Go's `zstd.Decoder.DecodeAll`,
    the client's `zstdframe.AppendDecode`, decodes them all). ``shared``: the
    whole message is also a `SharedMessage` (many streams send this object)."""

    pieces: tuple[tuple[int, bytes], ...]
    shared: bool

    def __new__(
        cls, data: bytes, pieces: tuple[tuple[int, bytes], ...], *, shared: bool = False
    ) -> SplicedMessage:
        self = super().__new__(cls, data)
        self.pieces, self.shared = pieces, shared
        return self


# Frames of pieces (`SplicedMessage`), by identity, per thread and level: as
# many as the pieces a commit's fan-out holds at once (one per user's sources).
PIECE_FRAMES = 4096


def _piece_frames(level: int) -> dict[int, tuple[bytes, bytes]]:
    by_level: dict[int, dict[int, tuple[bytes, bytes]]] | None = getattr(_contexts, "pieces", None)
    if by_level is None:
        by_level = _contexts.pieces = {}
    return by_level.setdefault(level, {})


def _shared_frames(level: int) -> dict[int, tuple[bytes, bytes]]:
    by_level: dict[int, dict[int, tuple[bytes, bytes]]] | None = getattr(_contexts, "frames", None)
    if by_level is None:
        by_level = _contexts.frames = {}
    return by_level.setdefault(level, {})


class MapFrameEncoder:
    """One per map stream: frames its messages (and caches its keep-alive).
    A `SharedMessage` framed again, by this stream or another, is compressed
    once: the same frame object comes back."""

    def __init__(self, level: int = 1) -> None:
        self._level = level
        self._fast = min(level, FAST_LEVEL)
        self._keepalive: bytes | None = None

    def encode(self, json_bytes: bytes) -> bytes:
        kind = type(json_bytes)
        if kind is SplicedMessage:
            spliced = cast("SplicedMessage", json_bytes)
            if not spliced.shared:
                return self._spliced(spliced)
        elif kind is not SharedMessage:
            return self._frame(json_bytes)
        frames = _shared_frames(self._level)
        held = frames.get(id(json_bytes))
        if held is not None and held[0] is json_bytes:
            return held[1]
        if kind is SplicedMessage:
            frame = self._spliced(cast("SplicedMessage", json_bytes))
        else:
            frame = self._frame(json_bytes)
        if len(frames) >= SHARED_FRAMES:
            frames.clear()
        frames[id(json_bytes)] = (json_bytes, frame)  # the key's object kept alive
        return frame

    def _frame(self, json_bytes: bytes) -> bytes:
        level = self._fast if len(json_bytes) < FAST_BELOW else self._level
        frame = _compressor(level).compress(json_bytes)
        if len(frame) > 0xFFFFFFFF:
            raise MapFrameError("map response too large for its 32-bit length prefix")
        return _LENGTH.pack(len(frame)) + frame

    def _spliced(self, message: SplicedMessage) -> bytes:
        """Frames of the spans between pieces (per message) and of each piece
        (once, for every message holding it), concatenated."""
        compress, fast = _compressor(self._level).compress, _compressor(self._fast).compress
        held = _piece_frames(self._level)
        view = memoryview(message)
        frames: list[bytes] = []
        at = 0
        for offset, piece in message.pieces:
            if offset > at:
                frames.append((fast if offset - at < FAST_BELOW else compress)(view[at:offset]))
            got = held.get(id(piece))
            if got is None or got[0] is not piece:
                if len(held) >= PIECE_FRAMES:
                    held.clear()
                got = held[id(piece)] = (piece, compress(piece))  # the piece kept alive
            frames.append(got[1])
            at = offset + len(piece)
        if at < len(message):
            frames.append((fast if len(message) - at < FAST_BELOW else compress)(view[at:]))
        size = sum(map(len, frames))
        if size > 0xFFFFFFFF:
            raise MapFrameError("map response too large for its 32-bit length prefix")
        return b"".join([_LENGTH.pack(size), *frames])

    def keepalive(self) -> bytes:
        if self._keepalive is None:
            self._keepalive = self.encode(KEEPALIVE_JSON)
        return self._keepalive


class MapFrameDecoder:
    """Splits a map-response body back into JSON documents."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._decompressor = zstandard.ZstdDecompressor()

    def receive_data(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        pos = 0
        while len(self._buffer) - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, pos)
            if length > self._max:
                raise MapFrameError(
                    f"map message declares {length} bytes; the limit is {self._max}"
                )
            start = pos + _LENGTH.size
            if len(self._buffer) - start < length:
                break
            messages.append(self._inflate(bytes(self._buffer[start : start + length])))
            pos = start + length
        del self._buffer[:pos]
        return messages

    def _inflate(self, message: bytes) -> bytes:
        if not message:
            raise MapFrameError("map message is empty")
        # Go's decoder accepts concatenated frames, so this does too.
        out = bytearray()
        rest = message
        while rest:
            try:
                declared = zstandard.frame_content_size(rest)
                if declared > self._max - len(out):
                    raise MapFrameError("map message inflates past the size limit")
                inflater = self._decompressor.decompressobj()
                out += inflater.decompress(rest)
            except zstandard.ZstdError:
                raise MapFrameError("map message is not valid zstd") from None
            if not inflater.eof:
                raise MapFrameError("map message ends inside a zstd frame")
            if len(out) > self._max:
                raise MapFrameError("map message inflates past the size limit")
            rest = inflater.unused_data
        return bytes(out)
