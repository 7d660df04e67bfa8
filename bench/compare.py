"""Peer comparison: logstore against sqlite3, LMDB, diskcache, persist-queue, queuelib and Redis
Streams, one command, one fresh process per (store, workload) row.

Usage::

    python bench/compare.py [--records N] [--quick] [--json out.json] [--png out.png]

Workloads (values drawn cyclically from a seeded pool of distinct random values):

  W1   append N x 100 B, one record per call, no fsync
  W1b  the same in batches of 100 (one call / transaction / pipeline per batch)
  W2   durable batches of 100: each batch on stable storage before the next starts
       (plus the raw limit: os.write + os.fdatasync of a batch-sized buffer)
  W3   full replay of the W1b data (logstore: replay() records; replay_batches() counting
       len(batch); replay_batches() summing each batch's value_lengths column)
  W4   random get by offset (100k seeded offsets into the W1b data)
  W4k  (logstore) the same gets into 1M records written in batches of 1,000 (W1k)
  W4m  the same offsets in one multi-get call where the store has one (logstore get_many,
       LMDB Cursor.getmulti, sqlite SELECT ... WHERE id IN (500 ids) per 500), values in the
       order asked
  W5   1 KiB values: append in batches of 100 (W5a), then replay them (W5b)
  W6   durable single-record appends, fsync per call: 4 threads (W6x4) and 1 thread (W6x1)

A peer is run on the workloads where it offers the operation; a peer that is not installed is
skipped with a note. Slow peers run fewer records (marked ``(capped)``: their rates are
comparable, their totals are not). See bench/README.md, section "compare.py", for the exact
calls and the durability of every row.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from itertools import cycle, islice
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in

import _table  # noqa: E402 (bench/, next to this script)
from _redis import RedisServer, stop_leftover_server  # noqa: E402

VALUE_SIZE = 100
BIG_VALUE_SIZE = 1024
BATCH = 100
BIG_BATCH = 1_000  # W1k/W4k: logstore's batches of 1,000 records
POOL_SIZE = 50_000  # 100 B values; a multiple of BATCH, so pool slices never wrap
BIG_POOL_SIZE = 5_000  # 1 KiB values (5 MB)
SEED = 20240615
DEFAULT_RECORDS = 1_000_000
QUICK_RECORDS = 100_000
DEFAULT_GETS = 100_000
QUICK_GETS = 20_000
MAX_DURABLE_BATCHES = 2_000
W6_THREADS = 4
W6_PER_THREAD = 1_000  # W6x4: 4 x 1,000 records; W6x1: 2,000 records (quick: a quarter)
W6_SINGLE = 2_000
ROW_TIMEOUT_S = 600
REDIS_START_S = 120.0  # includes loading a big AOF for the reader rows
LMDB_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as needed
KEY = struct.Struct(">Q")  # LMDB keys: 8-byte big-endian ints (sort order = offset order)
RAW_FRAME = 8 + VALUE_SIZE  # raw rows write 108-byte frames, like a length+CRC file log

# Rows of slow peers are capped at this many records (W1/W1b/W5a writes; the readers read
# what the writer wrote). Chosen so that a default run fits in ~10 minutes on 2 shared cores.
CAPS: Dict[Tuple[str, str], int] = {
    ("diskcache", "w1"): 50_000,
    ("diskcache", "w1b"): 60_000,
    ("diskcache", "w2"): 50_000,
    ("diskcache", "w5a"): 30_000,
    ("pqfile", "w1"): 5_000,
    ("pqsqlite", "w1"): 50_000,
    ("redis", "w1"): 20_000,
    ("redis", "w1b"): 200_000,
    ("redis", "w2"): 50_000,
    ("redis", "w4"): 20_000,
}
QUICK_CAP_DIVISOR = 5  # --quick: every cap / 5 (and never above --records)


# --------------------------------------------------------------------------- shared data
class Data:
    """The benchmark values: identical in every worker process (seeded)."""

    def __init__(self, size: int = VALUE_SIZE) -> None:
        rng = random.Random(SEED + size)
        pool = POOL_SIZE if size == VALUE_SIZE else BIG_POOL_SIZE
        self.size = size
        self.values: List[bytes] = [rng.randbytes(size) for _ in range(pool)]
        self.batches: List[List[bytes]] = [
            self.values[i:i + BATCH] for i in range(0, pool, BATCH)]

    def value(self, i: int) -> bytes:
        return self.values[i % len(self.values)]

    def stream(self, n: int):
        return islice(cycle(self.values), n)

    def batch_stream(self, n_batches: int):
        return islice(cycle(self.batches), n_batches)


def random_offsets(n_records: int, n_gets: int) -> List[int]:
    rng = random.Random(SEED + 1)
    return [rng.randrange(n_records) for _ in range(n_gets)]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PROFILER: Any = None  # --profile: switched on inside timed loops only


class Timer:
    def __enter__(self) -> "Timer":
        if _PROFILER is not None:
            _PROFILER.enable()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        if _PROFILER is not None:
            _PROFILER.disable()


def run_threads(n_threads: int, body: Callable[[int], None]) -> float:
    """Run body(thread_index) in n threads released together; seconds until the last ends."""
    barrier = threading.Barrier(n_threads + 1)
    errors: List[BaseException] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            body(i)
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def w6_counts(spec: dict) -> List[int]:
    """Records per thread for a W6 row."""
    return [spec["per_thread"]] * spec["threads"]


def result(records: int, seconds: float, **extra: Any) -> dict:
    return {"records": records, "seconds": seconds, **extra}


# --------------------------------------------------------------------------- logstore
def _counting_fs():
    """logstore's I/O seam with fsync/fdatasync calls counted (no other change)."""
    from logstore.fs import FileSystem

    class CountingFS(FileSystem):
        def __init__(self) -> None:
            self.fsyncs = 0
            self._count_lock = threading.Lock()

        def fdatasync(self, fd: int) -> None:
            with self._count_lock:
                self.fsyncs += 1
            super().fdatasync(fd)

        def fsync(self, fd: int) -> None:
            with self._count_lock:
                self.fsyncs += 1
            super().fsync(fd)

    return CountingFS()


def _log(path: str, **options: Any):
    import logstore
    return logstore.Log.open(path, **options)


def logstore_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]
    log = _log(spec["path"], fsync="never")
    append = log.append
    with Timer() as t:
        for v in data.stream(n):
            append(v)
    check(log.end_offset == n, "end_offset")
    with Timer() as c:
        log.close()
    return result(n, t.seconds, close_s=c.seconds)


def _logstore_batches(spec: dict, data: Data, fsync: str) -> dict:
    n_batches = spec["records"] // BATCH
    fs = _counting_fs()
    log = _log(spec["path"], fsync=fsync, fs=fs)
    append_batch = log.append_batch
    before = fs.fsyncs
    with Timer() as t:
        for batch in data.batch_stream(n_batches):
            append_batch(batch)
    fsyncs = fs.fsyncs - before
    if fsync == "always":
        check(log.durable_offset == n_batches * BATCH, "durable_offset")
    with Timer() as c:
        log.close()
    return result(n_batches * BATCH, t.seconds, close_s=c.seconds, fsyncs=fsyncs)


def logstore_w1b(spec: dict, data: Data) -> dict:
    return _logstore_batches(spec, data, "never")


