"""`tailnetd drift`: runtime state that differs from git — keys made at runtime, declared
keys missing, tags set through the API, users no longer in git — exits 1; none exits 0."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from server.cli import main as tailnetd
from server.store.authkeys import generate_key
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, Device, FakeClock, async_test, join, running_server

POLICY = (
    '{"tagOwners": {"tag:ci": ["alice@example.com"], "tag:web": ["alice@example.com"]},'
    ' "acls": []}\n'
)


def keys_yaml(secret: Path, name: str = "ci") -> str:
    return (
        f"keys:\n  - name: {name}\n    tags: [tag:ci]\n    reusable: true\n"
        f"    secret: {{file: {secret}}}\n"
    )


async def drift(
    server: object, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[dict[str, str]]]:
    data = str(server.config.data_dir)  # type: ignore[attr-defined]
    code = await asyncio.to_thread(tailnetd, ["drift", "--data", data, "--json"])
    return code, json.loads(capsys.readouterr().out)["drift"]


@async_test
async def test_drift_names_what_changed_at_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "ci.key"
    key = generate_key(os.urandom)[0]
    secret.write_text(key)
    files = {"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": keys_yaml(secret)}
    async with running_server(tmp_path, files=files, clock=FakeClock()) as server:
        client = await join(server, Device("runner"), auth_key=key)
        await client.close()
        assert await drift(server, capsys) == (0, [])
        data = str(server.config.data_dir)
        assert await asyncio.to_thread(tailnetd, ["drift", "--data", data]) == 0
        assert "no drift" in capsys.readouterr().out

        [node] = server.registry.nodes()
        server.registry.set_tags(node.id, ("tag:web",))
        server.registry.set_runtime_routes(node.id, ["10.9.0.0/24"])
        made, _ = server.store.create_preauth_key(
            "bob", reusable=False, ephemeral=False, tags=(), expiration=None,
            now=server.clock(), rng=os.urandom,
        )  # fmt: skip
        # bob leaves users.yaml with a device still registered; keys.yaml declares a second
        # key whose secret the server cannot read.
        bobs = await join(server, Device("bobs-laptop"), auth_key=made)
        await bobs.close()
        _, spare = server.store.create_preauth_key(
            "alice", reusable=True, ephemeral=False, tags=(), expiration=None,
            now=server.clock(), rng=os.urandom,
        )  # fmt: skip
        other = keys_yaml(tmp_path / "missing.key", "deploy")
        users = "users:\n  - {name: alice, email: alice@example.com}\n"
        repo = TailnetRepo(
            tmp_path / "repo", {"users.yaml": users, "keys.yaml": keys_yaml(secret) + other[5:]}
        )
        await server.on_revision(repo.head())
        assert server.status.serving == repo.head()

        code, found = await drift(server, capsys)
        assert code == 1
        kinds = {(d["kind"], d["subject"]) for d in found}
        assert ("missing-key", "key deploy") in kinds
        assert ("node-tags", f"node {node.id} runner") in kinds
        assert ("unknown-user", "node 2 bobs-laptop") in kinds
        assert ("undeclared-key", f"pre-auth key {spare.prefix}") in kinds
        assert ("runtime-routes", f"node {node.id} runner") in kinds
        assert len(found) == 5  # bob's single-use key is spent: it can tag nothing again
        text = json.dumps(found)
        assert "tag:web (its key gave tag:ci)" in text
        assert key not in text and made not in text  # no key material
        assert await asyncio.to_thread(tailnetd, ["drift", "--data", data]) == 1
        assert "missing-key" in capsys.readouterr().out
