"""The data dir, in process: one server at a time holds it, and what it keeps
there (keys, sqlite, the last good revision) only its owner can read."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from server.app import Server
from server.config import ServerConfig
from server.startup import StartupError, state
from server.store import SqlStore, open_node_store
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, FakeClock, async_test, loopback_config

PRIVATE_FILES = (
    "noise_private.key",
    "derp_private.key",
    "tailnetd.sqlite",
    "tailnetd.sqlite-wal",
    "tailnetd.sqlite-shm",
    "last_good_revision",
)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[ServerConfig]:
    repo = TailnetRepo(tmp_path / "repo", {"users.yaml": USERS})
    # The admin unix socket lives in the data dir; AF_UNIX paths are short.
    with tempfile.TemporaryDirectory(prefix="tnd-") as data:
        yield loopback_config(repo.path, Path(data) / "data")


def server(config: ServerConfig) -> Server:
    return Server(config, log=logging.getLogger("tailnetd.test"), clock=FakeClock())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@async_test
async def test_a_second_server_on_the_same_data_dir_refuses_and_leaves_the_first_alone(
    config: ServerConfig,
) -> None:
    first = server(config)
    await first.start()
    try:
        socket_inode = config.socket_path.stat().st_ino
        with pytest.raises(StartupError) as refused:
            await server(config).start()
        assert str(refused.value) == (
            f"another server is running on data dir {config.data_dir} (pid {os.getpid()})"
        )
        # The first server keeps its admin socket, and it still answers.
        assert config.socket_path.stat().st_ino == socket_inode
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(config.socket_path))
    finally:
        await first.stop()
    assert not config.socket_path.exists()  # removed on exit
    again = server(config)
    await again.start()  # the lock went with the first server
    await again.stop()


@async_test
async def test_a_start_that_fails_gives_the_data_dir_back(config: ServerConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = replace(config, listen_port=port)
        with pytest.raises(StartupError, match=f"127.0.0.1:{port}: address already in use"):
            await server(busy).start()
    working = server(config)
    await working.start()
    await working.stop()


@async_test
async def test_a_start_that_fails_preparing_the_store_closes_it(
    config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is opened and prepared inside open_state, before the Server
    # holds it: the Server's stop() cannot be the one to close it.
    opened: list[SqlStore] = []

    def open_and_keep(where: str | Path, description: str) -> SqlStore:
        opened.append(open_node_store(where, description))
        return opened[-1]

    def refuse(*args: object) -> None:
        raise OSError("keys.yaml's secret cannot be read")

    monkeypatch.setattr(state, "open_node_store", open_and_keep)
    monkeypatch.setattr(state, "prepare_store", refuse)
    failing = server(config)
    with pytest.raises(OSError, match="secret"):
        await failing.start()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].list_nodes()
    monkeypatch.undo()
    working = server(config)  # the data dir was given back too
    await working.start()
    await working.stop()


@async_test
async def test_the_data_dir_and_its_files_are_private(config: ServerConfig) -> None:
    running = server(config)
    await running.start()
    try:
        assert mode(config.data_dir) == 0o700
        modes = {name: mode(config.data_dir / name) for name in PRIVATE_FILES}
        assert modes == dict.fromkeys(PRIVATE_FILES, 0o600)
    finally:
        await running.stop()


@async_test
async def test_files_left_open_by_an_older_version_are_tightened(
    config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config.data_dir.mkdir(mode=0o755)
    config.data_dir.chmod(0o755)  # whatever the umask
    for name in ("tailnetd.sqlite", "last_good_revision"):
        (config.data_dir / name).touch()
        (config.data_dir / name).chmod(0o644)
    running = server(config)
    with caplog.at_level(logging.WARNING, logger="tailnetd.test"):
        await running.start()
    try:
        assert mode(config.data_dir) == 0o700
        assert mode(config.data_dir / "tailnetd.sqlite") == 0o600
        assert mode(config.data_dir / "last_good_revision") == 0o600
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning == (
            f"data dir {config.data_dir} was open to other users (mode 0755): now 0700"
        )
    finally:
        await running.stop()


@async_test
async def test_servers_given_one_control_key_file_share_their_control_key(
    config: ServerConfig, tmp_path: Path
) -> None:
    """Replicas behind one URL: a client that fetched /key from one must
    complete its Noise handshake with another."""
    shared = replace(config, control_key_file=tmp_path / "control.key")
    first = server(shared)
    await first.start()
    await first.stop()
    with tempfile.TemporaryDirectory(prefix="tnd-") as other_data:
        second = server(replace(shared, data_dir=Path(other_data) / "data"))
        await second.start()
        await second.stop()
    assert first.server_key.public() == second.server_key.public()
    assert mode(tmp_path / "control.key") == 0o600
    assert not (config.data_dir / "noise_private.key").exists()
