"""The CI examples in the docs use only commands and flags that gitctl accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gitctl.cli import build_parser
from server.cli import build_parser as tailnetd_parser

ROOT = Path(__file__).resolve().parents[2]
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "<"}


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.S)


def _ci_section(readme: str) -> str:
    start = readme.index("## In CI")
    return readme[start : readme.index("\n## ", start + 1)]


def commands() -> list[str]:
    """Every `gitctl …` invocation in a code block of docs/ci.md and README's CI section."""
    texts = [(ROOT / "docs" / "ci.md").read_text(), _ci_section((ROOT / "README.md").read_text())]
    found = []
    for text in texts:
        for block in _code_blocks(text):
            for line in block.splitlines():
                if re.match(r"\s*-?\s*(name|id):", line):
                    continue  # YAML labels that merely mention gitctl
                line = re.sub(r"(^|\s)#.*$", "", line)  # a shell or YAML comment
                for part in line.split("&&"):
                    found += re.findall(r"(?<![\w/.-])gitctl [^'\n]*", part)
    return found


def argv(command: str) -> list[str]:
    words = shlex.split(command.replace("||", " || "))
    out = []
    for w in words[1:]:
        if w in SHELL_OPERATORS:
            break
        out.append(w)
    return out


def test_the_docs_show_every_review_command() -> None:
    used = {argv(c)[0] for c in commands()}
    assert {"validate", "test", "lint", "diff", "explain"} <= used


@pytest.mark.parametrize("command", commands())
def test_each_example_parses(command: str) -> None:
    args = argv(command)
    try:
        parsed = build_parser(args).parse_args(args)
    except SystemExit as exc:  # argparse's way of saying a flag or value is wrong
        pytest.fail(f"gitctl rejects `{command}` (exit {exc.code})")
    assert getattr(parsed, "run", None) is not None


def tailnetd_commands() -> list[str]:
    """Every `tailnetd …` invocation in a code block of docs/ci.md."""
    found = []
    for block in _code_blocks((ROOT / "docs" / "ci.md").read_text()):
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            found += re.findall(r"(?<![\w/.-])tailnetd [^'\n`]*", line)
    return found


def test_the_ci_examples_export_an_inventory_and_review_against_it() -> None:
    exports = [c for c in tailnetd_commands() if argv(c)[:2] == ["inventory", "export"]]
    assert len(exports) == 2  # GitHub Actions and GitLab CI
    for command in exports:
        args = argv(command)
        parsed = tailnetd_parser().parse_args(args)
        assert parsed.output == "inventory.json"
    reviews = [argv(c) for c in commands() if argv(c)[0] in ("test", "lint", "diff")]
    with_inventory = [a for a in reviews if "--inventory" in a]
    assert len(with_inventory) >= 6
