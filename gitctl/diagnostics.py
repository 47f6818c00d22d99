"""Diagnostics: problems in tailnet.d files, each pinned to file, line and column.

Every stage of gitctl reports problems as `Diagnostic` values instead of raising at the
first one, so a user sees everything wrong with a commit in one run. The three renderings
serve people (`file:line:col: message` plus a caret under the source), tools (JSON) and
GitHub Actions (workflow-command annotations on the pull request diff).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Diagnostic",
    "JsonPath",
    "Pos",
    "PositionedError",
    "Positions",
    "Severity",
    "format_path",
    "render_github",
    "render_json",
    "render_text",
]

JsonPath = tuple[str | int, ...]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based line and column (columns count characters, not bytes)."""

    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Positions:
    """Where each value (and each object key) of a parsed document starts.

    `values[path]` is the start of the value at `path`; `keys[path]` is the start of the
    key that names it (only for object members). Both parsers, HuJSON and YAML, produce
    this same shape so that later stages never care which syntax a file used.
    """

    values: Mapping[JsonPath, Pos] = field(default_factory=dict)
    keys: Mapping[JsonPath, Pos] = field(default_factory=dict)

    def value(self, path: JsonPath) -> Pos:
        """The position of the value at `path`, or of its nearest known ancestor."""
        for n in range(len(path), -1, -1):
            pos = self.values.get(path[:n])
            if pos is not None:
                return pos
        return Pos(1, 1)

    def key(self, path: JsonPath) -> Pos:
        """The position of the key naming `path`, falling back to the value's position."""
        pos = self.keys.get(path)
        return pos if pos is not None else self.value(path)


class PositionedError(ValueError):
    """A problem at a 1-based line and column of one text; parsers raise subclasses."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(f"{line}:{col}: {message}")
        self.message = message
        self.line = line
        self.col = col


@dataclass(frozen=True, slots=True)
class Diagnostic:
    file: str
    line: int
    col: int
    message: str
    key_path: JsonPath = ()
    severity: Severity = Severity.ERROR

    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"

    def render(self, source: str | None = None) -> str:
        """`file:line:col: message`, with the source line and a caret when given the text."""
        return render_text([self], {self.file: source} if source is not None else None).rstrip("\n")

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity.value,
            "message": self.message,
            "key": format_path(self.key_path),
            "key_path": list(self.key_path),
        }


def format_path(path: JsonPath) -> str:
    """`("acls", 2, "dst", 0)` -> `acls[2].dst[0]`, the way people write it in review."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out


def _snippet(source: str, line: int, col: int) -> str:
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    text = lines[line - 1].rstrip("\r\n")
    # Keep tabs in the caret line so the caret lands under the character in a terminal.
    pad = "".join("\t" if ch == "\t" else " " for ch in text[: max(col - 1, 0)])
    return f"    {text}\n    {pad}^"


def render_text(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None) -> str:
    """`file:line:col: message` lines, each followed by the source line and a caret."""
    parts: list[str] = []
    for d in diagnostics:
        head = str(d) if d.severity is Severity.ERROR else f"{d.location()}: warning: {d.message}"
        source = (sources or {}).get(d.file)
        snippet = _snippet(source, d.line, d.col) if source is not None else ""
        parts.append(f"{head}\n{snippet}" if snippet else head)
    return "\n".join(parts) + ("\n" if parts else "")


def render_json(diagnostics: Iterable[Diagnostic], **extra: Any) -> str:
    """`{"ok": …, **extra, "diagnostics": […]}`; ok means no errors (warnings allowed)."""
    items = [d.as_dict() for d in diagnostics]
    doc = {"ok": not any(i["severity"] == "error" for i in items), **extra, "diagnostics": items}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _escape_data(text: str) -> str:
    # GitHub workflow commands: these three characters would end or split the command.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(diagnostics: Iterable[Diagnostic]) -> str:
    """One `::error file=…,line=…,col=…::message` workflow command per diagnostic."""
    lines = []
    for d in diagnostics:
        props = f"file={_escape_property(d.file)},line={d.line},col={d.col}"
        lines.append(f"::{d.severity.value} {props}::{_escape_data(d.message)}")
    return "\n".join(lines) + ("\n" if lines else "")
