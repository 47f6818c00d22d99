"""Tailscale's own gitops-pusher 1.96.4 (built from tailscale.com/cmd/gitops-pusher)
against tailnetd over TLS: `test` passes a good policy file and fails a bad
one, showing the error, as it does against api.tailscale.com."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, Tailnet, tailnet_fixture
from tests.gitops_pusher_bin import binary

USERS = (
    "users:\n  - {name: alice, email: alice@example.com}\n  - {name: bob, email: bob@example.com}\n"
)
POLICY = """{
	"tagOwners": {"tag:server": ["alice@example.com"]},
	"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server:22"]}],
}
"""
GOOD = """// a change: bob may reach servers too
{
	"tagOwners": {"tag:server": ["alice@example.com"]},
	"acls": [
		{"action": "accept", "src": ["alice@example.com", "bob@example.com"],
			"dst": ["tag:server:22"]},
	],
	"tests": [{"src": "bob@example.com", "accept": ["tag:server:22"]}],
}
"""
FAILING_TEST = GOOD.replace('"accept": ["tag:server:22"]}]', '"deny": ["tag:server:22"]}]')
SYNTAX = '{\n\t"acls": [\n\t\t{"action": "accept" "src": ["*"]},\n\t],\n}\n'


pytestmark = pytest.mark.skipif(
    not binary().exists(), reason="gitops-pusher not built: run `python -m tests.gitops_pusher_bin`"
)

# One server for the module: no test changes what it serves (apply is refused).
tailnet = tailnet_fixture({"users.yaml": USERS, "policy.hujson": POLICY}, tls=True)


@pytest.fixture(scope="module")
def server(tailnet: Tailnet) -> tuple[ServerProcess, str, Path]:
    """The server, a read-scoped API key, the CA its certificate verifies against."""
    assert tailnet.ca is not None
    api_key = tailnet.server.admin("apikeys", "create", "--scope", "read").strip()
    return tailnet.server, api_key, tailnet.ca.cert_path


def pusher(
    server: tuple[ServerProcess, str, Path],
    tmp: Path,
    policy: str,
    *args: str,
    oauth: tuple[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc, api_key, ca = server
    path = tmp / "policy.hujson"
    path.write_text(policy)
    credentials = (
        {"TS_API_KEY": api_key}
        if oauth is None
        else {"TS_OAUTH_ID": oauth[0], "TS_OAUTH_SECRET": oauth[1]}
    )
    env = {
        "TS_TAILNET": "-",
        **credentials,
        "SSL_CERT_FILE": str(ca),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
    }
    return subprocess.run(
        [
            str(binary()),
            "--api-server", f"127.0.0.1:{proc.port}",
            "--policy-file", str(path),
            "--cache-file", str(tmp / "version-cache.json"),
            "--github-syntax=false",
            *args,
        ],
        # cwd: it saves ./version-cache.json whatever --cache-file says (the
        # deferred Save reads the flag before flags are parsed).
        cwd=tmp, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_gitops_pusher_test_passes_a_good_policy(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    out = pusher(server, tmp_path, GOOD, "test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "control:" in out.stderr


def test_gitops_pusher_test_fails_a_policy_whose_tests_fail(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    out = pusher(server, tmp_path, FAILING_TEST, "test")
    assert out.returncode != 0
    assert "For user bob@example.com" in out.stdout, out.stdout + out.stderr
    assert "tag:server:22" in out.stdout


def test_gitops_pusher_test_shows_a_syntax_error_with_its_line(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    out = pusher(server, tmp_path, SYNTAX, "test")
    assert out.returncode != 0
    assert "line 3, column" in out.stdout + out.stderr, out.stdout + out.stderr


def test_gitops_pusher_apply_is_told_policy_changes_arrive_by_commit(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    read_only = pusher(server, tmp_path, GOOD, "apply")
    assert read_only.returncode != 0
    assert "read scope" in read_only.stdout, read_only.stdout + read_only.stderr
    proc, _, ca = server
    admin_key = proc.admin("apikeys", "create").strip()
    out = pusher((proc, admin_key, ca), tmp_path, GOOD, "apply")
    assert out.returncode != 0
    assert "change it by commit" in out.stdout, out.stdout + out.stderr


def test_gitops_pusher_sees_an_unchanged_file_as_unchanged(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    """Its sum of the local file (SHA-256 of Go's hujson.Format) equals the
    server's ETag, so `test` skips validation and `apply` has nothing to push,
    even with a read-only key: the answers it gives against Tailscale."""
    tested = pusher(server, tmp_path, POLICY, "test")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "no updates found, doing nothing" in tested.stderr, tested.stderr
    applied = pusher(server, tmp_path, POLICY, "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "no update needed, doing nothing" in applied.stderr, applied.stderr


def test_gitops_pusher_with_an_oauth_client(
    server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    """TS_OAUTH_ID/TS_OAUTH_SECRET: golang.org/x/oauth2's client-credentials flow
    gets a token from /api/v2/oauth/token and gitops-pusher uses it as against
    Tailscale; a policy_file:read client may test but not apply, and a wrong
    secret gets no token."""
    proc = server[0]
    created = json.loads(
        proc.admin("oauth-clients", "create", "--scope", "policy_file:read", "--json")
    )
    client = (created["client_id"], created["client_secret"])
    tested = pusher(server, tmp_path, GOOD, "test", oauth=client)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    failing = pusher(server, tmp_path, FAILING_TEST, "test", oauth=client)
    assert failing.returncode != 0 and "For user bob@example.com" in failing.stdout
    applied = pusher(server, tmp_path, GOOD, "apply", oauth=client)
    assert applied.returncode != 0 and "read scope" in applied.stdout, applied.stdout
    # One character off (a secret that already ends in "x" gets a "y").
    last = "y" if client[1].endswith("x") else "x"
    wrong = pusher(server, tmp_path, GOOD, "test", oauth=(client[0], client[1][:-1] + last))
    assert wrong.returncode != 0
    assert "invalid_client" in wrong.stdout + wrong.stderr, wrong.stdout + wrong.stderr
