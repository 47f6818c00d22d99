"""`TopologyRows.of` lists each node's last conversion, whatever changed
since the last list (joins, leaves, re-conversions, another order), and
looks up only the rows that changed when nodes merely joined after the others."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from gitctl.policy import TopologyNode
from server.tailnet.topologyrows import TopologyRows


@dataclass(frozen=True)
class Record:  # what the rows read of a node record
    id: int
    name: str


def convert(node: Any, approved: tuple[str, ...], *, online: bool) -> TopologyNode:
    return TopologyNode(node.name, node.name, "alice", (), None, None, (), approved, online=online)


class CountingDict(dict[int, TopologyNode]):
    looked_up = 0

    def __getitem__(self, key: int) -> TopologyNode:
        CountingDict.looked_up += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("seed", range(20))
def test_rows_are_the_last_conversions_after_any_changes(seed: int) -> None:
    rnd = random.Random(seed)
    rows = TopologyRows(convert)
    records: dict[int, Record] = {}
    next_id = 1
    for _ in range(60):
        step = rnd.random()
        if step < 0.5 or not records:  # joins, after the others
            for _ in range(rnd.randint(1, 5)):
                records[next_id] = Record(next_id, f"n{next_id}")
                next_id += 1
        elif step < 0.7:  # a record changes (renamed) or the same record comes again
            i = rnd.choice(list(records))
            records[i] = Record(i, f"n{i}-{rnd.randint(0, 2)}")
        elif step < 0.85:  # a node leaves
            del records[rnd.choice(list(records))]
            rows.keep(records)
        for record in records.values():
            rows(record, (), rnd.random() < 0.9)  # reachability moves too
        ids = list(records)
        if rnd.random() < 0.1:
            rnd.shuffle(ids)
        expected = [convert(records[i], (), online=rows._held[i][2]) for i in ids]
        assert rows.of(ids) == expected


def test_joins_after_the_others_look_up_the_newcomers_rows_alone() -> None:
    rows = TopologyRows(convert)
    records = {i: Record(i, f"n{i}") for i in range(1, 1001)}
    for record in records.values():
        rows(record, (), True)
    assert len(rows.of(records)) == 1000
    rows._made = CountingDict(rows._made)
    for batch in range(3):
        CountingDict.looked_up = 0
        for i in range(1001 + 4 * batch, 1005 + 4 * batch):
            records[i] = Record(i, f"n{i}")
            rows(records[i], (), True)
        rows(records[7], (), batch % 2 == 0)  # one node's reachability moved
        listed = rows.of(records)
        assert CountingDict.looked_up <= 5  # 4 newcomers and node 7, not 1,000 rows
        assert listed == [convert(r, (), online=rows._held[r.id][2]) for r in records.values()]
