"""Inventory files: the schema, the Topology they become, and the commands that take them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gitctl.cli import main
from gitctl.inventory import parse_inventory, read_inventory_file
from gitctl.testing import TopologyFileError
from tests.unit.test_sources import commit_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "inventory.json"


def example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return doc


def test_the_documented_example_reads_as_users_and_devices() -> None:
    topo = read_inventory_file(EXAMPLE)
    assert [(u.name, u.email, u.role) for u in topo.users][:1] == [
        ("alice", "alice@example.com", "owner")
    ]
    by_name = {n.name: n for n in topo.nodes}
    assert list(by_name) == ["alice-laptop", "bob-phone", "db-1", "office-router"]
    assert by_name["bob-phone"].hostname == "bob-phone"  # absent: the device name
    assert by_name["db-1"].user is None and by_name["db-1"].tags == ("tag:db",)
    router = by_name["office-router"]
    assert router.routable_ips == ("192.168.1.0/24", "0.0.0.0/0", "::/0")
    assert router.approved_routes == ("192.168.1.0/24",)


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda d: d["nodes"][0].update(node_key="nodekey:00"), "node_key"),  # no key material
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["users"][1].update(email="bob"), "users[1].email"),
        (lambda d: d["nodes"][2].update(tags=["db"]), "nodes[2].tags[0]"),
        (lambda d: d.pop("nodes"), "nodes"),
    ],
)
def test_what_is_not_an_inventory_is_refused_with_where(mutate: Any, named: str) -> None:
    doc = copy.deepcopy(example())
    mutate(doc)
    with pytest.raises(TopologyFileError, match="is not an inventory") as info:
        parse_inventory(doc, "inv.json")
    assert named in str(info.value)


def test_device_names_are_unique() -> None:
    doc = example()
    doc["nodes"][1]["name"] = "alice-laptop"
    with pytest.raises(TopologyFileError, match='two devices are named "alice-laptop"'):
        parse_inventory(doc)


POLICY = """{
  "tagOwners": {"tag:db": ["alice@example.com"], "tag:router": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]}],
}
"""
USERS = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""


def test_test_and_diff_accept_an_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    inv = tmp_path / "inv.json"
    inv.write_text(EXAMPLE.read_text())
    policy = POLICY
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/policy.hujson": policy}
    commit_files(tmp_path, files, "base")
    assert main(["test", "--rev", "HEAD", "--inventory", str(inv)]) == 0
    # 4 real devices, and one hypothetical per user and per tag, as always
    assert "on 8 devices" in capsys.readouterr().out
    wider = policy.replace('["alice@example.com"], "dst"', '["autogroup:member"], "dst"')
    commit_files(tmp_path, {"tailnet.d/policy.hujson": wider}, "wider")
    assert main(["diff", "HEAD~1", "--inventory", str(inv), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["topology"] == str(inv)
    assert [(r["src"]["name"], r["dst"]["name"]) for r in doc["reach"]] == [
        ("bob@example.com", "tag:db")
    ]
    assert main(["diff", "HEAD~1", "--inventory", str(inv), "--topology", "t.json"]) == 2
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"version": 1}')
    assert main(["test", "--rev", "HEAD", "--inventory", "bad.json"]) == 2
    assert "bad.json is not an inventory" in capsys.readouterr().err


def test_gitctl_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "inventory"]) == 0
    assert json.loads(capsys.readouterr().out)["$id"] == "urn:tailnetd:schema:inventory"
