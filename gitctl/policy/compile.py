"""compile_tailnet: a policy and the live node list in, per-node views out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, overload

from .expiry import policy_at
from .extend import extend_index
from .model import Policy
from .output import CompiledTailnet, NodeKey, NodeView, PeerView
from .policytests import check_policy_tests
from .topology import Topology
from .viewindex import ViewIndex
from .viewmaps import LazyNodes

__all__ = [
    "CompiledTailnet",
    "NodeKey",
    "NodeView",
    "PeerView",
    "compile_tailnet",
    "reuse_previous",
]


@overload
def compile_tailnet(
    policy: Policy,
    topology: Topology,
    tailnet: Mapping[str, Any] | None = None,
    *,
    keys: None = None,
    now: datetime | None = None,
    enforce_tests: bool = True,
    previous: CompiledTailnet[str] | None = None,
    keep_views: bool = True,
    base: CompiledTailnet[str] | None = None,
) -> CompiledTailnet[str]: ...


@overload
def compile_tailnet(
    policy: Policy,
    topology: Topology,
    tailnet: Mapping[str, Any] | None = None,
    *,
    keys: Sequence[NodeKey],
    now: datetime | None = None,
    enforce_tests: bool = True,
    previous: CompiledTailnet[NodeKey] | None = None,
    keep_views: bool = True,
    base: CompiledTailnet[NodeKey] | None = None,
) -> CompiledTailnet[NodeKey]: ...


def compile_tailnet(
    policy: Policy,
    topology: Topology,
    tailnet: Mapping[str, Any] | None = None,
    *,
    keys: Sequence[Any] | None = None,
    now: datetime | None = None,
    enforce_tests: bool = True,
    previous: CompiledTailnet[Any] | None = None,
    keep_views: bool = True,
    base: CompiledTailnet[Any] | None = None,
) -> CompiledTailnet[Any]:
    """Per-node packet filters, SSH policies, peers and capabilities.

    Views, peers and primaries name each node by its key: ``keys`` (one per
    node of ``topology``, in its order: the server passes node ids), else the
    node's name.

    Raises :class:`PolicyError` when the policy cannot apply to this tailnet
    (unknown SSH domains) or, with ``enforce_tests``, when its ``tests`` or
    ``sshTests`` fail ("test(s) failed"), as Tailscale refuses such a policy.
    Recompiling an accepted policy because nodes came or went may pass
    ``enforce_tests=False`` to keep serving it.

    The rules are resolved here; each node's view is built when first read
    from ``nodes``. With ``previous`` (the same policy over the tailnet before
    a node joined, left or changed), views that change cannot touch are taken
    over from it and ``changed`` names the others. A caller that keeps its own
    copy of each view (the server converts them) passes ``keep_views=False``:
    each read then builds the view again, and nothing is kept twice.

    ``now`` (an aware datetime) leaves out every ACL entry, grant, SSH rule
    and group member whose ``expires`` has passed, tests included. A policy
    with expiry times is refused without it (fail closed); ``next_expiry``
    says when to compile again.

    ``base`` (the index over these nodes but the newest, under the same
    policy) lets a join grow that index instead of resolving every rule
    again (`gitctl.policy.extend`); the index's ``origin`` says which it did
    ("extended"; "reused" when nothing it sees changed, e.g. a node re-keyed;
    or "full: <why not>"). A full index over the same nodes as ``base`` (or
    ``previous``) copies what it knows per node from there.
    """
    policy = policy_at(policy, now)
    if enforce_tests:
        check_policy_tests(policy, topology, now=now)
    if keys is None:
        keys = [n.name for n in topology.nodes]
    index: ViewIndex[Any] | str = "full"
    held = [c.visibility for c in (base, previous) if c is not None]
    like = next((v for v in held if isinstance(v, ViewIndex)), None)
    if base is not None and isinstance(base.visibility, ViewIndex):
        index = extend_index(
            base.visibility, policy, topology, keys, tailnet, keep_views=keep_views
        )
    if isinstance(index, str):
        reason = index
        index = ViewIndex(policy, topology, keys, tailnet, keep_views=keep_views, like=like)
        index.origin = reason if reason == "full" else f"full: {reason}"
    return reuse_previous(CompiledTailnet(nodes=LazyNodes(index), visibility=index), previous)


def reuse_previous(
    compiled: CompiledTailnet[NodeKey], previous: CompiledTailnet[NodeKey] | None
) -> CompiledTailnet[NodeKey]:
    """``compiled`` with ``previous``'s views that the change between the two
    cannot touch taken over, and ``changed`` naming the others.

    Building an index reads only its frozen inputs, so it may run in another
    thread; this step reads ``previous``'s caches, which fill in as its views
    are read: run it where those reads happen (the server's event loop)."""
    index, old = compiled.visibility, previous.visibility if previous is not None else None
    if not isinstance(index, ViewIndex) or not isinstance(old, ViewIndex):
        return compiled
    return replace(compiled, changed=index.adopt(old))
