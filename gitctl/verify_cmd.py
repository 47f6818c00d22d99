"""`gitctl verify [REV]`: would the server accept this commit's signature?

The same rule the server applies: with `--allowed-signers FILE` (the server's
`--trusted-signers`), REV must be signed by a key that file lists. Otherwise the
repository's own `trusted_signers` setting decides, read at REV's first parent (the
commit served before it, when the branch moves one commit at a time); a commit that
turns signing on is checked against its own list.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gitctl.signers import SignersError, check_commit, read_trust_file, required_trust
from gitctl.snapshot import load_from_git

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a commit is signed by a trusted signer",
        description="Check REV's SSH signature against the trusted signers, as the server "
        "does before serving it. Exit 0 when it would be served (or no signature is "
        "required), 1 when it would be refused, 2 on a usage error.",
    )
    p.add_argument("rev", metavar="REV", nargs="?", default="HEAD", help="default: HEAD")
    p.add_argument("--repo", metavar="PATH", default=".", help="the git repository (default: .)")
    p.add_argument(
        "--allowed-signers",
        metavar="FILE",
        help="trusted signers file outside the repository (as the server's --trusted-signers); "
        "overrides the repository's trusted_signers setting",
    )
    p.set_defaults(run=run)


def _resolve(repo: str, rev: str) -> str | None:
    out = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def _setting(repo: str, revision: str) -> str | None:
    """The trusted_signers file that `revision` names (read even if its policy tests fail)."""
    result = load_from_git(repo, revision)
    snap = result.snapshot or result.untested
    if snap is None:
        raise SignersError(
            f"commit {revision[:12]} does not load, so its trusted_signers setting is "
            f"unknown (see `gitctl validate --rev {revision[:12]}`)"
        )
    setting: str | None = snap.settings.trusted_signers
    return setting


def run(args: argparse.Namespace) -> int:
    revision = _resolve(args.repo, args.rev)
    if revision is None:
        print(f'gitctl verify: unknown revision "{args.rev}" in {args.repo}', file=sys.stderr)
        return 2
    try:
        outside = read_trust_file(Path(args.allowed_signers)) if args.allowed_signers else None
        parent = _resolve(args.repo, f"{revision}^")
        trust = required_trust(
            args.repo,
            revision,
            None if outside else _setting(args.repo, revision),
            outside=outside,
            previous=parent,
            previous_setting=_setting(args.repo, parent) if parent and not outside else None,
        )
        if trust is None:
            print(f"commit {revision[:12]}: no trusted signers are configured; not checked")
            return 0
        signature = check_commit(args.repo, revision, trust)
    except SignersError as exc:
        print(f"gitctl verify: {exc}", file=sys.stderr)
        return 1
    if not signature.trusted:
        print(f"gitctl verify: {signature.describe()}", file=sys.stderr)
        return 1
    print(f"{signature.describe()}, trusted by {trust.source}")
    return 0
