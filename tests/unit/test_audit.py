"""The audit trail: every admin action lands one row saying who, what, when and
the result, refusals included; `GET /api/v1/audit` and `tailnetd audit` show it."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server.cli import main as cli_main
from tests.unit.control_client import async_test, running_server
from tests.unit.test_admin_api import NOW, Apis, apis, populated, request, written
from tests.unit.test_api_v1 import WRITES, scoped_key

__all__ = ["apis", "populated"]  # fixtures

# (method, path, body) -> (action, target, params) as recorded
EXPECTED = {
    "/api/v1/nodes/1/rename": ("rename_node", "ref=1", {"name": "x"}),
    "/api/v1/nodes/1/tags": ("set_node_tags", "ref=1", {"tags": ["tag:ci"]}),
    "/api/v1/nodes/1/expire": ("expire_node", "ref=1", {}),
    "/api/v1/nodes/1/expiry": ("node_expiry", "ref=1", {"disabled": True}),
    "/api/v1/nodes/1": ("delete_node", "ref=1", {}),
    "/api/v1/preauthkeys": (
        "create_key", None,
        {"user": "alice", "reusable": False, "ephemeral": False, "tags": [], "expiration": None},
    ),
    "/api/v1/preauthkeys/1/expire": ("expire_key", "ref=1", {}),
    "/api/v1/apikeys/1/expire": ("expire_api_key", "ref=1", {}),
    "/api/v1/repo/sync": ("repo_sync", None, {}),
}  # fmt: skip


def audit(apis: Apis, query: str = "") -> list[dict[str, Any]]:
    answer = request(apis.socket, "GET", "/api/v1/audit" + query)
    assert answer.status == 200, answer.body
    return list(answer.body["audit"])


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_each_admin_action_lands_one_row_with_who_what_when_and_result(
    populated: Apis, method: str, path: str, body: Any
) -> None:
    admin = scoped_key(populated, "admin")
    key = populated.store.list_api_keys()[-1]
    before = audit(populated)
    assert request(populated.tcp, method, path, token=admin, body=body).status == 200
    after = audit(populated)
    assert len(after) == len(before) + 1
    row = after[0]
    action, target, params = EXPECTED[path]
    assert row["actor"] == f"apikey:{key.id}:{key.prefix}"
    assert (row["action"], row["target"], row["params"]) == (action, target, params)
    assert (row["status"], row["result"], row["detail"]) == (200, "ok", None)
    assert row["at"] == NOW.isoformat()


def test_a_refused_write_by_a_read_only_key_is_recorded_and_changes_nothing(
    populated: Apis,
) -> None:
    read = scoped_key(populated, "read")
    key = populated.store.list_api_keys()[-1]
    before = written(populated)[:2]  # nodes, pre-auth keys (the API key's last use moves)
    answer = request(populated.tcp, "DELETE", "/api/v1/nodes/1", token=read)
    assert answer.status == 403
    assert written(populated)[:2] == before
    row = audit(populated)[0]
    assert row["actor"] == f"apikey:{key.id}:{key.prefix}"
    assert (row["action"], row["target"]) == ("delete_node", "ref=1")
    assert (row["status"], row["result"]) == (403, "forbidden")
    assert "read scope" in row["detail"]


def test_a_request_without_a_key_is_recorded_as_anonymous_even_a_read(populated: Apis) -> None:
    request(populated.tcp, "GET", "/api/v1/nodes")
    row = audit(populated)[0]
    assert (row["actor"], row["action"], row["status"], row["result"]) == (
        "anonymous", "list_nodes", 401, "unauthorized",
    )  # fmt: skip


def test_the_socket_is_the_actor_and_a_failed_action_records_its_problem(
    populated: Apis,
) -> None:
    answer = request(populated.socket, "POST", "/api/v1/nodes/9/rename", body={"name": "x"})
    assert answer.status == 404
    row = audit(populated)[0]
    assert (row["actor"], row["action"], row["target"]) == ("socket", "rename_node", "ref=9")
    assert (row["status"], row["result"]) == (404, "not-found")
    assert "no node" in row["detail"]


def test_reads_that_succeed_are_not_recorded_and_created_keys_are_never_stored(
    populated: Apis,
) -> None:
    before = len(audit(populated))
    created = request(populated.socket, "POST", "/api/v1/apikeys", body={"scope": "read"})
    request(populated.socket, "GET", "/api/v1/nodes")
    rows = audit(populated)
    assert [r["action"] for r in rows[: len(rows) - before]] == ["create_api_key"]
    assert created.body["key"] not in repr(rows)
    assert rows[0]["params"] == {"expiration": None, "scope": "read"}


def test_since_and_limit_choose_the_entries(populated: Apis) -> None:
    request(populated.socket, "POST", "/api/v1/repo/sync")
    populated.clock.now = NOW + timedelta(hours=2)
    request(populated.socket, "POST", "/api/v1/nodes/1/expire")
    assert [r["action"] for r in audit(populated, "?since=1h")] == ["expire_node"]
    since = (NOW + timedelta(minutes=1)).isoformat().replace("+", "%2B")
    assert [r["action"] for r in audit(populated, f"?since={since}")] == ["expire_node"]
    assert len(audit(populated, "?limit=1")) == 1
    bad = request(populated.socket, "GET", "/api/v1/audit?since=yesterday")
    assert bad.status == 400 and "duration" in bad.body["detail"]


def test_a_read_key_may_read_the_audit_trail(populated: Apis) -> None:
    read = scoped_key(populated, "read")
    assert request(populated.tcp, "GET", "/api/v1/audit", token=read).status == 200


@async_test
async def test_tailnetd_audit_shows_the_cli_actions_as_a_table_and_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_server(tmp_path) as server:
        data = str(server.config.data_dir)
        assert (
            await asyncio.to_thread(cli_main, ["keys", "create", "--user", "alice", "--data", data])
            == 0
        )
        assert await asyncio.to_thread(cli_main, ["nodes", "delete", "nope", "--data", data]) == 1
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, ["audit", "--data", data]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:5] == ["AT", "ACTOR", "ACTION", "TARGET", "RESULT"]
        assert table[1].split()[1:5] == ["socket", "delete_node", "ref=nope", "not-found"]
        assert table[2].split()[1:5] == ["socket", "create_key", "-", "ok"]
        assert (
            await asyncio.to_thread(cli_main, ["audit", "--json", "--since", "1h", "--data", data])
            == 0
        )
        rows = json.loads(capsys.readouterr().out)
        assert [(r["action"], r["status"]) for r in rows] == [
            ("delete_node", 404),
            ("create_key", 200),
        ]
