"""Many writers on one log (issue 19): ``Log.open(path, shared=True)`` in several processes.

Real processes (``tests/shared_child.py``) append concurrently; writers killed with SIGKILL in
the middle of a batch or of a roll; retention and compaction while others append; the shared
fsync (deterministic, two objects in this process: flocks belong to open files, so two shared
opens of one directory in one process behave like two processes); mixing modes.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Tuple

import pytest

import logstore
from logstore.errors import ConfigError, LogLockedError, OffsetOutOfRangeError
from logstore.fs import FileSystem
from logstore.storage.shared import ROLLING, SharedTail

from shared_helpers import (
    check_dense_and_valid, finish, key_of, kill, parse_value, read_all, records_of, snapshot, spawn,
    touch, value_of, verify, wait_for,
)


def _calls(out: str) -> List[Tuple[int, int, int]]:
    """(first index, count, first offset) of every append call a child reported."""
    return [(r["i"], r["n"], r["o"]) for r in records_of(out) if "o" in r]


def _check_calls(wid: int, calls: List[Tuple[int, int, int]],
                 where: Dict[Tuple[int, int], int]) -> None:
    """Each call's records are in the log at the offsets it returned (a batch contiguous), and
    the writer's calls got increasing offsets (its order kept)."""
    last = -1
    expect_i = 0
    for i, n, o in calls:
        assert i == expect_i, (wid, i, expect_i)
        expect_i = i + n
        assert o > last, f"writer {wid}: call {i} got offset {o} after {last}"
        for j in range(n):
            assert where.get((wid, i + j)) == o + j, (
                f"writer {wid} record {i + j}: returned offset {o + j}, in the log at "
                f"{where.get((wid, i + j))}")
        last = o + n - 1


# ----------------------------------------------------------------------------- many writers
@pytest.mark.parametrize("fsync,n", [("never", 1500), ("always", 200)])
def test_many_writer_processes(tmp_path, fsync, n):
    """4 processes append single records and batches at once: offsets dense and unique, each
    call's own offsets, per-process order, batches contiguous; a read-only reader following
    along and every writer (end_offset, read, get, get_many) see every record."""
    path = str(tmp_path / "log")
    start, go, close = (str(tmp_path / x) for x in ("start", "go", "close"))
    outs = [str(tmp_path / f"w{w}.jsonl") for w in range(4)]
    procs = [spawn("log_append", dict(path=path, wid=w, n=n, fsync=fsync, out=outs[w],
                                      options={"segment_bytes": 16384}, start=start, go=go,
                                      close=close))
             for w in range(4)]
    try:
        wait_for(lambda: all(any("ready" in r for r in records_of(o)) for o in outs), 60,
                 "the writers to open the log", procs)
        firsts = [next(r["first"] for r in records_of(o) if "ready" in r) for o in outs]
        assert firsts.count(True) == 1, f"exactly one writer recovers the log: {firsts}"
        reader = logstore.Log.open(path, readonly=True)
        touch(start)
        # The reader follows the writers while they append: always a dense, valid prefix.
        seen: List[logstore.Record] = []
        while True:
            done = all(any("appended" in r for r in records_of(o)) for o in outs)
            new = reader.read(len(seen), 1000)
            seen.extend(new)
            check_dense_and_valid(new, new[0].offset if new else 0)
            if done and reader.end_offset == len(seen):
                break
            for p in procs:
                assert p.poll() is None, finish(p)
            if not new:
                time.sleep(0.01)
        total = 4 * n
        where = check_dense_and_valid(seen)
        assert len(where) == total and reader.end_offset == total
        for w in range(4):
            _check_calls(w, _calls(outs[w]), where)
        touch(go)  # each writer reads everything back through its own (writing) object
        ends = wait_for(lambda: [next((r for r in records_of(o) if "end" in r), None)
                                 for o in outs] if all(any("end" in r for r in records_of(o))
                                                       for o in outs) else None,
                        120, "the writers' read-back", procs)
        digest = sum(hash(wi) for wi in where) & 0xFFFFFFFFFFFF
        for w, e in enumerate(ends):
            assert (e["end"], e["count"], e["digest"]) == (total, total, digest), (w, e)
        touch(close)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    reader.close()
    # The last writer closed it cleanly: the next open reads no data.
    assert os.path.exists(os.path.join(path, "clean-shutdown"))
    verify(path)
    with logstore.Log.open(path) as log:
        assert log.recovery_report is None or log.recovery_report.clean
        assert log.end_offset == total
        assert check_dense_and_valid(read_all(log, 0)) == where


