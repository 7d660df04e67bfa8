"""Event sourcing by key: ``Log.replay_key`` benchmark (not a test).

    python bench/key_bench.py [--records 10000000] [--events 100] [--compression none|zstd]
                              [--dir DIR] [--keep] [--json]

A log of N records (100-byte values, batches of 1000, 64 MiB segments) whose keys are
``agg-<i mod N/E>``: every key ("aggregate") has E events, spread evenly over the whole log (one
every N/E records: the worst case for a lookup, every event in another batch and the events in
every segment). Then, each in a fresh process (the page cache is warm: the log was just
written):

1. ``replay_key`` of one key by a writer that finds no key index yet: it scans every sealed
   segment once, builds and saves its index (the one-off cost of the first replay_key).
2. the same process, 200 more keys: the target (< 10 ms for 100 events out of 10M records).
3. a new writer process (the saved ``.keyindex`` files): its first replay_key, then 200 keys.
4. a read-only process: the same.
5. the baseline: ``[r for r in log.replay() if r.key == k]`` (a scan of the partition).
6. the active segment (no file: an in-memory index extended as it grows) against a plain scan
   of it: the first replay_key after open (indexes the whole active segment), and a replay_key
   after each 1000 appended records (indexes only those), vs a filtered replay of the segment.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH = 1000
VALUE = b"v" * 100


def build(path: str, records: int, events: int, compression: str) -> float:
    import logstore

    keys = max(1, records // events)
    t = time.perf_counter()
    with logstore.Log.open(path, fsync="never", compression=compression,
                           retention_check_interval_s=0) as log:
        for base in range(0, records, BATCH):
            n = min(BATCH, records - base)
            log.append_batch([VALUE] * n, keys=[b"agg-%d" % ((base + j) % keys)
                                                for j in range(n)])
    return time.perf_counter() - t


def _ms(xs):
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000, 3),
            "max_ms": round(xs[-1] * 1000, 3)}


def phase_queries(path: str, readonly: bool, events: int, keys: int, n: int) -> dict:
    """In a fresh process: open, one replay_key (timed alone), then ``n`` random keys."""
    import logstore

    rng = random.Random(1)
    t0 = time.perf_counter()
    log = logstore.Log.open(path, readonly=readonly, fsync="never",
                            retention_check_interval_s=0)
    opened = time.perf_counter() - t0
    t = time.perf_counter()
    first = log.replay_key(b"agg-%d" % rng.randrange(keys))
    first_s = time.perf_counter() - t
    assert len(first) == events, len(first)
    times = []
    for _ in range(n):
        k = b"agg-%d" % rng.randrange(keys)
        t = time.perf_counter()
        recs = log.replay_key(k)
        times.append(time.perf_counter() - t)
        assert len(recs) == events and all(r.key == k for r in recs), (k, len(recs))
    log.close()
    return {"open_ms": round(opened * 1000, 2), "first_ms": round(first_s * 1000, 2),
            **_ms(times), "queries": n}


def phase_scan(path: str, events: int) -> dict:
    import logstore

    with logstore.Log.open(path, readonly=True) as log:
        t = time.perf_counter()
        recs = [r for r in log.replay() if r.key == b"agg-7"]
        s = time.perf_counter() - t
    assert len(recs) == events
    return {"scan_ms": round(s * 1000, 1)}


def phase_active(path: str) -> dict:
    """The active segment: in-memory index (first build, then per 1000 appends) vs a plain
    filtered replay of the segment."""
    import logstore

    log = logstore.Log.open(path, fsync="never", retention_check_interval_s=0)
    seg = log.segments()[-1]
    base = seg["base_offset"]
    records = log.end_offset - base
    keys = sorted({b"agg-%d" % i for i in range(50)})
    t = time.perf_counter()
    first = log.replay_key(keys[0], base)
    first_s = time.perf_counter() - t
    grow, scans = [], []
    for i in range(20):
        log.append_batch([VALUE] * BATCH, keys=[b"agg-%d" % (j % 997) for j in range(BATCH)])
        k = keys[i % len(keys)]
        t = time.perf_counter()
        got = log.replay_key(k, base)
        grow.append(time.perf_counter() - t)
        if i < 5:
            t = time.perf_counter()
            want = [r for r in log.replay(base) if r.key == k]
            scans.append(time.perf_counter() - t)
            assert got == want
    log.close()
    return {"active_records": records, "active_bytes": seg["size"],
            "first_replay_key_ms": round(first_s * 1000, 2),
            "replay_key_after_1000_appends": _ms(grow),
            "filtered_replay_of_segment": _ms(scans), "first_hits": len(first)}


def fresh(phase: str, **kw) -> dict:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--phase", phase,
                        "--args", json.dumps(kw)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"phase {phase} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--events", type=int, default=100, help="records per key")
    ap.add_argument("--compression", choices=["none", "zstd"], default="none")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dir", default=None, help="where to build the log (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the log afterwards")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        kw = json.loads(a.args)
        fn = {"queries": phase_queries, "scan": phase_scan, "active": phase_active}[a.phase]
        print(json.dumps(fn(**kw)))
        return
    top = a.dir or tempfile.mkdtemp(prefix="key-bench-")
    path = os.path.join(top, "log")
    keys = max(1, a.records // a.events)
    out: dict = {"records": a.records, "events_per_key": a.events, "keys": keys,
                 "compression": a.compression}
    try:
        out["build_s"] = round(build(path, a.records, a.events, a.compression), 1)
        logs = glob.glob(os.path.join(path, "*.log"))
        out["segments"] = len(logs)
        out["log_mib"] = round(sum(map(os.path.getsize, logs)) / 2**20, 1)
        common = dict(path=path, events=a.events, keys=keys, n=a.queries)
        out["1_first_writer_builds_indexes"] = fresh("queries", readonly=False, **common)
        kfiles = glob.glob(os.path.join(path, "*.keyindex"))
        out["keyindex_files"] = len(kfiles)
        out["keyindex_mib"] = round(sum(map(os.path.getsize, kfiles)) / 2**20, 1)
        out["3_new_writer_saved_indexes"] = fresh("queries", readonly=False, **common)
        out["4_readonly_saved_indexes"] = fresh("queries", readonly=True, **common)
        out["5_scan_baseline"] = fresh("scan", path=path, events=a.events)
        out["6_active_segment"] = fresh("active", path=path)
    finally:
        if not a.keep and a.dir is None:
            shutil.rmtree(top, ignore_errors=True)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    q1, q3, q4 = (out["1_first_writer_builds_indexes"], out["3_new_writer_saved_indexes"],
                  out["4_readonly_saved_indexes"])
    act = out["6_active_segment"]
    print(f"log: {a.records:,} records ({keys:,} keys x {a.events} events, spread evenly), "
          f"{out['segments']} segments, {out['log_mib']} MiB, compression {a.compression}; "
          f"built in {out['build_s']} s")
    print(f"key index files: {out['keyindex_files']}, {out['keyindex_mib']} MiB")
    print(f"1. first replay_key, no index yet (scan + build + save every segment's): "
          f"{q1['first_ms'] / 1000:.2f} s")
    print(f"2. then replay_key of one key ({a.events} events), {q1['queries']} keys: median "
          f"{q1['median_ms']} ms, p99 {q1['p99_ms']} ms, max {q1['max_ms']} ms")
    print(f"3. new writer process (saved indexes): open {q3['open_ms']} ms, first replay_key "
          f"{q3['first_ms']} ms, then median {q3['median_ms']} ms, p99 {q3['p99_ms']} ms")
    print(f"4. read-only process (saved indexes): open {q4['open_ms']} ms, first replay_key "
          f"{q4['first_ms']} ms, then median {q4['median_ms']} ms, p99 {q4['p99_ms']} ms")
    print(f"5. baseline, filtered replay of the whole log: "
          f"{out['5_scan_baseline']['scan_ms'] / 1000:.2f} s")
    print(f"6. active segment ({act['active_records']:,} records, "
          f"{act['active_bytes'] / 2**20:.1f} MiB): first replay_key (indexes it in memory) "
          f"{act['first_replay_key_ms']} ms; replay_key after each 1000 appends median "
          f"{act['replay_key_after_1000_appends']['median_ms']} ms vs a filtered replay of "
          f"the segment median {act['filtered_replay_of_segment']['median_ms']} ms")


if __name__ == "__main__":
    main()
