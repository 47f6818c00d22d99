"""tests.tailscale_bin: a client version that cannot be built says why, and
leaves nothing half-installed. No network: Go's module proxy is turned off."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import tailscale_bin
from tests.tailscale_bin import BuildError, install


def test_a_missing_go_toolchain_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` here
    with pytest.raises(BuildError, match="needs Go: no `go` on PATH"):
        install(tmp_path / "out", version="1.80.3")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go")
def test_a_failed_build_fails_with_gos_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOPROXY", "off")
    target = tmp_path / "cache" / "tailscale-1.0.0"
    with pytest.raises(BuildError) as err:
        install(target, version="1.0.0")  # no such version in any module cache
    assert "go install of tailscale 1.0.0 failed" in str(err.value)
    assert "GOPROXY=off" in str(err.value)
    assert os.listdir(tmp_path / "cache") == []  # the scratch dir is gone, no target


def test_the_cli_exits_non_zero_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tailscale_bin.main(["--version", "1.80.3"]) == 1
    assert "tailscale 1.80.3: tailscale 1.80.3 is built from source" in capsys.readouterr().err
