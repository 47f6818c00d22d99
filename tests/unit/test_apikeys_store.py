"""API keys in the store: what an admin relies on when handing out remote access."""

from __future__ import annotations

import random
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.store import (
    KeyRejected,
    NotFound,
    SqlStore,
    open_store,
)
from server.store._rows import ts
from server.store.authkeys import API_KEY, AUTH_KEY
from server.store.migrations import MIGRATIONS
from server.store.sqlite import apply_migrations
from tests.unit.store_backends import Backend
from tests.unit.test_store import NOW, add_node

API_TEXT = re.compile(r"tskey-api-[a-z0-9]{12}-[A-Za-z0-9]{48}\Z")


def new_api_key(
    store: SqlStore, *, seed: int = 1, expiration: timedelta | None = None
) -> tuple[str, int]:
    text, key = store.create_api_key(
        expiration=None if expiration is None else NOW + expiration,
        now=NOW,
        rng=random.Random(seed).randbytes,
    )
    return text, key.id


def refused(store: SqlStore, text: str, when: timedelta = timedelta(0)) -> str:
    with pytest.raises(KeyRejected) as excinfo:
        store.use_api_key(text, NOW + when)
    return excinfo.value.reason


def test_a_new_key_works_and_records_its_last_use(store: SqlStore) -> None:
    text, key_id = new_api_key(store)
    assert API_TEXT.match(text)
    [listed] = store.list_api_keys()
    assert (listed.id, listed.created, listed.expiration, listed.last_used) == (
        key_id, NOW, None, None,
    )  # fmt: skip
    assert text.startswith(f"tskey-api-{listed.prefix}-")
    later = NOW + timedelta(hours=3)
    assert store.use_api_key(text, later).last_used == later
    assert store.list_api_keys()[0].last_used == later
    assert store.use_api_key(f" {text}\n", later)  # pasted with whitespace


def test_a_key_stops_working_at_its_expiration(store: SqlStore) -> None:
    text, _ = new_api_key(store, expiration=timedelta(days=90))
    store.use_api_key(text, NOW + timedelta(days=89))
    assert refused(store, text, timedelta(days=90)) == "API key expired"


def test_expire_by_prefix_or_id_takes_effect_at_once(store: SqlStore) -> None:
    text_a, id_a = new_api_key(store, seed=1)
    text_b, _ = new_api_key(store, seed=2)
    prefix_a = store.list_api_keys()[0].prefix
    assert store.expire_api_key(prefix_a, NOW).expiration == NOW
    assert refused(store, text_a) == "API key expired"
    assert store.use_api_key(text_b, NOW)  # the other key is untouched
    # expiring again never moves an expiration later
    assert store.expire_api_key(id_a, NOW + timedelta(days=1)).expiration == NOW
    with pytest.raises(NotFound, match="no API key with prefix 'nosuchprefix'"):
        store.expire_api_key("nosuchprefix", NOW)
    with pytest.raises(NotFound, match="no API key with id 99"):
        store.expire_api_key(99, NOW)


def test_anything_but_a_stored_key_reads_as_unknown(store: SqlStore) -> None:
    text, _ = new_api_key(store)
    wrong = text[:-1] + ("A" if text[-1] != "A" else "B")
    never_stored, _, _ = API_KEY.generate(random.Random(99).randbytes)
    preauth, _ = store.create_preauth_key(
        "alice", reusable=True, ephemeral=False, tags=(), expiration=None, now=NOW,
        rng=random.Random(1).randbytes,
    )  # fmt: skip
    # Same rng seed: the pre-auth key has the API key's prefix and secret, and
    # still is no API key.
    assert preauth.split("-", 2)[2] == text.split("-", 2)[2]
    for junk in (wrong, never_stored, preauth, "", "tskey-api-", text + "x", text.upper()):
        assert refused(store, junk) == "API key not found"
    assert store.list_api_keys()[0].last_used is None  # a refusal records nothing


def test_api_key_hashes_are_no_pre_auth_key_hashes(store: SqlStore) -> None:
    text, _ = new_api_key(store, seed=3)
    prefix, secret = API_KEY.parse(text) or ("", "")
    assert API_KEY.hash_secret(prefix, secret) != AUTH_KEY.hash_secret(prefix, secret)


def test_plaintext_secret_is_never_written_to_disk(backend: Backend) -> None:
    with backend.open() as store:
        text, _ = new_api_key(store)
        store.use_api_key(text, NOW)
    secret = text.rsplit("-", 1)[1].encode()
    written = backend.written_bytes()
    assert secret not in written and secret[:16] not in written


def test_keys_survive_a_restart(backend: Backend) -> None:
    with backend.open() as store:
        text, key_id = new_api_key(store, expiration=timedelta(days=1))
    with backend.open() as store:
        assert store.use_api_key(text, NOW).id == key_id
        assert store.list_api_keys()[0].expiration == NOW + timedelta(days=1)


def test_prefixes_are_unique_even_when_the_rng_repeats(store: SqlStore) -> None:
    text_a, _ = new_api_key(store, seed=5)
    text_b, _ = new_api_key(store, seed=5)
    assert text_a.split("-")[2] != text_b.split("-")[2]
    assert store.use_api_key(text_b, NOW)


def test_a_database_from_before_api_keys_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(str(path), isolation_level=None)
    apply_migrations(conn, MIGRATIONS[:1])
    # A node as the first version wrote it (today's code writes columns it lacked).
    conn.execute(
        "INSERT INTO nodes (machine_key, node_key, disco_key, ipv4, ipv6, hostname, given_name,"
        " user_name, tags, auth_key_id, ephemeral, created, last_seen, key_expiry, hostinfo,"
        " endpoints, capver) VALUES (?, ?, ?, '100.64.0.1', NULL, 'laptop', 'laptop', 'alice',"
        " '[]', NULL, 0, ?, NULL, NULL, '{}', '[]', 0)",
        (bytes([1]) * 32, bytes([2]) * 32, bytes(32), ts(NOW)),
    )
    conn.close()
    with open_store(path) as store:
        [node] = store.list_nodes()
        assert (node.given_name, str(node.ipv4), node.user) == ("laptop", "100.64.0.1", "alice")
        text, _ = new_api_key(store)
        assert store.use_api_key(text, NOW)


@given(seed=st.integers(min_value=0, max_value=2**64))
def test_generated_keys_parse_back(seed: int) -> None:
    text, prefix, secret = API_KEY.generate(random.Random(seed).randbytes)
    assert API_TEXT.match(text)
    assert API_KEY.parse(text) == (prefix, secret)


def test_a_key_keeps_its_scope_and_old_keys_are_admins(store: SqlStore) -> None:
    text, key = store.create_api_key(
        expiration=None, now=NOW, rng=random.Random(9).randbytes, scope="read"
    )
    assert key.scope == "read"
    assert store.use_api_key(text, NOW).scope == "read"
    new_api_key(store, seed=2)
    assert [k.scope for k in store.list_api_keys()] == ["read", "admin"]


def test_tagging_a_node_drops_its_owner_and_expiry(store: SqlStore) -> None:
    node = add_node(store, 1, key_expiry=NOW + timedelta(days=1))
    tagged = store.set_node_tags(node.id, ["tag:web", "tag:db"])
    assert (tagged.tags, tagged.user, tagged.key_expiry) == (("tag:web", "tag:db"), None, None)
    assert store.get_node(node.id) == tagged
    with pytest.raises(NotFound):
        store.set_node_tags(999, ["tag:web"])
