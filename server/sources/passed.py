"""Which commit last passed the JSON schemas, so a restart need not check it again.

A commit the server served passed every stage of `gitctl.snapshot.load_snapshot`. A
commit is content (its sha names its tree), so on a restart the only thing that can make
the same commit fail the schema stage is a change of the schemas or of the rules that apply
them: `schema_version()` hashes both. The record is one line in the data dir,
`<commit sha> <schema version>`; a different commit, another schema version, or no record
means the schemas are checked (and jsonschema loaded) as always. Every other stage — parse,
merge, the model, the policy, its tests, the signature — runs on every start.
"""

from __future__ import annotations

from pathlib import Path

from gitctl.tailnet import schema_version
from server.datadir import write_private

__all__ = ["SCHEMA_PASSED_FILE", "SchemaPassed"]

SCHEMA_PASSED_FILE = "schema_passed"


class SchemaPassed:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SCHEMA_PASSED_FILE

    def _line(self, revision: str) -> str:
        return f"{revision} {schema_version()}\n"

    def passed(self, revision: str | None) -> bool:
        """Whether this commit passed the schemas this server checks against now."""
        if revision is None:
            return False  # a plain directory: its content has no name to remember
        try:
            return self.path.read_text() == self._line(revision)
        except OSError:
            return False

    def record(self, revision: str) -> None:
        """`revision` passed every stage, the schemas of this version included."""
        line = self._line(revision)
        if not self.passed(revision):
            write_private(self.path, line.encode())
