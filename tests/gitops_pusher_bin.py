"""Build Tailscale's own `gitops-pusher` 1.96.4 for the end-to-end API test.

A client nobody here wrote: it reads the policy's ETag and validates a policy
file through `/api/v2/tailnet/<tailnet>/acl`, exactly as it does against
api.tailscale.com. Built with `go install` into a cache directory outside the
clone (`${XDG_CACHE_HOME:-~/.cache}/tailnetd/gitops-pusher-1.96.4/`, or
`TAILNETD_GITOPS_PUSHER_BIN`). Run as `python -m tests.gitops_pusher_bin`; it
prints the path of the binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = "1.96.4"
MODULE = f"tailscale.com/cmd/gitops-pusher@v{VERSION}"

__all__ = ["VERSION", "bin_dir", "binary", "cache_dir", "go_install", "install"]


def cache_dir(override_env: str, name: str) -> Path:
    """`$override_env` if set, else `${XDG_CACHE_HOME:-~/.cache}/tailnetd/<name>`."""
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tailnetd" / name


def bin_dir() -> Path:
    return cache_dir("TAILNETD_GITOPS_PUSHER_BIN", f"gitops-pusher-{VERSION}")


def binary() -> Path:
    return bin_dir() / "gitops-pusher"


def install(target: Path | None = None) -> Path:
    """The binary, built first if missing; needs `go` on PATH."""
    return go_install(MODULE, target or bin_dir())


def go_install(module: str, target: Path) -> Path:
    """`go install module@version` into `target`, unless its binary is there already."""
    built = target / module.split("@")[0].rsplit("/", 1)[-1]
    if built.exists():
        return built
    go = shutil.which("go") or "/usr/local/go/bin/go"
    target.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(target), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    subprocess.run([go, "install", module], check=True, env=env)
    return built


if __name__ == "__main__":
    print(install())
