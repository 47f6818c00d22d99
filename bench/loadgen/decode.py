"""MapResponse JSON decoded as a load generator's client keeps it.

A simulated client keeps a few fields of each peer (fleet.KEEP_PEER_FIELDS);
a whole Node is ~30 fields, Hostinfo the largest. Decoding the peer lists
straight into those few fields leaves the rest unbuilt: a list of 1,000
Nodes of ~830 bytes each decodes in 1.7 ms instead of 4.2 ms, and needs no
second pass to pick the fields (~1 ms more).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypedDict

import msgspec

from server.protocol.mapframe import MapFrameDecoder, MapFrameError

__all__ = [
    "PEER_LISTS",
    "SHARED_DECODES",
    "SharedDecodes",
    "decode_json",
    "decoder_keeping",
    "kept_decoder",
]

# Map messages decoded as json.loads would (the same dicts), in a third less
# time: a simulated mesh decodes every join's delta a thousand times over, on
# the cores the server runs on.
decode_json: Callable[[bytes], Any] = msgspec.json.Decoder().decode
# The MapResponse fields that hold whole Nodes.
PEER_LISTS = frozenset({"Peers", "PeersChanged"})
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


@functools.cache
def kept_decoder(keep: frozenset[str]) -> Callable[[bytes], dict[str, Any]]:
    """A decoder making what json.loads makes, except that each Node in
    `PEER_LISTS` holds only the fields named in `keep` (those it has)."""
    # total=False: a Node without one of them (Online unknown) decodes all the same.
    node = TypedDict("node", dict.fromkeys(sorted(keep), Any), total=False)  # type: ignore[misc]
    peers = msgspec.json.Decoder(list[node] | None).decode

    def decode(raw: bytes) -> dict[str, Any]:
        return {
            key: peers(value) if key in PEER_LISTS else decode_json(value)
            for key, value in _fields(raw).items()
        }

    return decode


def decoder_keeping(keep: frozenset[str] | None) -> Callable[[bytes], dict[str, Any]]:
    """What a netmap keeping `keep` (None: every field) applies: JSON decoded
    with the kept peer fields only."""
    return decode_json if keep is None else kept_decoder(keep)


# Messages held by `SharedDecodes`: more than the waves whose deltas are in
# flight to a process's clients at once, fewer than would hold its memory.
SHARED_DECODES = 64


class SharedDecodes:
    """Messages decoded once for every client of a process they reach.

    The server sends a wave's delta to every client as the very same bytes
    (mapframe.SharedMessage): a 1,000-node mesh's join reaches ~999 clients,
    and inflating and decoding it for each was most of the load generator's
    CPU. Keyed by the framed bytes (the length prefix included), so only
    byte-identical messages share a decode. The message returned is shared:
    a netmap applying it must copy what it changes (`ClientNetmap.apply_shared`).
    """

    def __init__(
        self, decode: Callable[[bytes], dict[str, Any]], limit: int = SHARED_DECODES
    ) -> None:
        self._decode = decode
        self._limit = limit
        self._held: dict[bytes, dict[str, Any]] = {}
        self._inflater = MapFrameDecoder()
        self.decoded = 0  # misses, for tests and profiles

    def __call__(self, framed: bytes) -> dict[str, Any]:
        held = self._held.get(framed)
        if held is not None:
            return held
        try:
            (raw,) = self._inflater.receive_data(framed)
        except (MapFrameError, ValueError):
            self._inflater = MapFrameDecoder()  # whatever it buffered is not a message
            raise
        message = self._decode(raw)
        self.decoded += 1
        if len(self._held) >= self._limit:
            del self._held[next(iter(self._held))]  # the oldest
        self._held[framed] = message
        return message
