"""Lifecycle and addressing with real clients of every admitted version: random
IPv4 and IPv6 allocation, DNS settings shown by `tailscale dns status`, AAAA extra
records answered by MagicDNS, a rename reaching the node's own name, and key
expiry disabled for a server (and enabled again) through the admin CLI.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.e2e.harness import (
    ALICE_AND_BOB,
    Member,
    Tailnet,
    TailscaleNode,
    tailnet_fixture,
    wait_for,
)
from tests.tailscale_bin import MATRIX

SETTINGS = """\
ip_prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
ip_allocation: random
node_key_expiry: 30d
"""
DNS = """\
magic_dns: true
base_domain: tailnet.example
override_local_dns: false
nameservers:
  global: [127.0.0.1]
search_domains: [corp.example]
extra_records:
  - {name: db.tailnet.example, type: AAAA, value: "fd7a:115c:a1e0::db"}
  - {name: wiki.tailnet.example, type: A, value: 100.100.1.10}
"""
POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'


def _name(version: str) -> str:
    return f"srv-v{version.split('.')[1]}"


# One daemon of each admitted version, all started and logged in at once.
net = tailnet_fixture(
    {
        "users.yaml": ALICE_AND_BOB,
        "settings.yaml": SETTINGS,
        "dns.yaml": DNS,
        "policy.hujson": POLICY,
    },
    members=[Member(_name(version), version=version) for version in MATRIX],
)


@pytest.fixture(scope="module", params=MATRIX, ids=lambda v: f"v{v}")
def node(request: pytest.FixtureRequest, net: Tailnet) -> TailscaleNode:
    return net.nodes[_name(request.param)]


def test_addresses_are_random_and_dual_stack(net: Tailnet, node: TailscaleNode) -> None:
    v4 = ipaddress.ip_address(node.ip())
    v6 = ipaddress.ip_address(node.cli("ip", "-6").stdout.strip())
    assert v4 in ipaddress.ip_network("100.64.0.0/10")
    assert v6 in ipaddress.ip_network("fd7a:115c:a1e0::/48")
    # Sequential allocation would hand out 100.64.0.1 and fd7a:115c:a1e0::1 first.
    assert str(v4) != "100.64.0.1" and str(v6) != "fd7a:115c:a1e0::1"
    self_addrs = node.status()["Self"]["TailscaleIPs"]
    assert sorted(self_addrs) == sorted([str(v4), str(v6)])


def test_dns_status_shows_fallback_resolvers_and_search_domains(node: TailscaleNode) -> None:
    out = node.cli("dns", "status", "--all").stdout
    assert "corp.example" in out and "suffix = tailnet.example" in out, out
    # override_local_dns: false: the global nameservers are fallback resolvers
    # only; the client keeps its own resolvers.
    resolvers = _section(out, "Resolvers (in preference order)")
    assert "127.0.0.1" not in resolvers and "no resolvers configured" in resolvers, out
    assert "127.0.0.1" in _section(out, "Fallback Resolvers"), out


def _section(text: str, title: str) -> str:
    """The lines under `title` in `tailscale dns status`, up to the next blank line."""
    for i, line in enumerate(text.splitlines()):
        if line.strip().lower().startswith(title.lower()):
            rest = text.splitlines()[i + 1 :]
            return "\n".join(rest[: rest.index("")] if "" in rest else rest)
    return ""


def test_aaaa_extra_records_are_answered(net: Tailnet, node: TailscaleNode) -> None:
    """MagicDNS answers dns.yaml's AAAA and A records. With override_local_dns:
    true: 1.80 in userspace mode cannot read the OS resolvers it would fall back
    to, and then applies no DNS configuration at all (its log: "getting OS base
    config is not supported")."""
    net.repo.commit({"dns.yaml": DNS.replace("override_local_dns: false", "")}, "override DNS")
    try:
        out = wait_for(
            lambda: _query(node, "db.tailnet.example", "AAAA", "fd7a:115c:a1e0::db"),
            30,
            "the AAAA record",
        )
        assert "fd7a:115c:a1e0::db" in out
        assert _query(node, "wiki.tailnet.example", "A", "100.100.1.10")
    finally:
        net.repo.commit({"dns.yaml": DNS}, "fallback resolvers again")


def _query(node: TailscaleNode, name: str, kind: str, want: str) -> str | None:
    out = node.cli("dns", "query", name, kind, check=False).stdout
    return out if want in out else None


def test_a_rename_reaches_the_node_s_own_name(net: Tailnet, node: TailscaleNode) -> None:
    new = f"{node.name}-renamed"
    net.server.admin("nodes", "rename", node.name, new)
    wait_for(
        lambda: node.status()["Self"]["DNSName"] == f"{new}.tailnet.example.",
        30,
        "the client's own DNS name to change",
    )
    net.server.admin("nodes", "rename", new, node.name)
    wait_for(
        lambda: node.status()["Self"]["DNSName"].startswith(f"{node.name}."), 30, "the name back"
    )


def test_key_expiry_is_disabled_for_a_server_and_enabled_again(
    net: Tailnet, node: TailscaleNode
) -> None:
    assert node.status()["Self"].get("KeyExpiry")  # 30 days from settings.yaml
    net.server.admin("nodes", "expiry", node.name, "--disable")
    wait_for(lambda: not node.status()["Self"].get("KeyExpiry"), 30, "KeyExpiry to disappear")
    (listed,) = [n for n in net.server.nodes_json() if n["name"] == node.name]
    assert listed["key_expiry"] is None
    net.server.admin("nodes", "expiry", node.name, "--enable")
    wait_for(lambda: node.status()["Self"].get("KeyExpiry"), 30, "KeyExpiry to come back")
    assert node.status()["BackendState"] == "Running"