def test_two_shared_objects_interleave_in_one_process(tmp_path):
    """Two shared opens in one process (like two processes): appends interleave, each sees
    the other's records at once, batches stay whole across rolls, the last close is clean."""
    path = str(tmp_path / "log")
    opts = dict(shared=True, fsync="never", segment_bytes=1024, retention_check_interval_s=0)
    a = logstore.Log.open(path, **opts)
    b = logstore.Log.open(path, **opts)
    assert a.first_writer and not b.first_writer
    ia = ib = 0
    calls: Dict[int, List[Tuple[int, int, int]]] = {0: [], 1: []}
    for step in range(300):
        log, wid = (a, 0) if step % 3 else (b, 1)
        i = ia if wid == 0 else ib
        k = 1 + step % 7
        r = log.append_batch([value_of(wid, i + j) for j in range(k)])
        calls[wid].append((i, k, r.start))
        if wid == 0:
            ia += k
        else:
            ib += k
        other = b if log is a else a
        assert other.end_offset == r.stop  # the other writer sees it at once
        assert other.get(r.stop - 1).value == value_of(wid, i + k - 1)
    where = check_dense_and_valid(read_all(b, 0))
    for wid in (0, 1):
        _check_calls(wid, calls[wid], where)
    assert len(a.segments()) > 10  # rolls happened, by both writers
    a.close()
    assert not os.path.exists(os.path.join(path, "clean-shutdown"))  # b still writes
    b.append(value_of(1, ib))
    b.close()
    assert os.path.exists(os.path.join(path, "clean-shutdown"))
    verify(path)


# ----------------------------------------------------------------------------- shared fsyncs
class CountingFS(FileSystem):
    """Counts fdatasync calls (all files)."""

    def __init__(self):
        self.fdatasyncs = 0

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1
        super().fdatasync(fd)


def test_a_durable_append_covers_another_writers_bytes(tmp_path):
    """Writer B's bytes are written, not synced; writer A's durable append fsyncs the file,
    which covers them: B's flush() then makes no fdatasync. Bytes no fsync covered yet are
    synced by B's next flush (so the test can tell)."""
    path = str(tmp_path / "log")
    fa, fb = CountingFS(), CountingFS()
    a = logstore.Log.open(path, shared=True, fs=fa, fsync="always")
    b = logstore.Log.open(path, shared=True, fs=fb, fsync="never")
    try:
        ob = b.append(b"from b")
        assert fb.fdatasyncs == 0
        oa = a.append(b"from a")  # durable when it returns: one fdatasync, by A
        assert fa.fdatasyncs == 1 and oa == ob + 1
        assert a.durable_offset >= oa + 1
        b.flush()
        assert fb.fdatasyncs == 0, "B synced bytes that A's fsync already covered"
        assert b.durable_offset >= ob + 1
        b.append(b"b again")
        b.flush()
        assert fb.fdatasyncs == 1, "B's flush must sync bytes no fsync covered yet"
        before = fa.fdatasyncs
        a.flush()  # everything is durable already: nothing to sync
        assert fa.fdatasyncs == before
        assert [r.value for r in a.read(0)] == [b"from b", b"from a", b"b again"]
    finally:
        b.close()
        a.close()


