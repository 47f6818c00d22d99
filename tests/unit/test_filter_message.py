"""A commit's message that holds only a session's own packet filter is made
whole at once (filtermsg.py): the same bytes as the general path, taken only
when nothing else is due."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import session as session_module
from server.tailnet.mapper import build_map
from tests.unit.control_client import T0
from tests.unit.test_commit_fanout import USERS, source, store, streaming

__all__ = ["store"]  # the fixture


def spied(monkeypatch: pytest.MonkeyPatch, *, fast: bool = True) -> list[int]:
    """Calls of the whole-message path (one per message it made); with
    ``fast`` False it is never taken (the general path, for reference)."""
    calls: list[int] = []
    made = session_module.own_filter_message
    only = session_module.sends_own_filter_only

    def making(*args: Any) -> bytes:
        calls.append(1)
        return made(*args)

    monkeypatch.setattr(session_module, "own_filter_message", making)
    monkeypatch.setattr(session_module, "sends_own_filter_only", only if fast else lambda _: False)
    return calls


def commit_bytes(store: Store, ports: str, *, join: bool = False) -> dict[int, bytes]:
    """Every session's message (raw) after a commit to ``ports``; ``join``:
    a node joins first, which its user's sessions have not been sent yet."""
    registry, tailnet, streams = streaming(store)
    if join:
        raw = (10_000).to_bytes(32, "big")
        registry.register(
            Registration(
                machine_key=MachinePublic(raw),
                node_key=NodePublic(raw),
                hostname="new",
                user="u0",
                now=T0,
            )
        )
    tailnet.swap_source(source("c1", ports))
    out = {}
    for node_id, (handle, session) in streams.items():
        msg = session.step(tailnet.context, handle.take_wake(), T0)
        assert msg is not None
        out[node_id] = msg
    for node_id in out:  # what each holds is a fresh map's filter
        fresh = build_map(tailnet.context, node_id, T0)
        assert fresh is not None
        want = json.loads(json.dumps(list(fresh.top["PacketFilter"])))
        assert json.loads(out[node_id])["PacketFilter"] == want
    return out


def test_a_filter_only_commit_is_made_whole_and_as_the_general_path_makes_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spied(monkeypatch)
    fast = commit_bytes(store, "22,443")
    assert len(calls) == len(fast)  # every session's message made at once
    monkeypatch.undo()
    spied(monkeypatch, fast=False)
    other = open_store(Path(":memory:"))  # a second, identical tailnet
    try:
        general = commit_bytes(other, "22,443")
    finally:
        other.close()
    assert fast.keys() == general.keys()
    for node_id, msg in fast.items():
        assert bytes(msg) == bytes(general[node_id]) and type(msg) is type(general[node_id])
        assert getattr(msg, "pieces", ()) == getattr(general[node_id], "pieces", ())


def test_a_session_behind_a_join_takes_the_general_path(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spied(monkeypatch)
    sent = commit_bytes(store, "22,443", join=True)
    behind = {n for n, msg in sent.items() if "PeersChanged" in json.loads(msg)}
    # The joiner's fellow users' sessions learn of it in the commit's message.
    assert len(behind) == len(sent) // USERS
    assert len(calls) == len(sent) - len(behind)


def test_a_commit_that_also_changes_dns_sends_it_with_the_filter(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the filter changed object: `_top_filter`; DNS too: every field looked at.
    calls = spied(monkeypatch)
    _, tailnet, streams = streaming(store)
    changed = replace(source("c1", "22"), dns_config={"Domains": ["other.example"]})
    tailnet.swap_source(changed)
    for handle, session in streams.values():
        msg = json.loads(session.step(tailnet.context, handle.take_wake(), T0) or b"{}")
        assert msg["DNSConfig"] == tailnet.context.dns_config
        assert "PacketFilter" in msg
    assert calls == []
