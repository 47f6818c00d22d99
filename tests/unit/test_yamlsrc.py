"""YAML sources: values, positions, errors with line:col, formatting that keeps comments."""

from __future__ import annotations

import pytest

from gitctl.diagnostics import Pos
from gitctl.yamlsrc import YamlSourceError, format_yaml, load_yaml_with_positions

USERS = """\
# yaml-language-server: $schema=../schemas/users.schema.json
users:
  - name: alice
    email: alice@example.com   # policies use the email
  - name: bob
    email: bob@example.com
dns: {nameservers: {global: [1.1.1.1, 9.9.9.9]}}
"""


def test_values_are_plain_python() -> None:
    value, _ = load_yaml_with_positions(USERS)
    assert value == {
        "users": [
            {"name": "alice", "email": "alice@example.com"},
            {"name": "bob", "email": "bob@example.com"},
        ],
        "dns": {"nameservers": {"global": ["1.1.1.1", "9.9.9.9"]}},
    }
    assert type(value["users"]) is list and type(value["users"][0]) is dict


def test_positions_of_values_and_keys() -> None:
    _, pos = load_yaml_with_positions(USERS)
    assert pos.values[("users", 1, "email")] == Pos(6, 12)
    assert pos.keys[("users", 1, "email")] == Pos(6, 5)
    assert pos.values[("users", 1)] == Pos(5, 5)
    assert pos.values[("dns", "nameservers", "global", 1)] == Pos(7, 39)


def test_scalars_yaml_would_reinterpret_keep_their_text() -> None:
    value, _ = load_yaml_with_positions("a: 2024-01-01\n1: x\nb: no\n")
    assert value == {"a": "2024-01-01", "1": "x", "b": "no"}


@pytest.mark.parametrize(
    ("text", "line", "col", "fragment"),
    [
        ("a: 1\na: 2\n", 2, 1, 'found duplicate key "a"'),
        ("a: [1\nb: 2\n", 2, 2, "expected ',' or ']'"),
        ("a: b: c\n", 1, 5, "mapping values are not allowed here"),
        ("a: 1\n---\nb: 2\n", 2, 1, "expected a single document"),
        ("a: !!binary aGVsbG8=\n", 1, 4, "unsupported YAML value"),
    ],
)
def test_errors_name_the_line_and_column(text: str, line: int, col: int, fragment: str) -> None:
    with pytest.raises(YamlSourceError) as info:
        load_yaml_with_positions(text)
    assert (info.value.line, info.value.col) == (line, col)
    assert fragment in info.value.message
    assert "Traceback" not in info.value.message


def test_empty_document_is_none() -> None:
    assert load_yaml_with_positions("# nothing here\n")[0] is None


def test_format_keeps_comments_and_normalises_indentation() -> None:
    messy = "# top\nusers:\n-   name: alice   # first\n    email: a@example.com\n"
    out = format_yaml(messy)
    assert out == "# top\nusers:\n  - name: alice   # first\n    email: a@example.com\n"
    assert format_yaml(out) == out


def test_format_of_the_example_style_is_a_no_op() -> None:
    assert format_yaml(USERS) == USERS
