"""Read the tailnet.d files of a directory on disk or of a git revision.

Both sources produce the same `Documents`: file bytes keyed by the path people see in
messages (repository-relative for git, so CI annotations land on the right file), in
file-name order, which is also the merge order.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gitctl.gitrun import GitError, NotARepository, read_blobs, resolve, tree
from gitctl.tailnet.files import EXTENSIONS

__all__ = ["DEFAULT_DIR", "Documents", "SourceError", "read_directory", "read_git"]

DEFAULT_DIR = "tailnet.d"
MAX_FILE_BYTES = 4 << 20  # a policy is kilobytes; a 4 MiB file is a mistake or an attack
MAX_FILES = 1000
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories


class SourceError(Exception):
    """The tailnet.d directory could not be read at all."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(f"{where}: {message}")
        self.message = message
        self.where = where


@dataclass(frozen=True, slots=True)
class Documents:
    root: str  # the tailnet.d directory as shown to people
    files: Mapping[str, bytes]  # shown path -> content, in file-name order
    revision: str | None  # the commit sha; None for a plain directory


def _wanted(name: str) -> bool:
    return not name.startswith(".") and name.endswith(EXTENSIONS)


def _check_bounds(shown: str, size: int, count: int) -> None:
    if size > MAX_FILE_BYTES:
        raise SourceError(f"file is larger than {MAX_FILE_BYTES >> 20} MiB", shown)
    if count > MAX_FILES:
        raise SourceError(f"more than {MAX_FILES} files", shown)


def read_directory(path: str | os.PathLike[str]) -> Documents:
    """Every tailnet.d file under `path` (recursively; hidden names are skipped)."""
    root = Path(path)
    shown_root = os.fspath(path).rstrip("/") or "/"
    if not root.is_dir():
        raise SourceError("no such directory", shown_root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if _wanted(name):
                full = Path(dirpath, name)
                found.append((full.relative_to(root).as_posix(), full))
    files: dict[str, bytes] = {}
    for rel, full in sorted(found):
        shown = posixpath.join(shown_root, rel)
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise SourceError(
                "symbolic links are not read (git would not serve their target either)", shown
            )
        _check_bounds(shown, st.st_size, len(files) + 1)
        files[shown] = full.read_bytes()
    return Documents(shown_root, files, None)


def read_git(
    repo_path: str | os.PathLike[str], rev: str = "HEAD", subdir: str = DEFAULT_DIR
) -> Documents:
    """The tailnet.d files of commit `rev` in the repository at `repo_path`
    (a work tree or a bare repository), read with the git command."""
    where = os.fspath(repo_path)
    try:
        if not Path(repo_path).is_dir():
            raise NotARepository(where)
        # A full commit id (the server's HEAD, just resolved) needs no rev-parse of its
        # own: ls-tree of `<id>^{commit}` checks that it names a commit.
        commit = rev if _COMMIT_ID.fullmatch(rev) else resolve(repo_path, rev)
        if commit is None:
            raise SourceError(f'unknown revision "{rev}"', where)
        try:
            entries = tree(repo_path, f"{commit}^{{commit}}", subdir)
        except NotARepository:
            raise
        except GitError:
            if commit is rev and resolve(repo_path, rev) is None:
                raise SourceError(f'unknown revision "{rev}"', where) from None
            raise
        if not entries:
            raise SourceError(f"no {subdir}/ directory at {commit[:12]}", where)
        if any(e.path == subdir for e in entries):
            raise SourceError(f"{subdir} is not a directory at {commit[:12]}", where)
        wanted = sorted(
            (e for e in entries if e.kind == "blob" and _wanted_in(e.path, subdir)),
            key=lambda e: e.path,
        )
        for count, entry in enumerate(wanted, 1):
            if entry.mode == 0o120000:
                raise SourceError("symbolic links are not read", entry.path)
            _check_bounds(entry.path, entry.size, count)
        contents = read_blobs(repo_path, (e.sha for e in wanted))
    except NotARepository:
        raise SourceError("not a git repository", where) from None
    except GitError as exc:
        raise SourceError(str(exc), where) from None
    files = {e.path: data for e, data in zip(wanted, contents, strict=True)}
    return Documents(subdir, files, commit)


def _wanted_in(path: str, subdir: str) -> bool:
    inside = path[len(subdir) + 1 :].split("/")
    return _wanted(inside[-1]) and not any(p.startswith(".") for p in inside)
