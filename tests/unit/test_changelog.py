"""What a session reads from the change log: the same ids among its peers as
the whole slice since its generation gave, and no more work than its peers
when the slice is longer (a sparse session that slept through thousands of
registrations)."""

from __future__ import annotations

import random

import pytest

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
