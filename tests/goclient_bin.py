"""Build `tests/goclient/`: Tailscale's official Go API client, for the e2e test.

A small program around `tailscale.com/client/tailscale/v2` (pinned in
`tests/goclient/go.mod`) that lists devices, gets one, sets its tags, creates
an auth key, lists keys, reads the policy file and validates policies, printing
JSON. Built with `go build` into a cache directory outside the clone, named by a
hash of the program's sources (`${XDG_CACHE_HOME:-~/.cache}/tailnetd/goclient-<hash>/`,
or `TAILNETD_GOCLIENT_BIN`), so an edit rebuilds it. Run as
`python -m tests.goclient_bin`; it prints the path of the binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.gitops_pusher_bin import cache_dir

SOURCE = Path(__file__).parent / "goclient"
_FILES = ("go.mod", "go.sum", "main.go")

__all__ = ["SOURCE", "bin_dir", "binary", "install"]


def _digest() -> str:
    h = hashlib.sha256()
    for name in _FILES:
        h.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


def bin_dir() -> Path:
    return cache_dir("TAILNETD_GOCLIENT_BIN", f"goclient-{_digest()}")


def binary() -> Path:
    return bin_dir() / "goclient"


def install(target: Path | None = None) -> Path:
    """The binary, built first if missing; needs `go` on PATH."""
    built = (target or bin_dir()) / "goclient"
    if built.exists():
        return built
    go = shutil.which("go") or "/usr/local/go/bin/go"
    built.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
    subprocess.run([go, "build", "-o", str(built), "."], cwd=SOURCE, check=True, env=env)
    return built


if __name__ == "__main__":
    print(install())
