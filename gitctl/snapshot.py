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
from datetime import datetime
from functools import lru_cache
from typing import Any

from gitctl.diagnostics import Diagnostic, JsonPath, Severity
from gitctl.policy import Policy, PolicyError, parse_policy
from gitctl.policy.roles import with_roles
from gitctl.sources import Documents, SourceError, read_directory, read_git
from gitctl.tailnet import (
    DnsSpec,
    KeySpec,
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
from gitctl.testing import check_tests

__all__ = [
    "ALLOW_ALL",
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
ALLOW_ALL: Policy = parse_policy(ALLOW_ALL_POLICY)  # what a tailnet.d without policy keys serves


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str  # the commit sha, or "sha256:…" of the files for a plain directory
    users: tuple[UserSpec, ...]
    dns: DnsSpec
    settings: TailnetSettings
    routes: tuple[RouteApproval, ...]
    policy_doc: Mapping[str, Any]  # the merged policy; read-only by convention
    policy: Policy  # parsed, with the roles users.yaml declares
    sources: Mapping[str, str]  # shown path -> sha256 hex of its bytes
    revision: str | None = None
    # Where each merged value came from; lets later checks (policy tests) name a line.
    provenance: Provenance | None = field(default=None, compare=False, repr=False)
    root: str = field(default="tailnet.d", compare=False, repr=False)
    keys: tuple[KeySpec, ...] = ()  # declared pre-auth keys (keys.yaml); secrets stay outside

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
    # The first stage with an error (source, parse, schema, merge, policy, tests); None if none.
    failed_stage: str | None = None

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
) -> tuple[Policy | None, list[Diagnostic]]:
    try:
        return parse_policy(doc), []
    except PolicyError as exc:
        return None, _policy_diagnostics(exc, provenance, root)


def _done(
    snapshot: Snapshot | None,
    diags: list[Diagnostic],
    texts: dict[str, str],
    stages: dict[str, list[Diagnostic]] | None = None,
) -> LoadResult:
    ordered = sorted(diags, key=lambda d: (d.file, d.line, d.col))
    failed = next((name for name, found in (stages or {}).items() if _errors(found)), None)
    return LoadResult(snapshot, tuple(ordered), texts, failed_stage=failed)


def _errors(diags: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diags)


@lru_cache(maxsize=32)  # a few versions of each file: enough for the next commit and a diff
def _checked_file(
    path: str, data: bytes, schemas_passed: bool = False
) -> tuple[SourceFile | None, tuple[Diagnostic, ...]]:
    """A file parsed and checked against its schema, once per content: a commit
    usually changes one file, and the others (a users.yaml of hundreds of
    entries) need not be read again. `schemas_passed`: the caller knows this
    content passed the current schemas before (see `load_snapshot`)."""
    sf, problems = parse_file(path, data)
    if sf is None or schemas_passed:
        return sf, tuple(problems)
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


def _undeclared_key_tags(
    keys: tuple[KeySpec, ...], policy: Policy, provenance: Provenance
) -> list[Diagnostic]:
    """A declared key may only carry tags the policy's tagOwners declares."""
    return [
        provenance.diagnostic(
            ("keys", i, "tags", j), f'tag "{tag}" is not declared in tagOwners', show_key=True
        )
        for i, key in enumerate(keys)
        for j, tag in enumerate(key.tags)
        if tag not in policy.tag_owners
    ]


def load_snapshot(
    documents: Documents, *, now: datetime | None = None, schemas_passed: bool = False
) -> LoadResult:
    """The commit's snapshot, or every problem found. ``now`` is when the policy's tests
    are judged (access expired by then is gone); a policy with `expires` times is refused
    without it. ``schemas_passed``: these very documents passed the JSON schemas of this
    `schema_version()` before (a server restarting on the commit it accepted), so the
    schema check is skipped; every other stage runs."""
    diags: list[Diagnostic] = []
    texts: dict[str, str] = {}
    parsed: list[SourceFile] = []
    # Each stage's problems, in order, to name the first that failed.
    stages: dict[str, list[Diagnostic]] = {s: [] for s in ("parse", "schema", "merge", "policy")}
    for path, data in documents.files.items():
        texts[path] = data.decode("utf-8", "replace")
        sf, checks = _checked_file(path, data, schemas_passed)
        diags += checks
        stages["schema" if sf is not None else "parse"] += checks
        if sf is not None:
            # The cached value is shared: later stages get their own copy.
            parsed.append(replace(sf, value=copy.deepcopy(sf.value)))
    owned = _ownership(documents.root, parsed, diags)
    diags += owned
    stages["schema"] += owned  # owners.yaml scopes are part of validation
    merged, problems = merge_files(parsed)
    diags += problems
    stages["merge"] += problems
    if _errors(diags):
        return _done(None, diags, texts, stages)

    model, problems = build_model(merged.document, merged.provenance)
    diags += problems
    stages["schema"] += problems
    policy_doc = merged.document.get("policy") or copy.deepcopy(dict(ALLOW_ALL_POLICY))
    policy, problems = _parse_policy(policy_doc, merged.provenance, documents.root)
    diags += problems
    stages["policy"] += problems
    if policy is None or _errors(diags):
        return _done(None, diags, texts, stages)
    # Roles come from users.yaml only; carried by the policy, they resolve the
    # same in gitctl test, gitctl diff and the server, which all compile it.
    policy = with_roles(policy, model.users)
    problems = _undeclared_key_tags(model.keys, policy, merged.provenance)
    diags += problems
    stages["policy"] += problems
    if _errors(diags):
        return _done(None, diags, texts, stages)
    snapshot = Snapshot(
        id=documents.revision or _content_id(documents),
        users=model.users,
        dns=model.dns,
        settings=model.settings,
        routes=model.routes,
        keys=model.keys,
        policy_doc=policy_doc,
        policy=policy,
        sources={p: hashlib.sha256(d).hexdigest() for p, d in documents.files.items()},
        revision=documents.revision,
        provenance=merged.provenance,
        root=documents.root,
    )
    # Last stage: the policy's own tests, on hypothetical devices, so a commit stands or
    # falls on its own whatever nodes happen to be registered.
    stages["tests"] = check_tests(snapshot, now=now)
    diags += stages["tests"]
    if _errors(diags):
        return replace(_done(None, diags, texts, stages), untested=snapshot)
    return _done(snapshot, diags, texts)


def _failed(exc: SourceError) -> LoadResult:
    return LoadResult(None, (Diagnostic(exc.where, 1, 1, exc.message),), failed_stage="source")


def load_from_directory(path: str | os.PathLike[str], *, now: datetime | None = None) -> LoadResult:
    try:
        return load_snapshot(read_directory(path), now=now)
    except SourceError as exc:
        return _failed(exc)


def load_from_git(
    repo_path: str | os.PathLike[str],
    rev: str = "HEAD",
    *,
    now: datetime | None = None,
    schemas_passed: bool = False,
) -> LoadResult:
    try:
        return load_snapshot(read_git(repo_path, rev), now=now, schemas_passed=schemas_passed)
    except SourceError as exc:
        return _failed(exc)
