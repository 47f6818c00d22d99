"""A turn's deliveries step every session first and write the frames after
(server/tailnet/staged.py): clients get the same messages, and a frame that
cannot go then is left to its stream's task, which sends it first."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gitctl.policy import parse_policy
from server.edge.control_conn import ControlConnection
from server.tailnet import SessionHandle
from server.tailnet.session import MapSession
from server.tailnet.staged import StagedSends
from tests.unit.control_client import Device, MapStream, async_test, poll, running_server


async def _quiet(*streams: MapStream) -> None:
    for stream in streams:
        with contextlib.suppress(TimeoutError):
            while True:
                await stream.next(timeout=0.3, keepalives=True)


@async_test
async def test_a_commit_steps_the_turn_s_sessions_before_it_writes_their_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    step, send_now = MapSession.step, ControlConnection._send_now

    def stepped(self: MapSession, *args: Any) -> Any:
        events.append("step")
        return step(self, *args)

    def sent(self: ControlConnection, *args: Any) -> bool:
        events.append("send")
        return send_now(self, *args)

    # Before the streams open: each binds its connection's `_send_now` then.
    monkeypatch.setattr(ControlConnection, "_send_now", sent)
    monkeypatch.setattr(MapSession, "step", stepped)
    async with running_server(tmp_path) as srv:
        streams = [(await poll(srv, Device(f"d{n}")))[1] for n in range(4)]
        await _quiet(*streams)
        events.clear()
        before = srv.tailnet.deliveries.delivered
        rule = {"action": "accept", "src": ["*"], "dst": ["*:47113"]}
        policy = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}, rule]}
        srv.tailnet.swap_source(replace(srv.tailnet.source, id="rule", policy=parse_policy(policy)))
        for stream in streams:
            msg = await stream.wait_for(lambda m: "PacketFilter" in m)
            assert "47113" in str(msg["PacketFilter"])
        # One turn delivered all four without their tasks: four steps, then four writes.
        assert srv.tailnet.deliveries.delivered - before == 4
        assert events == ["step"] * 4 + ["send"] * 4


def test_a_staged_frame_that_cannot_go_is_held_for_its_task_which_is_woken() -> None:
    caught_up: list[SessionHandle] = []
    staged = StagedSends(caught_up.append)
    going, blocked, failing = SessionHandle(1), SessionHandle(2), SessionHandle(3)
    wire: list[bytes] = []
    held: dict[int, list[bytes]] = {1: [], 2: [], 3: []}

    def send(frame: bytes) -> bool:
        wire.append(frame)
        return True

    def broken(frame: bytes) -> bool:
        raise RuntimeError("the connection's seal failed")

    for handle in (going, blocked, failing):
        handle.wake.clear()
    staged.add(send, b"one", going, held[1])
    staged.add(lambda frame: False, b"two", blocked, held[2])
    staged.add(broken, b"three", failing, held[3])
    assert len(staged) == 3 and wire == []  # nothing leaves before the flush
    assert staged.flush() == 2
    assert wire == [b"one"] and caught_up == [going] and held[1] == []
    # Its task sends it first (and meets the error again, in its own stream).
    assert held[2] == [b"two"] and blocked.wake.is_set()
    assert held[3] == [b"three"] and failing.wake.is_set()
    assert not going.wake.is_set()
    assert len(staged) == 0 and staged.flush() == 0
