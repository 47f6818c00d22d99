"""Go's `hujson.Format` and `hujson.Standardize`, byte for byte.

gitops-pusher sums its policy file as SHA-256 of `hujson.Format(file)` and compares
that with the ETag of `GET /api/v2/tailnet/-/acl`; tailnetd's ETag must be the same
sum for the same file, so this is a port of `github.com/tailscale/hujson` at the
version tailscale 1.96.4 pins (v0.0.0-20221223112325-20486734a56a: parse.go,
pack.go, standard.go, format.go), quirks included:

* a line comment must end in a newline (`null //x` at the end of a file is an error);
* an object or array is expanded (one member per line) only if the input already
  breaks a line inside it or a line would pass 80 bytes; otherwise it is inlined;
* object values in a run of one-line members are aligned with spaces;
* the "expand multi-line objects with more than one member" rule of format.go reads
  a zero value there, so it never applies; it is left out here too.

Lengths are in bytes as in Go. The tree is mutable and private: the Go code
rewrites it in place, and a faithful port is easier to check against it line by
line than a rewrite would be. It is the only reason this module does not use
`gitctl.hujson`'s tree; `gitctl fmt` keeps its own style (see that module).
"""

from __future__ import annotations

import json
import re

from gitctl.hujson import HuJSONError

__all__ = ["hujson_format", "hujson_standardize"]

_PUNCH_CARD_WIDTH = 80
MAX_DEPTH = 1000  # Go has no limit; a Python stack has one
_WS = b" \t\r\n"
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"\Z', re.S)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_WORD = re.compile(rb"[-+.a-zA-Z0-9]*")
# Go's unicode.IsSpace: the Unicode White_Space property.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501


class _Value:
    __slots__ = ("after", "before", "value")

    def __init__(self) -> None:
        self.before: bytes | None = None  # None is Go's nil: it differs from b""
        self.value: bytes | _Composite = b""
        self.after: bytes | None = None


class _Composite:
    __slots__ = ("after", "expand", "is_object", "values")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.values: list[_Value] = []  # an object's names and values, alternating
        self.after: bytes | None = None
        self.expand = False

    def length(self) -> int:
        return len(self.values) // 2 if self.is_object else len(self.values)

    def last(self) -> _Value | None:
        return self.values[-1] if self.values else None


def _trailing_comma(comp: _Composite) -> bool:
    last = comp.last()
    return last is not None and last.after is not None


def _set_trailing_comma(comp: _Composite, on: bool) -> None:
    last = comp.last()
    if last is None:
        return
    if on and last.after is None:
        last.after = b""
    elif not on and last.after is not None:
        comp.after = last.after + (comp.after or b"")
        last.after = None


# --- parse.go -----------------------------------------------------------------------------


class _Close(Exception):
    """A closing bracket where a value was to start."""

    def __init__(self, char: int, before: bytes | None, at: int) -> None:
        self.char, self.before, self.at = char, before, at


class _Fail(Exception):
    def __init__(self, message: str, at: int) -> None:
        self.message, self.at = message, at


def _ws(b: bytes, n: int) -> int:
    start = n
    while n < len(b) and b[n] in _WS:
        n += 1
    return n - start


def _comment(b: bytes, n: int) -> int:
    """The length of the comment at b[n:]; 0 if none starts there, -1 if unterminated."""
    if b.startswith(b"//", n):
        end = b.find(b"\n", n + 2)
        return -1 if end < 0 else end + 1 - n
    if b.startswith(b"/*", n):
        end = b.find(b"*/", n + 2)
        return -1 if end < 0 else end + 2 - n
    return 0


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def _extra(b: bytes, n: int) -> int:
    while n < len(b):
        if b[n] in _WS:
            n += _ws(b, n)
        elif b[n] == ord("/"):
            nc = _comment(b, n)
            if nc == 0:
                return n
            if nc < 0:
                raise _Fail("parsing comment: unexpected EOF", n)
            if not _utf8(b[n : n + nc]):
                raise _Fail("invalid UTF-8 in comment", n)
            n += nc
        else:
            return n
    return n


