"""Whether two snapshots serve the same nodes, owned alike.

Which registered nodes a snapshot serves, and who owns each, depends on its
users alone (`TailnetSource.owner`, `Tailnet._served`). A commit that changes
only the policy names the same users: the nodes it serves are the very
records the serving context holds, so the commit can build on what that
context already knows (which records changed since, which need converting
for the compiler) instead of passing over every node three times before the
first session is woken (~30 ms at 5,000 nodes).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Owners", "same_owners"]


class Owners(Protocol):
    @property
    def users(self) -> object: ...

    @property
    def runtime_users(self) -> frozenset[str]: ...


def same_owners(a: Owners, b: Owners) -> bool:
    """Whether `a` and `b` serve the same nodes with the same owners."""
    return (a.users is b.users or a.users == b.users) and a.runtime_users == b.runtime_users
