"""Many processes, one store (issue 19): shared-log appends, work queues and DurableQueue with
several processes, against Redis Streams and persist-queue driven by the same processes.

Usage::

    python bench/multiproc_bench.py [--quick] [--repeat K] [--only A,B,...] [--json out.json]
                                    [--png out.png]

Groups of rows (every row of a group runs in the same run as its peers; ``--repeat`` runs every
group K times, round-robin, and the table shows the median with the range over the runs):

  A  append, fsync never: single 100-byte records into ONE log from 1 process on an exclusive
     log, 1 process on a shared log, 4 processes on a shared log (aggregate).
  B  append, fsync always: the same, plus 4 threads of one process on an exclusive log (group
     commit inside one process). fdatasync calls are counted through logstore's FileSystem seam.
  C  work queue, fsync never: 1 producer process + W worker processes (default 4) on one queue;
     acked messages/s. logstore get/ack one at a time and get_many(100)/ack_many; Redis Streams
     (XADD; XREADGROUP COUNT 100 + one XACK of the batch); persist-queue SQLiteAckQueue.
  D  the same with every operation durable (fsync always / appendfsync always / synchronous=FULL).
  E  DurableQueue: 1 producer process + W worker processes, get() + task_done(); items/s; vs
     persist-queue's SQLiteQueue and file Queue driven the same way.

Every process is started with the multiprocessing "spawn" context and opens the store itself;
timing starts when all of them have passed a barrier and stops at the last append (A, B) or the
last ack of the last worker (C-E). Correctness is checked outside the timed part: every record
or message exactly once, byte for byte, per-process order (A, B), nothing left in the queue.
See bench/README.md, section "multiproc_bench.py".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as stdlib_queue
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # spawned children import this file as __mp_main__

import _table  # noqa: E402 (bench/, next to this script)
from _redis import RedisServer, stop_leftover_server  # noqa: E402

VALUE_SIZE = 100
SEED = 20261207
LOG_HEAD = struct.Struct("<II")  # (process index, sequence number) at the start of a log value
SEQ = struct.Struct("<Q")  # a queue message's sequence number
BATCH = 100  # get_many / XREADGROUP COUNT
GET_TIMEOUT = 0.05  # s a worker's get blocks when the queue is empty (then it asks again)
BARRIER_TIMEOUT = 120.0  # s for every process to start, import and open its store
PQ_CLEAR_EVERY = 1_000  # persist-queue SQLiteAckQueue: clear_acked_data() every 1,000 own acks
DEFAULT_WORKERS = 4
APPENDERS = 4

SIZES = {  # group -> (default, --quick): records or messages per row
    "A": (200_000, 40_000),
    "B": (3_000, 800),
    "C": (40_000, 10_000),
    "D": (1_500, 400),
    "E": (20_000, 5_000),
    "Ed": (1_000, 300),  # the durable rows of group E
}


# --------------------------------------------------------------------------- data
def _pad() -> bytes:
    return random.Random(SEED).randbytes(VALUE_SIZE)


def log_values(proc: int, n: int) -> List[bytes]:
    """n distinct 100-byte values of appender ``proc``: <u32 proc><u32 seq><92 fixed bytes>."""
    tail = _pad()[LOG_HEAD.size:]
    pack = LOG_HEAD.pack
    return [pack(proc, i) + tail for i in range(n)]


def queue_values(n: int) -> List[bytes]:
    """n distinct 100-byte messages: <u64 seq><92 seeded bytes, varying with seq>."""
    rng = random.Random(SEED)
    pool = [rng.randbytes(VALUE_SIZE - SEQ.size) for _ in range(min(n, 997))]
    pack = SEQ.pack
    return [pack(i) + pool[i % len(pool)] for i in range(n)]


def split(n: int, k: int) -> List[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def counting_fs(fsync: str):
    """A logstore FileSystem that counts fdatasync / fsync calls (the I/O seam), for the
    fsync="always" rows; None (the default file system) otherwise: any other FileSystem than the
    default one turns off the write mapping that exclusive fsync="never" logs append through
    (``ActiveFile.apply_policy``), which would slow down exactly the rows it should not."""
    if fsync != "always":
        return None
    from logstore.fs import FileSystem

    class CountingFS(FileSystem):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.fdatasyncs = 0
            self.fsyncs = 0

        def fdatasync(self, fd: int) -> None:
            super().fdatasync(fd)
            with self.lock:
                self.fdatasyncs += 1

        def fsync(self, fd: int) -> None:
            super().fsync(fd)
            with self.lock:
                self.fsyncs += 1

        def counts(self) -> Tuple[int, int]:
            with self.lock:
                return self.fdatasyncs, self.fsyncs

    return CountingFS()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- children
def child_main(role: str, spec: dict, index: int, barrier: Any, done: Any, out: str) -> None:
    """Entry point of every spawned process: run ``role`` and write its result to ``out``."""
    try:
        if spec.get("profile"):
            import cProfile
            prof = cProfile.Profile()
            result = prof.runcall(ROLES[role], spec, index, barrier, done)
            prof.dump_stats(out + ".prof")
        else:
            result = ROLES[role](spec, index, barrier, done)
    except BaseException as e:  # reported by the parent (with the traceback)
        result = {"error": f"{role}[{index}]: {type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()}
        try:
            barrier.abort()  # do not leave the others waiting for us
        except Exception:
            pass
        done.set()
    with open(out, "w") as f:
        json.dump(result, f)


def _go(barrier: Any) -> Tuple[float, float]:
    barrier.wait(BARRIER_TIMEOUT)
    return time.perf_counter(), cpu_s()  # CLOCK_MONOTONIC on Linux: one clock for all processes


def role_append(spec: dict, index: int, barrier: Any, done: Any) -> dict:
    """One appender process: ``spec['threads']`` threads, each appending its own values."""
    from logstore import Log
    threads = spec.get("threads", 1)
    shares = split(spec["share"], threads)
    values = [log_values(index * threads + t, k) for t, k in enumerate(shares)]
    fs = counting_fs(spec["fsync"])
    log = Log.open(spec["path"], shared=spec["shared"], fsync=spec["fsync"], fs=fs)
    offsets: List[List[int]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []

    def run(t: int) -> None:
        try:
            append, got = log.append, offsets[t]
            for v in values[t]:
                got.append(append(v))
        except BaseException as e:
            errors.append(e)

    t0, c0 = _go(barrier)
    s0 = fs.counts() if fs else (0, 0)
    if threads == 1:
        run(0)
    else:
        ths = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    t1, c1 = time.perf_counter(), cpu_s()
    s1 = fs.counts() if fs else (0, 0)
    if errors:
        raise errors[0]
    log.close()
    counted = {"fdatasyncs": s1[0] - s0[0], "fsyncs": s1[1] - s0[1]} if fs else {}
    return {"start": t0, "end": t1, "cpu_s": c1 - c0, "count": spec["share"], **counted,
            "offsets": {str(index * threads + t): o for t, o in enumerate(offsets)}}


# ---- queue adapters: ADAPTERS[store](spec) -> Adapter, opened in the calling process.
class Adapter:
    """One process's handle on a queue: ``put(value)``; ``put_many(values)`` (stores with a
    batch write); ``get_batch()`` -> [(value, token)], [] after GET_TIMEOUT with nothing
    ready; ``ack(tokens)``; ``mark()`` starts counting (at the barrier) and ``extra()`` returns
    the figures counted since; ``close()``."""

    def __init__(self, put: Callable[[bytes], Any], get_batch: Callable[[], list],
                 ack: Callable[[list], Any], close: Callable[[], Any],
                 put_many: Optional[Callable[[List[bytes]], Any]] = None, fs: Any = None):
        self.put, self.get_batch, self.ack, self.close = put, get_batch, ack, close
        self.put_many, self.fs = put_many, fs
        self.base = (0, 0)

    def mark(self) -> None:
        if self.fs is not None:
            self.base = self.fs.counts()

    def extra(self) -> dict:
        if self.fs is None:
            return {}
        d, f = self.fs.counts()
        return {"fdatasyncs": d - self.base[0], "fsyncs": f - self.base[1]}


def adapter_logstore(spec: dict) -> Adapter:
    from logstore import Store
    fs = counting_fs(spec["fsync"])
    store = Store.open(spec["path"], shared=True, fsync=spec["fsync"], fs=fs)
    q = store.queue("jobs", visibility_timeout=spec["visibility_timeout"],
                    partitions=spec.get("partitions", 1))
    if spec["mode"] == "batch":
        def get_batch() -> list:
            return [(m.value, m) for m in q.get_many(BATCH, timeout=GET_TIMEOUT)]

        def ack(tokens: list) -> None:
            q.ack_many(tokens)
    else:
        def get_batch() -> list:
            m = q.get(timeout=GET_TIMEOUT)
            return [] if m is None else [(m.value, m)]

        def ack(tokens: list) -> None:
            q.ack(tokens[0])

    # A work queue's messages live in its topic (README): a batch published there is queued
    # for every getter, as puts are. (WorkQueue has no put_many.)
    return Adapter(q.put, get_batch, ack, store.close, put_many=store.topic("jobs").publish_batch,
                   fs=fs)


def adapter_redis(spec: dict) -> Adapter:
    import redis
    r = redis.Redis(host="127.0.0.1", port=spec["redis_port"])
    r.ping()  # connected before the barrier
    name = f"w{os.getpid()}"

    def put(v: bytes) -> None:
        r.xadd("jobs", {"v": v})

    def put_many(values: List[bytes]) -> None:
        pipe = r.pipeline(transaction=False)
        for v in values:
            pipe.xadd("jobs", {"v": v})
        pipe.execute()

    def get_batch() -> list:
        res = r.xreadgroup("g", name, {"jobs": ">"}, count=BATCH,
                           block=int(GET_TIMEOUT * 1000))
        if not res or not res[0][1]:
            return []
        return [(fields[b"v"], mid) for mid, fields in res[0][1]]

    def ack(tokens: list) -> None:
        r.xack("jobs", "g", *tokens)  # the whole batch in one command, one round trip

    return Adapter(put, get_batch, ack, r.close, put_many=put_many)


def _pq_sync(q: Any, spec: dict) -> None:
    """persist-queue opens WAL connections with sqlite's default synchronous=FULL (a WAL fsync
    per commit). The fsync-never rows switch every connection of the process to OFF."""
    want = 2 if spec["fsync"] == "always" else 0
    for conn in {id(q._putter): q._putter, id(q._getter): q._getter}.values():
        if want == 0:
            conn.execute("PRAGMA synchronous=OFF")
        got = conn.execute("PRAGMA synchronous").fetchone()[0]
        if got != want:
            raise AssertionError(f"persist-queue synchronous={got}, expected {want}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            raise AssertionError("persist-queue connection not in WAL mode")


def adapter_pq_ack(spec: dict) -> Adapter:
    import persistqueue
    # auto_resume=False: the default would turn every unacked message of the other processes
    # back to ready when a process opens the queue.
    q = persistqueue.SQLiteAckQueue(spec["path"], multithreading=True, auto_commit=True,
                                    auto_resume=False)
    _pq_sync(q, spec)
    acks = [0]

    def get_batch() -> list:
        try:
            m = q.get(timeout=GET_TIMEOUT, raw=True)
        except persistqueue.Empty:
            return []
        return [(m["data"], m["pqid"])]

    def ack(tokens: list) -> None:
        q.ack(id=tokens[0])
        acks[0] += 1
        if acks[0] % PQ_CLEAR_EVERY == 0:
            # Acked rows stay in the table and every get scans past them: persist-queue
            # leaves this housekeeping to the caller (see bench/README.md, queue_bench.py).
            q.clear_acked_data(max_delete=None, keep_latest=None)

    return Adapter(q.put, get_batch, ack, q.close)


def adapter_pq_sqlite(spec: dict) -> Adapter:
    import persistqueue
    q = persistqueue.SQLiteQueue(spec["path"], multithreading=True, auto_commit=True)
    _pq_sync(q, spec)

    def get_batch() -> list:
        try:
            return [(q.get(timeout=GET_TIMEOUT), None)]  # deleted as it is got
        except persistqueue.Empty:
            return []

    return Adapter(q.put, get_batch, lambda tokens: None, q.close)


def adapter_pq_file(spec: dict) -> Adapter:
    import persistqueue
    q = persistqueue.Queue(spec["path"], tempdir=spec["path"])

    def get_batch() -> list:
        try:
            return [(q.get(timeout=GET_TIMEOUT), None)]
        except persistqueue.Empty:
            return []

    return Adapter(q.put, get_batch, lambda tokens: q.task_done(), lambda: None)


def adapter_durablequeue(spec: dict) -> Adapter:
    from logstore import DurableQueue
    fs = counting_fs(spec["fsync"])
    q = DurableQueue(spec["path"], fsync=spec["fsync"], shared=True, fs=fs)

    def get_batch() -> list:
        try:
            return [(q.get(timeout=GET_TIMEOUT), None)]
        except stdlib_queue.Empty:
            return []

    return Adapter(q.put, get_batch, lambda tokens: q.task_done(), q.close, fs=fs)


ADAPTERS: Dict[str, Callable[[dict], Adapter]] = {
    "logstore": adapter_logstore,
    "redis": adapter_redis,
    "pq_ack": adapter_pq_ack,
    "pq_sqlite": adapter_pq_sqlite,
    "pq_file": adapter_pq_file,
    "durablequeue": adapter_durablequeue,
}


def role_producer(spec: dict, index: int, barrier: Any, done: Any) -> dict:
    values = queue_values(spec["messages"])
    a = ADAPTERS[spec["store"]](spec)
    k = spec.get("producer_batch", 1)
    t0, c0 = _go(barrier)
    a.mark()
    try:
        if k == 1:
            put = a.put
            for v in values:
                put(v)
        else:
            put_many = a.put_many
            for i in range(0, len(values), k):
                put_many(values[i:i + k])
        t1, c1 = time.perf_counter(), cpu_s()
    finally:
        done.set()  # the workers stop at their first empty get after this
    out = {"start": t0, "end": t1, "cpu_s": c1 - c0, "count": len(values), **a.extra()}
    a.close()
    return out


def role_worker(spec: dict, index: int, barrier: Any, done: Any) -> dict:
    values = queue_values(spec["messages"])
    a = ADAPTERS[spec["store"]](spec)
    get_batch, ack = a.get_batch, a.ack
    received: List[bytes] = []
    t0, c0 = _go(barrier)
    a.mark()
    last = None
    deadline = t0 + spec["deadline_s"]
    while True:
        finished = done.is_set()  # read BEFORE the get: an empty get after it means empty
        batch = get_batch()
        if not batch:
            if finished:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"worker {index}: no end after {spec['deadline_s']:.0f} s")
            continue
        ack([tok for _, tok in batch])
        last = time.perf_counter()
        received.extend(v for v, _ in batch)
    c1 = cpu_s()
    figures = a.extra()
    a.close()
    # Checked untimed: the bytes of every message received, and its sequence number.
    seqs, wrong = [], 0
    unpack = SEQ.unpack_from
    for v in received:
        v = bytes(v)
        i = unpack(v)[0]
        if i >= len(values) or v != values[i]:
            wrong += 1
        seqs.append(i)
    return {"start": t0, "end": last, "cpu_s": c1 - c0, "count": len(received),
            "seqs": seqs, "wrong_bytes": wrong, **figures}


ROLES = {"append": role_append, "producer": role_producer, "worker": role_worker}


# --------------------------------------------------------------------------- parent: one row
PROFILES: List[str] = []  # --profile: the merged profile text of the row just run


def run_processes(procs: List[Tuple[str, dict, int]], rowdir: str, timeout_s: float
                  ) -> List[dict]:
    """Start every (role, spec, index) as a spawned process; wait; return their results."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(procs))
    done = ctx.Event()
    outs = [os.path.join(rowdir, f"result-{role}-{i}.json") for role, _, i in procs]
    children = [ctx.Process(target=child_main, args=(role, spec, i, barrier, done, out),
                            daemon=True)
                for (role, spec, i), out in zip(procs, outs)]
    for c in children:
        c.start()
    deadline = time.monotonic() + timeout_s
    try:
        for c in children:
            c.join(max(0.0, deadline - time.monotonic()))
    finally:
        alive = [c for c in children if c.is_alive()]
        for c in alive:  # only our own children, by their Process object (pid)
            c.kill()
            c.join()
    results = []
    profiles = [out + ".prof" for out in outs if os.path.exists(out + ".prof")]
    if profiles:
        import io
        import pstats
        text = io.StringIO()
        for role in sorted({r for r, _, _ in procs}):
            mine = [out + ".prof" for out, (r, _, _) in zip(outs, procs)
                    if r == role and os.path.exists(out + ".prof")]
            if mine:
                print(f"--- {role} processes ({len(mine)}), whole process (setup, barrier wait "
                      f"and checks included), top 25 by own time", file=text)
                pstats.Stats(*mine, stream=text).sort_stats("tottime").print_stats(25)
        PROFILES.append(text.getvalue())
    for c, out, (role, _, i) in zip(children, outs, procs):
        if os.path.exists(out):
            with open(out) as f:
                results.append(json.load(f))
        else:
            results.append({"error": f"{role}[{i}] exited {c.exitcode} with no result"
                                     + (" (killed: row timed out)" if c in alive else "")})
    return results


