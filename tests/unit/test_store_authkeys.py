"""Pre-auth keys: the life cycle a user relies on, and that secrets stay secret."""

from __future__ import annotations

import random
import re
from datetime import timedelta
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.store import AddressExhausted, Conflict, KeyRejected, NotFound, SqlStore
from server.store.authkeys import generate_key, parse_key
from tests.unit.store_backends import Backend
from tests.unit.test_store import NOW, add_node, nkey, registration

KEY_TEXT = re.compile(r"tskey-auth-[a-z0-9]{12}-[A-Za-z0-9]{48}\Z")


def new_key(
    store: SqlStore, *, seed: int = 1, user: str = "alice", **kwargs: object
) -> tuple[str, int]:
    args: dict[str, object] = {
        "reusable": False,
        "ephemeral": False,
        "tags": (),
        "expiration": None,
        "now": NOW,
        "rng": random.Random(seed).randbytes,
    } | kwargs
    text, key = store.create_preauth_key(user, **args)  # type: ignore[arg-type]
    return text, key.id


def rejected(store: SqlStore, text: str, when: timedelta = timedelta(0)) -> str:
    with pytest.raises(KeyRejected) as excinfo:
        store.check_preauth_key(text, NOW + when)
    return excinfo.value.reason


def test_single_use_key_registers_exactly_once(store: SqlStore) -> None:
    text, key_id = new_key(store, tags=("tag:ci",), ephemeral=True)
    assert KEY_TEXT.match(text)
    key = store.check_preauth_key(text, NOW)
    assert (key.id, key.user, key.tags, key.ephemeral) == (key_id, "alice", ("tag:ci",), True)
    assert text.startswith(f"tskey-auth-{key.prefix}-")
    assert store.use_preauth_key(key_id).used
    assert rejected(store, text) == "auth key already used"
    with pytest.raises(KeyRejected, match="auth key already used"):
        store.use_preauth_key(key_id)


def test_reusable_key_registers_many_times(store: SqlStore) -> None:
    text, key_id = new_key(store, reusable=True)
    for _ in range(3):
        assert store.check_preauth_key(text, NOW).id == key_id
        store.use_preauth_key(key_id)
    assert store.list_preauth_keys()[0].used  # shown as used, still accepted


def test_key_expires_at_its_expiration(store: SqlStore) -> None:
    text, _ = new_key(store, expiration=NOW + timedelta(hours=1))
    store.check_preauth_key(text, NOW + timedelta(minutes=59))
    assert rejected(store, text, timedelta(hours=1)) == "auth key expired"


def test_expire_and_revoke_by_id_or_prefix(store: SqlStore) -> None:
    text_a, id_a = new_key(store, seed=1)
    text_b, _ = new_key(store, seed=2)
    expired = store.expire_preauth_key(id_a, NOW)
    assert expired.expiration == NOW
    assert rejected(store, text_a) == "auth key expired"
    prefix_b = store.check_preauth_key(text_b, NOW).prefix
    assert store.revoke_preauth_key(prefix_b).revoked
    assert rejected(store, text_b) == "auth key revoked"
    # expiring again never moves an expiration later
    assert store.expire_preauth_key(id_a, NOW + timedelta(days=1)).expiration == NOW
    with pytest.raises(NotFound, match="no auth key with prefix 'nosuchprefix'"):
        store.revoke_preauth_key("nosuchprefix")
    with pytest.raises(NotFound, match="no auth key with id 99"):
        store.expire_preauth_key(99, NOW)


def test_wrong_secret_with_right_prefix_reads_as_unknown_key(store: SqlStore) -> None:
    text, _ = new_key(store)
    wrong = text[:-1] + ("A" if text[-1] != "A" else "B")
    assert rejected(store, wrong) == "auth key not found"
    other_store_key, _, _ = generate_key(random.Random(99).randbytes)
    assert rejected(store, other_store_key) == "auth key not found"
    for junk in ("", "tskey-auth-", "hskey-auth-x-y", text + "x", text.upper(), text[:40]):
        assert rejected(store, junk) == "auth key not found"
    assert store.check_preauth_key(f"  {text}\n", NOW)  # pasted with whitespace


