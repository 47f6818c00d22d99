"""Signed commits as the change authority, in process: a commit not signed by a trusted
key is refused like any broken commit (status, history) while the last good one keeps
serving; a signed one is served with its signer. History survives restarts, and a
`git revert` serves the previous policy again."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from server.admin_client import SocketTarget, call
from server.app import Server
from server.cli import main as cli_main
from server.startup import StartupError
from tests.unit.control_client import USERS, async_test, loopback_config
from tests.unit.signing import SigningKey, make_key, signed_commit

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:%d"]}]}\n'
SIGNERS = ".tailnet/allowed_signers"
SETTINGS = f"trusted_signers: {{file: {SIGNERS}}}\n"


def new_repo(path: Path, key: SigningKey | None, files: dict[str, str]) -> str:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return signed_commit(path, files, "initial tailnet", key)


@asynccontextmanager
async def serving(repo: Path, data: Path, outside: Path | None = None) -> AsyncIterator[Server]:
    config = dataclasses.replace(loopback_config(repo, data), trusted_signers=outside)
    server = Server(config, log=logging.getLogger("tailnetd.test"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def history(server: Server) -> list[dict[str, object]]:
    answer = call(SocketTarget(server.config.socket_path), "GET", "/api/v1/history?limit=50")
    entries: list[dict[str, object]] = answer["history"]
    return entries


@async_test
async def test_outside_signers_an_unsigned_commit_is_refused_a_signed_one_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    outside = tmp_path / "allowed_signers"
    outside.write_text(alice.allowed_line)
    repo = tmp_path / "repo"
    first = new_repo(
        repo, alice, {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": POLICY % 22}
    )
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        async with serving(repo, Path(data), outside) as server:
            assert server.status.serving == first
            assert server.status.to_json()["signer"] == "alice@example.com"

            unsigned = signed_commit(repo, {"tailnet.d/policy.hujson": POLICY % 80}, "u", None)
            await server.on_revision(unsigned)
            assert server.status.serving == first  # the last good keeps serving
            rejected = server.status.to_json()["rejected"]
            assert rejected["revision"] == unsigned
            assert rejected["errors"] == [
                f"commit {unsigned[:12]} is not signed (trusted signers: {outside})"
            ]

            signed = signed_commit(repo, {"tailnet.d/policy.hujson": POLICY % 443}, "s", alice)
            await server.on_revision(signed)
            assert server.status.serving == signed
            assert server.status.rejected is None
            assert server.tailnet.source.id == signed

            entries = await asyncio.to_thread(history, server)
            assert [(e["revision"], e["outcome"], e["signer"]) for e in entries] == [
                (signed, "served", "alice@example.com"),
                (unsigned, "rejected", None),
                (first, "served", "alice@example.com"),
            ]
            assert "is not signed" in str(entries[1]["reasons"])
            assert await asyncio.to_thread(cli_main, ["history", "--data", data]) == 0
            shown = capsys.readouterr().out.splitlines()
            assert shown[0].split()[1:] == ["served", signed[:12], "alice@example.com"]
            assert shown[2].strip().startswith(f"commit {unsigned[:12]} is not signed")


@async_test
async def test_in_repo_signers_adding_a_key_takes_an_already_trusted_one(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    mallory = make_key(tmp_path / "keys", "mallory")
    repo = tmp_path / "repo"
    files = {
        "tailnet.d/users.yaml": USERS,
        "tailnet.d/settings.yaml": SETTINGS,
        SIGNERS: alice.allowed_line,
    }
    # The first commit of a fresh data dir is checked against its own list.
    first = new_repo(repo, alice, files)
    both = alice.allowed_line + mallory.allowed_line
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        async with serving(repo, Path(data)) as server:
            assert server.status.signer == "alice@example.com"
            own_key = signed_commit(repo, {SIGNERS: both}, "let me in", mallory)
            await server.on_revision(own_key)
            assert server.status.serving == first
            assert server.status.rejected is not None
            (error,) = server.status.rejected.errors
            assert f"{SIGNERS} at {first[:12]}" in error and "not a trusted signer" in error

            subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", first], check=True)
            added = signed_commit(repo, {SIGNERS: both}, "add mallory", alice)
            await server.on_revision(added)
            assert server.status.serving == added

        # Across a restart the chain goes on from the last served commit's list.
        by_mallory = signed_commit(repo, {"tailnet.d/policy.hujson": POLICY % 80}, "m", mallory)
        async with serving(repo, Path(data)) as server:
            assert (server.status.serving, server.status.signer) == (
                by_mallory,
                "mallory@example.com",
            )
            assert [e.outcome for e in server.history.entries()] == [
                "served",
                "served",
                "rejected",
                "served",
            ]

        # A new HEAD the served list does not trust: the last good commit serves.
        eve = make_key(tmp_path / "keys", "eve")
        by_eve = signed_commit(repo, {SIGNERS: eve.allowed_line}, "mine now", eve)
        async with serving(repo, Path(data)) as server:
            assert server.status.serving == by_mallory
            assert server.status.rejected is not None
            assert server.status.rejected.revision == by_eve


@async_test
async def test_git_revert_serves_the_previous_policy_again(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": POLICY % 22}
    new_repo(repo, None, files)
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        async with serving(repo, Path(data)) as server:

            def served_policy() -> object:
                assert server.tailnet.source.id == server.status.serving
                return server.repo.check(server.status.serving).snapshot.policy_doc

            before = served_policy()
            change = signed_commit(repo, {"tailnet.d/policy.hujson": POLICY % 80}, "open 80", None)
            await server.on_revision(change)
            assert served_policy() != before
            git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
            subprocess.run([*git, "revert", "--no-edit", change], check=True, capture_output=True)
            reverted = subprocess.run(
                [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
            ).stdout.strip()
            await server.on_revision(reverted)
            assert server.status.serving == reverted
            assert served_policy() == before


@async_test
async def test_trusted_signers_on_a_plain_directory_refuse_to_start(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / "tailnet.d").mkdir(parents=True)
    (plain / "tailnet.d" / "users.yaml").write_text(USERS)
    signers = tmp_path / "signers"
    signers.write_text("")
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        config = dataclasses.replace(loopback_config(plain, Path(data)), trusted_signers=signers)
        server = Server(config, log=logging.getLogger("test"))
        with pytest.raises(StartupError, match="--trusted-signers needs a git repository"):
            await server.start()
