"""`tailnetd` admin commands against a real `tailnetd serve` process, used as
an admin would: over the data dir's socket, and remotely with an API key.

One server for the whole module; tests run in file order and the last one
leaves a rejected commit behind. No tailscaled here, so nothing logs in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, ServerProcess, TailnetRepo, wait_for

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
"""
POLICY = """\
{
  "tagOwners": {"tag:ci": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]}],
}
"""
AUTH_KEY = re.compile(r"tskey-auth-[a-z0-9]{12}-[A-Za-z0-9]{48}\n\Z")
API_KEY = re.compile(r"tskey-api-[a-z0-9]{12}-[A-Za-z0-9]{48}\n\Z")


def tailnetd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tailnetd ARGS` as a user types it, in an environment without TAILNETD_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TAILNETD_")}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=clean | (env or {}),
    )  # fmt: skip


@dataclass
class Admin:
    repo: TailnetRepo
    server: ServerProcess

    def local(self, *args: str) -> subprocess.CompletedProcess[str]:
        return tailnetd(*args, "--data", str(self.server.data))

    def ok(self, *args: str) -> str:
        out = self.local(*args)
        assert out.returncode == 0, f"tailnetd {' '.join(args)}: {out.stderr}"
        return out.stdout

    def remote(self, *args: str, key: str | None) -> subprocess.CompletedProcess[str]:
        return tailnetd(*args, "--server", self.server.url, *(["--api-key", key] if key else []))

    def listed(self, kind: str, key: str) -> dict[str, Any]:
        """How `tailnetd KIND list --json` shows this key (found by its prefix)."""
        prefix = key.split("-")[2]
        [row] = [k for k in json.loads(self.ok(kind, "list", "--json")) if k["prefix"] == prefix]
        return dict(row)

    def http(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(self.server.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    tmp = tmp_path_factory.mktemp("admin")
    repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS, "policy.hujson": POLICY})
    server = ServerProcess(
        repo.path, tmp / "data", tmp / "tailnetd.log", extra=["--stun-listen", "off"]
    )
    server.start()
    try:
        yield Admin(repo, server)
    finally:
        server.stop()


def test_keys_create_prints_the_key_alone(admin: Admin) -> None:
    out = admin.local("keys", "create", "--user", "alice", "--reusable", "--tag", "tag:ci")
    assert out.returncode == 0 and out.stderr == ""
    assert AUTH_KEY.match(out.stdout), out.stdout


def test_keys_for_an_unknown_user_are_refused_naming_the_known_ones(admin: Admin) -> None:
    out = admin.local("keys", "create", "--user", "mallory")
    assert out.returncode == 1 and out.stdout == ""
    assert "'mallory' is not in tailnet.d" in out.stderr and "alice" in out.stderr


def test_keys_list_shows_the_key_and_expire_turns_it_off(admin: Admin) -> None:
    key = admin.ok("keys", "create", "--user", "alice").strip()
    prefix = key.split("-")[2]
    table = admin.ok("keys", "list")
    assert table.splitlines()[0].split()[:3] == ["ID", "PREFIX", "USER"]
    row = next(line for line in table.splitlines() if prefix in line)
    assert "alice" in row and key not in table  # the secret is never shown again
    listed = admin.listed("keys", key)
    assert (listed["used"], listed["expired"], listed["expiration"]) == (False, False, None)
    admin.ok("keys", "expire", prefix)
    listed = admin.listed("keys", key)
    assert listed["expired"] is True and listed["expiration"] is not None


def test_nodes_list_json_is_an_empty_list(admin: Admin) -> None:
    assert json.loads(admin.ok("nodes", "list", "--json")) == []


def test_remote_use_without_an_api_key_is_refused(admin: Admin) -> None:
    status, body = admin.http("/api/v1/nodes")
    assert status == 401 and "Authorization: Bearer" in body["detail"]
    assert admin.http("/api/v1/nodes", token="tskey-api-nope")[0] == 401
    out = admin.remote("nodes", "list", key=None)
    assert out.returncode == 1 and out.stdout == ""
    assert "needs an API key" in out.stderr and "--api-key" in out.stderr


def test_remote_use_with_an_api_key(admin: Admin) -> None:
    created = admin.local("apikeys", "create", "--expiration", "1d")
    assert created.returncode == 0 and API_KEY.match(created.stdout), created
    key = created.stdout.strip()
    out = admin.remote("nodes", "list", "--json", key=key)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    by_env = tailnetd(
        "status", "--json", env={"TAILNETD_SERVER": admin.server.url, "TAILNETD_API_KEY": key}
    )
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["serving"], by_env.stderr
    listed = admin.listed("apikeys", key)
    assert listed["last_used"] is not None and listed["expired"] is False
    # A key reaches the admin API but cannot mint more keys.
    minted = admin.remote("apikeys", "create", key=key)
    assert minted.returncode == 1 and "run `tailnetd apikeys create` there" in minted.stderr


def test_an_expired_api_key_is_refused_at_once(admin: Admin) -> None:
    key = admin.ok("apikeys", "create").strip()
    assert admin.http("/api/v1/nodes", token=key) == (200, [])
    admin.ok("apikeys", "expire", key.split("-")[2])
    status, body = admin.http("/api/v1/nodes", token=key)
    assert (status, body["detail"]) == (401, "API key expired")
    out = admin.remote("nodes", "list", key=key)
    assert out.returncode == 1 and "refused the API key: API key expired" in out.stderr


def test_keys_with_a_tag_the_policy_does_not_declare_are_refused(admin: Admin) -> None:
    out = admin.local("keys", "create", "--user", "alice", "--tag", "tag:web")
    assert out.returncode == 1 and out.stdout == ""
    assert "'tag:web' is not declared" in out.stderr and "declared tags: tag:ci" in out.stderr


def test_status_lists_a_key_whose_tag_a_commit_stopped_declaring(admin: Admin) -> None:
    key = admin.ok("keys", "create", "--user", "alice", "--reusable", "--tag", "tag:ci").strip()
    dropped = admin.repo.commit({"policy.hujson": POLICY.replace("tag:ci", "tag:build")}, "drop")
    wait_for(
        lambda: json.loads(admin.ok("status", "--json"))["serving"] == dropped,
        15,
        "the commit dropping tag:ci to be served",
    )
    out = admin.local("status")
    assert out.returncode == 0, out.stderr
    prefix = key.split("-")[2]
    assert re.search(rf"^undeclared tags: key \d+ {prefix}: tag:ci$", out.stdout, re.M), out.stdout
    assert "tag:ci, which the policy's tagOwners do not declare" in admin.server.log()


def test_status_shows_the_serving_commit_then_a_rejected_one(admin: Admin) -> None:
    good = admin.repo.head()
    out = admin.local("status")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^serving:\s+{good}\b", out.stdout, re.M), out.stdout
    assert "rejected" not in out.stdout

    bad = admin.repo.commit({"policy.hujson": POLICY.replace('"acls": [', '"acls": [[')}, "oops")
    wait_for(
        lambda: (json.loads(admin.ok("status", "--json"))["rejected"] or {}).get("revision") == bad,
        15,
        "the broken commit to be rejected",
    )
    out = admin.local("status")
    assert out.returncode == 1
    assert re.search(rf"^serving:\s+{good}\b", out.stdout, re.M), out.stdout
    assert re.search(rf"^rejected: {bad}\b", out.stdout, re.M), out.stdout
    assert re.search(r"policy\.hujson:\d+:\d+", out.stdout), out.stdout


def test_commands_without_a_running_server_say_how_to_start_one(tmp_path: Path) -> None:
    out = tailnetd("nodes", "list", "--data", str(tmp_path))
    assert out.returncode == 1
    assert "no running tailnetd found" in out.stderr and "tailnetd serve" in out.stderr
