"""Server.start's phases (server/app.py), each a function from what it needs to
the parts it builds; the Server keeps the parts and stops them in order.

state.py: the repository, the keys, the node store; tailnet.py: the registry,
the tailnet and what follows its events; logins.py: interactive logins, SSH
checks, OIDC, router probes and the control handler; doors.py: the front doors
and their ports; background.py: commits served as they come, and the timers.
"""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """A start that cannot go on, in one line for people (`tailnetd serve` prints it)."""
