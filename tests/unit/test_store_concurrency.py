"""Two processes writing one database at once (two replicas, or the server and
an admin command): no address, name or single-use key is ever handed out twice."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from server.store import KeyRejected, open_store
from tests.unit.store_backends import Backend
from tests.unit.test_store import add_node, nkey, registration
from tests.unit.test_store_authkeys import new_key

PROCESSES = 2
PER_PROCESS = 25
RELOGINS = 5  # rounds in which every process logs its node in with one shared key


def race(where: str | Path, worker: int, keys: list[int], start: Any, out: Any) -> None:
    """In a child process: log its own node in again with each of the relogin
    keys (all processes at once), then register nodes, each first trying the
    registration key."""
    register_key, relogin_keys = keys[0], keys[1:]
    try:
        with open_store(where) as store:
            own = add_node(store, 500 + worker, "own")
            relogins = 0
            for round_, key_id in enumerate(relogin_keys):
                start.wait(timeout=60)
                try:
                    store.reregister_node(own.id, registration(
                        500 + worker, "own", node_key=nkey(1000 * round_ + 600 + worker),
                        auth_key_id=key_id,
                    ))  # fmt: skip
                    relogins += 1
                except KeyRejected:
                    pass
            start.wait(timeout=60)
            registrations = 0
            for j in range(PER_PROCESS):
                i = 1000 * (worker + 1) + j
                try:
                    add_node(store, i, "box", auth_key_id=register_key)
                    registrations += 1
                except KeyRejected:
                    add_node(store, i, "box")
            out.put((relogins, registrations, None))
    except BaseException as exc:  # reported to the test
        out.put((0, 0, repr(exc)))


def test_two_processes_never_share_an_address_a_name_or_a_single_use_key(
    backend: Backend,
) -> None:
    with backend.open() as store:
        keys = [new_key(store, seed=seed)[1] for seed in range(1 + RELOGINS)]
    where = backend.where()
    ctx = multiprocessing.get_context("spawn")  # no fork of a pool's threads
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    workers = [
        ctx.Process(target=race, args=(where, w, keys, start, out)) for w in range(PROCESSES)
    ]
    for p in workers:
        p.start()
    results = [out.get(timeout=120) for _ in workers]
    for p in workers:
        p.join(timeout=30)
    assert [error for _, _, error in results] == [None] * PROCESSES
    # Each single-use key did its job exactly once, whoever won the race.
    assert sum(relogins for relogins, _, _ in results) == RELOGINS
    assert sum(registrations for _, registrations, _ in results) == 1

    with backend.open() as store:
        nodes = store.list_nodes()
        assert all(key.used for key in store.list_preauth_keys())
    total = PROCESSES * (PER_PROCESS + 1)
    assert len(nodes) == total
    assert len({n.ipv4 for n in nodes}) == len({n.ipv6 for n in nodes}) == total
    assert len({n.given_name for n in nodes}) == total
    assert len([n for n in nodes if n.auth_key_id == keys[0]]) == 1
