"""Issue 16, cases 1 and 12 (and their class): a reader always follows the log.

Whatever retention, compaction or rolls do between two of its calls, a ``readonly=True`` Log
reports the writer's current ``start_offset``/``end_offset`` and reads what is there; consumers
whose position fell below ``start_offset`` continue there and say so (``consumer.skipped``, a
WARNING on the "logstore" logger, or ``on_out_of_range="error"``); ``logstore tail -f`` keeps
printing. Checked in this process and, for 20 rounds of retention plus compaction, with the
reader in a second process (tests/follower_proc.py).
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import logstore
from edge_helpers import ENV, cli_process

HERE = os.path.dirname(os.path.abspath(__file__))
FOLLOWER = os.path.join(HERE, "follower_proc.py")


def value(off):
    return b"v%d" % off


def retained_writer(d, **kw):
    opts = dict(segment_bytes=2048, fsync="never", retention_bytes=4096,
                retention_check_interval_s=0)
    opts.update(kw)
    return logstore.Log.open(d, **opts)


def append_n(log, n):
    for _ in range(n):
        off = log.end_offset
        assert log.append(value(off)) == off


def assert_same_view(ro, w):
    assert (ro.start_offset, ro.end_offset) == (w.start_offset, w.end_offset)


def read_all(log, start):
    out = []
    pos = start
    while True:
        recs = log.read(pos, max_records=500)
        if not recs:
            return out
        out.extend(recs)
        pos = recs[-1].offset + 1


# ---------------------------------------------------------------------------- case 1: Log
def test_readonly_log_follows_retention_issue_scenario(tmp_path):
    """The issue's steps: the reader froze at start/end 12/24 while the writer passed 700."""
    d = str(tmp_path / "log")
    w = retained_writer(d)
    append_n(w, 20)
    ro = logstore.Log.open(d, readonly=True)
    append_n(w, 200)
    w.enforce_retention()
    for _ in range(5):
        append_n(w, 100)
        w.enforce_retention()
        assert_same_view(ro, w)
        got = read_all(ro, ro.start_offset)
        assert [r.offset for r in got] == list(range(w.start_offset, w.end_offset))
        assert all(r.value == value(r.offset) for r in got)
    assert w.end_offset >= 700
    assert ro.read(ro.end_offset) == []
    # A record the reader has not seen yet, by get and by replay.
    last = w.end_offset - 1
    assert ro.get(last).value == value(last)
    assert [r.offset for r in ro.replay(ro.start_offset)] == list(range(w.start_offset,
                                                                        w.end_offset))
    assert ro.offset_for_time(0) == w.start_offset
    ro.close()
    w.close()


def test_readonly_log_follows_when_the_segment_it_reads_is_deleted(tmp_path):
    """The reader knew one segment only (its active one); retention deleted it and its
    successor before the reader looked again."""
    d = str(tmp_path / "log")
    w = retained_writer(d)
    append_n(w, 5)
    ro = logstore.Log.open(d, readonly=True)
    assert ro.end_offset == 5
    append_n(w, 300)
    w.enforce_retention()
    assert w.start_offset > 28  # the reader's segment and its successor are gone
    assert_same_view(ro, w)
    got = read_all(ro, ro.start_offset)
    assert [r.offset for r in got] == list(range(w.start_offset, w.end_offset))
    ro.close()
    w.close()


def test_readonly_log_follows_rolls_retention_and_compaction(tmp_path):
    d = str(tmp_path / "log")
    w = retained_writer(d, cleanup_policy="compact,delete", retention_bytes=6144)
    ro = logstore.Log.open(d, readonly=True)
    for rnd in range(8):
        for _ in range(120):
            off = w.end_offset
            w.append(value(off), key=b"k%d" % (off % 30))
        w.compact()
        w.enforce_retention()
        want = [(r.offset, r.key, r.value) for r in w.replay(w.start_offset)]
        assert_same_view(ro, w)
        got = read_all(ro, ro.start_offset)
        assert [(r.offset, r.key, r.value) for r in got] == want, f"round {rnd}"
    ro.close()
    w.close()


