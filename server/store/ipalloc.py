"""Choosing a free tailnet address from a configured prefix.

Pure: the caller passes the set of addresses already in use (read inside the
same write transaction that stores the result, so two writers cannot pick the
same address) and the randomness. Given a `SortedInts`, a pick costs
O(log n) whatever the strategy; any other set is sorted first.
"""

from __future__ import annotations

from collections.abc import Set
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from server.store._rand import randbelow
from server.store._sortedints import SortedInts
from server.store.model import AddressExhausted, AllocationStrategy, Rng

__all__ = [
    "DEFAULT_IPV4_PREFIX",
    "DEFAULT_IPV6_PREFIX",
    "RESERVED_IPV4",
    "RESERVED_IPV6",
    "allocate_ipv4",
    "allocate_ipv6",
]

DEFAULT_IPV4_PREFIX = IPv4Network("100.64.0.0/10")
DEFAULT_IPV6_PREFIX = IPv6Network("fd7a:115c:a1e0::/48")

# Ranges clients treat specially (tailscale net/tsaddr); a node given one of
# these addresses would be unreachable or shadow a service.
RESERVED_IPV4 = (
    IPv4Network("100.100.100.0/24"),  # Quad100 (100.100.100.100) and its neighbourhood
    IPv4Network("100.115.92.0/23"),  # ChromeOS VMs and containers
)
RESERVED_IPV6 = (
    IPv6Network("fd7a:115c:a1e0::53/128"),  # Quad100's IPv6 address
    IPv6Network("fd7a:115c:a1e0:b1a::/64"),  # 4via6 subnet routes
    IPv6Network("fd7a:115c:a1e0:efe3::/64"),  # ephemeral IPv6-only nodes
    IPv6Network("fd7a:115c:a1e0:ab12:4843:cd96:6200::/104"),  # IPv4 mapped to IPv6
)

# Random picks before falling back to a scan, so a nearly full prefix still
# terminates with a clear answer instead of retrying forever.
_RANDOM_TRIES = 32


def allocate_ipv4(
    prefix: IPv4Network, used: Set[int], strategy: AllocationStrategy, rng: Rng
) -> IPv4Address:
    holes = [_bounds(r) for r in RESERVED_IPV4 if r.overlaps(prefix)]
    return IPv4Address(_allocate(prefix, holes, used, strategy, rng, "IPv4"))


def allocate_ipv6(
    prefix: IPv6Network, used: Set[int], strategy: AllocationStrategy, rng: Rng
) -> IPv6Address:
    holes = [_bounds(r) for r in RESERVED_IPV6 if r.overlaps(prefix)]
    return IPv6Address(_allocate(prefix, holes, used, strategy, rng, "IPv6"))


def _bounds(network: IPv4Network | IPv6Network) -> tuple[int, int]:
    return int(network.network_address), int(network.broadcast_address)


def _allocate(
    prefix: IPv4Network | IPv6Network,
    holes: list[tuple[int, int]],
    used: Set[int],
    strategy: AllocationStrategy,
    rng: Rng,
    family: str,
) -> int:
    first, last = _usable_range(prefix)
    taken = used if isinstance(used, SortedInts) else SortedInts(used)
    holes = sorted(holes)
    found: int | None = None
    if first <= last:
        if strategy == "sequential":
            found = _scan(first, last, taken, holes)
        elif strategy == "random":
            found = _random(first, last, taken, holes, rng)
        else:
            raise ValueError(f"unknown allocation strategy {strategy!r}")
    if found is None:
        raise AddressExhausted(f"no free {family} address in {prefix}")
    return found


def _usable_range(prefix: IPv4Network | IPv6Network) -> tuple[int, int]:
    base, size = int(prefix.network_address), prefix.num_addresses
    if size <= 2:  # /31, /32 (and /127, /128): nothing to set aside
        return base, base + size - 1
    # The all-zeros address is the network (or IPv6 subnet-router anycast) and the
    # all-ones one the broadcast; clients and OSes treat both specially.
    return base + 1, base + size - 2


def _scan(lo: int, hi: int, used: SortedInts, holes: list[tuple[int, int]]) -> int | None:
    """Lowest free address in [lo, hi]: a bisection per stretch between reserved ranges."""
    for hole_lo, hole_hi in holes:
        if hole_hi < lo:
            continue
        if hole_lo > hi:
            break
        found = used.first_free(lo, hole_lo - 1)
        if found is not None:
            return found
        lo = hole_hi + 1
    return used.first_free(lo, hi)


def _random(
    lo: int, hi: int, used: SortedInts, holes: list[tuple[int, int]], rng: Rng
) -> int | None:
    for _ in range(_RANDOM_TRIES):
        addr = lo + randbelow(rng, hi - lo + 1)
        if addr not in used and not any(h_lo <= addr <= h_hi for h_lo, h_hi in holes):
            return addr
    # Crowded: continue from a random point and wrap around, which always ends.
    start = lo + randbelow(rng, hi - lo + 1)
    found = _scan(start, hi, used, holes)
    return found if found is not None else _scan(lo, start - 1, used, holes)
