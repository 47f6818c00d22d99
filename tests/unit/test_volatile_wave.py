"""A volatile wave in bulk (server/tailnet/wave.py `VolatileWave`): a viewer
it can vouch for gets the one shared frame without a step, anyone else is
handed back to the general path, and every client still ends with what a
fresh map gives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from server.protocol.mapframe import MapFrameDecoder, MapFrameEncoder
from server.tailnet import SessionHandle
from server.tailnet.handle import Deliveries
from server.tailnet.mapper import build_map
from server.tailnet.nodejson import owner_of
from server.tailnet.session import MapSession
from server.tailnet.wave import StreamOutlet, VolatileWave
from tests.unit.control_client import T0
from tests.unit.test_mapper_deltas import Mesh, Stream


class Outlets:
    """Each stream's outlet; what a connection was handed is decoded and
    applied to its client's netmap. `refuse`: node ids whose send_now says
    no (a closed window, a backed-up socket)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.refuse: set[int] = set()
        self.woken: set[int] = set()  # node ids whose task was woken (not idle in `deliver`)
        self.frames: dict[int, list[bytes]] = {}
        self.sent: list[tuple[list[SessionHandle], int]] = []
        self.wave = VolatileWave(
            lambda: mesh.tailnet.context, lambda: T0, lambda h, n: self.sent.append((h, n))
        )
        for node_id, stream in mesh.streams.items():
            stream.handle.outlet = StreamOutlet(
                stream.session, MapFrameEncoder(), self._send_now(node_id, stream)
            )

    def _send_now(self, node_id: int, stream: Stream) -> Callable[[bytes], bool]:
        decoder = MapFrameDecoder()

        def send_now(frame: bytes) -> bool:
            if node_id in self.refuse:
                return False
            self.frames.setdefault(node_id, []).append(frame)
            for msg in decoder.receive_data(frame):
                stream.netmap.apply(json.loads(msg))
            return True

        return send_now

    def run(self) -> list[SessionHandle]:
        """The settle due, then the wave over every woken handle; what it
        hands back is stepped as `ControlHandler._deliver` would."""
        timers, self.mesh.timers = self.mesh.timers, []
        for fire in timers:
            fire()
        due = [s.handle for s in self.mesh.streams.values() if s.handle.peers or s.handle.full]
        for handle in due:
            # Marked while its stream idled: `Deliveries` holds it, its task sleeps on.
            if handle.node_id not in self.woken:
                handle.wake.clear()
        rest = self.wave(due)
        ctx = self.mesh.tailnet.context
        for handle in rest:
            stream = self.mesh.streams[handle.node_id]
            msg = stream.session.step(ctx, handle.take_wake(), T0)
            if msg is not None:
                stream.netmap.apply(json.loads(msg))
        return rest


def _move(mesh: Mesh, node_id: int, last: int) -> None:
    node = mesh.store.get_node(node_id)
    assert node is not None
    mesh.registry.update_from_map(node, now=T0, endpoints=[f"192.0.2.{last}:41641"])


def _assert_fresh(mesh: Mesh) -> None:
    ctx = mesh.tailnet.context
    for node_id, stream in mesh.streams.items():
        want = build_map(ctx, node_id, T0)
        assert want is not None
        assert stream.netmap.peers == {p: json.loads(e) for p, e in want.peers.items()}
        assert set(stream.netmap.profiles) == set(want.profiles)


def test_a_wave_sends_every_viewer_the_one_shared_frame_without_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mesh = Mesh(6)
    outlets = Outlets(mesh)
    mover = next(iter(mesh.streams))
    _move(mesh, mover, 7)

    def no_step(*args: object) -> None:
        raise AssertionError("a session stepped")

    monkeypatch.setattr(MapSession, "step", no_step)
    assert outlets.run() == []
    viewers = set(mesh.streams) - {mover}
    assert set(outlets.frames) == viewers
    frames = {id(f) for sent in outlets.frames.values() for f in sent}
    assert len(frames) == 1  # made once, the very object down every connection
    assert outlets.wave.delivered == len(viewers)
    handles, size = outlets.sent[0]
    assert len(handles) == len(viewers) and size == len(viewers) * len(outlets.frames[mover + 1][0])
    assert all(mesh.streams[v].handle.peers is None for v in viewers)
    monkeypatch.undo()
    _assert_fresh(mesh)


