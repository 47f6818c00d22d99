"""`tailnetd dev-client NAME`: a real tailscale client joined to the local server
in one command, for a first run and for trying a policy by hand.

It starts `tailscaled` in userspace-networking mode (no root, no TUN device)
with its own state dir, socket and logs under `DATA/dev-clients/NAME/`, creates
a single-use pre-auth key for `--user` through the admin socket, and runs
`tailscale up` against the server. A plain-HTTP server on loopback serves its
embedded DERP over HTTP, which a client uses only with TS_DEBUG_USE_DERP_HTTP=1:
it is set for such a server. `--stop` ends the client again.

The binaries are `--bin DIR`, else $TAILNETD_TAILSCALE_BIN, else what
`python -m tests.tailscale_bin` installed under `.cache/`, else `tailscaled` on
the PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["DevClient", "DevClientError", "find_binaries"]

START_TIMEOUT = 20.0  # seconds for tailscaled's socket to appear
UP_TIMEOUT = 90.0  # seconds for `tailscale up`


class DevClientError(Exception):
    """The client could not be started; the message says what to do."""


def find_binaries(given: str | None, cwd: Path) -> Path:
    """The directory holding `tailscale` and `tailscaled`."""
    candidates: list[Path] = []
    if given:
        candidates.append(Path(given))
    elif os.environ.get("TAILNETD_TAILSCALE_BIN"):
        candidates.append(Path(os.environ["TAILNETD_TAILSCALE_BIN"]))
    else:
        candidates += sorted((cwd / ".cache").glob("tailscale-*"), reverse=True)
        on_path = shutil.which("tailscaled")
        if on_path:
            candidates.append(Path(on_path).parent)
    for d in candidates:
        if (d / "tailscaled").is_file() and (d / "tailscale").is_file():
            return d
    raise DevClientError(
        "no tailscale client found: run `.venv/bin/python -m tests.tailscale_bin` (it puts"
        " tailscale 1.96.4 under .cache/), or give --bin DIR holding tailscale and tailscaled"
    )


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class DevClient:
    name: str
    home: Path  # DATA/dev-clients/NAME
    bin: Path
    server_url: str

    @property
    def socket(self) -> Path:
        return self.home / "tailscaled.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "tailscaled.pid"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TS_LOGS_DIR=str(self.home / "logs"), TS_NO_LOGS_NO_SUPPORT="1")
        if _loopback_http(self.server_url):
            env["TS_DEBUG_USE_DERP_HTTP"] = "1"
        return env

    def cli(self) -> list[str]:
        """`tailscale` talking to this client: append a command."""
        return [str(self.bin / "tailscale"), f"--socket={self.socket}"]

    def start(self, auth_key: Callable[[], str]) -> str:
        """Start tailscaled (unless it runs) and log in; its `tailscale ip -4`."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.running():
            log = open(self.home / "tailscaled.log", "ab")
            proc = subprocess.Popen(
                [
                    str(self.bin / "tailscaled"),
                    "--tun=userspace-networking",
                    f"--statedir={self.home / 'state'}",
                    f"--socket={self.socket}",
                    "--port=0",
                    "--no-logs-no-support",
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this command, as a daemon does
            )
            log.close()
            self.pidfile.write_text(f"{proc.pid}\n")
            deadline = time.monotonic() + START_TIMEOUT
            while not self.socket.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise DevClientError(
                        f"tailscaled did not start; see {self.home / 'tailscaled.log'}"
                    )
                time.sleep(0.1)
        up = [
            *self.cli(), "up", f"--login-server={self.server_url}",
            f"--auth-key={auth_key()}", f"--hostname={self.name}",
        ]  # fmt: skip
        done = subprocess.run(
            up, env=self.env(), capture_output=True, text=True, timeout=UP_TIMEOUT
        )
        if done.returncode != 0:
            raise DevClientError(f"tailscale up failed: {done.stderr.strip() or done.stdout}")
        ip = subprocess.run(
            [*self.cli(), "ip", "-4"], env=self.env(), capture_output=True, text=True, timeout=10
        )
        return ip.stdout.strip()

    def running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return self.socket.exists()

    def stop(self) -> bool:
        """End the client's tailscaled; False if it was not running."""
        pid = self._pid()
        if pid is None or not self.running():
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        return True

    def _pid(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None
