"""The socket benchmark's verdict column names the issue's target for each
run: the full mesh has its own registration and memory targets, and a policy
commit's target grows with the tailnet."""

from __future__ import annotations

from typing import Any

from bench.bench_socket import target


def test_registration_targets_follow_the_kind_and_size_of_the_run() -> None:
    assert target("registrations_per_s", "sparse", 1000) == (">=", 500.0)
    assert target("registrations_per_s", "sparse", 5000) == (">=", 200.0)
    assert target("registrations_per_s", "mesh", 1000) == (">=", 100.0)
    assert target("registrations_per_s", "mesh", 100) == (">=", 500.0)


def test_memory_and_commit_targets() -> None:
    assert target("kb_per_streaming_node", "mesh", 1000) == ("<=", 150.0)
    assert target("kb_per_streaming_node", "sparse", 5000) == ("<=", 50.0)
    assert [target("commit_p99_ms", "sparse", n)[1] for n in (100, 1000, 5000)] == [50, 150, 400]
    assert target("commit_p99_ms", "mesh", 1000) == ("<=", 300.0)
    assert target("join_p99_ms", "mesh", 5000) == ("<=", 150.0)


def test_groups_runs_have_the_sparse_targets_and_show_their_topology() -> None:
    from bench.bench_socket import render

    assert target("commit_p99_ms", "groups", 5000) == ("<=", 400.0)
    assert target("registrations_per_s", "groups", 5000) == (">=", 200.0)
    timing = {"n": 10, "p50_ms": 40.0, "p99_ms": 90.0, "max_ms": 95.0}
    run = {
        "kind": "groups",
        "nodes": 5000,
        "registrations_per_s": 250.0,
        "kb_per_streaming_node": 40.0,
        "register_server_cpu_ms_per_node": 3.0,
        "cold_start_empty_s": 0.3,
        "topology": "groups of 25",
        "commit": timing,
        "join": timing,
        "endpoint_change": {**timing, "p99_ms": 120.0},
        "endpoint_server_cpu_us_per_peer": 30.0,
    }
    text = render([run])
    assert "groups of 25" in text
    assert "policy commit -> every client p50 / p99 (ms)" in text
    assert "<= 150: met" in text  # the join
    assert "<= 100: 1.2x over" in text  # the endpoint change
    assert "<= 20: 1.5x over" in text


def test_memory_rows_show_the_anonymous_part_when_measured() -> None:
    from bench.bench_socket import render

    run = {
        "kind": "mesh",
        "nodes": 100,
        "registrations_per_s": 300.0,
        "kb_per_streaming_node": 52.0,
        "kb_per_streaming_node_anon": 45.0,
        "register_server_cpu_ms_per_node": 3.0,
        "cold_start_empty_s": 0.3,
    }
    text = render([run])
    assert "<= 50: 1.0x over" in text  # the verdict stays on the whole RSS
    assert "... of it anonymous (no code pages) (KB) | 45.0" in text
    del run["kb_per_streaming_node_anon"]  # a result from before the field
    assert "anonymous" not in render([run])


def test_the_anonymous_rss_is_read_from_proc_and_is_part_of_the_rss() -> None:
    import os
    from types import SimpleNamespace
    from typing import cast

    from bench.loadgen.local import LocalServer

    process = cast(Any, SimpleNamespace(proc=SimpleNamespace(pid=os.getpid())))
    server = LocalServer(process, cast(Any, None), cast(Any, None))
    assert 0 < server.anon_rss_bytes() < server.rss_bytes()


def test_the_marginal_memory_is_taken_between_two_halves_that_cover_every_node() -> None:
    from bench.bench_socket import halves

    assert halves(101, marginal=True) == [(0, 50), (50, 51)]
    assert halves(100, marginal=False) == [(0, 100)]
    assert halves(1, marginal=True) == [(0, 1)]  # no half to measure against


def test_the_marginal_memory_row_and_its_definition_in_the_json() -> None:
    from bench.bench_socket import DEFINITIONS, render

    run = {
        "kind": "mesh",
        "nodes": 100,
        "registrations_per_s": 300.0,
        "kb_per_streaming_node": 52.0,
        "kb_per_streaming_node_marginal": 31.5,
        "register_server_cpu_ms_per_node": 3.0,
        "cold_start_empty_s": 0.3,
    }
    assert "... marginal, N/2 -> N streaming (anon KB) | 31.5" in render([run])
    assert "N/2" in DEFINITIONS["kb_per_streaming_node_marginal"]
    assert {key for key in run if key.startswith("kb_")} <= DEFINITIONS.keys()
