"""The load generator's connection protocol (bench/loadgen/pump.py): the
upgrade response head and the Noise response collected however the reads
split them, and every byte after them handed over, once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import hypothesis.strategies as st
from hypothesis import given

from bench.loadgen.pump import MAX_HEAD, UpgradePump

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n\r\n"
RESPONSE = bytes(range(51))
AFTER = b"records and more records"


def run(test: Callable[[UpgradePump], object]) -> object:
    async def main() -> object:
        return test(UpgradePump(len(RESPONSE)))

    return asyncio.run(main())


@given(cuts=st.lists(st.integers(0, len(HEAD + RESPONSE + AFTER)), max_size=6))
def test_the_handshake_and_what_follows_it_in_any_reads(cuts: list[int]) -> None:
    wire = HEAD + RESPONSE + AFTER
    bounds = [0, *sorted(cuts), len(wire)]

    def test(pump: UpgradePump) -> object:
        got: list[bytes] = []
        started = False
        for a, b in zip(bounds, bounds[1:], strict=False):
            pump.data_received(wire[a:b])
            if pump.upgraded.done() and not started:  # as connect() goes on
                pump.start(got.append, lambda: got.append(b"<lost>"))
                started = True
        pump.connection_lost(None)
        assert pump.upgraded.result() == (HEAD, RESPONSE)
        assert b"".join(got) == AFTER + b"<lost>"
        return None

    run(test)


def test_a_refusal_is_its_head_alone() -> None:
    def test(pump: UpgradePump) -> object:
        pump.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        return pump.upgraded.result()

    assert run(test) == (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n", b"")


def test_a_connection_lost_mid_handshake_or_a_runaway_head_fails_it() -> None:
    def lost(pump: UpgradePump) -> object:
        pump.data_received(HEAD + RESPONSE[:10])
        pump.connection_lost(None)
        return pump.upgraded.exception()

    assert "closed during the upgrade" in str(run(lost))

    def runaway(pump: UpgradePump) -> object:
        pump.data_received(b"x" * (MAX_HEAD + 1))
        return pump.upgraded.exception()

    assert "too long" in str(run(runaway))


def test_lost_before_start_is_reported_at_start() -> None:
    def test(pump: UpgradePump) -> object:
        pump.data_received(HEAD + RESPONSE + AFTER)
        pump.connection_lost(None)
        got: list[bytes] = []
        pump.start(got.append, lambda: got.append(b"<lost>"))
        return got

    assert run(test) == [AFTER, b"<lost>"]


def test_nothing_is_handed_over_twice() -> None:
    def test(pump: UpgradePump) -> object:
        pump.data_received(HEAD + RESPONSE + b"a")
        got: list[bytes] = []
        pump.start(got.append, lambda: None)
        pump.data_received(b"b")
        return got

    assert run(test) == [b"a", b"b"]
