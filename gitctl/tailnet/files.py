"""tailnet.d drop-in files: parse each file, split it into sections, merge them all.

Merging keeps the origin (file, path in that file) of every merged value, so any later
stage — schema, model checks, the policy compiler — can point at the line a value came from.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitctl.diagnostics import Diagnostic, JsonPath, Pos, PositionedError, Positions, format_path
from gitctl.hujson import loads_with_positions
from gitctl.tailnet.kinds import (
    CONCAT,
    IGNORED_KEYS,
    OWNERS_STEM,
    SECTION_FILES,
    SECTION_STRATEGIES,
    TOP_LEVEL_KEYS,
    MapMerge,
    Strategy,
    did_you_mean,
    section_of,
)
from gitctl.yamlsrc import load_yaml_with_positions

__all__ = [
    "EXTENSIONS",
    "Merged",
    "Provenance",
    "Section",
    "SourceFile",
    "merge_files",
    "parse_file",
    "split_sections",
]

EXTENSIONS = (".yaml", ".yml", ".hujson", ".json")


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # as shown to people, e.g. tailnet.d/users.yaml
    text: str
    value: Mapping[str, Any]
    positions: Positions


@dataclass(frozen=True, slots=True)
class Section:
    """The part of one file that belongs to one section."""

    name: str  # users | routes | dns | settings | policy
    file_prefix: JsonPath  # where the section's value sits in the file
    value: Any


def _decode(path: str, data: bytes) -> tuple[str | None, Diagnostic | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        return None, Diagnostic(path, line, col, "file is not valid UTF-8")


def parse_file(path: str, data: bytes) -> tuple[SourceFile | None, list[Diagnostic]]:
    text, problem = _decode(path, data)
    if text is None:
        return None, [problem] if problem else []
    try:
        if path.endswith((".yaml", ".yml")):
            value, positions = load_yaml_with_positions(text)
        else:
            value, positions = loads_with_positions(text, allow_empty=True)
    except PositionedError as exc:
        return None, [Diagnostic(path, exc.line, exc.col, exc.message)]
    if value is None:  # empty or comment-only: a drop-in that contributes nothing
        value = {}
    if not isinstance(value, dict):
        at = positions.value(())
        return None, [
            Diagnostic(
                path, at.line, at.col, "the top level of a tailnet.d file must be a mapping of keys"
            )
        ]
    return SourceFile(path, text, value, positions), []


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def split_sections(sf: SourceFile) -> tuple[list[Section], list[Diagnostic]]:
    """Assign the file's top-level keys to sections; unknown keys become diagnostics."""
    stem = _stem(sf.path)
    if stem == OWNERS_STEM:
        return [], []  # says who may change what; contributes nothing to the tailnet
    if stem in SECTION_FILES:
        body = {k: v for k, v in sf.value.items() if k not in (*IGNORED_KEYS, stem)}
        problems = []
        if stem in sf.value:
            at = sf.positions.key((stem,))
            problems.append(
                Diagnostic(
                    sf.path,
                    at.line,
                    at.col,
                    f'unexpected key "{stem}": a file named {posixpath.basename(sf.path)} holds '
                    f"the {stem} keys at its top level, without a {stem}: wrapper",
                    (stem,),
                )
            )
        return [Section(stem, (), body)], problems
    sections: list[Section] = []
    policy: dict[str, Any] = {}
    diagnostics: list[Diagnostic] = []
    for key, value in sf.value.items():
        section = section_of(key)
        if key in IGNORED_KEYS:
            continue
        if section is None:
            at = sf.positions.key((key,))
            diagnostics.append(
                Diagnostic(
                    sf.path,
                    at.line,
                    at.col,
                    f'unknown top-level key "{key}"{did_you_mean(key, TOP_LEVEL_KEYS)}',
                    (key,),
                )
            )
        elif section == "policy":
            policy[key] = value
        else:
            sections.append(Section(section, (key,), value))
    if policy:
        sections.append(Section("policy", (), policy))
    return sections, diagnostics


