"""The `gitctl` command as people and CI use it: exit codes and output shapes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gitctl.cli import main
from tests.unit.test_sources import commit_files

EXAMPLE = Path(__file__).resolve().parents[2] / "tailnet.d"

BROKEN = {
    "tailnet.d/users.yaml": "users:\n  - name: alice\n    emial: alice@example.com\n",
    "tailnet.d/policy.hujson": '{\n\t"acls": [\n\t\t{"action": "accept" "src": ["*"]},\n\t],\n}\n',
}


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_example_tailnet_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--dir", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith("ok: 5 files, snapshot sha256:")


def test_default_directory_is_tailnet_d_in_the_current_directory(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(EXAMPLE, work / "tailnet.d")
    assert main(["validate"]) == 0


def test_text_errors_have_location_and_caret(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work, BROKEN)
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert (
        "tailnet.d/policy.hujson:3:23: expected ',' or '}' after object member\n"
        '    \t\t{"action": "accept" "src": ["*"]},\n'
        "    \t\t                    ^\n" in err
    )
    assert (
        'tailnet.d/users.yaml:3:5: users[0].emial: unknown key "emial" '
        '(did you mean "email"?)' in err
    )
    assert err.endswith("3 problems\n")


def test_github_format_is_one_workflow_command_per_problem(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work, BROKEN)
    assert main(["validate", "--format", "github"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(r"::error file=tailnet\.d/[\w.]+,line=\d+,col=\d+::[^\n]+", line)
    assert lines[0] == (
        "::error file=tailnet.d/policy.hujson,line=3,col=23::"
        "expected ',' or '}' after object member"
    )


def test_json_format(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(work, BROKEN)
    assert main(["validate", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["snapshot"] is None
    first = doc["diagnostics"][0]
    assert {k: first[k] for k in ("file", "line", "col", "severity")} == {
        "file": "tailnet.d/policy.hujson",
        "line": 3,
        "col": 23,
        "severity": "error",
    }


def test_git_revisions(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = commit_files(
        work, {f"tailnet.d/{p.name}": p.read_text() for p in EXAMPLE.iterdir()}, "example"
    )
    commit_files(work, BROKEN, "broken")
    assert main(["validate", "--rev", good]) == 0
    assert good in capsys.readouterr().out
    assert main(["validate", "--repo", str(work)]) == 1
    assert main(["validate", "--rev", "nope"]) == 1
    assert 'unknown revision "nope"' in capsys.readouterr().err


def test_usage_errors_exit_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--dir", "x", "--rev", "HEAD"]) == 2
    assert main(["validate", "--format", "xml"]) == 2
    assert main([]) == 2
    assert main(["schema", "nosuchkind"]) == 2


def test_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "dns"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "tailnetd DNS"
    assert main(["schema"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {
        "users",
        "policy",
        "dns",
        "routes",
        "keys",
        "settings",
        "owners",
    }


def test_fmt_check_lists_files_that_would_change_and_fmt_fixes_them(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        work,
        {
            "tailnet.d/policy.hujson": '// keep me\n{"acls": [\n  {"action": "accept",'
            ' "src": ["*"], "dst": ["*:*"]} // and me\n]}\n',
            "tailnet.d/users.yaml": "users:\n-   name: a   # note\n    email: a@example.com\n",
            "tailnet.d/dns.yaml": "magic_dns: false\n",
        },
    )
    assert main(["fmt", "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "tailnet.d/policy.hujson",
        "tailnet.d/users.yaml",
    ]
    assert main(["fmt"]) == 0
    assert (work / "tailnet.d/policy.hujson").read_text() == (
        '// keep me\n{\n\t"acls": [\n\t\t{"action": "accept", "src": ["*"], "dst": ["*:*"]}, '
        "// and me\n\t],\n}\n"
    )
    assert "# note" in (work / "tailnet.d/users.yaml").read_text()
    assert main(["fmt", "--check"]) == 0
    assert main(["validate"]) == 0


def test_fmt_keeps_json_files_json(work: Path) -> None:
    write(work, {"p.json": '{"acls": [\n1, 2]}'})
    assert main(["fmt", "p.json"]) == 0
    assert json.loads((work / "p.json").read_text()) == {"acls": [1, 2]}


def test_fmt_reports_syntax_errors_and_leaves_the_file_alone(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work, {"bad.hujson": '{"a": 1 "b": 2}\n'})
    assert main(["fmt", "bad.hujson"]) == 1
    assert "bad.hujson:1:9: expected ',' or '}' after object member" in capsys.readouterr().err
    assert (work / "bad.hujson").read_text() == '{"a": 1 "b": 2}\n'


def test_example_is_already_formatted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fmt", "--check", *map(str, sorted(EXAMPLE.iterdir()))]) == 0


def test_fmt_takes_a_directory_for_its_tailnet_d_files(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work, {"elsewhere/users.yaml": "users:\n-   name: a\n    email: a@example.com\n"})
    assert main(["fmt", "--check", "elsewhere"]) == 1
    assert capsys.readouterr().out.splitlines() == ["elsewhere/users.yaml"]
    assert main(["fmt", "elsewhere"]) == 0
    assert main(["fmt", "--check", "elsewhere"]) == 0


def test_compile_is_delegated_to_its_module_only_when_invoked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import sys
    import types

    calls: list[argparse.Namespace] = []
    fake = types.ModuleType("gitctl.compile_cmd")

    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        sub.add_parser("compile").add_argument("--node")

    def run(args: argparse.Namespace) -> int:
        calls.append(args)
        return 0

    fake.add_parser = add_parser  # type: ignore[attr-defined]
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gitctl.compile_cmd", fake)
    assert main(["compile", "--node", "n1"]) == 0
    assert [a.node for a in calls] == ["n1"]
