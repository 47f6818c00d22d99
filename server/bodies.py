"""The admin API's request bodies, each declared once as a frozen dataclass.

`parse_body` checks a JSON body against its declaration before a handler acts
on it: a body that is not an object, an unknown key, a missing field or a
value of the wrong JSON type is a `BodyError` naming the field (a 400), never
a value coerced into something the admin did not send (`bool("no")`).
Declarations use only `str`, `bool`, `str | None` and `tuple[str, ...]`.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

__all__ = [
    "BodyError",
    "CreateApiKey",
    "CreatePreAuthKey",
    "NoBody",
    "RenameNode",
    "parse_body",
]

MAX_BODY = 64 * 1024  # an admin request is a few fields; anything larger is a mistake

T = TypeVar("T")


class BodyError(ValueError):
    """A request body that does not match its declaration; the text is for people."""


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
    declared = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(declared))
    if unknown:
        expected = ", ".join(declared) or "none"
        raise BodyError(f"unknown field {unknown[0]!r} (fields: {expected})")
    hints = typing.get_type_hints(kind)
    checked: dict[str, Any] = {}
    for name, field in declared.items():
        if name in value:
            checked[name] = _check(name, hints[name], value[name])
        elif field.default is MISSING:
            raise BodyError(f"field {name!r} is required")
    return kind(**checked)


def _check(name: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise BodyError(f"field {name!r} must be true or false, not {_json_type(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise BodyError(f"field {name!r} must be a string, not {_json_type(value)}")
    if isinstance(hint, types.UnionType) and type(None) in hint.__args__:
        (inner,) = (arg for arg in hint.__args__ if arg is not type(None))
        return None if value is None else _check(name, inner, value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise BodyError(f"field {name!r} must be a list of strings, not {_json_type(value)}")
    raise TypeError(f"{name}: unsupported body field type {hint!r}")  # a declaration bug


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