@dataclass(frozen=True, slots=True)
class Provenance:
    """Maps a path in the merged document back to the file and line it came from."""

    origins: Mapping[JsonPath, tuple[str, JsonPath]]
    positions: Mapping[str, Positions]

    def resolve(self, path: JsonPath) -> tuple[str, JsonPath] | None:
        """(file, path inside that file) of the value at `path` in the merged document."""
        for n in range(len(path), 0, -1):
            found = self.origins.get(path[:n])
            if found is not None:
                file, file_path = found
                return file, (*file_path, *path[n:])
        return None

    def locate(self, path: JsonPath, *, key: bool = False) -> tuple[str, Pos] | None:
        found = self.resolve(path)
        if found is None:
            return None
        file, file_path = found
        positions = self.positions[file]
        return file, positions.key(file_path) if key else positions.value(file_path)

    def diagnostic(
        self,
        path: JsonPath,
        message: str,
        *,
        key: bool = False,
        show_key: bool = False,
        fallback_file: str = "tailnet.d",
    ) -> Diagnostic:
        """A diagnostic at the value (or key) `path`; `show_key` prefixes `key.path: `."""
        found = self.resolve(path)
        if found is None:
            return Diagnostic(fallback_file, 1, 1, message, path)
        file, file_path = found
        positions = self.positions[file]
        pos = positions.key(file_path) if key else positions.value(file_path)
        shown = format_path(file_path)
        text = f"{shown}: {message}" if show_key and shown else message
        return Diagnostic(file, pos.line, pos.col, text, path)


@dataclass(frozen=True, slots=True)
class Merged:
    document: Mapping[str, Any]  # {section: merged value}
    provenance: Provenance


def _display(path: JsonPath) -> str:
    return format_path(path[1:] if path[0] == "policy" else path)


class _Merger:
    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        self.origins: dict[JsonPath, tuple[str, JsonPath]] = {}
        self.positions: dict[str, Positions] = {}
        self.diagnostics: list[Diagnostic] = []

    def member(
        self,
        parent: dict[str, Any],
        key: str,
        value: Any,
        mpath: JsonPath,
        origin: tuple[str, JsonPath],
        strategy: Strategy,
        label: str | None,
    ) -> None:
        existing = parent.get(key)
        if (
            isinstance(strategy, MapMerge)
            and isinstance(value, dict)
            and (existing is None or isinstance(existing, dict))
        ):
            if existing is None:
                parent[key] = existing = {}
                self.origins[mpath] = origin
            file, fpath = origin
            for k, v in value.items():
                self.member(
                    existing,
                    k,
                    v,
                    (*mpath, k),
                    (file, (*fpath, k)),
                    strategy.child(k),
                    strategy.label,
                )
        elif (
            strategy == CONCAT
            and isinstance(value, list)
            and (existing is None or isinstance(existing, list))
        ):
            if existing is None:
                parent[key] = existing = []
                self.origins[mpath] = origin
            file, fpath = origin
            for i, item in enumerate(value):
                self.origins[(*mpath, len(existing))] = (file, (*fpath, i))
                existing.append(item)
        elif key in parent:
            self.conflict(mpath, origin, label)
        else:
            parent[key] = value
            self.origins[mpath] = origin

    def conflict(self, mpath: JsonPath, second: tuple[str, JsonPath], label: str | None) -> None:
        first_file, first_path = self.origins[mpath]
        first = self.positions[first_file].key(first_path)
        other = self.positions[second[0]].key(second[1])
        what = f"{label} {json.dumps(mpath[-1])}" if label else f'"{_display(mpath)}"'
        self.diagnostics.append(
            Diagnostic(
                first_file,
                first.line,
                first.col,
                f"{what} is also defined at {second[0]}:{other.line}:{other.col}",
                mpath,
            )
        )


def merge_files(files: Iterable[SourceFile]) -> tuple[Merged, list[Diagnostic]]:
    """Merge every file's sections in the given (file-name) order."""
    m = _Merger()
    for sf in files:
        m.positions[sf.path] = sf.positions
        sections, problems = split_sections(sf)
        m.diagnostics += problems
        for s in sections:
            m.member(
                m.root,
                s.name,
                s.value,
                (s.name,),
                (sf.path, s.file_prefix),
                SECTION_STRATEGIES[s.name],
                None,
            )
    return Merged(m.root, Provenance(m.origins, m.positions)), m.diagnostics
