"""The Tailscale policy language: parse, compile per node, run policy tests."""

from .compile import CompiledTailnet, NodeKey, NodeView, PeerView, compile_tailnet
from .errors import PolicyError, PolicyErrors
from .expiry import Expiring, expiring_within, in_force, next_expiry
from .model import Policy
from .parse import parse_policy
from .policytests import run_policy_tests
from .primary import elect_primaries
from .routes import auto_approved_routes
from .topology import Topology, TopologyNode, TopologyUser

__all__ = [
    "CompiledTailnet",
    "Expiring",
    "NodeKey",
    "NodeView",
    "PeerView",
    "Policy",
    "PolicyError",
    "PolicyErrors",
    "Topology",
    "TopologyNode",
    "TopologyUser",
    "auto_approved_routes",
    "compile_tailnet",
    "elect_primaries",
    "expiring_within",
    "in_force",
    "next_expiry",
    "parse_policy",
    "run_policy_tests",
]
