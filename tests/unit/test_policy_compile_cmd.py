"""`gitctl compile`: single policy files and JSON-lines batches."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gitctl import compile_cmd

from .test_policy_helpers import NODES, USERS

TOPOLOGY = {"users": USERS, "nodes": NODES}


def _compile(tmp_path: Path, policy_text: str) -> int:
    (tmp_path / "policy.hujson").write_text(policy_text)
    (tmp_path / "topo.json").write_text(json.dumps(TOPOLOGY))
    return compile_cmd.main(
        ["--topology", str(tmp_path / "topo.json"), str(tmp_path / "policy.hujson")]
    )


def test_compile_prints_per_node_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _compile(
        tmp_path,
        '{\n  // comments are fine\n  "acls": [{"action": "accept", '
        '"src": ["*"], "dst": ["*:*"]}],\n}\n',
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["nodes"]) == set(NODES)
    assert out["nodes"]["web"]["packet_filter_rules"]


def test_rejected_policy_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _compile(
        tmp_path,
        '{\n  "acls": [\n    {"action": "accept", "src": ["*"], '
        '"dst": ["tag:nope:22"]},\n  ],\n}\n',
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "policy.hujson:3:" in err and 'tag not found: "tag:nope"' in err


def test_batch_answers_every_line() -> None:
    lines = [
        {"id": "ok", "policy": {}, "topology": TOPOLOGY, "tailnet": None},
        {
            "id": "bad",
            "policy": {"acls": [{"action": "accept", "src": ["tag:x"], "dst": ["*:*"]}]},
            "topology": TOPOLOGY,
        },
    ]
    out = io.StringIO()
    compile_cmd._run_batch(io.StringIO("\n".join(json.dumps(x) for x in lines)), out)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["id"] == "ok" and first["ok"] and "web" in first["nodes"]
    assert second == {"id": "bad", "ok": False, "error": 'src=tag not found: "tag:x"'}
