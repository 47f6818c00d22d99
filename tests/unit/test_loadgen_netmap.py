"""The load generator's client-side netmap applies MapResponses as tailscale's
control/controlclient/map.go does (`updatePeersStateFromResponse`): what a
simulated client measures is what a real client would hold."""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from bench.loadgen.decode import PEER_LISTS, decode_json, kept_decoder
from bench.loadgen.netmap import ClientNetmap


def peer(pid: int, **fields: Any) -> dict[str, Any]:
    return {"ID": pid, "Key": f"nodekey:{pid:064x}", "Endpoints": [], **fields}


def netmap_with(*peers: dict[str, Any]) -> ClientNetmap:
    netmap = ClientNetmap()
    netmap.apply({"Node": {"ID": 100}, "Peers": list(peers)})
    return netmap


def test_a_full_peer_list_replaces_everything_and_its_deltas_are_ignored() -> None:
    netmap = netmap_with(peer(1), peer(2))
    netmap.apply({"Peers": [peer(3)], "PeersRemoved": [3], "PeersChanged": [peer(4)]})
    assert set(netmap.peers) == {3}


def test_an_empty_peer_list_is_not_a_full_list() -> None:
    netmap = netmap_with(peer(1))
    netmap.apply({"Peers": [], "PeersChanged": [peer(2)]})
    assert set(netmap.peers) == {1, 2}


def test_removed_then_changed_in_one_message() -> None:
    netmap = netmap_with(peer(1), peer(2))
    netmap.apply({"PeersRemoved": [1, 99], "PeersChanged": [peer(2, Name="b"), peer(3)]})
    assert set(netmap.peers) == {2, 3} and netmap.peers[2]["Name"] == "b"


def test_patches_set_what_they_carry_and_skip_zero_ints_and_unknown_peers() -> None:
    netmap = netmap_with(peer(1, HomeDERP=999, Cap=100))
    netmap.apply(
        {
            "PeersChangedPatch": [
                {"NodeID": 1, "DERPRegion": 0, "Cap": 0, "Endpoints": ["127.0.0.1:1"]},
                {"NodeID": 1, "Online": False, "KeyExpiry": "2030-01-01T00:00:00Z"},
                {"NodeID": 7, "Endpoints": ["127.0.0.1:2"]},
            ]
        }
    )
    assert netmap.peers[1]["HomeDERP"] == 999 and netmap.peers[1]["Cap"] == 100
    assert netmap.peers[1]["Endpoints"] == ["127.0.0.1:1"]
    assert netmap.peers[1]["Online"] is False
    assert netmap.peers[1]["KeyExpiry"] == "2030-01-01T00:00:00Z"
    assert set(netmap.peers) == {1}


def test_online_and_seen_changes_touch_known_peers_only() -> None:
    netmap = netmap_with(peer(1, LastSeen="2025-01-01T00:00:00Z"), peer(2))
    netmap.apply(
        {"OnlineChange": {"1": True, "9": True}, "PeerSeenChange": {"1": False, "2": True}},
        now="2025-06-01T12:00:00Z",
    )
    assert netmap.peers[1]["Online"] is True and "LastSeen" not in netmap.peers[1]
    assert netmap.peers[2]["LastSeen"] == "2025-06-01T12:00:00Z"
    assert set(netmap.peers) == {1, 2}


def test_absent_top_level_fields_are_unchanged_and_keepalives_change_nothing() -> None:
    netmap = netmap_with()
    netmap.apply({"DNSConfig": {"Domains": ["a"]}, "PacketFilter": [{"SrcIPs": ["*"]}]})
    netmap.apply({"DNSConfig": None, "Domain": "tailnet.example"})
    netmap.apply({"KeepAlive": True, "PacketFilter": []})
    assert netmap.top["DNSConfig"] == {"Domains": ["a"]}
    assert netmap.top["PacketFilter"] == [{"SrcIPs": ["*"]}]
    assert netmap.top["Domain"] == "tailnet.example" and netmap.node == {"ID": 100}


def test_keep_stores_only_the_named_peer_fields() -> None:
    netmap = ClientNetmap(keep=frozenset({"ID", "Key"}))
    netmap.apply({"Peers": [peer(1, Name="a")], "Node": {"ID": 100}})
    assert netmap.peers[1] == {"ID": 1, "Key": f"nodekey:{1:064x}"}
    assert netmap.peer_with_key(f"nodekey:{1:064x}") is not None


# A server's successive peer lists; the client is sent either the full list or
# the delta between two, in any of the shapes map.go accepts.
PEER_STATES = st.lists(
    st.dictionaries(
        st.integers(1, 12),
        st.fixed_dictionaries(
            {
                "Endpoints": st.lists(st.sampled_from(["127.0.0.1:1", "127.0.0.2:2"]), max_size=2),
                "Online": st.booleans(),
                "HomeDERP": st.integers(1, 3),
            }
        ),
    ),
    min_size=1,
    max_size=8,
)


