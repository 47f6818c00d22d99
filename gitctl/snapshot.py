"""Documents -> Snapshot: everything a commit says about the tailnet, checked and frozen.

A snapshot exists only if every stage passed. Otherwise the result carries every problem
found (each stage reports all of its problems; a stage whose input is already broken is not
run, so one typo does not cascade into a page of follow-on errors).
"""

from __future__ import annotations

import copy
import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from gitctl.diagnostics import Diagnostic, JsonPath, Severity
from gitctl.sources import Documents, SourceError, read_directory, read_git
from gitctl.tailnet import (
    DnsSpec,
    Provenance,
    RouteApproval,
    SourceFile,
    TailnetSettings,
    UserSpec,
    build_model,
    merge_files,
    parse_file,
    validate_file,
)
from gitctl.tailnet.owners import check_owned, is_owners_file, owner_scopes

__all__ = [
    "ALLOW_ALL_POLICY",
    "LoadResult",
    "Snapshot",
    "load_from_directory",
    "load_from_git",
    "load_snapshot",
]

# With no policy keys in any file, the tailnet allows everything, as headscale does without
# a policy and as Tailscale's default policy file does. An explicit empty `acls` list denies.
ALLOW_ALL_POLICY: Mapping[str, Any] = {
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str  # the commit sha, or "sha256:…" of the files for a plain directory
    users: tuple[UserSpec, ...]
    dns: DnsSpec
    settings: TailnetSettings
    routes: tuple[RouteApproval, ...]
    policy_doc: Mapping[str, Any]  # the merged policy; read-only by convention
    policy: Any  # gitctl.policy.Policy, or None while the compiler is not installed
    sources: Mapping[str, str]  # shown path -> sha256 hex of its bytes
    revision: str | None = None
    # Where each merged value came from; lets later checks (policy tests) name a line.
    provenance: Provenance | None = field(default=None, compare=False, repr=False)
    root: str = field(default="tailnet.d", compare=False, repr=False)

    def policy_diagnostic(self, path: JsonPath, message: str) -> Diagnostic:
        """A diagnostic at `path` inside the merged policy, e.g. `("tests", 0, "deny", 1)`,
        placed at the file, line and column that value came from."""
        full = ("policy", *path)
        if self.provenance is None:
            return Diagnostic(self.root, 1, 1, message, full)
        return self.provenance.diagnostic(full, message, fallback_file=self.root)


@dataclass(frozen=True, slots=True)
class LoadResult:
    snapshot: Snapshot | None
    diagnostics: tuple[Diagnostic, ...]
    texts: Mapping[str, str] = field(default_factory=dict)  # for caret snippets
    # The snapshot the commit would be had its policy tests passed: a review (`gitctl diff`)
    # still shows what such a commit changes. Never served.
    untested: Snapshot | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.snapshot is not None


def _content_id(docs: Documents) -> str:
    h = hashlib.sha256()
    for path, data in docs.files.items():
        rel = posixpath.relpath(path, docs.root)
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return "sha256:" + h.hexdigest()


def _policy_diagnostics(exc: Exception, provenance: Provenance, root: str) -> list[Diagnostic]:
    problems = list(getattr(exc, "errors", None) or [exc])
    out = []
    for p in problems:
        path = tuple(getattr(p, "path", ()) or ())
        message = str(getattr(p, "message", "") or p)
        out.append(provenance.diagnostic(("policy", *path), message, fallback_file=root))
    return out


def _parse_policy(
    doc: Mapping[str, Any], provenance: Provenance, root: str
) -> tuple[Any, list[Diagnostic]]:
    try:
        from gitctl import policy as policy_mod
    except ImportError:
        return None, []
    parse = getattr(policy_mod, "parse_policy", None)
    error_type = getattr(policy_mod, "PolicyError", None)
    if parse is None or error_type is None:
        return None, []
    try:
        return parse(doc), []
    except error_type as exc:
        return None, _policy_diagnostics(exc, provenance, root)


def _done(snapshot: Snapshot | None, diags: list[Diagnostic], texts: dict[str, str]) -> LoadResult:
    ordered = sorted(diags, key=lambda d: (d.file, d.line, d.col))
    return LoadResult(snapshot, tuple(ordered), texts)


def _errors(diags: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diags)


@lru_cache(maxsize=32)  # a few versions of each file: enough for the next commit and a diff
def _checked_file(path: str, data: bytes) -> tuple[SourceFile | None, tuple[Diagnostic, ...]]:
    """A file parsed and checked against its schema, once per content: a commit
    usually changes one file, and the others (a users.yaml of hundreds of
    entries) need not be read again."""
    sf, problems = parse_file(path, data)
    if sf is None:
        return None, tuple(problems)
    return sf, (*problems, *validate_file(sf))


def _ownership(root: str, parsed: list[SourceFile], diags: list[Diagnostic]) -> list[Diagnostic]:
    """Owned fragments that reach outside their owner's scope (owners.yaml)."""
    owners = [sf for sf in parsed if is_owners_file(sf.path)]
    problems = [
        Diagnostic(sf.path, 1, 1, f"owners files are read only at the top of {root}/")
        for sf in owners
        if posixpath.dirname(sf.path) != root
    ]
    broken = {d.file for d in diags if d.severity is Severity.ERROR}
    scopes = [s for sf in owners if sf.path not in broken for s in owner_scopes(sf)]
    fragments = (sf for sf in parsed if not is_owners_file(sf.path))
    return problems + check_owned(root, scopes, fragments)


def load_snapshot(documents: Documents) -> LoadResult:
    diags: list[Diagnostic] = []
    texts: dict[str, str] = {}
    parsed: list[SourceFile] = []
    for path, data in documents.files.items():
        texts[path] = data.decode("utf-8", "replace")
        sf, checks = _checked_file(path, data)
        diags += checks
        if sf is not None:
            # The cached value is shared: later stages get their own copy.
            parsed.append(replace(sf, value=copy.deepcopy(sf.value)))
    diags += _ownership(documents.root, parsed, diags)
    merged, problems = merge_files(parsed)
    diags += problems
    if _errors(diags):
        return _done(None, diags, texts)

    model, problems = build_model(merged.document, merged.provenance)
    diags += problems
    policy_doc = merged.document.get("policy") or copy.deepcopy(dict(ALLOW_ALL_POLICY))
    policy, problems = _parse_policy(policy_doc, merged.provenance, documents.root)
    diags += problems
    if policy is not None:
        # Roles come from users.yaml only; carried by the policy, they resolve the
        # same in gitctl test, gitctl diff and the server, which all compile it.
        from gitctl.policy.roles import with_roles

        policy = with_roles(policy, model.users)
    if _errors(diags):
        return _done(None, diags, texts)
    snapshot = Snapshot(
        id=documents.revision or _content_id(documents),
        users=model.users,
        dns=model.dns,
        settings=model.settings,
        routes=model.routes,
        policy_doc=policy_doc,
        policy=policy,
        sources={p: hashlib.sha256(d).hexdigest() for p, d in documents.files.items()},
        revision=documents.revision,
        provenance=merged.provenance,
        root=documents.root,
    )
    if policy is not None:
        # Last stage: the policy's own tests, on hypothetical devices, so a commit stands or
        # falls on its own whatever nodes happen to be registered. Imported late: it needs
        # the policy compiler, which this module treats as optional.
        from gitctl.testing import check_tests

        diags += check_tests(snapshot)
        if _errors(diags):
            return replace(_done(None, diags, texts), untested=snapshot)
    return _done(snapshot, diags, texts)


def _failed(exc: SourceError) -> LoadResult:
    return LoadResult(None, (Diagnostic(exc.where, 1, 1, exc.message),))


def load_from_directory(path: str | os.PathLike[str]) -> LoadResult:
    try:
        return load_snapshot(read_directory(path))
    except SourceError as exc:
        return _failed(exc)


def load_from_git(repo_path: str | os.PathLike[str], rev: str = "HEAD") -> LoadResult:
    try:
        return load_snapshot(read_git(repo_path, rev))
    except SourceError as exc:
        return _failed(exc)
