"""Core benchmark: logstore against sqlite3 (WAL) and a naive length+CRC file log.

Usage::

    python bench/core_bench.py [--records N] [--quick] [--json out.json] [--png out.png]

Every store runs the same workloads on the same data (100-byte values drawn cyclically from a
seeded pool of 50,000 distinct random values) with the same durability:

  1. single-record append, no fsync (logstore also with a 64 KiB write buffer: "buffered")
  2. append_batch of 100 records, no fsync
  3. durable batches of 100: each batch on stable storage before the next one starts
     (plus the raw limit: os.write + os.fdatasync of a batch-sized buffer on a plain file)
  4. full replay of the log written by workload 2, record by record; and batch-wise ("4b")
  5. random get by offset (100,000 seeded random offsets into the workload 2 log)

Each (store, workload) pair runs in a fresh interpreter (this script re-invoked with
``--worker``), so peak RSS (``ru_maxrss``) is per row and GC/allocator state cannot leak from one
measurement into the next. Timings cover the workload loop only: opening and closing the store are
excluded (close times are in the JSON). Reads run right after the writes, on a warm page cache.
See bench/README.md for what each row means and why the rows are durability-equivalent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from array import array
from itertools import cycle, islice
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in

import _table  # noqa: E402 (bench/, next to this script)

VALUE_SIZE = 100
BATCH = 100
POOL_SIZE = 50_000  # a multiple of BATCH, so pool slices never wrap
SEED = 20240601
DEFAULT_RECORDS = 1_000_000
QUICK_RECORDS = 100_000
DEFAULT_GETS = 100_000
MAX_DURABLE_BATCHES = 2_000
BUFFER_BYTES = 65_536

# Naive log framing: <u32 value length><u32 zlib.crc32(value)><value>.
NAIVE_HEADER = struct.Struct("<II")
NAIVE_FRAME = NAIVE_HEADER.size + VALUE_SIZE


# --------------------------------------------------------------------------- shared data
class Data:
    """The benchmark values: identical in every worker process (seeded)."""

    def __init__(self) -> None:
        rng = random.Random(SEED)
        self.values: List[bytes] = [rng.randbytes(VALUE_SIZE) for _ in range(POOL_SIZE)]
        self.batches: List[List[bytes]] = [
            self.values[i:i + BATCH] for i in range(0, POOL_SIZE, BATCH)]

    def value(self, i: int) -> bytes:
        return self.values[i % POOL_SIZE]

    def stream(self, n: int):
        return islice(cycle(self.values), n)

    def batch_stream(self, n_batches: int):
        return islice(cycle(self.batches), n_batches)


def random_offsets(n_records: int, n_gets: int) -> List[int]:
    rng = random.Random(SEED + 1)
    return [rng.randrange(n_records) for _ in range(n_gets)]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------- logstore
# Each workload function takes (spec, data) and returns {"records", "seconds", ...}.

def _open_log(path: str, **options: Any):
    import logstore
    return logstore.Log.open(path, **options)


def _open_for_reading(spec: dict):
    """Workload 2's log, opened as its writer would (the single-process case), or read-only."""
    if spec.get("readonly"):
        return _open_log(spec["path"], readonly=True)
    return _open_log(spec["path"], fsync="never")


def logstore_append(spec: dict, data: Data) -> dict:
    options = {"fsync": "never"}
    if spec.get("buffered"):
        options["write_buffer_bytes"] = BUFFER_BYTES
    n = spec["records"]
    log = _open_log(spec["path"], **options)
    append = log.append
    with Timer() as t:
        for v in data.stream(n):
            append(v)
    with Timer() as c:
        log.close()
    log = _open_log(spec["path"], readonly=True)
    check(log.end_offset == n, f"end_offset {log.end_offset} != {n}")
    log.close()
    return {"records": n, "seconds": t.seconds, "close_s": c.seconds}


def _logstore_batches(spec: dict, data: Data, n_batches: int, fsync: str) -> dict:
    log = _open_log(spec["path"], fsync=fsync)
    append_batch = log.append_batch
    with Timer() as t:
        for batch in data.batch_stream(n_batches):
            append_batch(batch)
    if fsync == "always":
        check(log.durable_offset == n_batches * BATCH, "durable_offset")
    with Timer() as c:
        log.close()
    return {"records": n_batches * BATCH, "seconds": t.seconds, "close_s": c.seconds}


