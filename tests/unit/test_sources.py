"""Reading tailnet.d from a directory on disk and from git revisions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import git
import pytest

from gitctl import sources
from gitctl.sources import SourceError, read_directory, read_git


def commit_files(repo_dir: Path, files: dict[str, str | None], message: str) -> str:
    """Write (or with None, delete) files in a real git repository and commit; returns the sha.

    Shared by the snapshot and CLI tests, which need real repositories too.
    """
    repo = git.Repo.init(repo_dir) if not (repo_dir / ".git").exists() else git.Repo(repo_dir)
    # Closed here: a commit with a parent starts `git cat-file` helpers, which would
    # otherwise outlive the test and fail a later one with a ResourceWarning.
    with repo:
        with repo.config_writer() as cfg:
            cfg.set_value("user", "name", "Test")
            cfg.set_value("user", "email", "test@example.com")
        for name, text in files.items():
            path = repo_dir / name
            if text is None:
                repo.index.remove([name], working_tree=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            repo.index.add([name])
        return str(repo.index.commit(message).hexsha)


def test_directory_files_come_in_file_name_order_and_skip_other_files(tmp_path: Path) -> None:
    d = tmp_path / "tailnet.d"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    for name in (
        "b.yaml",
        "a.hujson",
        "sub/c.yml",
        "z.json",
        "README.md",
        ".x.yaml",
        ".hidden/h.yaml",
    ):
        (d / name).write_text("{}\n")
    docs = read_directory(d)
    root = str(d)
    assert list(docs.files) == [
        f"{root}/a.hujson",
        f"{root}/b.yaml",
        f"{root}/sub/c.yml",
        f"{root}/z.json",
    ]
    assert docs.revision is None
    assert docs.files[f"{root}/b.yaml"] == b"{}\n"


def test_shown_paths_keep_the_directory_as_the_user_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tailnet.d").mkdir()
    (tmp_path / "tailnet.d" / "users.yaml").write_text("users: []\n")
    monkeypatch.chdir(tmp_path)
    assert list(read_directory("tailnet.d/").files) == ["tailnet.d/users.yaml"]


def test_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_directory(tmp_path / "nope")
    assert info.value.message == "no such directory"


def test_oversized_files_are_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 10)
    (tmp_path / "big.yaml").write_text("a: " + "x" * 20)
    with pytest.raises(SourceError, match="larger than"):
        read_directory(tmp_path)


def test_symlinks_inside_the_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("users: []\n")
    d = tmp_path / "tailnet.d"
    d.mkdir()
    os.symlink(tmp_path / "real.txt", d / "users.yaml")
    with pytest.raises(SourceError, match="symbolic links"):
        read_directory(d)


def test_git_revisions_each_read_their_own_files(tmp_path: Path) -> None:
    first = commit_files(
        tmp_path, {"tailnet.d/users.yaml": "users: []\n", "README.md": "not read\n"}, "one"
    )
    second = commit_files(
        tmp_path, {"tailnet.d/users.yaml": None, "tailnet.d/dns.yaml": "magic_dns: false\n"}, "two"
    )
    old = read_git(tmp_path, first)
    new = read_git(tmp_path, "HEAD")
    assert old.revision == first and new.revision == second
    assert old.files == {"tailnet.d/users.yaml": b"users: []\n"}
    assert new.files == {"tailnet.d/dns.yaml": b"magic_dns: false\n"}
    # The working tree does not matter: only the commit does.
    (tmp_path / "tailnet.d" / "dns.yaml").write_text("broken: [\n")
    assert read_git(tmp_path).files == new.files


@pytest.mark.parametrize(
    ("rev", "message"),
    [("nosuchbranch", 'unknown revision "nosuchbranch"'), ("HEAD", "no tailnet.d/ directory")],
)
def test_git_errors_are_sentences(tmp_path: Path, rev: str, message: str) -> None:
    commit_files(tmp_path, {"other/file.txt": "x"}, "no tailnet here")
    with pytest.raises(SourceError) as info:
        read_git(tmp_path, rev)
    assert info.value.message.startswith(message)


def test_a_full_commit_id_is_read_without_resolving_it_and_checked_all_the_same(
    tmp_path: Path,
) -> None:
    sha = commit_files(tmp_path, {"tailnet.d/users.yaml": "users: []\n"}, "one")
    assert read_git(tmp_path, sha).revision == sha
    assert read_git(tmp_path, sha).files == {"tailnet.d/users.yaml": b"users: []\n"}
    tree_id = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD^{tree}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for rev in ("0" * 40, tree_id):  # no such object; an object that is not a commit
        with pytest.raises(SourceError) as info:
            read_git(tmp_path, rev)
        assert info.value.message == f'unknown revision "{rev}"'


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a git repository"):
        read_git(tmp_path)
