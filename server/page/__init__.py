"""The operator page: nodes, users, commits and an access explorer, as plain
server-rendered HTML under `/ui/`, behind a login (`routes.py`)."""

from __future__ import annotations

from server.page.routes import page_routes
from server.page.sessions import Session, Sessions

__all__ = ["Session", "Sessions", "page_routes"]
