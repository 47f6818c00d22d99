"""A map-response body split into its framed messages, still compressed.

Each message is `u32 little-endian length ‖ zstd frame(s)` (server/protocol/
mapframe.py). The load generator's clients hand each whole message, prefix
and all, to `decode.SharedDecodes`, which inflates and decodes the bytes once
for every client they reach. Sans-IO, bounded before anything is buffered.
"""

from __future__ import annotations

import struct

from server.protocol.mapframe import MAX_MESSAGE, MapFrameError

__all__ = ["MessageSplitter"]

_LENGTH = struct.Struct("<I")


class MessageSplitter:
    """Bytes of one map stream in, whole framed messages out."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, pos)
            if length > self._max:
                raise MapFrameError(
                    f"map message declares {length} bytes; the limit is {self._max}"
                )
            stop = pos + _LENGTH.size + length
            if stop > end:
                break
            messages.append(bytes(buffer[pos:stop]))
            pos = stop
        del buffer[:pos]
        return messages
