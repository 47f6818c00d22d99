"""Run one conformance case through the compiler and compare as the corpus README says."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from gitctl.policy import PolicyError, Topology, compile_tailnet, parse_policy, run_policy_tests

CASES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "cases"


def case_paths() -> list[str]:
    if not CASES_DIR.is_dir():
        return []
    return sorted(str(p.relative_to(CASES_DIR)) for p in CASES_DIR.glob("*/*.json"))


def load_case(rel: str) -> dict[str, Any]:
    return json.loads((CASES_DIR / rel).read_text())  # type: ignore[no-any-return]


def _canon(value: Any) -> Any:
    """Order-insensitive form: lists become sorted tuples of canonical items."""
    if isinstance(value, dict):
        return tuple(sorted((k, _canon(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(sorted((_canon(v) for v in value), key=repr))
    return value


def _rule_key(rule: dict[str, Any]) -> str:
    fields = {k: v for k, v in rule.items() if v not in (None, [])}
    return repr(_canon(fields))


def compile_case(case: dict[str, Any]) -> dict[str, Any]:
    """{"error": message} or {"nodes": per-node JSON}."""
    policy_doc = case["policy"]
    try:
        if isinstance(policy_doc, str):
            policy_doc = json.loads(policy_doc)
        policy = parse_policy(policy_doc)
        topology = corpus_roles(Topology.from_json(case["topology"]))
        compiled = compile_tailnet(policy, topology, case.get("tailnet"))
        failures = run_policy_tests(policy, topology)
        if failures:
            return {"error": "test(s) failed: " + "; ".join(failures)}
    except PolicyError as e:
        return {"error": str(e)}
    except json.JSONDecodeError as e:
        return {"error": str(e)}
    return compiled.to_json()


def corpus_roles(topology: Topology) -> Topology:
    """The corpus records no user roles; it was captured with every user an admin
    and the lowest id the owner. The compiler takes roles as declared only, so
    the capture's roles are declared here (a user with a role keeps it)."""
    owner = min((u.id for u in topology.users), default=None)
    users = tuple(
        u if u.role else dataclasses.replace(u, role="owner" if u.id == owner else "admin")
        for u in topology.users
    )
    return dataclasses.replace(topology, users=users)


def diff_case(case: dict[str, Any]) -> list[str]:
    """Differences between our result and the captured one (empty when they agree)."""
    expect = case["expect"]
    got = compile_case(case)
    if expect.get("error"):
        if "error" not in got:
            return [f"expected error {expect['error_message']!r}, compiled fine"]
        want = expect.get("error_message") or ""
        return [] if want in got["error"] else [f"error {got['error']!r} lacks {want!r}"]
    if "error" in got:
        return [f"unexpected error: {got['error']}"]
    attrs = _node_attr_keys(case)
    diffs: list[str] = []
    for name, want in (expect.get("nodes") or {}).items():
        have = got["nodes"].get(name)
        if have is None:
            diffs.append(f"{name}: missing from output")
            continue
        diffs.extend(f"{name}: {d}" for d in _diff_node(want, have, attrs))
    return diffs


def _node_attr_keys(case: dict[str, Any]) -> set[str] | None:
    if case.get("category") != "nodeattrs":
        return None
    keys: set[str] = set()
    policy = case["policy"] if isinstance(case["policy"], dict) else {}
    for entry in policy.get("nodeAttrs") or ():
        keys.update(entry.get("attr") or ())
    return keys


def _diff_node(want: dict[str, Any], have: dict[str, Any], attrs: set[str] | None) -> list[str]:
    diffs = []
    w_rules = Counter(_rule_key(r) for r in want.get("packet_filter_rules") or ())
    h_rules = Counter(_rule_key(r) for r in have.get("packet_filter_rules") or ())
    if w_rules != h_rules:
        diffs.append(
            f"packet_filter_rules: missing {list((w_rules - h_rules).elements())} "
            f"extra {list((h_rules - w_rules).elements())}"
        )
    w_ssh = [_canon(r) for r in (want.get("ssh_policy") or {}).get("rules") or ()]
    h_ssh = [_canon(r) for r in (have.get("ssh_policy") or {}).get("rules") or ()]
    if w_ssh != h_ssh:
        diffs.append(f"ssh rules: want {want.get('ssh_policy')} got {have.get('ssh_policy')}")
    w_peers, h_peers = want.get("peers") or {}, have.get("peers") or {}
    if set(w_peers) != set(h_peers):
        diffs.append(
            f"peers: missing {sorted(set(w_peers) - set(h_peers))} "
            f"extra {sorted(set(h_peers) - set(w_peers))}"
        )
    for peer in set(w_peers) & set(h_peers):
        for key in ("AllowedIPs", "PrimaryRoutes"):
            w = set(w_peers[peer].get(key) or ())
            h = set(h_peers[peer].get(key) or ())
            if w != h:
                diffs.append(f"peer {peer} {key}: want {sorted(w)} got {sorted(h)}")
    if "whois_cap_map" in want:
        w_whois = {k: _canon(v) for k, v in (want.get("whois_cap_map") or {}).items()}
        h_whois = {k: _canon(v) for k, v in (have.get("whois_cap_map") or {}).items()}
        if w_whois != h_whois:
            bad = sorted(
                k
                for k in set(w_whois) | set(h_whois)
                if w_whois.get(k, "absent") != h_whois.get(k, "absent")
            )
            diffs.append(
                f"whois_cap_map differs at {bad[:4]}: want "
                f"{[(want.get('whois_cap_map') or {}).get(k) for k in bad[:2]]} got "
                f"{[(have.get('whois_cap_map') or {}).get(k) for k in bad[:2]]}"
            )
    if attrs is not None:
        w_caps = {k: v for k, v in (want.get("self_cap_map") or {}).items() if k in attrs}
        h_caps = {k: v for k, v in (have.get("self_cap_map") or {}).items() if k in attrs}
        if _canon(w_caps) != _canon(h_caps):
            diffs.append(f"self_cap_map: want {w_caps} got {h_caps}")
    return diffs
