"""`gitctl fmt`: rewrite tailnet.d files in one style, keeping every comment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gitctl.diagnostics import Diagnostic, PositionedError, render_text
from gitctl.hujson import format_hujson
from gitctl.sources import DEFAULT_DIR, SourceError, read_directory
from gitctl.yamlsrc import format_yaml

__all__ = ["add_parser", "format_text", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fmt",
        help="format tailnet.d files (YAML and HuJSON), keeping comments",
        description="Rewrite files in place in one style: HuJSON with tabs and trailing "
        "commas as Tailscale writes it, YAML indented by two. With --check, "
        "change nothing and exit 1 if a file would change.",
    )
    p.add_argument("--check", action="store_true", help="list files that would change; exit 1")
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="files or directories to format (default: every tailnet.d file "
        f"under ./{DEFAULT_DIR})",
    )
    p.set_defaults(run=run)


def format_text(path: str, text: str) -> str:
    """The formatted text of one file; raises PositionedError on a syntax error."""
    if path.endswith((".yaml", ".yml")):
        return format_yaml(text)
    # A .json file stays valid JSON: no trailing commas are added to it.
    return format_hujson(text, trailing_commas=not path.endswith(".json"))


def _targets(files: list[str]) -> list[str]:
    """The files named, with each directory standing for its tailnet.d files."""
    out: list[str] = []
    for name in files or [DEFAULT_DIR]:
        out.extend(read_directory(name).files if Path(name).is_dir() else [name])
    return out


def run(args: argparse.Namespace) -> int:
    try:
        targets = _targets(args.files)
    except SourceError as exc:
        print(f"gitctl fmt: {exc}", file=sys.stderr)
        return 2
    changed: list[str] = []
    problems: list[Diagnostic] = []
    texts: dict[str, str] = {}
    for name in targets:
        path = Path(name)
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Diagnostic(name, 1, 1, f"cannot read: {exc}"))
            continue
        texts[name] = text
        try:
            formatted = format_text(name, text)
        except PositionedError as exc:
            problems.append(Diagnostic(name, exc.line, exc.col, exc.message))
            continue
        if formatted != text:
            changed.append(name)
            if not args.check:
                path.write_text(formatted, "utf-8")
    sys.stderr.write(render_text(problems, texts))
    for name in changed:
        print(name if args.check else f"formatted {name}")
    if problems:
        return 1
    return 1 if args.check and changed else 0
