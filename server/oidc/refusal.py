"""The one error of an OIDC login: which check failed, for the operator's log line, and
what the user is told."""

from __future__ import annotations

__all__ = ["Refusal"]


class Refusal(Exception):
    """A login refused. ``check`` names the failed check (``state``, ``signature``,
    ``audience``, ``allowed_domains``, ...); ``message`` is for the person logging in and
    never echoes what the provider or the browser sent, except the identity's email."""

    def __init__(self, check: str, message: str, email: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.message = message
        self.email = email