def _next(b: bytes, n: int, depth: int) -> tuple[_Value, int]:
    if depth > MAX_DEPTH:
        raise _Fail(f"nested deeper than {MAX_DEPTH}", n)
    v = _Value()
    n0, n = n, _extra(b, n)
    if n > n0:
        v.before = b[n0:n]
    if n < len(b) and b[n] in b"}]":
        raise _Close(b[n], v.before, n)
    v.value, n = _trimmed(b, n, depth)
    end, n = n, _extra(b, n)
    if n > end:
        v.after = b[end:n]
    return v, n


def _value_at(b: bytes, n: int, depth: int) -> tuple[_Value, int]:
    try:
        return _next(b, n, depth)
    except _Close as close:
        raise _Fail(f"invalid character '{chr(close.char)}' at start of value", close.at) from None


def _trimmed(b: bytes, n: int, depth: int) -> tuple[bytes | _Composite, int]:
    if n == len(b):
        raise _Fail("parsing value: unexpected EOF", n)
    c = b[n]
    if c in b"{[":
        return _composite(b, n + 1, depth + 1, c == ord("{"))
    if c == ord('"'):
        n0, n, escaped = n, n + 1, False
        while True:
            if n == len(b):
                raise _Fail("parsing string: unexpected EOF", n)
            if escaped:
                escaped = False
            elif b[n] == ord("\\"):
                escaped = True
            elif b[n] == ord('"'):
                lit = b[n0 : n + 1]
                if not _STRING.match(lit) or not _utf8(lit):
                    raise _Fail("invalid literal", n0)
                return lit, n + 1
            n += 1
    m = _WORD.match(b, n)
    lit = m.group() if m else b""
    if not lit:
        raise _Fail("invalid character at start of value", n)
    if lit not in (b"null", b"true", b"false") and not _NUMBER.match(lit):
        raise _Fail(f"invalid literal: {lit.decode()}", n)
    return lit, n + len(lit)


def _composite(b: bytes, n: int, depth: int, is_object: bool) -> tuple[_Composite, int]:
    comp = _Composite(is_object)
    close = ord("}") if is_object else ord("]")
    while True:
        try:
            first, n = _next(b, n, depth)
        except _Close as end:
            if end.char != close:
                raise _Fail(
                    f"invalid character '{chr(end.char)}' at start of value", end.at
                ) from None
            _set_trailing_comma(comp, comp.length() > 0)
            comp.after = end.before
            return comp, end.at + 1
        if is_object:
            if not isinstance(first.value, bytes) or not first.value.startswith(b'"'):
                raise _Fail("invalid character at start of object name", n)
            if n == len(b):
                raise _Fail("parsing object after name: unexpected EOF", n)
            if b[n] != ord(":"):
                raise _Fail("invalid character after object name", n)
            value, n = _value_at(b, n + 1, depth)
            comp.values += (first, value)
        else:
            comp.values.append(first)
        if n == len(b):
            raise _Fail("parsing composite after value: unexpected EOF", n)
        if b[n] == ord(","):
            n += 1
        elif b[n] == close:
            last = comp.values[-1]
            comp.after, last.after = last.after, None
            return comp, n + 1
        else:
            raise _Fail("invalid character after value", n)


def _parse(b: bytes) -> _Value:
    try:
        v, n = _value_at(b, 0, 0)
        if n < len(b):
            raise _Fail("invalid character after top-level value", n)
    except _Fail as fail:
        line = 1 + b.count(b"\n", 0, fail.at)
        col = fail.at - b.rfind(b"\n", 0, fail.at)
        raise HuJSONError(fail.message, line, col) from None
    return v


# --- pack.go, standard.go -----------------------------------------------------------------


