"""The policy's `tests` and `sshTests`, checked against a commit on its own.

Tailscale evaluates policy tests against the tailnet's devices. A GitOps commit has to be
judged before any device exists (in CI) and the server must refuse a failing commit whatever
nodes happen to be registered, so the tests run against a *synthetic topology*: one
hypothetical device per user in `users` and one per tag in `tagOwners`. Their addresses come
from the top of the tailnet's prefixes, far from where the allocator hands out real ones.
A real topology can be merged in (`gitctl test --topology`), and then both kinds count.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gitctl.diagnostics import Diagnostic, JsonPath
from gitctl.policy import (
    Policy,
    PolicyError,
    Topology,
    TopologyNode,
    TopologyUser,
    run_policy_tests,
)
from gitctl.policy.expiry import policy_at

if TYPE_CHECKING:
    from gitctl.snapshot import Snapshot

__all__ = [
    "SYNTHETIC_PREFIX",
    "TopologyFileError",
    "check_tests",
    "read_topology_file",
    "synthetic_topology",
]

# Prefix of synthetic node names; shown to people when a diff names single devices.
SYNTHETIC_PREFIX = "hypothetical:"

_NO_ADDRESSES_HINT = (
    " (tests run against one hypothetical device per user in users and per tag in tagOwners)"
)


def _addresses(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None, taken: set[str]
) -> Iterator[str | None]:
    """Addresses counting down from the top of `network` (skipping its last address and any
    address in `taken`); None forever once it is exhausted or absent."""
    if network is not None:
        # Indexing from the end: [-1] is the last address, [-(size - 1)] the first host.
        for back in range(2, network.num_addresses):
            candidate = str(network[-back])
            if candidate not in taken:
                yield candidate
    while True:
        yield None


class TopologyFileError(Exception):
    """A topology file that cannot be read; the message is for people."""


def read_topology_file(path: str | os.PathLike[str]) -> Topology:
    """Users and nodes in the conformance corpus format (`{"users": [...], "nodes": {...}}`),
    or a whole corpus case (its `topology` is used)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise TopologyFileError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TopologyFileError(f"{path} is not JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("topology"), dict):
        doc = doc["topology"]
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes", {}), dict | list):
        raise TopologyFileError(f'{path}: expected {{"users": [...], "nodes": {{...}}}}')
    try:
        return Topology.from_json(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise TopologyFileError(f"{path}: a user or node is incomplete ({exc})") from None


def _tags(snapshot: Snapshot) -> list[str]:
    policy = snapshot.policy
    return list(policy.tag_owners) if policy is not None else []


def synthetic_topology(
    snapshot: Snapshot, *others: Snapshot, real: Topology | None = None
) -> Topology:
    """One hypothetical device per user and per tag of `snapshot` (and of `others`, so two
    revisions can be compiled against one topology), after the nodes of `real` if given.

    Deterministic: the same snapshots give the same names and addresses.
    """
    snapshots = (snapshot, *others)
    users = list(real.users) if real is not None else []
    nodes = list(real.nodes) if real is not None else []
    # A user the real topology already has keeps its name there (nodes name owners by it).
    name_of = {u.email.lower(): u.name for u in users} | {u.name: u.name for u in users}
    next_id = max((u.id for u in users), default=0) + 1
    owners: list[str] = []  # user names that get a device, in declaration order
    for snap in snapshots:
        for spec in snap.users:
            name = name_of.get(spec.email.lower()) or name_of.get(spec.name)
            if name is None:
                name = name_of[spec.email.lower()] = name_of[spec.name] = spec.name
                users.append(TopologyUser(id=next_id, name=spec.name, email=spec.email))
                next_id += 1
            if name not in owners:
                owners.append(name)
    tags = sorted({t for snap in snapshots for t in _tags(snap)})

    taken = {ip for n in nodes for ip in (n.ipv4, n.ipv6) if ip}
    names = {n.name for n in nodes}
    settings = snapshot.settings
    v4 = _addresses(settings.ipv4_prefix, taken)
    v6 = _addresses(settings.ipv6_prefix, taken)
    approved = _tag_routes(snapshots)
    for owner, tag in [(u, None) for u in owners] + [(None, t) for t in tags]:
        label = owner if owner is not None else str(tag)
        name = _unique(SYNTHETIC_PREFIX + label, names)
        routes = approved.get(tag, ()) if tag is not None else ()
        nodes.append(
            TopologyNode(
                name=name,
                hostname=name.replace(":", "-"),
                user=owner,
                tags=(tag,) if tag is not None else (),
                ipv4=next(v4),
                ipv6=next(v6),
                routable_ips=routes,
                approved_routes=routes,
            )
        )
    return Topology(users=tuple(users), nodes=tuple(nodes))


def _tag_routes(snapshots: Sequence[Snapshot]) -> dict[str, tuple[str, ...]]:
    """Routes that routes.yaml approves for every node with a tag: a tag's hypothetical
    device serves them, so tests may address hosts in those subnets."""
    out: dict[str, tuple[str, ...]] = {}
    for snap in snapshots:
        for approval in snap.routes:
            if approval.tag is None:
                continue
            have = out.get(approval.tag, ())
            out[approval.tag] = have + tuple(str(r) for r in approval.routes if str(r) not in have)
    return out


def _unique(name: str, names: set[str]) -> str:
    candidate, n = name, 2
    while candidate in names:
        candidate, n = f"{name}-{n}", n + 1
    names.add(candidate)
    return candidate


# (path inside the policy, policy holding just that assertion)
_Case = tuple[JsonPath, Policy]


def _packet_cases(policy: Policy, i: int) -> list[_Case]:
    t = policy.tests[i]
    cases: list[_Case] = []
    for kind in ("accept", "deny"):
        for j, target in enumerate(getattr(t, kind)):
            only: dict[str, Any] = {"accept": (), "deny": (), kind: (target,)}
            one = dataclasses.replace(t, **only)
            cases.append((("tests", i, kind, j), _only(policy, tests=(one,))))
    return cases


def _ssh_cases(policy: Policy, i: int) -> list[_Case]:
    t = policy.ssh_tests[i]
    cases: list[_Case] = []
    for kind in ("accept", "check", "deny"):
        for j, login in enumerate(getattr(t, kind)):
            only: dict[str, Any] = {"accept": (), "check": (), "deny": (), kind: (login,)}
            one = dataclasses.replace(t, **only)
            cases.append((("sshTests", i, kind, j), _only(policy, ssh_tests=(one,))))
    return cases


def _only(policy: Policy, **tests: Any) -> Policy:
    return dataclasses.replace(policy, **{"tests": (), "ssh_tests": (), **tests})


def _locate(
    entry: JsonPath,
    whole: Policy,
    cases: Sequence[_Case],
    topology: Topology,
    now: datetime | None,
) -> list[tuple[JsonPath, str]]:
    """Failures of one test entry, each at the assertion that failed.

    A failure every assertion shares (an unknown or device-less `src`) is reported once,
    at the entry's `src`, instead of once per assertion.
    """
    per_case = [(path, run_policy_tests(p, topology, now=now)) for path, p in cases]
    counts = Counter(m for _, ms in per_case for m in set(ms))
    shared = {m for m, n in counts.items() if len(cases) > 1 and n == len(cases)}
    out = [((*entry, "src"), m) for m in sorted(shared)]
    out += [(path, m) for path, ms in per_case for m in dict.fromkeys(ms) if m not in shared]
    if not out:  # a problem with the entry as a whole, e.g. neither accept nor deny
        out = [(entry, m) for m in run_policy_tests(whole, topology, now=now)]
    return out


def _failures(
    policy: Policy, topology: Topology, now: datetime | None
) -> Iterable[tuple[JsonPath, str]]:
    for i, t in enumerate(policy.tests):
        whole = _only(policy, tests=(t,))
        if run_policy_tests(whole, topology, now=now):
            yield from _locate(("tests", i), whole, _packet_cases(policy, i), topology, now)
    for i, st in enumerate(policy.ssh_tests):
        whole = _only(policy, ssh_tests=(st,))
        if run_policy_tests(whole, topology, now=now):
            yield from _locate(("sshTests", i), whole, _ssh_cases(policy, i), topology, now)


def check_tests(
    snapshot: Snapshot, topology: Topology | None = None, *, now: datetime | None = None
) -> list[Diagnostic]:
    """Every failing `tests`/`sshTests` assertion of the snapshot's policy at `now`, as an
    error at the assertion's file:line:col. `topology` defaults to `synthetic_topology(snapshot)`.
    A policy with expiry times and no `now` is an error at its first `expires` (fail closed)."""
    policy = snapshot.policy
    if policy is None:
        return []
    try:
        policy_at(policy, now)
    except PolicyError as exc:
        return [snapshot.policy_diagnostic(exc.path, exc.message)]
    if not (policy.tests or policy.ssh_tests):
        return []
    topo = topology if topology is not None else synthetic_topology(snapshot)
    if not run_policy_tests(policy, topo, now=now):
        return []  # the usual case: one pass, no per-assertion reruns
    out = []
    for path, message in _failures(policy, topo, now):
        hint = _NO_ADDRESSES_HINT if "has no addresses" in message else ""
        out.append(snapshot.policy_diagnostic(path, f"policy test failed: {message}{hint}"))
    return out
