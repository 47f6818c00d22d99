"""The admin API's request bodies, each declared once as a frozen dataclass.

`parse_body` checks a JSON body against its declaration before a handler acts
on it: a body that is not an object, an unknown key, a missing field or a
value of the wrong JSON type is a `BodyError` naming the field (a 400), never
a value coerced into something the admin did not send (`bool("no")`).
Declarations use only `str`, `bool`, `int`, `X | None`, `tuple[str, ...]` and
another declaration (a nested object). `body_schema` turns a declaration into
the JSON Schema the OpenAPI document publishes, so the two never disagree.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "BodyError",
    "CreateAuthKeyV2",
    "SetTags",
    "body_schema",
    "CreateApiKey",
    "CreateOAuthClient",
    "CreatePreAuthKey",
    "NoBody",
    "RefuseLogin",
    "RegisterNode",
    "RenameNode",
    "SetAuthorized",
    "SetDeviceKey",
    "SetKeyExpiry",
    "SetRoutes",
    "parse_body",
]

MAX_BODY = 64 * 1024  # an admin request is a few fields; anything larger is a mistake

T = TypeVar("T")


class BodyError(ValueError):
    """A request body that does not match its declaration; the text is for people,
    `field` names the offending field (dotted for nested ones) when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class NoBody:
    """A request that takes no fields (an empty body or `{}`)."""


@dataclass(frozen=True, slots=True)
class CreatePreAuthKey:
    user: str
    reusable: bool = False
    ephemeral: bool = False
    tags: tuple[str, ...] = ()
    expiration: str | None = None  # a duration such as 90d; None = never expires


@dataclass(frozen=True, slots=True)
class CreateApiKey:
    expiration: str | None = None  # a duration; None = the default lifetime
    scope: Literal["read", "admin"] = "admin"  # read: GET routes only


@dataclass(frozen=True, slots=True)
class CreateOAuthClient:
    """An OAuth client with Tailscale's scope names (e.g. `devices:core:read`)."""

    scopes: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class SetTags:
    """A node's tags, replacing the ones it has (Tailscale's `POST /device/{id}/tags`)."""

    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegisterNode:
    """Approve an interactive login: the node of login `auth_id` joins as `user`."""

    auth_id: str
    user: str


@dataclass(frozen=True, slots=True)
class RefuseLogin:
    reason: str = "refused by an administrator"


@dataclass(frozen=True, slots=True)
class SetAuthorized:
    authorized: bool


@dataclass(frozen=True, slots=True)
class SetRoutes:
    routes: tuple[str, ...]


# Tailscale's `POST /api/v2/tailnet/-/keys`, in its own camelCase field names.
@dataclass(frozen=True, slots=True)
class DeviceCreate:
    reusable: bool = False
    ephemeral: bool = False
    preauthorized: bool = False
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    create: DeviceCreate = DeviceCreate()


@dataclass(frozen=True, slots=True)
class KeyCapabilities:
    devices: DeviceCapabilities = DeviceCapabilities()


@dataclass(frozen=True, slots=True)
class CreateAuthKeyV2:
    capabilities: KeyCapabilities = KeyCapabilities()
    expirySeconds: int | None = None  # Tailscale's field name
    description: str | None = None


@dataclass(frozen=True, slots=True)
class SetKeyExpiry:
    """Disable or enable a node's key expiry (`tailnetd nodes expiry`)."""

    disabled: bool


# Tailscale's `POST /api/v2/device/{id}/key`, in its own field name.
@dataclass(frozen=True, slots=True)
class SetDeviceKey:
    keyExpiryDisabled: bool  # noqa: N815 - Tailscale's field name


@dataclass(frozen=True, slots=True)
class RenameNode:
    name: str


def parse_body(kind: type[T], raw: bytes) -> T:
    if len(raw) > MAX_BODY:
        raise BodyError(f"the body is larger than {MAX_BODY} bytes")
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise BodyError("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BodyError(f"the body must be a JSON object, not {_json_type(value)}")
    return _object(kind, value, "")


def _object(kind: type[T], value: dict[str, Any], outer: str) -> T:
    declared = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(declared))
    if unknown:
        expected = ", ".join(declared) or "none"
        name = outer + unknown[0]
        raise BodyError(f"unknown field {name!r} (fields: {expected})", name)
    hints = typing.get_type_hints(kind)
    checked: dict[str, Any] = {}
    for name, field in declared.items():
        if name in value:
            checked[name] = _check(outer + name, hints[name], value[name])
        elif field.default is MISSING:
            raise BodyError(f"field {outer + name!r} is required", outer + name)
    return kind(**checked)


def _check(name: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise BodyError(f"field {name!r} must be true or false, not {_json_type(value)}", name)
    if hint is str:
        if isinstance(value, str):
            return value
        raise BodyError(f"field {name!r} must be a string, not {_json_type(value)}", name)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BodyError(f"field {name!r} must be a whole number, not {_json_type(value)}", name)
    if typing.get_origin(hint) is Literal:
        if value in hint.__args__ and isinstance(value, str):
            return value
        choices = ", ".join(repr(c) for c in hint.__args__)
        raise BodyError(f"field {name!r} must be one of {choices}, not {_json_type(value)}", name)
    if isinstance(hint, types.UnionType) and type(None) in hint.__args__:
        (inner,) = (arg for arg in hint.__args__ if arg is not type(None))
        return None if value is None else _check(name, inner, value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise BodyError(f"field {name!r} must be a list of strings, not {_json_type(value)}", name)
    if is_dataclass(hint):
        if isinstance(value, dict):
            return _object(hint, value, name + ".")  # type: ignore[arg-type]
        raise BodyError(f"field {name!r} must be an object, not {_json_type(value)}", name)
    raise TypeError(f"{name}: unsupported body field type {hint!r}")  # a declaration bug


def body_schema(kind: type[Any]) -> dict[str, Any]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses) that `parse_body(kind, …)` enforces."""
    hints = typing.get_type_hints(kind)
    properties = {f.name: _schema(hints[f.name]) for f in fields(kind)}
    required = [f.name for f in fields(kind) if f.default is MISSING]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _schema(hint: Any) -> dict[str, Any]:
    simple = {bool: "boolean", str: "string", int: "integer"}
    if hint in simple:
        return {"type": simple[hint]}
    if typing.get_origin(hint) is Literal:
        return {"type": "string", "enum": list(hint.__args__)}
    if isinstance(hint, types.UnionType) and type(None) in hint.__args__:
        (inner,) = (arg for arg in hint.__args__ if arg is not type(None))
        return {"anyOf": [_schema(inner), {"type": "null"}]}
    if typing.get_origin(hint) is tuple:
        return {"type": "array", "items": {"type": "string"}}
    if is_dataclass(hint):
        return body_schema(hint)  # type: ignore[arg-type]
    raise TypeError(f"unsupported body field type {hint!r}")


def _json_type(value: Any) -> str:
    """How a JSON value is named to people: its JSON type, and short text of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list" if all(isinstance(item, str) for item in value) else "a list of non-strings"
    text = json.dumps(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"the string {text}" if isinstance(value, str) else f"the number {text}"