def _pack(v: _Value, out: bytearray) -> None:
    out += v.before or b""
    comp = v.value
    if isinstance(comp, bytes):
        out += comp
    else:
        out += b"{" if comp.is_object else b"["
        for i, sub in enumerate(comp.values):
            _pack(sub, out)
            out += b":" if comp.is_object and i % 2 == 0 else b","
        if comp.values and not _trailing_comma(comp):
            del out[-1]
        out += comp.after or b""
        out += b"}" if comp.is_object else b"]"
    out += v.after or b""


def _has_comment(b: bytes | None) -> bool:
    return b is not None and _ws(b, 0) < len(b)


def _is_standard(v: _Value) -> bool:
    if _has_comment(v.before) or _has_comment(v.after):
        return False
    comp = v.value
    if isinstance(comp, bytes):
        return True
    return (
        all(_is_standard(sub) for sub in comp.values)
        and not _trailing_comma(comp)
        and not _has_comment(comp.after)
    )


def _blank(b: bytes | None) -> bytes | None:
    return None if b is None else bytes(c if c in _WS else 0x20 for c in b)


def _standardize(v: _Value) -> None:
    v.before = _blank(v.before)
    comp = v.value
    if isinstance(comp, _Composite):
        for sub in comp.values:
            _standardize(sub)
        last = comp.last()
        if last is not None and last.after is not None:
            comp.after = last.after + b" " + (comp.after or b"")
            last.after = None
        comp.after = _blank(comp.after)
    v.after = _blank(v.after)


def hujson_standardize(data: bytes) -> bytes:
    """Go's `hujson.Standardize`: comments and trailing commas become spaces, so
    every line and byte offset stays where it was. Raises HuJSONError."""
    v = _parse(data)
    _standardize(v)
    out = bytearray()
    _pack(v, out)
    return bytes(out)


# --- format.go ----------------------------------------------------------------------------


def _rstrip(b: bytes) -> bytes:
    return b.decode("utf-8", "surrogateescape").rstrip(_GO_SPACE).encode("utf-8", "surrogateescape")


def _go_string(s: str) -> bytes:
    """hujson.String: a JSON string with only the escapes JSON requires."""
    out = bytearray(b'"')
    short = {"\b": b"\\b", "\t": b"\\t", "\n": b"\\n", "\f": b"\\f", "\r": b"\\r"}
    for ch in s:
        if ch in short:
            out += short[ch]
        elif ch in '\\"':
            out += b"\\" + ch.encode()
        elif ch < " ":
            out += b"\\u%04x" % ord(ch)
        else:
            out += ch.encode()
    return bytes(out + b'"')


def _unquote(lit: bytes) -> str:
    """Go's json.Unmarshal of a string: lone surrogates become U+FFFD."""
    text: str = json.loads(lit.decode("utf-8", "replace"))
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def _normalize(v: _Value) -> None:
    comp = v.value
    if isinstance(comp, bytes):
        if comp.startswith(b'"') and b"\\" in comp:
            v.value = _go_string(_unquote(comp))
        return
    if not comp.values:
        if not _has_comment(comp.after):
            comp.after = None
        return
    for sub in comp.values:
        if not _has_comment(sub.after):
            sub.after = None
    for sub in comp.values:
        _normalize(sub)


_Stats = tuple[int, int, bool]  # first line's length, last line's, more than one line


def _extra_length(b: bytes) -> int:
    n, i = 0, 0
    while True:
        i += _ws(b, i)
        if b.startswith(b"//", i):
            return n + 1 + len(b) - i
        if b.startswith(b"/*", i):
            nc = _comment(b, i)
            if nc <= 0:
                return n + 1 + len(b) - i
            n, i = n + 1 + nc, i + nc
            continue
        return n + 1 if n > 0 else n


def _extra_stats(b: bytes | None) -> _Stats:
    b = b or b""
    if b"\n" not in b:
        n = _extra_length(b)
        return n, n, False
    return _extra_length(b[: b.index(b"\n")]), _extra_length(b[b.rindex(b"\n") + 1 :]), True


