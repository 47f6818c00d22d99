"""HA subnet routers: the earliest registered online router is primary, and stays so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitctl.policy import Topology, compile_tailnet, parse_policy
from gitctl.policy.primary import elect_primaries

T0 = datetime(2026, 4, 10, 16, 0, tzinfo=UTC)
NET = "10.44.0.0/16"
# a registered first, then b, then c; given in another order on purpose
ROUTERS = {NET: [("c", T0 + timedelta(seconds=2)), ("a", T0), ("b", T0 + timedelta(seconds=1))]}


def test_earliest_registered_router_is_primary_whatever_the_node_order() -> None:
    assert elect_primaries(ROUTERS, online={"a", "b", "c"}, previous={}) == {NET: "a"}


def test_next_earliest_online_router_takes_over_when_the_primary_goes_offline() -> None:
    assert elect_primaries(ROUTERS, online={"b", "c"}, previous={NET: "a"}) == {NET: "b"}
    assert elect_primaries(ROUTERS, online={"c"}, previous={NET: "b"}) == {NET: "c"}


def test_a_returning_router_does_not_take_the_prefix_back() -> None:
    assert elect_primaries(ROUTERS, online={"a", "b", "c"}, previous={NET: "b"}) == {NET: "b"}


def test_with_no_router_online_the_last_primary_stays_listed() -> None:
    assert elect_primaries(ROUTERS, online=set(), previous={NET: "b"}) == {NET: "b"}
    assert elect_primaries(ROUTERS, online=set(), previous={}) == {NET: "a"}


def test_a_previous_primary_that_no_longer_serves_the_prefix_is_replaced() -> None:
    assert elect_primaries(ROUTERS, online={"a", "b", "c", "z"}, previous={NET: "z"}) == {NET: "a"}
    assert elect_primaries({}, online={"a"}, previous={NET: "a"}) == {}


def test_ties_and_unknown_registration_times_fall_back_to_node_order() -> None:
    routers = {NET: [("y", None), ("x", T0), ("w", T0), ("v", None)]}
    assert elect_primaries(routers, online={"v", "w", "x", "y"}, previous={}) == {NET: "x"}
    assert elect_primaries(routers, online={"v", "y"}, previous={}) == {NET: "y"}


_nodes = st.sampled_from("abcdef")
_routers = st.dictionaries(
    st.sampled_from([NET, "10.55.0.0/16", "192.168.1.0/24"]),
    st.lists(
        st.tuples(_nodes, st.none() | st.integers(0, 5).map(lambda s: T0 + timedelta(seconds=s))),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0],
    ),
)


@given(_routers, st.frozensets(_nodes), st.dictionaries(st.sampled_from([NET]), _nodes))
def test_election_properties(routers, online, previous) -> None:  # type: ignore[no-untyped-def]
    elected = elect_primaries(routers, online, previous)
    # one primary per prefix that has a router, and it serves that prefix
    assert set(elected) == set(routers)
    for prefix, node in elected.items():
        serving = [n for n, _ in routers[prefix]]
        assert node in serving
        # an offline primary is replaced whenever a serving router is online
        if online & set(serving):
            assert node in online
    # applying it again with nothing changed moves nothing
    assert elect_primaries(routers, online, elected) == elected


@given(_routers, st.frozensets(_nodes), st.frozensets(_nodes))
def test_no_flapping_when_routers_come_back(routers, before, after) -> None:  # type: ignore[no-untyped-def]
    first = elect_primaries(routers, before, {})
    second = elect_primaries(routers, before | after, first)
    for prefix, node in first.items():
        if node in before:
            assert second[prefix] == node


def _ha_topology(created_a: str, created_b: str) -> Topology:
    router = {"tags": ["tag:router"], "routable_ips": [NET], "approved_routes": [NET]}
    return Topology.from_json(
        {
            "users": [{"id": 1, "name": "alice", "email": "alice@example.com"}],
            "nodes": {
                "ha-a": {**router, "ipv4": "100.64.0.1", "created": created_a},
                "ha-b": {**router, "ipv4": "100.64.0.2", "created": created_b},
                "laptop": {"user": "alice", "ipv4": "100.64.0.3", "created": created_a},
            },
        }
    )


@pytest.mark.parametrize(
    ("created_a", "created_b", "primary"),
    [
        ("2026-04-10T16:06:35.1Z", "2026-04-10T16:06:36.2Z", "ha-a"),
        ("2026-04-10T16:06:37.340616351Z", "2026-04-10T18:06:36+02:00", "ha-b"),
    ],
)
def test_compiled_peers_route_the_subnet_through_the_earliest_registered_router(
    created_a: str, created_b: str, primary: str
) -> None:
    policy = parse_policy(
        {
            "tagOwners": {"tag:router": []},
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
        }
    )
    tn = compile_tailnet(policy, _ha_topology(created_a, created_b))
    other = {"ha-a": "ha-b", "ha-b": "ha-a"}[primary]
    assert tn.nodes[primary].self_primary_routes == (NET,)
    assert tn.nodes[other].self_primary_routes == ()
    assert NET in tn.nodes["laptop"].peers[primary].allowed_ips
    assert NET not in tn.nodes["laptop"].peers[other].allowed_ips


@pytest.mark.parametrize(
    "bad", ["2026-04-10", "2026-04-10T16:06:35", "yesterday", "2026-02-30T00:00:00Z"]
)
def test_a_topology_node_with_a_bad_created_time_is_refused_by_name(bad: str) -> None:
    with pytest.raises(
        ValueError, match="node ha-a: created: .*RFC 3339|node ha-a: created: .*valid"
    ):
        _ha_topology(bad, "2026-04-10T16:06:36Z")
