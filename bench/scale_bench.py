"""Scale benchmark: does logstore stay flat as a log grows to tens of millions of records?

Usage::

    python bench/scale_bench.py [--sizes 1M,10M,50M] [--gets 10000] [--json out.json]

For each size (ascending), one log of 100-byte records is grown to that size with bulk
``log.append_buffer(blob, lengths)`` batches of 10,000 records (``fsync="never"``) and closed
cleanly; the next size extends the same log. Then, each in a FRESH process:

  * warm read: ``Log.open`` time (clean open), 10k random ``get`` (mean, p50, p99 latency),
    ``replay_batches`` over the first 1M records, RSS after open and peak RSS;
  * cold read: the same after ``posix_fadvise(DONTNEED)`` on the log's own files (evicts only
    this log's pages from the page cache; nothing else on the machine is touched);
  * unclean shutdown: a writer opens the log, appends a little (batches and single records,
    fsync never) and is killed with SIGKILL by PID; a fresh process then times ``Log.open``
    (crash recovery of the active segment) and checks that every written record is there.

Before growing to a size, free disk space is checked with ``shutil.disk_usage``: a size whose
estimated log does not fit twice over is skipped with a note. The log is deleted at the end.
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

VALUE_SIZE = 100
BULK = 10_000  # records per append_buffer batch while building
SEED = 20240620
DEFAULT_SIZES = "1M,10M,50M"
DEFAULT_GETS = 10_000
REPLAY_RECORDS = 1_000_000
CRASH_BATCHES = 50  # the crashing writer: 50 batches of 100 + 1,000 single appends
CRASH_SINGLES = 1_000
# On-disk bytes per record, for the free-space check: 100 B value + 4 B end-position column,
# plus batch headers, chunk tables (4 B per 4 KiB) and sparse-index entries (measured: ~104.3
# B/record), rounded up.
EST_BYTES_PER_RECORD = 110
DISK_MARGIN = 2.0
ROW_TIMEOUT_S = 1800
REOPENS = 5


def parse_size(text: str) -> int:
    text = text.strip().upper().replace("_", "")
    mult = 1
    if text.endswith("K"):
        mult, text = 1_000, text[:-1]
    elif text.endswith("M"):
        mult, text = 1_000_000, text[:-1]
    elif text.endswith("G"):
        mult, text = 1_000_000_000, text[:-1]
    n = int(float(text) * mult)
    if n <= 0:
        raise ValueError(f"size must be positive: {text}")
    return n


def human(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def _status_mib(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status (VmRSS, RssAnon = private memory, RssFile = mapped
    file pages, which the kernel can drop) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_now_mib() -> float:
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


# --------------------------------------------------------------------------- worker roles
def role_build(spec: dict) -> dict:
    """Extend the log to spec['target'] records with bulk batches, then close cleanly."""
    import numpy as np
    import logstore
    rng = random.Random(SEED)
    bulk = spec.get("batch", BULK)
    blobs = [rng.randbytes(VALUE_SIZE * bulk) for _ in range(4)]
    lengths = np.full(bulk, VALUE_SIZE, dtype=np.int32)
    log = logstore.Log.open(spec["path"], fsync="never")
    start_offset = log.end_offset
    todo = spec["target"] - start_offset
    t0 = time.perf_counter()
    i = 0
    while todo > 0:
        k = min(bulk, todo)
        if k == bulk:
            log.append_buffer(blobs[i % len(blobs)], lengths)
        else:
            log.append_buffer(blobs[i % len(blobs)][:k * VALUE_SIZE], lengths[:k])
        todo -= k
        i += 1
    append_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    log.close()
    close_s = time.perf_counter() - t1
    return {"appended": spec["target"] - start_offset, "append_s": append_s,
            "close_s": close_s, "peak_rss_mib": _peak_rss_mib()}


def _evict(path: str) -> None:
    """Drop this log's (clean) pages from the page cache: posix_fadvise DONTNEED per file."""
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if not os.path.isfile(p):
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def role_read(spec: dict) -> dict:
    """Fresh process: open time, random get latency, replay_batches throughput, RSS."""
    import logstore
    if spec.get("cold"):
        _evict(spec["path"])
    rss_before = _rss_now_mib()
    t0 = time.perf_counter()
    log = logstore.Log.open(spec["path"], fsync="never")
    open_s = time.perf_counter() - t0
    rss_open = _rss_now_mib()
    report = log.recovery_report
    check_clean = bool(report and report.clean)
    n = log.end_offset
    rng = random.Random(SEED + 1)
    offsets = [rng.randrange(n) for _ in range(spec["gets"])]
    get, clock = log.get, time.perf_counter_ns
    lat = []
    append = lat.append
    nbytes = 0
    for o in offsets:
        a = clock()
        rec = get(o)
        append(clock() - a)
        nbytes += len(rec.value)
    if nbytes != len(offsets) * VALUE_SIZE:
        raise AssertionError("get returned values of the wrong size")
    lat.sort()
    stop = min(REPLAY_RECORDS, n)
    t1 = time.perf_counter()
    seen = 0
    for batch in log.replay_batches(0, stop):
        seen += len(batch)
    replay_s = time.perf_counter() - t1
    if seen < stop:
        raise AssertionError(f"replay_batches yielded {seen} < {stop} records")
    rss_end, anon_end = _rss_now_mib(), _status_mib("RssAnon")
    segments = len(log.segments())
    log.close()
    reopen = []
    for _ in range(REOPENS):  # same process, again: less noisy than the one fresh open
        t2 = time.perf_counter()
        log = logstore.Log.open(spec["path"], fsync="never")
        reopen.append(time.perf_counter() - t2)
        log.close()
    reopen.sort()
    return {
        "records": n, "segments": segments, "clean": check_clean, "open_s": open_s,
        "reopen_median_s": reopen[len(reopen) // 2], "anon_end_mib": anon_end,
        "get_mean_us": sum(lat) / len(lat) / 1000, "get_p50_us": lat[len(lat) // 2] / 1000,
        "get_p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000,
        "get_max_us": lat[-1] / 1000,
        "replay_records": seen, "replay_s": replay_s, "replay_rps": seen / replay_s,
        "rss_before_open_mib": rss_before, "rss_after_open_mib": rss_open,
        "rss_end_mib": rss_end, "peak_rss_mib": _peak_rss_mib(),
    }


def role_crash_writer(spec: dict) -> dict:
    """Append a little with fsync never, report progress on stdout, then wait to be killed."""
    import logstore
    log = logstore.Log.open(spec["path"], fsync="never")
    rng = random.Random(SEED + 2)
    start = log.end_offset
    values = [rng.randbytes(VALUE_SIZE) for _ in range(100)]
    for _ in range(CRASH_BATCHES):
        log.append_batch(values)
    for i in range(CRASH_SINGLES):
        log.append(values[i % 100])
    print(json.dumps({"start": start, "end": log.end_offset}), flush=True)
    time.sleep(3600)  # killed with SIGKILL by the parent long before this
    return {}


def role_recover(spec: dict) -> dict:
    """Fresh process after a SIGKILL: time Log.open (crash recovery), check the records."""
    import logstore
    t0 = time.perf_counter()
    log = logstore.Log.open(spec["path"], fsync="never")
    open_s = time.perf_counter() - t0
    report = log.recovery_report
    n = log.end_offset
    ok = n == spec["expect_end"] and log.get(n - 1).value is not None
    t1 = time.perf_counter()
    log.close()
    return {"open_s": open_s, "close_s": time.perf_counter() - t1, "records": n,
            "all_records_back": ok, "clean": bool(report and report.clean),
            "scanned_bytes": getattr(report, "scanned_bytes", None),
            "truncated_bytes": getattr(report, "truncated_bytes", None),
            "indexes_rebuilt": getattr(report, "indexes_rebuilt", None),
            "peak_rss_mib": _peak_rss_mib()}


ROLES = {"build": role_build, "read": role_read, "recover": role_recover}


# --------------------------------------------------------------------------- parent
def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def _cmd(spec: dict) -> List[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]


def run_role(spec: dict) -> dict:
    proc = subprocess.run(_cmd(spec), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=ROW_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['role']} worker exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def crash_writer(path: str) -> dict:
    """Start a writer, wait until it has appended, SIGKILL it by PID; return what it wrote."""
    proc = subprocess.Popen(_cmd({"role": "crash", "path": path}), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"crash writer died early: {proc.stderr.read()}")
        wrote = json.loads(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"crash writer exited {proc.returncode}, not by SIGKILL")
        return wrote
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def measure(sizes: List[int], gets: int, root: str, cold: bool, batch: int) -> List[dict]:
    path = os.path.join(root, "scale-log")
    rows: List[dict] = []
    current = 0
    for size in sizes:
        row: Dict[str, Any] = {"size": size}
        rows.append(row)
        have_bytes = _dir_bytes(path) if os.path.isdir(path) else 0
        need = max(0, size - current) * EST_BYTES_PER_RECORD
        free = shutil.disk_usage(root).free
        row["free_bytes"] = free
        row["estimated_log_bytes"] = size * EST_BYTES_PER_RECORD
        if (size * EST_BYTES_PER_RECORD) * DISK_MARGIN > free + have_bytes:
            row["skipped"] = (f"needs ~{size * EST_BYTES_PER_RECORD * DISK_MARGIN / 2**30:.1f} "
                              f"GiB free ({DISK_MARGIN:.0f}x the ~"
                              f"{size * EST_BYTES_PER_RECORD / 2**30:.1f} GiB log), "
                              f"{(free + have_bytes) / 2**30:.1f} GiB available")
            print(f"[{human(size)}] skipped: {row['skipped']}", file=sys.stderr, flush=True)
            continue
        print(f"[{human(size)}] building (+{human(size - current)} records, "
              f"~{need / 2**30:.2f} GiB) ...", end="", flush=True, file=sys.stderr)
        b = run_role({"role": "build", "path": path, "target": size, "batch": batch})
        row["build"] = b
        row["log_bytes"] = _dir_bytes(path)
        current = size
        print(f" {b['appended'] / max(b['append_s'], 1e-9):,.0f} records/s, "
              f"{row['log_bytes'] / 2**30:.2f} GiB on disk", file=sys.stderr, flush=True)
        for mode in (["warm", "cold"] if cold else ["warm"]):
            print(f"[{human(size)}] {mode} read ...", end="", flush=True, file=sys.stderr)
            r = run_role({"role": "read", "path": path, "gets": gets, "cold": mode == "cold"})
            row[mode] = r
            print(f" open {r['open_s'] * 1000:.1f} ms, get p99 {r['get_p99_us']:.0f} us",
                  file=sys.stderr, flush=True)
        print(f"[{human(size)}] kill -9 writer + recovery open ...", end="", flush=True,
              file=sys.stderr)
        wrote = crash_writer(path)
        rec = run_role({"role": "recover", "path": path, "expect_end": wrote["end"]})
        rec["appended_before_kill"] = wrote["end"] - wrote["start"]
        row["unclean"] = rec
        current = rec["records"]
        print(f" open {rec['open_s'] * 1000:.1f} ms, all records back: "
              f"{rec['all_records_back']}", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- report
def format_table(rows: List[dict], cold: bool) -> str:
    header = ["records", "GiB", "segs", "build rec/s", "open ms", "reopen ms", "get mean us",
              "get p99 us", "replay 1M rec/s", "RSS open MiB", "anon end MiB", "peak RSS MiB"]
    if cold:
        header += ["cold open ms", "cold get mean us", "cold get p99 us", "cold replay rec/s"]
    header += ["unclean open ms", "recovered B"]
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append([human(r["size"]), "skipped: " + r["skipped"]])
            continue
        w, u, b = r["warm"], r["unclean"], r["build"]
        cells = [human(r["size"]), f"{r['log_bytes'] / 2**30:.2f}", str(w["segments"]),
                 f"{b['appended'] / max(b['append_s'], 1e-9):,.0f}",
                 f"{w['open_s'] * 1000:.1f}", f"{w['reopen_median_s'] * 1000:.1f}",
                 f"{w['get_mean_us']:.1f}", f"{w['get_p99_us']:.1f}", f"{w['replay_rps']:,.0f}",
                 f"{w['rss_after_open_mib']:.1f}", f"{w['anon_end_mib']:.1f}",
                 f"{w['peak_rss_mib']:.1f}"]
        if cold:
            c = r["cold"]
            cells += [f"{c['open_s'] * 1000:.1f}", f"{c['get_mean_us']:.1f}",
                      f"{c['get_p99_us']:.1f}", f"{c['replay_rps']:,.0f}"]
        cells += [f"{u['open_s'] * 1000:.1f}", f"{u['scanned_bytes'] or 0:,}"]
        lines.append(cells)
    full = [c for c in lines if len(c) == len(header)]
    widths = [max(len(x) for x in col) for col in zip(header, *full)] if full else \
        [len(h) for h in header]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
           "  ".join("-" * w for w in widths)]
    for cells in lines:
        if len(cells) != len(header):
            out.append(f"{cells[0].rjust(widths[0])}  {cells[1]}")
        else:
            out.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(out)


def flatness(rows: List[dict], cold: bool) -> List[str]:
    """Largest / smallest size: does each figure stay flat (within the tolerance)?"""
    done = [r for r in rows if "skipped" not in r]
    if len(done) < 2:
        return ["(fewer than two sizes measured: nothing to compare)"]
    a, z = done[0], done[-1]
    scale = z["size"] / a["size"]
    checks = [
        ("clean open time (fresh)", a["warm"]["open_s"], z["warm"]["open_s"], 2.0, 0.010),
        ("clean open time (reopen)", a["warm"]["reopen_median_s"],
         z["warm"]["reopen_median_s"], 2.0, 0.005),
        ("get latency mean (warm)", a["warm"]["get_mean_us"], z["warm"]["get_mean_us"], 1.5, 5),
        ("get latency p99 (warm)", a["warm"]["get_p99_us"], z["warm"]["get_p99_us"], 2.0, 20),
        ("RSS after open", a["warm"]["rss_after_open_mib"], z["warm"]["rss_after_open_mib"],
         1.25, 5),
        ("private memory (RssAnon)", a["warm"]["anon_end_mib"], z["warm"]["anon_end_mib"],
         1.25, 5),
        ("peak RSS incl. mapped file", a["warm"]["peak_rss_mib"], z["warm"]["peak_rss_mib"],
         1.25, 10),
        ("replay_batches 1M records/s", z["warm"]["replay_rps"], a["warm"]["replay_rps"], 1.5,
         0),
        ("unclean open time", a["unclean"]["open_s"], z["unclean"]["open_s"], 2.0, 0.050),
    ]
    if cold:
        checks.append(("get latency mean (cold)", a["cold"]["get_mean_us"],
                       z["cold"]["get_mean_us"], 2.0, 20))
    out = [f"{human(a['size'])} -> {human(z['size'])} records ({scale:.0f}x):"]
    for name, small, big, tol, slack in checks:
        ratio = big / small if small else float("inf")
        flat = ratio <= tol or (big - small) <= slack
        verdict = "flat" if flat else "GROWS"
        out.append(f"  {name:<30} {ratio:6.2f}x  {verdict}"
                   + ("" if flat else f" (tolerance {tol}x)"))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"ascending record counts, suffixes k/M (default {DEFAULT_SIZES})")
    p.add_argument("--gets", type=int, default=DEFAULT_GETS, help="random gets per read")
    p.add_argument("--build-batch", type=int, default=BULK,
                   help=f"records per append_buffer batch while building (default {BULK:,}); "
                        f"a get checks the 2-4 KiB chunks of its batch that it reads (a batch "
                        f"of up to 16 KiB: all of it), so this hardly sets get cost any more")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold-cache read (posix_fadvise DONTNEED on the log's files)")
    p.add_argument("--dir", help="where to build the log (default: a temp dir under $TMPDIR)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec["role"] == "crash":
            role_crash_writer(spec)
            return 0
        print(json.dumps(ROLES[spec["role"]](spec)))
        return 0
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    cold = not args.no_cold
    root = tempfile.mkdtemp(prefix="logstore-scale-", dir=args.dir)
    load0 = os.getloadavg()
    started = time.perf_counter()
    try:
        print(f"python {platform.python_version()}, {platform.platform()}, "
              f"cpus {len(os.sched_getaffinity(0))}, dir {root}, "
              f"free {shutil.disk_usage(root).free / 2**30:.1f} GiB, load {load0[0]:.2f}",
              flush=True)
        rows = measure(sizes, args.gets, root, cold, args.build_batch)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print()
    print(format_table(rows, cold))
    print()
    for line in flatness(rows, cold):
        print(line)
    print()
    print("notes:")
    for note in NOTES:
        print(f"  - {note}")
    print(f"\nload average {load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
          f"total wall time {elapsed:.0f}s; the log was deleted")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": sizes, "gets": args.gets, "rows": rows, "wall_s": elapsed,
                       "load_average": [load0[0], os.getloadavg()[0]]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


NOTES = [
    "One log grows through the sizes (each size extends the previous one); 100-byte values, "
    "built with append_buffer batches (--build-batch, default 10,000 records), fsync='never', "
    "closed cleanly.",
    "Every read column is a fresh process: 'open ms' is Log.open on a cleanly closed log "
    "(clean-shutdown marker: no data is scanned). get: 10k uniformly random offsets over the "
    "whole log, each timed alone (perf_counter_ns). replay: replay_batches(0, 1M), counting "
    "len(batch).",
    "warm: right after building, the log's pages are mostly in the page cache. cold: "
    "posix_fadvise(DONTNEED) on every file of the log first (only this log's pages are "
    "dropped), so gets and replay read from the disk (a virtual disk may still be cached by "
    "its host: a small log's cold figures can equal its warm ones).",
    "RSS open: VmRSS right after Log.open (interpreter + numpy + what open keeps: indexes, "
    "maps). anon end: RssAnon (private memory: heap, index copies) after the gets and the "
    "replay. peak RSS: ru_maxrss of the read process, which includes the mapped file pages the "
    "gets and the replay touched (logstore reads through mmap; the kernel can drop those "
    "pages). A get checks (CRC32C) only the chunks of its batch that hold the header, its "
    "two end positions and its value (batch format version 2: ~3 chunks of 4 KiB in these "
    "1 MB batches), so it touches a few pages of the batch, not all of them.",
    "reopen ms: median of 5 more open+close cycles in the same process, after the first.",
    "unclean open: a writer appends 5,000 records in batches + 1,000 single records "
    "(fsync='never'), is killed with SIGKILL, and a fresh process opens the log: crash recovery "
    "scans the active segment ('recovered B' = bytes scanned) and every written record must be "
    "back.",
    "flat = the largest size's figure within the stated factor of the smallest size's (or "
    "within a small absolute slack). One run per size on a shared machine: expect noise.",
]


if __name__ == "__main__":
    sys.exit(main())
