"""A throwaway PostgreSQL server for tests and benchmarks, from Debian's packages.

`PgServer.start()` runs `initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin in
a fresh temporary directory. It listens on a unix socket in that directory
only (no TCP port at all), trusts local connections, and runs as the calling
user, or as `postgres` when that is root (PostgreSQL refuses to run as root).
Nothing is registered with the system: no service, no cluster in /etc.

If the binaries are missing and we are root (CI on a fresh machine), the
`postgresql` package is installed first and its system service stopped again.

Run `python -m tests.pgserver [--durable]` to get a server for
`bench.bench_store --database URL`; it prints the URL and stops on Ctrl-C or
SIGTERM.
`--durable` keeps PostgreSQL's default (crash-safe, fsync per commit) settings.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["PgServer", "PgUnavailable", "find_bin_dir"]

_SUPERUSER = "tailnetd"
# Durability off: a test server that loses its data in a crash loses nothing.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PgUnavailable(Exception):
    """No PostgreSQL binaries here and no way to install them."""


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(found[0]).parent if found else None


def _major(initdb: str) -> int:
    version = Path(initdb).parent.parent.name
    return int(version) if version.isdigit() else 0


def _install() -> Path:
    if os.geteuid() != 0:
        raise PgUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(10):  # another apt may hold the dpkg lock for a while
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            break
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        time.sleep(3)
    else:
        raise PgUnavailable(f"apt-get install postgresql failed: {result.stderr.strip()}")
    # The package starts a system cluster; tests run their own.
    subprocess.run(["service", "postgresql", "stop"], capture_output=True)
    subprocess.run(["update-rc.d", "postgresql", "disable"], capture_output=True)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PgUnavailable("postgresql installed but no initdb under /usr/lib/postgresql")
    return bin_dir


@dataclass
class PgServer:
    directory: Path
    bin_dir: Path
    run_as: list[str]

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@/{database}?host={quote(str(self.socket_dir), safe='')}"

    @classmethod
    def start(cls, settings: tuple[str, ...] = FAST_SETTINGS) -> PgServer:
        bin_dir = find_bin_dir() or _install()
        directory = Path(tempfile.mkdtemp(prefix="tailnetd-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        server = cls(directory, bin_dir, run_as)
        try:
            server._run("mkdir", str(server.socket_dir))
            server._run(
                str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", _SUPERUSER,
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            options = " ".join(
                ["-c listen_addresses=''", f"-c unix_socket_directories={server.socket_dir}"]
                + [f"-c {s}" for s in settings]
            )
            server._run(
                str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-o", options,
                "-l", str(directory / "server.log"), "-w", "-t", "60", "start",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        result = subprocess.run([*self.run_as, *argv], capture_output=True, text=True)
        if result.returncode != 0:
            raise PgUnavailable(f"{' '.join(argv)} failed: {result.stderr.strip()}")


if __name__ == "__main__":
    import signal
    import sys

    # Ctrl-C or a plain kill stops the server and removes its directory (a
    # shell's background job ignores SIGINT, so SIGTERM counts too).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    pg = PgServer.start(() if "--durable" in sys.argv[1:] else FAST_SETTINGS)
    print(pg.url(), flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        pg.stop()