def test_durable_appends_from_threads_of_two_writers(tmp_path):
    """Two durable writers (fsync="always", shared fsyncs), each appended to from 2 threads,
    rolling often: every append is durable at its return (its writer's durable_offset covers
    it), no record is lost or doubled, each thread's order is kept, and no append costs more
    than one fdatasync (group commit across threads and writers; seals and closes aside)."""
    path = str(tmp_path / "log")
    fa, fb = CountingFS(), CountingFS()
    a = logstore.Log.open(path, shared=True, fs=fa, fsync="always", segment_bytes=8192)
    b = logstore.Log.open(path, shared=True, fs=fb, fsync="always", segment_bytes=8192)
    errors: List[BaseException] = []
    got: Dict[int, List[int]] = {}

    def run(log: logstore.Log, wid: int) -> None:
        try:
            offs = []
            for i in range(150):
                off = log.append(value_of(wid, i))
                assert log.durable_offset > off, (log.durable_offset, off)
                offs.append(off)
            got[wid] = offs
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(log, w))
               for w, log in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    where = check_dense_and_valid(read_all(a, 0))
    assert len(where) == 600
    for wid, offs in got.items():
        assert offs == sorted(offs)
        assert [where[(wid, i)] for i in range(150)] == offs
    rolls = len(a.segments()) - 1
    a.close()
    b.close()
    assert fa.fdatasyncs + fb.fdatasyncs <= 600 + rolls + 4
    verify(path)


# ----------------------------------------------------------------------------- kill -9
KILL_POINTS_NEVER = ["pwrite_half", "pwrite_full", "seal_fdatasync", "index_fsync",
                     "create_log", "create_index", "fsync_dir", "after_roll_pwrite"]


