"""YAML sources with positions, read by ruamel.yaml in round-trip mode.

Round-trip mode keeps each mapping's and sequence's line/column table (`.lc`), which gives
the same `(plain value, Positions)` shape the HuJSON parser gives, and keeps comments so
that `gitctl fmt` can rewrite a file without losing them.
"""

from __future__ import annotations

import datetime
import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gitctl.diagnostics import JsonPath, Pos, PositionedError, Positions

__all__ = ["YamlSourceError", "format_yaml", "load_yaml_with_positions"]

MAX_DEPTH = 100


class YamlSourceError(PositionedError):
    """A YAML syntax error or an unsupported YAML value."""


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    # Long lines stay long: re-wrapping a user's strings is not formatting, it is editing.
    y.width = 4096
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _pos(line0: int, col0: int) -> Pos:
    return Pos(line0 + 1, col0 + 1)


def _plain(
    node: Any, path: JsonPath, at: Pos, values: dict[JsonPath, Pos], keys: dict[JsonPath, Pos]
) -> Any:
    values[path] = at
    if len(path) > MAX_DEPTH:
        raise YamlSourceError(f"nested deeper than {MAX_DEPTH} levels", at.line, at.col)
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for k, v in node.items():
            kl, kc, vl, vc = node.lc.data[k]
            if isinstance(k, bool | int | float) or k is None:
                # JSON object keys are strings; a YAML `1:` or `true:` key means the text.
                name = "null" if k is None else str(k).lower() if isinstance(k, bool) else str(k)
            elif isinstance(k, str):
                name = str(k)
            else:
                raise YamlSourceError("mapping keys must be plain scalars", kl + 1, kc + 1)
            keys[(*path, name)] = _pos(kl, kc)
            out[name] = _plain(v, (*path, name), _pos(vl, vc), values, keys)
        return out
    if isinstance(node, CommentedSeq):
        return [
            _plain(v, (*path, i), _pos(*node.lc.data[i]), values, keys) for i, v in enumerate(node)
        ]
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime.date):
        # An unquoted 2024-01-01 is a timestamp to YAML; our files only ever mean the text.
        return node.isoformat()
    raise YamlSourceError(
        "unsupported YAML value (use strings, numbers, booleans, lists and mappings)",
        at.line,
        at.col,
    )


def _error(exc: YAMLError) -> YamlSourceError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and "duplicate key" not in exc.problem:
            problem = f"{problem} ({exc.context})"
        if mark is not None:
            return YamlSourceError(problem, mark.line + 1, mark.column + 1)
        return YamlSourceError(problem, 1, 1)
    return YamlSourceError(str(exc).strip() or "invalid YAML", 1, 1)


def load_yaml_with_positions(text: str) -> tuple[Any, Positions]:
    """Parse one YAML document; an empty document is `None`."""
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise _error(exc) from None
    except RecursionError:
        raise YamlSourceError(f"nested deeper than {MAX_DEPTH} levels", 1, 1) from None
    values: dict[JsonPath, Pos] = {}
    keys: dict[JsonPath, Pos] = {}
    start = Pos(1, 1)
    if isinstance(data, CommentedMap | CommentedSeq):
        start = _pos(data.lc.line, data.lc.col)
    value = _plain(data, (), start, values, keys)
    return value, Positions(values, keys)


def format_yaml(text: str) -> str:
    """Re-emit YAML in one indentation style, keeping comments and key order."""
    y = _yaml()
    try:
        data = y.load(text)
    except YAMLError as exc:
        raise _error(exc) from None
    if data is None:
        return text
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()
