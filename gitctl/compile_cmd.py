"""`gitctl compile`: what a policy compiles to for each node of a tailnet.

    gitctl compile --topology TOPOLOGY.json [--tailnet TAILNET.json] POLICY_FILE
    gitctl compile --batch   < cases.jsonl   > results.jsonl

The batch form reads JSON lines ``{"id", "policy", "topology", "tailnet"}`` and
answers each with ``{"id", "ok": true, "nodes": {...}}`` or
``{"id", "ok": false, "error": "..."}``, so a whole corpus runs in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from gitctl.policy import PolicyError, PolicyErrors, Topology, compile_tailnet, parse_policy
from gitctl.validate_cmd import add_now_argument, now_from_args

__all__ = ["add_parser", "compile_document", "main", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compile",
        help="show what the policy compiles to for each node",
        description="Compile a policy against a tailnet topology and print, per node, the "
        "packet filter, SSH policy, peers and capabilities it would receive.",
    )
    _configure(p)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "policy", nargs="?", metavar="POLICY_FILE", help="the policy file (HuJSON or JSON)"
    )
    p.add_argument(
        "--topology",
        metavar="TOPOLOGY.json",
        help='users and nodes: {"users": [...], "nodes": {name: {...}}}',
    )
    p.add_argument("--tailnet", metavar="TAILNET.json", help="tailnet settings (optional)")
    p.add_argument(
        "--batch",
        action="store_true",
        help="read JSON lines of {id, policy, topology, tailnet} on stdin",
    )
    add_now_argument(p)
    p.set_defaults(run=run)


def _loads(text: str) -> tuple[Any, Any]:
    """The document and, when the HuJSON reader is available, its positions."""
    try:
        from gitctl.hujson import loads_with_positions
    except ImportError:
        return json.loads(text), None
    return loads_with_positions(text)


def compile_document(
    policy_doc: Any,
    topology_doc: Mapping[str, Any],
    tailnet: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Compile one policy document as in force at ``now``; raises PolicyError when it is
    rejected (also when it has expiry times and ``now`` is None)."""
    if isinstance(policy_doc, str):
        try:
            policy_doc = _loads(policy_doc)[0]
        except ValueError as e:
            raise PolicyError(str(e)) from e
    policy = parse_policy(policy_doc)
    compiled = compile_tailnet(policy, Topology.from_json(topology_doc), tailnet, now=now)
    return compiled.to_json()


def _located(e: PolicyError, name: str, positions: Any) -> list[str]:
    errors = e.errors if isinstance(e, PolicyErrors) else (e,)
    out = []
    for err in errors:
        if positions is not None:
            pos = positions.value(err.path)
            out.append(f"{name}:{pos.line}:{pos.col}: {err.message}")
        else:
            out.append(f"{name}: {err.message}")
    return out


def _run_single(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if not args.policy or not args.topology:
        print("gitctl compile: POLICY_FILE and --topology are required (or use --batch)", file=err)
        return 2
    try:
        text = Path(args.policy).read_text(encoding="utf-8")
        topology = json.loads(Path(args.topology).read_text(encoding="utf-8"))
        tailnet = (
            json.loads(Path(args.tailnet).read_text(encoding="utf-8")) if args.tailnet else None
        )
    except OSError as e:
        print(f"gitctl compile: {e.filename}: {e.strerror}", file=err)
        return 2
    except ValueError as e:
        print(f"gitctl compile: {e}", file=err)
        return 1
    try:
        doc, positions = _loads(text)
    except ValueError as e:
        print(f"{args.policy}: {e}", file=err)
        return 1
    try:
        result = compile_document(doc, topology, tailnet, now=now_from_args(args))
    except PolicyError as e:
        for line in _located(e, args.policy, positions):
            print(line, file=err)
        return 1
    json.dump(result, out, indent=2, ensure_ascii=False)
    out.write("\n")
    return 0


def _run_batch(inp: IO[str], out: IO[str], now: datetime | None = None) -> int:
    for line in inp:
        if not line.strip():
            continue
        case_id: Any = None
        try:
            req = json.loads(line)
            case_id = req.get("id")
            doc, topology, tailnet = req["policy"], req.get("topology") or {}, req.get("tailnet")
            nodes = compile_document(doc, topology, tailnet, now=now)["nodes"]
            reply: dict[str, Any] = {"id": case_id, "ok": True, "nodes": nodes}
        except PolicyError as e:
            reply = {"id": case_id, "ok": False, "error": str(e)}
        except KeyError as e:
            reply = {"id": case_id, "ok": False, "error": f"bad request: missing field {e}"}
        except (ValueError, TypeError) as e:
            reply = {"id": case_id, "ok": False, "error": f"bad request: {e}"}
        out.write(json.dumps(reply, ensure_ascii=False) + "\n")
        out.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.batch:
        return _run_batch(sys.stdin, sys.stdout, now_from_args(args))
    return _run_single(args, sys.stdout, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gitctl compile")
    _configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
