"""A real 1.96.4 client registers with a pre-auth key declared in keys.yaml, whose secret
the server reads from its environment; `tailnetd drift` then finds nothing to report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from server.store.authkeys import generate_key
from tests.e2e.harness import running_tailnet, wait_for

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"
POLICY = '{"tagOwners": {"tag:ci": ["alice@example.com"]}, "acls": []}\n'
KEYS = """keys:
  - name: ci-runners
    tags: [tag:ci]
    reusable: true
    secret: {env: TAILNETD_TEST_KEY_CI}
"""


def test_a_real_client_joins_with_a_declared_key(tmp_path: Path) -> None:
    key = generate_key(os.urandom)[0]
    files = {"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": KEYS}
    env = {"TAILNETD_TEST_KEY_CI": key}
    with running_tailnet(tmp_path, files, server_env=env, node_env={}) as net:
        server, node = net.server, net.node("runner1")
        node.start()
        node.up(server, key)
        wait_for(lambda: node.status().get("BackendState") == "Running", 30, "runner1 to run")
        (entry,) = json.loads(server.admin("nodes", "list", "--json"))
        assert (entry["name"], entry["tags"], entry["user"]) == ("runner1", ["tag:ci"], None)
        (declared,) = json.loads(server.admin("keys", "list", "--json"))
        assert declared["used"] and not declared["expired"]
        assert json.loads(server.admin("drift", "--json"))["drift"] == []
        assert key not in server.log()  # the secret never reaches the log
