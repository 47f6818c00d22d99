"""Signed commits as the change authority: which keys may move the served policy.

Trusted signers are listed in git's `gpg.ssh.allowedSignersFile` form (one
`principal [options] key-type key` a line). The list comes from a file outside the
repository (a server option, which no commit can change) or from the repository itself
(`trusted_signers: {file: …}` in settings.yaml). An in-repo list guards itself: a commit
is checked against the list of the commit served before it, so a commit that adds a key
must be signed by a key that was already trusted. A commit that turns signing on, when
nothing signed was served before, is checked against its own list (trust on first use).

Checking is done by git itself (`git log --format=%G?…` with `gpg.format=ssh`), which
runs `ssh-keygen -Y find-principals` / `-Y verify`. Only SSH signatures are accepted.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gitctl.gitrun import run_git

__all__ = [
    "MAX_SIGNERS_BYTES",
    "Signature",
    "SignersError",
    "Trust",
    "check_commit",
    "read_trust_file",
    "required_trust",
    "trust_at",
]

MAX_SIGNERS_BYTES = 1 << 20  # an allowed-signers file is a few lines per person
_SSH_SIGNATURE = b"-----BEGIN SSH SIGNATURE-----"

# git's %G? letters that do not mean "good, by a listed signer".
_PROBLEMS = {
    "B": "has a bad signature (the commit was changed after signing)",
    "X": "has a signature that has expired",
    "Y": "is signed by a key that has expired",
    "R": "is signed by a revoked key",
    "E": "has a signature that cannot be checked (is ssh-keygen installed?)",
    "N": "is not signed",
}


class SignersError(Exception):
    """A trusted-signers file could not be read."""


@dataclass(frozen=True, slots=True)
class Trust:
    """The allowed-signers text a commit is checked against, and where it came from."""

    text: bytes
    source: str  # as shown to people: a path, or "path at <commit>"


@dataclass(frozen=True, slots=True)
class Signature:
    revision: str
    signer: str | None  # the principal of a trusted signer; None unless trusted
    key: str | None  # the signing key's fingerprint, when the commit is signed
    problem: str | None  # why the commit is not trusted; None when it is

    @property
    def trusted(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        """One sentence naming the commit and, if refused, why."""
        short = self.revision[:12]
        if self.problem is None:
            return f"commit {short} is signed by {self.signer} ({self.key})"
        return f"commit {short} {self.problem}"


def _checked_text(data: bytes, source: str) -> Trust:
    if len(data) > MAX_SIGNERS_BYTES:
        raise SignersError(f"{source}: larger than {MAX_SIGNERS_BYTES >> 10} KiB")
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not any(not ln.lstrip().startswith("#") for ln in lines):
        raise SignersError(f"{source}: lists no signer")
    return Trust(data, source)


def read_trust_file(path: Path) -> Trust:
    """A trusted-signers file outside the repository."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SIGNERS_BYTES + 1)
    except OSError as exc:
        raise SignersError(f"cannot read the trusted signers file {path}: {exc.strerror}") from None
    return _checked_text(data, str(path))


def trust_at(repo: str | os.PathLike[str], revision: str, path: str) -> Trust:
    """The trusted-signers file `path` (repository-relative) as committed in `revision`."""
    source = f"{path} at {revision[:12]}"
    size = run_git(repo, "cat-file", "-s", f"{revision}:{path}")
    if size.returncode != 0:
        raise SignersError(f"the trusted signers file {path} does not exist at {revision[:12]}")
    if int(size.stdout.strip() or 0) > MAX_SIGNERS_BYTES:
        raise SignersError(f"{source}: larger than {MAX_SIGNERS_BYTES >> 10} KiB")
    blob = run_git(repo, "cat-file", "blob", f"{revision}:{path}")
    if blob.returncode != 0:
        raise SignersError(f"the trusted signers file {path} is not a file at {revision[:12]}")
    return _checked_text(blob.stdout, source)


def required_trust(
    repo: str | os.PathLike[str],
    revision: str,
    setting: str | None,
    *,
    outside: Trust | None = None,
    previous: str | None = None,
    previous_setting: str | None = None,
) -> Trust | None:
    """The list `revision` must be signed by, or None when no signature is required.

    `setting` is `revision`'s own trusted_signers file; `previous` the commit served
    before it and `previous_setting` that commit's. The outside file wins; then the
    previous commit's list (so adding a key takes an already trusted one); then the
    commit's own list, for the commit that turns signing on."""
    if outside is not None:
        return outside
    if previous is not None and previous_setting is not None:
        return trust_at(repo, previous, previous_setting)
    if setting is not None:
        return trust_at(repo, revision, setting)
    return None


def _signature_kind(repo: str | os.PathLike[str], revision: str) -> str | None:
    """ "ssh", "other" or None (unsigned), from the commit object's gpgsig header."""
    raw = run_git(repo, "cat-file", "commit", revision)
    if raw.returncode != 0:
        raise SignersError(f"commit {revision[:12]} cannot be read")
    head = raw.stdout.split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        if line.startswith(b"gpgsig ") or line.startswith(b"gpgsig-sha256 "):
            return "ssh" if line.split(b" ", 1)[1].strip() == _SSH_SIGNATURE else "other"
    return None


def check_commit(repo: str | os.PathLike[str], revision: str, trust: Trust) -> Signature:
    """Whether `revision` is signed (SSH) by a signer that `trust` lists."""
    kind = _signature_kind(repo, revision)
    if kind is None:
        return Signature(revision, None, None, f"is not signed (trusted signers: {trust.source})")
    if kind != "ssh":
        return Signature(
            revision, None, None, "is not signed with an SSH key (only SSH signatures are checked)"
        )
    with tempfile.TemporaryDirectory(prefix="tailnetd-signers-") as tmp:
        allowed = Path(tmp, "allowed_signers")
        fd = os.open(allowed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(trust.text)
        out = run_git(
            repo,
            "-c",
            "gpg.format=ssh",
            "-c",
            f"gpg.ssh.allowedSignersFile={allowed}",
            "-c",
            "gpg.ssh.program=ssh-keygen",
            "-c",
            "gpg.ssh.revocationFile=",
            "log",
            "-1",
            "--no-show-signature",
            "--format=%G?%x00%GK%x00%GS",
            revision,
            "--",
        )
    if out.returncode != 0:
        raise SignersError(f"commit {revision[:12]} cannot be checked: {out.stderr.decode()}")
    fields = out.stdout.decode("utf-8", "replace").strip("\n").split("\0")
    status, fingerprint, signer = (fields + ["", ""])[:3]
    if status == "G" and signer:
        return Signature(revision, signer, fingerprint or None, None)
    if status in ("G", "U"):
        problem = f"is signed by {fingerprint}, which is not a trusted signer in {trust.source}"
    else:
        problem = _PROBLEMS.get(status, f"has a signature git reports as {status!r}")
    return Signature(revision, None, fingerprint or None, problem)
