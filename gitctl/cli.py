"""`gitctl`: policy-repository tooling for people and CI.

Exit codes: 0 ok, 1 the tailnet (or a file) has problems, 2 the command line was wrong.
Commands that live in other modules (`compile`, `test`, `diff`, `lint`, `explain`) are
imported only when invoked, so a problem in one of them never stops `gitctl validate` from running.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from gitctl import fmt_cmd, validate_cmd

__all__ = ["build_parser", "main"]

# name -> (module, one-line help shown while the module is not loaded)
_LAZY_COMMANDS = {
    "compile": ("gitctl.compile_cmd", "show what the policy compiles to for each node"),
    "test": ("gitctl.test_cmd", "run the policy's tests"),
    "diff": ("gitctl.diff_cmd", "show the access changes between two revisions"),
    "lint": ("gitctl.lint_cmd", "find unused names, shadowed rules and risky forms"),
    "explain": ("gitctl.explain_cmd", "say whether one device may reach another, and why"),
    "verify": ("gitctl.verify_cmd", "check that a commit is signed by a trusted signer"),
}


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def _schema_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a tailnet.d file kind",
        description="Print the JSON Schema of one file kind, or all of them "
        "as one JSON object keyed by kind.",
    )
    p.add_argument(
        "kind",
        nargs="?",
        help="users, policy, dns, routes, settings, owners, or inventory (not a file kind)",
    )
    p.set_defaults(run=_run_schema)


def _run_schema(args: argparse.Namespace) -> int:
    import json

    from gitctl.tailnet import SCHEMA_KINDS, load_schema

    if args.kind == "inventory":
        from gitctl.inventory import inventory_schema

        print(json.dumps(inventory_schema(), indent=2, ensure_ascii=False))
        return 0
    if args.kind is None:
        print(json.dumps({k: load_schema(k) for k in SCHEMA_KINDS}, indent=2, ensure_ascii=False))
        return 0
    if args.kind not in SCHEMA_KINDS:
        print(
            f'gitctl schema: unknown kind "{args.kind}" (kinds: {", ".join(SCHEMA_KINDS)})',
            file=sys.stderr,
        )
        return 2
    print(json.dumps(load_schema(args.kind), indent=2, ensure_ascii=False))
    return 0


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitctl", description="Validate, format and inspect a tailnet.d policy repository."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate_cmd.add_parser(sub)
    fmt_cmd.add_parser(sub)
    _schema_command(sub)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in _LAZY_COMMANDS.items():
        module = _load(module_name) if name == wanted else None
        if module is not None:
            module.add_parser(sub)
            # Point the command at the module's own run(); it may not set a default itself.
            sub.choices[name].set_defaults(run=module.run)
        else:
            sub.add_parser(name, help=help_text).set_defaults(run=_unavailable(name))
    return parser


def _unavailable(name: str) -> object:
    def run(args: argparse.Namespace) -> int:
        print(f"gitctl {name}: not available in this installation", file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
