"""`gitctl explain SRC DST[:PORT]`: may SRC reach DST, and which rules say so (file:line).

Against one hypothetical device per user and tag by default (as `gitctl test`), an inventory
or topology file, or a running server's node list (`--server`, as `gitctl diff`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from gitctl.diagnostics import render_text
from gitctl.diff_cmd import add_server_arguments, topology_from_args
from gitctl.explain import Answer, ExplainError, PairAnswer, explain_ssh, explain_traffic
from gitctl.policy.parse import PROTOCOLS
from gitctl.snapshot import Snapshot
from gitctl.validate_cmd import UsageError, add_source_arguments, load_from_args, now_from_args

__all__ = ["add_parser", "parse_destination", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="say whether one device may reach another, and by which rules",
        description="Answer whether SRC may reach DST (on PORT, or on which ports) or, with "
        "--ssh, log in to it, per pair of devices, naming each rule that allows it by "
        "file:line. SRC and DST may be a device name, a user (name or email), a group, a "
        "tag, a host, an IP or a prefix. Access expired at --now (default: the current time) "
        "is left out. Exit 0 when answered, 1 when the revision does "
        "not load, 2 on a usage error.",
    )
    p.add_argument("src", metavar="SRC", help="who sends: a device, user, group, tag, host or IP")
    p.add_argument("dst", metavar="DST[:PORT]", help="who receives, and on which port")
    p.add_argument(
        "--proto", default="tcp", help="tcp (default), udp, icmp, … or a protocol number"
    )
    p.add_argument("--ssh", action="store_true", help="explain SSH logins instead of traffic")
    p.add_argument("--login", metavar="USER", help="with --ssh: the local account to log in as")
    add_source_arguments(p)
    add_server_arguments(p, p.add_mutually_exclusive_group())
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=run)


def parse_destination(text: str) -> tuple[str, int | None]:
    """`tag:db:5432` -> ("tag:db", 5432); `[fd7a::1]:22`; a bare IPv6 address has no port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(rest.removeprefix(":")) if rest else None
    try:
        ipaddress.ip_address(text)
        return text, None
    except ValueError:
        pass
    name, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return name, _port(port)
    return text, None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise UsageError(f'"{text}" is not a port')
    return int(text)


def _proto(text: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    if text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()]
    raise UsageError(f'unknown protocol "{text}"')


def _where(snap: Snapshot, path: tuple[str | int, ...]) -> dict[str, Any]:
    d = snap.policy_diagnostic(path, "")
    return {"rule": f"{path[0]}[{path[1]}]", "file": d.file, "line": d.line}


def _pair_text(snap: Snapshot, pair: PairAnswer) -> list[str]:
    def who(e: Any) -> str:
        return e.name if e.name == e.address else f"{e.name} ({e.address})"

    head = f"  {who(pair.src)} → {who(pair.dst)}: "
    if not pair.allowed:
        return [head + "denied (no rule allows it)"]
    lines = [head + "allowed by"]
    for hit in pair.rules:
        w = _where(snap, hit.path)
        lines.append(f"    {w['rule']} ({w['file']}:{w['line']}): {hit.detail}")
    return lines


def _render_text(snap: Snapshot, question: str, answer: Answer) -> str:
    lines = [f"{question}: {answer.verdict}"]
    for pair in answer.pairs:
        lines += _pair_text(snap, pair)
    if not answer.pairs:
        lines.append("  (no pair of distinct devices to answer for)")
    return "\n".join(lines) + "\n"


def _render_json(snap: Snapshot, question: dict[str, Any], answer: Answer) -> str:
    doc = {
        **question,
        "revision": snap.id,
        "verdict": answer.verdict,
        "pairs": [
            {
                "src": {"name": p.src.name, "address": p.src.address},
                "dst": {"name": p.dst.name, "address": p.dst.address},
                "allowed": p.allowed,
                "rules": [{**_where(snap, h.path), "detail": h.detail} for h in p.rules],
            }
            for p in answer.pairs
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        if args.login and not args.ssh:
            raise UsageError("--login is for --ssh")
        dst, port = (args.dst, None) if args.ssh else parse_destination(args.dst)
        proto = _proto(args.proto)
        result = load_from_args(args)
        snap = result.snapshot if result.snapshot is not None else result.untested
        if snap is None or snap.policy is None:
            sys.stderr.write(render_text(result.diagnostics, result.texts))
            print("gitctl explain: the tailnet does not load", file=sys.stderr)
            return 1
        topology, source = topology_from_args(args, snap, command="explain")
        now = now_from_args(args)
        if args.ssh:
            answer = explain_ssh(snap.policy, topology, args.src, dst, args.login, now)
            asked = f"ssh {args.src} → {dst}" + (f" as {args.login}" if args.login else "")
        else:
            answer = explain_traffic(snap.policy, topology, args.src, dst, port, proto, now)
            on = f":{port}/{args.proto}" if port is not None else " (any port)"
            asked = f"{args.src} → {dst}{on}"
    except (UsageError, ExplainError) as exc:
        print(f"gitctl explain: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        question = {
            "src": args.src,
            "dst": dst,
            "port": port,
            "proto": None if args.ssh else args.proto,
            "ssh": args.ssh,
            "login": args.login,
            "devices": source,
        }
        sys.stdout.write(_render_json(snap, question, answer))
    else:
        sys.stdout.write(_render_text(snap, asked, answer))
    return 0
