"""nodeAttrs: capabilities granted to nodes themselves (stub)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .aliases import Index
from .model import Policy


def self_cap_maps(policy: Policy, index: Index, tailnet: Mapping[str, Any] | None
                  ) -> list[dict[str, Any]]:
    return [{} for _ in index.nodes]
