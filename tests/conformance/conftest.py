"""Conformance summary line: how much of the captured Tailscale behaviour we reproduce."""

from __future__ import annotations

from typing import Any

RESULTS: dict[str, bool] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    passed = sum(RESULTS.values())
    total = len(RESULTS)
    terminalreporter.write_line(f"conformance: {passed} passed, {total - passed} failed of {total}")
