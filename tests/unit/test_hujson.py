"""HuJSON: values, positions a user is pointed at, errors, and the comment-keeping formatter."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitctl.diagnostics import Pos
from gitctl.hujson import HuJSONError, format_hujson, loads, loads_with_positions

POLICY = """\
// Example policy
{
	/* groups */
	"groups": {
		"group:eng": ["alice@example.com", "bob@example.com",],
	},
	"acls": [
		{"action": "accept", "src": ["*"], "dst": ["*:*"]},
		{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22", "tag:db:5432"]}, // db
		{
			"action": "accept",
			"src":    ["bob@example.com"],
			"dst":    ["tag:web:443"],   // trailing comment
		},
	],
}
"""


def test_comments_and_trailing_commas_are_accepted() -> None:
    doc = loads(POLICY)
    assert doc["groups"] == {"group:eng": ["alice@example.com", "bob@example.com"]}
    assert doc["acls"][2]["dst"] == ["tag:web:443"]


def test_position_of_a_value_deep_in_the_tree() -> None:
    _, pos = loads_with_positions(POLICY)
    # line 9: `		{"action": ..., "dst": ["tag:server:22", "tag:db:5432"]}, // db`
    line9 = POLICY.splitlines()[8]
    assert pos.values[("acls", 1, "dst", 1)] == Pos(9, line9.index('"tag:db:5432"') + 1)
    assert pos.values[("acls", 2, "dst", 0)] == Pos(13, 15)
    assert pos.keys[("acls", 2, "dst")] == Pos(13, 4)
    assert pos.values[("acls", 2)] == Pos(10, 3)
    assert pos.values[()] == Pos(2, 1)


def test_nearest_known_ancestor_is_used_for_paths_the_file_does_not_have() -> None:
    _, pos = loads_with_positions(POLICY)
    assert pos.value(("acls", 2, "nosuch", 7)) == pos.values[("acls", 2)]


def test_columns_count_characters_not_bytes() -> None:
    text = '{"naïve": "ünïcödé", "x": 1}'
    value, pos = loads_with_positions(text)
    assert value == {"naïve": "ünïcödé", "x": 1}
    assert pos.keys[("x",)] == Pos(1, text.index('"x"') + 1)


def test_escapes_and_unicode_escapes_decode_like_json() -> None:
    assert loads(r'["a\"b", "\u00e9\n", "\ud83d\ude00"]') == ['a"b', "é\n", "😀"]


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}' after object member"),
        ("[1, 2\n", 2, 1, "expected ',' or ']' after array element"),
        ('{"a": 1, "a": 2}', 1, 10, 'duplicate key "a" (first defined at line 1, column 2)'),
        ("{a: 1}", 1, 2, "unexpected word 'a' (strings and keys need double quotes)"),
        ("{'a': 1}", 1, 2, "strings need double quotes, not single quotes"),
        ('{"a": 01}', 1, 7, "invalid number '01'"),
        ('{"a": "x\ny"}', 1, 7, "unterminated string"),
        ('{"a": "\\q"}', 1, 8, "invalid escape '\\q' in string"),
        ('{"a": 1} /* open', 1, 10, "unterminated /* comment"),
        ('{"a": 1}\n{"b": 2}', 2, 1, "unexpected data after the top-level value"),
        ('{"a" 1}', 1, 6, "expected ':' after object key"),
        ('{"a": }', 1, 7, "expected a value, found '}'"),
        ("// nothing", 1, 11, "expected a value, found end of file"),
    ],
)
def test_errors_name_the_line_and_column(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(HuJSONError) as info:
        loads(text)
    assert (info.value.line, info.value.col, info.value.message) == (line, col, message)
    assert str(info.value) == f"{line}:{col}: {message}"


def test_duplicate_keys_in_nested_objects_are_errors_too() -> None:
    with pytest.raises(HuJSONError, match="duplicate key"):
        loads('{"groups": {"group:a": [], "group:a": []}}')


def test_deep_nesting_is_refused_without_crashing() -> None:
    with pytest.raises(HuJSONError, match="nested deeper"):
        loads("[" * 10000 + "]" * 10000)


def test_comment_only_file_is_empty_when_allowed() -> None:
    assert loads_with_positions("// all commented out\n", allow_empty=True)[0] is None


def test_format_keeps_comments_and_uses_tailscale_style() -> None:
    out = format_hujson(POLICY)
    assert (
        out
        == """\
// Example policy
{
	/* groups */
	"groups": {
		"group:eng": ["alice@example.com", "bob@example.com"],
	},
	"acls": [
		{"action": "accept", "src": ["*"], "dst": ["*:*"]},
		{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22", "tag:db:5432"]}, // db
		{
			"action": "accept",
			"src": ["bob@example.com"],
			"dst": ["tag:web:443"], // trailing comment
		},
	],
}
"""
    )
    assert loads(out) == loads(POLICY)


def test_format_is_idempotent_and_keeps_blank_lines() -> None:
    text = '// a\n\n{"a": [1,\n2], // x\n\n\n  // b\n  "b": {}, /* c */ "c": null}\n// end\n'
    once = format_hujson(text)
    assert format_hujson(once) == once
    # A comment after a comma on the same line stays with the member before it.
    assert (
        once == '// a\n\n{\n\t"a": [\n\t\t1,\n\t\t2,\n\t], // x\n\n\t// b\n'
        '\t"b": {}, /* c */\n\t"c": null,\n}\n// end\n'
    )


def test_a_line_comment_forces_a_composite_onto_several_lines() -> None:
    out = format_hujson('{"a": [1, // one\n 2]}')
    assert out == '{\n\t"a": [\n\t\t1, // one\n\t\t2,\n\t],\n}\n'
    assert format_hujson(out) == out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.booleans())
def test_any_json_document_parses_and_formats_to_the_same_value(
    value: object, indent: bool
) -> None:
    text = json.dumps(value, indent=2 if indent else None)
    assert loads(text) == value
    formatted = format_hujson(text)
    assert loads(formatted) == value
    assert format_hujson(formatted) == formatted


@given(st.text(alphabet='{}[]:,"/*\\ \n\tabtrue0123-.e', max_size=40))
def test_arbitrary_text_either_parses_or_raises_a_positioned_error(text: str) -> None:
    try:
        loads(text)
    except HuJSONError as exc:
        assert exc.line >= 1 and exc.col >= 1
        assert exc.line <= text.count("\n") + 1
        return
    formatted = format_hujson(text)
    assert loads(formatted) == loads(text)
    assert format_hujson(formatted) == formatted


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_comment_free_text = st.text(alphabet='ab"\\ é\n', max_size=3)
_comment_free_values = st.recursive(
    st.none() | st.integers() | _comment_free_text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_comment_free_text, c, max_size=3),
    max_leaves=12,
)


@given(
    _comment_free_values,
    st.lists(
        st.sampled_from(["", "", " // c\n", " /* b */ ", "\n\n// x\n", "/*m\nl*/", "\n"]),
        min_size=1,
    ),
    st.booleans(),
)
def test_formatting_keeps_every_comment_and_the_value(
    value: object, inserts: list[str], indent: bool
) -> None:
    # Put comments after every `{ [ , :` outside strings, cycling through `inserts`.
    out, in_string, escaped, n = [], False, False, 0
    for ch in json.dumps(value, indent=2 if indent else None):
        out.append(ch)
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{[,:":
            out.append(inserts[n % len(inserts)])
            n += 1
    source = "".join(out)
    formatted = format_hujson(source)
    assert loads(formatted) == value
    assert format_hujson(formatted) == formatted
    assert sorted(_COMMENT.findall(source)) == sorted(_COMMENT.findall(formatted))
