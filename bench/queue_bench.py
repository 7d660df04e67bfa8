"""Queue benchmark: logstore's work queue, pub/sub and consumer groups against persist-queue's
SQLiteAckQueue and Redis Streams.

Usage::

    python bench/queue_bench.py [--messages N] [--quick] [--json out.json] [--png out.png]

Workloads (100-byte messages, each one distinct: an 8-byte sequence number + 92 seeded random
bytes, so every delivery can be checked afterwards):

  Q1  queue put + get + ack, one consumer, no fsync. Put phase and get+ack phase are timed
      separately; the headline is acked messages/s = N / (put s + get+ack s).
  Q2  the same with 4 consumer threads sharing the queue (puts from one thread, as in Q1).
  Q3  Q1 with every put, get and ack on stable storage before it returns (fewer messages).
  P1  pub/sub fan-out: publish N, then 4 durable subscriptions (one thread each) read all N,
      polling 500 at a time and committing after every poll. Headline: deliveries/s = 4N / read s.
  C1  consumer-group replay: N published over 4 partitions, one group member polls 500 at a
      time and commits after every poll. Headline: records/s = N / read s.
  Q4  priorities: N puts with priorities drawn from 0..9 (seeded) on a queue with
      max_priority=9, then one consumer get + ack drains it. Checked: every message exactly
      once, the received priorities never increase (everything was put before the drain), FIFO
      within a level. Shown next to the same workload on a queue without priorities (the
      baseline row) and, for Redis, a sorted set (ZADD; a Lua ZPOPMIN that parks the message
      in an in-flight set; ZREM as the ack).
  Q5  TTL: N puts, every other one with ttl=1 s and the rest with ttl=3600 s; the consumer
      starts after the short ones have expired (untimed wait). Checked: exactly the unexpired
      half is delivered, and the expired half is in the dead-letter topic with reason
      "expired", stats()["expired"] == N/2 (also after a reopen). Headline: messages settled
      (delivered + dead-lettered) per second, N / (put s + drain s).

Request-reply (round trips/s, side by side with Redis LPUSH/BRPOP request-reply on a real
redis-server) is measured by bench/rpc_bench.py, not here.

Peers: persist-queue's SQLiteAckQueue (Q1-Q3) and Redis via redis-py (Streams in Q1-Q3, P1,
C1; a sorted set in Q4; no Redis row for Q5; this
script starts its own redis-server on 127.0.0.1 on a free port with a temporary directory, AOF
on, and stops it by PID). A peer that is not installed is skipped with a note.

Each (store, workload) pair runs in a fresh interpreter (this script re-invoked with
``--worker``), so peak RSS is per row. Opening, closing and the correctness checks (every message
received exactly once with the right bytes; each subscription got all N; nothing left pending)
run outside the timed phases. See bench/README.md, section "queue_bench.py".
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
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in

import _table  # noqa: E402 (bench/, next to this script)
from _redis import RedisServer, stop_leftover_server  # noqa: E402

VALUE_SIZE = 100
SEQ = struct.Struct("<Q")
POOL_SIZE = 50_000
SEED = 20240611
DEFAULT_MESSAGES = 100_000
QUICK_MESSAGES = 20_000
DEFAULT_DURABLE = 2_000
DEFAULT_REDIS_CAP = 20_000  # Redis rows: one loopback round trip per call (see --redis-messages)
QUICK_DURABLE = 1_000
CONSUMERS_Q2 = 4
SUBSCRIPTIONS = 4
PARTITIONS_C1 = 4
POLL = 500
GET_TIMEOUT = 1.0  # seconds a get/poll may block (only ever reached at the very end)
STALL_S = 15.0  # no progress for this long: stop and let verification report what is missing
PQ_CLEAR_EVERY = 1_000  # persist-queue: clear_acked_data() after every 1,000 acks (see notes)
REDIS_START_S = 10.0
MAX_PRIORITY = 9  # Q4: store.queue(name, max_priority=9), priorities 0..9
TTL_SHORT_S = 1.0  # Q5: the half that expires before the consumer starts
TTL_LONG_S = 3600.0  # Q5: the half that does not
# --profile: the main thread's profiler (switched on inside timed phases only) and one
# profiler per consumer thread (its whole loop).
_PROFILER: Any = None
_THREAD_PROFILES: Optional[list] = None


# --------------------------------------------------------------------------- shared data
def make_values(n: int) -> List[bytes]:
    """n distinct 100-byte messages: <u64 sequence><92 bytes from a seeded pool>."""
    rng = random.Random(SEED)
    pool = [rng.randbytes(VALUE_SIZE - SEQ.size) for _ in range(min(n, POOL_SIZE))]
    pack = SEQ.pack
    return [pack(i) + pool[i % POOL_SIZE] for i in range(n)]


def seq_of(value: bytes) -> int:
    return SEQ.unpack_from(value)[0]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


def verify_exactly_once(received: List[bytes], values: List[bytes], what: str) -> None:
    """Every message received exactly once, byte for byte."""
    n = len(values)
    check(len(received) == n, f"{what}: received {len(received):,} messages, expected {n:,}")
    seen = bytearray(n)
    for v in received:
        i = seq_of(v)
        check(0 <= i < n, f"{what}: unknown sequence number {i}")
        check(not seen[i], f"{what}: message {i} received twice")
        check(v == values[i], f"{what}: message {i} has the wrong bytes")
        seen[i] = 1


def verify_in_order(received: List[bytes], values: List[bytes], what: str) -> None:
    """The whole stream, in publish order, byte for byte (single-partition readers)."""
    check(len(received) == len(values),
          f"{what}: received {len(received):,} messages, expected {len(values):,}")
    for i, v in enumerate(received):
        check(v == values[i], f"{what}: message {i} differs or is out of order")


class Timer:
    """Times a phase; with --profile, also profiles it (``profiled=False``: time only)."""

    def __init__(self, profiled: bool = True):
        self.profiled = profiled and _PROFILER is not None

    def __enter__(self) -> "Timer":
        if self.profiled:
            _PROFILER.enable()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.profiled:
            _PROFILER.disable()


# --------------------------------------------------------------------------- timed drivers
def _thread_target(fn: Callable[..., None]) -> Callable[..., None]:
    """fn, profiled in its own thread when --profile is on (cProfile sees one thread only)."""
    if _THREAD_PROFILES is None:
        return fn

    def run(*args: Any) -> None:
        import cProfile
        prof = cProfile.Profile()
        _THREAD_PROFILES.append(prof)
        prof.runcall(fn, *args)

    return run


Consumer = Tuple[Callable[[], Any], Callable[[Any], bytes]]  # get_one() -> msg|None, ack(msg)


def drain(n: int, consumers: List[Consumer],
          housekeeping: Optional[Callable[[], None]] = None) -> Tuple[List[bytes], float]:
    """Get + ack until n messages are acked, with one thread per consumer (the calling thread
    when there is one). Returns (acked values, seconds from start to the n-th ack).

    ``housekeeping`` runs (timed) after every PQ_CLEAR_EVERY-th ack, in the thread that did it.
    """
    lock = threading.Lock()
    state = {"acked": 0, "end": None, "last": 0.0}
    outs: List[List[bytes]] = [[] for _ in consumers]
    errors: List[BaseException] = []

    def loop(get_one: Callable[[], Any], ack_one: Callable[[Any], bytes],
             out: List[bytes]) -> None:
        append, clock = out.append, time.perf_counter
        try:
            while True:
                m = get_one()
                if m is None:  # timed out: done, or others still hold the last messages
                    with lock:
                        if state["acked"] >= n or clock() - state["last"] > STALL_S:
                            return
                    continue
                append(ack_one(m))
                with lock:
                    state["acked"] += 1
                    k = state["acked"]
                    state["last"] = now = clock()
                    if k == n:
                        state["end"] = now
                if housekeeping is not None and k % PQ_CLEAR_EVERY == 0:
                    housekeeping()
                if k >= n:
                    return
        except BaseException as e:  # reported after the join
            errors.append(e)

    with Timer():
        start = time.perf_counter()
        state["last"] = start
        if len(consumers) == 1:
            loop(*consumers[0], outs[0])
        else:
            threads = [threading.Thread(target=_thread_target(loop), args=(*c, out),
                                        daemon=True) for c, out in zip(consumers, outs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    if errors:
        raise errors[0]
    end = state["end"] if state["end"] is not None else time.perf_counter()
    received = [v for out in outs for v in out]
    return received, end - start


def read_all(n: int, pollers: List[Callable[[], List[bytes]]]) -> Tuple[List[List[bytes]], float]:
    """Each poller (poll + commit, returning the values) runs in its own thread (the calling
    thread when there is one) until it has n values. Returns (values per poller, seconds)."""
    outs: List[List[bytes]] = [[] for _ in pollers]
    errors: List[BaseException] = []

    def loop(poll: Callable[[], List[bytes]], out: List[bytes]) -> None:
        extend, clock = out.extend, time.perf_counter
        last = clock()
        try:
            while len(out) < n:
                got = poll()
                if got:
                    extend(got)
                    last = clock()
                elif clock() - last > STALL_S:
                    return
        except BaseException as e:
            errors.append(e)

    with Timer() as t:
        if len(pollers) == 1:
            loop(pollers[0], outs[0])
        else:
            threads = [threading.Thread(target=_thread_target(loop), args=(p, out), daemon=True)
                       for p, out in zip(pollers, outs)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    if errors:
        raise errors[0]
    return outs, t.seconds


# --------------------------------------------------------------------------- logstore
def _logstore_open(spec: dict):
    import logstore
    return logstore.Store.open(spec["path"], fsync=spec["fsync"])


def logstore_queue(spec: dict, values: List[bytes]) -> dict:
    n, k = len(values), spec["consumers"]
    s = _logstore_open(spec)
    q = s.queue("jobs")
    put = q.put
    with Timer() as tp:
        for v in values:
            put(v)

    def consumer() -> Consumer:
        get = q.get

        def ack_one(m) -> bytes:
            q.ack(m)
            return m.value

        return (lambda: get(timeout=GET_TIMEOUT)), ack_one

    received, get_s = drain(n, [consumer() for _ in range(k)])
    verify_exactly_once(received, values, "logstore queue")
    stats = q.stats()
    check(stats["total"] == 0 and stats["in_flight"] == 0, f"queue not empty: {stats}")
    with Timer(profiled=False) as c:
        s.close()
    s = _logstore_open(spec)  # acks must survive a reopen: nothing is delivered again
    q = s.queue("jobs")
    check(len(q) == 0 and q.get(timeout=0) is None, "a message came back after reopen")
    s.close()
    return {"messages": n, "put_s": tp.seconds, "get_s": get_s, "close_s": c.seconds}


def logstore_fanout(spec: dict, values: List[bytes]) -> dict:
    n = len(values)
    s = _logstore_open(spec)
    topic = s.topic("t")
    subs = [s.subscribe("t", f"sub{i}", start="earliest") for i in range(SUBSCRIPTIONS)]
    publish = topic.publish
    with Timer() as tp:
        for v in values:
            publish(v)

    def poller(sub) -> Callable[[], List[bytes]]:
        poll, commit = sub.poll, sub.commit

        def one() -> List[bytes]:
            recs = poll(POLL, timeout=GET_TIMEOUT)
            if recs:
                commit()
            return [r.value for r in recs]

        return one

    outs, read_s = read_all(n, [poller(sub) for sub in subs])
    for i, out in enumerate(outs):
        verify_in_order(out, values, f"logstore subscription sub{i}")
    for sub in subs:
        check(sub.committed() == {0: n}, f"committed {sub.committed()} != {{0: {n}}}")
    with Timer(profiled=False) as c:
        s.close()
    return {"messages": n, "put_s": tp.seconds, "read_s": read_s, "deliveries": n * len(subs),
            "close_s": c.seconds}


def logstore_group(spec: dict, values: List[bytes]) -> dict:
    n = len(values)
    s = _logstore_open(spec)
    topic = s.topic("t", partitions=PARTITIONS_C1)
    publish = topic.publish
    with Timer() as tp:
        for v in values:
            publish(v)  # unkeyed: round-robin over the partitions
    consumer = s.consumer("g", "t")
    poll, commit = consumer.poll, consumer.commit
    parts: Dict[int, List[int]] = {p: [] for p in range(PARTITIONS_C1)}

    def one() -> List[bytes]:
        recs = poll(POLL, timeout=GET_TIMEOUT)
        if recs:
            commit()
            for r in recs:  # kept for the per-partition order check (cheap, timed)
                parts[r.partition].append(r.offset)
        return [r.value for r in recs]

    outs, read_s = read_all(n, [one])
    verify_exactly_once(outs[0], values, "logstore consumer group")
    ends = topic.end_offsets()
    for p, offs in parts.items():
        check(offs == list(range(ends[p])), f"partition {p}: offsets not read once in order")
    check(consumer.committed() == ends, f"committed {consumer.committed()} != {ends}")
    with Timer(profiled=False) as c:
        s.close()
    return {"messages": n, "put_s": tp.seconds, "read_s": read_s, "close_s": c.seconds}


def priorities_of(n: int) -> List[int]:
    """The seeded priority (0..MAX_PRIORITY) of message i, for Q4."""
    rng = random.Random(SEED + 1)
    return [rng.randrange(MAX_PRIORITY + 1) for _ in range(n)]


def verify_priority_order(received: List[bytes], prios: List[int], what: str) -> None:
    """One consumer drained a fully loaded queue: priorities never increase, and within a
    level the messages come in put order (a one-partition queue is FIFO within a level)."""
    last_prio, last_seq = MAX_PRIORITY + 1, -1
    for k, v in enumerate(received):
        i = seq_of(v)
        p = prios[i]
        check(p <= last_prio, f"{what}: delivery {k} (message {i}) has priority {p} after "
                              f"one of priority {last_prio}")
        if p == last_prio:
            check(i > last_seq, f"{what}: priority {p}: message {i} after {last_seq} (not FIFO)")
        last_prio, last_seq = p, i


def logstore_prio(spec: dict, values: List[bytes]) -> dict:
    """Q4: put N (with seeded priorities, or none for the baseline row), then one consumer
    get + ack drains the queue."""
    n = len(values)
    with_prio = not spec.get("baseline")
    prios = priorities_of(n)
    s = _logstore_open(spec)
    q = s.queue("jobs", max_priority=MAX_PRIORITY) if with_prio else s.queue("jobs")
    put = q.put
    with Timer() as tp:
        if with_prio:
            for v, p in zip(values, prios):
                put(v, priority=p)
        else:
            for v in values:
                put(v)
    get = q.get

    def ack_one(m) -> bytes:
        q.ack(m)
        return m.value

    received, get_s = drain(n, [((lambda: get(timeout=GET_TIMEOUT)), ack_one)])
    verify_exactly_once(received, values, "logstore queue")
    if with_prio:
        verify_priority_order(received, prios, "logstore priority queue")
    else:
        verify_in_order(received, values, "logstore queue (no priorities)")
    stats = q.stats()
    check(stats["total"] == 0 and stats["in_flight"] == 0, f"queue not empty: {stats}")
    with Timer(profiled=False) as c:
        s.close()
    s = _logstore_open(spec)
    q = s.queue("jobs", max_priority=MAX_PRIORITY) if with_prio else s.queue("jobs")
    check(len(q) == 0 and q.get(timeout=0) is None, "a message came back after reopen")
    s.close()
    return {"messages": n, "put_s": tp.seconds, "get_s": get_s, "close_s": c.seconds}


def logstore_ttl(spec: dict, values: List[bytes]) -> dict:
    """Q5: put N, the even-numbered ones with a TTL that runs out before the consumer starts;
    one consumer get + ack until the unexpired half is acked (the expired half is
    dead-lettered by those gets, interleaved)."""
    n = len(values)
    s = _logstore_open(spec)
    q = s.queue("jobs")
    put = q.put
    with Timer() as tp:
        for i, v in enumerate(values):
            put(v, ttl=TTL_SHORT_S if i % 2 == 0 else TTL_LONG_S)
    # Untimed: every short TTL has run out (wall clock, ms). (No stats() here: it would scan the
    # published messages, work the first timed gets must do.)
    time.sleep(TTL_SHORT_S + 0.1)
    get = q.get

    def ack_one(m) -> bytes:
        q.ack(m)
        return m.value

    alive = values[1::2]
    received, get_s = drain(len(alive), [((lambda: get(timeout=GET_TIMEOUT)), ack_one)])
    # The delivered half: exactly the odd-numbered (long TTL) messages, in put order.
    verify_in_order(received, alive, "logstore queue, unexpired half")
    check(q.get(timeout=0) is None, "a message was delivered after the unexpired half")
    stats = q.stats()
    expired = n - len(alive)
    check(stats["total"] == 0 and stats["in_flight"] == 0, f"queue not empty: {stats}")
    check(stats["expired"] == expired, f"stats expired {stats['expired']} != {expired}")
    check(stats["dead_lettered"] == expired,
          f"stats dead_lettered {stats['dead_lettered']} != {expired}")
    _verify_expired_dlq(s, values[0::2])
    with Timer(profiled=False) as c:
        s.close()
    s = _logstore_open(spec)  # the expired count is durable, nothing comes back
    q = s.queue("jobs")
    check(len(q) == 0 and q.get(timeout=0) is None, "a message came back after reopen")
    check(q.stats()["expired"] == expired, "expired count changed after reopen")
    s.close()
    return {"messages": n, "put_s": tp.seconds, "get_s": get_s, "close_s": c.seconds,
            "delivered": len(received), "expired": expired}


def _verify_expired_dlq(s, dead: List[bytes]) -> None:
    """The dead-letter topic holds exactly ``dead``, in put order, each with reason expired."""
    part = s.topic("jobs.dlq").partitions[0]
    recs = []
    pos = part.start_offset
    while pos < part.end_offset:
        got = part.read(pos, 10_000)
        recs.extend(got)
        pos = got[-1].offset + 1
    verify_in_order([r.value for r in recs], dead, "dead-letter topic jobs.dlq")
    for r in recs:
        reason = r.headers.get("x-dead-letter-reason")
        check(reason == b"expired", f"dead letter {seq_of(r.value)}: reason {reason!r}")


# --------------------------------------------------------------------------- persist-queue
def _pq_open(spec: dict, multithreading: bool):
    import persistqueue
    q = persistqueue.SQLiteAckQueue(spec["path"], auto_commit=True,
                                    multithreading=multithreading)
    # persist-queue opens its connections with journal_mode=WAL and sqlite's default
    # synchronous=FULL (a WAL fsync per commit). For the no-fsync rows, both connections are
    # switched to synchronous=OFF: a commit is then written to the WAL (survives a process
    # crash), not fsynced, which is logstore's fsync="never".
    want = 0 if spec["fsync"] == "never" else 2
    for conn in {id(q._putter): q._putter, id(q._getter): q._getter}.values():
        if want == 0:
            conn.execute("PRAGMA synchronous=OFF")
        got = conn.execute("PRAGMA synchronous").fetchone()[0]
        check(got == want, f"persist-queue synchronous={got}, expected {want}")
        check(conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal", "not WAL")
    return q


def persistqueue_queue(spec: dict, values: List[bytes]) -> dict:
    import persistqueue
    n, k = len(values), spec["consumers"]
    q = _pq_open(spec, multithreading=k > 1)
    put = q.put
    with Timer() as tp:
        for v in values:
            put(v)

    def get_one():
        try:
            return q.get(timeout=GET_TIMEOUT, raw=True)
        except persistqueue.Empty:
            return None

    def ack_one(m) -> bytes:
        q.ack(id=m["pqid"])
        return m["data"]

    def clear() -> None:
        # Without this, acked rows stay in the table and every get scans past all of them
        # (O(N) per get; see notes). persist-queue leaves this housekeeping to the caller.
        q.clear_acked_data(max_delete=None, keep_latest=None)

    received, get_s = drain(n, [(get_one, ack_one)] * k, housekeeping=clear)
    verify_exactly_once(received, values, "persist-queue")
    check(q.ready_count() == 0 and q.unack_count() == 0, "persist-queue not empty")
    with Timer(profiled=False) as c:
        q.close()
    q = _pq_open(spec, multithreading=False)  # auto_resume: unacked ones would be ready again
    check(q.ready_count() == 0 and q.unack_count() == 0, "a message came back after reopen")
    q.close()
    return {"messages": n, "put_s": tp.seconds, "get_s": get_s, "close_s": c.seconds}


# --------------------------------------------------------------------------- Redis Streams
def _redis_row(spec: dict, body: Callable[[RedisServer], dict]) -> dict:
    server = RedisServer(spec["path"], "always" if spec["fsync"] == "always" else "no",
                         REDIS_START_S).start()
    try:
        result = body(server)
        info = server.client().info("persistence")
        check(info.get("aof_last_write_status") == "ok", f"AOF write status {info}")
        result["server_peak_rss_mib"] = server.peak_rss_mib()
        result["aof_rewrites"] = info.get("aof_rewrites")
    finally:
        server.stop()
    return result


def redis_queue(spec: dict, values: List[bytes]) -> dict:
    n, k = len(values), spec["consumers"]

    def body(server: RedisServer) -> dict:
        r = server.client()
        r.xgroup_create("jobs", "g", id="0", mkstream=True)
        xadd = r.xadd
        with Timer() as tp:
            for v in values:
                xadd("jobs", {"v": v})

        def consumer(i: int) -> Consumer:
            c = server.client()
            xreadgroup, xack, name = c.xreadgroup, c.xack, f"c{i}"
            c.ping()  # connect now, untimed
            block = int(GET_TIMEOUT * 1000)

            def get_one():
                res = xreadgroup("g", name, {"jobs": ">"}, count=1, block=block)
                return res[0][1][0] if res and res[0][1] else None

            def ack_one(m) -> bytes:
                xack("jobs", "g", m[0])
                return m[1][b"v"]

            return get_one, ack_one

        received, get_s = drain(n, [consumer(i) for i in range(k)])
        verify_exactly_once(received, values, "redis stream queue")
        pending = r.xpending("jobs", "g")["pending"]
        check(pending == 0, f"{pending} messages still pending")
        return {"messages": n, "put_s": tp.seconds, "get_s": get_s}

    return _redis_row(spec, body)


# Q4 peer: a sorted set scored so that ZPOPMIN yields the highest priority first and put order
# within a level; the Lua script pops one and parks it in an in-flight sorted set (score: lease
# deadline, as a reliable-queue pattern needs) in one round trip; ZREM from it is the ack.
_REDIS_PRIO_GET = """
local m = redis.call('ZPOPMIN', KEYS[1])
if #m == 0 then return false end
redis.call('ZADD', KEYS[2], ARGV[1], m[1])
return m[1]
"""


def redis_prio(spec: dict, values: List[bytes]) -> dict:
    n = len(values)
    prios = priorities_of(n)

    def body(server: RedisServer) -> dict:
        r = server.client()
        zadd = r.zadd
        with Timer() as tp:
            for i, (v, p) in enumerate(zip(values, prios)):
                zadd("jobs", {v: (MAX_PRIORITY - p) * 2.0 ** 32 + i})
        take = r.register_script(_REDIS_PRIO_GET)
        zrem = r.zrem
        deadline = str(time.time() + 300)

        def get_one():
            m = take(keys=["jobs", "jobs:inflight"], args=[deadline])
            if m is None:
                time.sleep(0.001)  # (only reached once the set is empty)
            return m

        def ack_one(m) -> bytes:
            check(zrem("jobs:inflight", m) == 1, "ack of a message not in flight")
            return m

        received, get_s = drain(n, [(get_one, ack_one)])
        verify_exactly_once(received, values, "redis sorted set")
        verify_priority_order(received, prios, "redis sorted set")
        check(r.zcard("jobs") == 0 and r.zcard("jobs:inflight") == 0, "redis sets not empty")
        return {"messages": n, "put_s": tp.seconds, "get_s": get_s}

    return _redis_row(spec, body)


def _redis_publish(r, values: List[bytes], stream: str) -> float:
    xadd = r.xadd
    with Timer() as tp:
        for v in values:
            xadd(stream, {"v": v})
    return tp.seconds


def _redis_poller(server: RedisServer, stream: str, group: str) -> Callable[[], List[bytes]]:
    c = server.client()
    c.ping()
    xreadgroup, xack = c.xreadgroup, c.xack
    block = int(GET_TIMEOUT * 1000)

    def one() -> List[bytes]:
        res = xreadgroup(group, "c0", {stream: ">"}, count=POLL, block=block)
        if not res or not res[0][1]:
            return []
        entries = res[0][1]
        xack(stream, group, *[e[0] for e in entries])  # the "commit" of this poll
        return [e[1][b"v"] for e in entries]

    return one


def redis_fanout(spec: dict, values: List[bytes]) -> dict:
    n = len(values)

    def body(server: RedisServer) -> dict:
        r = server.client()
        groups = [f"sub{i}" for i in range(SUBSCRIPTIONS)]
        for g in groups:
            r.xgroup_create("t", g, id="0", mkstream=True)
        put_s = _redis_publish(r, values, "t")
        outs, read_s = read_all(n, [_redis_poller(server, "t", g) for g in groups])
        for g, out in zip(groups, outs):
            verify_in_order(out, values, f"redis group {g}")
            check(r.xpending("t", g)["pending"] == 0, f"group {g}: messages still pending")
        return {"messages": n, "put_s": put_s, "read_s": read_s, "deliveries": n * len(groups)}

    return _redis_row(spec, body)


def redis_group(spec: dict, values: List[bytes]) -> dict:
    n = len(values)

    def body(server: RedisServer) -> dict:
        r = server.client()
        r.xgroup_create("t", "g", id="0", mkstream=True)
        put_s = _redis_publish(r, values, "t")
        outs, read_s = read_all(n, [_redis_poller(server, "t", "g")])
        verify_in_order(outs[0], values, "redis group g")
        check(r.xpending("t", "g")["pending"] == 0, "messages still pending")
        return {"messages": n, "put_s": put_s, "read_s": read_s}

    return _redis_row(spec, body)


# --------------------------------------------------------------------------- plan
WORKLOADS = [  # (id, table label)
    ("q1", "Q1 queue, 1 consumer"),
    ("q2", f"Q2 queue, {CONSUMERS_Q2} consumers"),
    ("q3", "Q3 queue, durable"),
    ("p1", f"P1 fan-out, {SUBSCRIPTIONS} subs"),
    ("c1", f"C1 group replay, {PARTITIONS_C1} parts"),
    ("q4", f"Q4 queue, priorities 0..{MAX_PRIORITY}"),
    ("q5", "Q5 queue, TTL (half expire)"),
]

STORES = {  # id -> table label
    "logstore": "logstore",
    "persistqueue": "persist-queue SQLiteAckQueue",
    "redis": "Redis Streams",
}
BASELINE_LABEL = "logstore, no priorities"  # Q4's baseline row (spec "baseline": True)
STORE_LABEL = {("q4", "redis"): "Redis sorted set"}


def store_label(r: dict) -> str:
    if r.get("baseline"):
        return BASELINE_LABEL
    return STORE_LABEL.get((r["workload"], r["store"]), STORES[r["store"]])

FUNCTIONS: Dict[str, Callable[[dict, List[bytes]], dict]] = {
    "logstore_queue": logstore_queue,
    "logstore_fanout": logstore_fanout,
    "logstore_group": logstore_group,
    "persistqueue_queue": persistqueue_queue,
    "redis_queue": redis_queue,
    "redis_fanout": redis_fanout,
    "redis_group": redis_group,
    "logstore_prio": logstore_prio,
    "logstore_ttl": logstore_ttl,
    "redis_prio": redis_prio,
}

KIND = {"q1": "queue", "q2": "queue", "q3": "queue", "p1": "fanout", "c1": "group",
        "q4": "prio", "q5": "ttl"}
QUEUE_KINDS = ("queue", "prio", "ttl")  # put phase + get/ack phase
PEER_ROWS = {"persistqueue": ("q1", "q2", "q3"), "redis": ("q1", "q2", "q3", "p1", "c1", "q4")}

DURABILITY = {  # (store, fsync) -> what an acknowledged put/ack/commit survives
    ("logstore", "never"): "kill -9",
    ("logstore", "always"): "power loss",
    ("persistqueue", "never"): "kill -9",
    ("persistqueue", "always"): "power loss",
    ("redis", "never"): "server kill -9",
    ("redis", "always"): "power loss",
}

NOTES = [
    "result/s: Q rows = acked messages/s end to end, N / (put s + get+ack s); P1 = deliveries/s, "
    f"{SUBSCRIPTIONS}N / read s (publish time excluded, shown as put/s); C1 = records/s, "
    "N / read s. put/s and get/s are the two phases on their own (get/s = N / get+ack s for Q "
    "rows, = result/s for P1 and C1). MB/s = result/s x 100 B (10^6 B).",
    "vs logstore: peer result/s / logstore result/s for the same workload (>1 = peer faster).",
    "Every row puts/publishes from one thread, one call per message (no batching or pipelining), "
    "then consumes; consumers block in get/poll with a 1 s timeout (reached only once the work "
    "is done). Q timings end at the N-th ack.",
    "durability 'kill -9': an acknowledged put/ack/commit has been written to a file (the OS "
    "has it) but not fsynced: it survives a crash of the process, not a power loss. logstore: "
    "Store.open(dir, fsync='never'). persist-queue: its connections (journal_mode=WAL) switched "
    "to PRAGMA synchronous=OFF. Redis: appendonly yes, appendfsync no (the AOF is written "
    "before the reply, fsynced by the OS whenever): survives a crash of redis-server.",
    "durability 'power loss' (Q3): each call returns after an fsync. logstore fsync='always' "
    "(put, the delivery record written by get, and ack each fsynced); persist-queue's default "
    "synchronous=FULL (a WAL fsync per commit: put, get and ack are each a commit); Redis "
    "appendfsync always (put, XREADGROUP and XACK each reach the AOF and are fsynced before "
    "the reply).",
    "logstore: q = s.queue('jobs') (1 partition), q.put(v), m = q.get(timeout=1), q.ack(m). "
    "P1: s.subscribe('t', 'sub<i>', start='earliest'), sub.poll(500), sub.commit() after every "
    "poll, one thread per subscription. C1: s.topic('t', partitions=4), unkeyed publishes "
    "(round-robin), s.consumer('g', 't').poll(500) + commit() after every poll.",
    "persist-queue: SQLiteAckQueue(dir, auto_commit=True; multithreading=True for Q2), "
    "q.put(v) (pickled, its default serializer), q.get(timeout=1, raw=True), "
    "q.ack(id=pqid). Acked rows stay in its table until the caller clears them, and each get "
    "scans past every acked row still there (a get is O(acked rows)), so the loop calls "
    f"q.clear_acked_data(max_delete=None, keep_latest=None) after every {PQ_CLEAR_EVERY:,} acks "
    "(timed).",
    "Redis Streams (redis-py): XADD per message; Q rows: XREADGROUP COUNT 1 + XACK per "
    "message (one connection and consumer name per thread); P1: one consumer group per "
    "subscription, each reading the whole stream (XREADGROUP COUNT 500 + one XACK of the "
    "batch per poll, one thread each); C1: one stream (Redis has no partitions), one group, "
    "COUNT 500 + XACK per poll. The server is started per row on 127.0.0.1 with --save '' and a "
    "temporary --dir, outside the timing, and stopped by PID. Its peak RSS is shown after the "
    "client's (client+server). Every Redis call is a loopback round trip, and the server "
    "competes with the client for the same 2 cores.",
    f"Q4: logstore s.queue('jobs', max_priority={MAX_PRIORITY}), q.put(v, priority=p) with p "
    f"seeded uniform over 0..{MAX_PRIORITY}, then q.get(timeout=1) + q.ack(m) by one consumer; "
    "the baseline row is the same on s.queue('jobs') with plain q.put(v) (= Q1), and its "
    "'vs logstore' is baseline / priorities. Redis sorted set: ZADD jobs "
    f"{{v: ({MAX_PRIORITY}-p)*2^32 + i}} per message (appendfsync no); get = one EVALSHA of a "
    "Lua script (ZPOPMIN jobs + ZADD jobs:inflight deadline v); ack = ZREM jobs:inflight v. "
    "Checked: exactly once, received priorities never increase, FIFO within a level.",
    f"Q5: s.queue('jobs'), q.put(v, ttl={TTL_SHORT_S:g}) for even i and ttl={TTL_LONG_S:g} for "
    f"odd i, then an untimed wait of {TTL_SHORT_S + 0.1:g} s, then one consumer q.get(timeout=1) "
    "+ q.ack(m) until N/2 are acked; the gets dead-letter the expired ones they meet "
    "(interleaved). get/s and result/s count settled messages (delivered + dead-lettered, N). "
    "Checked: exactly the odd half delivered in order; jobs.dlq holds exactly the even half "
    "with x-dead-letter-reason=expired; stats() expired == dead_lettered == N/2, also after a "
    "reopen. No peer row (persist-queue has no TTL; Redis Streams have none per message).",
    "peak RSS: ru_maxrss of the fresh worker process of that row, including the N messages "
    "kept in memory to put and to check what came back (about 14 MiB per 100k).",
    "Checks (untimed): every message received exactly once and byte for byte (Q, C1), or every "
    "message in publish order for each subscription (P1); nothing left pending or in flight; "
    "committed positions equal the end offsets; logstore and persist-queue queues reopened: "
    "nothing is delivered again.",
]


def build_plan(messages: int, durable: int, redis_messages: int,
               have: Dict[str, bool]) -> List[dict]:
    def row(workload: str, store: str, baseline: bool = False) -> dict:
        fsync = "always" if workload == "q3" else "never"
        n = durable if workload == "q3" else messages
        capped = store == "redis" and redis_messages < n
        return {"workload": workload, "store": store, "fsync": fsync,
                "messages": redis_messages if capped else n, "capped": capped,
                "consumers": CONSUMERS_Q2 if workload == "q2" else 1, "baseline": baseline}

    plan = []
    for workload, _ in WORKLOADS:
        plan.append(row(workload, "logstore"))
        if workload == "q4":  # the same workload on a queue without priorities
            plan.append(row(workload, "logstore", baseline=True))
        for store, rows in PEER_ROWS.items():
            if workload in rows and have[store]:
                plan.append(row(workload, store))
    return plan


def peers_available() -> Tuple[Dict[str, bool], List[str]]:
    import importlib.util
    have, notes = {}, []
    have["persistqueue"] = importlib.util.find_spec("persistqueue") is not None
    if not have["persistqueue"]:
        notes.append("persist-queue is not installed (pip install persist-queue): its rows "
                     "were skipped.")
    redis_py = importlib.util.find_spec("redis") is not None
    server = shutil.which("redis-server")
    have["redis"] = redis_py and server is not None
    if not redis_py:
        notes.append("the redis Python client is not installed (pip install redis): Redis "
                      "rows were skipped.")
    elif server is None:
        notes.append("redis-server is not on PATH (Debian: apt-get install redis-server): "
                     "Redis rows were skipped.")
    return have, notes


# --------------------------------------------------------------------------- running
def run_worker(spec: dict) -> None:
    """Entry point of a worker process: run one (store, workload) and write its result."""
    os.sync()  # start with no dirty pages from earlier rows: their writeback would skew fsyncs
    values = make_values(spec["messages"])
    baseline = _max_rss_mib()
    fn = FUNCTIONS[f"{spec['store']}_{KIND[spec['workload']]}"]
    if spec.get("profile"):
        import cProfile
        import pstats
        global _PROFILER, _THREAD_PROFILES
        _PROFILER, _THREAD_PROFILES = cProfile.Profile(), []
        result = fn(spec, values)
        with open(spec["out"] + ".prof.txt", "w") as f:
            print("(timed phases only)", file=f)
            stats = pstats.Stats(_PROFILER, stream=f)
            for p in _THREAD_PROFILES:
                stats.add(p)
            if _THREAD_PROFILES:
                print(f"(main thread + {len(_THREAD_PROFILES)} consumer threads merged. With "
                      f"threads, a function's time includes waiting for the GIL inside it, "
                      f"and 'acquire' includes the main thread waiting in join: compare call "
                      f"counts, or profile a one-thread row)", file=f)
            stats.sort_stats("tottime").print_stats(25)
    else:
        result = fn(spec, values)
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
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        stop_leftover_server(spec["path"])
    if spec.get("profile") and os.path.exists(spec["out"] + ".prof.txt"):
        with open(spec["out"] + ".prof.txt") as f:
            spec["profile_text"] = f.read()
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"worker exited {proc.returncode}: {tail[0]}", "stderr": proc.stderr}
    with open(spec["out"]) as f:
        result = json.load(f)
    if "profile_text" in spec:
        result["profile"] = spec["profile_text"]
    return result


def run_plan(plan: List[dict], root: str, progress: bool = True) -> List[dict]:
    results = []
    for i, spec in enumerate(plan):
        row = dict(spec, path=os.path.join(root, f"{spec['store']}-{spec['workload']}"))
        if progress:
            print(f"  [{i + 1:2}/{len(plan)}] {store_label(spec):<28} {spec['workload']} ...",
                  end="", flush=True, file=sys.stderr)
        row.update(run_row(row, root, i))
        if progress:
            status = "FAILED" if "error" in row else \
                f"{row['put_s'] + row.get('get_s', row.get('read_s', 0)):.1f}s timed"
            print(f" {status}", file=sys.stderr)
        shutil.rmtree(row.pop("path"), ignore_errors=True)
        results.append(row)
    return results


def add_figures(results: List[dict]) -> None:
    for r in results:
        if "error" in r:
            continue
        n = r["messages"]
        r["put_per_s"] = n / r["put_s"]
        if KIND[r["workload"]] in QUEUE_KINDS:
            r["get_per_s"] = n / r["get_s"]
            r["result_per_s"] = n / (r["put_s"] + r["get_s"])
        else:
            r["get_per_s"] = r.get("deliveries", n) / r["read_s"]
            r["result_per_s"] = r["get_per_s"]
        r["mb_per_s"] = r["result_per_s"] * VALUE_SIZE / 1e6
        r["durability"] = DURABILITY[(r["store"], r["fsync"])]
    refs = {r["workload"]: r for r in results
            if r["store"] == "logstore" and not r.get("baseline") and "error" not in r}
    for r in results:
        if "error" not in r:
            ref = refs.get(r["workload"])
            r["ratio_vs_logstore"] = r["result_per_s"] / ref["result_per_s"] if ref else None


def prio_ratio_notes(results: List[dict]) -> List[str]:
    """Q4: put/s and get+ack/s of the priority queue against the baseline (same N, no
    priorities), as ratios."""
    prio = [r for r in results if r["workload"] == "q4" and r["store"] == "logstore"
            and not r.get("baseline") and "error" not in r]
    base = [r for r in results if r["workload"] == "q4" and r.get("baseline")
            and "error" not in r]
    if not prio or not base:
        return []
    p, b = prio[0], base[0]
    return [f"Q4 priorities / no priorities (logstore, same {p['messages']:,} messages): put/s "
            f"{p['put_per_s'] / b['put_per_s']:.2f}x, get+ack/s "
            f"{p['get_per_s'] / b['get_per_s']:.2f}x, end to end "
            f"{p['result_per_s'] / b['result_per_s']:.2f}x."]


# --------------------------------------------------------------------------- reporting
def _version(dist: str) -> str:
    try:
        import importlib.metadata
        return importlib.metadata.version(dist)
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
    server = shutil.which("redis-server")
    redis_server = "not installed"
    if server:
        try:
            out = subprocess.run([server, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            redis_server = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        except (OSError, subprocess.SubprocessError):
            redis_server = "unknown"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "logstore": version,
        "git": rev or "unknown",
        "persist-queue": _version("persist-queue"),
        "redis-py": _version("redis"),
        "redis-server": redis_server,
        "sqlite": sqlite3.sqlite_version,
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
    header = ["workload", "store", "messages", "put/s", "get/s", "result/s", "MB/s",
              "peak RSS MiB", "vs logstore", "durability"]
    order = {w: i for i, (w, _) in enumerate(WORKLOADS)}
    store_order = {s: i for i, s in enumerate(STORES)}
    labels = dict(WORKLOADS)
    lines = []
    for r in sorted(results, key=lambda r: (order[r["workload"]], store_order[r["store"]],
                                            bool(r.get("baseline")))):
        if "error" in r:
            lines.append([labels[r["workload"]], store_label(r), "-", "-", "-", "FAILED",
                          "-", "-", "-", r["error"][:60]])
            continue
        rss = f"{r['peak_rss_mib']:,.1f}"
        if r.get("server_peak_rss_mib") is not None:
            rss += f"+{r['server_peak_rss_mib']:,.1f}"
        ratio = r["ratio_vs_logstore"]
        store = store_label(r) + (" (capped)" if r.get("capped") else "")
        lines.append([
            labels[r["workload"]], store, f"{r['messages']:,}",
            f"{r['put_per_s']:,.0f}", f"{r['get_per_s']:,.0f}", f"{r['result_per_s']:,.0f}",
            f"{r['mb_per_s']:,.2f}", rss, "-" if ratio is None else f"{ratio:.2f}x",
            r["durability"],
        ])
    return _table.render(header, lines, {0, 1, 9})


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
    figure = {(r["workload"], r["store"]): r["result_per_s"] for r in results
              if "error" not in r and not r.get("baseline")}  # Q4's baseline: in the table
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / max(1, len(stores))
    for i, store in enumerate(stores):
        xs = [j + (i - (len(stores) - 1) / 2) * width for j, w in enumerate(workloads)
              if (w, store) in figure]
        ys = [figure[(w, store)] for w in workloads if (w, store) in figure]
        ax.bar(xs, ys, width, label=STORES[store])
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([label for _, label in WORKLOADS], rotation=15, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("result/s (log scale): acked msgs, deliveries or records")
    ax.set_title("logstore queue benchmark (100-byte messages)")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 4)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=len(stores))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Request-reply round trips/s (logstore store.request/respond against Redis "
               "LPUSH/BRPOP request-reply on a real redis-server) are measured by "
               "bench/rpc_bench.py, not by this script.")
    p.add_argument("--messages", type=int, help=f"messages for Q1, Q2, P1, C1, Q4, Q5 (default "
                   f"{DEFAULT_MESSAGES:,}; {QUICK_MESSAGES:,} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_MESSAGES:,} messages, {QUICK_DURABLE:,} durable")
    p.add_argument("--durable-messages", type=int,
                   help=f"messages for Q3 (default min({DEFAULT_DURABLE:,}, messages); "
                        f"{QUICK_DURABLE:,} with --quick)")
    p.add_argument("--redis-messages", type=int,
                   help=f"cap every Redis row at this many messages (default "
                        f"{DEFAULT_REDIS_CAP:,}; 0 = no cap); capped rows are marked")
    p.add_argument("--only", metavar="W[,W]", help="run only these workloads "
                   "(q1,q2,q3,p1,c1,q4,q5)")
    p.add_argument("--stores", metavar="S[,S]",
                   help="run only these stores (logstore,persistqueue,redis)")
    p.add_argument("--profile", action="store_true",
                   help="run the logstore rows under cProfile (slower) and print their top "
                        "functions by own time")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--png", metavar="PATH", help="grouped bar chart (needs matplotlib)")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.messages is None:
        args.messages = QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES
    if args.durable_messages is None:
        args.durable_messages = min(QUICK_DURABLE if args.quick else DEFAULT_DURABLE,
                                    args.messages)
    if args.redis_messages is None:
        args.redis_messages = DEFAULT_REDIS_CAP
    if args.redis_messages <= 0:
        args.redis_messages = max(args.messages, args.durable_messages)
    if args.messages < 1 or args.durable_messages < 1:
        p.error("--messages and --durable-messages must be >= 1")
    known = {w for w, _ in WORKLOADS}
    args.only = set(args.only.lower().split(",")) if args.only else known
    if not args.only <= known:
        p.error(f"--only: unknown workload(s) {sorted(args.only - known)}")
    args.stores = set(args.stores.lower().split(",")) if args.stores else set(STORES)
    if not args.stores <= set(STORES):
        p.error(f"--stores: unknown store(s) {sorted(args.stores - set(STORES))}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0

    have, notes = peers_available()
    plan = [row for row in build_plan(args.messages, args.durable_messages,
                                      args.redis_messages, have)
            if row["workload"] in args.only and row["store"] in args.stores]
    for row in plan:
        row["profile"] = args.profile and row["store"] == "logstore"

    root = tempfile.mkdtemp(prefix="logstore-qbench-")
    try:
        env = environment(root)
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
        print(f"workloads: {args.messages:,} messages of {VALUE_SIZE} B (Q3: "
              f"{args.durable_messages:,}); {CONSUMERS_Q2} consumers in Q2, {SUBSCRIPTIONS} "
              f"subscriptions in P1, {PARTITIONS_C1} partitions in C1", flush=True)
        started = time.perf_counter()
        results = run_plan(plan, root)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    env["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)

    add_figures(results)
    notes = notes + list(NOTES)
    if any(r.get("capped") for r in results):
        notes.insert(0, f"Redis rows marked (capped) ran {args.redis_messages:,} messages "
                        f"(--redis-messages; one loopback round trip per call makes them the "
                        f"slowest rows). Their rates are comparable: stream operations cost "
                        f"the same at any length.")
    if args.profile:
        notes.insert(0, "--profile: logstore rows ran under cProfile; their figures are slowed "
                        "down by it and are not comparable with the peers.")
    notes = prio_ratio_notes(results) + notes
    print()
    print(format_table(results))
    print()
    print("notes:")
    for note in notes:
        print(f"  - {note}")
    print(f"\nload average (1 min) at start {env['loadavg_1m_at_start']}, at end "
          f"{env['loadavg_1m_at_end']}; total wall time {elapsed:.0f}s")
    for r in results:
        if r.get("profile"):
            print(f"\ncProfile of logstore {r['workload']} (top 25 by own time):")
            print(r["profile"])

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": {
                "messages": args.messages, "durable_messages": args.durable_messages,
                "redis_messages": args.redis_messages,
                "value_bytes": VALUE_SIZE, "consumers_q2": CONSUMERS_Q2,
                "subscriptions_p1": SUBSCRIPTIONS, "partitions_c1": PARTITIONS_C1, "poll": POLL,
                "get_timeout_s": GET_TIMEOUT, "pq_clear_every": PQ_CLEAR_EVERY, "seed": SEED,
            }, "results": results, "notes": notes, "wall_s": elapsed}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        write_png(results, args.png)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