def logstore_w1k(spec: dict, data: Data) -> dict:
    """W1b's records in batches of 1,000 (ten of the pool's batches joined): W4k's data."""
    n_batches = spec["records"] // BIG_BATCH
    log = _log(spec["path"], fsync="never")
    append_batch = log.append_batch
    joined = [sum(data.batches[i:i + BIG_BATCH // BATCH], [])
              for i in range(0, len(data.batches), BIG_BATCH // BATCH)]
    with Timer() as t:
        for batch in islice(cycle(joined), n_batches):
            append_batch(batch)
    check(log.end_offset == n_batches * BIG_BATCH, "end_offset")
    log.close()
    return result(n_batches * BIG_BATCH, t.seconds)


def logstore_w2(spec: dict, data: Data) -> dict:
    return _logstore_batches(spec, data, "always")


def logstore_w5a(spec: dict, data: Data) -> dict:
    return _logstore_batches(spec, data, "never")


def logstore_w3(spec: dict, data: Data) -> dict:
    log = _log(spec["path"], fsync="never")
    n = nbytes = 0
    with Timer() as t:
        for rec in log.replay():
            n += 1
            nbytes += len(rec.value)
    check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} records")
    check(log.get(n - 1).value == data.value(n - 1), "last value")
    log.close()
    return result(n, t.seconds)


logstore_w5b = logstore_w3


def logstore_w3b(spec: dict, data: Data) -> dict:
    log = _log(spec["path"], fsync="never")
    n = 0
    with Timer() as t:
        for batch in log.replay_batches():
            n += len(batch)
    check(n == spec["records"], f"replayed {n} records")
    log.close()
    return result(n, t.seconds)


def logstore_w3c(spec: dict, data: Data) -> dict:
    """replay_batches, touching every record's value length (the numpy column)."""
    log = _log(spec["path"], fsync="never")
    n = nbytes = 0
    with Timer() as t:
        for batch in log.replay_batches():
            n += len(batch)
            nbytes += int(batch.value_lengths.sum())
    check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} records")
    log.close()
    return result(n, t.seconds)


def logstore_w4(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    log = _log(spec["path"], fsync="never")
    get = log.get
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            nbytes += len(get(o).value)
    check(nbytes == len(offsets) * data.size, "bytes read")
    check(all(get(o).value == data.value(o) for o in offsets[:1000]), "values")
    log.close()
    return result(len(offsets), t.seconds)


logstore_w4k = logstore_w4


def logstore_w4m(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    log = _log(spec["path"], fsync="never")
    with Timer() as t:
        records = log.get_many(offsets)
        nbytes = sum([len(r.value) for r in records])
    check(nbytes == len(offsets) * data.size, "bytes read")
    check(all(r.offset == o and r.value == data.value(o)
              for r, o in zip(records[:1000], offsets)), "values")
    log.close()
    return result(len(offsets), t.seconds)


def logstore_w6(spec: dict, data: Data) -> dict:
    fs = _counting_fs()
    log = _log(spec["path"], fsync="always", fs=fs)
    counts = w6_counts(spec)
    before = fs.fsyncs

    def body(i: int) -> None:
        append = log.append
        for v in islice(data.values, i * 1000, i * 1000 + counts[i]):
            append(v)

    seconds = run_threads(len(counts), body)
    fsyncs = fs.fsyncs - before
    check(log.durable_offset == sum(counts), "durable_offset")
    log.close()
    return result(sum(counts), seconds, fsyncs=fsyncs)


# --------------------------------------------------------------------------- sqlite3
SQL_INSERT = "INSERT INTO log(value) VALUES (?)"


_SQLITE_FAST = False  # set per worker from the row's spec ("sqlitefast": its fastest config)


def _sqlite(path: str, synchronous: str, create: bool, shared: bool = False
            ) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(path, "log.db"), isolation_level=None, timeout=60,
                           check_same_thread=False)
    if _SQLITE_FAST:
        # Its fastest configuration with the same guarantees: no shared-memory WAL index or
        # file locks per transaction (one connection holds the database), reads through a
        # memory mapping, a 256 MiB page cache. W6's threads share the file: not exclusive.
        if not shared:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute(f"PRAGMA mmap_size={1 << 32}")
        conn.execute("PRAGMA cache_size=-262144")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    check(mode.lower() == "wal", f"journal_mode {mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if create:
        conn.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, value BLOB)")
    return conn


def _sqlite_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM log").fetchone()[0]


def sqlite_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]
    os.makedirs(spec["path"])
    conn = _sqlite(spec["path"], "OFF", create=True)
    execute = conn.execute
    params = [(v,) for v in data.values]
    with Timer() as t:  # autocommit: every INSERT is its own committed transaction
        for p in islice(cycle(params), n):
            execute(SQL_INSERT, p)
    check(_sqlite_count(conn) == n, "row count")
    conn.close()
    return result(n, t.seconds)


def _sqlite_batches(spec: dict, data: Data, synchronous: str) -> dict:
    n_batches = spec["records"] // BATCH
    os.makedirs(spec["path"])
    conn = _sqlite(spec["path"], synchronous, create=True)
    batches = [[(v,) for v in b] for b in data.batches]
    execute, executemany = conn.execute, conn.executemany
    with Timer() as t:
        for batch in islice(cycle(batches), n_batches):
            execute("BEGIN")
            executemany(SQL_INSERT, batch)
            execute("COMMIT")
    check(_sqlite_count(conn) == n_batches * BATCH, "row count")
    conn.close()
    return result(n_batches * BATCH, t.seconds)


def sqlite_w1b(spec: dict, data: Data) -> dict:
    return _sqlite_batches(spec, data, "OFF")


def sqlite_w2(spec: dict, data: Data) -> dict:
    return _sqlite_batches(spec, data, "FULL")


sqlite_w5a = sqlite_w1b


def sqlite_w3(spec: dict, data: Data) -> dict:
    conn = _sqlite(spec["path"], "OFF", create=False)
    n = nbytes = 0
    with Timer() as t:
        for _id, value in conn.execute("SELECT id, value FROM log ORDER BY id"):
            n += 1
            nbytes += len(value)
    check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} rows")
    conn.close()
    return result(n, t.seconds)


sqlite_w5b = sqlite_w3


def sqlite_w4(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    conn = _sqlite(spec["path"], "OFF", create=False)
    execute, sql = conn.execute, "SELECT value FROM log WHERE id = ?"
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            nbytes += len(execute(sql, (o + 1,)).fetchone()[0])
    check(nbytes == len(offsets) * data.size, "bytes read")
    check(all(execute(sql, (o + 1,)).fetchone()[0] == data.value(o) for o in offsets[:1000]),
          "values")
    conn.close()
    return result(len(offsets), t.seconds)


def sqlite_w4m(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    conn = _sqlite(spec["path"], "OFF", create=False)
    chunk = 500
    sql = f"SELECT id, value FROM log WHERE id IN ({','.join('?' * chunk)})"
    values: List[bytes] = []
    with Timer() as t:
        for i in range(0, len(offsets), chunk):
            ids = [o + 1 for o in offsets[i:i + chunk]]
            q = sql if len(ids) == chunk else \
                f"SELECT id, value FROM log WHERE id IN ({','.join('?' * len(ids))})"
            found = dict(conn.execute(q, ids).fetchall())
            values.extend([found[k] for k in ids])  # in the order asked, repeats included
        nbytes = sum([len(v) for v in values])
    check(nbytes == len(offsets) * data.size, "bytes read")
    check(all(v == data.value(o) for v, o in zip(values[:1000], offsets)), "values")
    conn.close()
    return result(len(offsets), t.seconds)


def sqlite_w6(spec: dict, data: Data) -> dict:
    os.makedirs(spec["path"])
    _sqlite(spec["path"], "FULL", create=True, shared=True).close()
    counts = w6_counts(spec)
    conns = [_sqlite(spec["path"], "FULL", create=False, shared=True) for _ in counts]

    def body(i: int) -> None:
        execute = conns[i].execute
        for v in islice(data.values, i * 1000, i * 1000 + counts[i]):
            execute(SQL_INSERT, (v,))

    seconds = run_threads(len(counts), body)
    check(_sqlite_count(conns[0]) == sum(counts), "row count")
    for c in conns:
        c.close()
    return result(sum(counts), seconds)


# --------------------------------------------------------------------------- LMDB
_LMDB_WRITEMAP = False  # set per worker from the row's spec ("lmdbwm": writemap=True)


def _lmdb(path: str, sync: bool, readonly: bool = False):
    import lmdb
    # writemap=True: commits write through LMDB's own shared mapping of the file (no write
    # system call), as logstore's fsync="never" appends do; sync=False still survives a kill -9
    # (the pages are in the page cache), sync=True msyncs/fdatasyncs at every commit.
    return lmdb.open(path, map_size=LMDB_MAP_SIZE, sync=sync, metasync=sync,
                     writemap=_LMDB_WRITEMAP and not readonly, readonly=readonly,
                     lock=not readonly, max_dbs=0, subdir=True)


def lmdb_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]
    env = _lmdb(spec["path"], sync=False)
    begin, pack = env.begin, KEY.pack
    with Timer() as t:
        for i, v in enumerate(data.stream(n)):
            with begin(write=True) as txn:
                txn.put(pack(i), v, append=True)
    check(env.stat()["entries"] == n, "entries")
    env.close()
    return result(n, t.seconds)


def _lmdb_batches(spec: dict, data: Data, sync: bool) -> dict:
    n_batches = spec["records"] // BATCH
    env = _lmdb(spec["path"], sync=sync)
    begin, pack = env.begin, KEY.pack
    base = 0
    with Timer() as t:
        for batch in data.batch_stream(n_batches):
            with begin(write=True) as txn:
                txn.cursor().putmulti([(pack(base + j), v) for j, v in enumerate(batch)],
                                      append=True)
            base += BATCH
    check(env.stat()["entries"] == base, "entries")
    env.close()
    return result(base, t.seconds)


def lmdb_w1b(spec: dict, data: Data) -> dict:
    return _lmdb_batches(spec, data, sync=False)


def lmdb_w2(spec: dict, data: Data) -> dict:
    return _lmdb_batches(spec, data, sync=True)


lmdb_w5a = lmdb_w1b


def lmdb_w3(spec: dict, data: Data) -> dict:
    env = _lmdb(spec["path"], sync=False)
    n = nbytes = 0
    with Timer() as t:
        with env.begin() as txn:
            for _key, value in txn.cursor():
                n += 1
                nbytes += len(value)
    check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} entries")
    env.close()
    return result(n, t.seconds)


lmdb_w5b = lmdb_w3


def lmdb_w4(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    env = _lmdb(spec["path"], sync=False)
    pack = KEY.pack
    nbytes = 0
    with Timer() as t:
        with env.begin() as txn:
            get = txn.get
            for o in offsets:
                nbytes += len(get(pack(o)))
    check(nbytes == len(offsets) * data.size, "bytes read")
    with env.begin() as txn:
        check(all(txn.get(pack(o)) == data.value(o) for o in offsets[:1000]), "values")
    env.close()
    return result(len(offsets), t.seconds)


def lmdb_w4m(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    env = _lmdb(spec["path"], sync=False)
    pack = KEY.pack
    with Timer() as t:
        with env.begin() as txn:
            pairs = txn.cursor().getmulti([pack(o) for o in offsets])
        nbytes = sum([len(v) for _k, v in pairs])
    check(len(pairs) == len(offsets) and nbytes == len(offsets) * data.size, "bytes read")
    check(all(v == data.value(o) for (_k, v), o in zip(pairs[:1000], offsets)), "values")
    env.close()
    return result(len(offsets), t.seconds)


def lmdb_w6(spec: dict, data: Data) -> dict:
    env = _lmdb(spec["path"], sync=True)
    counts = w6_counts(spec)

    def body(i: int) -> None:
        begin, pack = env.begin, KEY.pack
        for j, v in enumerate(islice(data.values, i * 1000, i * 1000 + counts[i])):
            with begin(write=True) as txn:
                txn.put(pack(i << 40 | j), v)

    seconds = run_threads(len(counts), body)
    check(env.stat()["entries"] == sum(counts), "entries")
    env.close()
    return result(sum(counts), seconds)


# --------------------------------------------------------------------------- diskcache
def _diskcache(path: str, synchronous: int = 1):
    import diskcache
    # eviction_policy='none': keep everything (the default culls at size_limit=1 GiB).
    cache = diskcache.Cache(path, timeout=60, eviction_policy="none", size_limit=1 << 40,
                            sqlite_synchronous=synchronous)
    return cache


def diskcache_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]
    cache = _diskcache(spec["path"])
    set_ = cache.set
    with Timer() as t:
        for i, v in enumerate(data.stream(n)):
            set_(i, v)
    check(len(cache) == n, "entries")
    cache.close()
    return result(n, t.seconds)


def _diskcache_batches(spec: dict, data: Data, synchronous: int) -> dict:
    n_batches = spec["records"] // BATCH
    cache = _diskcache(spec["path"], synchronous)
    set_, transact = cache.set, cache.transact
    i = 0
    with Timer() as t:
        for batch in data.batch_stream(n_batches):
            with transact():
                for v in batch:
                    set_(i, v)
                    i += 1
    check(len(cache) == i, "entries")
    cache.close()
    return result(i, t.seconds)


def diskcache_w1b(spec: dict, data: Data) -> dict:
    return _diskcache_batches(spec, data, 1)


def diskcache_w2(spec: dict, data: Data) -> dict:
    return _diskcache_batches(spec, data, 2)


diskcache_w5a = diskcache_w1b


def diskcache_w3(spec: dict, data: Data) -> dict:
    cache = _diskcache(spec["path"])
    n = nbytes = 0
    with Timer() as t:  # what diskcache.Deque.__iter__ does: keys in order, then each value
        for key in cache.iterkeys():
            n += 1
            nbytes += len(cache[key])
    check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} entries")
    cache.close()
    return result(n, t.seconds)


diskcache_w5b = diskcache_w3


def diskcache_w4(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])
    cache = _diskcache(spec["path"])
    nbytes = 0
    with Timer() as t:
        for o in offsets:
            nbytes += len(cache[o])
    check(nbytes == len(offsets) * data.size, "bytes read")
    check(all(cache[o] == data.value(o) for o in offsets[:1000]), "values")
    cache.close()
    return result(len(offsets), t.seconds)


