"""Lazy and reused views give exactly what a fresh, complete compile gives.

Views are built on first access and reused across node joins and leaves; a
node must never be shown a filter, peer or SSH rule that a fresh compile of
the same tailnet would not give it.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gitctl.policy import CompiledTailnet, Topology, compile_tailnet, parse_policy
from tests.unit import test_policy_perf_gen as policy_random

SEEDS = range(60)


def _case(seed: int) -> tuple[random.Random, Any, dict[str, Any]]:
    rng = random.Random(seed)
    topo = policy_random.topology(rng, rng.randint(2, 20))
    return rng, parse_policy(policy_random.policy(rng, topo["users"])), topo


def _compile(
    policy: Any, topo: dict[str, Any], previous: CompiledTailnet | None = None
) -> CompiledTailnet:
    return compile_tailnet(policy, Topology.from_json(topo), previous=previous)


def _all(tn: CompiledTailnet) -> str:
    return json.dumps(tn.to_json())


@pytest.mark.parametrize("seed", SEEDS)
def test_one_view_built_alone_equals_the_complete_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    complete = _compile(policy, topo).to_json()["nodes"]
    for name in rng.sample(sorted(topo["nodes"]), 3 if len(topo["nodes"]) > 3 else 1):
        alone = _compile(policy, topo)
        assert alone.nodes[name].to_json() == complete[name]
        assert sorted(alone.peer_names(name)) == sorted(complete[name]["peers"])


def _check_reuse(
    policy: Any, before: dict[str, Any], after: dict[str, Any], touched: set[str]
) -> None:
    old = _compile(policy, before)
    old_views = dict(old.nodes.items())  # every node connected: every view built
    new = _compile(policy, after, previous=old)
    assert _all(new) == _all(_compile(policy, after))
    assert new.changed is not None
    assert touched <= new.changed
    for name, view in new.nodes.items():
        if name not in new.changed:
            assert view is old_views[name]  # reused, not rebuilt
    # Nodes that see a touched node are told about it.
    for name in touched:
        for tn in (old, new):
            if name in tn.nodes:
                assert set(tn.peer_names(name)) <= new.changed


def _plain_node(rng: random.Random, n: int, topo: dict[str, Any]) -> dict[str, Any]:
    node = policy_random.node(rng, n, [u["name"] for u in topo["users"]], routers=False)
    return node


def _pick_plain(rng: random.Random, topo: dict[str, Any]) -> str:
    """A node that advertises no routes (route changes recompute everything)."""
    plain = [n for n, rec in topo["nodes"].items() if not rec["routable_ips"]]
    if not plain:
        pytest.skip("every node of this tailnet routes")
    return rng.choice(plain)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_join_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    after = {**topo, "nodes": {**topo["nodes"], "joiner": _plain_node(rng, 200, topo)}}
    _check_reuse(policy, topo, after, {"joiner"})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leave_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    gone = _pick_plain(rng, topo)
    after = {**topo, "nodes": {n: rec for n, rec in topo["nodes"].items() if n != gone}}
    _check_reuse(policy, topo, after, {gone})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_retag_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    name = _pick_plain(rng, topo)
    old_tags = topo["nodes"][name]["tags"]
    rec = {
        **topo["nodes"][name],
        "tags": ["tag:web" if old_tags == ["tag:ci"] else "tag:ci"],
        "user": None,
    }
    after = {**topo, "nodes": {**topo["nodes"], name: rec}}
    _check_reuse(policy, topo, after, {name})


def test_a_route_change_recomputes_every_view() -> None:
    rng, policy, topo = _case(1)
    node = {
        **_plain_node(rng, 201, topo),
        "tags": ["tag:router"],
        "user": None,
        "routable_ips": ["10.1.0.0/16"],
        "approved_routes": ["10.1.0.0/16"],
    }
    old = _compile(policy, topo)
    after = {**topo, "nodes": {**topo["nodes"], "router2": node}}
    new = _compile(policy, after, previous=old)
    assert new.changed is None
    assert _all(new) == _all(_compile(policy, after))


def test_a_policy_change_recomputes_every_view() -> None:
    _, policy, topo = _case(2)
    old = _compile(policy, topo)
    other = parse_policy({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]})
    new = compile_tailnet(other, Topology.from_json(topo), previous=old)
    assert new.changed is None