def test_readonly_get_and_segments_see_fresh_bounds(tmp_path):
    """Found while fixing case 1: a reader's get of an offset in a sealed segment it had not
    opened yet, deleted by retention since, said "segment ... no longer exists" (an
    OffsetOutOfRangeError without the log's bounds); get_many and segments() used stale bounds."""
    d = str(tmp_path / "log")
    w = retained_writer(d, retention_bytes=None)
    append_n(w, 300)
    ro = logstore.Log.open(d, readonly=True)
    assert ro.start_offset == 0
    w.enforce_retention(keep_from=200)
    start = w.start_offset
    assert 0 < start <= 200
    for off in (0, start - 1):
        with pytest.raises(logstore.OffsetOutOfRangeError) as ei:
            ro.get(off)
        assert str(start) in str(ei.value), str(ei.value)
        with pytest.raises(logstore.OffsetOutOfRangeError):
            ro.get_many([off, start])
    assert ro.get(start).value == value(start)
    assert [r.offset for r in ro.get_many([start, 299])] == [start, 299]
    assert ro.segments()[0]["base_offset"] == start
    assert ro.start_offset == start
    ro.close()
    w.close()


def test_readonly_log_whose_directory_was_removed_says_so(tmp_path):
    """Found while fixing case 1: a reader whose log directory was deleted answered from its
    stale view (old code) or with a bare FileNotFoundError; it raises NotALogError."""
    d = str(tmp_path / "log")
    w = retained_writer(d, retention_bytes=None)
    append_n(w, 10)
    w.close()
    ro = logstore.Log.open(d, readonly=True)
    shutil.rmtree(d)
    for call in (lambda: ro.end_offset, lambda: ro.start_offset, lambda: ro.read(0)):
        with pytest.raises(logstore.NotALogError):
            call()
    ro.close()


# ---------------------------------------------------------------------------- consumers
def _retained_store(d, **kw):
    opts = dict(segment_bytes=2048, fsync="never", retention_bytes=4096,
                retention_check_interval_s=0)
    opts.update(kw)
    return logstore.Store.open(d, **opts)


def _publish(topic, n):
    log = topic.partitions[0]
    for _ in range(n):
        off = log.end_offset
        assert topic.publish(value(off)) == (0, off)


def _drain(consumer, want_end, deadline_s=5.0):
    """Poll until the consumer's last record is want_end - 1; return the records."""
    out = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        recs = consumer.poll(1000, timeout=0.05)
        out.extend(recs)
        if out and out[-1].offset == want_end - 1:
            break
    return out


def _warned(caplog, *words):
    return [r for r in caplog.records if r.name.startswith("logstore")
            and r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)]


@pytest.mark.parametrize("readonly_member", [True, False], ids=["other-process-store",
                                                                 "writer-store"])
def test_consumer_below_start_continues_at_start_and_says_so(tmp_path, caplog,
                                                             readonly_member):
    """Cases 1 and 12: the member raised OffsetOutOfRangeError once, then reported lag 0 while
    records waited. Expected: it continues at start_offset, counts the skipped records in
    ``consumer.skipped`` and logs a WARNING naming group, topic, partition and range."""
    d = str(tmp_path / "store")
    s = _retained_store(d)
    t = s.topic("orders", partitions=1)
    _publish(t, 200)
    member_store = logstore.Store.open(d, readonly=True) if readonly_member else s
    c = member_store.consumer("billing", "orders")
    first = c.poll(5)
    assert [r.offset for r in first] == list(range(5))
    c.commit()
    _publish(t, 300)
    s.enforce_retention()
    log = t.partitions[0]
    start, end = log.start_offset, log.end_offset
    assert start > 5
    caplog.set_level(logging.WARNING, logger="logstore")
    got = _drain(c, end)  # never raises
    offs = [r.offset for r in got]
    assert offs == sorted(set(offs)) and all(o >= 5 for o in offs)
    assert set(range(start, end)) <= set(offs), "records after start_offset never delivered"
    assert all(r.value == value(r.offset) for r in got)
    assert c.lag() == {0: 0}
    skipped = c.skipped
    assert isinstance(skipped, dict)
    assert len(offs) + skipped.get(0, 0) == end - 5, (skipped, len(offs))
    assert skipped.get(0, 0) > 0
    assert _warned(caplog, "billing", "orders"), [r.getMessage() for r in caplog.records]
    c.close()
    if readonly_member:
        member_store.close()
    s.close()


