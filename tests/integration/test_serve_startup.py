"""`tailnetd serve` refusing to start, as an operator sees it: one line on
stderr naming what is wrong, a non-zero exit, no traceback; and a second
server on a data dir that one already holds is refused, not let take over."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, TailnetRepo
from tests.integration.test_admin_cli import POLICY, USERS, tailnetd


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TailnetRepo:
    path = tmp_path_factory.mktemp("startup") / "repo"
    return TailnetRepo(path, {"users.yaml": USERS, "policy.hujson": POLICY})


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # The admin unix socket lives in the data dir; AF_UNIX paths are short.
    with tempfile.TemporaryDirectory(prefix="tnd-") as tmp:
        yield Path(tmp)


def serve(*args: str, listen: str = "127.0.0.1:0") -> subprocess.CompletedProcess[str]:
    """`tailnetd serve` expected to give up at once."""
    return tailnetd("serve", *(["--listen", listen] if "--listen" not in args else []), *args)


def refused(out: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start printed."""
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tailnetd: "), out.stderr
    return lines[0]


def test_a_second_server_on_a_held_data_dir_is_refused(repo: TailnetRepo, short_tmp: Path) -> None:
    first = ServerProcess(repo.path, short_tmp / "data", short_tmp / "first.log")
    first.start()
    try:
        assert first.proc is not None
        pid = first.proc.pid
        line = refused(serve("--repo", str(repo.path), "--data", str(first.data)))
        assert line == f"tailnetd: another server is running on data dir {first.data} (pid {pid})"
        # The first server still owns its admin socket.
        assert '"serving"' in first.admin("status", "--json")
        first.stop()
        assert not (first.data / "tailnetd.sock").exists()
    finally:
        first.stop()


def test_a_killed_server_leaves_no_stale_lock(repo: TailnetRepo, short_tmp: Path) -> None:
    data = short_tmp / "data"
    crashed = ServerProcess(repo.path, data, short_tmp / "crashed.log")
    crashed.start()
    assert crashed.proc is not None
    crashed.proc.send_signal(signal.SIGKILL)
    crashed.proc.wait()
    after = ServerProcess(repo.path, data, short_tmp / "after.log")
    after.start()
    try:
        assert '"serving"' in after.admin("status", "--json")
    finally:
        after.stop()


def holding(kind: int) -> tuple[socket.socket, int]:
    """A loopback port of this kind that something else already has."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock, int(sock.getsockname()[1])


def test_a_control_port_in_use(repo: TailnetRepo, short_tmp: Path) -> None:
    sock, port = holding(socket.SOCK_STREAM)
    with sock:
        out = serve("--repo", str(repo.path), "--data", str(short_tmp / "d"),
                    "--stun-listen", "off", "--listen", f"127.0.0.1:{port}")  # fmt: skip
    line = refused(out)
    assert f"127.0.0.1:{port}" in line and "address already in use" in line


def test_a_stun_port_in_use(repo: TailnetRepo, short_tmp: Path) -> None:
    sock, port = holding(socket.SOCK_DGRAM)
    with sock:
        out = serve("--repo", str(repo.path), "--data", str(short_tmp / "d"),
                    "--stun-listen", f"127.0.0.1:{port}")  # fmt: skip
    line = refused(out)
    assert "STUN" in line and f"127.0.0.1:{port}" in line and "address already in use" in line


@pytest.mark.parametrize(
    ("make_repo", "expected"),
    [
        (lambda tmp: tmp / "missing", "no such directory"),
        (lambda tmp: _file(tmp / "a-file"), "not a directory"),
        (lambda tmp: _broken_git(tmp / "broken"), "its .git is not a readable git repository"),
    ],
    ids=["missing", "a-file", "broken-git"],
)
def test_an_unreadable_repository(
    short_tmp: Path, make_repo: Callable[[Path], Path], expected: str
) -> None:
    path = make_repo(short_tmp)
    line = refused(
        serve("--repo", str(path), "--data", str(short_tmp / "d"), "--stun-listen", "off")
    )
    assert line == f"tailnetd: cannot read the repository {path}: {expected}"


@pytest.mark.parametrize(
    ("make_data", "expected"),
    [
        (lambda tmp: _file(tmp / "a-file"), "data dir {} exists and is not a directory"),
        (lambda tmp: _file(tmp / "a-file") / "data", "cannot create data dir {}: not a directory"),
    ],
    ids=["a-file", "under-a-file"],
)
def test_an_unusable_data_dir(
    repo: TailnetRepo, short_tmp: Path, make_data: Callable[[Path], Path], expected: str
) -> None:
    data = make_data(short_tmp)
    line = refused(serve("--repo", str(repo.path), "--data", str(data), "--stun-listen", "off"))
    assert line == "tailnetd: " + expected.format(data)


def test_a_damaged_key_file(repo: TailnetRepo, short_tmp: Path) -> None:
    data = short_tmp / "data"
    data.mkdir(mode=0o700)
    (data / "noise_private.key").write_text("not a key\n")
    line = refused(serve("--repo", str(repo.path), "--data", str(data), "--stun-listen", "off"))
    assert str(data / "noise_private.key") in line


def _file(path: Path) -> Path:
    path.write_text("")
    return path


def _broken_git(path: Path) -> Path:
    (path / ".git").mkdir(parents=True)
    (path / ".git" / "HEAD").write_text("garbage\n")
    return path
