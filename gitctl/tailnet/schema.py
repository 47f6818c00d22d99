"""JSON Schema validation of tailnet.d files, with errors pinned to file:line:col.

The schemas in `gitctl/schemas/` are the contract editors see too; here each section of a
file is checked against its schema, and jsonschema's errors are rewritten into sentences a
person can act on (an unknown key gets a "did you mean").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from gitctl.diagnostics import Diagnostic, JsonPath, format_path
from gitctl.tailnet.files import Section, SourceFile, split_sections
from gitctl.tailnet.kinds import did_you_mean
from gitctl.tailnet.owners import is_owners_file

if TYPE_CHECKING:  # jsonschema (~50 ms to import) loads when a file is first checked
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

__all__ = ["SCHEMA_KINDS", "load_schema", "schema_version", "validate_file"]

SCHEMA_KINDS = ("users", "policy", "dns", "routes", "keys", "settings", "owners")


@cache
def load_schema(kind: str) -> dict[str, Any]:
    if kind not in SCHEMA_KINDS:
        raise KeyError(kind)
    text = resources.files("gitctl").joinpath("schemas", f"{kind}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def schema_version() -> str:
    """What a file was checked against: the schemas and this module's rules, hashed.
    A record that a commit passed holds only while this is unchanged."""
    h = hashlib.sha256()
    package = resources.files("gitctl")
    for kind in SCHEMA_KINDS:  # the files' bytes: hashed, not parsed (this runs at start)
        h.update(package.joinpath("schemas", f"{kind}.schema.json").read_bytes() + b"\0")
    h.update(package.joinpath("tailnet", "schema.py").read_bytes())
    return "sha256:" + h.hexdigest()


@cache
def _validator(section: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    schema = load_schema(section)
    if section in ("users", "routes", "keys"):
        # The file schema is {section: [...]}; a Section holds the list itself.
        schema = {"$schema": schema["$schema"], **schema["properties"][section]}
    return Draft202012Validator(schema)


_TYPE_NAMES = {
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping"


def _messages(err: ValidationError) -> Iterator[tuple[JsonPath, str, bool]]:
    """(path within the section, message, whether to point at the key) for one error."""
    path: JsonPath = tuple(err.absolute_path)
    kind, schema, inst = err.validator, err.schema, err.instance
    if kind == "additionalProperties" and isinstance(inst, dict):
        known = list(schema.get("properties", {}))
        for k in inst:
            if k not in known:
                yield (*path, k), f'unknown key "{k}"{did_you_mean(k, known)}', True
        return
    if kind == "required":
        missing = [r for r in err.validator_value if r not in inst]
        for r in missing:
            yield path, f'missing required key "{r}"', False
        return
    if kind == "oneOf" and all(set(alt) == {"required"} for alt in err.validator_value):
        names = " or ".join(f'"{n}"' for alt in err.validator_value for n in alt["required"])
        yield path, f"needs exactly one of {names}", False
        return
    if kind == "type":
        wanted: list[str] = (
            err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        )
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        yield path, f"expected {expected}, found {_json_type(inst)}", False
        return
    if kind == "enum":
        choices = ", ".join(json.dumps(c) for c in err.validator_value)
        yield path, f"{json.dumps(inst)} is not one of {choices}", False
        return
    if kind == "pattern":
        # `x-hint` is our annotation next to each pattern; validators ignore unknown keywords.
        hint = schema.get("x-hint")
        yield path, f"invalid value {json.dumps(inst)}" + (f" ({hint})" if hint else ""), False
        return
    if kind == "minLength":
        yield path, "must not be empty", False
        return
    if kind == "minimum":
        yield path, f"must be at least {err.validator_value}", False
        return
    yield path, err.message, False


def _section_errors(sf: SourceFile, section: Section) -> Iterator[Diagnostic]:
    errors = sorted(
        _validator(section.name).iter_errors(section.value),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    for err in errors:
        for rel, message, at_key in _messages(err):
            file_path = (*section.file_prefix, *rel)
            pos = sf.positions.key(file_path) if at_key else sf.positions.value(file_path)
            shown = format_path(file_path)
            text = f"{shown}: {message}" if shown else message
            yield Diagnostic(sf.path, pos.line, pos.col, text, file_path)


def validate_file(sf: SourceFile) -> list[Diagnostic]:
    """Schema problems of one file (unknown top-level keys are reported by the merge)."""
    if is_owners_file(sf.path):
        return list(_section_errors(sf, Section("owners", (), sf.value)))
    sections, _ = split_sections(sf)
    return [d for s in sections for d in _section_errors(sf, s)]
