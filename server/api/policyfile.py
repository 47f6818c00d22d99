"""The policy file as Tailscale's API shows it, and checks of a proposed one.

`GET /api/v2/tailnet/-/acl` answers the serving commit's policy file. When one
HuJSON file of tailnet.d holds the whole policy, that file is served as it is
(comments and all); otherwise the merged policy is rendered as HuJSON. The
ETag is the SHA-256 of the HuJSON-formatted text, formatted as Go's
`hujson.Format` does (`gitctl.hujson_format`, a byte-exact port), which is what
gitops-pusher sums for its local file (`sumFile` in tailscale's
cmd/gitops-pusher): an unchanged file has the server's ETag, so `apply` does
nothing and `test` skips validation, as against Tailscale. A text Go's parser
refuses (which gitops-pusher could not sum either) is hashed as it is.

`check_policy` puts a proposed policy in place of that file and loads the
commit exactly as the server would (schemas, merge, parse, the policy's
`tests`), answering Tailscale's `{"message", "data"}` shape.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gitctl.diagnostics import Diagnostic, Severity
from gitctl.hujson import HuJSONError, loads
from gitctl.hujson_format import hujson_format
from gitctl.snapshot import load_snapshot
from gitctl.sources import Documents
from gitctl.tailnet.kinds import IGNORED_KEYS, POLICY_KEYS

__all__ = ["PolicyFile", "check_policy", "etag_of", "policy_file"]

_POLICY_ONLY = frozenset(POLICY_KEYS) | frozenset(IGNORED_KEYS)
DEFAULT_NAME = "policy.hujson"


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str  # where a proposed policy goes in tailnet.d
    text: str  # HuJSON
    document: Mapping[str, Any]  # the merged policy, as JSON
    verbatim: bool  # the file as committed (else rendered from the merged policy)

    @property
    def etag(self) -> str:
        return etag_of(self.text)


def etag_of(text: str) -> str:
    """`"<sha256 hex>"` of the text as Go's hujson.Format formats it (gitops-pusher's sumFile)."""
    data = text.encode()
    try:
        data = hujson_format(data)
    except HuJSONError:
        pass
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def _policy_only_files(docs: Documents) -> dict[str, tuple[str, Any]]:
    found = {}
    for path, data in docs.files.items():
        if not path.endswith((".hujson", ".json")):
            continue
        try:
            text = data.decode()
            value = loads(text)
        except (UnicodeDecodeError, HuJSONError):
            continue
        if isinstance(value, dict) and set(value) <= _POLICY_ONLY:
            found[path] = (text, value)
    return found


def policy_file(docs: Documents) -> PolicyFile:
    """The policy file of a commit that loads (the one being served)."""
    result = load_snapshot(docs)
    snap = result.snapshot or result.untested
    merged: Mapping[str, Any] = dict(snap.policy_doc) if snap is not None else {}
    candidates = _policy_only_files(docs)
    if len(candidates) == 1:
        ((path, (text, value)),) = candidates.items()
        own = {k: v for k, v in value.items() if k in POLICY_KEYS}
        if own == merged:
            return PolicyFile(path, text, merged, verbatim=True)
    rendered = hujson_format(json.dumps(merged, indent="\t").encode()).decode()
    path = next(iter(candidates), posixpath.join(docs.root, DEFAULT_NAME))
    return PolicyFile(path, rendered, merged, verbatim=False)


def check_policy(
    docs: Documents, served: PolicyFile, proposed: bytes
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Tailscale's validation answer) for a proposed policy file."""
    files = dict(docs.files)
    if not served.verbatim:  # the proposal replaces every file that held only policy
        for path in _policy_only_files(docs):
            files.pop(path, None)
    files[served.path] = proposed
    result = load_snapshot(replace(docs, files=files))
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    warnings = [d for d in result.diagnostics if d.severity is Severity.WARNING]
    if not errors:
        if not warnings:
            return 200, {}
        return 200, {"data": [{"user": "", "errors": [], "warnings": _texts(warnings, served)}]}
    own = [d for d in errors if d.file == served.path and not _is_test(d)]
    tests = [d for d in errors if _is_test(d)]
    rest = [d for d in errors if d not in own and d not in tests]
    data: list[dict[str, Any]] = []
    for user, found in _by_test_user(tests, proposed).items():
        data.append({"user": user, "errors": _texts(found, served), "warnings": []})
    if rest:
        data.append({"user": "", "errors": _texts(rest, served), "warnings": []})
    if own:
        message = _text(own[0], served)
        if len(own) > 1:
            extra = [_text(d, served) for d in own[1:]]
            data.insert(0, {"user": "", "errors": extra, "warnings": []})
        return 400, {"message": message, "data": data}
    return 200, {"message": "test(s) failed" if tests else "policy rejected", "data": data}


def _is_test(d: Diagnostic) -> bool:
    return d.key_path[:2] in (("policy", "tests"), ("policy", "sshTests"))


def _by_test_user(tests: list[Diagnostic], proposed: bytes) -> dict[str, list[Diagnostic]]:
    try:
        doc = loads(proposed.decode())
    except (UnicodeDecodeError, HuJSONError):
        doc = {}
    out: dict[str, list[Diagnostic]] = {}
    for d in tests:
        user = ""
        if len(d.key_path) > 2 and isinstance(d.key_path[2], int):
            try:
                user = str(doc[d.key_path[1]][d.key_path[2]].get("src", ""))
            except (KeyError, IndexError, TypeError, AttributeError):
                user = ""
        out.setdefault(user, []).append(d)
    return out


def _text(d: Diagnostic, served: PolicyFile) -> str:
    """`line N, column M: message` in the proposed file (what gitops-pusher
    turns into a GitHub annotation); `file:line:col: message` elsewhere."""
    if d.file == served.path:
        return f"line {d.line}, column {d.col}: {d.message}"
    return str(d)


def _texts(found: list[Diagnostic], served: PolicyFile) -> list[str]:
    return [_text(d, served) for d in found]
