"""The pages a person sees at a login URL: plain server-rendered HTML, no
scripts, no external assets, readable by a screen reader and a text browser.

Rendering is pure (`login_page(login, now)` returns the status and the HTML);
`routes` serves it. Nothing the client sent is shown unescaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from server.auth.pending import PendingLogin, PendingLogins
from server.auth.sshcheck import SshCheck, SshChecks

__all__ = ["check_page", "login_page", "page", "routes"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;"
    "line-height:1.5}code,pre{background:#f2f2f2;padding:.2rem .4rem;border-radius:4px}"
    "pre{padding:.8rem;overflow-x:auto}"
)


def page(title: str, body: str) -> str:
    """A whole HTML document; `body` is already escaped HTML."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)} · tailnetd</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{html.escape(title)}</h1>\n{body}</main>\n</body>\n</html>\n"
    )


def login_page(login: PendingLogin | None, auth_id: str, now: datetime) -> tuple[int, str]:
    """The page for login `auth_id`: what to do while it waits, or how it ended."""
    if login is None:
        return 404, page(
            "Login link unknown or expired",
            "<p>This login link is not known to this server: it expired, or it "
            "was already used.</p>\n<p>Run <code>tailscale up</code> on the device "
            "again to get a new link.</p>\n",
        )
    host = html.escape(login.hostname)
    if login.state == "approved":
        return 200, page(
            "Device approved",
            f"<p>The device <strong>{host}</strong> is logged in. You can close this page; "
            "<code>tailscale up</code> on the device continues by itself.</p>\n",
        )
    if login.state in ("refused", "expired"):
        title = "Login refused" if login.state == "refused" else "Login expired"
        return 410, page(
            title,
            f"<p>The login of <strong>{host}</strong> did not complete: "
            f"{html.escape(login.reason)}.</p>\n"
            "<p>Run <code>tailscale up</code> on the device again to get a new link.</p>\n",
        )
    left = max(0, int((login.expires - now).total_seconds() // 60))
    command = f"tailnetd nodes register --user NAME {login.auth_id}"
    return 200, page(
        "Approve this device",
        f"<p>The device <strong>{host}</strong> asks to join this tailnet and is "
        "waiting for an administrator.</p>\n"
        "<p>Ask an administrator of this tailnet to approve it by running, on the "
        "server, with <code>NAME</code> the user who owns the device:</p>\n"
        f"<pre><code>{html.escape(command)}</code></pre>\n"
        f"<p>Login id: <code>{html.escape(login.auth_id)}</code>. "
        f"The request expires in about {left} minute{'s' if left != 1 else ''} "
        f"(at {html.escape(login.expires.strftime('%H:%M UTC'))}). "
        "<code>tailscale up</code> on the device continues by itself once approved; "
        "reload this page to see the state.</p>\n",
    )


def check_page(check: SshCheck | None) -> tuple[int, str]:
    """The page an SSH check sends the person to. Operator approval today; an
    identity provider, when configured, re-authenticates the person here
    (`SshChecks.complete`)."""
    if check is None:
        return 404, page(
            "SSH check unknown or expired",
            "<p>This SSH check is not known to this server: it expired or was "
            "already decided. Connect again for a new one.</p>\n",
        )
    who = html.escape(check.src_user or "a tagged device")
    login = html.escape(check.local_user)
    if check.state != "waiting":
        return (200 if check.state == "approved" else 410), page(
            f"SSH check {check.state}",
            f"<p>The SSH login of {who} as <code>{login}</code> was {check.state}"
            + (f": {html.escape(check.reason)}" if check.reason else "")
            + ".</p>\n",
        )
    command = f"tailnetd ssh approve {check.auth_id}"
    return 200, page(
        "SSH login needs a check",
        f"<p>An SSH login of {who} as <code>{login}</code> is held by a "
        "<code>check</code> rule of the tailnet policy.</p>\n"
        "<p>Ask an administrator of this tailnet to approve it by running:</p>\n"
        f"<pre><code>{html.escape(command)}</code></pre>\n"
        "<p>The ssh session continues by itself once approved.</p>\n",
    )


def routes(
    logins: PendingLogins, checks: SshChecks | None, clock: Callable[[], datetime]
) -> list[Route]:
    headers = {"Cache-Control": "no-store"}

    async def register(request: Request) -> Response:
        auth_id = str(request.path_params["auth_id"])[:128]
        status, text = login_page(logins.get(auth_id), auth_id, clock())
        return HTMLResponse(text, status, headers=headers)

    async def ssh_check(request: Request) -> Response:
        auth_id = str(request.path_params["auth_id"])[:128]
        status, text = check_page(checks.get(auth_id) if checks is not None else None)
        return HTMLResponse(text, status, headers=headers)

    return [Route("/register/{auth_id}", register), Route("/ssh/check/{auth_id}", ssh_check)]
