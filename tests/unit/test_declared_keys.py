"""Declared pre-auth keys (keys.yaml) in a running server: created at start, rotated when
the secret they reference changes, expired when removed; a client registers with one."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gitctl.tailnet import KeySpec, SecretRef
from server.declared_keys import read_secret, sync_declared_keys
from server.store import open_store
from server.store.authkeys import generate_key
from server.store.model import KeyRejected
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import (
    USERS,
    ControlClient,
    Device,
    FakeClock,
    async_test,
    running_server,
)

POLICY = '{"tagOwners": {"tag:ci": ["alice@example.com"]}, "acls": []}\n'
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fresh_key() -> str:
    return generate_key(os.urandom)[0]


def keys_yaml(secret_file: Path, **extra: str) -> str:
    more = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    return (
        "keys:\n  - name: ci\n    tags: [tag:ci]\n    reusable: true\n"
        f"    secret: {{file: {secret_file}}}\n{more}"
    )


async def register(server: object, device: Device, key: str) -> dict[str, object]:
    client = await ControlClient.connect(server.port, device.machine)  # type: ignore[attr-defined]
    try:
        status, reply = await client.register(device.register_body(key))
        assert status == 200
        return dict(reply)
    finally:
        await client.close()


@async_test
async def test_declare_register_rotate_and_remove(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "ci.key"
    first = fresh_key()
    secret.write_text(first + "\n")
    files = {"users.yaml": USERS, "policy.hujson": POLICY, "keys.yaml": keys_yaml(secret)}
    caplog.set_level(logging.INFO, logger="tailnetd.test")
    async with running_server(tmp_path, files=files, clock=FakeClock()) as server:
        [key] = server.store.list_preauth_keys()
        assert (key.declared_name, key.tags, key.reusable, key.user) == (
            "ci",
            ("tag:ci",),
            True,
            "",
        )
        assert "declared key ci: created" in caplog.text
        assert first not in caplog.text  # the secret is never logged

        reply = await register(server, Device("runner-1"), first)
        assert not reply.get("Error"), reply
        [node] = server.store.list_nodes()
        assert (node.tags, node.user) == (("tag:ci",), None)

        # Rotate: the operator changes the secret; the next served commit picks it up.
        second = fresh_key()
        secret.write_text(second)
        repo = TailnetRepo(tmp_path / "repo", {"keys.yaml": keys_yaml(secret, ephemeral="true")})
        await server.on_revision(repo.head())
        assert "declared key ci: rotated" in caplog.text
        reply = await register(server, Device("runner-2"), first)
        assert reply.get("Error"), "the old secret must stop working"
        reply = await register(server, Device("runner-3"), second)
        assert not reply.get("Error"), reply
        [key] = server.store.list_preauth_keys()  # one row per declared name
        assert key.ephemeral

        # Remove: the key is expired, not deleted (nodes keep their record of it).
        repo = TailnetRepo(tmp_path / "repo", {"keys.yaml": None})
        await server.on_revision(repo.head())
        [key] = server.store.list_preauth_keys()
        assert key.expiration == server.clock()
        assert "declared key ci: expired (no longer in keys.yaml)" in caplog.text
        reply = await register(server, Device("runner-4"), second)
        assert reply.get("Error")
        assert len(server.store.list_nodes()) == 2  # registered nodes stay


def spec(ref: SecretRef, **kw: object) -> KeySpec:
    args: dict[str, object] = {
        "name": "laptop", "user": "alice", "tags": (), "reusable": False, "ephemeral": False,
        "expires": None, "secret": ref,
    } | kw  # fmt: skip
    return KeySpec(**args)  # type: ignore[arg-type]


def test_sync_outcomes_and_what_is_refused(tmp_path: Path) -> None:
    ref = SecretRef("env", "K")
    text = fresh_key()
    env = {"K": text}
    with open_store(tmp_path / "state.db") as store:

        def sync(*specs: KeySpec) -> list[tuple[str, str]]:
            done = sync_declared_keys(store, specs, lambda r: read_secret(r, env), NOW)
            return [(a.name, a.outcome) for a in done]

        assert sync(spec(ref)) == [("laptop", "created")]
        assert sync(spec(ref)) == [("laptop", "unchanged")]
        assert store.check_preauth_key(text, NOW).declared_name == "laptop"
        assert sync(spec(ref, reusable=True)) == [("laptop", "updated")]
        # A declared expiry in the past: the key stays, but no longer works.
        assert sync(spec(ref, expires=NOW)) == [("laptop", "updated")]
        with pytest.raises(KeyRejected):
            store.check_preauth_key(text, NOW)
        assert sync(spec(ref)) == [("laptop", "updated")]
        # An unreadable secret leaves the key as it was, reported.
        assert sync(spec(SecretRef("env", "MISSING"))) == [("laptop", "unreadable")]
        assert store.check_preauth_key(text, NOW).id == 1
        # Text that is no key, and a second name reusing a key's text, are refused.
        env["BAD"] = "hunter2"
        assert sync(spec(ref), spec(SecretRef("env", "BAD"), name="x")) == [
            ("laptop", "unchanged"),
            ("x", "refused"),
        ]
        assert sync(spec(ref), spec(ref, name="copy")) == [
            ("laptop", "unchanged"),
            ("copy", "refused"),
        ]
        # An API-made key is never touched by the sync.
        made, _ = store.create_preauth_key(
            "alice", reusable=False, ephemeral=False, tags=(), expiration=None, now=NOW,
            rng=os.urandom,
        )  # fmt: skip
        assert sync() == [("laptop", "expired")]
        assert store.check_preauth_key(made, NOW).declared_name is None


def test_a_secret_file_is_read_stripped_and_bounded(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("  tskey-auth-x \n")
    assert read_secret(SecretRef("file", str(f))) == "tskey-auth-x"
    f.write_text("x" * 5000)
    assert read_secret(SecretRef("file", str(f))) is None
    assert read_secret(SecretRef("file", str(tmp_path / "none"))) is None
    assert read_secret(SecretRef("env", "E"), {"E": "  "}) is None
