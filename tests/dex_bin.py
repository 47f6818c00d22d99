"""Build Dex, the OpenID Connect provider the OIDC end-to-end tests log in through.

Dex's module has no `/v2` path although its tags are v2.x, so `go install …@v2.41.1`
is refused; its release commit is named by the pseudo-version below instead, and
`go install` refuses modules with `replace` directives, so the binary is built with
`go build` inside a small module of our own in the cache (`${XDG_CACHE_HOME:-~/.cache}/
tailnetd/dex-src/`), installed as `dex-2.41.1/dex` beside it. A rerun reuses it.

    python -m tests.dex_bin        # prints the path of the dex binary
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "2.41.1"
# The v2.41.1 release commit, as Go names it (the module and its api/v2 submodule).
MODULE = "github.com/dexidp/dex@v0.0.0-20240807174518-43956db7fd75"
API = "github.com/dexidp/dex/api/v2@v2.1.1-0.20240807174518-43956db7fd75"


class BuildError(RuntimeError):
    """Dex could not be built; the message says why."""


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tailnetd"


def binary() -> Path:
    return Path(os.environ.get("TAILNETD_DEX_BIN") or _cache() / f"dex-{VERSION}" / "dex")


def install() -> Path:
    target = binary()
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError("Dex is built from source and needs Go: no `go` on PATH")
    src = _cache() / "dex-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module tailnetd.test/dexbuild\n\ngo 1.22\n")
    (src / "tools.go").write_text(
        '//go:build tools\n\npackage tools\n\nimport _ "github.com/dexidp/dex/cmd/dex"\n'
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".dex.", dir=target.parent))
    try:
        for step in (
            [go, "get", MODULE, API],
            [go, "mod", "tidy"],
            [go, "build", "-o", str(scratch / "dex"), "github.com/dexidp/dex/cmd/dex"],
        ):
            out = subprocess.run(step, cwd=src, capture_output=True, text=True)
            if out.returncode != 0:
                raise BuildError(f"{' '.join(step[:3])} failed:\n{out.stderr[-4000:]}")
        (scratch / "dex").replace(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def main() -> int:
    try:
        print(install())
    except BuildError as exc:
        print(f"dex {VERSION}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