def test_plaintext_secret_is_never_written_to_disk(backend: Backend) -> None:
    with backend.open() as store:
        text, _ = new_key(store)
        store.check_preauth_key(text, NOW)
    secret = text.rsplit("-", 1)[1].encode()
    written = backend.written_bytes()
    assert secret not in written and secret[:16] not in written
    assert text.encode() not in written


def test_keys_survive_a_restart_and_list_by_user(backend: Backend) -> None:
    with backend.open() as store:
        text, _ = new_key(store, seed=1, user="alice", tags=("tag:a", "tag:b"))
        new_key(store, seed=2, user="bob")
        new_key(store, seed=3, user="alice", reusable=True)
    with backend.open() as store:
        assert store.check_preauth_key(text, NOW).tags == ("tag:a", "tag:b")
        assert [k.user for k in store.list_preauth_keys()] == ["alice", "bob", "alice"]
        alice = store.list_preauth_keys("alice")
        assert [k.reusable for k in alice] == [False, True]
        assert store.list_preauth_keys("carol") == []


def test_prefixes_are_unique_even_when_the_rng_repeats(store: SqlStore) -> None:
    # Two fresh rngs with one seed draw the same prefix first; the store draws again.
    text_a, _ = new_key(store, seed=5)
    text_b, _ = new_key(store, seed=5)
    assert text_a.split("-")[2] != text_b.split("-")[2]
    assert store.check_preauth_key(text_b, NOW)


@given(seed=st.integers(min_value=0, max_value=2**64))
def test_generated_keys_parse_back(seed: int) -> None:
    text, prefix, secret = generate_key(random.Random(seed).randbytes)
    assert KEY_TEXT.match(text)
    assert parse_key(text) == (prefix, secret)


def test_registering_a_node_consumes_a_single_use_key_atomically(store: SqlStore) -> None:
    text, key_id = new_key(store, tags=("tag:ci",))
    key = store.check_preauth_key(text, NOW)
    node = add_node(store, 1, "ci", user=None, tags=key.tags, auth_key_id=key.id)
    assert node.auth_key_id == key_id and node.tags == ("tag:ci",)
    assert rejected(store, text) == "auth key already used"
    with pytest.raises(KeyRejected, match="auth key already used"):
        add_node(store, 2, "ci", user=None, auth_key_id=key_id)
    assert [n.id for n in store.list_nodes()] == [node.id]


def test_a_failed_registration_does_not_burn_the_key(backend: Backend) -> None:
    with backend.open(ipv4_prefix=IPv4Network("100.64.0.0/30")) as store:
        text, key_id = new_key(store)
        add_node(store, 1, "a")
        add_node(store, 2, "b")
        with pytest.raises(AddressExhausted):
            add_node(store, 3, "c", auth_key_id=key_id)
        assert not store.check_preauth_key(text, NOW).used


def test_expired_or_revoked_key_cannot_register(store: SqlStore) -> None:
    _, expiring = new_key(store, seed=1, expiration=NOW + timedelta(minutes=5))
    _, revoked = new_key(store, seed=2)
    store.revoke_preauth_key(revoked)
    with pytest.raises(KeyRejected, match="auth key expired"):
        add_node(store, 1, auth_key_id=expiring, now=NOW + timedelta(minutes=5))
    with pytest.raises(KeyRejected, match="auth key revoked"):
        add_node(store, 1, auth_key_id=revoked)
    assert store.list_nodes() == []


def test_reregistering_a_machine_keeps_node_id_addresses_and_name(store: SqlStore) -> None:
    node = add_node(store, 1, "laptop", user="alice")
    text, key_id = new_key(store, user="bob", reusable=True)
    later = NOW + timedelta(days=1)
    again = store.reregister_node(node.id, registration(
        1, "laptop", node_key=nkey(77), user="bob", auth_key_id=key_id, now=later,
        key_expiry=later + timedelta(days=180),
    ))  # fmt: skip
    assert (again.id, again.ipv4, again.ipv6, again.given_name) == (
        node.id, node.ipv4, node.ipv6, node.given_name,
    )  # fmt: skip
    assert (again.node_key, again.user, again.auth_key_id) == (nkey(77), "bob", key_id)
    assert again.key_expiry == later + timedelta(days=180) and again.last_seen == later
    assert store.check_preauth_key(text, later).used
    other = add_node(store, 2, "phone")
    with pytest.raises(Conflict):
        store.reregister_node(node.id, registration(1, node_key=other.node_key, now=later))
