"""Compaction and retention benchmark (not a test).

    python bench/cleanup_bench.py [--records 1000000] [--keys 10000] [--retention-gib 1.0]

1. Compaction: a log of N records (100-byte values) over K distinct keys, written in batches of
   1000 into 64 MiB segments, then ``log.compact()`` in a fresh process: records/s processed,
   peak RSS of that process, bytes before/after.
2. Retention: a log of about G GiB written twice, with 100-byte and with 10 KiB records (so the
   record count differs 100x), then one ``enforce_retention()`` pass deleting all sealed
   segments: the pass time must not depend on the record count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SEGMENT = 16 << 20  # so that almost all of the log is sealed (compaction skips the active one)


def build_compaction_log(path: str, records: int, keys: int) -> None:
    import logstore

    value = b"v" * 100
    with logstore.Log.open(path, cleanup_policy="compact", fsync="never", segment_bytes=SEGMENT,
                           retention_check_interval_s=0) as log:
        for base in range(0, records, 1000):
            n = min(1000, records - base)
            log.append_batch([value] * n, keys=[b"key-%d" % ((base + j) % keys) for j in range(n)])


def run_compaction(path: str) -> dict:
    """In a fresh process: compact and report (peak RSS is this process's)."""
    import logstore

    with logstore.Log.open(path, cleanup_policy="compact", segment_bytes=SEGMENT,
                           retention_check_interval_s=0) as log:
        t = time.perf_counter()
        report = log.compact()
        seconds = time.perf_counter() - t
    report["wall_seconds"] = seconds
    report["records_per_s"] = report["records_before"] / seconds
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def build_retention_log(path: str, gib: float, value_size: int) -> int:
    import numpy as np

    import logstore

    total = int(gib * (1 << 30))
    per_batch = max(1, (4 << 20) // value_size)
    blob = b"r" * (value_size * per_batch)
    lengths = np.full(per_batch, value_size, dtype=np.int64)
    written = records = 0
    with logstore.Log.open(path, fsync="never", retention_check_interval_s=0) as log:
        while written < total:
            log.append_buffer(blob, lengths)
            written += len(blob)
            records += per_batch
    return records


def run_retention(path: str) -> dict:
    import logstore

    with logstore.Log.open(path, retention_bytes=0, retention_check_interval_s=0) as log:
        segments = len(log.segments())
        t = time.perf_counter()
        report = log.enforce_retention()
        report["seconds"] = time.perf_counter() - t
        report["segments_before"] = segments
    return report


def worker(args: argparse.Namespace) -> None:
    fn = {"compact": run_compaction, "retention": run_retention}[args.worker]
    print(json.dumps(fn(args.path)))


def child(kind: str, path: str) -> dict:
    out = subprocess.check_output([sys.executable, __file__, "--worker", kind, "--path", path])
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--retention-gib", type=float, default=1.0)
    ap.add_argument("--json")
    ap.add_argument("--worker")
    ap.add_argument("--path")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = tempfile.mkdtemp(prefix="logstore-cleanup-bench-")
    results = {}
    try:
        path = os.path.join(tmp, "compact")
        build_compaction_log(path, args.records, args.keys)
        c = child("compact", path)
        results["compaction"] = c
        shutil.rmtree(path)
        rows = []
        for value_size in (100, 10_240):
            path = os.path.join(tmp, f"ret-{value_size}")
            records = build_retention_log(path, args.retention_gib, value_size)
            r = child("retention", path)
            r["records"] = records
            r["value_size"] = value_size
            rows.append(r)
            shutil.rmtree(path)
        results["retention"] = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}")
    print()
    print(f"{'compaction':<28}{'records':>12}{'keys':>8}{'records/s':>12}{'peak RSS MiB':>14}"
          f"{'MB before':>11}{'MB after':>10}")
    print(f"{'log.compact()':<28}{c['records_before']:>12,}{args.keys:>8,}"
          f"{c['records_per_s']:>12,.0f}{c['peak_rss_mib']:>14.0f}"
          f"{c['bytes_before'] / 1e6:>11.1f}{c['bytes_after'] / 1e6:>10.1f}")
    print()
    print(f"{'retention pass':<28}{'records':>12}{'segments':>10}{'GiB freed':>11}{'seconds':>10}")
    for r in rows:
        print(f"{'value ' + str(r['value_size']) + ' B':<28}{r['records']:>12,}"
              f"{r['segments_removed']:>10}{r['bytes_freed'] / (1 << 30):>11.2f}"
              f"{r['seconds']:>10.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
