"""The policy's own tests: a failing assertion rejects the policy."""

from __future__ import annotations

import pytest

from gitctl.policy import PolicyError, Topology, parse_policy, run_policy_tests

from .test_policy_helpers import NODES, TAG_OWNERS, USERS, compile_policy

BASE = {
    "tagOwners": TAG_OWNERS,
    "acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:web:443"]}],
    "ssh": [
        {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:web"], "users": ["root"]}
    ],
}
TOPOLOGY = Topology.from_json({"users": USERS, "nodes": NODES})


def test_passing_tests_compile() -> None:
    compile_policy(
        {
            **BASE,
            "tests": [
                {"src": "bob@example.com", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}
            ],
            "sshTests": [
                {
                    "src": "bob@example.com",
                    "dst": ["tag:web"],
                    "accept": ["root"],
                    "deny": ["ubuntu"],
                }
            ],
        }
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"tests": [{"src": "alice@example.com", "accept": ["tag:web:443"]}]},
        {"tests": [{"src": "bob@example.com", "deny": ["tag:web:443"]}]},
        {"tests": [{"src": "bob@example.com", "accept": ["tag:web:*"]}]},
        {"sshTests": [{"src": "alice@example.com", "dst": ["tag:web"], "accept": ["root"]}]},
    ],
)
def test_failing_tests_reject_the_policy(extra: dict[str, object]) -> None:
    policy = parse_policy({**BASE, **extra})
    assert run_policy_tests(policy, TOPOLOGY)
    with pytest.raises(PolicyError, match=r"test\(s\) failed"):
        compile_policy({**BASE, **extra})