def test_consumer_iteration_survives_retention_in_readonly_store(tmp_path):
    """Case 12: ``for rec in consumer`` ended with OffsetOutOfRangeError once retention passed
    the member's position (its start_offset was stale)."""
    d = str(tmp_path / "store")
    s = _retained_store(d)
    t = s.topic("t", partitions=1)
    _publish(t, 200)
    ro = logstore.Store.open(d, readonly=True)
    c = ro.consumer("g", "t")
    it = iter(c)
    assert next(it).offset == 0
    _publish(t, 300)
    s.enforce_retention()
    end = t.partitions[0].end_offset
    got, errors = [], []

    def iterate():  # in a thread: on a stalled consumer next() blocks for good
        try:
            for rec in it:  # must not raise
                got.append(rec)
                if rec.offset == end - 1:
                    return
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=iterate, daemon=True)
    th.start()
    th.join(5)
    c.close()  # ends a stalled iteration
    th.join(5)
    assert not errors, errors
    assert got and got[-1].offset == end - 1, (got[-1:] if got else "nothing", end)
    assert got[-1].value == value(end - 1)
    ro.close()
    s.close()


def test_lag_of_readonly_member_sees_the_writer(tmp_path):
    """The issue: ``lag {0: 0}`` while 1,324 records waited."""
    d = str(tmp_path / "store")
    s = _retained_store(d)
    t = s.topic("t", partitions=1)
    _publish(t, 20)
    ro = logstore.Store.open(d, readonly=True)
    c = ro.consumer("g", "t")
    assert len(c.poll(100)) == 20
    _publish(t, 600)
    s.enforce_retention()
    log = t.partitions[0]
    assert c.lag() == {0: log.end_offset - log.start_offset}
    c.close()
    ro.close()
    s.close()


def test_on_out_of_range_error_raises_every_poll_until_seek(tmp_path):
    d = str(tmp_path / "store")
    s = _retained_store(d)
    t = s.topic("t", partitions=1)
    _publish(t, 200)
    c = s.consumer("g", "t", on_out_of_range="error")
    assert len(c.poll(5)) == 5
    _publish(t, 300)
    s.enforce_retention()
    start = t.partitions[0].start_offset
    for _ in range(3):  # every poll, not just once
        with pytest.raises(logstore.OffsetOutOfRangeError) as ei:
            c.poll(100)
        msg = str(ei.value)
        assert "5" in msg and str(start) in msg, msg
    assert c.skipped.get(0, 0) == 0  # nothing skipped
    c.seek(0, start)
    assert c.poll(1)[0].offset == start
    with pytest.raises(logstore.ConfigError):
        s.consumer("g2", "t", on_out_of_range="latest-ish")
    sub = s.subscribe("t", "audit", start="earliest", on_out_of_range="earliest")
    assert sub.poll(1)[0].offset == start
    s.close()


def test_subscription_below_start_counts_skipped(tmp_path, caplog):
    d = str(tmp_path / "store")
    s = _retained_store(d)
    t = s.topic("t", partitions=1)
    sub = s.subscribe("t", "audit", start="earliest")
    _publish(t, 10)
    assert len(sub.poll(3)) == 3
    sub.commit()
    _publish(t, 500)
    s.enforce_retention()
    caplog.set_level(logging.WARNING, logger="logstore")
    log = t.partitions[0]
    got = _drain(sub, log.end_offset)
    assert got[-1].offset == log.end_offset - 1
    assert len(got) + sub.skipped[0] == log.end_offset - 3
    assert _warned(caplog, "audit", "t")
    s.close()


