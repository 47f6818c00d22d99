"""HuJSON: JSON with `//` and `/* */` comments and trailing commas, as Tailscale reads it.

One tokenizer and one parser build a small concrete syntax tree that keeps every comment and
the position of every token. Plain values with positions (`loads_with_positions`) and the
comment-preserving formatter (`format_hujson`) are both read off that tree, so the two can
never disagree about what a file means.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from gitctl.diagnostics import JsonPath, Pos, PositionedError, Positions

__all__ = ["HuJSONError", "format_hujson", "loads", "loads_with_positions"]

# Policy files nest a handful of levels; a deep stack is an attack, not a policy.
MAX_DEPTH = 100


class HuJSONError(PositionedError):
    """A HuJSON syntax error."""


# --- tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # one of { } [ ] : , string number literal comment eof
    text: str
    line: int
    col: int
    newlines_before: int  # newlines in the whitespace right before this token


_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.+-]*|[+.0-9-][A-Za-z0-9_.+-]*")
_WS = " \t\r\n"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, line, line_start, newlines = 0, 1, 0, 0
    if text.startswith("\ufeff"):
        i = line_start = 1
    n = len(text)
    while True:
        while i < n and text[i] in _WS:
            if text[i] == "\n":
                line, line_start, newlines = line + 1, i + 1, newlines + 1
            i += 1
        col = i - line_start + 1
        if i >= n:
            tokens.append(_Token("eof", "", line, col, newlines))
            return tokens
        ch = text[i]
        if ch in "{}[]:,":
            tokens.append(_Token(ch, ch, line, col, newlines))
            i += 1
        elif ch == '"':
            m = _STRING.match(text, i)
            if m is None:
                _string_error(text, i, line, col)
            assert m is not None
            tokens.append(_Token("string", m.group(), line, col, newlines))
            i = m.end()
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            tokens.append(_Token("comment", text[i:end].rstrip("\r"), line, col, newlines))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise HuJSONError("unterminated /* comment", line, col)
            body = text[i : end + 2]
            tokens.append(_Token("comment", body, line, col, newlines))
            if "\n" in body:
                line += body.count("\n")
                line_start = i + body.rfind("\n") + 1
            i = end + 2
        else:
            m = _NUMBER.match(text, i)
            w = _WORD.match(text, i)
            if m is not None and (w is None or w.end() == m.end()):
                tokens.append(_Token("number", m.group(), line, col, newlines))
                i = m.end()
            elif w is not None and w.group() in ("true", "false", "null"):
                tokens.append(_Token("literal", w.group(), line, col, newlines))
                i = w.end()
            elif w is not None and (ch.isdigit() or ch in "+-."):
                raise HuJSONError(f"invalid number {w.group()!r}", line, col)
            elif w is not None:
                raise HuJSONError(
                    f"unexpected word {w.group()!r} (strings and keys need double quotes)",
                    line,
                    col,
                )
            elif ch == "'":
                raise HuJSONError("strings need double quotes, not single quotes", line, col)
            else:
                raise HuJSONError(f"unexpected character {ch!r}", line, col)
        newlines = 0


def _string_error(text: str, start: int, line: int, col: int) -> None:
    i = start + 1
    while i < len(text):
        ch = text[i]
        where = col + (i - start)
        if ch == '"':
            break
        if ch == "\n":
            raise HuJSONError("unterminated string", line, col)
        if ch < " ":
            raise HuJSONError("control character in string (write it as an escape)", line, where)
        if ch == "\\":
            esc = text[i + 1 : i + 2]
            if esc == "u":
                if not re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                    raise HuJSONError("invalid \\u escape in string", line, where)
                i += 6
                continue
            if esc == "" or esc not in '"\\/bfnrt':
                raise HuJSONError(f"invalid escape '\\{esc}' in string", line, where)
            i += 2
            continue
        i += 1
    raise HuJSONError("unterminated string", line, col)


# --- concrete syntax tree ---------------------------------------------------------------


@dataclass(slots=True)
class _Comment:
    text: str
    blank_before: bool
    same_line: bool  # on the same line as the token before it

    @property
    def is_line(self) -> bool:
        return self.text.startswith("//") or "\n" in self.text


@dataclass(slots=True)
class _Scalar:
    text: str
    pos: Pos


@dataclass(slots=True)
class _Member:
    key: _Scalar | None  # None inside arrays
    value: _Node
    leading: list[_Comment] = field(default_factory=list)
    trailing: list[_Comment] = field(default_factory=list)
    blank_before: bool = False


@dataclass(slots=True)
class _Composite:
    open: str
    pos: Pos
    members: list[_Member]
    closing: list[_Comment]
    multiline: bool


_Node = _Scalar | _Composite


@dataclass(slots=True)
class _Document:
    leading: list[_Comment]
    value: _Node | None
    trailing: list[_Comment]
    blank_before_value: bool = False


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def comments(self, same_line_only: bool = False) -> list[_Comment]:
        out: list[_Comment] = []
        while self.peek().kind == "comment":
            tok = self.peek()
            if same_line_only and tok.newlines_before:
                break
            self.i += 1
            out.append(_Comment(tok.text, tok.newlines_before >= 2, tok.newlines_before == 0))
        return out

    def document(self) -> _Document:
        leading = self.comments()
        if self.peek().kind == "eof":
            return _Document(leading, None, [])
        blank = bool(leading) and self.peek().newlines_before >= 2
        value = self.value(0)
        trailing = self.comments()
        tok = self.peek()
        if tok.kind != "eof":
            raise HuJSONError("unexpected data after the top-level value", tok.line, tok.col)
        return _Document(leading, value, trailing, blank)

    def value(self, depth: int) -> _Node:
        tok = self.next()
        if tok.kind in ("string", "number", "literal"):
            return _Scalar(tok.text, Pos(tok.line, tok.col))
        if tok.kind in ("{", "["):
            if depth >= MAX_DEPTH:
                raise HuJSONError(f"nested deeper than {MAX_DEPTH} levels", tok.line, tok.col)
            return self.composite(tok, depth + 1)
        raise HuJSONError(_describe_expected("a value", tok), tok.line, tok.col)

    def composite(self, open_tok: _Token, depth: int) -> _Composite:
        is_obj = open_tok.kind == "{"
        close = "}" if is_obj else "]"
        what = "object member" if is_obj else "array element"
        members: list[_Member] = []
        while True:
            leading = self.comments()
            tok = self.peek()
            blank = leading[0].blank_before if leading else tok.newlines_before >= 2
            if tok.kind == close:
                self.i += 1
                return _Composite(
                    open_tok.kind,
                    Pos(open_tok.line, open_tok.col),
                    members,
                    leading,
                    tok.line != open_tok.line,
                )
            key: _Scalar | None = None
            if is_obj:
                tok = self.next()
                if tok.kind != "string":
                    raise HuJSONError(
                        _describe_expected("a string key or '}'", tok), tok.line, tok.col
                    )
                key = _Scalar(tok.text, Pos(tok.line, tok.col))
                leading += self.comments()
                tok = self.next()
                if tok.kind != ":":
                    raise HuJSONError("expected ':' after object key", tok.line, tok.col)
                leading += self.comments()
            value = self.value(depth)
            trailing = self.comments()
            member = _Member(key, value, leading, trailing, blank and bool(members))
            members.append(member)
            tok = self.peek()
            if tok.kind == ",":
                self.i += 1
                member.trailing += self.comments(same_line_only=True)
            elif tok.kind != close:
                raise HuJSONError(f"expected ',' or '{close}' after {what}", tok.line, tok.col)


def _describe_expected(what: str, tok: _Token) -> str:
    found = "end of file" if tok.kind == "eof" else repr(tok.text)
    return f"expected {what}, found {found}"


def _parse(text: str) -> _Document:
    return _Parser(text).document()


# --- values with positions --------------------------------------------------------------


def _to_value(
    node: _Node, path: JsonPath, values: dict[JsonPath, Pos], keys: dict[JsonPath, Pos]
) -> Any:
    values[path] = node.pos
    if isinstance(node, _Scalar):
        return json.loads(node.text)
    if node.open == "[":
        return [_to_value(m.value, (*path, i), values, keys) for i, m in enumerate(node.members)]
    obj: dict[str, Any] = {}
    for m in node.members:
        assert m.key is not None
        name = json.loads(m.key.text)
        child = (*path, name)
        if name in obj:
            first = keys[child]
            raise HuJSONError(
                f"duplicate key {json.dumps(name, ensure_ascii=False)} "
                f"(first defined at line {first.line}, column {first.col})",
                m.key.pos.line,
                m.key.pos.col,
            )
        keys[child] = m.key.pos
        obj[name] = _to_value(m.value, child, values, keys)
    return obj


def loads_with_positions(text: str, *, allow_empty: bool = False) -> tuple[Any, Positions]:
    """Parse HuJSON, returning the value and where every value and key starts.

    With `allow_empty`, a file holding only comments and whitespace yields `None`.
    """
    doc = _parse(text)
    if doc.value is None:
        if allow_empty:
            return None, Positions()
        tok = _Parser(text).tokens[-1]
        raise HuJSONError("expected a value, found end of file", tok.line, tok.col)
    values: dict[JsonPath, Pos] = {}
    keys: dict[JsonPath, Pos] = {}
    value = _to_value(doc.value, (), values, keys)
    return value, Positions(values, keys)


def loads(text: str) -> Any:
    return loads_with_positions(text)[0]


# --- formatter --------------------------------------------------------------------------
# Tailscale's style: tabs, one member per line with a trailing comma in composites that
# span lines, `{"a": 1, "b": 2}` on one line for composites written on one line. Whether a
# composite spans lines is taken from the source, which makes formatting idempotent.


def _inline_ok(node: _Node) -> bool:
    if isinstance(node, _Scalar):
        return True
    if node.multiline or any(c.is_line for c in node.closing):
        return False
    return all(
        not any(c.is_line for c in (*m.leading, *m.trailing)) and _inline_ok(m.value)
        for m in node.members
    )


def _fmt_inline(node: _Node) -> str:
    if isinstance(node, _Scalar):
        return node.text
    words = []
    for i, m in enumerate(node.members):
        words += [c.text for c in m.leading]
        comma = "," if i + 1 < len(node.members) else ""
        # Trailing comments go after the comma, where the parser will find them again.
        words.append(_member_head(m) + _fmt_inline(m.value) + comma)
        words += [c.text for c in m.trailing]
    words += [c.text for c in node.closing]
    close = "}" if node.open == "{" else "]"
    return node.open + " ".join(words) + close


def _member_head(m: _Member) -> str:
    return "" if m.key is None else m.key.text + ": "


def _fmt_comments(
    comments: list[_Comment], indent: str, out: list[str], blank_first: bool = False
) -> None:
    # A blank line before the first comment of a member is the member's own blank line,
    # which the caller has already written.
    for i, c in enumerate(comments):
        if c.blank_before and (i or blank_first):
            out.append("")
        out.append(indent + c.text)


def _fmt_node(node: _Node, depth: int, out: list[str], prefix: str, commas: bool) -> None:
    """Append the lines of `node`; its first line starts with `prefix`."""
    if _inline_ok(node):
        out.append(prefix + _fmt_inline(node))
        return
    assert isinstance(node, _Composite)
    indent = "\t" * (depth + 1)
    out.append(prefix + node.open)
    for i, m in enumerate(node.members):
        if m.blank_before:
            out.append("")
        _fmt_comments(m.leading, indent, out)
        _fmt_node(m.value, depth + 1, out, indent + _member_head(m), commas)
        if commas or i + 1 < len(node.members):
            out[-1] += ","
        _fmt_trailing(m.trailing, indent, out)
    _fmt_comments(node.closing, indent, out, blank_first=bool(node.members))
    out.append("\t" * depth + ("}" if node.open == "{" else "]"))


def _fmt_trailing(comments: list[_Comment], indent: str, out: list[str]) -> None:
    for c in comments:
        if c.same_line:
            out[-1] += " " + c.text
        else:
            if c.blank_before:
                out.append("")
            out.append(indent + c.text)


def format_hujson(text: str, *, trailing_commas: bool = True) -> str:
    """Reformat HuJSON text, keeping every comment; raises `HuJSONError` on bad syntax.

    Without `trailing_commas` the output of a plain JSON input is still plain JSON.
    """
    doc = _parse(text)
    out: list[str] = []
    _fmt_comments(doc.leading, "", out)
    if doc.value is not None:
        if doc.blank_before_value:
            out.append("")
        _fmt_node(doc.value, 0, out, "", trailing_commas)
        _fmt_trailing(doc.trailing, "", out)
    return "\n".join(out).rstrip("\n") + "\n"
