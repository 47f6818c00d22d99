"""The whole message of a session whose step after a commit sends only its
own packet filter: ``{"PacketFilter":…,"ControlTime":…}``.

Under autogroup:self that is every session's message after a commit that
changes rules and no peer. `encode_message` and `Deltas.shared` make it in
several passes (a copy of the message dict, its head encoded, the pieces
joined, their offsets summed per piece, the body copied once more to put
the ControlTime in); here the filter's pieces (`Fragments`, kept per shape)
go between a fixed head and the shared stamp and are joined once. Byte for
byte and piece for piece what the general path gives
(tests/unit/test_filter_shapes.py); `MapSession.step` takes it only after
working out that nothing else is due.
"""

from __future__ import annotations

from gitctl.policy.filtershape import ShapedFilter
from server.protocol.mapframe import SplicedMessage
from server.tailnet.mapencode import Fragments

__all__ = ["own_filter_message", "sends_own_filter_only"]

_HEAD = b'{"PacketFilter":'


def sends_own_filter_only(msg: dict[str, object]) -> bool:
    """Whether ``msg`` (top-level fields, no peers) is a shaped filter
    holding its node's own addresses and nothing else: no other session
    builds that body, so it is not looked for among shared ones."""
    if len(msg) != 1:
        return False
    rules = msg.get("PacketFilter")
    return type(rules) is ShapedFilter and bool(rules.texts)


def own_filter_message(fragments: Fragments, rules: ShapedFilter, stamp: bytes) -> bytes:
    """The message holding ``rules`` and ``stamp`` (the closing
    ``"ControlTime":"…"}`` that `Deltas` formats once a second), a
    `SplicedMessage` saying where its long kept pieces are."""
    out = [_HEAD]
    apart = fragments.add_shaped(out, rules)
    out.append(b",")
    out.append(stamp)
    data = b"".join(out)
    if not apart:
        return data
    # (the pieces before each, summed in C: most messages have one)
    pieces = tuple((sum(map(len, out[: 1 + n])), out[1 + n]) for n in apart)
    return SplicedMessage(data, pieces)