@pytest.mark.parametrize("fsync,point,others", [
    *[("never", p, True) for p in KILL_POINTS_NEVER],
    ("always", "pwrite_half", True),
    ("always", "fsync_dir", True),
    ("always", "after_roll_pwrite", True),
    ("never", "pwrite_half", False),
    ("never", "create_index", False),
    ("always", "fsync_dir", False),
])
def test_writer_killed_holding_the_write_lock(tmp_path, fsync, point, others):
    """A writer SIGKILLs itself at ``point`` (half-way through a batch's pwrite, right after a
    whole one, or at a step of a roll) while holding the write lock. With ``others``: two
    writers of this process that had the log open all along go on appending without a reopen
    while a reader follows; without: the next opener recovers the log. Either way nothing
    acknowledged is lost, no torn record is ever returned, offsets stay dense, the killed
    batch is all or nothing, and ``logstore verify`` is clean afterwards."""
    path = str(tmp_path / "log")
    opts = dict(fsync=fsync, segment_bytes=4096, retention_check_interval_s=0)
    out = str(tmp_path / "killer.jsonl")
    acked: Dict[Tuple[int, int], int] = {}  # (wid, i) -> offset, from this process
    writers: List[logstore.Log] = []
    reader = None
    seen: List[logstore.Record] = []

    def follow() -> None:
        new = reader.read(len(seen), 1000)
        check_dense_and_valid(new, len(seen))
        seen.extend(new)

    counters = {10: 0, 11: 0}

    def append_some(k: int) -> None:
        for w, log in zip((10, 11), writers):
            i = counters[w]
            r = log.append_batch([value_of(w, i + j) for j in range(k)])
            for j in range(k):
                acked[(w, i + j)] = r.start + j
            counters[w] = i + k

    if others:
        writers = [logstore.Log.open(path, shared=True, **opts) for _ in range(2)]
        reader = logstore.Log.open(path, readonly=True)
        append_some(3)
    child = spawn("log_killer", dict(path=path, wid=1, point=point, arm_after=60, out=out,
                                     fsync=fsync, options={"segment_bytes": 4096}))
    try:
        while child.poll() is None:
            if others:  # appends and reads interleave with the killer's
                append_some(1)
                follow()
            time.sleep(0.002)
        _, err = child.communicate()
        assert child.returncode == -9, f"the killer was not killed at {point}: {err}"
    finally:
        kill(child)
    if not others:
        # Nobody touched the log since the kill: the shared tail shows what the killer was
        # doing (so the kill came where this test means it to).
        tail = SharedTail(path).open()
        try:
            mark = tail.read().writing_to
        finally:
            tail.close()
        rolling = point not in ("pwrite_half", "pwrite_full")
        assert (mark == ROLLING) if rolling else mark > 0, (point, mark)
        writers = [logstore.Log.open(path, shared=True, **opts) for _ in range(2)]
        assert writers[0].first_writer  # it recovered the log
        reader = logstore.Log.open(path, readonly=True)
    for _ in range(30):  # the others go on, without reopening
        append_some(2)
        follow()
    recs = read_all(writers[1], 0)
    where = check_dense_and_valid(recs)
    assert len(recs) == writers[0].end_offset == writers[1].end_offset == reader.end_offset
    follow()
    assert len(seen) == len(recs)
    for wi, off in acked.items():
        assert where.get(wi) == off, f"acknowledged {wi} at {off}: in the log at {where.get(wi)}"
    lines = records_of(out)
    for r in lines:
        if "o" in r:
            for j in range(r["n"]):
                assert where.get((1, r["i"] + j)) == r["o"] + j, ("killer's acknowledged", r)
    tries = [r for r in lines if "try" in r]
    last = tries[-1]
    assert not any("o" in r and r["i"] == last["try"] for r in lines)  # died inside it
    present = [(1, last["try"] + j) in where for j in range(last["n"])]
    assert all(present) or not any(present), f"batch cut in parts: {present}"
    if all(present):  # whole: kept in one piece, as crash recovery keeps whole batches
        offs = [where[(1, last["try"] + j)] for j in range(last["n"])]
        assert offs == list(range(offs[0], offs[0] + last["n"]))
    assert not [wi for wi in where if wi[0] == 1 and wi[1] > last["try"]]
    for log in writers:
        log.close()
    reader.close()
    verify(path)
    with logstore.Log.open(path) as log:  # the only writer now: the same records
        assert check_dense_and_valid(read_all(log, 0)) == where


# ----------------------------------------------------------------------------- cleaning
def test_retention_with_writers_and_cleaners_in_several_processes(tmp_path):
    """Two appender processes, a cleaner process and a cleaner thread here (retention_bytes,
    small segments): start_offset moves up, every acknowledged record at or above it is
    there, reads from start_offset are dense and whole, the log verifies."""
    path = str(tmp_path / "log")
    stop = str(tmp_path / "stop")
    opts = {"segment_bytes": 2048, "retention_bytes": 16384}
    outs = [str(tmp_path / f"w{w}.jsonl") for w in range(2)]
    procs = [spawn("log_append", dict(path=path, wid=w, out=outs[w], stop=stop, options=opts))
             for w in range(2)]
    here = None
    cleaner_out = str(tmp_path / "cleaner.jsonl")
    try:
        wait_for(lambda: all(records_of(o) for o in outs), 60, "the appenders", procs)
        procs.append(spawn("log_clean", dict(path=path, out=cleaner_out, stop=stop,
                                             options=opts)))
        here = logstore.Log.open(path, shared=True, fsync="never",
                                 retention_check_interval_s=0, **opts)
        removed = 0
        starts = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline or removed == 0:
            removed += here.enforce_retention()["segments_removed"]
            start = here.start_offset
            starts.append(start)
            try:
                recs = here.read(start, 300)
                check_dense_and_valid(recs, start)
            except OffsetOutOfRangeError:
                pass  # retention moved the start meanwhile
            assert time.monotonic() < deadline + 30, "retention never removed anything here"
            time.sleep(0.01)
        touch(stop)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    assert starts == sorted(starts), "start_offset went backwards"
    here.enforce_retention()
    start, end = here.start_offset, here.end_offset
    assert start > 0
    # Retention keeps the newest segments whose sizes fit in retention_bytes (+ the active).
    assert sum(s["size"] for s in here.segments()[:-1]) <= 16384
    recs = read_all(here, start)
    where = check_dense_and_valid(recs, start)
    assert len(recs) == end - start
    for w, out in enumerate(outs):
        for i, n, o in _calls(out):
            for j in range(n):
                if o + j >= start:
                    assert where.get((w, i + j)) == o + j, (w, i + j, o + j)
    with pytest.raises(OffsetOutOfRangeError):
        here.get(start - 1)
    cleaner = [r for r in records_of(cleaner_out) if "passes" in r]
    assert cleaner and cleaner[0]["passes"] > 0
    here.close()
    verify(path)


