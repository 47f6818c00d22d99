"""`gitctl test`: run the policy's `tests` and `sshTests` and show each failing assertion.

The tests always run against one hypothetical device per user and tag (what the server
checks before serving a commit); `--topology` or `--inventory` adds real devices from a file, whose
failures the server would not see but a reviewer may want to.
"""

from __future__ import annotations

import argparse
import sys

from gitctl.diagnostics import render_github, render_json, render_text
from gitctl.idp_groups import add_groups_argument, groups_from_args, merge_groups
from gitctl.inventory import add_device_arguments, devices_from_args
from gitctl.policy import Topology
from gitctl.testing import TopologyFileError, check_tests, synthetic_topology
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
        "test",
        help="run the policy's tests",
        description="Run the policy's tests and sshTests against one hypothetical device per "
        "user and tag (plus the devices of --topology or --inventory) and print each failing "
        "assertion as file:line:col. Exit 0 when all pass, 1 when one fails, 2 on a usage error.",
    )
    add_source_arguments(p)
    add_device_arguments(p.add_mutually_exclusive_group(), "also test against")
    add_groups_argument(p)
    add_format_argument(p)
    p.set_defaults(run=run)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    try:
        given = devices_from_args(args)
        real: Topology | None = given[0] if given is not None else None
        groups = groups_from_args(args)
        # Loading runs the tests on hypothetical devices already: a failure there (or any
        # other problem with the commit) comes back as diagnostics, without a snapshot.
        result = load_from_args(args)
    except (UsageError, TopologyFileError) as exc:
        print(f"gitctl test: {exc}", file=sys.stderr)
        return 2
    diagnostics = list(result.diagnostics)
    snap = result.snapshot
    devices = 0
    if snap is not None:
        topology = synthetic_topology(snap, real=real)
        devices = len(topology.nodes)
        if groups:
            topology = merge_groups(topology, groups)
        if real is not None or groups:
            diagnostics += check_tests(snap, topology, now=now_from_args(args))
    failed = any(d.severity == "error" for d in diagnostics)
    if args.format == "json":
        sys.stdout.write(render_json(diagnostics, snapshot=snap.id if snap else None))
    elif args.format == "github":
        sys.stdout.write(render_github(diagnostics))
    else:
        sys.stderr.write(render_text(diagnostics, result.texts))
        if snap is not None and not failed:
            policy = snap.policy
            tests = len(policy.tests) + len(policy.ssh_tests) if policy is not None else 0
            print(f"ok: {_count(tests, 'test')} passed on {_count(devices, 'device')}")
        else:
            print(_count(len(diagnostics), "problem"), file=sys.stderr)
    return 1 if failed else 0
