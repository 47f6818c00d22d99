"""A restart skips the schema check only for the commit that passed the same schemas
(server/sources/passed.py): a different commit, or changed schemas, are checked again."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

from gitctl import snapshot as snapshots
from gitctl.tailnet import schema
from server.sources.passed import SCHEMA_PASSED_FILE, SchemaPassed
from server.sources.repo import SnapshotRepo
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS

BAD_USERS = USERS + "  - {name: bob, emial: bob@example.com}\n"  # "emial": not in the schema


@pytest.fixture
def repo(tmp_path: Path) -> TailnetRepo:
    return TailnetRepo(tmp_path / "repo", {"users.yaml": USERS})


def _checked_against_schema(tmp_path: Path, repo: TailnetRepo, revision: str) -> str | None:
    """The failing stage of a start-up check of `revision`, as the lifecycle does it."""
    record = SchemaPassed(tmp_path)
    snapshots._checked_file.cache_clear()  # the check itself, not an earlier result
    checked = SnapshotRepo(repo.path).check(revision, schemas_passed=record.passed(revision))
    return checked.reason


def test_a_served_commit_is_remembered_with_the_schema_version(
    tmp_path: Path, repo: TailnetRepo
) -> None:
    record = SchemaPassed(tmp_path)
    assert not record.passed(repo.head())
    record.record(repo.head())
    assert record.passed(repo.head())
    assert (tmp_path / SCHEMA_PASSED_FILE).read_text().split() == [
        repo.head(),
        schema.schema_version(),
    ]
    assert not record.passed(None)  # a plain directory is always checked


def test_a_different_commit_is_checked_against_the_schemas(
    tmp_path: Path, repo: TailnetRepo
) -> None:
    SchemaPassed(tmp_path).record(repo.head())
    bad = repo.commit({"users.yaml": BAD_USERS}, "a key the schema does not know")
    assert _checked_against_schema(tmp_path, repo, bad) == "schema"


def test_changed_schemas_check_the_remembered_commit_again(
    tmp_path: Path, repo: TailnetRepo
) -> None:
    bad = repo.commit({"users.yaml": BAD_USERS}, "a key the schema does not know")
    # As if the commit had passed an older schema that allowed the key.
    (tmp_path / SCHEMA_PASSED_FILE).write_text(f"{bad} sha256:{'0' * 64}\n")
    assert not SchemaPassed(tmp_path).passed(bad)
    assert _checked_against_schema(tmp_path, repo, bad) == "schema"


def test_the_remembered_commit_under_the_same_schemas_is_served(
    tmp_path: Path, repo: TailnetRepo
) -> None:
    SchemaPassed(tmp_path).record(repo.head())
    assert _checked_against_schema(tmp_path, repo, repo.head()) is None


def test_the_schema_version_covers_every_schema_and_the_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = schema.schema_version.__wrapped__()
    assert now == schema.schema_version()
    package = resources.files("gitctl")
    copy = tmp_path / "gitctl"
    shutil.copytree(Path(str(package.joinpath("schemas"))), copy / "schemas")
    shutil.copytree(Path(str(package.joinpath("tailnet"))), copy / "tailnet")
    monkeypatch.setattr(schema.resources, "files", lambda _name: copy)
    assert schema.schema_version.__wrapped__() == now
    for changed in ("schemas/routes.schema.json", "tailnet/schema.py"):
        path = copy / changed
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert schema.schema_version.__wrapped__() != now, changed
        path.write_bytes(original)
