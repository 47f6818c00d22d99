"""`gitctl lint`: findings about a policy that loads, as `file:line:col: rule-id: message`.

Without an inventory the rules are resolved against one hypothetical device per user and
tag (as `gitctl test` does); with `--inventory` or `--topology` against those devices, and
rules or tests that name none of them are reported too. See `gitctl.lint` for the rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from gitctl.diagnostics import Severity, render_github, render_json, render_text
from gitctl.expiring import parse_window
from gitctl.inventory import add_device_arguments, devices_from_args
from gitctl.lint import RULE_IDS, lint
from gitctl.testing import TopologyFileError, synthetic_topology
from gitctl.validate_cmd import (
    UsageError,
    add_format_argument,
    add_source_arguments,
    load_from_args,
    now_from_args,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lint",
        help="find unused names, shadowed rules and risky forms in the policy",
        description="Report what the policy says that is probably not meant, as "
        "file:line:col: rule-id: message. Rules: " + ", ".join(RULE_IDS) + ". Silence one "
        "with a comment on the line before: // gitctl:ignore RULE-ID -- reason (# in YAML). "
        "Exit 0 when nothing is found (or with --warn-only), 1 when something is, "
        "2 on a usage error.",
    )
    add_source_arguments(p)
    add_device_arguments(
        p.add_mutually_exclusive_group(),
        "resolve rules against; also reports rules and tests that name none of them",
    )
    add_format_argument(p)
    p.add_argument(
        "--expiring-within",
        metavar="DURATION",
        help="also report access that expires within this time of --now, e.g. 36h, 2w "
        "(rule expires-soon)",
    )
    p.add_argument(
        "--warn-only", action="store_true", help="report findings as warnings and exit 0"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        given = devices_from_args(args)
        window = parse_window(args.expiring_within) if args.expiring_within else None
        result = load_from_args(args)
    except (UsageError, TopologyFileError, ValueError) as exc:
        print(f"gitctl lint: {exc}", file=sys.stderr)
        return 2
    snap = result.snapshot if result.snapshot is not None else result.untested
    if snap is None or snap.policy is None:
        sys.stderr.write(render_text(result.diagnostics, result.texts))
        print("gitctl lint: the tailnet does not load; run gitctl validate", file=sys.stderr)
        return 1
    topology = given[0] if given is not None else synthetic_topology(snap)
    now = now_from_args(args)
    findings = lint(
        snap, result.texts, topology, inventory=given is not None, now=now, window=window
    )
    if args.warn_only:
        findings = [dataclasses.replace(d, severity=Severity.WARNING) for d in findings]
    if args.format == "json":
        sys.stdout.write(render_json(findings, snapshot=snap.id))
    elif args.format == "github":
        sys.stdout.write(render_github(findings))
    else:
        sys.stdout.write(render_text(findings, result.texts))
        n = len(findings)
        print(f"{n} finding{'' if n == 1 else 's'}" if n else "ok: no findings", file=sys.stderr)
    return 1 if findings and not args.warn_only else 0
