"""Identity-provider groups in the running tailnet: stored per user (both backends,
across a restart), and a login that brings a group changes the nodes' maps without
a commit."""

from __future__ import annotations

from datetime import timedelta

from server.store import SqlStore
from server.store.interface import Store
from tests.unit.control_client import T0
from tests.unit.store_backends import Backend
from tests.unit.test_tailnet_commit import BASE, serving, source, tailnet_with, woken

ENG_TO_DB = {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}
POLICY = {**BASE, "groups": {"group:eng": []}, "acls": [*BASE["acls"], ENG_TO_DB]}


def test_the_groups_of_the_last_login_are_kept_across_a_restart(
    backend: Backend, store: SqlStore
) -> None:
    store.set_login_groups("bob@example.com", ["group:ops", "group:eng"], T0)
    store.set_login_groups("bob@example.com", ["group:eng"], T0 + timedelta(hours=1))
    store.set_login_groups("alice@example.com", [], T0)
    store.close()
    with backend.open() as again:
        assert again.login_groups() == {
            "alice@example.com": (),
            "bob@example.com": ("group:eng",),
        }


def test_a_login_with_a_group_changes_maps_without_a_commit(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    tailnet.swap_source(source("groups", POLICY))
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    bob = tailnet.views.get(ids["bob-laptop"])
    assert bob is not None and ids["db"] not in bob.peers

    tailnet.set_login_groups("Bob@example.com", ("group:eng",))

    assert {"bob-laptop", "db"} <= woken(handles)
    bob = tailnet.views.get(ids["bob-laptop"])
    assert bob is not None and ids["db"] in bob.peers

    tailnet.set_login_groups("bob@example.com", ())  # the next login lost the group
    bob = tailnet.views.get(ids["bob-laptop"])
    assert bob is not None and ids["db"] not in bob.peers


def test_the_same_groups_again_wake_no_one(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    tailnet.set_login_groups("bob@example.com", ("group:eng",))
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    tailnet.set_login_groups("bob@example.com", ("group:eng",))
    assert woken(handles) == set()


def test_a_restarted_server_serves_the_stored_groups(store: Store) -> None:
    store.set_login_groups("bob@example.com", ["group:eng"], T0)
    _, ids = tailnet_with(store)
    _, tailnet = serving(store, source("groups", POLICY))
    bob = tailnet.views.get(ids["bob-laptop"])
    assert bob is not None and ids["db"] in bob.peers
