"""Every captured Tailscale scenario, compiled by our policy engine and compared.

Cases live outside the repo (``../shared/conformance/cases``) and are read at
test time. Known gaps are listed, with the semantic reason, in
``known_failures.txt``; they run as strict xfails so a newly passing case is
noticed and its line removed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ._compare import CASES_DIR, case_paths, diff_case, load_case
from .conftest import RESULTS

KNOWN_FAILURES_FILE = Path(__file__).with_name("known_failures.txt")


def _known_failures() -> dict[str, str]:
    out = {}
    for line in KNOWN_FAILURES_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, reason = line.partition(" ")
        out[path] = reason.strip() or "known gap"
    return out


def _params() -> list[object]:
    known = _known_failures()
    return [
        pytest.param(
            rel,
            id=rel,
            marks=[pytest.mark.xfail(strict=True, reason=known[rel])] if rel in known else [],
        )
        for rel in case_paths()
    ]


@pytest.mark.skipif(not CASES_DIR.is_dir(), reason=f"conformance corpus not found at {CASES_DIR}")
@pytest.mark.parametrize("rel", _params() or [pytest.param("", marks=pytest.mark.skip)])
def test_case(rel: str) -> None:
    diffs = diff_case(load_case(rel))
    RESULTS[rel] = not diffs
    assert not diffs, "\n".join(diffs[:10])
