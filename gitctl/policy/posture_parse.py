"""Validation of ``postures``, ``srcPosture``/``defaultSrcPosture`` and tests'
``srcPostureAttrs``; the conditions themselves are parsed by :mod:`posture`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import Path
from .posture import Condition, PostureSyntaxError, Value, check_attribute, parse_condition

if TYPE_CHECKING:
    from .parse import Ctx


def parse_postures(raw: Any, ctx: Ctx) -> dict[str, tuple[Condition, ...]]:
    out: dict[str, tuple[Condition, ...]] = {}
    for name, texts in ctx.section(raw, "postures").items():
        path: Path = ("postures", name)
        if not name.startswith("posture:") or name == "posture:":
            ctx.fail(f'postures["{name}"]: posture names must start with "posture:"', path)
            continue
        conditions = []
        for j, text in enumerate(ctx.strings(texts, path)):
            try:
                conditions.append(parse_condition(text))
            except PostureSyntaxError as e:
                ctx.fail(f'postures["{name}"]: {e}', (*path, j))
        if not conditions and not texts:
            ctx.fail(f'postures["{name}"]: a posture needs at least one condition', path)
        out[name] = tuple(conditions)
    return out


def parse_src_posture(raw: Any, ctx: Ctx, path: Path) -> tuple[str, ...]:
    """Posture names of a rule's ``srcPosture`` (or ``defaultSrcPosture``)."""
    names = []
    for j, name in enumerate(ctx.strings(raw, path)):
        if not name.startswith("posture:"):
            ctx.fail(f'"{name}": srcPosture lists postures ("posture:<name>")', (*path, j))
        elif name not in ctx.postures:
            ctx.fail(f'posture not found: "{name}"', (*path, j))
        else:
            names.append(name)
    return tuple(names)


def parse_test_posture_attrs(raw: Any, ctx: Ctx, path: Path) -> Mapping[str, Value] | None:
    """A test's ``srcPostureAttrs``: the source device's attributes for that test."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        ctx.fail("srcPostureAttrs must be an object of attribute values", path)
        return None
    out: dict[str, Value] = {}
    for key, value in raw.items():
        try:
            kind = check_attribute(key)
        except PostureSyntaxError as e:
            ctx.fail(str(e), (*path, key))
            continue
        if (kind == "bool") != isinstance(value, bool) or not isinstance(value, str | bool):
            want = "true or false" if kind == "bool" else "a string"
            ctx.fail(f"srcPostureAttrs: {key} takes {want}", (*path, key))
            continue
        out[key] = value
    return out