def _first_error(results: List[dict]) -> Optional[dict]:
    errs = [r for r in results if "error" in r]
    # A BrokenBarrierError is the consequence of another process's failure: report the cause.
    errs.sort(key=lambda r: "BrokenBarrier" in r["error"])
    return errs[0] if errs else None


def row_append(spec: dict, rowdir: str) -> dict:
    path = os.path.join(rowdir, "log")
    n, procs, threads = spec["records"], spec["procs"], spec.get("threads", 1)
    shares = split(n, procs)
    plan = [("append", dict(path=path, shared=spec["shared"], fsync=spec["fsync"], share=k,
                            threads=threads, profile=spec.get("profile")), i)
            for i, k in enumerate(shares)]
    results = run_processes(plan, rowdir, spec["timeout_s"])
    err = _first_error(results)
    if err:
        return err
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    out = {"seconds": end - start, "count": n, "cpu_s": sum(r["cpu_s"] for r in results)}
    if "fdatasyncs" in results[0]:
        out["fdatasyncs"] = sum(r["fdatasyncs"] for r in results)
        out["fsyncs"] = sum(r["fsyncs"] for r in results)
    out["check"] = verify_log(path, results, {i * threads + t: k
                                               for i, share in enumerate(shares)
                                               for t, k in enumerate(split(share, threads))})
    return out


