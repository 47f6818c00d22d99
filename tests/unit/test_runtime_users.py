"""Runtime users: identities not declared in git, admitted at login when the operator
says so. Stored (both backends, across a restart) by one writer whose events the
running tailnet follows: their nodes join the maps as `autogroup:member` without a
commit, leave them when the operator deletes the user, and a commit that declares the
same email makes the person a git user without a duplicate."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server import cli
from server.admin_client import AdminError, Target
from server.oidc.login import OidcLogin
from server.oidc.refusal import Refusal
from server.store import SqlStore, open_store
from server.store.interface import Store
from server.store.migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from server.tailnet import UserRegistry
from server.tailnet.hub import Tailnet
from server.tailnet.replicas import Notice, Replicas, decode_notice, encode_notice
from server.tailnet.source import TailnetSource
from tests.unit.control_client import T0, FakeClock
from tests.unit.store_backends import Backend
from tests.unit.test_admin_api import Apis, apis, request
from tests.unit.test_oidc import SETTINGS
from tests.unit.test_oidc_login import StandIn, start
from tests.unit.test_pending_logins import begin, make
from tests.unit.test_replicas import Bus, Side
from tests.unit.test_tailnet_commit import USERS, register, serving, source, woken

__all__ = ["apis"]  # fixtures

LOG = logging.getLogger("tailnetd.test")
MEMBERS = {"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["*:*"]}]}
DAVE = "dave@example.com"


def test_migration_10_is_in_both_lists() -> None:
    assert MIGRATIONS[9].version == POSTGRES_MIGRATIONS[9].version == 10
    assert "runtime_users" in MIGRATIONS[9].statements[0]
    assert "runtime_users" in POSTGRES_MIGRATIONS[9].statements[0]


def test_a_runtime_user_is_kept_with_its_last_login_across_a_restart(
    backend: Backend, store: SqlStore
) -> None:
    first, new = store.admit_runtime_user(DAVE, T0)
    assert new and first.created == first.last_login == T0
    again, new = store.admit_runtime_user(DAVE, T0 + timedelta(hours=2))
    assert not new and (again.created, again.last_login) == (T0, T0 + timedelta(hours=2))
    store.admit_runtime_user("erin@example.com", T0)
    store.close()
    with backend.open() as reopened:
        assert [(u.email, u.last_login) for u in reopened.runtime_users()] == [
            (DAVE, T0 + timedelta(hours=2)),
            ("erin@example.com", T0),
        ]
        assert reopened.delete_runtime_user(DAVE) and not reopened.delete_runtime_user(DAVE)
        assert [u.email for u in reopened.runtime_users()] == ["erin@example.com"]


@pytest.fixture
def mem() -> Store:
    return open_store(Path(":memory:"))


def members(mem: Store) -> tuple[Tailnet, UserRegistry, int, int]:
    """A tailnet where every member reaches every device, with a node of git user alice
    and one of dave, who is not in git; the user registry the tailnet follows."""
    registry, tailnet = serving(mem, source("members", MEMBERS))
    users = UserRegistry(mem, log=LOG)
    users.subscribe(tailnet.apply_user)
    alice = register(registry, 1, "alice-laptop", "alice")
    return tailnet, users, alice, register(registry, 2, "dave-pc", DAVE)


def test_a_runtime_user_s_node_is_served_to_members_without_a_commit(mem: Store) -> None:
    tailnet, users, alice, dave = members(mem)
    assert not tailnet.serves(dave)  # not a user of the tailnet yet
    handles = {"alice": tailnet.open_session(alice)}
    woken(handles)

    users.admit("Dave@Example.com", T0)

    assert woken(handles) == {"alice"}
    view = tailnet.views.get(alice)
    assert view is not None and dave in view.peers
    dave_view = tailnet.views.get(dave)
    assert dave_view is not None and alice in dave_view.peers
    assert tailnet.source.users[DAVE] == (DAVE, DAVE)  # in the user profiles
    assert tailnet.source.runtime_users == {DAVE}

    # the operator deletes the runtime user: its node is cut off as if removed from git
    assert users.delete(DAVE)
    assert not tailnet.serves(dave) and dave in {n.id for n in tailnet.cut_off()}
    view = tailnet.views.get(alice)
    assert view is not None and dave not in view.peers


def test_a_restarted_server_serves_the_stored_runtime_users(mem: Store) -> None:
    registry, _ = serving(mem, source("members", MEMBERS))
    dave = register(registry, 2, "dave-pc", DAVE)
    UserRegistry(mem, log=LOG).admit(DAVE, T0)
    _, tailnet = serving(mem, source("members", MEMBERS))
    assert tailnet.serves(dave)


def test_git_wins_a_commit_declaring_the_email_makes_a_git_user(mem: Store) -> None:
    tailnet, users, alice, dave = members(mem)
    users.admit(DAVE, T0)

    declared = {**USERS, "dave": (DAVE, "Dave")}
    tailnet.swap_source(replace(source("dave", MEMBERS), users=declared))

    assert tailnet.source.users == declared  # no second dave
    assert tailnet.source.runtime_users == frozenset()
    assert tailnet.serves(dave) and tailnet.context.nodes[dave].user == "dave"
    view = tailnet.views.get(alice)
    assert view is not None and dave in view.peers
    # a runtime user git declares cannot be served twice, even when it logs in again
    users.admit(DAVE, T0 + timedelta(hours=1))
    assert tailnet.source.users == declared


def test_with_runtime_users_is_idempotent() -> None:
    from server.tailnet.source import with_runtime_users

    src: TailnetSource = source("s", MEMBERS)
    once = with_runtime_users(src, [DAVE])
    assert with_runtime_users(once, [DAVE]) == once
    assert with_runtime_users(once, []).users == src.users


def _oidc(
    tmp_path: Path, admit: bool, in_git: bool = False
) -> tuple[OidcLogin, StandIn, object, UserRegistry]:
    store = open_store(tmp_path / "s.sqlite")
    logins, registry = make(store, FakeClock())
    users = UserRegistry(store, log=LOG)
    provider = StandIn({"dave": {"email": DAVE, "groups": ["ops"]}})
    oidc = OidcLogin(
        replace(SETTINGS, admit_unknown=admit),
        provider,
        logins,
        users=lambda: {"alice@example.com": "alice"},
        record_groups=lambda email, groups: None,
        admit_runtime=lambda email: users.admit(email, T0),
        admit_unknown=lambda: in_git,
        clock=FakeClock(),
        log=LOG,
    )
    return oidc, provider, registry, users


def test_an_undeclared_identity_logs_in_as_a_runtime_user_when_admitted(tmp_path: Path) -> None:
    oidc, provider, registry, users = _oidc(tmp_path, admit=True)
    logins = oidc._logins
    _, node_key, login = begin(logins, FakeClock())
    who = asyncio.run(oidc.finish("dave", start(oidc, provider, login.auth_id), ""))
    assert (who.user, who.declared, who.groups) == (DAVE, False, ("group:ops",))
    assert [u.email for u in users.users()] == [DAVE]
    node = registry.by_node_key(node_key)  # type: ignore[attr-defined]
    assert node is not None and node.user == DAVE


def test_settings_yaml_in_git_can_admit_them_too(tmp_path: Path) -> None:
    # oidc_admit_unknown: true in the serving commit's settings.yaml, server flag off
    oidc, provider, _, users = _oidc(tmp_path, admit=False, in_git=True)
    _, _, login = begin(oidc._logins, FakeClock())
    who = asyncio.run(oidc.finish("dave", start(oidc, provider, login.auth_id), ""))
    assert (who.user, who.declared) == (DAVE, False)
    assert [u.email for u in users.users()] == [DAVE]


def test_the_setting_is_read_from_settings_yaml(tmp_path: Path) -> None:
    from gitctl.snapshot import load_from_directory

    (tmp_path / "users.yaml").write_text("users:\n  - {name: alice, email: alice@example.com}\n")
    loaded = load_from_directory(tmp_path)
    assert loaded.snapshot is not None and loaded.snapshot.settings.oidc_admit_unknown is False
    (tmp_path / "settings.yaml").write_text("oidc_admit_unknown: true\n")
    loaded = load_from_directory(tmp_path)
    assert loaded.snapshot is not None and loaded.snapshot.settings.oidc_admit_unknown is True
    (tmp_path / "settings.yaml").write_text("oidc_admit_unknown: sure\n")
    refused = load_from_directory(tmp_path)
    assert refused.snapshot is None
    assert any("oidc_admit_unknown" in str(d) for d in refused.diagnostics)


def test_without_the_setting_the_refusal_names_the_email(tmp_path: Path) -> None:
    oidc, provider, _, users = _oidc(tmp_path, admit=False)
    _, _, login = begin(oidc._logins, FakeClock())
    with pytest.raises(Refusal) as exc:
        asyncio.run(oidc.finish("dave", start(oidc, provider, login.auth_id), ""))
    assert exc.value.check == "unknown_user" and DAVE in exc.value.message
    assert users.users() == []


def test_tailnetd_users_lists_the_source_and_deletes_a_runtime_user(
    apis: Apis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def through_the_api(target: Target, method: str, path: str, body: Any = None) -> Any:
        answer = request(apis.socket, method, path)
        if answer.status >= 400:
            raise AdminError(str(answer.body["detail"]))
        return answer.body

    monkeypatch.setattr(cli, "call", through_the_api)
    assert apis.deps.users is not None
    apis.deps.users.admit(DAVE, apis.clock())
    assert cli.main(["users", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "EMAIL", "DISPLAY_NAME", "NODES", "SOURCE", "LAST_LOGIN"]
    assert lines[1].split()[4:] == ["git", "-"]
    assert lines[2].split()[:5] == [DAVE, DAVE, DAVE, "0", "runtime"]
    assert cli.main(["users", "--json"]) == 0
    assert [u["source"] for u in json.loads(capsys.readouterr().out)] == ["git", "runtime"]
    assert cli.main(["users", "delete", DAVE]) == 0
    assert cli.main(["users", "delete", "alice"]) == 1
    assert "declared in git" in capsys.readouterr().err
    assert [u.email for u in apis.deps.users.users()] == []


def test_nodes_of_a_runtime_user_git_declares_are_listed_under_the_git_name(apis: Apis) -> None:
    assert apis.deps.users is not None
    apis.deps.users.admit(DAVE, apis.clock())
    register(apis.deps.registry, 2, "dave-pc", DAVE)
    assert [n["user"] for n in request(apis.socket, "GET", "/api/v1/nodes").body] == [DAVE]

    declared = {**apis.tailnet.source.users, "dave": (DAVE, "Dave")}
    apis.tailnet.swap_source(replace(apis.tailnet.source, id="dave", users=declared))

    assert [n["user"] for n in request(apis.socket, "GET", "/api/v1/nodes").body] == ["dave"]
    listed = request(apis.socket, "GET", "/api/v1/nodes?user=dave").body
    assert [n["name"] for n in listed] == ["dave-pc"]
    assert request(apis.socket, "GET", f"/api/v1/nodes?user={DAVE}").body == []
    inventory = request(apis.socket, "GET", "/api/v1/inventory").body
    assert [n["user"] for n in inventory["nodes"]] == ["dave"]

    from server.page.facts import node_rows, user_rows

    assert [r.owner for r in node_rows(apis.tailnet, apis.deps.registry)] == ["dave"]
    rows = {r.name: (r.source, r.nodes) for r in user_rows(apis.tailnet, apis.deps.registry)}
    assert rows["dave"] == ("git", 1) and DAVE not in rows


def test_a_runtime_user_admitted_or_deleted_on_one_replica_reaches_the_other(
    tmp_path: Path,
) -> None:
    shared = open_store(tmp_path / "shared.db")
    bus = Bus()
    users = {name: UserRegistry(shared, log=LOG) for name in ("a", "b")}
    seen: list[tuple[str, str]] = []
    users["b"].subscribe(lambda change: seen.append((change.kind, change.email)))
    sides = [Side(name, shared, bus.send) for name in ("a", "b")]
    for side in sides:
        side.replicas = Replicas(
            side.replicas.replica,
            side.registry,
            bus.send,
            known=side.records.get,
            known_ids=lambda side=side: frozenset(side.records),  # type: ignore[misc]
            log=LOG,
            users=users[side.replicas.replica],
        )
    bus.sides += sides
    users["a"].admit(DAVE, T0)
    users["a"].admit(DAVE, T0 + timedelta(hours=1))  # a login again: nothing to tell
    users["a"].delete(DAVE)
    assert seen == [("admitted", DAVE), ("removed", DAVE)]
    # missed while not listening: read back at resync
    sides[1].replicas._send = lambda text: None
    sides[0].replicas._send = lambda text: None
    users["a"].admit("erin@example.com", T0)
    sides[1].replicas.resync()
    assert seen[-1] == ("admitted", "erin@example.com")
    assert decode_notice(encode_notice(Notice("a", users=True))).users
    shared.close()


def test_the_operator_page_says_which_users_git_declares_and_which_logged_in(mem: Store) -> None:
    from server.page.facts import user_rows

    registry, tailnet = serving(mem, source("members", MEMBERS))
    users = UserRegistry(mem, log=LOG)
    users.subscribe(tailnet.apply_user)
    register(registry, 1, "alice-laptop", "alice")
    register(registry, 2, "dave-pc", DAVE)
    users.admit(DAVE, T0)
    rows = {row.name: (row.source, row.nodes) for row in user_rows(tailnet, registry)}
    assert rows[DAVE] == ("runtime", 1) and rows["alice"] == ("git", 1)
