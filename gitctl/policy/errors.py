"""Policy errors: Tailscale's message text plus the JSON path of the offending value."""

from __future__ import annotations

from collections.abc import Sequence

Path = tuple[str | int, ...]


class PolicyError(Exception):
    """A policy Tailscale would reject.

    ``message`` is the text people see (Tailscale's wording where we know it);
    ``path`` locates the offending value in the policy document so a loader
    can turn it into ``file:line:col``.
    """

    def __init__(self, message: str, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class PolicyErrors(PolicyError):
    """Several independent problems found in one pass."""

    def __init__(self, errors: Sequence[PolicyError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__("\n".join(e.message for e in self.errors), first.path)


def raise_collected(errors: Sequence[PolicyError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PolicyErrors(errors)
