"""Policy ``tests`` and ``sshTests`` (stub)."""

from __future__ import annotations

from .model import Policy
from .topology import Topology


def run_policy_tests(policy: Policy, topology: Topology) -> list[str]:
    return []