def diskcache_w6(spec: dict, data: Data) -> dict:
    cache = _diskcache(spec["path"], 2)
    counts = w6_counts(spec)

    def body(i: int) -> None:
        set_ = cache.set
        for j, v in enumerate(islice(data.values, i * 1000, i * 1000 + counts[i])):
            set_(i << 40 | j, v)

    seconds = run_threads(len(counts), body)
    check(len(cache) == sum(counts), "entries")
    cache.close()
    return result(sum(counts), seconds)


# --------------------------------------------------------------------------- persist-queue
def _pq_sqlite(path: str, synchronous: str, auto_commit: bool, multithreading: bool = False):
    import persistqueue
    q = persistqueue.SQLiteQueue(path, auto_commit=auto_commit, multithreading=multithreading)
    want = {"OFF": 0, "FULL": 2}[synchronous]
    # Its connections open in journal_mode=WAL with SQLite's default synchronous (FULL here).
    for conn in {id(q._putter): q._putter, id(q._getter): q._getter}.values():
        conn.execute(f"PRAGMA synchronous={synchronous}")
        got = conn.execute("PRAGMA synchronous").fetchone()[0]
        check(got == want, f"persist-queue synchronous={got}, expected {want}")
    return q


def _pq_empty(q) -> bool:
    import persistqueue
    try:
        q.get(block=False)
    except persistqueue.Empty:
        return True
    return False


def pqsqlite_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]
    q = _pq_sqlite(spec["path"], "OFF", auto_commit=True)
    put = q.put
    with Timer() as t:
        for v in data.stream(n):
            put(v)
    check(q.qsize() == n, "size")
    q.close()
    return result(n, t.seconds)


def pqsqlite_w3(spec: dict, data: Data) -> dict:
    # auto_commit=False: get() moves a cursor and deletes nothing until task_done() (not
    # called): the nearest thing to a read-only replay that its API offers.
    q = _pq_sqlite(spec["path"], "OFF", auto_commit=False)
    get = q.get
    n, nbytes = spec["records"], 0
    with Timer() as t:
        for _ in range(n):
            nbytes += len(get(block=False))
    check(nbytes == n * data.size, "bytes read")
    check(_pq_empty(q), "more items than were written")
    q.close()
    return result(n, t.seconds)


def pqsqlite_w6(spec: dict, data: Data) -> dict:
    os.makedirs(spec["path"])
    q = _pq_sqlite(spec["path"], "FULL", auto_commit=True, multithreading=True)
    counts = w6_counts(spec)

    def body(i: int) -> None:
        put = q.put
        for v in islice(data.values, i * 1000, i * 1000 + counts[i]):
            put(v)

    seconds = run_threads(len(counts), body)
    check(q.qsize() == sum(counts), "size")
    q.close()
    return result(sum(counts), seconds)


