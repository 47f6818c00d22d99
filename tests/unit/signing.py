"""Real SSH commit signing for tests: keys made by ssh-keygen, commits by `git commit -S`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SigningKey", "make_key", "signed_commit"]


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: Path
    principal: str

    @property
    def allowed_line(self) -> str:
        """This key as a line of an allowed-signers file."""
        key_type, blob = Path(f"{self.private}.pub").read_text().split()[:2]
        return f"{self.principal} {key_type} {blob}\n"


def make_key(directory: Path, name: str) -> SigningKey:
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{name}.key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)],
        check=True,
    )
    return SigningKey(private, f"{name}@example.com")


def signed_commit(
    repo: Path,
    files: dict[str, str],
    message: str,
    key: SigningKey | None,
) -> str:
    """Write `files` (repository-relative paths) and commit them, signed with `key`
    (None: unsigned); the new commit's sha."""
    for name, text in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=tests", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "--", *files], check=True)
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}"] if key else []
    flag = ["-S"] if key else ["--no-gpg-sign"]
    subprocess.run([*git, *sign, "commit", "-q", "--allow-empty", *flag, "-m", message], check=True)
    out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()
