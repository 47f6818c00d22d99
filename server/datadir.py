"""The data dir: private to its owner and held by one server at a time.

It holds the machine keys, the sqlite state and the admin socket, whose
file permissions are the admin API's only guard, so the directory is 0700
and every file in it 0600. A second server on the same directory would take
the socket over and write the same database: `claim` takes an OS lock
(`flock`) held for the life of the process, which the kernel drops when the
process ends however it ends, so a crashed server never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path
from typing import Protocol, Self, TypeVar

__all__ = [
    "DataDirError",
    "DataDirLock",
    "claim",
    "load_or_create_key",
    "make_private",
    "write_private",
]

LOCK_NAME = "tailnetd.lock"


class _PrivateKey(Protocol):
    @classmethod
    def parse(cls, text: str) -> Self: ...
    @classmethod
    def generate(cls) -> Self: ...
    @property
    def text(self) -> str: ...


_Key = TypeVar("_Key", bound=_PrivateKey)


class DataDirError(Exception):
    """The data dir cannot be used; the message is one line for people."""


class DataDirLock:
    """The held lock; `release` gives it up (the process ending does too)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def claim(data_dir: Path, log: logging.Logger) -> DataDirLock:
    """Create (0700) or tighten the data dir and lock it for this process."""
    _prepare(data_dir, log)
    lock_path = data_dir / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DataDirError(f"cannot use data dir {data_dir}: {_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirError(
            f"another server is running on data dir {data_dir} (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(lock_path, fd)


def _prepare(data_dir: Path, log: logging.Logger) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"data dir {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {data_dir}: {_reason(exc)}") from None
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        try:
            data_dir.chmod(0o700)
        except OSError as exc:
            log.warning(
                "data dir %s is open to other users (mode %04o) and could not be made private: %s",
                data_dir,
                mode,
                exc.strerror,
            )
        else:
            log.warning("data dir %s was open to other users (mode %04o): now 0700", data_dir, mode)
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirError(f"cannot use data dir {data_dir}: permission denied")


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def make_private(*paths: Path) -> None:
    """chmod 0600 each of these files that exists."""
    for path in paths:
        try:
            path.chmod(0o600)
        except FileNotFoundError:
            pass


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode otherwise
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def load_or_create_key(path: Path, kind: type[_Key]) -> _Key:
    """The key in `path`, or a new one of `kind` written there (owner-only)."""
    try:
        if path.exists():
            return kind.parse(path.read_text().strip())
        key = kind.generate()
        write_private(path, (key.text + "\n").encode())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key this server wrote"
        raise DataDirError(f"cannot read the key file {path}: {reason}") from None
    return key
