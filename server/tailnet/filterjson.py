"""The JSON of a packet filter's shape, kept once and filled per node.

A `ShapedFilter` (gitctl/policy/filtershape.py) is a shape shared by many
nodes, the node's own address texts and its rules' sources. `Fragments`
(mapencode.py) encodes a shape once, as `shape_template` gives it: the
pieces its own encoding makes of the shape filled with stand-ins, split
where each stand-in stands, so a node's filter is those pieces with its
texts (and the sources, kept pieces themselves) between them. Made by the
encoder it replaces, the template is byte for byte what encoding the
rendered rules gives (tests/unit/test_filter_shapes.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from gitctl.policy.filtershape import FilterShape, ShapedFilter

__all__ = ["Template", "fill_sources", "holds_own_texts", "shape_template"]

# (pieces before the first stand-in, then per stand-in its place and the
# pieces after it): a node's text n is place n, rule n's sources -1 - n.
Template = tuple[list[bytes], list[tuple[int, list[bytes]]]]

# A node's own text n, or rule n's sources (the whole list of stand-ins).
_STAND_IN = re.compile(rb'"\\u0000(\d+)\\u0000"|\["\\u0001(\d+)\\u0001"[^\]]*\]')


def _stand_in(place: int) -> str:
    """A text no address is, standing for a node's own text ``place``."""
    return f"\x00{place}\x00"


def _src_stand_in(rule: int) -> str:
    """A text no address is, standing in for rule ``rule``'s sources."""
    return f"\x01{rule}\x01"


def shape_template(
    shape: FilterShape,
    worth: tuple[bool, ...],
    min_len: int,
    add_object: Callable[[list[bytes], Any, Callable[[Any], bytes]], None],
    encode: Callable[[Any], bytes],
) -> Template:
    """``add_object``'s pieces for the shape filled with stand-ins, split
    where each stand-in stands. Rules' sources long enough to be kept apart
    (``worth``: at least ``min_len`` texts) come last in their rule, short
    ones first, so each gets stand-ins of its kind."""
    stand_ins = tuple(map(_stand_in, range(shape.size)))
    srcs = tuple([_src_stand_in(n)] * (min_len if long else 1) for n, long in enumerate(worth))
    out: list[bytes] = []
    for n, rule in enumerate(shape.fill(stand_ins, srcs)):
        out.append(b"," if n else b"[")
        add_object(out, rule, encode)  # stand-ins are kept nowhere
    out.append(b"]" if shape.recipe else b"[]")
    runs: list[list[bytes]] = [[]]
    places: list[int] = []
    for piece in out:
        for n, part in enumerate(_STAND_IN.split(piece)):
            if n % 3 == 0:
                if part:
                    runs[-1].append(part)
            elif part:  # (own text, sources): one of the two groups
                places.append(int(part) if n % 3 == 1 else -1 - int(part))
                runs.append([])
    return runs[0], list(zip(places, runs[1:], strict=True))


def fill_sources(
    template: Template,
    srcs: Sequence[list[str]],
    worth: Sequence[bool],
    text_list: Callable[[list[str]], bytes],
    encode: Callable[[Any], bytes],
    apart: Callable[[bytes], bool],
) -> Template:
    """``template`` with each rule's sources in place (kept pieces where
    ``worth``, by ``text_list``): a template of the node's own texts alone,
    the same for every node holding these sources. Pieces between two own
    texts are joined into one, but for those ``apart`` says a message must
    name (where they are is worked out per message, piece by piece)."""
    first, rest = template
    head = list(first)
    runs: list[tuple[int, list[bytes]]] = []
    run = head
    for place, after in rest:
        if place >= 0:
            run = []
            runs.append((place, run))
        else:
            rule = -1 - place
            run.append(text_list(srcs[rule]) if worth[rule] else encode(srcs[rule]))
        run.extend(after)
    return _joined(head, apart), [(place, _joined(run, apart)) for place, run in runs]


def _joined(run: list[bytes], apart: Callable[[bytes], bool]) -> list[bytes]:
    out: list[bytes] = []
    pending: list[bytes] = []
    for piece in run:
        if apart(piece):
            if pending:
                out.append(b"".join(pending))
                pending = []
            out.append(piece)
        else:
            pending.append(piece)
    if pending:
        out.append(b"".join(pending))
    return out


def holds_own_texts(msg: dict[str, Any]) -> bool:
    """Whether the message holds its node's own addresses (a filter under
    autogroup:self): its body is no other node's, and hashing it to find
    one that is (a 7.9 KB body at 200 nodes a user) only costs."""
    rules = msg.get("PacketFilter")
    return type(rules) is ShapedFilter and bool(rules.texts)