def verify_log(path: str, results: List[dict], expected: Dict[int, int]) -> str:
    """Every record once, dense offsets, each writer's records in its order, at the offsets
    its appends returned, byte for byte."""
    from logstore import Log
    total = sum(expected.values())
    log = Log.open(path, readonly=True)
    try:
        recs = list(log.replay())
    finally:
        log.close()
    check(len(recs) == total, f"log holds {len(recs):,} records, {total:,} were appended")
    check([r.offset for r in recs] == list(range(total)), "offsets are not dense from 0")
    writer_of: List[Tuple[int, int]] = []
    nxt = {w: 0 for w in expected}
    tails = {w: log_values(w, 1)[0][LOG_HEAD.size:] for w in expected}
    for r in recs:
        w, i = LOG_HEAD.unpack_from(r.value)
        check(w in expected, f"offset {r.offset}: unknown writer {w}")
        check(i == nxt[w], f"writer {w}: record {i} at offset {r.offset}, expected {nxt[w]} "
                           f"(per-process order or exactly-once broken)")
        check(r.value[LOG_HEAD.size:] == tails[w], f"offset {r.offset}: wrong bytes")
        nxt[w] += 1
        writer_of.append((w, i))
    check(nxt == expected, f"records per writer {nxt} != {expected}")
    for res in results:
        for w, offs in res["offsets"].items():
            w = int(w)
            check(len(offs) == expected[w], f"writer {w} got {len(offs)} offsets")
            for i, o in enumerate(offs):
                if writer_of[o] != (w, i):
                    check(False, f"writer {w}: append {i} returned offset {o}, which holds "
                                 f"writer {writer_of[o][0]}'s record {writer_of[o][1]}")
    return "ok"


