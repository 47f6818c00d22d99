"""`gitctl validate`: load tailnet.d exactly as the server would and report every problem."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from gitctl.diagnostics import render_github, render_json, render_text
from gitctl.policy.times import parse_rfc3339
from gitctl.snapshot import LoadResult, load_from_directory, load_from_git
from gitctl.sources import DEFAULT_DIR

__all__ = [
    "add_format_argument",
    "add_now_argument",
    "add_parser",
    "load_from_args",
    "now_from_args",
    "run",
]


def _time(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_now_argument(p: argparse.ArgumentParser) -> None:
    """--now TIME: when time-limited access (`expires`) is judged; the clock is read here,
    at the command's edge, and nowhere deeper."""
    p.add_argument(
        "--now",
        metavar="TIME",
        type=_time,
        default=None,
        help="judge expiring access as at this RFC 3339 time (default: the current time)",
    )


def now_from_args(args: argparse.Namespace) -> datetime:
    now = getattr(args, "now", None)
    return now if isinstance(now, datetime) else datetime.now(UTC)


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """--repo/--rev/--dir, shared by every command that reads a tailnet."""
    p.add_argument(
        "--repo",
        metavar="PATH",
        help="read tailnet.d/ from this git repository (default: . when --rev is given)",
    )
    p.add_argument("--rev", metavar="REV", help="the revision to read (default: HEAD)")
    p.add_argument(
        "--dir",
        metavar="PATH",
        help=f"read this directory on disk instead of git (default: ./{DEFAULT_DIR})",
    )
    add_now_argument(p)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check tailnet.d: syntax, schemas, merge conflicts, policy",
        description="Load tailnet.d from a directory or a git revision, the way the server "
        "does, and print every problem as file:line:col: message.",
    )
    add_source_arguments(p)
    add_format_argument(p)
    p.set_defaults(run=run)


def add_format_argument(p: argparse.ArgumentParser) -> None:
    """--format text|json|github, shared by the commands that report diagnostics."""
    p.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text for people, json for tools, github for Actions annotations",
    )


class UsageError(Exception):
    pass


def load_from_args(args: argparse.Namespace) -> LoadResult:
    """The snapshot named by --repo/--rev/--dir; raises UsageError for a bad combination."""
    if args.dir is not None and (args.repo is not None or args.rev is not None):
        raise UsageError("--dir reads files on disk; it cannot be combined with --repo or --rev")
    now = now_from_args(args)
    if args.repo is not None or args.rev is not None:
        return load_from_git(args.repo or ".", args.rev or "HEAD", now=now)
    return load_from_directory(args.dir or DEFAULT_DIR, now=now)


def run(args: argparse.Namespace) -> int:
    try:
        result = load_from_args(args)
    except UsageError as exc:
        print(f"gitctl validate: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        snapshot_id = result.snapshot.id if result.snapshot else None
        sys.stdout.write(render_json(result.diagnostics, snapshot=snapshot_id))
    elif args.format == "github":
        sys.stdout.write(render_github(result.diagnostics))
    else:
        sys.stderr.write(render_text(result.diagnostics, result.texts))
        if result.snapshot is not None:
            files = len(result.snapshot.sources)
            print(f"ok: {files} file{'s' if files != 1 else ''}, snapshot {result.snapshot.id}")
        else:
            errors = len(result.diagnostics)
            print(f"{errors} problem{'s' if errors != 1 else ''}", file=sys.stderr)
    return 0 if result.ok else 1
