"""Server.start's phases (server/app.py), each a function from what it needs to
the parts it builds; the Server keeps the parts and stops them in order.

state.py: the repository, the keys, the node store; tailnet.py: the registry,
the tailnet and what follows its events; logins.py: interactive logins, SSH
checks, OIDC, router probes and the control handler; doors.py: the front doors,
TLS, STUN and their ports; background.py: commits served as they come, and the
timers; settings.py: the serving settings.yaml as the server reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from server.config import ServerConfig
from server.metrics import Metrics
from server.webhooks import EventSource

__all__ = ["Shared", "StartupError"]


class StartupError(Exception):
    """A start that cannot go on, in one line for people (`tailnetd serve` prints it)."""


@dataclass(frozen=True, slots=True)
class Shared:
    """What every phase is given alike."""

    config: ServerConfig
    clock: Callable[[], datetime]
    log: logging.Logger
    metrics: Metrics
    events: EventSource  # webhook events, sent once the store is open
