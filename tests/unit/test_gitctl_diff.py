"""`gitctl diff`: who gained or lost which access between two revisions, by identity."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gitctl.cli import main
from gitctl.diff_cmd import ports_text
from tests.unit.test_sources import commit_files

USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
  - {name: carol, email: carol@example.com}
"""

POLICY = """{
  "groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    %s
  ],
  "ssh": [%s],
}
"""

BOB_SSH_DB = '{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:22"]},'
BOB_DB = '{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:22,5432"]},'
ENG_SSH = (
    '{"action": "accept", "src": ["group:eng"], "dst": ["tag:db"], '
    '"users": ["root", "autogroup:nonroot"]}'
)


def policy(acls: str = BOB_SSH_DB, ssh: str = "") -> str:
    return POLICY % (acls, ssh)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    commit_files(
        tmp_path, {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": policy()}, "base"
    )
    return tmp_path


def change(repo: Path, text: str) -> str:
    return commit_files(repo, {"tailnet.d/policy.hujson": text}, "change")[:7]


def test_opening_a_port_shows_exactly_that_gain(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = commit_files(repo, {}, "same")[:7]
    head = change(repo, policy(BOB_DB))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == (
        f"### Access changes ({base} → {head})\n"
        "**bob@example.com**\n"
        "- ➕ can now reach `tag:db` on port 5432\n"
    )
    assert main(["diff", "HEAD~1"]) == 0  # HEAD by default; text format
    assert capsys.readouterr().out == (
        f"Access changes ({base} → {head})\n"
        "bob@example.com\n"
        "  + can now reach tag:db on port 5432\n"
    )


def test_json_is_machine_readable(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, policy(BOB_DB))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] is True and doc["topology"] == "synthetic"
    assert doc["base"]["rev"] == "HEAD~1" and len(doc["head"]["id"]) == 40
    assert doc["reach"] == [
        {
            "change": "gained",
            "src": {"kind": "user", "name": "bob@example.com"},
            "dst": {"kind": "tag", "name": "tag:db"},
            "ports": [
                {"proto": "tcp", "first": 5432, "last": 5432},
                {"proto": "udp", "first": 5432, "last": 5432},
            ],
            "summary": "port 5432",
        }
    ]
    assert doc["ssh"] == [] and doc["peers"] == []


def test_exit_code_flag(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "HEAD", "HEAD", "--exit-code"]) == 0
    assert capsys.readouterr().out.startswith("No access changes")
    change(repo, policy(BOB_DB))
    assert main(["diff", "HEAD~1", "HEAD", "--exit-code"]) == 1
    assert main(["diff", "HEAD~1", "HEAD"]) == 0


def test_losing_all_access_and_peers(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, policy(acls=""))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "**bob@example.com**",
        "- ➖ can no longer reach `tag:db` on port 22, icmp",
        "**Peers**",
        "- ➖ `bob@example.com` no longer sees `tag:db` as peers",
        "- ➖ `tag:db` no longer sees `bob@example.com`'s devices as peers",
    ]


def test_ssh_changes_are_named_by_group(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, policy(ssh=ENG_SSH))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "**SSH**\n- ➕ `group:eng` may ssh to `tag:db` as `root` or any non-root user\n" in out
    # alice was no peer of tag:db before; SSH access makes them peers
    assert "- ➕ `alice@example.com` now sees `tag:db` as peers" in out


def test_a_users_own_devices_read_as_autogroup_self(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = (
        '{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], '
        '"users": ["autogroup:nonroot"]}'
    )
    change(repo, policy(ssh=own))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "**SSH**",
        "- ➕ `autogroup:member` may ssh to their own devices as any non-root user (with a check)",
    ]


def test_whole_tailnet_changes_read_as_wildcards(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change(repo, policy(acls=""))
    change(repo, policy('{"action": "accept", "src": ["*"], "dst": ["*:*"]},'))
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "**every device (`*`)**",
        "- ➕ can now reach every device (`*`) on any port",
        "**Peers**",
        "- ➕ every device (`*`) now sees every device (`*`) as peers",
    ]


