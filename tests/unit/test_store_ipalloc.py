"""Address allocation: never twice, never a reserved address, clear when full."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.store import AddressExhausted, AllocationStrategy
from server.store.ipalloc import RESERVED_IPV4, RESERVED_IPV6, allocate_ipv4, allocate_ipv6
from tests.unit.store_backends import Backend
from tests.unit.test_store import add_node


def no_rng(n: int) -> bytes:
    raise AssertionError("sequential allocation must not use randomness")


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def test_small_prefix_fills_up_then_says_which_prefix_is_full(backend: Backend) -> None:
    with backend.open(ipv4_prefix=IPv4Network("100.64.0.0/30")) as store:
        a, b = add_node(store, 1, "a"), add_node(store, 2, "b")
        # .0 is the network and .3 the broadcast address
        assert [a.ipv4, b.ipv4] == [IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2")]
        with pytest.raises(AddressExhausted) as excinfo:
            add_node(store, 3, "c")
        assert str(excinfo.value) == "no free IPv4 address in 100.64.0.0/30"
        assert len(store.list_nodes()) == 2  # nothing half-written
        store.delete_node(a.id)
        assert add_node(store, 3, "c").ipv4 == a.ipv4  # lowest free again


def test_ipv6_exhaustion_is_reported_too(backend: Backend) -> None:
    prefix = IPv6Network("fd7a:115c:a1e0::/127")
    with backend.open(ipv6_prefix=prefix) as store:
        add_node(store, 1, "a")
        add_node(store, 2, "b")
        with pytest.raises(AddressExhausted, match=r"no free IPv6 address in fd7a:115c:a1e0::/127"):
            add_node(store, 3, "c")


def test_a_family_can_be_turned_off(backend: Backend) -> None:
    with backend.open(ipv6_prefix=None) as store:
        node = add_node(store, 1)
    assert node.ipv4 is not None and node.ipv6 is None


def test_sequential_skips_tailscale_service_and_chromeos_ranges() -> None:
    around_quad100 = IPv4Network("100.100.96.0/21")
    used = set(range(int(IPv4Address("100.100.96.1")), int(IPv4Address("100.100.100.0"))))
    assert allocate_ipv4(around_quad100, used, "sequential", no_rng) == IPv4Address("100.100.101.0")
    chromeos = IPv4Network("100.115.92.0/22")
    assert allocate_ipv4(chromeos, set(), "sequential", no_rng) == IPv4Address("100.115.94.0")
    with pytest.raises(AddressExhausted, match="no free IPv4 address in 100.100.100.96/27"):
        allocate_ipv4(IPv4Network("100.100.100.96/27"), set(), "sequential", no_rng)


def test_sequential_skips_quad100_ipv6() -> None:
    prefix = IPv6Network("fd7a:115c:a1e0::/120")
    used = set(range(int(IPv6Address("fd7a:115c:a1e0::1")), int(IPv6Address("fd7a:115c:a1e0::53"))))
    assert allocate_ipv6(prefix, used, "sequential", no_rng) == IPv6Address("fd7a:115c:a1e0::54")


def test_random_allocation_is_deterministic_with_a_seeded_rng(backend: Backend) -> None:
    def addresses(name: str, seed: int) -> list[tuple[object, object]]:
        rng = seeded(seed)
        with backend.open(name, allocation="random", rng=rng.randbytes) as store:
            return [(n.ipv4, n.ipv6) for n in (add_node(store, i, "n") for i in range(20))]

    first, again, other = addresses("a", 7), addresses("b", 7), addresses("c", 8)
    assert first == again and first != other
    assert len(set(first)) == 20
    for v4, v6 in first:
        assert v4 in IPv4Network("100.64.0.0/10") and v6 in IPv6Network("fd7a:115c:a1e0::/48")


def test_random_allocation_in_a_crowded_prefix_still_finds_the_last_address() -> None:
    prefix = IPv4Network("100.64.0.0/24")
    hosts = [int(a) for a in prefix.hosts()]
    last_free = hosts[137]
    used = set(hosts) - {last_free}
    got = allocate_ipv4(prefix, used, "random", seeded(1).randbytes)
    assert int(got) == last_free
    with pytest.raises(AddressExhausted):
        allocate_ipv4(prefix, set(hosts), "random", seeded(1).randbytes)


@settings(deadline=None)  # the reference answer is a brute-force scan
@given(
    strategy=st.sampled_from(["sequential", "random"]),
    prefix_len=st.integers(min_value=19, max_value=30),
    base=st.sampled_from(["100.64.0.0", "100.100.96.0", "100.115.88.0"]),
    taken=st.sets(st.integers(min_value=0, max_value=300), max_size=200),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_allocation_never_returns_a_used_or_reserved_address(
    strategy: AllocationStrategy, prefix_len: int, base: str, taken: set[int], seed: int
) -> None:
    prefix = IPv4Network(f"{base}/{prefix_len}", strict=False)
    first = int(prefix.network_address) + 1
    last = int(prefix.broadcast_address) - 1
    used = {first + t for t in taken if first + t <= last}
    holes = [(int(r.network_address), int(r.broadcast_address)) for r in RESERVED_IPV4]
    free = [
        a
        for a in range(first, last + 1)
        if a not in used and not any(lo <= a <= hi for lo, hi in holes)
    ]
    try:
        got = int(allocate_ipv4(prefix, used, strategy, seeded(seed).randbytes))
    except AddressExhausted:
        assert free == []
        return
    assert got in free
    if strategy == "sequential":
        assert got == free[0]


@pytest.mark.parametrize("prefix", ["fd7a:115c:a1e0:b1a::/63", "fd7a:115c:a1e0:efe2::/63"])
def test_random_ipv6_never_lands_in_a_reserved_range(prefix: str) -> None:
    # Half of each of these prefixes is reserved (4via6, ephemeral IPv6-only).
    network = IPv6Network(prefix)
    rng = seeded(3)
    for _ in range(200):
        got = allocate_ipv6(network, set(), "random", rng.randbytes)
        assert got in network and not any(got in r for r in RESERVED_IPV6)
