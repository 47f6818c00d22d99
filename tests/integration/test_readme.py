"""Every command in README.md's shell blocks, run as written, in order: the
server from `make serve`, a real tailscaled joined by `tailnetd dev-client`, the
admin and CI commands. Against a temp data dir and a free loopback port (given
as TAILNETD_DATA and TAILNETD_LISTEN, which `serve`, the admin commands and
`dev-client` read), with .venv/bin first on the PATH. Only the commands in
`SKIPPED` are not run, each with its reason."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e

SKIPPED = {
    "make test": "runs the whole suite, this test included",
    "gitctl diff origin/main HEAD": "needs the remote `origin` of a real clone",
}
# What a command's output must show, beyond its exit code 0.
EXPECTED = {".venv/bin/tailnetd nodes list": "laptop"}
# Exit codes other than 0 that the README's own example earns, and why.
EXIT = {"gitctl lint --format github": (1, "the example lets group:ops ssh in as root")}
BACKGROUND = "make serve"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_skip_list_is_small_and_names_commands_the_readme_has() -> None:
    commands = readme_commands()
    assert len(SKIPPED) <= 3 and len(EXIT) <= 2
    for skipped in SKIPPED:
        assert any(c.startswith(skipped) for c in commands), skipped
    assert BACKGROUND in commands and ".venv/bin/tailnetd dev-client laptop --stop" in commands


def test_every_readme_command_works_as_written(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILNETD_")}
    env.update(
        PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        TAILNETD_DATA=str(tmp_path / "data"),
        TAILNETD_LISTEN=f"127.0.0.1:{port}",
        TAILNETD_STUN_LISTEN="off",
    )
    server = None
    try:
        for command in readme_commands():
            if any(command.startswith(s) for s in SKIPPED):
                continue
            if command == BACKGROUND:
                log = open(tmp_path / "serve.log", "wb")
                server = subprocess.Popen(
                    command, shell=True, cwd=ROOT, env=env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                log.close()
                wait_for(lambda: _healthy(port), 60, f"`{command}` to answer /health")
                continue
            done = subprocess.run(
                command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            want = EXIT.get(command, (0, ""))[0]
            assert done.returncode == want, f"`{command}` exited {done.returncode}:\n{done.stderr}"
            if command in EXPECTED:
                assert EXPECTED[command] in done.stdout, (command, done.stdout)
    finally:
        subprocess.run(
            [".venv/bin/tailnetd", "dev-client", "laptop", "--stop"],
            cwd=ROOT, env=env, capture_output=True, timeout=30,
        )  # fmt: skip
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(15)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