def _nl(b: bytes | None) -> bool:
    return b is not None and b"\n" in b


def _expand(v: _Value) -> _Stats:
    comp = v.value
    if isinstance(comp, bytes):
        return len(comp), len(comp), False
    expand = False
    length = 1
    lengths: list[int] = []

    def add(stats: _Stats) -> None:
        nonlocal length
        length += stats[0]
        if stats[2]:
            lengths.append(length)
            length = stats[1]

    for i, sub in enumerate(comp.values):
        name_or_element = not comp.is_object or i % 2 == 0
        if name_or_element:
            expand = expand or _nl(sub.before)
        add(_extra_stats(sub.before))
        add(_expand(sub))
        add(_extra_stats(sub.after))
        length += 2  # ": " after a name, ", " after a value
    length += 1
    last = comp.last()
    expand = expand or (last is not None and _nl(last.after)) or _nl(comp.after)
    lengths.append(length)
    stats = (lengths[0], lengths[-1], len(lengths) > 1)
    expand = expand or any(n > _PUNCH_CARD_WIDTH for n in lengths)
    if expand:
        first = comp.values[0].before if comp.values else comp.after
        stats = (1 + _extra_stats(first)[0], 1, True)
        comp.expand = True
    return stats


def _format_extra(
    b: bytes | None,
    depth: int,
    *,
    leading_newline: bool = False,
    trailing_newline: bool = False,
    trim_leading: bool = False,
    trim_trailing: bool = False,
    unindent_last: bool = False,
    space_if_empty: bool = False,
) -> bytes | None:
    src = b or b""
    if b"\r" in src:
        src = src.replace(b"\r\n", b"\n").replace(b"\n\r", b"\n").replace(b"\r", b" ")
    out = bytearray()
    if leading_newline and b"\n" not in src:
        out += b"\n"
    i = 0
    while i < len(src):
        n = _ws(src, i)
        if n > 0:
            out += b"\n" * min(src.count(b"\n", i, i + n), 2)
            i += n
            continue
        n = _comment(src, i)
        if n <= 0:
            return src if b is not None else None  # invalid comment: left as it is
        out += b"\t" * depth if out.endswith(b"\n") else b" "
        comment = src[i : i + n]
        if comment.startswith(b"//") or b"\n" not in comment:
            if comment.startswith(b"//"):
                n -= 1  # the newline is left for the next round
            out += _rstrip(comment)
            i += n
            continue
        out += _block_comment(comment, depth)
        i += n
    if trailing_newline and not out.endswith(b"\n"):
        out += b"\n"
    while trim_leading and out.startswith(b"\n\n"):
        del out[0]
    while trim_trailing and out.endswith(b"\n\n"):
        del out[-1]
    if out.endswith(b"\n"):
        out += b"\t" * (depth - 1 if unindent_last else depth)
    elif out:
        out += b" "
    if space_if_empty and not out:
        out += b" "
    return None if b is None and not out else bytes(out)


def _block_comment(comment: bytes, depth: int) -> bytes:
    """A multi-line block comment re-indented to depth (format.go's loop body)."""
    lines = [_rstrip(line) for line in comment.split(b"\n")]
    first = next((line for line in lines[1:] if line), b"")
    has_empty = any(not line for line in lines)
    common = first
    for i, line in enumerate(lines[1:], start=1):
        if not line:
            continue
        if line.endswith(b"*/") and _ws(line, 0) + 2 == len(line):
            lines[i] = common[: _ws(common, 0)] + b"*/"
            break
        for k in range(min(len(line), len(common))):
            if line[k] != common[k]:
                common = common[:k]
                break
    prefix = _ws(common, 0)
    star = not has_empty and len(common) > prefix and common[prefix] == ord("*")
    out = bytearray(lines[0] + b"\n")
    for line in lines[1:]:
        if line:
            out += b"\t" * depth + (b" " if star else b"") + line[prefix:]
        out += b"\n"
    return bytes(out).rstrip(b"\n")


