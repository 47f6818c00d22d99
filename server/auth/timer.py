"""The timer of interactive logins and SSH checks: those nobody approved in
time expire."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from server.auth.pending import PendingLogins
from server.auth.sshcheck import SshChecks

__all__ = ["LOGIN_RECHECK", "expire_logins"]

LOGIN_RECHECK = 5.0  # seconds: the longest the timer sleeps


async def expire_logins(
    logins: PendingLogins, ssh_checks: SshChecks, clock: Callable[[], datetime]
) -> None:
    while True:
        due = logins.get_timer()
        wait = LOGIN_RECHECK if due is None else (due - clock()).total_seconds()
        await asyncio.sleep(min(max(wait, 0.01), LOGIN_RECHECK))
        logins.handle_timer(clock())
        ssh_checks.handle_timer(clock())