def _delta(old: dict[int, dict[str, Any]], new: dict[int, dict[str, Any]], style: int) -> Any:
    removed = sorted(set(old) - set(new))
    msg: dict[str, Any] = {"PeersRemoved": removed} if removed else {}
    added = [peer(pid, **new[pid]) for pid in sorted(set(new) - set(old))]
    kept = [pid for pid in sorted(new) if pid in old and old[pid] != new[pid]]
    if style == 0:  # whole entries
        msg["PeersChanged"] = added + [peer(pid, **new[pid]) for pid in kept]
    else:  # patches and online changes, as a server routes volatile facts
        msg["PeersChanged"] = added
        msg["PeersChangedPatch"] = [
            {"NodeID": pid, "Endpoints": new[pid]["Endpoints"], "DERPRegion": new[pid]["HomeDERP"]}
            for pid in kept
        ]
        msg["OnlineChange"] = {str(pid): new[pid]["Online"] for pid in kept}
    return msg


@given(states=PEER_STATES, styles=st.lists(st.integers(0, 2), min_size=8, max_size=8))
def test_any_sequence_of_deltas_equals_the_last_full_list(
    states: list[dict[int, dict[str, Any]]], styles: list[int]
) -> None:
    netmap = ClientNetmap()
    netmap.apply({"Node": {"ID": 100}})
    held: dict[int, dict[str, Any]] = {}
    for state, style in zip(states, styles, strict=False):
        if style == 2 and state:  # a full list (only non-empty lists are full)
            msg: Any = {"Peers": [peer(pid, **fields) for pid, fields in sorted(state.items())]}
        else:
            msg = _delta(held, state, style)
        netmap.apply(json.loads(json.dumps(msg)))  # what the client decodes
        held = state
    assert netmap.peers == {pid: peer(pid, **fields) for pid, fields in held.items()}


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # loaded CI machines
@given(value=JSON_VALUES)
def test_the_load_generator_decodes_messages_as_json_does(value: Any) -> None:
    """The client's faster decoder makes the very dicts json.loads makes."""
    raw = json.dumps(value).encode()
    assert decode_json(raw) == json.loads(raw)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states=PEER_STATES, styles=st.lists(st.integers(0, 2), min_size=8, max_size=8))
def test_a_kept_netmap_holds_the_kept_fields_of_a_full_one(
    states: list[dict[int, dict[str, Any]]], styles: list[int]
) -> None:
    keep = frozenset({"ID", "Endpoints", "Online"})
    full, kept = ClientNetmap(), ClientNetmap(keep=keep)
    decoded = ClientNetmap(keep=keep)  # decodes the kept fields only
    held: dict[int, dict[str, Any]] = {}
    for state, style in zip(states, styles, strict=False):
        if style == 2 and state:
            msg: Any = {"Peers": [peer(pid, **fields) for pid, fields in sorted(state.items())]}
        else:
            msg = _delta(held, state, style)
        raw = json.dumps(msg).encode()
        full.apply(json.loads(raw))
        kept.apply(decode_json(raw))
        assert decoded.apply_shared(kept_decoder(keep)(raw))
        held = state

    # (a patch sets what it carries, kept or not: compared by the kept fields)
    def cut(peers: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {pid: {k: v for k, v in e.items() if k in keep} for pid, e in peers.items()}

    assert cut(kept.peers) == cut(full.peers)
    assert decoded.peers == kept.peers
    assert all(e.keys() <= keep | {"HomeDERP"} for e in kept.peers.values())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(st.sampled_from(["Node", "DERPMap", "Domain", "Peers"]), JSON_VALUES),
    peers=st.lists(st.dictionaries(st.sampled_from(["ID", "Key", "Hostinfo", "Cap"]), JSON_VALUES)),
    where=st.sampled_from(sorted(PEER_LISTS)),
)
def test_kept_decoding_makes_what_json_does_but_the_peers_kept_fields(
    top: dict[str, Any], peers: list[dict[str, Any]], where: str
) -> None:
    keep = frozenset({"ID", "Key"})
    raw = json.dumps({**top, where: peers}).encode()
    expected = json.loads(raw)
    for name in PEER_LISTS & expected.keys():
        if isinstance(expected[name], list) and all(isinstance(p, dict) for p in expected[name]):
            expected[name] = [{k: v for k, v in p.items() if k in keep} for p in expected[name]]
        else:
            return  # not a list of Nodes: no client would take it
    assert kept_decoder(keep)(raw) == expected


def test_a_keepalive_applies_nothing() -> None:
    netmap = ClientNetmap(keep=frozenset({"ID"}))
    assert not netmap.apply_shared({"KeepAlive": True})
    assert netmap.messages == 0 and not netmap.top


def test_a_shared_message_is_not_changed_by_the_netmaps_that_apply_it() -> None:
    shared = kept_decoder(frozenset({"ID", "Online"}))(
        b'{"PeersChanged":[{"ID":2,"Online":false,"Hostinfo":{}}]}'
    )
    one, two = (
        ClientNetmap(keep=frozenset({"ID", "Online"})),
        ClientNetmap(keep=frozenset({"ID", "Online"})),
    )
    assert one.apply_shared(shared) and two.apply_shared(shared)
    one.apply({"OnlineChange": {"2": True}})
    one.apply({"PeersChangedPatch": [{"NodeID": 2, "Endpoints": ["192.0.2.1:1"]}]})
    assert one.peers == {2: {"ID": 2, "Online": True, "Endpoints": ["192.0.2.1:1"]}}
    assert two.peers == {2: {"ID": 2, "Online": False}}
    assert shared == {"PeersChanged": [{"ID": 2, "Online": False}]}
