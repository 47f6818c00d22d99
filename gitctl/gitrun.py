"""Asking the `git` command about a repository: what the server needs at start-up
(resolve a revision, list and read a commit's files) without importing gitpython
(~70 ms of CPU), three short processes instead of its helpers.

`repo` is a work tree (its `.git` is used) or a bare repository; git never looks
for a repository above it, so a broken `.git` is an error, not its parent's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GitError", "NotARepository", "TreeEntry", "read_blobs", "resolve", "run_git", "tree"]

GIT_TIMEOUT = 30.0  # seconds: a local git command that takes longer is stuck


class GitError(Exception):
    """git failed; the message is its first line of complaint."""


class NotARepository(GitError):
    pass


def _on(repo: str | os.PathLike[str], args: Sequence[str], stdin: bytes | None = None) -> Any:
    """git on exactly this repository (never one above it)."""
    dot_git = Path(repo, ".git")
    git_dir = (dot_git if dot_git.exists() else Path(repo)).absolute()
    return run_git(repo, f"--git-dir={git_dir}", "--literal-pathspecs", *args, stdin=stdin)


def _failure(done: subprocess.CompletedProcess[bytes], what: str) -> GitError:
    reason = done.stderr.decode(errors="replace").strip().splitlines()
    line = reason[0].removeprefix("fatal: ") if reason else f"git {what} failed"
    return (NotARepository if "not a git repository" in line else GitError)(line)


def run_git(
    repo: str | os.PathLike[str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`git -C repo args…` (no prompts); the caller reads the exit status."""
    return subprocess.run(
        ["git", "-C", os.fspath(repo), *args],
        input=stdin,
        capture_output=True,
        timeout=GIT_TIMEOUT,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )


def _run(repo: str | os.PathLike[str], args: Sequence[str], stdin: bytes | None = None) -> bytes:
    """git's output, or GitError."""
    done = _on(repo, args, stdin)
    if done.returncode != 0:
        raise _failure(done, args[0])
    return bytes(done.stdout)


def resolve(repo: str | os.PathLike[str], rev: str) -> str | None:
    """The commit sha `rev` names, or None when it names none (no such branch,
    no commit yet). NotARepository / GitError when git cannot answer."""
    done = _on(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"])
    if done.returncode == 0:
        return str(done.stdout.decode().strip())
    if done.returncode == 1:  # --verify --quiet: names no commit
        return None
    raise _failure(done, "rev-parse")


@dataclass(frozen=True, slots=True)
class TreeEntry:
    mode: int
    kind: str  # blob, commit (a submodule)
    sha: str
    size: int  # 0 unless a blob
    path: str  # repository-relative


def tree(repo: str | os.PathLike[str], commit: str, path: str) -> list[TreeEntry]:
    """Every entry under `path` in `commit`, recursively (only `path` itself when
    it is not a directory; none when it does not exist)."""
    out = _run(repo, ["ls-tree", "-r", "-z", "--long", "--full-tree", commit, "--", path])
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, sha, size = meta.decode().split()
        entries.append(
            TreeEntry(
                int(mode, 8), kind, sha, int(size) if size.isdigit() else 0, os.fsdecode(name)
            )
        )
    return entries


def read_blobs(repo: str | os.PathLike[str], shas: Iterable[str]) -> list[bytes]:
    """The contents of these blobs, in order (one `git cat-file --batch`)."""
    wanted = list(shas)
    if not wanted:
        return []
    out = _run(repo, ["cat-file", "--batch"], "".join(s + "\n" for s in wanted).encode())
    blobs, at = [], 0
    for sha in wanted:  # each: "<sha> blob <size>\n<content>\n"
        end = out.index(b"\n", at)
        header = out[at:end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise GitError(f"cannot read blob {sha}")
        size = int(header[2])
        blobs.append(out[end + 1 : end + 1 + size])
        at = end + 1 + size + 1
    return blobs
