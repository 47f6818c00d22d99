"""Two processes registering into one database at once (two replicas, or the
server and an admin command): no address, name or single-use key twice."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from server.store import KeyRejected, open_store
from tests.unit.store_backends import Backend
from tests.unit.test_store import add_node
from tests.unit.test_store_authkeys import new_key

PROCESSES = 2
PER_PROCESS = 25


def register_many(where: str | Path, worker: int, key_id: int, start: Any, out: Any) -> None:
    """In a child process: register nodes, each first trying the single-use key."""
    try:
        with open_store(where) as store:
            start.wait(timeout=60)
            with_key = 0
            for j in range(PER_PROCESS):
                i = 1000 * (worker + 1) + j
                try:
                    add_node(store, i, "box", auth_key_id=key_id)
                    with_key += 1
                except KeyRejected:
                    add_node(store, i, "box")
            out.put((worker, with_key, None))
    except BaseException as exc:  # reported to the test
        out.put((worker, 0, repr(exc)))


def test_two_processes_never_share_an_address_a_name_or_a_single_use_key(
    backend: Backend,
) -> None:
    with backend.open() as store:
        _, key_id = new_key(store)
    where = backend.where()
    ctx = multiprocessing.get_context("spawn")  # no fork of a pool's threads
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    workers = [
        ctx.Process(target=register_many, args=(where, w, key_id, start, out))
        for w in range(PROCESSES)
    ]
    for p in workers:
        p.start()
    results = [out.get(timeout=120) for _ in workers]
    for p in workers:
        p.join(timeout=30)
    assert [error for _, _, error in results] == [None] * PROCESSES
    assert sum(with_key for _, with_key, _ in results) == 1

    with backend.open() as store:
        nodes = store.list_nodes()
        assert store.list_preauth_keys()[0].used
    total = PROCESSES * PER_PROCESS
    assert len(nodes) == total
    assert len({n.ipv4 for n in nodes}) == len({n.ipv6 for n in nodes}) == total
    assert len({n.given_name for n in nodes}) == total
    assert len([n for n in nodes if n.auth_key_id == key_id]) == 1