def test_start_offset_follows_another_writers_retention(tmp_path):
    """Writer B's retention pass moves the start; writer A (open all along, idle since) reports
    the new start_offset at once, and ``read(start_offset)`` works (the usual idiom)."""
    path = str(tmp_path / "log")
    opts = dict(shared=True, fsync="never", segment_bytes=2048, retention_bytes=4096,
                retention_check_interval_s=0)
    a, b = logstore.Log.open(path, **opts), logstore.Log.open(path, **opts)
    try:
        for i in range(300):
            a.append(value_of(0, i))
        report = b.enforce_retention()
        assert report["segments_removed"] > 0
        assert a.start_offset == b.start_offset == report["start_offset"] > 0
        recs = a.read(a.start_offset, 1000)
        assert recs[0].offset == report["start_offset"] and recs[-1].offset == 299
        check_dense_and_valid(recs, report["start_offset"])
    finally:
        a.close()
        b.close()


def test_compaction_with_writers_and_cleaners_in_several_processes(tmp_path):
    """cleanup_policy="compact": two appender processes write the same 25 keys while a cleaner
    process and this process compact; afterwards the latest value of every key is the one at
    the highest acknowledged offset, older ones went, and the log verifies."""
    path = str(tmp_path / "log")
    stop = str(tmp_path / "stop")
    opts = {"segment_bytes": 2048, "cleanup_policy": "compact"}
    outs = [str(tmp_path / f"w{w}.jsonl") for w in range(2)]
    procs = [spawn("log_append", dict(path=path, wid=w, out=outs[w], stop=stop, options=opts,
                                      keys=25))
             for w in range(2)]
    cleaner_out = str(tmp_path / "cleaner.jsonl")
    try:
        wait_for(lambda: all(records_of(o) for o in outs), 60, "the appenders", procs)
        procs.append(spawn("log_clean", dict(path=path, out=cleaner_out, stop=stop,
                                             options=opts)))
        here = logstore.Log.open(path, shared=True, fsync="never",
                                 retention_check_interval_s=0, **opts)
        deadline = time.monotonic() + 4
        removed = 0
        while time.monotonic() < deadline or removed == 0:
            report = here.compact()
            removed += report["records_before"] - report["records_after"]
            assert time.monotonic() < deadline + 30, f"compaction never removed anything: {report}"
            time.sleep(0.01)
        touch(stop)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    here.compact()
    latest: Dict[bytes, Tuple[int, bytes]] = {}
    total = 0
    for w, out in enumerate(outs):
        for i, n, o in _calls(out):
            for j in range(n):
                key = b"k%d" % ((i + j) % 25)
                total += 1
                if key not in latest or latest[key][0] < o + j:
                    latest[key] = (o + j, value_of(w, i + j))
    recs = read_all(here, 0)
    offsets = [r.offset for r in recs]
    assert offsets == sorted(set(offsets)), "offsets not strictly increasing"
    assert len(recs) < total, "nothing was compacted away"
    last_of: Dict[bytes, logstore.Record] = {}
    for r in recs:
        parse_value(r.value)
        last_of[r.key] = r
    assert set(last_of) == set(latest)
    for key, (off, value) in latest.items():
        assert (last_of[key].offset, last_of[key].value) == (off, value), key
        assert here.get(off).value == value
    here.close()
    verify(path)