def row_queue(spec: dict, rowdir: str) -> dict:
    store, n, workers = spec["store"], spec["messages"], spec["workers"]
    path = os.path.join(rowdir, "q")
    common = dict(store=store, path=path, fsync=spec["fsync"], mode=spec.get("mode", "single"),
                  messages=n, visibility_timeout=spec["visibility_timeout"],
                  deadline_s=spec["timeout_s"], producer_batch=spec.get("producer_batch", 1),
                  partitions=spec.get("partitions", 1), profile=spec.get("profile"))
    server = None
    try:
        if store == "redis":
            server = RedisServer(os.path.join(rowdir, "redis"),
                                 "always" if spec["fsync"] == "always" else "no").start()
            server.client().xgroup_create("jobs", "g", id="0", mkstream=True)
            common["redis_port"] = server.port
        elif store in ("pq_ack", "pq_sqlite", "pq_file"):
            os.makedirs(path)
        plan = [("producer", common, 0)] + [("worker", common, i) for i in range(workers)]
        results = run_processes(plan, rowdir, spec["timeout_s"] + BARRIER_TIMEOUT)
        err = _first_error(results)
        if err:
            return err
        producer, ws = results[0], results[1:]
        start = min(r["start"] for r in results)
        ends = [r["end"] for r in ws if r["end"] is not None]
        acked = sum(r["count"] for r in ws)
        out = {"seconds": max(ends) - start if ends else None, "count": acked,
               "producer_s": producer["end"] - start, "produced": producer["count"],
               "cpu_s": sum(r["cpu_s"] for r in results),
               "per_worker": [r["count"] for r in ws]}
        if "fdatasyncs" in results[1]:
            out["fdatasyncs"] = sum(r.get("fdatasyncs", 0) for r in results)
            out["fsyncs"] = sum(r.get("fsyncs", 0) for r in results)
        out.update(verify_queue(spec, path, ws, server))
        if server is not None:
            info = server.client().info("persistence")
            check(info.get("aof_last_write_status") == "ok", f"redis AOF status {info}")
            out["server_cpu_s"] = server_cpu_s(server)
        return out
    finally:
        if server is not None:
            server.stop()
            stop_leftover_server(server.path)