def test_a_topology_file_names_single_devices(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # bob may reach one address: one of alice's two devices
    change(
        repo,
        policy(
            BOB_SSH_DB + '{"action": "accept", "src": ["bob@example.com"], '
            '"dst": ["100.64.0.1:80"]},'
        ),
    )
    topo = {
        "users": [
            {"id": 1, "name": "alice", "email": "alice@example.com"},
            {"id": 2, "name": "bob", "email": "bob@example.com"},
        ],
        "nodes": {
            "laptop": {"user": "alice", "tags": [], "ipv4": "100.64.0.1", "ipv6": None},
            "phone": {"user": "alice", "tags": [], "ipv4": "100.64.0.2", "ipv6": None},
            "bobs": {"user": "bob", "tags": [], "ipv4": "100.64.0.3", "ipv6": None},
        },
    }
    Path("topo.json").write_text(json.dumps(topo))
    assert main(["diff", "HEAD~1", "HEAD", "--topology", "topo.json", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["topology"] == "topo.json"
    assert [(r["src"]["name"], r["dst"], r["summary"]) for r in doc["reach"]] == [
        # bob could not even ping it before
        ("bob@example.com", {"kind": "node", "name": "laptop"}, "port 80, icmp")
    ]


def test_ports_are_said_the_way_policies_write_them() -> None:
    tcp_udp = [(6, 22, 22), (17, 22, 22)]
    assert ports_text(tcp_udp) == "port 22"
    assert ports_text([*tcp_udp, (6, 443, 443), (17, 443, 443)]) == "ports 22, 443"
    everything = [(6, 0, 65535), (17, 0, 65535), (1, 0, 65535), (58, 0, 65535)]
    assert ports_text(everything) == "any port"
    assert ports_text([(6, 22, 22)]) == "tcp/22"
    assert ports_text([(17, 53, 53), (1, 0, 65535)]) == "udp/53, icmp"
    assert ports_text([(p, 0, 21) for p in (6, 17)] + [(p, 23, 65535) for p in (6, 17)]) == (
        "any tcp or udp port except 22"
    )


class _Nodes(BaseHTTPRequestHandler):
    nodes: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        lists = {"/api/v1/nodes": self.nodes, "/api/v1/users": self.users}
        ok = self.path in lists and self.headers["Authorization"] == "Bearer tskey-good"
        body = json.dumps(lists[self.path] if ok else {"error": "unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Nodes.nodes = [
        {
            "id": 1,
            "name": "db-1",
            "user": "alice",
            "tags": ["tag:db"],
            "ipv4": "100.64.0.1",
            "ipv6": "fd7a:115c:a1e0::1",
        },
        {
            "id": 2,
            "name": "bob-laptop",
            "user": "bob",
            "tags": [],
            "ipv4": "100.64.0.2",
            "ipv6": None,
        },
    ]
    _Nodes.users = [{"name": "bob", "email": "bob@example.com", "source": "git", "groups": []}]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Nodes)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_live_nodes_from_a_running_server(
    repo: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    change(repo, policy(BOB_DB))
    args = ["diff", "HEAD~1", "HEAD", "--server", server, "--format", "json"]
    assert main([*args, "--api-key", "tskey-good"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["topology"] == server
    assert [(r["src"]["name"], r["dst"]["name"], r["summary"]) for r in doc["reach"]] == [
        ("bob@example.com", "tag:db", "port 5432")
    ]
    assert main([*args, "--api-key", "tskey-bad"]) == 2
    assert "401" in capsys.readouterr().err


def test_runtime_users_and_their_login_groups_come_from_the_server(
    repo: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # dave logged in through the identity provider (not in users.yaml) with group ops
    _Nodes.users = [
        {"name": "bob", "email": "bob@example.com", "source": "git", "groups": []},
        {
            "name": "dave@example.com",
            "email": "dave@example.com",
            "source": "runtime",
            "last_login": "2026-01-01T00:00:00Z",
            "groups": ["group:ops"],
        },
    ]
    _Nodes.nodes.append(
        {"id": 3, "name": "dave-pc", "user": "dave@example.com", "tags": [], "ipv4": "100.64.0.3"}
    )
    ops = '{"action": "accept", "src": ["group:ops"], "dst": ["tag:db:5432"]},'
    change(repo, policy(BOB_SSH_DB + ops).replace('"groups": {', '"groups": {"group:ops": [], '))
    args = ["diff", "HEAD~1", "HEAD", "--server", server, "--api-key", "tskey-good"]
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["src"]["name"], r["dst"]["name"], r["summary"]) for r in doc["reach"]] == [
        ("dave@example.com", "tag:db", "port 5432, icmp")  # could not even ping it before
    ]


def test_the_api_key_may_come_from_the_environment(
    repo: Path, server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TAILNETD_API_KEY", "tskey-good")
    assert main(["diff", "HEAD", "--server", server]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("No access changes") and "warning" not in captured.err


def test_a_revision_that_does_not_load(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, "{ not json")
    assert main(["diff", "HEAD~1", "HEAD"]) == 1
    err = capsys.readouterr().err
    assert "gitctl diff: HEAD does not load:" in err and "tailnet.d/policy.hujson:1:" in err
    assert main(["diff", "no-such-rev"]) == 1


def test_usage_errors_exit_2(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TAILNETD_API_KEY", raising=False)
    assert main(["diff", "HEAD", "--api-key", "k"]) == 2
    assert "--api-key is for --server" in capsys.readouterr().err
    assert main(["diff", "HEAD", "--server", "http://127.0.0.1:9"]) == 2
    assert main(["diff", "HEAD", "--server", "http://x", "--topology", "t.json"]) == 2
    assert main(["diff", "HEAD", "--topology", "missing.json"]) == 2
    assert main(["diff"]) == 2


TEST_BOB_DB = '"tests": [{"src": "bob@example.com", "accept": ["tag:db:5432"]}],'
DNS = "magic_dns: true\nbase_domain: tailnet.example\nnameservers:\n  global: [1.1.1.1]\n"


def with_test(text: str) -> str:
    return text.replace('"ssh":', TEST_BOB_DB + '\n  "ssh":')


def test_failing_policy_tests_still_show_the_diff_then_the_failures(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change(repo, with_test(policy(BOB_DB)))
    change(repo, with_test(policy()))  # closes 5432 to bob while the test expects it open
    assert main(["diff", "HEAD~1", "HEAD"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "can no longer reach tag:db on port 5432" in out
    assert out.index("can no longer reach") < out.index("HEAD cannot be served:")
    assert "tailnet.d/policy.hujson:8:" in out and "policy test failed" in out
    assert "gitctl diff: HEAD does not load:" in captured.err


def test_a_broken_file_is_named_and_the_rest_still_diffs(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit_files(repo, {"tailnet.d/dns.yaml": DNS}, "dns")
    broken = {"tailnet.d/dns.yaml": DNS + "  split: [\n", "tailnet.d/policy.hujson": policy(BOB_DB)}
    commit_files(repo, broken, "broken dns, wider policy")
    assert main(["diff", "HEAD~1", "HEAD", "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    assert "can now reach `tag:db` on port 5432" in out
    assert "`tailnet.d/dns.yaml`" in out and "BASE's version" in out
    assert "`tailnet.d/dns.yaml:" in out
    assert main(["diff", "HEAD~1", "HEAD", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["head"]["loads"] is False and doc["head"]["stand_ins"] == ["tailnet.d/dns.yaml"]
    assert doc["head"]["problems"][0]["file"] == "tailnet.d/dns.yaml"
    assert [r["summary"] for r in doc["reach"]] == ["port 5432"]