def _format_ws(v: _Value, depth: int, standard: bool) -> None:
    comp = v.value
    if isinstance(comp, bytes):
        return
    expand = comp.expand
    step = 1 if expand else 0
    if comp.is_object:
        for i in range(0, len(comp.values), 2):
            name, value = comp.values[i], comp.values[i + 1]
            name.before = _format_extra(
                name.before, depth + 1, leading_newline=expand, trim_leading=i == 0,
                space_if_empty=i != 0,
            )  # fmt: skip
            name.after = _format_extra(name.after, depth + 2, trim_leading=True, trim_trailing=True)
            value.before = _format_extra(
                value.before, depth + 2, trim_leading=True, trim_trailing=True, space_if_empty=True
            )
            broken = _nl(name.after) or _nl(value.before)
            _format_ws(value, depth + step + (1 if broken else 0), standard)
            value.after = _format_extra(
                value.after, depth + 2, trim_leading=True, trim_trailing=True
            )
    else:
        for i, value in enumerate(comp.values):
            value.before = _format_extra(
                value.before, depth + 1, leading_newline=expand, trim_leading=i == 0,
                space_if_empty=i != 0,
            )  # fmt: skip
            _format_ws(value, depth + step, standard)
            value.after = _format_extra(
                value.after, depth + 2, trim_leading=True, trim_trailing=True
            )
    comp.after = _format_extra(
        comp.after, depth + 1, trailing_newline=expand, trim_leading=not comp.values,
        trim_trailing=True, unindent_last=True,
    )  # fmt: skip
    last = comp.last()
    surrounded = last is not None and bool(last.after) and bool(comp.after)
    if not expand and not surrounded:
        _set_trailing_comma(comp, False)
    elif expand and not standard:
        _set_trailing_comma(comp, True)


def _deep_newline(v: _Value, check_extra: bool) -> bool:
    if check_extra and (_nl(v.before) or _nl(v.after)):
        return True
    comp = v.value
    return isinstance(comp, _Composite) and any(_deep_newline(s, True) for s in comp.values)


def _align(v: _Value) -> None:
    comp = v.value
    if not isinstance(comp, _Composite):
        return
    if comp.is_object:
        rows: list[tuple[_Value, int]] = []

        def flush() -> None:
            widest = max((n for _, n in rows), default=0)
            for value, n in rows:
                if widest > n:
                    value.before = (value.before or b"") + b" " * (widest - n)
            rows.clear()

        for i in range(0, len(comp.values), 2):
            name, value = comp.values[i], comp.values[i + 1]
            if (
                not _nl(name.before)
                or _deep_newline(name, False)
                or _nl(name.after)
                or _nl(value.before)
                or _deep_newline(value, False)
                or _nl(value.after)
            ):
                flush()
                continue
            # format.go also flushes on a changed indentation, but its indentSuffix is
            # never set, so only a blank line starts a new block.
            if (name.before or b"").count(b"\n") > 1:
                flush()
            assert isinstance(name.value, bytes)
            width = len(name.value) + len(name.after or b"") + 1 + len(value.before or b"")
            rows.append((value, width))
        flush()
    for sub in comp.values:
        _align(sub)


def hujson_format(data: bytes) -> bytes:
    """Go's `hujson.Format`: what gitops-pusher hashes. Raises HuJSONError."""
    v = _parse(data)
    before = _format_extra(v.before, 0)
    v.before = before[_ws(before, 0) :] if before is not None else None
    standard = _is_standard(v)
    _normalize(v)
    _expand(v)
    _format_ws(v, 0, standard)
    _align(v)
    v.after = _rstrip(_format_extra(v.after, 0) or b"") + b"\n"
    out = bytearray()
    _pack(v, out)
    return bytes(out)
