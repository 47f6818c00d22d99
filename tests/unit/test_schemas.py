"""The shipped JSON Schemas: valid, complete, what editors see, and errors with file:line:col."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gitctl.hujson import loads
from gitctl.snapshot import load_snapshot
from gitctl.sources import Documents
from gitctl.tailnet import POLICY_KEYS, SCHEMA_KINDS, load_schema
from gitctl.yamlsrc import load_yaml_with_positions

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tailnet.d"


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_each_schema_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    schema = load_schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False


def test_the_repository_schemas_directory_is_the_packaged_one() -> None:
    for kind in SCHEMA_KINDS:
        shipped = ROOT / "gitctl" / "schemas" / f"{kind}.schema.json"
        assert (ROOT / "schemas" / f"{kind}.schema.json").read_bytes() == shipped.read_bytes()


def test_the_policy_schema_knows_every_policy_key() -> None:
    assert set(load_schema("policy")["properties"]) == {"$schema", *POLICY_KEYS}


def _hint(text: str) -> str:
    m = re.search(r"(?:yaml-language-server: )?\$schema[=:] ?(\S+)", text)
    assert m, "every example file names its schema for editors"
    return m.group(1)


@pytest.mark.parametrize("path", sorted(EXAMPLE.iterdir()), ids=lambda p: p.name)
def test_example_files_pass_the_schema_their_editor_hint_names(path: Path) -> None:
    # What an editor does: resolve the hint relative to the file and validate the whole file.
    text = path.read_text()
    schema_file = (path.parent / _hint(text)).resolve()
    assert schema_file.is_file()
    schema = json.loads(schema_file.read_text())
    doc = load_yaml_with_positions(text)[0] if path.suffix in (".yaml", ".yml") else loads(text)
    assert list(Draft202012Validator(schema).iter_errors(doc)) == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "users.yaml",
            "users:\n  - name: alice\n    email: 42\n",
            "tailnet.d/users.yaml:3:12: users[0].email: expected a string, found a number",
        ),
        (
            "users.yaml",
            "users:\n  - name: alice\n    email: alice\n",
            'tailnet.d/users.yaml:3:12: users[0].email: invalid value "alice" '
            "(expected an email address such as alice@example.com)",
        ),
        (
            "policy.hujson",
            '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"],\n  "porto": "tcp"}]}',
            'tailnet.d/policy.hujson:2:3: acls[0].porto: unknown key "porto" '
            '(did you mean "proto"?)',
        ),
        (
            "policy.hujson",
            '{"ssh": [{"action": "deny", "src": [], "dst": [], "users": []}]}',
            'tailnet.d/policy.hujson:1:21: ssh[0].action: "deny" is not one of "accept", "check"',
        ),
        (
            "settings.yaml",
            "ip_allocation: random\nembedded_derp: {region_id: 0}\n",
            "tailnet.d/settings.yaml:2:28: embedded_derp.region_id: must be at least 1",
        ),
        (
            "dns.yaml",
            "magic_dns: yes please\n",
            "tailnet.d/dns.yaml:1:12: magic_dns: expected true or false, found a string",
        ),
        (
            "routes.yaml",
            "routes:\n  - node: gw\n    routes: [10.0.0.0/8]\n    via: x\n",
            'tailnet.d/routes.yaml:4:5: routes[0].via: unknown key "via"',
        ),
    ],
)
def test_schema_errors_name_file_line_column_and_key(name: str, text: str, expected: str) -> None:
    result = load_snapshot(Documents("tailnet.d", {f"tailnet.d/{name}": text.encode()}, None))
    assert result.snapshot is None
    assert [str(d) for d in result.diagnostics] == [expected]


def test_schema_errors_never_show_python_names() -> None:
    result = load_snapshot(
        Documents(
            "tailnet.d", {"tailnet.d/p.yaml": (b"acls: {}\ngroups: []\ntests: [{src: 1}]\n")}, None
        )
    )
    text = "\n".join(d.message for d in result.diagnostics)
    assert "dict" not in text and "list'" not in text and "'" not in text
    assert len(result.diagnostics) == 3