@pytest.mark.parametrize("point", ["retention_rename", "compaction_commit", "compaction_swap"])
def test_cleaner_killed_with_writers_alive(tmp_path, point):
    """A process SIGKILLed in the middle of a retention pass (one segment renamed away, holding
    the write lock) or of a compaction (before its commit point; after it, half swapped, holding
    the write lock) while two writers of this process have the log open: they go on reading,
    appending, cleaning without a reopen; the latest value of every key stays right, nothing
    acknowledged is lost above start_offset, the log verifies, and a later open agrees."""
    path = str(tmp_path / "log")
    compact = point.startswith("compaction")
    settings = ({"cleanup_policy": "compact"} if compact else
                {"retention_bytes": 4096})
    opts = dict(fsync="never", segment_bytes=2048, retention_check_interval_s=0, **settings)
    a, b = (logstore.Log.open(path, shared=True, **opts) for _ in range(2))
    acked: Dict[Tuple[int, int], int] = {}
    counters = {10: 0, 11: 0}

    def append_some(rounds: int) -> None:
        for _ in range(rounds):
            for w, log in ((10, a), (11, b)):
                i = counters[w]
                keys = [key_of(i + j, 10) for j in range(3)]
                r = log.append_batch([value_of(w, i + j) for j in range(3)], keys=keys)
                for j in range(3):
                    acked[(w, i + j)] = r.start + j
                counters[w] = i + 3

    def check(log: logstore.Log) -> None:
        start = log.start_offset
        recs = read_all(log)
        offsets = [r.offset for r in recs]
        assert offsets == sorted(set(offsets)) and (not recs or recs[0].offset >= start)
        where = {parse_value(r.value): r.offset for r in recs}
        if compact:  # the latest acknowledged record of every key is there
            latest: Dict[bytes, Tuple[int, Tuple[int, int]]] = {}
            for wi, off in acked.items():
                k = key_of(wi[1], 10)
                if k not in latest or latest[k][0] < off:
                    latest[k] = (off, wi)
            last_of = {r.key: r for r in recs}
            for k, (off, wi) in latest.items():
                assert last_of[k].offset == off and last_of[k].value == value_of(*wi), k
        else:  # dense from the start, every acknowledged record at or above it
            assert offsets == list(range(start, log.end_offset))
            for wi, off in acked.items():
                if off >= start:
                    assert where.get(wi) == off, (wi, off, where.get(wi))

    append_some(60)
    out = str(tmp_path / "cleaner.jsonl")
    child = spawn("log_kill_cleaner", dict(path=path, point=point, out=out, options=settings,
                                           fsync="never"))
    try:
        _, err = child.communicate(timeout=120)
        assert child.returncode == -9, f"the cleaner was not killed at {point}: {err}"
    finally:
        kill(child)
    for log in (a, b):  # the survivors read on, append, clean, without a reopen
        check(log)
    append_some(20)
    check(a)
    a.enforce_retention()
    if compact:
        a.compact()
    b.enforce_retention()
    if compact:
        b.compact()
    append_some(20)
    check(a)
    check(b)
    a.close()
    b.close()
    verify(path)
    with logstore.Log.open(path, **{k: v for k, v in opts.items() if k != "fsync"}) as log:
        check(log)
    verify(path)


