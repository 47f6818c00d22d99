"""What registration must know about every node, kept in memory between writes.

Picking a free address and a free name used to read every node's row on each
registration, which made a storm of N registrations cost O(N^2). The index
holds the used addresses and names, sorted for gap searches, and is trusted
only while sqlite's `PRAGMA data_version` is unchanged (`server.store.sqlite`;
PostgreSQL keeps a counter row instead): that value moves
whenever another connection (an admin command, a second process) commits to
the file, and it is read inside the write transaction, after `BEGIN
IMMEDIATE` has taken the lock, so nothing can commit between the check and
the insert that relies on it. The UNIQUE constraints on the address and name
columns stay as the last line of defence.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from server.store._sortedints import SortedInts
from server.store.model import Node
from server.store.names import TakenNames

if TYPE_CHECKING:
    from server.store._db import Db

__all__ = ["NodeIndex"]


class NodeIndex:
    __slots__ = ("ipv4", "ipv6", "names", "version")

    def __init__(self, db: Db, version: int) -> None:
        """Read from the nodes table; `version` is data_version at the same moment."""
        v4: list[int] = []
        v6: list[int] = []
        names: list[str] = []
        for ipv4, ipv6, name in db.execute("SELECT ipv4, ipv6, given_name FROM nodes").fetchall():
            if ipv4:
                v4.append(int(IPv4Address(ipv4)))
            if ipv6:
                v6.append(int(IPv6Address(ipv6)))
            names.append(name)
        self.ipv4, self.ipv6, self.names = SortedInts(v4), SortedInts(v6), TakenNames(names)
        self.version = version

    def add(self, node: Node) -> None:
        if node.ipv4 is not None:
            self.ipv4.add(int(node.ipv4))
        if node.ipv6 is not None:
            self.ipv6.add(int(node.ipv6))
        self.names.add(node.given_name)

    def remove(self, node: Node) -> None:
        if node.ipv4 is not None:
            self.ipv4.discard(int(node.ipv4))
        if node.ipv6 is not None:
            self.ipv6.discard(int(node.ipv6))
        self.names.discard(node.given_name)

    def rename(self, old: str, new: str) -> None:
        self.names.discard(old)
        self.names.add(new)