def pqfile_w1(spec: dict, data: Data) -> dict:
    import persistqueue
    n = spec["records"]
    os.makedirs(spec["path"])
    tmp = os.path.join(spec["path"], "tmp")
    os.makedirs(tmp)
    q = persistqueue.Queue(os.path.join(spec["path"], "q"), tempdir=tmp)  # chunksize=100
    put = q.put
    with Timer() as t:
        for v in data.stream(n):
            put(v)
    check(q.qsize() == n, "size")
    del q
    return result(n, t.seconds)


def pqfile_w3(spec: dict, data: Data) -> dict:
    import persistqueue
    q = persistqueue.Queue(os.path.join(spec["path"], "q"),
                           tempdir=os.path.join(spec["path"], "tmp"))
    n, nbytes = spec["records"], 0
    check(q.qsize() == n, f"size {q.qsize()}")
    get = q.get
    with Timer() as t:  # autosave=False: the read position is saved by task_done (not called)
        for _ in range(n):
            nbytes += len(get(block=False))
    check(nbytes == n * data.size, "bytes read")
    check(_pq_empty(q), "more items than were written")
    del q
    return result(n, t.seconds)


# --------------------------------------------------------------------------- queuelib
def queuelib_w1(spec: dict, data: Data) -> dict:
    from queuelib import FifoDiskQueue
    n = spec["records"]
    q = FifoDiskQueue(spec["path"])
    push = q.push
    with Timer() as t:
        for v in data.stream(n):
            push(v)
    check(len(q) == n, "size")
    with Timer() as c:
        q.close()  # writes info.json: the queue's head/tail, kept in memory until then
    return result(n, t.seconds, close_s=c.seconds)


def queuelib_w3(spec: dict, data: Data) -> dict:
    from queuelib import FifoDiskQueue
    q = FifoDiskQueue(spec["path"])
    n, nbytes = spec["records"], 0
    check(len(q) == n, f"size {len(q)}")
    pop = q.pop
    with Timer() as t:
        for _ in range(n):
            nbytes += len(pop())
    check(nbytes == n * data.size and q.pop() is None, "bytes read")
    q.close()
    return result(n, t.seconds)


# --------------------------------------------------------------------------- Redis Streams
def _redis_row(spec: dict, appendfsync: str, body: Callable[[Any], dict]) -> dict:
    server = RedisServer(spec["path"], appendfsync, REDIS_START_S).start()
    try:
        out = body(server.client())
        out["server_peak_rss_mib"] = server.peak_rss_mib()
    finally:
        server.stop()
    return out


def _sid(i: int) -> str:
    return f"0-{i + 1}"  # explicit stream IDs: record i is entry 0-(i+1)


def redis_w1(spec: dict, data: Data) -> dict:
    n = spec["records"]

    def body(r) -> dict:
        xadd = r.xadd
        with Timer() as t:
            for i, v in enumerate(data.stream(n)):
                xadd("s", {"v": v}, id=_sid(i))
        check(r.xlen("s") == n, "xlen")
        return result(n, t.seconds)

    return _redis_row(spec, "no", body)


def _redis_batches(spec: dict, data: Data, appendfsync: str) -> dict:
    n_batches = spec["records"] // BATCH

    def body(r) -> dict:
        i = 0
        with Timer() as t:
            for batch in data.batch_stream(n_batches):
                pipe = r.pipeline(transaction=False)
                for v in batch:
                    pipe.xadd("s", {"v": v}, id=_sid(i))
                    i += 1
                pipe.execute()
        check(r.xlen("s") == i, "xlen")
        return result(i, t.seconds)

    return _redis_row(spec, appendfsync, body)


def redis_w1b(spec: dict, data: Data) -> dict:
    return _redis_batches(spec, data, "no")


def redis_w2(spec: dict, data: Data) -> dict:
    return _redis_batches(spec, data, "always")


redis_w5a = redis_w1b


def redis_w3(spec: dict, data: Data) -> dict:
    def body(r) -> dict:
        n = nbytes = 0
        xrange = r.xrange
        with Timer() as t:
            lo = "-"
            while True:
                entries = xrange("s", min=lo, max="+", count=1000)
                if not entries:
                    break
                for _id, fields in entries:
                    n += 1
                    nbytes += len(fields[b"v"])
                lo = b"(" + entries[-1][0]
        check(n == spec["records"] and nbytes == n * data.size, f"replayed {n} entries")
        return result(n, t.seconds)

    return _redis_row(spec, "no", body)


redis_w5b = redis_w3


def redis_w4(spec: dict, data: Data) -> dict:
    offsets = random_offsets(spec["records"], spec["gets"])

    def body(r) -> dict:
        xrange, nbytes = r.xrange, 0
        with Timer() as t:
            for o in offsets:
                sid = _sid(o)
                nbytes += len(xrange("s", min=sid, max=sid)[0][1][b"v"])
        check(nbytes == len(offsets) * data.size, "bytes read")
        check(all(xrange("s", min=_sid(o), max=_sid(o))[0][1][b"v"] == data.value(o)
                  for o in offsets[:1000]), "values")
        return result(len(offsets), t.seconds)

    return _redis_row(spec, "no", body)


def redis_w6(spec: dict, data: Data) -> dict:
    counts = w6_counts(spec)

    def body(r) -> dict:
        clients = [redis_client_like(r) for _ in counts]

        def thread(i: int) -> None:
            xadd = clients[i].xadd
            for v in islice(data.values, i * 1000, i * 1000 + counts[i]):
                xadd("s", {"v": v})

        seconds = run_threads(len(counts), thread)
        check(r.xlen("s") == sum(counts), "xlen")
        return result(sum(counts), seconds)

    return _redis_row(spec, "always", body)


def redis_client_like(r):
    import redis
    kw = r.connection_pool.connection_kwargs
    c = redis.Redis(host=kw["host"], port=kw["port"])
    c.ping()  # connect before the timing
    return c


