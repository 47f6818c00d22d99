"""Map messages as bytes: JSON joined from pieces encoded once and shared.

Peer entries (`nodejson.PeerEntries`), values many sessions send alike
(`Fragments`) and whole delta messages (`Deltas`) are encoded once and
spliced into or handed to every session's message by `encode_message`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec

from gitctl.policy.filtershape import FilterShape, ShapedFilter
from server.protocol.mapframe import SharedMessage, SplicedMessage
from server.tailnet.filterjson import Template, fill_sources, shape_template
from server.wire import format_time

__all__ = [
    "ONE_OBJECT",
    "SHARED_FIELDS",
    "SPLICE_MIN",
    "Deltas",
    "Fragments",
    "SharedPiece",
    "encode_json",
    "encode_message",
]

# Top-level fields that many sessions receive alike, or mostly alike: their
# big parts (a rule's SrcIPs, the DERP map) are encoded once, not per session.
SHARED_FIELDS = ("PacketFilter", "SSHPolicy", "DERPMap", "DNSConfig")
ONE_OBJECT = frozenset({"DERPMap", "DNSConfig"})


class Fragments:
    """JSON of values that many sessions send alike, encoded once and spliced
    into each session's message, as peer entries are.

    After a commit under ``autogroup:self`` each of 50,000 nodes gets its own
    packet filter, but the bulk of it, the sources (every address of the
    user's nodes), is one list per user: lists of at least `MIN_LEN` texts
    are encoded once per content; the DERP map and DNS config, the same
    object for every session, once per object. `encoded` counts the values
    encoded (what tests count instead of timing)."""

    MIN_LEN = 8
    MAX_HELD = 1 << 14

    def __init__(self) -> None:
        self._texts: dict[tuple[Any, ...], bytes] = {}
        self._objects: dict[int, tuple[object, bytes]] = {}
        self._lists: dict[int, tuple[object, bytes]] = {}
        self._shapes: dict[tuple[Any, ...], Template] = {}
        self._shape_ids: dict[int, tuple[FilterShape, tuple[bool, ...], Template]] = {}
        # By the sources tuple the nodes of one rule list and shape share (a
        # user's, under autogroup:self): the template with them filled in.
        self._filled: dict[
            int, tuple[tuple[list[str], ...], FilterShape, Template, tuple[int, ...]]
        ] = {}
        self.encoded = 0

    def add(self, out: list[bytes], value: Any, *, one_object: bool = False) -> None:
        """Append the JSON of a top-level field's value to ``out`` as pieces
        (joined once, with the whole message: a rule's sources are the bulk
        of a message, and each copy of them costs); `one_object`: the value
        is one object that every session sends (DERP map, DNS config)."""
        held = self._objects.get(id(value))
        if held is not None and held[0] is value:
            out.append(held[1])
        elif one_object:
            data = SharedPiece(self._object(value))
            if len(self._objects) >= self.MAX_HELD:
                self._objects.clear()
            self._objects[id(value)] = (value, data)
            out.append(data)
        elif type(value) is ShapedFilter:  # packet filter rules, from a shape
            self.add_shaped(out, value)
        elif type(value) in _SEQUENCES:  # packet filter rules
            out.append(b"[")
            for n, item in enumerate(value):
                if n:
                    out.append(b",")
                self._add_object(out, item)
            out.append(b"]")
        else:
            self._add_object(out, value)

    def add_shaped(self, out: list[bytes], value: ShapedFilter) -> tuple[int, ...]:
        """The filter's JSON as its shape's, kept, with the node's own
        address texts and the rules' sources spliced in: what `add` makes of
        the rules themselves, without rendering or encoding them per node.
        The sources are filled in once for every node that shares them, so
        per node only its own texts are (a commit's fan-out is this, per
        session). Returns where, among the pieces appended, are those a
        message says the place of (`SplicedMessage`): the same for every
        node of these sources, so not looked for per message."""
        shape, srcs = value.shape, value.srcs
        held = self._filled.get(id(srcs))
        if held is None or held[0] is not srcs or held[1] is not shape:
            if len(self._filled) >= self.MAX_HELD:
                self._filled.clear()
            filled = self._template(shape, srcs)
            held = self._filled[id(srcs)] = (srcs, shape, filled, _apart_at(filled))
        first, rest = held[2]
        out.extend(first)
        if rest:
            texts = list(map(encode_json, value.texts))
            for place, run in rest:
                out.append(texts[place])
                out.extend(run)
        return held[3]

    def _template(self, shape: FilterShape, srcs: tuple[list[str], ...]) -> Template:
        """The shape's template with ``srcs`` filled in: what is left to
        fill are the node's own texts."""
        worth = tuple(map(self._texts_worth, srcs))
        held = self._shape_ids.get(id(shape))
        if held is None or held[0] is not shape or held[1] != worth:
            # By value once per shape object: a recompile makes equal shapes.
            key = (shape.key, worth)
            template = self._shapes.get(key)
            if template is None:
                if len(self._shapes) >= self.MAX_HELD:
                    self._shapes.clear()
                template = self._shapes[key] = shape_template(
                    shape, worth, self.MIN_LEN, self._add_object, encode_json
                )
            if len(self._shape_ids) >= self.MAX_HELD:
                self._shape_ids.clear()
            held = self._shape_ids[id(shape)] = (shape, worth, template)
        return fill_sources(held[2], srcs, worth, self._text_list, encode_json, _spliced_apart)

    def _object(self, value: Any) -> bytes:
        out: list[bytes] = []
        self._add_object(out, value)
        return b"".join(out)

    def _add_object(
        self,
        out: list[bytes],
        value: Any,
        text_list: Callable[[list[str] | tuple[str, ...]], bytes] | None = None,
    ) -> None:
        """An object with its long lists of texts spliced from what was kept
        (or made by ``text_list``), the rest in one call to the encoder."""
        if type(value) is not dict:
            out.append(encode_json(value))
            return
        texts = [k for k, v in value.items() if type(v) in _SEQUENCES and self._texts_worth(v)]
        if not texts:
            out.append(encode_json(value))
            return
        if len(texts) < len(value):
            rest = encode_json({k: v for k, v in value.items() if k not in texts})
            out.append(rest[:-1])  # "{...", its members
            out.append(b",")
        else:
            out.append(b"{")
        for n, k in enumerate(texts):
            if n:
                out.append(b",")
            out.append(_key(k))
            out.append((text_list or self._text_list)(value[k]))
        out.append(b"}")

    def _texts_worth(self, value: list[Any] | tuple[Any, ...]) -> bool:
        return len(value) >= self.MIN_LEN and type(value[0]) is str

    def _text_list(self, value: list[str] | tuple[str, ...]) -> bytes:
        # The compiler hands every node of a rule the same SrcIPs list
        # (`gitctl.policy.filter.Rule.head`): found by identity, in O(1).
        held = self._lists.get(id(value))
        if held is not None and held[0] is value:
            return held[1]
        data = self._text_content(value)
        if len(self._lists) >= self.MAX_HELD:
            self._lists.clear()
        self._lists[id(value)] = (value, data)
        return data

    def _text_content(self, value: list[str] | tuple[str, ...]) -> bytes:
        """By content: a recompile renders equal lists anew."""
        try:
            data = self._texts.get(key := tuple(value))
        except TypeError:  # not texts after all
            return encode_json(value)
        if data is None:
            if len(self._texts) >= self.MAX_HELD:
                self._texts.clear()
            data = self._texts[key] = SharedPiece(encode_json(value))
            self.encoded += 1
        return data


_SEQUENCES = (list, tuple)


class SharedPiece(bytes):
    """JSON that `Fragments` keeps and hands to many messages: the very
    object, so a message that holds it can say where (`SplicedMessage`)."""

    __slots__ = ()


# Shared pieces at least this long get a zstd frame of their own, compressed
# once for every message holding them (`SplicedMessage`); shorter ones cost
# more in frame overhead than they save.
SPLICE_MIN = 1024


def _spliced_apart(piece: bytes) -> bool:
    """Whether a message says where ``piece`` is (`SplicedMessage`)."""
    return type(piece) is SharedPiece and len(piece) >= SPLICE_MIN


def _apart_at(filled: Template) -> tuple[int, ...]:
    """Positions of the `_spliced_apart` pieces among those `add_shaped`
    appends from ``filled`` (an own text is one piece)."""
    first, rest = filled
    flat: list[bytes] = [*first]
    for _, run in rest:
        flat.append(b"")
        flat.extend(run)
    return tuple(n for n, piece in enumerate(flat) if _spliced_apart(piece))


# msgspec's encoder (the wire types' codec, server/wire/): compact JSON of
# plain dicts, lists and scalars, UTF-8 as is; several times faster than
# json's on the small per-session parts of a message (a node's DstPorts,
# ControlTime), which a commit's fan-out encodes 50,000 times.
def _plain(value: Any) -> Any:
    """What json would make of a value msgspec leaves to a hook: subclasses
    of str and the numbers (wire prefixes, addresses) as their plain selves."""
    if type(value) is ShapedFilter:
        return value.rules
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


encode_json: Callable[[Any], bytes] = msgspec.json.Encoder(enc_hook=_plain).encode


def encode_message(
    msg: dict[str, Any],
    peers_key: str | None = None,
    peers: Iterable[bytes] = (),
    fragments: Fragments | None = None,
) -> bytes:
    """JSON of `msg`, with already-encoded peer entries spliced in as
    `peers_key` and, given `fragments`, its `SHARED_FIELDS` spliced from there
    (the message is joined once from its pieces)."""
    shared: list[tuple[str, Any]] = []
    if fragments is not None and any(k in msg for k in SHARED_FIELDS):
        msg = dict(msg)
        shared = [(key, msg.pop(key)) for key in SHARED_FIELDS if key in msg]
    if not shared and peers_key is None:
        return encode_json(msg)
    head = encode_json(msg)
    out = [head[:-1]] if len(head) > 2 else [b"{"]
    for key, value in shared:
        if len(out) > 1 or len(head) > 2:
            out.append(b",")
        out.append(_key(key))
        assert fragments is not None
        fragments.add(out, value, one_object=key in ONE_OBJECT)
    if peers_key is not None:
        if len(out) > 1 or len(head) > 2:
            out.append(b",")
        out.append(_key(peers_key))
        out.append(b"[%b]" % b",".join(peers))
    out.append(b"}")
    return _spliced(out) if fragments is not None else b"".join(out)


def _spliced(out: list[bytes]) -> bytes:
    """``out`` joined, saying where the long pieces `Fragments` holds are."""
    pieces = [
        (sum(map(len, out[:n])), piece)  # its offset, summed in C
        for n, piece in enumerate(out)
        if _spliced_apart(piece)
    ]
    data = b"".join(out)
    return SplicedMessage(data, tuple(pieces)) if pieces else data


class Deltas:
    """Delta messages that many sessions send alike, encoded once.

    A join or an endpoint change in a mesh gives every viewer the same delta:
    the same peer entries (the shared bytes of `PeerEntries`), the same
    removals and profiles, and nothing of its own. The message is encoded
    once and every session sends the very same `SharedMessage`, so its
    framing (zstd, `server/protocol/mapframe.py`) is shared too; per session
    only HTTP/2 and Noise remain. A delta with top-level fields (a join that
    changes every viewer's filter alike) is encoded per session from shared
    parts, then found by its bytes (`shared`): compressing it is what costs.
    Its ControlTime is the first sender's, reused for at most `HOLD` (the
    client only compares it with its own clock). `encoded` counts the
    messages made (what tests count).

    Only a wave's own sessions ask for its message, so what is held is kept
    small: the oldest goes once the held bytes pass `MAX_HELD_BYTES` (a
    100-node mesh's registration storm left 0.3-0.8 MB of old join deltas
    here, 3-8 KB of every node's share of the RSS), and anything past its
    `HOLD`, which no session can be given any more."""

    HOLD = timedelta(seconds=1)
    MAX_HELD = 64
    MAX_BYTES = 128 << 10  # bodies held (twice: key and message) at most this long
    MAX_HELD_BYTES = 2 * MAX_BYTES  # all held messages (and bodies) together

    def __init__(self) -> None:
        # (peers key, entries, removed, profile ids) -> (profiles, made at, message),
        # oldest first
        self._held: dict[tuple[Any, ...], tuple[list[Any], datetime, bytes]] = {}
        self._held_bytes = 0
        self._stamp: tuple[datetime, bytes] | None = None  # (made at, `_control_time`)
        self.encoded = 0

    def message(
        self,
        peers_key: str | None,
        entries: list[bytes],
        removed: list[int],
        profiles: list[Any],
        now: datetime,
    ) -> bytes:
        # Entries are compared by value (bytes hash once, and equal entries
        # are mostly the same object); profiles, dicts, by identity (kept in
        # the value, so an id is not reused while held).
        key = (peers_key, tuple(entries), tuple(removed), tuple(map(id, profiles)))
        held = self._held.get(key)
        if held is not None and timedelta(0) <= now - held[1] < self.HOLD:
            return held[2]
        msg: dict[str, Any] = {}
        if profiles:
            msg["UserProfiles"] = profiles
        if removed:
            msg["PeersRemoved"] = removed
        msg["ControlTime"] = format_time(now)
        data = SharedMessage(encode_message(msg, peers_key, entries))
        self._hold(key, (profiles, now, data))
        return data

    def shared(self, body: bytes, now: datetime, *, own: bool = False) -> bytes:
        """The message `body` (a JSON object without ControlTime) with its
        ControlTime, the very object other sessions that built the same
        body were given; ``own``: a body no other session builds
        (`holds_own_texts`), not looked for."""
        if own or len(body) > self.MAX_BYTES:  # a full pass over many peers: its own
            return _timed(body, self.stamp(now), shared=False)
        key = (body,)
        held = self._held.get(key)
        if held is not None and timedelta(0) <= now - held[1] < self.HOLD:
            return held[2]
        data = _timed(body, self.stamp(now), shared=True)
        self._hold(key, ([], now, data))
        return data

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def stamp(self, now: datetime) -> bytes:
        """`_control_time`, formatted once per `HOLD` as a shared message's
        is: a commit under autogroup:self gives every session a body of its
        own, and formatting the time was a tenth of building one."""
        stamp = self._stamp
        if stamp is None or not timedelta(0) <= now - stamp[0] < self.HOLD:
            stamp = self._stamp = (now, _control_time(now))
        return stamp[1]

    def expire(self, now: datetime) -> None:
        """Let go of every message past its hold (the sweep's): else the last
        storm's stay until a next wave, 2.5 KB a node at mesh 100."""
        held = self._held
        while held:
            oldest = next(iter(held))
            if timedelta(0) <= now - held[oldest][1] < self.HOLD:
                break
            self._forget(oldest)

    def _hold(self, key: tuple[Any, ...], value: tuple[list[Any], datetime, bytes]) -> None:
        held = self._held
        self._forget(key)  # re-made after its hold: goes last, as the newest
        held[key] = value
        self._held_bytes += _held_size(key, value)
        self.encoded += 1
        now = value[1]
        while len(held) > 1:
            oldest = next(iter(held))
            made = held[oldest][1]
            current = timedelta(0) <= now - made < self.HOLD
            if current and len(held) <= self.MAX_HELD and self._held_bytes <= self.MAX_HELD_BYTES:
                break
            self._forget(oldest)

    def _forget(self, key: tuple[Any, ...]) -> None:
        value = self._held.pop(key, None)
        if value is not None:
            self._held_bytes -= _held_size(key, value)


def _held_size(key: tuple[Any, ...], value: tuple[list[Any], datetime, bytes]) -> int:
    """The bytes a held message keeps alive: itself, and a body that is its key
    (`Deltas.shared`); peer entries are `PeerEntries`' and counted there."""
    body = key[0] if len(key) == 1 else b""
    return len(value[2]) + len(body)


def _timed(body: bytes, stamp: bytes, *, shared: bool) -> bytes:
    """``body`` (a JSON object) with its ControlTime last (``stamp``, a
    `_control_time`), a `SharedMessage` if ``shared``; the pieces a
    `SplicedMessage` body holds stay where they are."""
    data = body[:-1] + (b"," if len(body) > 2 else b"") + stamp
    if type(body) is SplicedMessage:
        return SplicedMessage(data, body.pieces, shared=shared)
    return SharedMessage(data) if shared else data


def _control_time(now: datetime) -> bytes:
    """The last member of a message: its ControlTime, and the closing brace."""
    return b'"ControlTime":"%b"}' % format_time(now).encode()


@lru_cache(maxsize=256)
def _key(name: str) -> bytes:
    """``"name":`` (an object key, made once)."""
    return b"%b:" % encode_json(name)
