"""gitctl.hujson_format against github.com/tailscale/hujson's own test vectors
(tests/unit/data/hujson_go_vectors.json: format_test.go `testdataFormat` and
json_test.go `testdata` of the version tailscale 1.96.4 pins, whose source the
file names) and against outputs of Go's `hujson.Format` for inputs written here."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gitctl.hujson import HuJSONError
from gitctl.hujson_format import hujson_format, hujson_standardize

DATA = Path(__file__).parent / "data"
VECTORS: dict[str, Any] = json.loads((DATA / "hujson_go_vectors.json").read_text())


def _bytes(text: str | dict[str, str]) -> bytes:
    return base64.b64decode(text["base64"]) if isinstance(text, dict) else text.encode()


@pytest.mark.parametrize("case", VECTORS["format"], ids=range(len(VECTORS["format"])))
def test_format_matches_go(case: dict[str, Any]) -> None:
    got = hujson_format(_bytes(case["in"]))
    assert got.decode() == case["want"]
    assert hujson_format(got) == got  # Format is idempotent


@pytest.mark.parametrize("case", VECTORS["standardize"], ids=range(len(VECTORS["standardize"])))
def test_standardize_matches_go(case: dict[str, Any]) -> None:
    if case["error"]:
        with pytest.raises(HuJSONError):
            hujson_standardize(_bytes(case["in"]))
        return
    got = hujson_standardize(_bytes(case["in"])).decode()
    # Go's vectors leave wantStd empty when the input is already standard.
    assert got == (case["want"] if case["want"] is not None else case["in"])


def test_a_syntax_error_names_its_line_and_column() -> None:
    with pytest.raises(HuJSONError) as err:
        hujson_format(b'{\n\t"acls": [\n\t\t{"action": "accept" "src": ["*"]},\n\t],\n}\n')
    assert (err.value.line, err.value.col) == (3, 23)


def test_a_line_comment_at_the_end_of_the_file_needs_its_newline() -> None:
    # As in Go: `//` runs to a newline, and without one the comment is unterminated.
    with pytest.raises(HuJSONError):
        hujson_format(b"null //x")
    assert hujson_format(b"null //x\n") == b"null //x\n"
