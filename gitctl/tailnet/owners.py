"""Owned fragments: `owners.yaml` gives a team a set of tailnet.d files and a scope.

An owned fragment may hold only rules (acls, grants, ssh) and their tests, may name only
its scope's sources as sources, and may grant access only to its scope's destinations. It
cannot define groups, tags or hosts: those would widen what its names mean. Files that no
owner entry matches are unrestricted (the platform team's, guarded by CODEOWNERS).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gitctl.diagnostics import Diagnostic, JsonPath, format_path
from gitctl.tailnet.files import SourceFile
from gitctl.tailnet.kinds import OWNERS_STEM

__all__ = ["OWNERS_STEM", "OwnerScope", "check_owned", "is_owners_file", "owner_scopes"]

# What an owned fragment may hold; each rule list says which of its fields name sources
# and which name destinations.
_RULE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "acls": (("src",), ("dst",)),
    "grants": (("src",), ("dst",)),
    "ssh": (("src",), ("dst",)),
}
_ALLOWED_KEYS = ("$schema", *_RULE_FIELDS, "tests", "sshTests")


@dataclass(frozen=True, slots=True)
class OwnerScope:
    files: tuple[str, ...]  # globs relative to tailnet.d/
    destinations: tuple[str, ...]
    sources: tuple[str, ...]
    team: str | None
    where: str  # owners.yaml:line:col of the entry

    def describe(self) -> str:
        who = f'owner "{self.team}"' if self.team else "an owner"
        return f"{who} ({self.where})"

    def matches(self, rel: str) -> bool:
        return any(_glob(pattern, rel) for pattern in self.files)


def is_owners_file(path: str) -> bool:
    return posixpath.splitext(posixpath.basename(path))[0] == OWNERS_STEM


def _glob(pattern: str, rel: str) -> bool:
    """Path glob: `*` within one directory, `**` across any number of them."""
    return _match(pattern.strip("/").split("/"), rel.split("/"))


def _match(pat: list[str], parts: list[str]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and _match(pat[1:], parts[1:])


def owner_scopes(sf: SourceFile) -> list[OwnerScope]:
    """The entries of an owners file that passed its schema."""
    scopes = []
    for i, entry in enumerate(sf.value.get("owners") or ()):
        pos = sf.positions.value(("owners", i))
        scopes.append(
            OwnerScope(
                tuple(entry["files"]),
                tuple(entry["destinations"]),
                tuple(entry["sources"]),
                entry.get("team"),
                f"{sf.path}:{pos.line}:{pos.col}",
            )
        )
    return scopes


def _alias(entry: str, key: str, field: str) -> str:
    """The name in a rule entry: an acl destination carries `:ports` after it."""
    if key == "acls" and field == "dst" and ":" in entry:
        return entry.rsplit(":", 1)[0]
    return entry


def _allowed(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _fragment_problems(sf: SourceFile, scope: OwnerScope) -> Iterator[Diagnostic]:
    def at(path: JsonPath, message: str, *, key: bool = False) -> Diagnostic:
        pos = sf.positions.key(path) if key else sf.positions.value(path)
        return Diagnostic(sf.path, pos.line, pos.col, f"{format_path(path)}: {message}", path)

    for key in sf.value:
        if key not in _ALLOWED_KEYS:
            yield at(
                (key,),
                f"a fragment owned by {scope.describe()} may hold only acls, grants, ssh, "
                f'tests and sshTests, not "{key}"',
                key=True,
            )
    for key, (src_fields, dst_fields) in _RULE_FIELDS.items():
        rules = sf.value.get(key)
        if not isinstance(rules, list):
            continue
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            for field in (*src_fields, *dst_fields):
                is_src = field in src_fields
                scope_names = scope.sources if is_src else scope.destinations
                for j, entry in enumerate(rule.get(field) or ()):
                    if not isinstance(entry, str):
                        continue
                    name = _alias(entry, key, field)
                    if _allowed(name, scope_names):
                        continue
                    what = "name as a source" if is_src else "grant access to"
                    allowed = ", ".join(scope_names) or "nothing"
                    yield at(
                        (key, i, field, j),
                        f'"{name}" is outside the scope of {scope.describe()}: its fragments '
                        f"may {what} {allowed}",
                    )


def check_owned(
    root: str, owners: list[OwnerScope], files: Iterable[SourceFile]
) -> list[Diagnostic]:
    """Every rule of every owned fragment that reaches outside its owner's scope."""
    problems: list[Diagnostic] = []
    for sf in files:
        rel = posixpath.relpath(sf.path, root)
        scope = next((s for s in owners if s.matches(rel)), None)
        if scope is not None:
            problems += _fragment_problems(sf, scope)
    return problems
