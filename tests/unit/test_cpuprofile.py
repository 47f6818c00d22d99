"""bench/cpuprofile.py: a module run as `python -m` would, profiled by CPU time."""

from __future__ import annotations

import pstats
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKLOAD = """
import sys, time

def spin():
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass

def nap():
    time.sleep(0.6)

assert sys.argv[1:] == ["--flag", "x"], sys.argv
spin()
nap()
"""


def test_a_module_is_profiled_by_cpu_time_not_by_time_spent_waiting(tmp_path: Path) -> None:
    (tmp_path / "workload_mod.py").write_text(WORKLOAD)
    out = tmp_path / "run.prof"
    subprocess.run(
        [sys.executable, "-m", "bench.cpuprofile", "-o", str(out), "-m", "workload_mod"]
        + ["--flag", "x"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    stats = pstats.Stats(str(out)).stats
    cumulative = {name: row[3] for (_, _, name), row in stats.items()}
    assert cumulative["spin"] >= 0.15
    # Sleeping costs no CPU: a wall-clock profile would charge nap() 0.6 s.
    assert cumulative["nap"] < 0.1
