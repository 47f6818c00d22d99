"""kill -9 during registrations loses and duplicates nothing (a short run of
`bench/crash_load.py`; the full run kills the server 100 times)."""

from __future__ import annotations

import asyncio

import pytest

from bench.crash_load import run


def test_three_kill_9s_during_registrations_lose_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert asyncio.run(run(kills=3, clients=4, database=None, replicas=1, seed=7)) == 0
    out = capsys.readouterr().out
    assert "nothing lost or duplicated" in out
    assert "lost_identities         0" in out