def test_the_frame_is_the_one_the_general_path_sends() -> None:
    """Same bytes as a step of the session would have framed."""
    bulk, general = Mesh(4), Mesh(4)
    outlets = Outlets(bulk)
    for mesh in (bulk, general):
        _move(mesh, 1, 9)
    outlets.run()
    general.timers.pop()()
    ctx = general.tailnet.context
    for node_id, stream in general.streams.items():
        msg = stream.session.step(ctx, stream.handle.take_wake(), T0)
        if node_id == 1:
            continue
        assert msg is not None
        assert outlets.frames[node_id] == [MapFrameEncoder().encode(msg)]


@pytest.mark.parametrize(
    "behind",
    [
        "window closed",
        "ping due",
        "keep-alive due",
        "woken for its task",
        "not idle",
        "users replaced",
        "profile",
    ],
)
def test_a_viewer_it_cannot_vouch_for_takes_the_general_path(behind: str) -> None:
    mesh = Mesh(5)
    outlets = Outlets(mesh)
    mover, odd = 1, 3
    handle = mesh.streams[odd].handle
    node = mesh.store.get_node(mover)
    assert node is not None
    if behind == "window closed":
        outlets.refuse.add(odd)
    elif behind == "ping due":
        handle.ping = "https://example.invalid/ping"
    elif behind == "keep-alive due":
        handle.keepalive = True
    elif behind == "woken for its task":
        outlets.woken.add(odd)
    elif behind == "not idle":
        handle.outlet = None
    elif behind == "users replaced":  # its profiles came from other (equal) users
        session = mesh.streams[odd].session
        session._users = dict(mesh.tailnet.context.users)
    else:  # the mover's owner's profile unsent: the delta must carry it
        mesh.streams[odd].session._profiles.discard(owner_of(node)[0])
    _move(mesh, mover, 5)
    rest = outlets.run()
    assert rest == [handle]
    assert odd not in outlets.frames
    assert outlets.wave.delivered == 3  # the others went in bulk
    _assert_fresh(mesh)


def test_a_view_from_rebuilt_views_that_give_it_again_goes_in_bulk() -> None:
    """Views rebuilt by a change that left this node's view as it was: the
    same delta as `step` sends, and the next wave needs no lookup."""
    mesh = Mesh(4)
    outlets = Outlets(mesh)
    session = mesh.streams[3].session
    session._looked_up = None  # as if its view was looked up in views since dropped
    _move(mesh, 1, 6)
    assert outlets.run() == []
    assert outlets.wave.delivered == 3
    assert session._looked_up is not None and session._looked_up() is mesh.tailnet.views
    _assert_fresh(mesh)


def test_movers_that_came_together_go_in_bulk_as_one_frame() -> None:
    mesh = Mesh(5)
    outlets = Outlets(mesh)
    _move(mesh, 1, 3)
    _move(mesh, 2, 4)
    # 1 and 2 see one mover each and their own record changed: the general path.
    assert {h.node_id for h in outlets.run()} == {1, 2}
    assert outlets.wave.delivered == 3
    frames = {id(f) for v in (3, 4, 5) for f in outlets.frames[v]}
    assert len(frames) == 1
    _assert_fresh(mesh)


def test_a_viewer_not_sent_one_mover_s_profile_takes_the_general_path() -> None:
    mesh = Mesh(5)
    outlets = Outlets(mesh)
    node = mesh.store.get_node(2)
    assert node is not None
    mesh.streams[4].session._profiles.discard(owner_of(node)[0])
    _move(mesh, 1, 3)
    _move(mesh, 2, 4)
    assert {h.node_id for h in outlets.run()} == {1, 2, 4}
    assert outlets.wave.delivered == 2
    _assert_fresh(mesh)


def test_a_canary_hold_takes_the_general_path() -> None:
    mesh = Mesh(4)
    outlets = Outlets(mesh)
    canary = VolatileWave(lambda: None, lambda: T0, lambda h, n: None)
    outlets.wave = canary
    _move(mesh, 1, 5)
    assert len(outlets.run()) == 3
    assert canary.delivered == 0
    _assert_fresh(mesh)


def test_deliveries_fall_back_to_each_stream_when_the_wave_fails() -> None:
    delivered: list[int] = []

    def failing(due: list[SessionHandle]) -> list[SessionHandle]:
        raise RuntimeError("boom")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _, context: errors.append(context["exception"]))
        deliveries = Deliveries()
        deliveries.bulk = failing
        handles = [SessionHandle(n, deliveries) for n in (1, 2)]
        for handle in handles:
            handle.full = False
            handle.deliver = lambda n=handle.node_id: delivered.append(n) is None
            handle.mark_peer(9)
        await asyncio.sleep(0)
        assert sorted(delivered) == [1, 2]
        assert deliveries.delivered == 2
        assert len(errors) == 1

    asyncio.run(scenario())