def test_work_queue_below_start_continues_and_counts_skipped(tmp_path, caplog):
    """Spec 1: a work queue whose messages were deleted under it continues at start_offset,
    with a WARNING and ``q.stats()["skipped"]``."""
    d = str(tmp_path / "store")
    s = logstore.Store.open(d, segment_bytes=2048, fsync="never", retention_check_interval_s=0)
    q = s.queue("jobs", partitions=1)
    for i in range(300):
        q.put(b"job%d" % i)
    s.close()
    # An operator deletes old segments of the queue's topic behind the store's back.
    with logstore.Log.open(os.path.join(d, "topics", "jobs", "0"),
                           retention_check_interval_s=0) as part:
        part.enforce_retention(keep_from=250)
        start = part.start_offset
    assert start > 0
    caplog.set_level(logging.WARNING, logger="logstore")
    s = logstore.Store.open(d, fsync="never", retention_check_interval_s=0)
    q = s.queue("jobs")
    got = []
    while True:
        m = q.get(timeout=0.05)
        if m is None:
            break
        got.append(m.offset)
        q.ack(m)
    assert got == list(range(start, 300))
    assert q.stats()["skipped"] == start
    assert _warned(caplog, "jobs")
    s.close()


# ---------------------------------------------------------------------------- tail -f
def test_tail_follow_keeps_printing_across_retention(tmp_path):
    """`logstore tail -f` stopped printing (exit 0 on ^C) once retention deleted segments it
    had not seen; also when its own position fell below start_offset while it was stopped."""
    d = str(tmp_path / "log")
    w = retained_writer(d)
    append_n(w, 5)
    proc = cli_process("tail", d, "-f", "--interval", "0.02", "-n", "5",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    lock = threading.Lock()

    def pump():
        for line in proc.stdout:
            with lock:
                seen.append(line)

    threading.Thread(target=pump, daemon=True).start()

    def wait_for(off):
        needle = f"offset={off} "
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if any(x.startswith(needle) for x in seen):
                    return True
            time.sleep(0.02)
        return False

    try:
        assert wait_for(4)
        for rnd in range(3):
            append_n(w, 300)
            w.enforce_retention()
            assert wait_for(w.end_offset - 1), f"tail -f stopped at round {rnd}"
        # Its position falls below start_offset while it is stopped.
        proc.send_signal(signal.SIGSTOP)
        append_n(w, 400)
        w.enforce_retention()
        proc.send_signal(signal.SIGCONT)
        assert wait_for(w.end_offset - 1), "tail -f did not continue at start_offset"
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        w.close()


# ---------------------------------------------------------------------------- second process
class _Follower:
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, FOLLOWER, *map(str, args)], env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.lines.append("EOF")
            self.cond.notify_all()

    def reach(self, rnd, end, timeout=15.0):
        self.proc.stdin.write(f"T {rnd} {end}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.split()[:2] == ["OK", str(rnd)] or line.split()[:2] == [
                            "STUCK", str(rnd)] or line.startswith(("BAD", "ERR", "EOF")):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return "TIMEOUT"
                self.cond.wait(left)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read()


def _rounds(follower, write_round, end_offset, rounds=20, stop_every=5):
    """Run the rounds; every ``stop_every``-th one with the follower stopped (SIGSTOP), so that
    its position falls below start_offset. Return the OK lines."""
    oks = []
    for rnd in range(rounds):
        stopped = stop_every and rnd % stop_every == stop_every - 1
        if stopped:
            follower.proc.send_signal(signal.SIGSTOP)
        try:
            write_round(rnd)
        finally:
            if stopped:
                follower.proc.send_signal(signal.SIGCONT)
        line = follower.reach(rnd, end_offset())
        assert line.startswith("OK"), f"round {rnd}: {line}"
        oks.append(line.split())
    return oks


