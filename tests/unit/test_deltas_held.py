"""What `Deltas` keeps between waves: the newest messages, within a byte
budget and their hold, so that a registration storm's old join deltas do not
stay in the server's memory after it."""

from __future__ import annotations

from datetime import UTC, datetime

from server.tailnet.mapencode import Deltas

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def entry(n: int, size: int = 30_000) -> bytes:
    return b'{"ID":%d,"Pad":"%b"}' % (n, b"x" * size)


def test_a_storm_of_big_deltas_keeps_only_the_newest_within_the_budget() -> None:
    deltas = Deltas()
    made = [deltas.message("PeersChanged", [entry(n)], [], [], T0) for n in range(40)]
    assert deltas.encoded == 40
    assert 0 < deltas.held_bytes <= Deltas.MAX_HELD_BYTES
    # The newest is still the very object a fellow viewer is given...
    assert deltas.message("PeersChanged", [entry(39)], [], [], T0) is made[-1]
    # ...the oldest was let go, and is made again if asked for.
    again = deltas.message("PeersChanged", [entry(0)], [], [], T0)
    assert again is not made[0] and again == made[0]
    assert deltas.encoded == 41


def test_messages_past_their_hold_are_let_go_at_the_next_one() -> None:
    deltas = Deltas()
    deltas.message("PeersChanged", [entry(1)], [], [], T0)
    deltas.shared(b'{"PacketFilter":[%b]}' % (b"1," * 5000 + b"1"), T0)
    held = deltas.held_bytes
    assert held > 2 * 10_000
    later = T0 + Deltas.HOLD
    small = deltas.message("PeersChanged", [entry(2, 10)], [], [], later)
    assert deltas.held_bytes == len(small)


def test_a_message_made_again_after_its_hold_counts_once() -> None:
    deltas = Deltas()
    first = deltas.message("PeersChanged", [entry(1, 100)], [], [], T0)
    second = deltas.message("PeersChanged", [entry(1, 100)], [], [], T0 + Deltas.HOLD)
    assert second is not first
    assert deltas.held_bytes == len(second)


def test_a_quiet_tailnet_lets_go_of_the_last_waves_messages() -> None:
    deltas = Deltas()
    deltas.message("PeersChanged", [entry(1)], [], [], T0)
    deltas.shared(b'{"PacketFilter":[1]}', T0 + Deltas.HOLD / 2)
    deltas.expire(T0 + Deltas.HOLD / 2)
    assert deltas.held_bytes > 30_000  # both still within their hold
    deltas.expire(T0 + Deltas.HOLD)
    assert 0 < deltas.held_bytes < 100  # the first went, the second is younger
    deltas.expire(T0 + 2 * Deltas.HOLD)
    assert deltas.held_bytes == 0
