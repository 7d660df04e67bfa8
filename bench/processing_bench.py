"""Stream processing benchmark: logstore.processing against Bytewax 0.21 and a hand-written loop.

Usage::

    python bench/processing_bench.py [--records N] [--quick] [--json out.json] [--png out.png]

Workloads (one input of N records, default 1,000,000, seeded):

  S1  stateless ``map -> filter -> to``: 4 input partitions of 60-byte values, the map appends a
      byte, the filter keeps 9 in 10, the survivors go to a 4-partition output topic. logstore
      processing with ``exactly_once`` (the default) and ``at_least_once``, one thread; the
      hand-written floor: ``replay`` each partition, map, filter, ``publish_batch`` every 5,000.
  W1  tumbling 60 s event-time window, count per key, with 100, 1,000 and 10,000 keys: one
      input partition, keys drawn uniformly, timestamps 1 ms apart (1M records = 17 windows),
      one result per (key, window) when the window closes, as JSON, to an output topic.
        * logstore processing: ``stream(...).tumbling_window(60_000).count().final().to(...)``,
          exactly-once;
        * hand-written loop (the floor): ``for rec in log.replay()``, a dict per open window,
          closed windows' results ``publish_batch``-ed as JSON;
        * Bytewax 0.21: ``count_window`` with ``TumblingWindower`` and ``EventClock`` over a
          ``TestingSource`` (batch_size 1000) of the same (key, timestamp) items, prepared
          outside the timing, results into a ``TestingSink`` list (no serialization, no disk).
          Its cost grows with the number of live keys, so it runs ``--bytewax-records``
          (default 200,000) records; records/s are comparable;
        * a plain in-memory count (dict of dicts over the prepared items, no I/O): the ceiling.
  R1  recovery: a processor counting per key (keyed state, 200,000 keys, 4 partitions, no
      outputs) runs in a child process until its changelogs hold 1,000,000 committed state
      changes, and is SIGKILLed. Then: time from ``Store.open`` in a fresh process to
      ``run(until_caught_up=True)`` returning (changelog replay, the re-run of the unfinished
      transaction, the rest of the input), and the restore part alone.

Each row runs in a fresh interpreter (this script re-invoked with ``--worker``), so peak RSS is
that row's own. ``vs logstore`` = that row's records/s / logstore processing's records/s in the
same workload (above 1: faster than logstore). Stores use ``fsync="never"`` (a process crash
loses nothing; see README, "Durability"). One run per row: expect +-20% noise on a shared
machine; compare ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in

import _table  # noqa: E402 (bench/, next to this script)

SEED = 20261206
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_MS = 60_000
KEY_COUNTS = (100, 1_000, 10_000)
RECOVERY_KEYS = 200_000
RECOVERY_CHANGES = 1_000_000
PUBLISH_CHUNK = 10_000


# --------------------------------------------------------------------------- data
def s1_values(n: int) -> List[bytes]:
    return [b"%012d" % i + b"v" * 48 for i in range(n)]


def w1_keys(n: int, keys: int) -> List[bytes]:
    rnd = random.Random(SEED + keys)
    return [b"user-%d" % rnd.randrange(keys) for _ in range(n)]


def fill_s1(store: Any, n: int) -> None:
    topic = store.topic("in", partitions=4)
    values = s1_values(n)
    for i in range(0, n, PUBLISH_CHUNK):
        chunk = values[i:i + PUBLISH_CHUNK]
        topic.publish_batch(chunk, keys=[v[:12] for v in chunk])


def fill_w1(store: Any, n: int, keys: int) -> None:
    log = store.topic("in", partitions=1).partitions[0]
    ks = w1_keys(n, keys)
    value = b"x" * 20
    for i in range(0, n, PUBLISH_CHUNK):
        part = ks[i:i + PUBLISH_CHUNK]
        log.append_batch([value] * len(part), keys=part,
                         timestamps_ms=list(range(T0 + i, T0 + i + len(part))))


# --------------------------------------------------------------------------- rows
def row_s1_logstore(d: str, n: int, guarantee: str) -> Dict[str, Any]:
    import logstore
    from logstore import processing as lp

    with logstore.Store.open(d, fsync="never") as store:
        fill_s1(store, n)
        app = lp.Processor(store, "s1", guarantee=guarantee)
        (app.stream("in").map(lambda v: v + b"!").filter(lambda v: v[11] != 55)
         .to("out", partitions=4))
        t = time.perf_counter()
        stats = app.run(until_caught_up=True)
        secs = time.perf_counter() - t
        out = sum(log.end_offset for log in store.topic("out").partitions)
    assert stats["records_in"] == n and out == n - n // 10, (stats["records_in"], out)
    return {"seconds": secs, "records": n, "out": out}


def row_s1_hand(d: str, n: int) -> Dict[str, Any]:
    import logstore

    with logstore.Store.open(d, fsync="never") as store:
        fill_s1(store, n)
        src = store.topic("in")
        dst = store.topic("out", partitions=4)
        t = time.perf_counter()
        out = 0
        for log in src.partitions:
            vals: List[bytes] = []
            keys: List[Optional[bytes]] = []
            for rec in log.replay():
                v = rec.value + b"!"
                if v[11] != 55:
                    vals.append(v)
                    keys.append(rec.key)
                    if len(vals) >= 5_000:
                        dst.publish_batch(vals, keys=keys)
                        out += len(vals)
                        vals, keys = [], []
            if vals:
                dst.publish_batch(vals, keys=keys)
                out += len(vals)
        secs = time.perf_counter() - t
    assert out == n - n // 10
    return {"seconds": secs, "records": n, "out": out}


def _expected_results(n: int, keys: int) -> int:
    """(key, window) pairs of every window that closes (all but the last)."""
    ks = w1_keys(n, keys)
    last = (n - 1) // WINDOW_MS
    return len({(k, i // WINDOW_MS) for i, k in enumerate(ks) if i // WINDOW_MS < last})


def row_w1_logstore(d: str, n: int, keys: int) -> Dict[str, Any]:
    import logstore
    from logstore import processing as lp

    with logstore.Store.open(d, fsync="never") as store:
        fill_w1(store, n, keys)
        app = lp.Processor(store, "w1")
        (app.stream("in").tumbling_window(WINDOW_MS).count().final()
         .to("counts", value=lp.JSON, partitions=1))
        t = time.perf_counter()
        app.run(until_caught_up=True)
        secs = time.perf_counter() - t
        out = store.topic("counts").partitions[0].end_offset
    assert out == _expected_results(n, keys), out
    return {"seconds": secs, "records": n, "out": out}


def row_w1_hand(d: str, n: int, keys: int) -> Dict[str, Any]:
    import logstore

    with logstore.Store.open(d, fsync="never") as store:
        fill_w1(store, n, keys)
        log = store.topic("in").partitions[0]
        dst = store.topic("counts", partitions=1)
        enc = json.JSONEncoder(separators=(",", ":")).encode
        t = time.perf_counter()
        wins: Dict[int, Dict[bytes, int]] = {}
        vals: List[bytes] = []
        ks: List[bytes] = []
        out = 0
        stream_time = -1
        for rec in log.replay():
            ts = rec.timestamp_ms
            if ts > stream_time:
                stream_time = ts
            ws = ts - ts % WINDOW_MS
            d_ = wins.get(ws)
            if d_ is None:
                d_ = wins[ws] = {}
                for old in sorted(w for w in wins if w + WINDOW_MS <= stream_time):
                    for k, c in sorted(wins.pop(old).items()):
                        vals.append(enc({"start": old, "end": old + WINDOW_MS,
                                         "value": c}).encode())
                        ks.append(k)
                    if len(vals) >= 5_000:
                        dst.publish_batch(vals, keys=ks)
                        out += len(vals)
                        vals, ks = [], []
            d_[rec.key] = d_.get(rec.key, 0) + 1
        if vals:
            dst.publish_batch(vals, keys=ks)
            out += len(vals)
        secs = time.perf_counter() - t
    assert out == _expected_results(n, keys), out
    return {"seconds": secs, "records": n, "out": out}


def row_w1_dict(d: str, n: int, keys: int) -> Dict[str, Any]:
    ks = w1_keys(n, keys)
    items = [(k, T0 + i) for i, k in enumerate(ks)]
    t = time.perf_counter()
    wins: Dict[int, Dict[bytes, int]] = {}
    for k, ts in items:
        ws = ts - ts % WINDOW_MS
        d_ = wins.get(ws)
        if d_ is None:
            d_ = wins[ws] = {}
        d_[k] = d_.get(k, 0) + 1
    secs = time.perf_counter() - t
    return {"seconds": secs, "records": n, "out": sum(map(len, wins.values()))}


def row_w1_bytewax(d: str, n: int, keys: int) -> Dict[str, Any]:
    from datetime import datetime, timedelta, timezone

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, count_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    ks = w1_keys(n, keys)
    base = datetime.fromtimestamp(T0 / 1000, tz=timezone.utc)
    items = [(k.decode(), base + timedelta(milliseconds=i)) for i, k in enumerate(ks)]
    out: List[Any] = []
    flow = Dataflow("w1")
    inp = op.input("in", flow, TestingSource(items, batch_size=1000))
    clock = EventClock(lambda x: x[1], wait_for_system_duration=timedelta(seconds=0))
    windower = TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=base)
    counts = count_window("count", inp, clock, windower, lambda x: x[0])
    op.output("out", counts.down, TestingSink(out))
    t = time.perf_counter()
    run_main(flow)
    secs = time.perf_counter() - t
    # Bytewax closes every window at the end of the input (logstore leaves the last one open).
    return {"seconds": secs, "records": n, "out": len(out)}


def row_r1(d: str, n: int) -> Dict[str, Any]:
    """Recovery: SIGKILL a counting processor once its changelogs hold RECOVERY_CHANGES
    committed state changes, then time the restart to caught-up."""
    import logstore
    from logstore import processing as lp

    def build(store: Any) -> Any:
        app = lp.Processor(store, "r1")

        def count(value: bytes, state: Any) -> bytes:
            state.set("n", state.get("n", 0) + 1)
            return value

        app.stream("in").map(count, stateful=True, name="counts")
        return app

    rnd = random.Random(SEED)
    with logstore.Store.open(d, fsync="never") as store:
        topic = store.topic("in", partitions=4)
        for i in range(0, n, PUBLISH_CHUNK):
            m = min(PUBLISH_CHUNK, n - i)
            topic.publish_batch([b"x" * 20] * m,
                                keys=[b"k%d" % rnd.randrange(RECOVERY_KEYS) for _ in range(m)])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with logstore.Store.open(d, fsync="never") as store:
                build(store).run(until_caught_up=True, handle_signals=False)
        finally:
            os._exit(0)

    def changes() -> int:
        total = 0
        base = os.path.join(d, "internal", "processing", "r1", "stage-0")
        for p in range(4):
            path = os.path.join(base, str(p))
            if os.path.exists(os.path.join(path, "logstore.meta")):
                log = logstore.Log.open(path, readonly=True)
                total += log.end_offset
                log.close()
        return total

    at_kill = 0
    while True:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise RuntimeError("the processor finished before 1M state changes: raise --records")
        at_kill = changes()
        if at_kill >= RECOVERY_CHANGES:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    with logstore.Store.open(d, readonly=True) as store:
        committed_in = lp.describe(store)[0]["records_in"]
    t = time.perf_counter()
    with logstore.Store.open(d, fsync="never") as store:
        app = build(store)
        stats = app.run(until_caught_up=True)
    secs = time.perf_counter() - t
    # The restore part alone: a fresh replay of the same changelogs (what a restart reads).
    t = time.perf_counter()
    from logstore.processing import changelog as C

    with logstore.Store.open(d, readonly=True) as store:
        restored = 0
        for p in range(4):
            log = C.open_changelog_readonly(store.root, "r1", 0, p)
            state, _commit, _tail = C.read_changelog(log)
            restored += len(state)
            log.close()
    replay_secs = time.perf_counter() - t
    return {"seconds": secs, "records": n, "changelog_records": at_kill,
            "state_entries": restored, "replay_seconds": replay_secs,
            "redone": sum(t_["redone_transactions"] for t_ in stats["tasks"]),
            "records_after_restart": stats["records_in"] - committed_in}


ROWS = {
    "s1/logstore": lambda d, a: row_s1_logstore(d, a["n"], "exactly_once"),
    "s1/logstore-alo": lambda d, a: row_s1_logstore(d, a["n"], "at_least_once"),
    "s1/hand": lambda d, a: row_s1_hand(d, a["n"]),
    "w1/logstore": lambda d, a: row_w1_logstore(d, a["n"], a["keys"]),
    "w1/hand": lambda d, a: row_w1_hand(d, a["n"], a["keys"]),
    "w1/bytewax": lambda d, a: row_w1_bytewax(d, a["n"], a["keys"]),
    "w1/dict": lambda d, a: row_w1_dict(d, a["n"], a["keys"]),
    "r1/logstore": lambda d, a: row_r1(d, a["n"]),
}


def run_worker(spec: Dict[str, Any]) -> None:
    d = tempfile.mkdtemp(dir=spec["root"])
    try:
        result = ROWS[spec["row"]](d, spec)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- driver
def bytewax_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("bytewax")
    except Exception:
        return None


def build_plan(n: int, bytewax_n: int, have_bytewax: bool, only: List[str]) -> List[Dict]:
    plan: List[Dict[str, Any]] = []
    if "S1" in only:
        for row, label in (("s1/logstore", "logstore processing (exactly-once)"),
                           ("s1/logstore-alo", "logstore processing (at-least-once)"),
                           ("s1/hand", "hand-written loop (replay, publish_batch)")):
            plan.append({"workload": "S1 map->filter->to", "row": row, "system": label, "n": n})
    if "W1" in only:
        for keys in KEY_COUNTS:
            wl = f"W1 tumbling 60 s count, {keys:,} keys"
            plan.append({"workload": wl, "row": "w1/logstore", "keys": keys, "n": n,
                         "system": "logstore processing (exactly-once)"})
            plan.append({"workload": wl, "row": "w1/hand", "keys": keys, "n": n,
                         "system": "hand-written loop (replay, dict, publish_batch)"})
            if have_bytewax:
                plan.append({"workload": wl, "row": "w1/bytewax", "keys": keys,
                             "n": min(n, bytewax_n),
                             "system": f"Bytewax {bytewax_version()} count_window"})
            plan.append({"workload": wl, "row": "w1/dict", "keys": keys, "n": n,
                         "system": "in-memory dict count (no I/O)"})
    if "R1" in only:
        plan.append({"workload": "R1 recovery after SIGKILL", "row": "r1/logstore",
                     "n": max(n + n // 5, 1_250_000), "system": "logstore processing"})
    return plan


def run_plan(plan: List[Dict[str, Any]], root: str) -> List[Dict[str, Any]]:
    results = []
    for spec in plan:
        spec = dict(spec, root=root)
        print(f"  {spec['workload']:38} {spec['system']} ...", end="", flush=True)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                              json.dumps(spec)], capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(" FAILED")
            print(out.stdout[-2000:] + out.stderr[-4000:])
            results.append(dict(spec, error=(out.stderr or out.stdout)[-300:]))
            continue
        r = json.loads(line[len("RESULT "):])
        r.update(spec)
        r["rate"] = r["records"] / r["seconds"] if r["seconds"] else 0.0
        print(f" {r['rate']:,.0f} records/s" if spec["row"] != "r1/logstore" else
              f" {r['seconds']:.2f} s", flush=True)
        results.append(r)
    return results


def add_ratios(results: List[Dict[str, Any]]) -> None:
    base = {r["workload"]: r["rate"] for r in results
            if r["row"] in ("s1/logstore", "w1/logstore") and "rate" in r}
    for r in results:
        b = base.get(r["workload"])
        if b and "rate" in r:
            r["ratio"] = r["rate"] / b


def format_table(results: List[Dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r["row"] == "r1/logstore" or "error" in r:
            continue
        n = f"{r['records']:,}"
        lines.append([r["workload"], r["system"], n, f"{r['rate']:,.0f}",
                      f"{r['ratio']:.2f}" if "ratio" in r else "",
                      f"{r['peak_rss_mb']:.0f}"])
    table = _table.render(["workload", "system", "records", "records/s", "vs logstore",
                           "peak RSS MB"], lines, left={0, 1})
    for r in results:
        if r["row"] == "r1/logstore" and "error" not in r:
            table += (
                f"\n\nR1 recovery: SIGKILL at {r['changelog_records']:,} changelog records "
                f"(state changes + commit records; {r['state_entries']:,} live keys); restart "
                f"to caught-up {r['seconds']:.2f} s, of which replaying the changelogs "
                f"{r['replay_seconds']:.2f} s ({r['changelog_records'] / r['replay_seconds']:,.0f}"
                f" changelog records/s); {r['records_after_restart']:,} input records processed "
                f"after the restart ({r['redone']} unfinished transactions redone); peak RSS "
                f"{r['peak_rss_mb']:.0f} MB")
    return table


def png(results: List[Dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--png: matplotlib is not installed (pip install -e '.[bench]'); skipped")
        return
    rows = [r for r in results if "rate" in r and r["row"] != "r1/logstore"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            for r in rows:
                if r["workload"] == w and r["system"] == s:
                    xs.append(j + i * width)
                    ys.append(r["rate"] / 1000)
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))])
    ax.set_xticklabels(workloads, rotation=10, fontsize=8)
    ax.set_ylabel("thousand records/s")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="200,000 records")
    ap.add_argument("--bytewax-records", type=int, default=200_000)
    ap.add_argument("--only", default="S1,W1,R1", help="workloads, e.g. W1 or S1,R1")
    ap.add_argument("--json")
    ap.add_argument("--png")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    n = 200_000 if args.quick else args.records
    have_bytewax = bytewax_version() is not None
    root = tempfile.mkdtemp(prefix="logstore-pbench-")
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
           "bytewax": bytewax_version() or "not installed"}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    started = time.perf_counter()
    try:
        results = run_plan(build_plan(n, args.bytewax_records, have_bytewax,
                                      args.only.upper().split(",")), root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    add_ratios(results)
    print()
    print(format_table(results))
    notes = [
        "Bytewax rows run --bytewax-records records (its rate falls with the number of live "
        "keys); it reads a prepared Python list and writes to a list: no disk, no "
        "serialization, no exactly-once bookkeeping, one worker.",
        "The in-memory dict row is the ceiling of any Python loop over these records: no "
        "reading, no windows closing, no output.",
    ]
    if not have_bytewax:
        notes.insert(0, "Bytewax is not installed (pip install 'bytewax==0.21.*'): rows skipped.")
    print("\nnotes:")
    for note in notes:
        print(f"  - {note}")
    print(f"\nload average (1 min) at start {env['loadavg_1m_at_start']}, at end "
          f"{round(os.getloadavg()[0], 2)}; total wall time {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results, "notes": notes}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        png(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