def test_second_process_log_reader_follows_retention_and_compaction(tmp_path):
    d = str(tmp_path / "log")
    # (retention_bytes below what compaction leaves of 40 keys, ~3.2 KB: with 6144, retention
    # never deleted anything and the test checked only compaction)
    w = retained_writer(d, cleanup_policy="compact,delete", retention_bytes=2048)
    w.append(value(0), key=b"k0")
    follower = _Follower("log", d)
    starts = []

    def write_round(rnd):
        for i in range(150):
            off = w.end_offset
            if i % 50 == 0:
                w.append_batch([value(off + j) for j in range(10)],
                               keys=[b"k%d" % ((off + j) % 40) for j in range(10)])
            else:
                w.append(value(off), key=b"k%d" % (off % 40))
        w.compact()
        w.enforce_retention()
        starts.append(w.start_offset)

    try:
        oks = _rounds(follower, write_round, lambda: w.end_offset)
    finally:
        err = follower.close()
        w.close()
    assert len(oks) == 20, err
    assert starts[-1] > starts[0] > 0  # retention really deleted segments, round after round
    assert sum(int(x[4]) for x in oks[-1:]) >= 1  # the stopped rounds made it jump


def test_second_process_group_member_follows_retention_and_compaction(tmp_path):
    d = str(tmp_path / "store")
    # (retention_bytes below what compaction leaves: see the Log test above)
    s = _retained_store(d, cleanup_policy="compact,delete", retention_bytes=2048)
    t = s.topic("t", partitions=1)
    log = t.partitions[0]
    t.publish(value(0), key=b"k0")
    follower = _Follower("group", d, "t")

    def write_round(rnd):
        for _ in range(150):
            off = log.end_offset
            assert t.publish(value(off), key=b"k%d" % (off % 40)) == (0, off)
        log.compact()
        s.enforce_retention()

    try:
        oks = _rounds(follower, write_round, lambda: log.end_offset)
    finally:
        err = follower.close()
        s.close()
    assert len(oks) == 20, err
    assert oks[-1][4] != "NA", "consumer.skipped is missing"
    assert int(oks[-1][4]) > 0  # skipped records were counted (the stopped rounds)


@pytest.mark.parametrize("fsync", ["never", "every"])
def test_second_process_reader_racing_the_writer_never_sees_damage(tmp_path, fsync):
    """Issue 16 case 4 made a reader judge where its catch-up stops (a batch being written vs
    damage). A reader racing a writer must never call a batch being written damage: under
    "never" small batches are copied into a shared mapping and larger ones pwritten; under
    "every" the file is preallocated and batches carry synced_before. Batches of 1..400
    records (up to ~5 KB), segments of 64 KiB, no retention."""
    d = str(tmp_path / "log")
    opts = dict(segment_bytes=64 * 1024, fsync=fsync, retention_check_interval_s=0)
    if fsync == "every":
        opts["fsync_records"] = 500
    w = logstore.Log.open(d, **opts)
    w.append(value(0))
    follower = _Follower("log", d)
    sizes = [1, 7, 400, 3, 150, 1, 1, 300, 60, 2]

    def write_round(rnd):
        for i in range(60):
            n = sizes[(rnd + i) % len(sizes)]
            off = w.end_offset
            if n == 1:
                assert w.append(value(off)) == off
            else:
                assert w.append_batch([value(off + j) for j in range(n)]) == range(off, off + n)

    try:
        oks = _rounds(follower, write_round, lambda: w.end_offset, rounds=10, stop_every=0)
    finally:
        err = follower.close()
        w.close()
    assert len(oks) == 10, err
    assert int(oks[-1][3]) == int(oks[-1][2])  # every record read once, in order
