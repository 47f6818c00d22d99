"""Tailscale's official Go API client (tailscale.com/client/tailscale/v2, built
from tests/goclient/) against tailnetd over TLS, with one real 1.96.4 client
registered: it lists and reads the device, sets its tags, creates and lists auth
keys, reads the policy file with its ETag and validates policies, with an API key
and with an OAuth client, reading every answer as it reads api.tailscale.com's."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.e2e.harness import Member, Tailnet, TailscaleNode, tailnet_fixture, wait_for
from tests.goclient_bin import binary

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"
POLICY = """// served by tailnetd
{
	"tagOwners": {"tag:server": ["alice@example.com"]},
	"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server:22"]}],
}
"""
TESTS = '"tests": [{"src": "alice@example.com", "accept": ["tag:server:22"]}],\n\t'
GOOD = POLICY.replace('"acls"', TESTS + '"acls"')
FAILING = GOOD.replace('"accept": ["tag:server:22"]}]', '"deny": ["tag:server:22"]}]')
SYNTAX = '{\n\t"acls": [\n\t\t{"action": "accept" "src": ["*"]},\n\t],\n}\n'


pytestmark = pytest.mark.skipif(
    not binary().exists(),
    reason="the Go API client is not built: run `python -m tests.goclient_bin`",
)


def write_policies(net: Tailnet) -> None:
    for name, text in (("good", GOOD), ("failing", FAILING), ("syntax", SYNTAX)):
        (net.tmp / f"{name}.hujson").write_text(text)


tailnet = tailnet_fixture(
    {"users.yaml": USERS, "policy.hujson": POLICY},
    members=[Member("laptop")],
    tls=True,
    node_env={},
    prepare=write_policies,
)


def run(net: Tailnet, *credentials: str) -> tuple[int, dict[str, Any], str]:
    assert net.ca is not None
    out = subprocess.run(
        [
            str(binary()),
            "-base-url", net.server.url,
            "-tailnet", "-",
            *credentials,
            "-tags", "tag:server",
            *(f"-validate={net.tmp / n}.hujson" for n in ("good", "failing", "syntax")),
        ],
        env={"SSL_CERT_FILE": str(net.ca.cert_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    try:
        return out.returncode, json.loads(out.stdout), out.stderr
    except json.JSONDecodeError:
        raise AssertionError(out.stdout + out.stderr) from None


def test_go_client_with_an_api_key(tailnet: Tailnet) -> None:
    key = tailnet.server.admin("apikeys", "create").strip()
    code, out, err = run(tailnet, "-api-key", key)
    shown = json.dumps(out, indent=1) + err
    assert code == 0, shown
    (device,) = out["listDevices"]["result"]
    assert device["hostname"] == "laptop" and device["user"] == "alice@example.com", shown
    assert device["os"] == "linux" and device["clientVersion"].startswith("1.96.4"), shown
    assert device["connectedToControl"] is True and device["isEphemeral"] is False
    assert device["addresses"][0] == tailnet.nodes["laptop"].ip(), shown
    assert out["getDevice"]["result"]["nodeId"] == device["nodeId"]
    assert out["subnetRoutes"]["result"] == {"advertisedRoutes": [], "enabledRoutes": []}
    tagged = out["getDeviceAfterTags"]["result"]
    assert tagged["tags"] == ["tag:server"] and tagged["keyExpiryDisabled"] is True, shown
    assert wait_for(
        lambda: "tag:server" in tags_seen_by(tailnet.nodes["laptop"]), 20, "the node's tag"
    )

    made = out["createKey"]["result"]
    assert made["key"].startswith("tskey-auth-") and made["keyType"] == "auth", shown
    create = made["capabilities"]["devices"]["create"]
    assert create["tags"] == ["tag:server"] and create["ephemeral"] is True, shown
    assert made["description"] == "made by the Go client"
    lifetime = datetime.fromisoformat(made["expires"]) - datetime.fromisoformat(made["created"])
    assert lifetime == timedelta(days=90), shown  # expirySeconds 0: Tailscale's default
    listed = {k["id"]: k for k in out["listKeys"]["result"]}
    assert made["id"] in listed and listed[made["id"]]["key"] == "", shown

    raw, parsed = out["policyRaw"]["result"], out["policy"]["result"]
    assert raw["HuJSON"] == POLICY and raw["ETag"].startswith('"'), shown
    assert parsed["etag"] == raw["ETag"]
    assert parsed["acl"]["tagOwners"] == {"tag:server": ["alice@example.com"]}
    good, failing, syntax = out["validate"]
    assert good == {"result": "ok"}, shown
    assert "ACL validation failed" in failing["error"] and "expected deny" in failing["error"]
    assert syntax["status"] == 400 and "line 3, column" in syntax["error"], shown


def test_go_client_with_oauth_clients(tailnet: Tailnet) -> None:
    """The client's own OAuth support (golang.org/x/oauth2 client credentials
    against /api/v2/oauth/token): an `all` client does everything, a read-only
    one reads and is refused writes with 403."""
    full = json.loads(tailnet.server.admin("oauth-clients", "create", "--scope", "all", "--json"))
    code, out, err = run(
        tailnet, "-oauth-id", full["client_id"], "-oauth-secret", full["client_secret"]
    )
    assert code == 0, json.dumps(out, indent=1) + err
    assert out["createKey"]["result"]["key"].startswith("tskey-auth-")
    reader = json.loads(
        tailnet.server.admin(
            "oauth-clients", "create", "--scope", "devices:core:read",
            "--scope", "policy_file:read", "--scope", "auth_keys:read", "--json",
        )
    )  # fmt: skip
    code, out, err = run(
        tailnet, "-oauth-id", reader["client_id"], "-oauth-secret", reader["client_secret"]
    )
    shown = json.dumps(out, indent=1) + err
    assert code == 1, shown
    assert out["listDevices"]["result"][0]["hostname"] == "laptop", shown
    assert out["policyRaw"]["result"]["HuJSON"] == POLICY, shown
    assert out["setTags"]["status"] == 403 and out["createKey"]["status"] == 403, shown
    assert out["validate"][0] == {"result": "ok"}, shown


def tags_seen_by(node: TailscaleNode) -> list[str]:
    return list(node.status()["Self"].get("Tags") or [])
