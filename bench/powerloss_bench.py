"""Power-loss sweep speed (logstore.testing.sweep; not a test).

    python bench/powerloss_bench.py [--repeat 3] [--json out.json] [--scratch DIR]

Each row sweeps one small workload: the workload runs once on the simulated file system, then
every crash point (the power cut before each of its I/O operations, and after the last) is
materialized, reopened (crash recovery) and checked. **crash points/s** = crash points checked /
(recording + checking time), the median of ``--repeat`` runs (each run in this process, one
after the other); **ops** = operations of the workload (crash points = ops + 1). Scratch
directories go to /dev/shm when it is there (``--scratch`` to choose).

Rows (default options, so every log preallocates its 4 MiB tail):
* ``log, 100 appends``: ``Log``, ``fsync="always"``, 100 single appends each acknowledged;
  check ``end_offset >= len(acked)`` (``min``) or rebuild the state and compare with the
  acknowledged values (``rebuild``, replays every record).
* ``store, 100 publishes``: the same through a ``Store`` topic (topic + internal offsets log).
* ``log, 1000 appends, 200 sampled``: ``points=200`` of a 10x longer workload.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _table import render  # noqa: E402

import logstore  # noqa: E402
from logstore.testing import rebuild, sweep  # noqa: E402
from logstore.testing.targets import is_tmpfs, scratch_base  # noqa: E402


def log_appends(n: int) -> Callable[[Any, Any], None]:
    def workload(log: Any, ack: Callable[[Any], None]) -> None:
        for i in range(n):
            log.append(b"%d" % i)
            ack(i)
    return workload


def store_publishes(n: int) -> Callable[[Any, Any], None]:
    def workload(store: Any, ack: Callable[[Any], None]) -> None:
        topic = store.topic("t")
        for i in range(n):
            topic.publish(b"%d" % i)
            ack(i)
    return workload


def check_min(target: Any, acked: List[int]) -> None:
    log = target.topic("t").partitions[0] if isinstance(target, logstore.Store) else target
    assert log.end_offset >= len(acked)


def check_rebuild(target: Any, acked: List[int]) -> None:
    source = target.topic("t") if isinstance(target, logstore.Store) else target
    r = rebuild(source, lambda s, e: s + e, 0, decode=lambda rec: int(rec.value), acked=acked)
    assert r.acked_state == sum(acked)


PHASES = ("materialize", "reopen", "check", "close", "cleanup")

ROWS = [
    ("log, 100 appends", "min", "log", log_appends(100), check_min, None),
    ("log, 100 appends", "rebuild", "log", log_appends(100), check_rebuild, None),
    ("store, 100 publishes", "min", "store", store_publishes(100), check_min, None),
    ("store, 100 publishes", "rebuild", "store", store_publishes(100), check_rebuild, None),
    ("log, 1000 appends, 200 sampled", "rebuild", "log", log_appends(1000), check_rebuild, 200),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--scratch", metavar="DIR")
    args = ap.parse_args()
    scratch = scratch_base(args.scratch)
    where = scratch or "the temporary directory"
    print(f"scratch: {where} ({'tmpfs' if scratch and is_tmpfs(scratch) else 'not tmpfs'}); "
          f"{args.repeat} runs per row, median shown; cpus: {os.cpu_count()}")
    lines, results = [], []
    for name, check_name, kind, workload, check, points in ROWS:
        runs = []
        for _ in range(args.repeat):
            report = sweep(workload, check, kind=kind, options={"fsync": "always"},
                           points=points, scratch=scratch)
            runs.append(report)
        rates = [r.points_per_s for r in runs]
        med = sorted(runs, key=lambda r: r.points_per_s)[len(runs) // 2]
        per_point = {k: v * 1000 / med.checked for k, v in med.timings.items()}
        row: Dict[str, Any] = {
            "workload": name, "check": check_name, "ops": med.ops, "points": med.checked,
            "duplicates": med.duplicates, "points_per_s": statistics.median(rates),
            "points_per_s_runs": rates, "record_ms": med.record_s * 1000,
            "ms_per_point": med.check_s * 1000 / med.checked, "ms_per_point_by_phase": per_point,
        }
        results.append(row)
        lines.append([name, check_name, str(med.ops), str(med.checked),
                      f"{row['points_per_s']:,.0f}",
                      " ".join(f"{x:,.0f}" for x in rates), f"{row['record_ms']:.0f}",
                      f"{row['ms_per_point']:.2f}"]
                     + [f"{per_point.get(k, 0):.2f}" for k in PHASES])
    print(render(["workload (fsync=always)", "check", "ops", "crash points", "points/s",
                  "runs", "record ms", "ms/point", *[f"{k} ms" for k in PHASES]],
                 lines, left={0, 1}))
    print("ms/point: mean time per crash point: writing the crash state (materialize), reopening "
          "(crash recovery), the check, closing, removing the copy (cleanup)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scratch": where, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
