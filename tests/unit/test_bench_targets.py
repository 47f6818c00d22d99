"""The socket benchmark's verdict column names the issue's target for each
run: the full mesh has its own registration and memory targets, and a policy
commit's target grows with the tailnet."""

from __future__ import annotations

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
