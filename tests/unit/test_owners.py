"""Owned fragments: a team's fragment that grants outside its scope fails validation,
naming the fragment, the rule and the scope; inside its scope it loads."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

from gitctl.snapshot import load_from_directory, load_from_git
from gitctl.tailnet import load_schema
from gitctl.yamlsrc import load_yaml_with_positions
from tests.unit.test_sources import commit_files

USERS = (
    "users:\n  - {name: alice, email: alice@example.com}\n  - {name: bob, email: bob@example.com}\n"
)
BASE = """\
{
  "groups": {"group:web": ["alice@example.com"], "group:db": ["bob@example.com"]},
  "tagOwners": {"tag:web": ["group:web"], "tag:db": ["group:db"]},
}
"""
OWNERS = """\
owners:
  - team: web
    files: ["teams/web/*.hujson"]
    destinations: ["tag:web", "group:web"]
    sources: ["group:web", "autogroup:member"]
"""
WEB_OK = """\
{
  "acls": [
    {"action": "accept", "src": ["group:web"], "dst": ["tag:web:443", "group:web:*"]},
  ],
  "grants": [{"src": ["autogroup:member"], "dst": ["tag:web"], "ip": ["80"]}],
}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def tailnet(tmp_path: Path, web: str, owners: str = OWNERS) -> Path:
    files = {
        "users.yaml": USERS,
        "policy.hujson": BASE,
        "owners.yaml": owners,
        "teams/web/rules.hujson": web,
    }
    return write(tmp_path / "tailnet.d", files)


def errors(root: Path) -> list[str]:
    return [d.render().splitlines()[0] for d in load_from_directory(root).diagnostics]


def test_a_fragment_inside_its_scope_loads(tmp_path: Path) -> None:
    result = load_from_directory(tailnet(tmp_path, WEB_OK))
    assert result.ok, [d.render() for d in result.diagnostics]
    assert len(result.snapshot.policy_doc["acls"]) == 1  # type: ignore[union-attr]


def test_granting_outside_the_scope_names_fragment_rule_and_scope(tmp_path: Path) -> None:
    web = WEB_OK.replace('"group:web:*"]', '"group:web:*", "tag:db:5432"]')
    root = tailnet(tmp_path, web)
    (error,) = errors(root)
    assert error.startswith(f"{root}/teams/web/rules.hujson:3:86: acls[0].dst[2]: ")
    assert '"tag:db" is outside the scope of owner "web" (' in error
    assert f"{root}/owners.yaml:2:5" in error
    assert "may grant access to tag:web, group:web" in error


def test_naming_a_source_outside_the_scope_fails(tmp_path: Path) -> None:
    web = WEB_OK.replace('"src": ["autogroup:member"]', '"src": ["group:db"]')
    (error,) = errors(tailnet(tmp_path, web))
    assert 'grants[0].src[0]: "group:db" is outside the scope' in error
    assert "may name as a source group:web, autogroup:member" in error


def test_an_owned_fragment_cannot_define_groups(tmp_path: Path) -> None:
    web = WEB_OK.replace("{\n", '{\n  "groups": {"group:web2": ["bob@example.com"]},\n', 1)
    (error,) = errors(tailnet(tmp_path, web))
    assert 'may hold only acls, grants, ssh, tests and sshTests, not "groups"' in error


def test_globs_match_within_a_directory_and_across_with_double_star(tmp_path: Path) -> None:
    bad = WEB_OK.replace('"tag:web"]', '"tag:db"]')
    root = tailnet(tmp_path, WEB_OK)
    write(root, {"teams/web/sub/more.hujson": bad})
    assert load_from_directory(root).ok  # `*` stays in teams/web/
    (root / "owners.yaml").write_text(OWNERS.replace("teams/web/*.hujson", "teams/web/**"))
    (error,) = errors(root)
    assert "teams/web/sub/more.hujson" in error


def test_an_unowned_file_is_unrestricted(tmp_path: Path) -> None:
    root = tailnet(tmp_path, WEB_OK)
    write(
        root, {"platform.hujson": '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'}
    )
    assert load_from_directory(root).ok


def test_owners_file_is_checked_against_its_schema(tmp_path: Path) -> None:
    root = tailnet(tmp_path, WEB_OK, OWNERS.replace("sources:", "source:"))
    assert errors(root) == [
        f'{root}/owners.yaml:2:5: owners[0]: missing required key "sources"',
        f'{root}/owners.yaml:5:5: owners[0].source: unknown key "source" (did you mean "sources"?)',
    ]


def test_owned_fragments_hold_in_git_too(tmp_path: Path) -> None:
    web = WEB_OK.replace('"tag:web"]', '"tag:db"]')
    files = {
        "tailnet.d/users.yaml": USERS,
        "tailnet.d/policy.hujson": BASE,
        "tailnet.d/owners.yaml": OWNERS,
        "tailnet.d/teams/web/rules.hujson": web,
    }
    repo = tmp_path / "repo"
    commit_files(repo, dict(files), "owned")
    (diag,) = load_from_git(repo).diagnostics
    assert diag.file == "tailnet.d/teams/web/rules.hujson" and diag.line == 5


def test_the_documented_owners_example_passes_its_schema() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "gitops.md").read_text()
    block = docs.split("```yaml\n# tailnet.d/owners.yaml\n", 1)[1].split("```", 1)[0]
    doc = load_yaml_with_positions(block)[0]
    assert list(Draft202012Validator(load_schema("owners")).iter_errors(doc)) == []
    assert json.dumps(doc)
