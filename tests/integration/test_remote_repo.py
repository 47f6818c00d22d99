"""Serving a remote repository: cloned into the data dir, followed by fetching
on an interval and on `tailnetd status --sync` (POST /api/v1/repo/sync)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import ROOT, ServerProcess, TailnetRepo

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"
POLICY = '{"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["*:*"]}]}\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TailnetRepo, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("remote")
    upstream = TailnetRepo(tmp / "upstream", {"users.yaml": USERS, "policy.hujson": POLICY})
    # A long interval: the test moves the server with --sync, not by waiting.
    server = ServerProcess(
        f"file://{upstream.path}",
        tmp / "data",
        tmp / "tailnetd.log",
        extra=["--fetch-interval", "3600"],
    )
    server.start()
    try:
        yield upstream, server
    finally:
        server.stop()


def status(server: ServerProcess, *flags: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "status",
            "--json",
            *flags,
            "--data",
            str(server.data),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, json.loads(out.stdout)


def test_the_remote_head_is_cloned_and_served(served: tuple[TailnetRepo, ServerProcess]) -> None:
    upstream, server = served
    assert (server.data / "repo.git" / "HEAD").exists()
    _, body = status(server)
    assert body["serving"] == upstream.head()


def test_sync_fetches_and_serves_a_new_commit(served: tuple[TailnetRepo, ServerProcess]) -> None:
    upstream, server = served
    sha = upstream.commit(
        {"users.yaml": USERS + "  - {name: bob, email: bob@example.com}\n"}, "bob joins"
    )
    _, before = status(server)
    assert before["serving"] != sha  # not fetched yet
    _, after = status(server, "--sync")
    assert after["serving"] == sha


def test_a_broken_remote_commit_is_rejected_and_the_last_good_keeps_serving(
    served: tuple[TailnetRepo, ServerProcess],
) -> None:
    upstream, server = served
    good = upstream.head()
    bad = upstream.commit({"policy.hujson": POLICY.replace("[{", "[[{")}, "broken")
    _, body = status(server, "--sync")
    assert body["serving"] == good
    assert body["rejected"]["revision"] == bad
    assert any("policy.hujson:" in e for e in body["rejected"]["errors"])