# ----------------------------------------------------------------------------- mixing modes
def _assert_refused(path: str, exc: type, words: List[str], **kw) -> None:
    before = snapshot(path)
    with pytest.raises(exc) as info:
        logstore.Log.open(path, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert snapshot(path) == before, "a refused open changed the log"


def test_exclusive_then_shared_refused(tmp_path):
    path = str(tmp_path / "log")
    with logstore.Log.open(path) as only:
        only.append(b"x")
        _assert_refused(path, LogLockedError, ["without shared=True", str(os.getpid())],
                        shared=True)
        only.append(b"y")  # the only writer goes on
        ro = logstore.Log.open(path, readonly=True)  # a reader is always welcome
        assert [r.value for r in ro.read(0)] == [b"x", b"y"]
        ro.close()
    with logstore.Log.open(path, shared=True) as s:  # once it is gone, shared is fine
        assert [r.value for r in s.read(0)] == [b"x", b"y"]


def test_shared_then_exclusive_refused(tmp_path):
    path = str(tmp_path / "log")
    a = logstore.Log.open(path, shared=True)
    b = logstore.Log.open(path, shared=True)
    a.append(b"x")
    with open(os.path.join(path, ".wlock"), "rb") as f:
        page = f.read()
    _assert_refused(path, LogLockedError, ["shared=True"])
    with open(os.path.join(path, ".wlock"), "rb") as f:
        assert f.read() == page, "a refused exclusive open changed the shared tail"
    b.append(b"y")
    ro = logstore.Log.open(path, readonly=True)
    assert [r.value for r in ro.read(0)] == [b"x", b"y"]
    a.close()
    _assert_refused(path, LogLockedError, ["shared=True"])  # b is still there
    b.close()
    with logstore.Log.open(path) as only:
        assert [r.value for r in only.read(0)] == [b"x", b"y"]
    ro.close()


def test_exclusive_in_another_process_names_its_pid(tmp_path):
    path = str(tmp_path / "log")
    stop = str(tmp_path / "stop")
    out = str(tmp_path / "hold.jsonl")
    child = spawn("log_hold", dict(path=path, out=out, stop=stop, shared=False))
    try:
        pid = wait_for(lambda: next((r["ready"] for r in records_of(out) if "ready" in r),
                                    None), 60, "the holder", [child])
        _assert_refused(path, LogLockedError, [f"pid {pid}", "without shared=True"],
                        shared=True)
        _assert_refused(path, LogLockedError, [f"pid {pid}"])
        touch(stop)
        finish(child)
    finally:
        kill(child)
    with logstore.Log.open(path, shared=True) as log:
        assert [r.value for r in log.read(0)] == [b"held"]


def test_shared_in_another_process_refuses_exclusive(tmp_path):
    path = str(tmp_path / "log")
    stop = str(tmp_path / "stop")
    out = str(tmp_path / "hold.jsonl")
    child = spawn("log_hold", dict(path=path, out=out, stop=stop, shared=True))
    try:
        wait_for(lambda: any("ready" in r for r in records_of(out)), 60, "the holder", [child])
        _assert_refused(path, LogLockedError, ["shared=True"])
        with logstore.Log.open(path, shared=True) as log:  # joining it is fine
            log.append(b"mine")
        touch(stop)
        finish(child)
    finally:
        kill(child)
    with logstore.Log.open(path) as log:
        assert [r.value for r in log.read(0)] == [b"held", b"mine"]


@pytest.mark.parametrize("kw", [dict(shared=True, readonly=True),
                                dict(shared=True, write_buffer_bytes=65536, fsync="never")])
def test_shared_option_conflicts_are_config_errors(tmp_path, kw):
    path = str(tmp_path / "log")
    with pytest.raises(ConfigError) as info:
        logstore.Log.open(path, **kw)
    assert "shared=True" in str(info.value)
    assert not os.path.exists(path), "a refused open created the log"
    with pytest.raises(ConfigError):
        logstore.Store.open(str(tmp_path / "store"), **kw)
    assert not os.path.exists(str(tmp_path / "store"))
