"""Which server an admin command talks to, from flags and environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.admin_client import AdminError, HttpTarget, SocketTarget, Target, call
from server.cli import _target, build_parser


def target(argv: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> Target:
    for name in ("TAILNETD_SERVER", "TAILNETD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return _target(build_parser().parse_args(argv))


def test_the_data_dir_socket_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert target(["nodes", "list"], monkeypatch) == SocketTarget(tmp_path / "data/tailnetd.sock")


@pytest.mark.parametrize(
    "argv",
    [
        ["nodes", "--server", "https://h", "--api-key", "k", "list"],
        ["nodes", "list", "--server", "https://h", "--api-key", "k"],
        ["nodes", "--server", "https://h", "list", "--api-key", "k"],
    ],
)
def test_flags_count_before_or_after_the_verb(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target(argv, monkeypatch) == HttpTarget("https://h", "k")


def test_flags_beat_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"TAILNETD_SERVER": "https://env", "TAILNETD_API_KEY": "envkey"}
    assert target(["status"], monkeypatch, **env) == HttpTarget("https://env", "envkey")
    flag = target(["status", "--server", "https://flag"], monkeypatch, **env)
    assert flag == HttpTarget("https://flag", "envkey")
    local = target(["status", "--data", str(tmp_path)], monkeypatch, **env)
    assert local == SocketTarget(tmp_path / "tailnetd.sock")


def test_an_api_key_without_a_server_is_a_mistake(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AdminError, match="add --server URL"):
        target(["nodes", "list", "--api-key", "k"], monkeypatch)


def test_plain_http_to_another_host_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target(["status", "--server", "http://127.0.0.1:8080"], monkeypatch)
    target(["status", "--server", "http://localhost:8080"], monkeypatch)
    assert capsys.readouterr().err == ""
    target(["status", "--server", "http://admin.example.com"], monkeypatch)
    assert "unencrypted" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["ftp://h", "127.0.0.1:8080", "http://", "http://h:port"])
def test_bad_server_urls_are_named(url: str) -> None:
    with pytest.raises(AdminError, match="--server"):
        call(HttpTarget(url, "k"), "GET", "/api/v1/nodes")
