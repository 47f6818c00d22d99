"""Run a module with named functions timed on the CPU clock, between two SIGUSR1s.

    python -m bench.phasecpu OUT.json -m server.cli serve ...

The first SIGUSR1 starts counting, the second writes OUT.json: per function,
its calls and the thread CPU spent inside it (nested calls counted in both),
and the event loop's turns. cProfile charges ~1 us to every Python call and so
inflates a path of many small calls; this charges only the few functions
named here (one clock read on each side), so what they take adds up to about
the process's own CPU. bench_fanout --phases DIR runs the server under it.
"""

from __future__ import annotations

import functools
import importlib
import json
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

# (module, class, method): the parts of an endpoint change, outermost first.
PHASES = [
    ("asyncio.base_events", "BaseEventLoop", "_run_once"),
    ("selectors", "EpollSelector", "select"),
    ("asyncio.selector_events", "_SelectorSocketTransport", "write"),
    ("asyncio.selector_events", "_SelectorSocketTransport", "_read_ready"),
    ("server.edge.control_conn", "ControlConnection", "_receive"),
    ("server.protocol.noise", "NoiseTransport", "receive_data"),
    ("server.edge.h2_codec", "ServerCodec", "receive_data"),
    ("server.edge.control_conn", "ControlConnection", "_start"),
    ("server.edge.control_send", "ControlSends", "_write_out"),
    ("server.edge.control_send", "ControlSends", "_send_now"),
    ("server.control", "ControlHandler", "answer_now"),
    ("server.control", "ControlHandler", "_map"),
    ("server.tailnet.registry", "NodeRegistry", "update_from_map"),
    ("server.store._nodetables", "NodeTables", "update_from_map"),
    ("server.tailnet.registry", "NodeRegistry", "publish"),
    ("server.tailnet.hubchanges", "TailnetChanges", "apply"),
    ("server.tailnet.hubsettle", "TailnetSettle", "_notify_volatile"),
    ("server.tailnet.handle", "Deliveries", "_run"),
    ("server.tailnet.wave", "VolatileWave", "__call__"),
    ("server.map_streams", "MapStreams", "_deliver"),
    ("server.protocol.mapframe", "MapFrameEncoder", "encode"),
    ("server.tailnet.keepalives", "KeepAlives", "_fire"),
]


def _timed(fn: Callable[..., Any], tally: list[int]) -> Callable[..., Any]:
    clock = time.thread_time_ns

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            tally[0] += 1
            tally[1] += clock() - begin

    return timed


def main() -> None:
    out = Path(sys.argv[1])
    if sys.argv[2] != "-m":
        raise SystemExit("usage: python -m bench.phasecpu OUT.json -m MODULE [ARGS...]")
    module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
    tallies: dict[str, list[int]] = {}
    originals: dict[str, tuple[type, str, Callable[..., Any]]] = {}
    for mod, cls_name, name in PHASES:
        cls = getattr(importlib.import_module(mod), cls_name)
        key = f"{cls_name}.{name}"
        originals[key] = (cls, name, cls.__dict__[name])
    started = [0, 0.0]

    def toggle(_sig: int, _frame: FrameType | None) -> None:
        if not started[0]:
            started[0], started[1] = 1, time.process_time()
            for key, (cls, name, fn) in originals.items():
                tallies[key] = [0, 0]
                setattr(cls, name, _timed(fn, tallies[key]))
            return
        for cls, name, fn in originals.values():
            setattr(cls, name, fn)
        process = time.process_time() - started[1]
        started[0] = 0
        phases = {k: {"calls": c, "cpu_us": round(ns / 1e3)} for k, (c, ns) in tallies.items()}
        out.write_text(json.dumps({"process_cpu_us": round(process * 1e6), **phases}, indent=1))

    signal.signal(signal.SIGUSR1, toggle)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
