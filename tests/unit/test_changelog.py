"""What a session reads from the change log: the same ids among its peers as
the whole slice since its generation gave, and no more work than its peers
when the slice is longer (a sparse session that slept through thousands of
registrations)."""

from __future__ import annotations

import random

import pytest

from gitctl.policy.viewmaps import GroupPeers
from server.tailnet.changelog import ChangeLog


def test_among_its_peers_a_session_reads_what_the_slice_said() -> None:
    rng = random.Random(11)
    log = ChangeLog()
    log.KEEP = 64  # trimmed often
    gens = [log.gen]
    for _ in range(400):
        log.record(rng.sample(range(50), rng.randint(0, 5)))
        gens.append(log.gen)
        gen = rng.choice(gens)
        peers = set(rng.sample(range(50), rng.randint(0, 20)))
        held = set(rng.sample(range(50), rng.randint(0, 20)))
        whole = log.since(gen)
        among = log.since_among(gen, peers, held)
        if whole is None:
            assert among is None
            continue
        assert among is not None
        looked_at = peers | held
        assert set(among) & looked_at == set(whole) & looked_at


def test_a_long_slice_costs_a_session_its_peers_not_the_slice() -> None:
    log = ChangeLog()
    gen = log.gen
    for node_id in range(5000):  # registrations the session slept through
        log.record((node_id, node_id))
    log.record((7,))
    among = log.since_among(gen + 9000, {7, 4600, 12}, {})
    assert among is not None
    assert sorted(among) == [7, 4600]
    assert log.since_among(gen, {}, {}) == []  # no peers: nothing to read


@pytest.mark.parametrize("keep", [4, 8])
def test_a_session_behind_the_kept_log_is_told_to_look_at_everything(keep: int) -> None:
    log = ChangeLog()
    log.KEEP = keep
    log.record(range(3 * keep))
    assert log.since_among(0, {1}, {}) is None


class CountingDict(dict[int, int]):
    """The log's `_last`, counting the lookups made in it."""

    lookups = 0

    def get(self, key: int, default: int | None = None) -> int | None:  # type: ignore[override]
        CountingDict.lookups += 1
        return super().get(key, default)


def _groups(members: int, size: int) -> list[dict[int, object]]:
    """Groups as a view index shares them among their views (GroupPeers.group)."""
    return [{m: object() for m in range(g, g + size)} for g in range(0, members, size)]


def test_group_peers_read_what_the_slice_said() -> None:
    rng = random.Random(5)
    log = ChangeLog()
    log.KEEP = 256
    groups = _groups(120, 6)
    gens = [log.gen]
    for _ in range(300):
        log.record(rng.sample(range(130), rng.randint(0, 4)))
        gens.append(log.gen)
        for _ in range(3):  # sessions of a wave: the log stands still
            gen = rng.choice(gens)
            group = rng.choice(groups)
            viewer = rng.choice(list(group))
            peers = GroupPeers(group, viewer)
            held = peers if rng.random() < 0.5 else GroupPeers(rng.choice(groups), viewer)
            whole = log.since(gen)
            among = log.since_among(gen, peers, held)
            if whole is None:
                assert among is None
                continue
            assert among is not None
            looked_at = set(peers) | set(held)
            assert set(among) & looked_at == set(whole) & looked_at


def test_after_a_registration_storm_a_group_is_looked_at_once_not_once_per_session() -> None:
    log = ChangeLog()
    log._last = CountingDict()
    groups = _groups(5000, 25)
    # Each session caught up when its group's last node joined; the other
    # groups' joins after that did not wake it.
    sessions = []
    for group in groups:
        log.record(group)
        sessions += [(GroupPeers(group, viewer), log.gen) for viewer in group]
    CountingDict.lookups = 0
    for peers, gen in sessions:  # a commit's wave: every session steps
        among = log.since_among(gen, peers, peers)
        assert among is not None and not set(among) & set(peers)
    # A lookup per member of each group once (the last two groups' sessions
    # read their short slices), not one per peer of each session (24 x 5,000).
    assert CountingDict.lookups == 5000 - 2 * 25
    # A node that changes since is read by its group's sessions.
    log.record((7,))
    peers, gen = sessions[3]
    assert log.since_among(gen, peers, peers) == [7]