def server_cpu_s(server: RedisServer) -> Optional[float]:
    try:
        with open(f"/proc/{server.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def verify_queue(spec: dict, path: str, workers: List[dict], server: Any) -> dict:
    """Every message processed exactly once (duplicates and losses counted, not hidden) and
    nothing left in the queue."""
    n = spec["messages"]
    counts = bytearray(n)
    extra_deliveries = wrong = 0
    for w in workers:
        wrong += w["wrong_bytes"]
        for i in w["seqs"]:
            if 0 <= i < n:
                if counts[i]:
                    extra_deliveries += 1
                counts[i] = min(255, counts[i] + 1)
    missing = counts.count(0)
    left = leftover(spec, path, server)
    problems = []
    if extra_deliveries:
        problems.append(f"{extra_deliveries:,} messages processed twice")
    if missing:
        problems.append(f"{missing:,} never processed")
    if wrong:
        problems.append(f"{wrong:,} with wrong bytes")
    if left:
        problems.append(left)
    return {"duplicates": extra_deliveries, "missing": missing,
            "check": "; ".join(problems) if problems else "ok"}


def leftover(spec: dict, path: str, server: Any) -> str:
    """'' when the queue is empty after the run (opened afresh), else what is left."""
    store = spec["store"]
    if store == "logstore":
        from logstore import Store
        s = Store.open(path, shared=True, fsync="never")
        try:
            q = s.queue("jobs")
            st = q.stats()
            again = q.get(timeout=0)
            if st["total"] or st["in_flight"] or again is not None:
                return f"left in the queue: {st}"
        finally:
            s.close()
    elif store == "durablequeue":
        from logstore import DurableQueue
        q = DurableQueue(path, fsync="never", shared=True)
        try:
            if q.qsize() or not q.empty():
                return f"left in the queue: qsize {q.qsize()}"
            try:
                q.get_nowait()
                return "an item came back after the run"
            except stdlib_queue.Empty:
                pass
        finally:
            q.close()
    elif store == "redis":
        r = server.client()
        pending = r.xpending("jobs", "g")["pending"]
        lag = r.xinfo_groups("jobs")[0].get("lag")
        if pending or lag:
            return f"redis: {pending} pending, lag {lag}"
    elif store == "pq_ack":
        import persistqueue
        q = persistqueue.SQLiteAckQueue(path, auto_resume=False)
        try:
            if q.ready_count() or q.unack_count():
                return f"left: {q.ready_count()} ready, {q.unack_count()} unacked"
        finally:
            q.close()
    elif store == "pq_sqlite":
        import persistqueue
        q = persistqueue.SQLiteQueue(path)
        try:
            if q.qsize():
                return f"left: {q.qsize()} items"
        finally:
            q.close()
    elif store == "pq_file":
        import persistqueue
        q = persistqueue.Queue(path, tempdir=path)
        if q.qsize():
            return f"left: {q.qsize()} items"
    return ""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


# --------------------------------------------------------------------------- plan
# Each row: id, group, label, kind, spec. Groups run their rows back to back, once per repeat.
GROUPS = {
    "A": "append 100 B, fsync never",
    "B": "append 100 B, fsync always",
    "C": "work queue, fsync never",
    "D": "work queue, fsync always",
    "E": "DurableQueue",
}


def build_plan(args: argparse.Namespace) -> List[dict]:
    q = 1 if args.quick else 0
    w = args.workers
    rows: List[dict] = []

    def add(group: str, rid: str, label: str, kind: str, **spec: Any) -> None:
        rows.append({"id": rid, "group": group, "label": label, "kind": kind, **spec})

    for g, fsync in (("A", "never"), ("B", "always")):
        n = args.records.get(g) or SIZES[g][q]
        add(g, f"{g}.excl1", "exclusive log, 1 process", "append", records=n, procs=1,
            shared=False, fsync=fsync)
        if g == "B":
            add(g, f"{g}.excl4t", f"exclusive log, 1 process x {APPENDERS} threads", "append",
                records=n, procs=1, threads=APPENDERS, shared=False, fsync=fsync)
        add(g, f"{g}.shared1", "shared log, 1 process", "append", records=n, procs=1,
            shared=True, fsync=fsync)
        add(g, f"{g}.shared4", f"shared log, {APPENDERS} processes", "append", records=n,
            procs=APPENDERS, shared=True, fsync=fsync)
    for g, fsync in (("C", "never"), ("D", "always")):
        n = args.records.get(g) or SIZES[g][q]
        common = dict(messages=n, workers=w, fsync=fsync, partitions=args.partitions)
        add(g, f"{g}.ls1", "logstore get/ack", "queue", store="logstore", mode="single",
            **common)
        add(g, f"{g}.lsb", f"logstore get_many({BATCH})/ack_many", "queue", store="logstore",
            mode="batch", **common)
        add(g, f"{g}.redis", f"Redis Streams XREADGROUP COUNT {BATCH} + XACK", "queue",
            store="redis", **common)
        add(g, f"{g}.pqack", "persist-queue SQLiteAckQueue get/ack", "queue", store="pq_ack",
            **common)
        # The same consumers with a producer that writes 100 messages per call: what the
        # workers can take when the one producer process is not the limit.
        # (Durable: 10x the messages, the rows are that much faster.)
        fast = dict(common, messages=n * (10 if fsync == "always" else 1))
        add(g, f"{g}.lsbp", f"logstore get_many/ack_many, producer batches of {BATCH}",
            "queue", store="logstore", mode="batch", producer_batch=BATCH, **fast)
        add(g, f"{g}.redisp", f"Redis Streams, producer pipelines {BATCH} XADD",
            "queue", store="redis", producer_batch=BATCH, **fast)
    for fsync, size in (("never", "E"), ("always", "Ed")):
        n = args.records.get(size) or SIZES[size][q]
        common = dict(messages=n, workers=w, fsync=fsync)
        add("E", f"E.dq.{fsync}", f"logstore DurableQueue fsync={fsync}", "queue",
            store="durablequeue", **common)
        add("E", f"E.pqsql.{fsync}", "persist-queue SQLiteQueue "
            + ("synchronous=OFF" if fsync == "never" else "(default, FULL)"), "queue",
            store="pq_sqlite", **common)
        if fsync == "never":
            # Not usable by several processes (see the notes): a short row shows what happens.
            add("E", "E.pqfile", "persist-queue Queue (file)", "queue", store="pq_file",
                **dict(common, messages=min(n, 2_000)))
    for r in rows:
        r.setdefault("visibility_timeout", 300.0)
        n = r.get("records") or r.get("messages")
        r["timeout_s"] = args.row_timeout or max(120.0, n / 100)
    return rows


# Ratios printed per group, computed run by run: (subject id, peer id, target, what).
def ratio_pairs(rows: List[dict]) -> List[Tuple[str, str, Optional[float], str]]:
    ids = {r["id"] for r in rows}
    pairs: List[Tuple[str, str, Optional[float], str]] = [
        ("A.shared4", "A.shared1", 1.0, "no collapse under contention (target >= 1x)"),
        ("A.shared1", "A.excl1", None, "single-process cost of sharing"),
        ("A.shared4", "A.excl1", None, "4 sharing processes vs the exclusive log"),
        ("B.shared4", "B.shared1", 2.0, "shared fsyncs (target >= 2x)"),
        ("B.shared1", "B.excl1", None, "single-process cost of sharing, durable"),
        ("B.shared4", "B.excl4t", None, "4 processes vs 4 threads of one process"),
    ]
    for g in ("C", "D"):
        for subject in (f"{g}.ls1", f"{g}.lsb"):
            for peer, what in ((f"{g}.redis", "vs Redis Streams (target > 1x)"),
                               (f"{g}.pqack", "vs SQLiteAckQueue (target > 1x)")):
                pairs.append((subject, peer, 1.0, what))
        pairs.append((f"{g}.lsbp", f"{g}.redisp", 1.0,
                      "batched producers: logstore vs Redis Streams (target > 1x)"))
        pairs.append((f"{g}.lsb", f"{g}.ls1", None, "what batching the gets/acks buys"))
    for fsync in ("never", "always"):
        pairs.append((f"E.dq.{fsync}", f"E.pqsql.{fsync}", None, "vs SQLiteQueue"))
    pairs.append(("E.dq.never", "E.pqfile", None, "vs persist-queue Queue (file)"))
    return [p for p in pairs if p[0] in ids and p[1] in ids]


# --------------------------------------------------------------------------- run + report
def run_row(row: dict, root: str, run: int) -> dict:
    rowdir = tempfile.mkdtemp(prefix=f"{row['id']}-{run}-", dir=root)
    os.sync()  # no dirty pages from earlier rows: their writeback would land in this row's fsyncs
    t = time.perf_counter()
    try:
        out = (row_append if row["kind"] == "append" else row_queue)(row, rowdir)
    except AssertionError as e:
        out = {"error": str(e)}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        shutil.rmtree(rowdir, ignore_errors=True)
    out["wall_s"] = time.perf_counter() - t
    out["run"] = run
    if PROFILES:
        out["profile"] = PROFILES.pop()
    if "error" not in out and out["count"] and out["seconds"]:
        out["per_s"] = out["count"] / out["seconds"]
        out["mb_per_s"] = out["per_s"] * VALUE_SIZE / 1e6
    return out


def median_range(xs: Sequence[float]) -> Tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def fmt_rate(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    m, lo, hi = median_range(xs)
    if len(xs) == 1:
        return f"{m:,.0f}"
    return f"{m:,.0f} ({lo:,.0f}-{hi:,.0f})"


def ok_runs(row: dict) -> List[dict]:
    return [r for r in row["runs"] if "error" not in r and r.get("check") == "ok"]


def format_table(rows: List[dict]) -> str:
    header = ["group", "row", "N", "records/s (runs)", "MB/s", "producer/s", "cores busy",
              "fdatasync", "rec/fdatasync", "check"]
    lines = []
    for row in rows:
        good = ok_runs(row)
        measured = [r for r in row["runs"] if "per_s" in r]
        bad = [r for r in row["runs"] if r.get("check") != "ok"]
        use = good or measured
        rates = [r["per_s"] for r in use]
        n = row.get("records") or row.get("messages")
        mb = f"{statistics.median(r['mb_per_s'] for r in use):.2f}" if use else "-"
        prod = "-"
        if use and "producer_s" in use[0]:
            prod = f"{statistics.median(r['produced'] / r['producer_s'] for r in use):,.0f}"
        busy = "-"
        if use:
            busy = f"{statistics.median(r['cpu_s'] / r['seconds'] for r in use):.2f}"
        syncs = per_sync = "-"
        if use and "fdatasyncs" in use[0]:
            s = statistics.median(r["fdatasyncs"] for r in use)
            syncs = f"{s:,.0f}"
            if s:
                per_sync = f"{n / s:,.1f}"
        if bad:
            reasons = sorted({r.get("error") or r.get("check") for r in bad})
            status = f"{len(bad)}/{len(row['runs'])} FAILED: " + "; ".join(reasons)[:90]
        else:
            status = "ok"
        lines.append([row["group"], row["label"], f"{n:,}", fmt_rate(rates), mb, prod, busy,
                      syncs, per_sync, status])
    return _table.render(header, lines, {0, 1, 9})


def ratios(rows: List[dict]) -> List[dict]:
    by_id = {r["id"]: r for r in rows}
    out = []
    for subject, peer, target, what in ratio_pairs(rows):
        a, b = by_id[subject], by_id[peer]
        per_run = []
        for ra in a["runs"]:
            rb = next((x for x in b["runs"] if x["run"] == ra["run"]), None)
            if rb and "per_s" in ra and "per_s" in rb:
                per_run.append(ra["per_s"] / rb["per_s"])
        flagged = [x["label"] for x in (a, b) if len(ok_runs(x)) < len(x["runs"])]
        out.append({"subject": a["label"], "peer": b["label"], "group": a["group"],
                    "what": what, "target": target, "per_run": per_run, "flagged": flagged})
    return out


def format_ratios(rs: List[dict]) -> str:
    header = ["group", "ratio", "median (runs)", "target", "what"]
    lines = []
    for r in rs:
        if not r["per_run"]:
            lines.append([r["group"], f"{r['subject']} / {r['peer']}", "-", "-", r["what"]])
            continue
        m, lo, hi = median_range(r["per_run"])
        cell = f"{m:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if len(r["per_run"]) > 1 else "")
        verdict = "-"
        if r["target"] is not None:
            verdict = ("met" if m >= r["target"] else "MISSED")
            if lo < r["target"] <= m:
                verdict += " (not in every run)"
        what = r["what"]
        if r["flagged"]:
            what += f"  [failed checks: {', '.join(r['flagged'])}]"
        lines.append([r["group"], f"{r['subject']} / {r['peer']}", cell, verdict, what])
    return _table.render(header, lines, {0, 1, 3, 4})


def write_png(rows: List[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--png: matplotlib is not importable; skipped writing {path}")
        return
    groups = [g for g in GROUPS if any(r["group"] == g for r in rows)]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 2.3 * len(groups) + 1), squeeze=False)
    for ax, g in zip(axes[:, 0], groups):
        mine = [r for r in rows if r["group"] == g]
        labels, meds, lows, highs, colors = [], [], [], [], []
        for r in mine:
            rates = [x["per_s"] for x in (ok_runs(r) or [x for x in r["runs"] if "per_s" in x])]
            labels.append(r["label"] + ("" if len(ok_runs(r)) == len(r["runs"]) else " (!)"))
            if rates:
                m, lo, hi = median_range(rates)
            else:
                m = lo = hi = 0.0
            meds.append(m)
            lows.append(m - lo)
            highs.append(hi - m)
            colors.append("tab:blue" if r["id"].split(".")[1].startswith(("ls", "dq", "excl",
                                                                          "shared"))
                          else "tab:gray")
        ys = range(len(mine))
        ax.barh(ys, meds, xerr=[lows, highs], color=colors, capsize=3)
        for y, m in zip(ys, meds):
            ax.text(m * 1.05 if m else 1, y, f"{m:,.0f}" if m else "no result", va="center",
                    fontsize=7)
        ax.set_xscale("log")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{g}: {GROUPS[g]}", fontsize=9, loc="left")
        ax.set_xlabel("records or acked messages / s, log scale (median; whiskers: range over "
                      "runs; (!) = failed its correctness check)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("logstore, many processes (2 shared cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def environment() -> dict:
    def version(dist: str) -> str:
        try:
            import importlib.metadata
            return importlib.metadata.version(dist)
        except Exception:
            return "not installed"

    try:
        rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    redis_server = "not installed"
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout
        redis_server = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "git": rev, "persist-queue": version("persist-queue"), "redis-py": version("redis"),
        "redis-server": redis_server, "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


NOTES = [
    "records/s: records appended (A, B) or messages acked (C-E) / seconds from the barrier that "
    "every process of the row passed to the last append or last ack; median over the runs, "
    "range in brackets. MB/s counts the 100-byte values (10^6 B). producer/s: messages / the "
    "producer's own time to its last put (it runs concurrently with the workers).",
    "cores busy: CPU seconds (user+sys) of the row's processes in the timed part / its wall "
    "time; the machine has 2 cores, shared with other jobs. Redis rows do not count the "
    "server's CPU.",
    "fdatasync (fsync='always' rows only): calls counted through logstore's FileSystem seam "
    "(a subclass passed as fs=) in every logstore process of the row, timed part only; "
    "rec/fdatasync = N / that. The fsync='never' rows use the default file system: any other "
    "one turns off the write mapping of exclusive logs.",
    "Work queues (C, D): 1 producer process putting one message per call; W worker processes "
    "looping get -> ack. logstore: Store.open(dir, shared=True, fsync=...), "
    "store.queue('jobs') (1 partition), q.get(timeout) + q.ack(m), or "
    f"q.get_many({BATCH}, timeout) + q.ack_many(msgs). Redis Streams: XADD per message; "
    f"XREADGROUP COUNT {BATCH} BLOCK 50 + one XACK carrying the batch's ids (one round trip); "
    "AOF on, appendfsync no (C) / always (D); private redis-server on loopback. persist-queue "
    "SQLiteAckQueue(dir, multithreading=True, auto_resume=False) opened by every process, "
    "get(timeout, raw=True) + ack(id=); WAL with synchronous=OFF (C) / its default FULL (D); "
    f"clear_acked_data() after every {PQ_CLEAR_EVERY:,} acks of a process (timed).",
    f"An empty get waits {GET_TIMEOUT} s and asks again; a worker stops at its first empty get "
    "that began after the producer finished. visibility_timeout 300 s (nothing expires).",
    "DurableQueue (E): DurableQueue(dir, shared=True, fsync=...) in every process, producer "
    "put(v), workers get(timeout) + task_done(); items pickled (as persist-queue does). "
    "persist-queue SQLiteQueue (get deletes the row) and Queue (file chunks) opened by every "
    "process on the same path.",
    "Checks (untimed): A, B: every record exactly once, offsets dense, each writer's records in "
    "its order, at the offsets its appends returned, byte for byte. C-E: every message "
    "processed exactly once, byte for byte (duplicates and losses are counted, and the row is "
    "marked FAILED with them), nothing left in the queue when it is reopened.",
]


def durablequeue_shared() -> bool:
    """Does this checkout's DurableQueue take shared=True? (Before issue 19's change the
    keyword was passed through to Store.open and each process saw only its own puts.)"""
    import inspect
    from logstore import DurableQueue
    return "shared" in inspect.signature(DurableQueue.__init__).parameters


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller rows, one run each")
    p.add_argument("--repeat", type=int, help="runs of every group (default 3, --quick 1)")
    p.add_argument("--only", metavar="G[,G]", help="groups to run (A,B,C,D,E) or row ids "
                   "(e.g. C.lsb,C.redis)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"worker processes in C-E (default {DEFAULT_WORKERS})")
    for g in SIZES:
        p.add_argument(f"--n-{g.lower()}", type=int, metavar="N",
                       help=f"records/messages per row of {g} (default {SIZES[g][0]:,}, "
                            f"--quick {SIZES[g][1]:,})")
    p.add_argument("--partitions", type=int, default=1,
                   help="partitions of the logstore work queue in C and D (default 1)")
    p.add_argument("--row-timeout", type=float, help="seconds before a row is killed")
    p.add_argument("--profile", action="store_true",
                   help="run every process under cProfile (figures not comparable) and print "
                        "the top functions per role")
    p.add_argument("--json", metavar="PATH", help="write every run's figures as JSON")
    p.add_argument("--png", metavar="PATH", help="bar chart per group (needs matplotlib)")
    args = p.parse_args(argv)
    args.records = {g: getattr(args, f"n_{g.lower()}") for g in SIZES}
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    rows = build_plan(args)
    if args.only:
        wanted = set(args.only.split(","))
        rows = [r for r in rows if r["group"] in wanted or r["id"] in wanted]
    notes = []
    missing = []
    if not shutil.which("redis-server"):
        missing.append("redis")
        notes.append("redis-server is not on PATH: Redis rows skipped")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis")
        notes.append("redis-py is not installed: Redis rows skipped")
    try:
        import persistqueue  # noqa: F401
    except ImportError:
        missing += ["pq_ack", "pq_sqlite", "pq_file"]
        notes.append("persist-queue is not installed: its rows skipped")
    rows = [r for r in rows if r.get("store") not in missing]
    pending = [] if durablequeue_shared() else [r["id"] for r in rows
                                                 if r.get("store") == "durablequeue"]
    if pending:
        notes.append("PENDING: this checkout's DurableQueue has no shared=True (issue 19, "
                     "being added on main): its rows are not run")
        rows = [r for r in rows if r["id"] not in pending]
    for r in rows:
        r["runs"] = []
        r["profile"] = args.profile

    env = environment()
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    root = tempfile.mkdtemp(prefix="logstore-mpbench-")
    started = time.perf_counter()
    try:
        for run in range(args.repeat):
            for g in GROUPS:
                for row in (r for r in rows if r["group"] == g):
                    print(f"  run {run + 1}/{args.repeat}  {row['id']:<14} {row['label'][:52]:<52}",
                          end="", flush=True, file=sys.stderr)
                    res = run_row(row, root, run)
                    row["runs"].append(res)
                    rate = f"{res['per_s']:>10,.0f}/s" if "per_s" in res else f"{'-':>12}"
                    status = res.get("error") or f"{rate}  {res['check']}"
                    print(f" {status[:150]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    env["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)

    print()
    print(format_table(rows))
    print()
    rs = ratios(rows)
    print("ratios, each computed within one run (median over runs, range in brackets):")
    print(format_ratios(rs))
    print()
    print("notes:")
    for note in notes + NOTES:
        print(f"  - {note}")
    print(f"\n{args.repeat} run(s) per row; load average (1 min) at start "
          f"{env['loadavg_1m_at_start']}, at end {env['loadavg_1m_at_end']}; "
          f"{os.cpu_count()} cores shared with other jobs; total wall time {elapsed:.0f}s")
    for row in rows:
        for r in row["runs"]:
            if r.get("profile"):
                print(f"\ncProfile of {row['id']} ({row['label']}), run {r['run'] + 1}:")
                print(r["profile"])
        for r in row["runs"]:
            if "traceback" in r:
                print(f"\n{row['id']} run {r['run'] + 1}: {r['error']}\n{r['traceback']}")
                break
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows, "ratios": rs, "notes": notes + NOTES,
                       "wall_s": elapsed, "workers": args.workers, "repeat": args.repeat},
                      f, indent=1, default=str)
        print(f"wrote {args.json}")
    if args.png:
        write_png(rows, args.png)
    # The exit status is about logstore's rows; a peer's failed check is a finding, reported.
    return 1 if any(r.get("error") or r.get("check") != "ok" for row in rows
                    if row.get("store", "logstore") in ("logstore", "durablequeue")
                    for r in row["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