# --------------------------------------------------------------------------- raw limits
def raw_w2(spec: dict, data: Data) -> dict:
    os.makedirs(spec["path"])
    fd = os.open(os.path.join(spec["path"], "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o644)
    fsync_dir(spec["path"])
    buf = bytes(RAW_FRAME * BATCH)
    n_batches = spec["records"] // BATCH
    write, fdatasync = os.write, os.fdatasync
    with Timer() as t:
        for _ in range(n_batches):
            write(fd, buf)
            fdatasync(fd)
    os.close(fd)
    return result(n_batches * BATCH, t.seconds, fsyncs=n_batches)


def raw_w6(spec: dict, data: Data) -> dict:
    os.makedirs(spec["path"])
    fd = os.open(os.path.join(spec["path"], "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o644)
    fsync_dir(spec["path"])
    counts = w6_counts(spec)
    buf = bytes(RAW_FRAME)

    def body(i: int) -> None:
        write, fdatasync = os.write, os.fdatasync
        for _ in range(counts[i]):
            write(fd, buf)
            fdatasync(fd)

    seconds = run_threads(len(counts), body)
    os.close(fd)
    return result(sum(counts), seconds, fsyncs=sum(counts))


# --------------------------------------------------------------------------- plan
WORKLOADS = [  # (id, table label)
    ("w1", "W1 append 100 B, 1 per call"),
    ("w1b", "W1b append 100 B, batch 100"),
    ("w2", "W2 durable batch 100"),
    ("w3", "W3 replay (W1b data)"),
    ("w1k", "W1k append 100 B, batch 1,000"),
    ("w4", "W4 random get"),
    ("w4k", "W4k random get, batches of 1,000"),
    ("w4m", "W4m random get, one call"),
    ("w5a", "W5a append 1 KiB, batch 100"),
    ("w5b", "W5b replay 1 KiB"),
    ("w6x4", f"W6 durable 1/call, {W6_THREADS} threads"),
    ("w6x1", "W6 durable 1/call, 1 thread"),
]
LABELS = dict(WORKLOADS)

STORES = {  # id -> table label
    "logstore": "logstore",
    "logstore-batches": "logstore replay_batches",
    "logstore-columns": "logstore replay_batches + value_lengths",
    "sqlite": "sqlite3 WAL (default config)",
    "sqlitefast": "sqlite3 WAL tuned",
    "lmdb": "LMDB (default config)",
    "lmdbwm": "LMDB writemap",
    "diskcache": "diskcache Cache",
    "pqsqlite": "persist-queue SQLiteQueue",
    "pqfile": "persist-queue Queue (file)",
    "queuelib": "queuelib FifoDiskQueue",
    "redis": "Redis Streams",
    "raw": "raw write+fdatasync",
}

# A store that is another store's functions in another configuration: (functions, spec flags).
VARIANTS = {"sqlitefast": ("sqlite", {"sqlite_fast": True}),
            "lmdbwm": ("lmdb", {"lmdb_writemap": True})}

# Which store offers which workload (the function is f"{store}_{workload}", w6x* -> w6).
OFFERS = {
    "logstore": ("w1", "w1b", "w1k", "w2", "w3", "w4", "w4k", "w4m", "w5a", "w5b", "w6x4",
                 "w6x1"),
    "sqlite": ("w1", "w1b", "w2", "w3", "w4", "w4m", "w5a", "w5b", "w6x4", "w6x1"),
    "sqlitefast": ("w1", "w1b", "w2", "w3", "w4", "w4m", "w5a", "w5b", "w6x4", "w6x1"),
    "lmdb": ("w1", "w1b", "w2", "w3", "w4", "w4m", "w5a", "w5b", "w6x4", "w6x1"),
    # Reads do not depend on writemap (the default-config LMDB rows show them).
    "lmdbwm": ("w1", "w1b", "w2", "w5a", "w6x4", "w6x1"),
    "diskcache": ("w1", "w1b", "w2", "w3", "w4", "w5a", "w5b", "w6x4", "w6x1"),
    "pqsqlite": ("w1", "w3", "w6x4", "w6x1"),  # put() always commits: no batch put
    "pqfile": ("w1", "w3"),
    "queuelib": ("w1", "w3"),
    "redis": ("w1", "w1b", "w2", "w3", "w4", "w5a", "w5b", "w6x4", "w6x1"),
    "raw": ("w2", "w6x1"),
}

# What an acknowledged write survives. Reference per workload; rows that differ are marked.
WORKLOAD_DURABILITY = {"w1": "kill -9", "w1b": "kill -9", "w1k": "kill -9", "w5a": "kill -9",
                       "w2": "power loss", "w6x4": "power loss", "w6x1": "power loss"}
DURABILITY_OVERRIDES = {
    ("queuelib", "w1"): "close() only",
    ("redis", "w1"): "kill -9 (server)",
    ("redis", "w1b"): "kill -9 (server)",
    ("redis", "w5a"): "kill -9 (server)",
}
SEMANTICS = {  # read rows that are not a plain read
    ("pqfile", "w3"): "get (in-memory cursor)",
    ("pqsqlite", "w3"): "get (cursor)",
    ("queuelib", "w3"): "pop (destructive)",
}


def durability(store: str, workload: str) -> str:
    base = WORKLOAD_DURABILITY.get(workload)
    if base is None:
        return "-"
    return DURABILITY_OVERRIDES.get((store, workload), base)


def durability_differs(store: str, workload: str) -> bool:
    d = durability(store, workload)
    ref = WORKLOAD_DURABILITY.get(workload)
    return ref is not None and d != ref and not d.startswith(ref + " (server)")


FUNCTIONS: Dict[str, Callable[[dict, Data], dict]] = {
    name: fn for name, fn in globals().items()
    if callable(fn) and re.fullmatch(r"[a-z]+_w[0-9][abcmk]?", name)
}


def build_plan(args: argparse.Namespace, have: Dict[str, bool]) -> List[dict]:
    """Rows in execution order; every store's readers follow its own writer."""
    n, quick = args.records, args.quick
    durable = min(MAX_DURABLE_BATCHES, n // BATCH) * BATCH
    big = max(BATCH, (n // 10) // BATCH * BATCH)
    per_thread = W6_PER_THREAD // 4 if quick else W6_PER_THREAD
    single = W6_SINGLE // 4 if quick else W6_SINGLE

    def cap(store: str, workload: str, wanted: int) -> Tuple[int, bool]:
        c = CAPS.get((store, workload))
        if c is None:
            return wanted, False
        if quick:
            c //= QUICK_CAP_DIVISOR
        c = max(BATCH, c // BATCH * BATCH)
        return (c, True) if c < wanted else (wanted, False)

    plan: List[dict] = []
    for store in STORES:
        if store in ("logstore-batches", "logstore-columns") or not have.get(store, False):
            continue
        offers = OFFERS[store]
        if args.stores and store not in args.stores:
            continue

        functions, flags = VARIANTS.get(store, (store, {}))

        def add(workload: str, store_id: str = store, **spec: Any) -> dict:
            row = {"workload": workload, "store": store_id, "functions": functions, **flags,
                   **spec}
            if args.only and workload not in args.only:
                row["filtered"] = True
            plan.append(row)
            return row

        source = "w1b" if "w1b" in offers else "w1"
        written = {}
        for w in ("w1", "w1b"):
            if w in offers:
                records, capped = cap(store, w, n)
                written[w] = records
                add(w, records=records, capped=capped, keep=(w == source))
        if "w1k" in offers:
            add("w1k", records=n // BIG_BATCH * BIG_BATCH, capped=False, keep=True)
        if "w2" in offers:
            records, capped = cap(store, "w2", durable)
            add("w2", records=records, capped=capped)
        if "w3" in offers and source in written:
            add("w3", records=written[source], reads=(store, source))
            if store == "logstore":
                add("w3", "logstore-batches", records=written[source], reads=(store, source),
                    fn="logstore_w3b")
                add("w3", "logstore-columns", records=written[source], reads=(store, source),
                    fn="logstore_w3c")
        if "w4" in offers:
            gets, capped = cap(store, "w4", args.gets)
            add("w4", records=written[source], gets=gets, capped=capped, reads=(store, source))
        if "w4k" in offers:
            add("w4k", records=n // BIG_BATCH * BIG_BATCH, gets=args.gets, capped=False,
                reads=(store, "w1k"))
        if "w4m" in offers:
            add("w4m", records=written[source], gets=args.gets, capped=False,
                reads=(store, source))
        if "w5a" in offers:
            records, capped = cap(store, "w5a", big)
            add("w5a", records=records, capped=capped, keep=True, big=True)
            add("w5b", records=records, capped=capped, reads=(store, "w5a"), big=True)
        if "w6x4" in offers:
            add("w6x4", threads=W6_THREADS, per_thread=per_thread, fn=f"{functions}_w6")
        if "w6x1" in offers:
            add("w6x1", threads=1, per_thread=single, fn=f"{functions}_w6")
    # Readers are the last users of their writer's data: mark where it can be deleted.
    last = {}
    for i, row in enumerate(plan):
        if row.get("reads"):
            last[tuple(row["reads"])] = i
    for key, i in last.items():
        plan[i]["last_reader"] = True
    return plan


def peers_available() -> Tuple[Dict[str, bool], List[str]]:
    have = {"logstore": True, "sqlite": True, "sqlitefast": True,
            "raw": hasattr(os, "fdatasync")}
    notes = []
    for store, module, pip in (("lmdb", "lmdb", "lmdb"), ("diskcache", "diskcache", "diskcache"),
                               ("pqsqlite", "persistqueue", "persist-queue"),
                               ("pqfile", "persistqueue", "persist-queue"),
                               ("queuelib", "queuelib", "queuelib")):
        have[store] = importlib.util.find_spec(module) is not None
        if not have[store] and store != "pqfile":
            notes.append(f"{pip} is not installed (pip install {pip}): its rows were skipped.")
    have["lmdbwm"] = have["lmdb"]
    redis_py = importlib.util.find_spec("redis") is not None
    server = shutil.which("redis-server")
    have["redis"] = redis_py and server is not None
    if not redis_py:
        notes.append("the redis Python client is not installed (pip install redis): Redis rows "
                     "were skipped.")
    elif server is None:
        notes.append("redis-server is not on PATH (Debian: apt-get install redis-server): Redis "
                     "rows were skipped.")
    return have, notes


# --------------------------------------------------------------------------- running
def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run_worker(spec: dict) -> None:
    """Entry point of a worker process: run one (store, workload) and write its result."""
    os.sync()  # start with no dirty pages from earlier rows: their writeback would skew fsyncs
    data = Data(BIG_VALUE_SIZE if spec.get("big") else VALUE_SIZE)
    baseline = _max_rss_mib()
    global _SQLITE_FAST, _LMDB_WRITEMAP
    _SQLITE_FAST = bool(spec.get("sqlite_fast"))
    _LMDB_WRITEMAP = bool(spec.get("lmdb_writemap"))
    fn = FUNCTIONS[spec.get("fn") or
                   f"{spec.get('functions', spec['store'])}_{spec['workload']}"]
    if spec.get("profile"):
        import cProfile
        import pstats
        global _PROFILER
        _PROFILER = cProfile.Profile()
        out = fn(spec, data)
        with open(spec["out"] + ".prof.txt", "w") as f:
            print("(timed loop only, main thread; figures under cProfile are not comparable)",
                  file=f)
            try:
                pstats.Stats(_PROFILER, stream=f).sort_stats("tottime").print_stats(25)
            except TypeError:  # nothing was profiled (threaded rows time in worker threads)
                print("(no timed loop in the main thread)", file=f)
    else:
        out = fn(spec, data)
    out["peak_rss_mib"] = _max_rss_mib()
    out["baseline_rss_mib"] = baseline
    with open(spec["out"], "w") as f:
        json.dump(out, f)


def _worker_cmd(spec: dict, strace_out: Optional[str] = None) -> List[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    if strace_out:
        cmd = ["strace", "-f", "-c", "-o", strace_out, "-e",
               "trace=fsync,fdatasync,sync_file_range,msync,syncfs"] + cmd
    return cmd


def run_row(spec: dict, root: str, index: int, strace_out: Optional[str] = None) -> dict:
    spec = dict(spec, out=os.path.join(root, f"result-{index}{'-s' if strace_out else ''}.json"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(_worker_cmd(spec, strace_out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=ROW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group (by its id)
        stdout, stderr = proc.communicate()
        return {"error": f"timed out after {ROW_TIMEOUT_S}s"}
    finally:
        stop_leftover_server(spec["path"])
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"worker exited {proc.returncode}: {tail[0]}", "stderr": stderr}
    with open(spec["out"]) as f:
        out = json.load(f)
    if spec.get("profile") and os.path.exists(spec["out"] + ".prof.txt"):
        with open(spec["out"] + ".prof.txt") as f:
            out["profile"] = f.read()
    return out


def strace_fsyncs(path: str) -> Optional[int]:
    """Total calls of the sync family in an ``strace -c`` summary."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if (len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync", "sync_file_range",
                                              "msync", "syncfs") and parts[3].isdigit()):
            total += int(parts[3])
    return total


DURABLE_WORKLOADS = ("w2", "w6x4", "w6x1")


def run_plan(plan: List[dict], root: str, profile: bool, repeat: int = 1) -> List[dict]:
    results: List[dict] = []
    written: Dict[Tuple[str, str], str] = {}
    runnable = [r for r in plan if not r.get("filtered") or r.get("keep")]
    for i, spec in enumerate(runnable):
        row = dict(spec)
        row["profile"] = profile and spec["store"].startswith("logstore")
        source = tuple(spec["reads"]) if spec.get("reads") else None
        if source:
            if source not in written:
                row["error"] = "skipped: the writer row failed"
                results.append(row)
                continue
            row["path"] = written[source]
        else:
            row["path"] = os.path.join(root, f"{spec['store']}-{spec['workload']}")
        label = f"{STORES[spec['store']]:<28} {spec['workload']}"
        print(f"  [{i + 1:2}/{len(runnable)}] {label} ...", end="", flush=True, file=sys.stderr)
        repeats = repeat if spec["workload"] in DURABLE_WORKLOADS else 1
        runs = []
        for k in range(repeats):
            if k:
                shutil.rmtree(row["path"], ignore_errors=True)
            runs.append(run_row(row, root, i))
            if "error" in runs[-1]:
                break
        ok = [r for r in runs if "error" not in r]
        if len(ok) == len(runs) and len(runs) > 1:
            ok.sort(key=lambda r: r["records"] / r["seconds"])
            best = dict(ok[len(ok) // 2])  # the median run by records/s
            best["runs_records_per_s"] = [r["records"] / r["seconds"] for r in runs]
            row.update(best)
        else:
            row.update(runs[-1])
        print(f" {'FAILED' if 'error' in row else format(row['seconds'], '.2f') + 's'}"
              + (f" (median of {len(runs)})" if len(runs) > 1 else ""), file=sys.stderr)
        if spec.get("keep") and "error" not in row:
            written[(spec["store"], spec["workload"])] = row["path"]
        elif not source:
            shutil.rmtree(row["path"], ignore_errors=True)
        if spec.get("last_reader") and source in written:
            shutil.rmtree(written.pop(source), ignore_errors=True)
        if not spec.get("filtered"):
            results.append(row)
    for path in written.values():
        shutil.rmtree(path, ignore_errors=True)
    return results


def count_fsyncs(results: List[dict], root: str) -> None:
    """Re-run every durable row under ``strace -f -c`` (untimed figures kept from the first
    run) to count fsync-family calls, the server's included for Redis."""
    rows = [r for r in results if r["workload"] in DURABLE_WORKLOADS and "error" not in r]
    for i, r in enumerate(rows):
        spec = {k: v for k, v in r.items() if k in (
            "workload", "store", "records", "threads", "per_thread", "fn", "big")}
        spec["path"] = os.path.join(root, f"strace-{i}")
        out = os.path.join(root, f"strace-{i}.txt")
        print(f"  [strace {i + 1}/{len(rows)}] {STORES[r['store']]:<28} {r['workload']} ...",
              end="", flush=True, file=sys.stderr)
        res = run_row(spec, root, 1000 + i, strace_out=out)
        shutil.rmtree(spec["path"], ignore_errors=True)
        n = strace_fsyncs(out)
        if "error" in res or n is None:
            print(" FAILED", file=sys.stderr)
            continue
        r["strace_fsyncs"] = n
        print(f" {n} sync calls", file=sys.stderr)


def add_figures(results: List[dict]) -> None:
    refs = {r["workload"]: r for r in results
            if r["store"] == "logstore" and "error" not in r}
    for r in results:
        r["durability"] = durability(r["store"], r["workload"])
        r["durability_differs"] = durability_differs(r["store"], r["workload"])
        if "error" in r:
            continue
        size = BIG_VALUE_SIZE if r.get("big") else VALUE_SIZE
        r["records_per_s"] = r["records"] / r["seconds"]
        r["mb_per_s"] = r["records_per_s"] * size / 1e6
        ref = refs.get(r["workload"])
        r["ratio_vs_logstore"] = r["records_per_s"] / ref["records_per_s"] if ref else None
        rss = r["peak_rss_mib"]
        if r.get("server_peak_rss_mib"):
            rss += r["server_peak_rss_mib"]
        r["peak_rss_total_mib"] = rss


# --------------------------------------------------------------------------- reporting
def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "not installed"


def environment(root: str) -> dict:
    try:
        import logstore
        version = logstore.__version__
    except Exception as e:
        version = f"unimportable: {e}"
    try:
        rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    redis_server = "not installed"
    if shutil.which("redis-server"):
        try:
            out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            redis_server = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        except (OSError, subprocess.SubprocessError):
            redis_server = "unknown"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "logstore": version,
        "git": rev or "unknown",
        "sqlite": sqlite3.sqlite_version,
        "lmdb": _version("lmdb"),
        "diskcache": _version("diskcache"),
        "persist-queue": _version("persist-queue"),
        "queuelib": _version("queuelib"),
        "redis-py": _version("redis"),
        "redis-server": redis_server,
        "tmpdir": os.path.dirname(root),
    }


def format_table(results: List[dict]) -> str:
    header = ["workload", "store", "records", "records/s", "MB/s", "peak RSS MiB",
              "vs logstore", "durability", "sync calls"]
    order = {w: i for i, (w, _) in enumerate(WORKLOADS)}
    store_order = {s: i for i, s in enumerate(STORES)}
    lines = []
    for r in sorted(results, key=lambda r: (order[r["workload"]], store_order[r["store"]])):
        store = STORES[r["store"]]
        sem = SEMANTICS.get((r["store"], r["workload"]))
        if sem:
            store += f" [{sem}]"
        if r.get("capped"):
            store += " (capped)"
        dur = r.get("durability", "-") + (" (!)" if r.get("durability_differs") else "")
        if "error" in r:
            lines.append([LABELS[r["workload"]], store, "-", "FAILED", "-", "-",
                          r["error"][:60], dur, "-"])
            continue
        ratio = r["ratio_vs_logstore"]
        rss = f"{r['peak_rss_mib']:,.1f}"
        if r.get("server_peak_rss_mib"):
            rss = f"{r['peak_rss_mib']:,.0f}+{r['server_peak_rss_mib']:,.0f}"
        syncs = r.get("strace_fsyncs", r.get("fsyncs"))
        lines.append([
            LABELS[r["workload"]], store, f"{r['records']:,}", f"{r['records_per_s']:,.0f}",
            f"{r['mb_per_s']:,.1f}", rss, "-" if ratio is None else f"{ratio:.2f}x", dur,
            "-" if syncs is None else f"{syncs:,}",
        ])
    return _table.render(header, lines, {0, 1, 7})


def _ratio(a: dict, b: dict) -> str:
    return f"{a['records_per_s'] / b['records_per_s']:.2f}x"


def format_scaling(results: List[dict]) -> str:
    """W6: 4 threads against 1 thread, per store (group commit shows up as > 1x)."""
    by = {(r["store"], r["workload"]): r for r in results if "error" not in r}
    lines = [f"{'store':<28} {'1 thread rec/s':>15} {f'{W6_THREADS} threads rec/s':>16} "
             f"{'scaling':>8} {'rec/sync (4 thr)':>17}"]
    for store in STORES:
        one, four = by.get((store, "w6x1")), by.get((store, "w6x4"))
        if not (one or four):
            continue
        # logstore/raw: counted inside the timed loop; others: strace, whole process
        syncs = (four.get("fsyncs") or four.get("strace_fsyncs")) if four else None
        lines.append(
            f"{STORES[store]:<28} "
            f"{(format(one['records_per_s'], ',.0f') if one else '-'):>15} "
            f"{(format(four['records_per_s'], ',.0f') if four else '-'):>16} "
            f"{(_ratio(four, one) if one and four else '-'):>8} "
            f"{(format(four['records'] / syncs, '.2f') if four and syncs else '-'):>17}")
    return "\n".join(lines)


NOTES = [
    "records/s: records per second of the timed loop only (opening, closing and checks are "
    "excluded). MB/s: value bytes (100 B, or 1 KiB for W5), 10^6 B. vs logstore: peer records/s "
    "/ logstore records/s for the same workload (>1 = peer faster); W3 compares with logstore "
    "replay() (records).",
    "peak RSS: ru_maxrss of the fresh worker process of that row (interpreter, imports, the "
    "value pool); Redis rows show client+server (the server's VmHWM). logstore reads through "
    "mmap, so file pages it touches count toward its RSS.",
    "durability, what an acknowledged write survives: 'kill -9' = handed to the OS (written to "
    "a file) before the call returns, not fsynced; 'power loss' = fsynced before the call "
    "returns. (!) marks a row weaker than the workload's reference: queuelib keeps the queue's "
    "head/tail in memory and writes them (info.json) only in close(), so after a crash the "
    "pushes since open are lost. Redis 'kill -9 (server)': appendfsync no, the AOF is written "
    "before the reply, so it survives a kill -9 of redis-server (same class).",
    "logstore: Log.open(dir, fsync='never') for W1/W1b/W5a (W1's one-record batches copied "
    "into a shared write mapping of space reserved with posix_fallocate, W1b/W5a's larger "
    "batches written with pwrite into it: in the page cache before the call returns; every "
    "64 MiB segment is fsynced when sealed, inside the timed loop), "
    "fsync='always' for W2/W6 (append returns after fdatasync; concurrent appends share one: "
    "group commit). sync calls for logstore = fdatasync+fsync counted through its FileSystem "
    "seam (or strace -f -c when available, like every other row).",
    "sqlite3: WAL, isolation_level=None; W1 one autocommit INSERT per record, W1b/W5a BEGIN; "
    "executemany(100); COMMIT, synchronous=OFF; W2/W6 synchronous=FULL (W6: one connection per "
    "thread, busy timeout 60 s). W3 SELECT ORDER BY id; W4 SELECT WHERE id=?.",
    "LMDB (py-lmdb), 8-byte big-endian int keys; W1 one write txn per record with "
    "put(append=True), W1b/W5a one txn per batch with cursor.putmulti(append=True); sync=False "
    "(written at commit, not fsynced) or sync=True (W2/W6: at every commit an fdatasync of the "
    "data pages, then the meta page written through an O_DSYNC descriptor, which strace does "
    "not count as a sync call). 'LMDB (default config)': writemap=False (commits pwrite their "
    "pages). 'LMDB writemap': writemap=True, its fastest configuration of the same durability "
    "(commits write through LMDB's shared mapping of the file, as logstore's fsync='never' "
    "appends write through theirs; a kill -9 loses nothing committed); reads are the same in "
    "both (no writemap rows for them). W3 cursor iteration in one read txn; W4 txn.get.",
    "sqlite3 'tuned': its fastest configuration of the same durability class: the same WAL and "
    "synchronous settings plus locking_mode=EXCLUSIVE (no shared-memory index or lock calls per "
    "transaction; not for W6, whose threads share the file), mmap_size=4 GiB (reads through a "
    "mapping), cache_size=256 MiB.",
    "W1k/W4k (logstore only): the W1b records written in batches of 1,000 (100 KB batches, "
    "which carry a chunk table), then W4's gets into them; a peer's gets do not depend on how "
    "its records were batched. The line under the table gives W4k / W4.",
    "diskcache: Cache(dir, eviction_policy='none') with int keys, sqlite_synchronous=1 (NORMAL, "
    "WAL: a commit is written, not fsynced) or 2 (FULL, W2/W6); W1 set per record, W1b/W5a "
    "set x100 inside transact(); W3 iterkeys() + cache[key] (what Deque iteration does); W4 "
    "cache[key].",
    "persist-queue: SQLiteQueue(dir) (values pickled, its default serializer): W1 put per record "
    "(connections switched to synchronous=OFF), W6 multithreading=True, synchronous=FULL. Every "
    "put() is its own commit (auto_commit only changes get), so it has no batch rows. W3 "
    "get(block=False) with auto_commit=False (a cursor, nothing deleted) over the W1 data. "
    "Queue (file, chunksize=100): put writes and "
    "flushes the item and rewrites its info file (tempfile + rename) on every put; it fsyncs "
    "each chunk of 100 when it fills; W3 get() without task_done.",
    "queuelib FifoDiskQueue: push = one os.write; W3 pop = two os.read per record "
    "(destructive).",
    "Redis Streams (redis-py, no hiredis): private redis-server per row on 127.0.0.1, "
    "appendonly yes, --save ''; explicit entry IDs 0-(i+1). W1 XADD per record, W1b/W5a/W2 a "
    "pipeline of 100 XADD per batch (one round trip), appendfsync no (W1/W1b/W5a) or always "
    "(W2/W6: the AOF is fsynced before the replies; one fsync covers every command of an event "
    "loop iteration). W3 XRANGE COUNT 1000 pages, W4 XRANGE id id per get. Reader rows restart "
    "the server on the writer's AOF (load untimed). Every call is a loopback round trip; the "
    "server shares the cores with the client.",
    "raw: os.write of 100 x 108 B (W2) or 108 B (W6) + os.fdatasync on a plain file whose "
    "directory entry was fsynced first: the floor for one durable write per batch/record.",
    "W6: each thread appends its own records, one call each, durably; 'scaling' = 4-thread "
    "records/s / 1-thread records/s. rec/sync = records per fsync-family call (1 = no sharing; "
    "logstore counted inside the timed loop, the others by strace over the whole process, "
    "whose setup adds a handful).",
    "sync calls (table column): fsync+fdatasync+msync+sync_file_range+syncfs calls of the whole "
    "worker process (and its redis-server), counted by strace -f -c in a second, untimed run "
    "of the same row; setup and close included.",
    "W4m: W4's offsets in one call, values returned in the order asked: logstore "
    "log.get_many(offsets) (each stored batch located once, and checked once for all its "
    "offsets), LMDB txn.cursor().getmulti(keys), sqlite SELECT id, value WHERE id IN (500 "
    "ids) per 500 offsets, put in order through a dict.",
    "Reads run right after the writes on a warm page cache. Results are one run per row: "
    "expect +-10-20% noise on a shared machine (more on fsync-bound rows).",
]


# One colour per store, the same in every run (logstore's own rows are the 1x line).
COLOURS = {
    "logstore-batches": "#1f77b4", "logstore-columns": "#aec7e8", "sqlite": "#ff7f0e",
    "sqlitefast": "#ffbb78", "lmdb": "#2ca02c", "lmdbwm": "#98df8a", "diskcache": "#d62728",
    "pqsqlite": "#9467bd", "pqfile": "#c5b0d5", "queuelib": "#8c564b", "redis": "#e377c2",
    "raw": "#7f7f7f",
}


def write_png(results: List[dict], path: str) -> None:
    """One chart of ratios: for every workload, each peer's records/s divided by logstore's
    (log scale around 1x: above the line the peer is faster), one colour per store."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--png: matplotlib is not importable; skipped writing {path}")
        return
    ok = [r for r in results if "error" not in r and r.get("ratio_vs_logstore")
          and r["store"] != "logstore"]
    workloads = [w for w, _ in WORKLOADS if any(r["workload"] == w for r in ok)]
    stores = [s for s in STORES if any(r["store"] == s for r in ok)]
    ratio = {(r["workload"], r["store"]): r["ratio_vs_logstore"] for r in ok}
    fig, ax = plt.subplots(figsize=(15, 6.5))
    width = 0.85 / max(1, len(stores))
    for i, store in enumerate(stores):
        xs = [j + (i - (len(stores) - 1) / 2) * width for j, w in enumerate(workloads)
              if (w, store) in ratio]
        heights = [ratio[(w, store)] - 1.0 for w in workloads if (w, store) in ratio]
        ax.bar(xs, heights, width, bottom=1.0, label=STORES[store],  # from 1x to the ratio
               color=COLOURS.get(store, f"C{i % 10}"))
    ax.axhline(1.0, color="black", linewidth=1.2)
    ax.text(len(workloads) - 0.5, 1.0, " logstore = 1x", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([LABELS[w] for w in workloads], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("peer records/s \u00f7 logstore records/s (log scale; > 1: peer faster)")
    ax.set_title("Peers relative to logstore, per workload (bench/compare.py)")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, help=f"records for W1/W1b/W3 (default "
                   f"{DEFAULT_RECORDS:,}; {QUICK_RECORDS:,} with --quick); W5 uses a tenth")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_RECORDS:,} records, caps / {QUICK_CAP_DIVISOR}, "
                        f"{QUICK_GETS:,} gets, W6 a quarter")
    p.add_argument("--gets", type=int, help=f"W4 gets (default {DEFAULT_GETS:,})")
    p.add_argument("--stores", help="comma-separated store ids to run: " + ",".join(
        s for s in STORES if s not in ("logstore-batches", "logstore-columns")))
    p.add_argument("--only", help="comma-separated workloads to report (w1,w1b,w2,w3,w4,w4m,w5a,"
                   "w5b,w6x4,w6x1); the writers that readers need still run")
    p.add_argument("--repeat-durable", type=int, metavar="K",
                   help="run each fsync-bound row (W2, W6) K times and keep the median run "
                        "(their figures swing with other processes' disk traffic; default 3, "
                        "1 with --quick)")
    p.add_argument("--no-strace", action="store_true",
                   help="do not re-run the durable rows under strace to count sync calls")
    p.add_argument("--profile", action="store_true",
                   help="run logstore rows under cProfile and print the top 25 functions")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--png", metavar="PATH", help="chart of peer / logstore ratios per workload "
                   "(needs matplotlib)")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.records is None:
        args.records = QUICK_RECORDS if args.quick else DEFAULT_RECORDS
    if args.records < 10 * BATCH or args.records % BATCH:
        p.error(f"--records must be a multiple of {BATCH}, at least {10 * BATCH}")
    if args.gets is None:
        args.gets = QUICK_GETS if args.quick else DEFAULT_GETS
    if args.repeat_durable is None:
        args.repeat_durable = 1 if args.quick else 3
    if args.repeat_durable < 1:
        p.error("--repeat-durable must be >= 1")
    args.stores = set(args.stores.split(",")) if args.stores else None
    args.only = set(args.only.split(",")) if args.only else None
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    have, notes = peers_available()
    plan = build_plan(args, have)
    if args.only:
        # Keep the filtered writers that a wanted reader needs; drop the others.
        needed = {tuple(r["reads"]) for r in plan if r.get("reads") and not r.get("filtered")}
        plan = [r for r in plan if not r.get("filtered")
                or (r.get("keep") and (r["store"], r["workload"]) in needed)]
        for r in plan:
            if r.get("reads") and r.get("filtered"):
                r.pop("filtered")
    capped = sorted({f"{STORES[r['store']]} {r['workload']}: {r.get('records'):,}"
                     + (f" ({r['gets']:,} gets)" if r["workload"] in ("w4", "w4m") else "")
                     for r in plan if r.get("capped") and not r.get("filtered")})
    root = tempfile.mkdtemp(prefix="logstore-compare-")
    load0 = os.getloadavg()
    try:
        env = environment(root)
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        n = args.records
        print(f"records: {n:,} x {VALUE_SIZE} B (W1/W1b/W3); durable W2: "
              f"{min(MAX_DURABLE_BATCHES, n // BATCH):,} batches of {BATCH}; W4: {args.gets:,} "
              f"gets; W5: {max(BATCH, n // 10 // BATCH * BATCH):,} x {BIG_VALUE_SIZE} B; "
              f"load average {load0[0]:.2f}", flush=True)
        started = time.perf_counter()
        results = run_plan(plan, root, args.profile, args.repeat_durable)
        if not args.no_strace and shutil.which("strace"):
            count_fsyncs(results, root)
        elif not args.no_strace:
            notes.append("strace is not on PATH: sync calls are counted for logstore and raw "
                         "only.")
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()

    add_figures(results)
    if capped:
        notes.insert(0, "capped rows (slow peers; rates comparable, totals not): "
                     + "; ".join(capped))
    print()
    print(format_table(results))
    by = {(r["store"], r["workload"]): r for r in results if "error" not in r}
    if ("logstore", "w4") in by and ("logstore", "w4k") in by:
        print(f"\nlogstore random get, batches of 1,000 / batches of 100: "
              f"{by[('logstore', 'w4k')]['records_per_s'] / by[('logstore', 'w4')]['records_per_s']:.2f}x")
    print()
    print("W6 scaling (durable single-record appends):")
    print(format_scaling(results))
    print()
    print("notes:")
    for note in notes + NOTES:
        print(f"  - {note}")
    print(f"\nload average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
          f"total wall time {elapsed:.0f}s")
    for r in results:
        if r.get("profile"):
            print(f"\n--- cProfile: {STORES[r['store']]} {r['workload']}")
            print(r["profile"])
    if args.json:
        for r in results:
            r.pop("out", None)
            r.pop("path", None)
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": {
                "records": args.records, "gets": args.gets, "quick": args.quick,
                "repeat_durable": args.repeat_durable, "value_bytes": VALUE_SIZE,
                "big_value_bytes": BIG_VALUE_SIZE, "batch": BATCH,
                "seed": SEED}, "results": results, "notes": notes + NOTES,
                "load_average": [load0[0], load1[0]], "wall_s": elapsed}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        write_png(results, args.png)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