def logstore_append_batch(spec: dict, data: Data) -> dict:
    return _logstore_batches(spec, data, spec["records"] // BATCH, "never")


def logstore_durable_batch(spec: dict, data: Data) -> dict:
    return _logstore_batches(spec, data, spec["batches"], "always")


def logstore_replay(spec: dict, data: Data) -> dict:
    log = _open_for_reading(spec)
    n = nbytes = 0
    with Timer() as t:
        for rec in log.replay():
            n += 1
            nbytes += len(rec.value)
    check(n == spec["records"] and nbytes == n * VALUE_SIZE, f"replayed {n} records")
    check(log.get(n - 1).value == data.value(n - 1), "last value")
    log.close()
    return {"records": n, "seconds": t.seconds}


def logstore_replay_batches(spec: dict, data: Data) -> dict:
    log = _open_for_reading(spec)
    n = 0
    with Timer() as t:
        for batch in log.replay_batches():
            n += len(batch)
    check(n == spec["records"], f"replayed {n} records")
    log.close()
    return {"records": n, "seconds": t.seconds}


def logstore_get(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    log = _open_for_reading(spec)
    get = log.get
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            nbytes += len(get(o).value)
    check(nbytes == len(offsets) * VALUE_SIZE, "bytes read")
    check(all(get(o).value == data.value(o) for o in offsets[:1000]), "values")
    log.close()
    return {"records": len(offsets), "seconds": t.seconds}


# --------------------------------------------------------------------------- sqlite3
SQL_INSERT = "INSERT INTO log(value) VALUES (?)"


def _sqlite_open(path: str, synchronous: str, create: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(path, "log.db"), isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    check(mode.lower() == "wal", f"journal_mode {mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if create:
        conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, value BLOB)")
    return conn


def _sqlite_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM log").fetchone()[0]


def sqlite_append(spec: dict, data: Data) -> dict:
    n = spec["records"]
    os.makedirs(spec["path"])
    conn = _sqlite_open(spec["path"], "OFF", create=True)
    params = [(v,) for v in data.values]
    execute = conn.execute
    # isolation_level=None: autocommit, so every INSERT is its own committed transaction.
    with Timer() as t:
        for p in islice(cycle(params), n):
            execute(SQL_INSERT, p)
    check(_sqlite_count(conn) == n, "row count")
    with Timer() as c:
        conn.close()
    return {"records": n, "seconds": t.seconds, "close_s": c.seconds}


def _sqlite_batches(spec: dict, data: Data, n_batches: int, synchronous: str) -> dict:
    os.makedirs(spec["path"])
    conn = _sqlite_open(spec["path"], synchronous, create=True)
    batches = [[(v,) for v in b] for b in data.batches]
    execute, executemany = conn.execute, conn.executemany
    with Timer() as t:
        for batch in islice(cycle(batches), n_batches):
            execute("BEGIN")
            executemany(SQL_INSERT, batch)
            execute("COMMIT")
    check(_sqlite_count(conn) == n_batches * BATCH, "row count")
    with Timer() as c:
        conn.close()
    return {"records": n_batches * BATCH, "seconds": t.seconds, "close_s": c.seconds}


def sqlite_append_batch(spec: dict, data: Data) -> dict:
    return _sqlite_batches(spec, data, spec["records"] // BATCH, "OFF")


def sqlite_durable_batch(spec: dict, data: Data) -> dict:
    return _sqlite_batches(spec, data, spec["batches"], "FULL")


def sqlite_replay(spec: dict, data: Data) -> dict:
    conn = _sqlite_open(spec["path"], "OFF", create=False)
    n = nbytes = 0
    with Timer() as t:
        for _id, value in conn.execute("SELECT id, value FROM log ORDER BY id"):
            n += 1
            nbytes += len(value)
    check(n == spec["records"] and nbytes == n * VALUE_SIZE, f"replayed {n} rows")
    conn.close()
    return {"records": n, "seconds": t.seconds}


def sqlite_replay_batches(spec: dict, data: Data) -> dict:
    conn = _sqlite_open(spec["path"], "OFF", create=False)
    n = 0
    with Timer() as t:
        cur = conn.execute("SELECT id, value FROM log ORDER BY id")
        while rows := cur.fetchmany(1000):
            n += len(rows)
    check(n == spec["records"], f"replayed {n} rows")
    conn.close()
    return {"records": n, "seconds": t.seconds}


def sqlite_get(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    conn = _sqlite_open(spec["path"], "OFF", create=False)
    execute = conn.execute
    sql = "SELECT value FROM log WHERE id = ?"
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            nbytes += len(execute(sql, (o + 1,)).fetchone()[0])
    check(nbytes == len(offsets) * VALUE_SIZE, "bytes read")
    check(all(execute(sql, (o + 1,)).fetchone()[0] == data.value(o) for o in offsets[:1000]),
          "values")
    conn.close()
    return {"records": len(offsets), "seconds": t.seconds}


# --------------------------------------------------------------------------- naive file log
def _naive_create(path: str):
    os.makedirs(path)
    f = open(os.path.join(path, "log.bin"), "ab")
    fsync_dir(path)  # the file's directory entry is durable before any timed work
    return f


def _naive_positions_path(path: str) -> str:
    return os.path.join(path, "positions.u64")


def naive_append(spec: dict, data: Data) -> dict:
    n = spec["records"]
    f = _naive_create(spec["path"])
    write, flush, pack, crc32 = f.write, f.flush, NAIVE_HEADER.pack, zlib.crc32
    # The naive log's only index is this in-memory position array, so it is kept (and paid for)
    # in every write workload, although only workload 2's is used afterwards.
    positions = array("Q")
    remember = positions.append
    pos = 0
    with Timer() as t:
        for v in data.stream(n):
            write(pack(len(v), crc32(v)) + v)
            flush()
            remember(pos)
            pos += NAIVE_HEADER.size + len(v)
    with Timer() as c:
        f.close()
    check(os.path.getsize(f.name) == n * NAIVE_FRAME, "file size")
    return {"records": n, "seconds": t.seconds, "close_s": c.seconds}


def _naive_batches(spec: dict, data: Data, n_batches: int, durable: bool) -> dict:
    f = _naive_create(spec["path"])
    write, flush, fileno = f.write, f.flush, f.fileno()
    pack, crc32, join = NAIVE_HEADER.pack, zlib.crc32, b"".join
    positions = array("Q")
    remember = positions.append
    pos = 0
    with Timer() as t:
        for batch in data.batch_stream(n_batches):
            frames = [pack(len(v), crc32(v)) + v for v in batch]
            write(join(frames))
            flush()
            if durable:
                os.fsync(fileno)
            for frame in frames:
                remember(pos)
                pos += len(frame)
    with Timer() as c:
        f.close()
    n = n_batches * BATCH
    check(os.path.getsize(f.name) == n * NAIVE_FRAME, "file size")
    if not durable:  # workload 2: keep the index for the get workload (untimed, in a sidecar)
        remember(pos)  # end sentinel: record i spans positions[i]..positions[i + 1]
        with open(_naive_positions_path(spec["path"]), "wb") as out:
            positions.tofile(out)
    return {"records": n, "seconds": t.seconds, "close_s": c.seconds}


def naive_append_batch(spec: dict, data: Data) -> dict:
    return _naive_batches(spec, data, spec["records"] // BATCH, durable=False)


def naive_durable_batch(spec: dict, data: Data) -> dict:
    return _naive_batches(spec, data, spec["batches"], durable=True)


def naive_replay(spec: dict, data: Data) -> dict:
    unpack, crc32, size = NAIVE_HEADER.unpack, zlib.crc32, NAIVE_HEADER.size
    n = nbytes = 0
    with open(os.path.join(spec["path"], "log.bin"), "rb", buffering=1 << 20) as f:
        read = f.read
        with Timer() as t:
            while header := read(size):
                length, crc = unpack(header)
                value = read(length)
                if len(value) != length or crc32(value) != crc:
                    raise AssertionError(f"torn or corrupt record {n}")
                n += 1
                nbytes += len(value)
    check(n == spec["records"] and nbytes == n * VALUE_SIZE, f"replayed {n} records")
    return {"records": n, "seconds": t.seconds}


def naive_replay_batches(spec: dict, data: Data) -> dict:
    """Chunk-wise scan: 1 MiB reads, records checked in place (no per-record bytes objects)."""
    unpack_from, crc32, size = NAIVE_HEADER.unpack_from, zlib.crc32, NAIVE_HEADER.size
    n = 0
    with open(os.path.join(spec["path"], "log.bin"), "rb", buffering=0) as f:
        with Timer() as t:
            carry = b""
            while chunk := f.read(1 << 20):
                buf = carry + chunk if carry else chunk
                view, pos, end = memoryview(buf), 0, len(buf)
                while pos + size <= end:
                    length, crc = unpack_from(buf, pos)
                    stop = pos + size + length
                    if stop > end:
                        break
                    if crc32(view[pos + size:stop]) != crc:
                        raise AssertionError(f"corrupt record {n}")
                    n += 1
                    pos = stop
                carry = buf[pos:]
            if carry:
                raise AssertionError("torn record at end of file")
    check(n == spec["records"], f"replayed {n} records")
    return {"records": n, "seconds": t.seconds}


def naive_get(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    positions = array("Q")
    with open(_naive_positions_path(spec["path"]), "rb") as f:
        positions.frombytes(f.read())
    size, unpack_from, crc32, pread = NAIVE_HEADER.size, NAIVE_HEADER.unpack_from, zlib.crc32, os.pread
    fd = os.open(os.path.join(spec["path"], "log.bin"), os.O_RDONLY)
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            start = positions[o]
            frame = pread(fd, positions[o + 1] - start, start)
            length, crc = unpack_from(frame)
            value = frame[size:size + length]
            if crc32(value) != crc:
                raise AssertionError(f"corrupt record {o}")
            nbytes += len(value)
    check(nbytes == len(offsets) * VALUE_SIZE, "bytes read")
    for o in offsets[:1000]:
        frame = pread(fd, positions[o + 1] - positions[o], positions[o])
        check(frame[size:] == data.value(o), f"value of record {o}")
    os.close(fd)
    return {"records": len(offsets), "seconds": t.seconds}


# --------------------------------------------------------------------------- raw limit
def raw_durable_batch(spec: dict, data: Data) -> dict:
    os.makedirs(spec["path"])
    fd = os.open(os.path.join(spec["path"], "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o644)
    fsync_dir(spec["path"])
    buf = b"".join(NAIVE_HEADER.pack(len(v), zlib.crc32(v)) + v for v in data.batches[0])
    write, fdatasync, n_batches = os.write, os.fdatasync, spec["batches"]
    with Timer() as t:
        for _ in range(n_batches):
            write(fd, buf)
            fdatasync(fd)
    os.close(fd)
    return {"records": n_batches * BATCH, "seconds": t.seconds}


# --------------------------------------------------------------------------- plan
WORKLOADS = [  # (id, table label)
    ("append", "1 append (fsync never)"),
    ("append_batch", "2 append_batch 100 (fsync never)"),
    ("durable_batch", "3 durable batch 100"),
    ("replay", "4 replay"),
    ("replay_batches", "4b replay batch-wise"),
    ("get", "5 random get"),
]

STORES = {  # id -> table label
    "logstore": "logstore",
    "logstore-buffered": "logstore buffered 64KiB",
    "logstore-readonly": "logstore readonly open",
    "sqlite": "sqlite3 WAL",
    "naive": "naive file",
    "raw": "raw write+fdatasync",
}

FUNCTIONS: Dict[str, Callable[[dict, Data], dict]] = {
    "logstore_append": logstore_append,
    "logstore_append_batch": logstore_append_batch,
    "logstore_durable_batch": logstore_durable_batch,
    "logstore_replay": logstore_replay,
    "logstore_replay_batches": logstore_replay_batches,
    "logstore_get": logstore_get,
    "sqlite_append": sqlite_append,
    "sqlite_append_batch": sqlite_append_batch,
    "sqlite_durable_batch": sqlite_durable_batch,
    "sqlite_replay": sqlite_replay,
    "sqlite_replay_batches": sqlite_replay_batches,
    "sqlite_get": sqlite_get,
    "naive_append": naive_append,
    "naive_append_batch": naive_append_batch,
    "naive_durable_batch": naive_durable_batch,
    "naive_replay": naive_replay,
    "naive_replay_batches": naive_replay_batches,
    "naive_get": naive_get,
    "raw_durable_batch": raw_durable_batch,
}

NOTES = [
    "records/s: records per second of the timed loop (open/close excluded; close times in --json).",
    "MB/s: value bytes only (100 B/record), 1 MB = 10^6 bytes.",
    "peak RSS: ru_maxrss of the fresh worker process that ran that row (imports and the 5 MB "
    "value pool included; logstore workers also import numpy). logstore reads through mmap, so "
    "the file pages a read touches count toward its RSS (reclaimable page cache); the peers read "
    "with read()/pread(), whose page cache is not counted.",
    "vs logstore: peer records/s / logstore records/s for the same workload (>1 = peer faster). "
    "Workload 1 compares with the unbuffered logstore row, workload 5 with the writer-opened "
    "one; the extra logstore rows are shown against those.",
    "1 logstore: Log.open(dir, fsync='never'), log.append(value): each append is written to the "
    "file (one write) before it returns. buffered: write_buffer_bytes=65536 (appends reach the "
    "file in 64 KiB writes: a process crash can lose the last <64 KiB).",
    "1 sqlite3: isolation_level=None (autocommit), so each INSERT is its own transaction, "
    "committed before the next; journal_mode=WAL, synchronous=OFF.",
    "1 naive: open(path, 'ab'), write(pack('<II', len, crc32) + value) then flush() per record.",
    "1,2 logstore fsync='never' still fsyncs each 64 MiB segment once when it is sealed, inside "
    "the timed loop; sqlite (synchronous=OFF) and the naive log never fsync.",
    "2 sqlite3: BEGIN; executemany of 100; COMMIT per batch. naive: one write+flush per batch.",
    "3 every batch is on stable storage before the next starts: logstore fsync='always' "
    "(fdatasync per append_batch); sqlite synchronous=FULL (WAL fsync per COMMIT, plus its "
    "checkpoints); naive write+flush+os.fsync; raw: os.write of a 10,800-byte buffer (100 "
    "naive frames) + os.fdatasync, the floor for one durable write per batch. The naive and raw "
    "files' directory entries are fsynced once before timing (logstore does this at open).",
    "4,4b,5 logstore reads workload 2's log opened as a writer would (Log.open(dir, "
    "fsync='never'), untimed): the single-process case. 'readonly open' (get only): "
    "Log.open(dir, readonly=True), which checks for new appends from other processes on every "
    "get (an fstat and a stat per call).",
    "4 replay of the workload-2 log. logstore: for rec in log.replay() (Record namedtuples); "
    "sqlite: SELECT id, value ORDER BY id; naive: sequential buffered reads, CRC checked per "
    "record. Every store touches len(value) of every record.",
    "4b logstore: log.replay_batches(), counting len(batch) (no per-record objects; every "
    "batch's CRC is checked, its columns are parsed only when first used, so not here); nearest "
    "peer equivalents: sqlite cursor.fetchmany(1000); naive: 1 MiB chunk scan with in-place "
    "CRC checks.",
    "5 the same seeded random offsets for every store, into the workload-2 log. sqlite: SELECT "
    "value WHERE id = offset + 1. naive: one pread per record using an in-memory array of file "
    "positions built while writing (not durable, not rebuilt on open: saved by the workload-2 "
    "writer and loaded untimed before the loop), CRC checked.",
    "Reads run right after the writes: the page cache is warm for every store.",
]


def build_plan(records: int, durable_batches: int, gets: int, sqlite_single: int) -> List[dict]:
    """Rows in execution order: each store's reads follow its own workload-2 write."""
    def row(workload: str, store: str, **spec: Any) -> dict:
        return {"workload": workload, "store": store, **spec}

    plan = []
    for store in ("logstore", "sqlite", "naive"):
        single = sqlite_single if store == "sqlite" else records
        plan.append(row("append", store, records=single))
        if store == "logstore":
            plan.append(row("append", "logstore-buffered", records=records, buffered=True))
        plan.append(row("append_batch", store, records=records, keep=True))
        for reader in ("replay", "replay_batches", "get"):
            plan.append(row(reader, store, records=records, gets=gets, reads=store))
        if store == "logstore":
            plan.append(row("get", "logstore-readonly", records=records, gets=gets,
                            reads=store, readonly=True))
        plan[-1]["last_reader"] = True
        plan.append(row("durable_batch", store, batches=durable_batches))
    plan.append(row("durable_batch", "raw", batches=durable_batches))
    return plan


# --------------------------------------------------------------------------- running
def run_worker(spec: dict) -> None:
    """Entry point of a worker process: run one (store, workload) and write its result."""
    os.sync()  # start with no dirty pages from earlier rows: their writeback would skew fsyncs
    data = Data()
    baseline = _max_rss_mib()
    fn_name = f"{spec['store'].split('-')[0]}_{spec['workload']}"
    result = FUNCTIONS[fn_name](spec, data)
    result["peak_rss_mib"] = _max_rss_mib()
    result["baseline_rss_mib"] = baseline
    with open(spec["out"], "w") as f:
        json.dump(result, f)


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run_row(spec: dict, root: str, index: int) -> dict:
    spec = dict(spec, out=os.path.join(root, f"result-{index}.json"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"worker exited {proc.returncode}: {tail[0]}", "stderr": proc.stderr}
    with open(spec["out"]) as f:
        return json.load(f)


def run_plan(plan: List[dict], root: str, progress: bool = True) -> List[dict]:
    results = []
    written: Dict[str, str] = {}  # store -> path of its workload-2 log
    for i, spec in enumerate(plan):
        store, workload = spec["store"], spec["workload"]
        row = dict(spec)
        source = spec.get("reads")
        if source:
            if source not in written:
                row["error"] = "skipped: the workload-2 write failed"
                results.append(row)
                continue
            row["path"] = written[source]
        else:
            row["path"] = os.path.join(root, f"{store}-{workload}")
        if progress:
            print(f"  [{i + 1:2}/{len(plan)}] {STORES[store]:<24} {workload} ...",
                  end="", flush=True, file=sys.stderr)
        row.update(run_row(row, root, i))
        if progress:
            status = "FAILED" if "error" in row else f"{row['seconds']:.2f}s"
            print(f" {status}", file=sys.stderr)
        if spec.get("keep") and "error" not in row:
            written[store] = row["path"]
        elif not source:
            shutil.rmtree(row["path"], ignore_errors=True)
        if spec.get("last_reader") and source in written:
            shutil.rmtree(written.pop(source), ignore_errors=True)
        results.append(row)
    return results


def add_figures(results: List[dict]) -> None:
    refs = {(r["workload"], r["store"]): r for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            continue
        r["records_per_s"] = r["records"] / r["seconds"]
        r["mb_per_s"] = r["records_per_s"] * VALUE_SIZE / 1e6
        ref = refs.get((r["workload"], "logstore"))
        r["ratio_vs_logstore"] = r["records_per_s"] / ref["records_per_s"] if ref else None


# --------------------------------------------------------------------------- reporting
def environment(root: str) -> dict:
    try:
        import logstore
        version = logstore.__version__
    except Exception as e:  # the table still says which peers ran
        version = f"unimportable: {e}"
    try:
        rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "sqlite": sqlite3.sqlite_version,
        "logstore": version,
        "git": rev or "unknown",
        "tmpdir": os.path.dirname(root),
        "tmpdir_fs": _filesystem_of(root),
    }


def _filesystem_of(path: str) -> str:
    best, fs = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fs = parts[1], f"{parts[2]} on {parts[1]} ({parts[0]})"
    except OSError:
        pass
    return fs


def format_table(results: List[dict]) -> str:
    header = ["workload", "store", "records", "records/s", "MB/s", "peak RSS MiB", "vs logstore"]
    order = {w: i for i, (w, _) in enumerate(WORKLOADS)}
    store_order = {s: i for i, s in enumerate(STORES)}
    labels = dict(WORKLOADS)
    lines = []
    for r in sorted(results, key=lambda r: (order[r["workload"]], store_order[r["store"]])):
        store = STORES[r["store"]]
        if r.get("capped"):
            store += " (capped)"
        if "error" in r:
            lines.append([labels[r["workload"]], store, "-", "FAILED", "-", "-", r["error"][:60]])
            continue
        ratio = r["ratio_vs_logstore"]
        lines.append([
            labels[r["workload"]], store, f"{r['records']:,}", f"{r['records_per_s']:,.0f}",
            f"{r['mb_per_s']:,.1f}", f"{r['peak_rss_mib']:,.1f}",
            "-" if ratio is None else f"{ratio:.2f}x",
        ])
    return _table.render(header, lines, {0, 1})


def write_png(results: List[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--png: matplotlib is not importable; skipped writing {path}")
        return
    stores = [s for s in STORES if any(r["store"] == s and "error" not in r for r in results)]
    workloads = [w for w, _ in WORKLOADS]
    figure = {(r["workload"], r["store"]): r["records_per_s"] for r in results if "error" not in r}
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(stores)
    for i, store in enumerate(stores):
        xs = [j + (i - (len(stores) - 1) / 2) * width for j, w in enumerate(workloads)
              if (w, store) in figure]
        ys = [figure[(w, store)] for w in workloads if (w, store) in figure]
        ax.bar(xs, ys, width, label=STORES[store])
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([label for _, label in WORKLOADS], rotation=15, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("records/s (log scale)")
    ax.set_title("logstore core benchmark (100-byte values)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, help=f"records for workloads 1, 2, 4 "
                   f"(default {DEFAULT_RECORDS:,}; {QUICK_RECORDS:,} with --quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records")
    p.add_argument("--durable-batches", type=int,
                   help=f"batches of 100 in workload 3 (default min({MAX_DURABLE_BATCHES:,}, "
                        f"records/100))")
    p.add_argument("--gets", type=int, default=DEFAULT_GETS,
                   help=f"random gets in workload 5 (default {DEFAULT_GETS:,})")
    p.add_argument("--sqlite-single-cap", type=int, default=0,
                   help="cap sqlite's single-append workload to this many records (0 = no cap)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--png", metavar="PATH", help="grouped bar chart (needs matplotlib)")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.records is None:
        args.records = QUICK_RECORDS if args.quick else DEFAULT_RECORDS
    if args.records < BATCH or args.records % BATCH:
        p.error(f"--records must be a positive multiple of {BATCH}")
    if args.durable_batches is None:
        args.durable_batches = min(MAX_DURABLE_BATCHES, args.records // BATCH)
    if args.durable_batches < 1 or args.gets < 1:
        p.error("--durable-batches and --gets must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0

    sqlite_single = args.records
    if 0 < args.sqlite_single_cap < args.records:
        sqlite_single = args.sqlite_single_cap
    plan = build_plan(args.records, args.durable_batches, args.gets, sqlite_single)
    for spec in plan:
        if spec["store"] == "sqlite" and spec["workload"] == "append":
            spec["capped"] = sqlite_single < args.records

    root = tempfile.mkdtemp(prefix="logstore-bench-")
    try:
        env = environment(root)
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        print(f"workloads: {args.records:,} records of {VALUE_SIZE} B; durable: "
              f"{args.durable_batches:,} batches of {BATCH}; {args.gets:,} random gets",
              flush=True)
        started = time.perf_counter()
        results = run_plan(plan, root)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)

    add_figures(results)
    notes = list(NOTES)
    if sqlite_single < args.records:
        notes.insert(0, f"sqlite single append capped at {sqlite_single:,} records "
                        f"(--sqlite-single-cap); records/s is comparable, totals are not.")
    print()
    print(format_table(results))
    print()
    print("notes:")
    for note in notes:
        print(f"  - {note}")
    print(f"\ntotal wall time {elapsed:.0f}s")

    if args.json:
        for r in results:
            r.pop("out", None)
            r.pop("path", None)
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": {
                "records": args.records, "value_bytes": VALUE_SIZE, "batch": BATCH,
                "durable_batches": args.durable_batches, "gets": args.gets,
                "sqlite_single_records": sqlite_single, "value_pool": POOL_SIZE, "seed": SEED,
            }, "results": results, "notes": notes, "wall_s": elapsed}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        write_png(results, args.png)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
