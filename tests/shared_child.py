"""Child processes of the many-process tests (tests/test_shared_*.py, issue 19).

Usage: python shared_child.py MODE CONFIG_JSON

Every mode writes what it did to ``cfg["out"]`` as JSON lines (``Out``: one ``os.write`` per
line, so a line is whole in the file once written, even if the process is SIGKILLed right
after). A line is written only after the call it reports returned. Start barriers: a mode with
``cfg["start"]`` waits for that file to exist before its first write; ``cfg["stop"]``: runs
until that file exists. Exit status 0 means every check the child makes passed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import logstore  # noqa: E402
from logstore.errors import AckError, OffsetOutOfRangeError  # noqa: E402
from logstore.fs import FileSystem  # noqa: E402
from shared_helpers import check_dense_and_valid, key_of, read_all, value_of  # noqa: E402


class Out:
    """A record file: JSON lines appended with one os.write each (optionally fsynced)."""

    def __init__(self, path: Optional[str], durable: bool = False):
        self.fd = -1 if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                                   0o644)
        self.durable = durable

    def __call__(self, **fields: Any) -> None:
        if self.fd < 0:
            return
        os.write(self.fd, (json.dumps(fields, separators=(",", ":")) + "\n").encode())
        if self.durable:
            os.fsync(self.fd)


def wait_file(path: Optional[str], timeout: float = 120.0) -> None:
    if path is None:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.005)


def stopped(cfg: Dict[str, Any]) -> bool:
    return cfg.get("stop") is not None and os.path.exists(cfg["stop"])


def log_options(cfg: Dict[str, Any]) -> Dict[str, Any]:
    opts = dict(fsync=cfg.get("fsync", "never"), retention_check_interval_s=0)
    opts.update(cfg.get("options", {}))
    return opts


# ----------------------------------------------------------------------------- logs
def log_append(cfg: Dict[str, Any]) -> None:
    """Append values ``value_of(wid, i)`` (single appends and batches of 2..batch_max) until
    ``n`` records or the stop file; line per call: ``{"i", "n", "o"}`` (first index, count,
    first offset). Then, with ``go``: wait for it, read the whole log back through this writer
    (end_offset, read, get) and check it: line ``{"end", "count", "digest"}``."""
    out = Out(cfg["out"])
    wid, keys = cfg["wid"], cfg.get("keys", 0)
    rng = random.Random(wid * 7919 + cfg.get("seed", 0))
    log = logstore.Log.open(cfg["path"], shared=True, **log_options(cfg))
    out(ready=os.getpid(), first=log.first_writer)
    wait_file(cfg.get("start"))
    i = 0
    n = cfg.get("n")
    batch_max = cfg.get("batch_max", 8)
    while (n is None or i < n) and not stopped(cfg):
        k = 1 if rng.random() < 0.5 else rng.randint(2, batch_max)
        if n is not None:
            k = min(k, n - i)
        values = [value_of(wid, i + j) for j in range(k)]
        ks = [key_of(i + j, keys) for j in range(k)]
        if k == 1 and rng.random() < 0.5:
            off = log.append(values[0], key=ks[0])
            r = range(off, off + 1)
        else:
            r = log.append_batch(values, keys=ks if keys else None)
            assert len(r) == k, (r, k)
        out(i=i, n=k, o=r.start)
        i += k
    out(appended=i)
    if cfg.get("go"):
        wait_file(cfg["go"])
        end = log.end_offset
        recs = read_all(log, 0)
        assert len(recs) == end, (len(recs), end)
        seen = check_dense_and_valid(recs)
        for off in rng.sample(range(end), min(200, end)):  # get() agrees with read()
            assert log.get(off) == recs[off], off
        assert log.get_many(list(range(0, end, 7))) == recs[::7]
        digest = sum(hash(wi) for wi in seen) & 0xFFFFFFFFFFFF
        out(end=end, count=len(seen), digest=digest)
        wait_file(cfg.get("close"))
    log.close()
    out(closed=True)


class KillingFS(FileSystem):
    """A file system that SIGKILLs this process at a chosen step once ``armed``."""

    def __init__(self, point: str):
        self.point = point
        self.armed = False
        self.rolled = False  # (after_roll_pwrite) a roll's directory fsync happened

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    def pwrite(self, fd: int, data, offset: int) -> None:
        if self.armed and (self.point in ("pwrite_half", "pwrite_full")
                           or (self.point == "after_roll_pwrite" and self.rolled)):
            view = memoryview(data).cast("B")
            part = len(view) if self.point == "pwrite_full" else len(view) // 2
            os.pwrite(fd, view[:part], offset)
            self.die()
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        if self.armed and self.point == "seal_fdatasync":
            self.die()
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.armed and self.point == "index_fsync":
            self.die()
        super().fsync(fd)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self.armed and flags & os.O_CREAT and (
                (self.point == "create_log" and path.endswith(".log"))
                or (self.point == "create_index" and path.endswith(".index"))):
            self.die()
        return super().open(path, flags, mode)

    def replace(self, src: str, dst: str) -> None:
        if self.armed and self.point == "compaction_commit" and dst.endswith("compaction.commit"):
            self.die()  # before the commit point: the cleaned .swap files are all there
        super().replace(src, dst)
        if self.armed and (
                (self.point == "retention_rename" and dst.endswith(".log.deleted"))
                or (self.point == "compaction_swap" and src.endswith(".swap"))):
            self.die()  # one segment renamed, holding the write lock

    def fsync_dir(self, path: str) -> None:
        if self.armed and self.point == "fsync_dir":
            self.die()
        super().fsync_dir(path)
        if self.armed:
            self.rolled = True


def log_killer(cfg: Dict[str, Any]) -> None:
    """Append batches like ``log_append``; after ``arm_after`` records arm ``KillingFS``, which
    SIGKILLs this process at ``point`` (half-way through a batch's pwrite, or in a roll).
    Lines: ``{"try": i, "n": k}`` before a call, ``{"i", "n", "o"}`` after it returned."""
    out = Out(cfg["out"])
    wid = cfg["wid"]
    rng = random.Random(wid)
    fs = KillingFS(cfg["point"])
    log = logstore.Log.open(cfg["path"], shared=True, fs=fs, **log_options(cfg))
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    i = 0
    while i < 20_000:
        if i >= cfg["arm_after"]:
            fs.armed = True
        k = rng.randint(1, 10)
        values = [value_of(wid, i + j) for j in range(k)]
        out(**{"try": i, "n": k})
        r = log.append_batch(values)
        out(i=i, n=k, o=r.start)
        i += k
    out(never_killed=i)
    log.close()
    raise SystemExit(3)


def log_kill_cleaner(cfg: Dict[str, Any]) -> None:
    """Open the log with ``KillingFS`` armed at ``point`` and run one retention pass and one
    compaction pass (if compacted): the process is expected to die in one of them."""
    out = Out(cfg["out"])
    fs = KillingFS(cfg["point"])
    log = logstore.Log.open(cfg["path"], shared=True, fs=fs, **log_options(cfg))
    out(ready=os.getpid())
    fs.armed = True
    log.enforce_retention()
    if log.config.compacted:
        log.compact()
    out(never_killed=True)
    raise SystemExit(3)


def log_clean(cfg: Dict[str, Any]) -> None:
    """Run retention (and compaction, if the log is compacted) passes until the stop file."""
    out = Out(cfg["out"])
    log = logstore.Log.open(cfg["path"], shared=True, **log_options(cfg))
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    passes = removed = 0
    while not stopped(cfg):
        r = log.enforce_retention()
        removed += r["segments_removed"]
        if log.config.compacted:
            log.compact()
        passes += 1
        # Reads from the start stay consistent while others append and clean.
        try:
            start = log.start_offset
            recs = log.read(start, 200)
            for rec in recs:
                from shared_helpers import parse_value
                parse_value(rec.value)
        except OffsetOutOfRangeError:
            pass  # (retention moved the start meanwhile: allowed, never garbage)
        time.sleep(0.005)
    out(passes=passes, removed=removed)
    log.close()


def log_hold(cfg: Dict[str, Any]) -> None:
    """Open a log (``shared`` or the only writer) or a store, say so, wait for the stop file."""
    out = Out(cfg["out"])
    kind = cfg.get("kind", "log")
    opener = logstore.Store.open if kind == "store" else logstore.Log.open
    obj = opener(cfg["path"], shared=cfg.get("shared", False), **log_options(cfg))
    if kind == "store":
        obj.topic("t").publish(b"held")
    else:
        obj.append(b"held")
    out(ready=os.getpid())
    wait_file(cfg["stop"], 300)
    obj.close()


# ----------------------------------------------------------------------------- stores
def open_store(cfg: Dict[str, Any]) -> logstore.Store:
    opts = log_options(cfg)
    return logstore.Store.open(cfg["path"], shared=True,
                               dedup_window_s=cfg.get("dedup_window_s", 3600), **opts)


def queue_of(store: logstore.Store, cfg: Dict[str, Any]):
    return store.queue(cfg.get("queue", "jobs"), **cfg.get("queue_options", {}))


def queue_put(cfg: Dict[str, Any]) -> None:
    """Put ``n`` messages ``b"m<i>"``; line per put: ``{"put": i, "id"}``."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    q = queue_of(store, cfg)
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    for i in range(cfg["first"], cfg["first"] + cfg["n"]):
        mid = q.put(b"m%d" % i)
        out(put=i, id=mid)
    store.close()


def queue_worker(cfg: Dict[str, Any]) -> None:
    """Consume the queue until the stop file, with a random mix of behaviours (one per batch
    of messages got at once); every step a line with wall-clock times (``t0`` before the call,
    ``t`` after it returned):

    ``{"g": id, "c": count, "t"}``      a delivery (get / get_many returned it)
    ``{"a": id, "c", "t0", "t"}``       ack (or ack_many) returned: done
    ``{"x": id, "c", "t0", "t"}``       an ack refused with AckError: the lease had expired
                                        (on purpose, or this process stalled past it)
    ``{"n": id, "c", "d", "t0", "t"}``  nacked with delay d
    ``{"e": id, "c", "t"}``             extended (acked after the original deadline)

    An ack refused sooner than the visibility timeout after the delivery fails the worker.
    """
    out = Out(cfg["out"])
    rng = random.Random(os.getpid())
    store = open_store(cfg)
    q = queue_of(store, cfg)
    vt = q.visibility_timeout
    mix = cfg.get("mix", {})
    out(ready=os.getpid())
    wait_file(cfg.get("start"))

    def ack(msgs: List[Any], got: float, many: bool) -> None:
        t0 = time.time()
        try:
            if many:
                q.ack_many(msgs)
            else:
                for m in msgs:
                    q.ack(m)
                    out(a=m.id, c=m.delivery_count, t0=t0, t=time.time())
                    t0 = time.time()
                return
        except AckError:
            late = time.time() - got
            assert late > vt - 0.05, f"ack refused {late:.3f} s after the delivery (vt {vt})"
            for m in msgs:  # (ack_many: none of them was acked; ack: the rest)
                out(x=m.id, c=m.delivery_count, t0=t0, t=time.time())
            return
        t = time.time()
        for m in msgs:
            out(a=m.id, c=m.delivery_count, t0=t0, t=t)

    batches = 0
    while not stopped(cfg):
        if rng.random() < 0.3:
            msgs = q.get_many(rng.randint(2, 6), timeout=0.1)
        else:
            m = q.get(timeout=0.1)
            msgs = [] if m is None else [m]
        got = time.time()
        for m in msgs:
            out(g=m.id, c=m.delivery_count, t=got, v=m.value.decode())
        if not msgs:
            continue
        time.sleep(rng.random() * 0.005)
        batches += 1
        r = rng.random()
        # (every worker does each at least once: its 3rd, 6th and 9th batch)
        r = {3: 0.0, 6: mix.get("expire", 0.0) + mix.get("nack", 0.0),
             9: mix.get("expire", 0.0)}.get(batches, r) if mix else r
        if r < mix.get("expire", 0.0):
            time.sleep(vt * 1.2)  # too slow: the leases have expired, the acks must fail
            for m in msgs:
                t0 = time.time()
                try:
                    q.ack(m)
                except AckError:
                    out(x=m.id, c=m.delivery_count, t0=t0, t=time.time())
                else:
                    raise AssertionError(f"ack of {m.id} accepted {time.time() - got:.2f} s "
                                         f"after its delivery (visibility timeout {vt} s)")
        elif r < mix.get("expire", 0.0) + mix.get("nack", 0.0):
            for m in msgs:
                t0 = time.time()
                d = rng.choice([0, 0.05, 0.2])
                try:
                    q.nack(m, delay=d)
                except AckError:
                    late = time.time() - got
                    assert late > vt - 0.05, f"nack refused {late:.3f} s after the delivery"
                    out(x=m.id, c=m.delivery_count, t0=t0, t=time.time())
                    continue
                out(n=m.id, c=m.delivery_count, d=d, t0=t0, t=time.time())
        elif r < mix.get("expire", 0.0) + mix.get("nack", 0.0) + mix.get("extend", 0.0):
            for m in msgs:
                q.extend(m, vt * 3)
                out(e=m.id, c=m.delivery_count, t=time.time())
            time.sleep(vt * 1.3)  # past the original deadline, inside the extended one
            ack(msgs, got + vt * 2, len(msgs) > 1 and rng.random() < 0.5)
        else:
            ack(msgs, got, len(msgs) > 1 and rng.random() < 0.5)
    store.close()
    out(closed=True)


def queue_grab(cfg: Dict[str, Any]) -> None:
    """Take ``n`` messages (get_many), report them, then wait to be SIGKILLed holding them."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    q = queue_of(store, cfg)
    got: List[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < cfg["n"] and time.monotonic() < deadline:
        got += q.get_many(cfg["n"] - len(got), timeout=1)
    t = time.time()
    for m in got:
        out(g=m.id, c=m.delivery_count, t=t)
    out(holding=len(got))
    time.sleep(600)


def queue_idle(cfg: Dict[str, Any]) -> None:
    """Take messages and never settle them (their leases expire) until the stop file; also
    calls stats() (which expires leases too). Lines ``{"g", "c", "t"}``."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    q = queue_of(store, cfg)
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    rng = random.Random(os.getpid())
    while not stopped(cfg):
        if rng.random() < 0.3:
            q.stats()
        for m in q.get_many(rng.randint(1, 5), timeout=0.05):
            out(g=m.id, c=m.delivery_count, t=time.time())
    store.close()


def queue_redrive(cfg: Dict[str, Any]) -> None:
    """Wait for the start file, redrive the dead letters; line ``{"moved": n}``."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    q = queue_of(store, cfg)
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    out(moved=q.redrive())
    store.close()


def publisher(cfg: Dict[str, Any]) -> None:
    """Publish ``n`` messages ``value_of(wid, i)`` to ``topic`` (keyed, unkeyed, batches) while
    the others do; line per call ``{"i", "po": [[p, off], ...]}``."""
    out = Out(cfg["out"])
    wid = cfg["wid"]
    rng = random.Random(wid)
    store = open_store(cfg)
    topic = store.topic(cfg["topic"], partitions=cfg.get("partitions"))
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    i = 0
    while i < cfg["n"]:
        if rng.random() < 0.3:
            k = min(rng.randint(2, 6), cfg["n"] - i)
            keys = [b"key%d" % rng.randint(0, 9) for _ in range(k)] if rng.random() < 0.5 \
                else None
            po = topic.publish_batch([value_of(wid, i + j) for j in range(k)], keys=keys)
        else:
            k = 1
            key = b"key%d" % rng.randint(0, 9) if rng.random() < 0.5 else None
            po = [topic.publish(value_of(wid, i), key)]
        out(i=i, po=[list(x) for x in po])
        i += k
    store.close()


def member(cfg: Dict[str, Any]) -> None:
    """A consumer group member (or a subscription's, with ``subscription``) in a shared store:
    polls and commits after each poll until the stop file; lines ``{"r": [[p, off, value]...]}``
    and ``{"c": {p: off}}`` (after the commit returned)."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    if cfg.get("subscription"):
        consumer = store.subscribe(cfg["topic"], cfg["subscription"], start="earliest")
    else:
        consumer = store.consumer(cfg["group"], cfg["topic"])
    out(ready=os.getpid())
    while not stopped(cfg):
        recs = consumer.poll(50, timeout=0.05)
        if recs:
            out(r=[[r.partition, r.offset, r.value.decode()] for r in recs])
            now = consumer.assignment()
            positions = {p: consumer.position(p) for p in {r.partition for r in recs}
                         if p in now}
            consumer.commit(positions)
            out(c=positions)
    consumer.close()
    store.close()


def dedup_publisher(cfg: Dict[str, Any]) -> None:
    """Publish the messages ``ids`` (shuffled) with msg_id; line per publish ``{"id", "p",
    "o"}``."""
    out = Out(cfg["out"])
    store = open_store(cfg)
    topic = store.topic(cfg["topic"], partitions=cfg.get("partitions"))
    ids = list(cfg["ids"])
    random.Random(os.getpid()).shuffle(ids)
    out(ready=os.getpid())
    wait_file(cfg.get("start"))
    for mid in ids:
        p, o = topic.publish(f"v-{mid}".encode(), key=mid.encode() if cfg.get("keyed") else None,
                             msg_id=mid)
        out(id=mid, p=p, o=o)
    store.close()


def dedup_killed(cfg: Dict[str, Any]) -> None:
    """Publish ``b"order"`` with msg_id ``order-1`` through ``KillingFS`` armed at ``point``
    (in the publish's fsync, or right after its whole pwrite): the process dies inside it."""
    out = Out(cfg["out"])
    fs = KillingFS(cfg["point"])
    store = logstore.Store.open(cfg["path"], shared=True, fs=fs, dedup_window_s=3600,
                                **log_options(cfg))
    topic = store.topic(cfg["topic"])
    out(ready=os.getpid())
    fs.armed = True
    topic.publish(b"order", msg_id="order-1")
    out(never_killed=True)
    raise SystemExit(3)


# ----------------------------------------------------------------------------- the torture
def torture_producer(cfg: Dict[str, Any]) -> None:
    """Producer ``pid_no`` of the torture: publishes ``p<j>-<seq>`` with msg_id of the same
    name, in seq order, resuming after the last acknowledged one in its record file (the one
    after it may have been published before a kill: publishing it again is deduplicated).
    Record file (fsynced): ``{"s": seq, "p", "o"}`` once publish returned."""
    j = cfg["producer"]
    done = [r for r in _records(cfg["out"]) if "s" in r]
    seq = done[-1]["s"] + 1 if done else 0
    out = Out(cfg["out"], durable=True)
    store = open_store(cfg)
    topic = store.topic(cfg["queue"], partitions=cfg["partitions"])
    while not stopped(cfg):
        mid = f"p{j}-{seq}"
        key = f"p{j}-k{seq % 3}".encode()
        p, o = topic.publish(mid.encode(), key=key, msg_id=mid)
        out(s=seq, p=p, o=o)
        seq += 1
        if cfg.get("pause"):
            time.sleep(cfg["pause"])
    store.close()


def torture_worker(cfg: Dict[str, Any]) -> None:
    """Worker of the torture: get/get_many, record ``{"P": id, "c", "v"}`` (processed) for each,
    then ack or ack_many and record ``{"A": id, "c"}`` after the ack returned. Sometimes nacks
    a batch (``{"N": id, "c"}``) or lets its leases expire (``{"X": id, "c"}``: the ack was
    refused, as it must be). An ack refused sooner than the visibility timeout after the
    delivery fails the worker (exit 1)."""
    out = Out(cfg["out"])
    rng = random.Random(os.getpid())
    store = open_store(cfg)
    q = queue_of(store, cfg)
    vt = q.visibility_timeout
    while not stopped(cfg):
        msgs = q.get_many(rng.randint(1, 8), timeout=0.1)
        if not msgs:
            continue
        got = time.time()
        for m in msgs:
            out(P=m.id, c=m.delivery_count, v=m.value.decode())
        r = rng.random()
        if r < 0.01:
            for m in msgs:
                q.nack(m, delay=0)
                out(N=m.id, c=m.delivery_count)
            continue
        if r < 0.015:
            time.sleep(vt * 1.2)
        try:
            if len(msgs) > 1 and rng.random() < 0.5:
                q.ack_many(msgs)
                for m in msgs:
                    out(A=m.id, c=m.delivery_count)
            else:
                for m in list(msgs):
                    q.ack(m)
                    out(A=m.id, c=m.delivery_count)
                    msgs.remove(m)
        except AckError:
            late = time.time() - got
            assert late > vt - 0.05, f"ack refused {late:.3f} s after the delivery (vt {vt})"
            for m in msgs:  # (not acked)
                out(X=m.id, c=m.delivery_count)
    store.close()


def _records(path: str) -> List[Dict[str, Any]]:
    from shared_helpers import records_of
    return records_of(path)


MODES = {f.__name__: f for f in (
    log_append, log_killer, log_kill_cleaner, log_clean, log_hold, queue_put, queue_worker, queue_grab,
    queue_idle, queue_redrive, publisher, member, dedup_publisher, dedup_killed, torture_producer,
    torture_worker)}


if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
