"""`gitctl verify`: a commit not signed by a trusted key fails CI, naming the commit and why;
a commit that adds a key must be signed by a key that was already trusted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitctl.cli import main
from gitctl.signers import SignersError, check_commit, read_trust_file, trust_at
from tests.unit.signing import SigningKey, make_key, signed_commit

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"
SETTINGS = "trusted_signers: {file: .tailnet/allowed_signers}\n"
SIGNERS = ".tailnet/allowed_signers"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[SigningKey, SigningKey]:
    return make_key(tmp_path / "keys", "alice"), make_key(tmp_path / "keys", "mallory")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture
def outside(tmp_path: Path, keys: tuple[SigningKey, SigningKey]) -> Path:
    """A trusted-signers file outside the repository, listing alice."""
    path = tmp_path / "allowed_signers"
    path.write_text(keys[0].allowed_line)
    return path


def verify(repo: Path, *extra: str) -> int:
    return main(["verify", "--repo", str(repo), *extra])


def test_an_unsigned_commit_is_refused_naming_the_commit(
    repo: Path,
    keys: tuple[SigningKey, SigningKey],
    outside: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, _ = keys
    sha = signed_commit(repo, {"tailnet.d/users.yaml": USERS}, "unsigned", None)
    assert verify(repo, "--allowed-signers", str(outside)) == 1
    err = capsys.readouterr().err
    assert f"commit {sha[:12]} is not signed" in err
    assert str(outside) in err


def test_a_commit_signed_by_a_trusted_key_passes_and_names_the_signer(
    repo: Path,
    keys: tuple[SigningKey, SigningKey],
    outside: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, _ = keys
    signed_commit(repo, {"tailnet.d/users.yaml": USERS}, "signed", alice)
    assert verify(repo, "--allowed-signers", str(outside)) == 0
    assert "signed by alice@example.com" in capsys.readouterr().out


def test_a_key_not_in_the_list_is_refused_with_its_fingerprint(
    repo: Path,
    keys: tuple[SigningKey, SigningKey],
    outside: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, mallory = keys
    signed_commit(repo, {"tailnet.d/users.yaml": USERS}, "by mallory", mallory)
    assert verify(repo, "--allowed-signers", str(outside)) == 1
    err = capsys.readouterr().err
    assert "is signed by SHA256:" in err
    assert f"not a trusted signer in {outside}" in err


def test_without_any_signers_setting_nothing_is_required(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed_commit(repo, {"tailnet.d/users.yaml": USERS}, "plain", None)
    assert verify(repo) == 0
    assert "no trusted signers are configured" in capsys.readouterr().out


def test_in_repo_list_a_commit_adding_a_key_needs_an_already_trusted_signature(
    repo: Path, keys: tuple[SigningKey, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, mallory = keys
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/settings.yaml": SETTINGS}
    # The commit that turns signing on is checked against its own list.
    signed_commit(repo, {**files, SIGNERS: alice.allowed_line}, "sign from now on", alice)
    assert verify(repo) == 0
    # Mallory adds her own key and signs with it: the parent's list does not have it.
    both = alice.allowed_line + mallory.allowed_line
    sha = signed_commit(repo, {SIGNERS: both}, "add mallory", mallory)
    assert verify(repo) == 1
    err = capsys.readouterr().err
    assert f"commit {sha[:12]} is signed by SHA256:" in err
    assert f"{SIGNERS} at " in err
    # The same change signed by alice is fine; after it, mallory's commits are too.
    subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "HEAD^"], check=True)
    signed_commit(repo, {SIGNERS: both}, "add mallory", alice)
    assert verify(repo) == 0
    signed_commit(
        repo,
        {"tailnet.d/users.yaml": USERS + "  - {name: bob, email: bob@example.com}\n"},
        "bob",
        mallory,
    )
    assert verify(repo) == 0


def test_turning_signing_on_with_a_key_not_in_the_new_list_is_refused(
    repo: Path, keys: tuple[SigningKey, SigningKey]
) -> None:
    alice, mallory = keys
    files = {"tailnet.d/users.yaml": USERS, "tailnet.d/settings.yaml": SETTINGS}
    signed_commit(repo, {**files, SIGNERS: alice.allowed_line}, "on", mallory)
    assert verify(repo) == 1


def test_a_signers_file_named_but_missing_is_an_error(repo: Path) -> None:
    sha = signed_commit(repo, {"tailnet.d/settings.yaml": SETTINGS}, "no list", None)
    with pytest.raises(SignersError, match="does not exist at"):
        trust_at(repo, sha, SIGNERS)
    assert verify(repo) == 1


def test_an_empty_signers_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "allowed"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SignersError, match="lists no signer"):
        read_trust_file(empty)


def test_a_commit_changed_after_signing_is_not_trusted(
    repo: Path, keys: tuple[SigningKey, SigningKey], outside: Path
) -> None:
    alice, _ = keys
    sha = signed_commit(repo, {"tailnet.d/users.yaml": USERS}, "signed", alice)
    raw = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "commit", sha], check=True, capture_output=True
    ).stdout
    forged = raw.replace(b"signed\n", b"signed, honest\n")
    new = (
        subprocess.run(
            ["git", "-C", str(repo), "hash-object", "-t", "commit", "-w", "--stdin"],
            input=forged,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    signature = check_commit(repo, new, read_trust_file(outside))
    assert not signature.trusted
    assert "bad signature" in signature.describe()
