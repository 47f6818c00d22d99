"""`--groups FILE`: the policy-group members an identity provider gives users at login.

On a server these come from each user's last OIDC login (runtime state); CI has no
logins, so `gitctl test`, `gitctl diff` and `gitctl explain` read them from a file:

    {"group:eng": ["alice@example.com"], "group:ops": ["bob@example.com"]}

(YAML or JSON). They add to the members the policy file declares, never remove any.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gitctl.policy import Topology
from gitctl.policy.topology import runtime_groups
from gitctl.testing import TopologyFileError

__all__ = ["add_groups_argument", "groups_from_args", "merge_groups", "read_groups_file"]


def add_groups_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--groups",
        metavar="FILE",
        help="policy-group members from the identity provider "
        '({"group:NAME": [email, ...]}, YAML or JSON), as logins would give them',
    )


def read_groups_file(path: str) -> dict[str, tuple[str, ...]]:
    """Raises TopologyFileError, with the reason, for a file that cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            doc: Any = YAML(typ="safe", pure=True).load(f)
    except OSError as exc:
        raise TopologyFileError(f"cannot read {path}: {exc.strerror}") from None
    except YAMLError as exc:
        raise TopologyFileError(f"{path} is not YAML or JSON: {exc}") from None
    try:
        return runtime_groups(doc if doc is not None else {})
    except ValueError as exc:
        raise TopologyFileError(f"{path}: {exc}") from None


def groups_from_args(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The memberships of --groups (empty without it). Raises TopologyFileError."""
    path = getattr(args, "groups", None)
    return read_groups_file(path) if path else {}


def merge_groups(topology: Topology, groups: Mapping[str, tuple[str, ...]]) -> Topology:
    """`topology` with `groups`' members added to its own."""
    if not groups:
        return topology
    merged = {k: set(v) for k, v in topology.groups.items()}
    for name, members in groups.items():
        merged.setdefault(name, set()).update(members)
    return dataclasses.replace(
        topology, groups={k: tuple(sorted(v)) for k, v in sorted(merged.items())}
    )
