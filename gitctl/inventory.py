"""Inventory files: a running tailnet's users and devices, for reviewing a policy against them.

`tailnetd inventory export` writes one (schema: `gitctl/schemas/inventory.schema.json`); the
`gitctl` commands that compile a policy (`test`, `diff`, `lint`, `explain`) accept it with
`--inventory FILE`, as they accept a conformance-corpus topology with `--topology FILE`. Both
become the same `Topology`. An inventory carries no key material.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from gitctl.diagnostics import format_path
from gitctl.policy import Topology, TopologyNode, TopologyUser
from gitctl.testing import TopologyFileError, read_topology_file

__all__ = [
    "add_device_arguments",
    "devices_from_args",
    "inventory_schema",
    "parse_inventory",
    "read_inventory_file",
]

MAX_BYTES = 64 << 20  # an inventory of 100k devices is ~30 MiB


@cache
def inventory_schema() -> dict[str, Any]:
    text = resources.files("gitctl").joinpath("schemas", "inventory.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def parse_inventory(doc: Any, where: str = "inventory") -> Topology:
    """An inventory document as a Topology; TopologyFileError names the first few problems."""
    validator = Draft202012Validator(inventory_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        shown = [
            f"{format_path(tuple(e.absolute_path)) or '(top level)'}: {e.message}"
            for e in errors[:5]
        ]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise TopologyFileError(f"{where} is not an inventory: " + "; ".join(shown) + more)
    users = tuple(
        TopologyUser(id=i + 1, name=u["name"], email=u["email"], role=u.get("role"))
        for i, u in enumerate(doc["users"])
    )
    names: set[str] = set()
    nodes = []
    for n in doc["nodes"]:
        if n["name"] in names:
            raise TopologyFileError(f'{where}: two devices are named "{n["name"]}"')
        names.add(n["name"])
        routes = n.get("routes") or {}
        tags = tuple(n["tags"])
        nodes.append(
            TopologyNode(
                name=n["name"],
                hostname=n.get("hostname") or n["name"],
                user=None if tags else n.get("user"),
                tags=tags,
                ipv4=n.get("ipv4"),
                ipv6=n.get("ipv6"),
                routable_ips=tuple(routes.get("advertised") or ()),
                approved_routes=tuple(routes.get("approved") or ()),
            )
        )
    return Topology(users=users, nodes=tuple(nodes))


def read_inventory_file(path: str | os.PathLike[str]) -> Topology:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise TopologyFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise TopologyFileError(f"{path} is larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise TopologyFileError(f"{path} is not JSON: {exc}") from None
    return parse_inventory(doc, str(path))


def add_device_arguments(
    group: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, purpose: str
) -> None:
    """--topology FILE and --inventory FILE, in `group` (mutually exclusive where it matters).

    `purpose` completes "users and nodes to …" in the help text.
    """
    group.add_argument(
        "--topology",
        metavar="T.json",
        help=f"users and nodes to {purpose} (conformance corpus format)",
    )
    group.add_argument(
        "--inventory",
        metavar="FILE",
        help=f"users and nodes to {purpose}, as `tailnetd inventory export` writes them",
    )


def devices_from_args(args: argparse.Namespace) -> tuple[Topology, str] | None:
    """The topology named by --topology or --inventory, with its file name; None if neither.

    Raises TopologyFileError for a file that cannot be read.
    """
    if getattr(args, "inventory", None):
        return read_inventory_file(args.inventory), args.inventory
    if getattr(args, "topology", None):
        return read_topology_file(args.topology), args.topology
    return None
