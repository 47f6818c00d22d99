"""Tailscale's API, the subset tailnetd can honour: `/api/v2/…` (placeholder)."""

from __future__ import annotations

from server.api.deps import WebDeps
from server.api.endpoints import Endpoint

__all__ = ["endpoints"]


def endpoints(deps: WebDeps) -> list[Endpoint]:
    return []
