"""Issue 16, "the rest of the class": more ways main 8f4b83a returns less than is there (or
stalls) without an error, found by going through readers, open paths and store internals.
Each test names what main does; each must fail there and pass once the class is fixed.
"""

import os
import shutil
import time


import logstore
import logstore.fs


def value(i):
    return b"v%d" % i


# ---------------------------------------------------------------------------- retention
def test_store_retention_keeps_unacked_messages_of_a_queue_not_open_here(tmp_path):
    """README: a queue's topic deletes only segments whose messages are all acked, "never an
    unacked or delayed one, whatever the limits". Main: Store.enforce_retention (and the
    store's background cleanup thread) protect only queues opened in this process; a producer
    process that just publishes deletes 251 of 301 unacked jobs, and the queue later starts at
    the new start_offset without a word."""
    d = str(tmp_path / "store")
    opts = dict(fsync="never", segment_bytes=2048, retention_bytes=4096,
                retention_check_interval_s=0)
    with logstore.Store.open(d, **opts) as s:
        q = s.queue("jobs", partitions=1)
        for i in range(300):
            q.put(b"job-%d" % i)
        s.enforce_retention()  # the queue is open here: nothing unacked goes
        assert s.topic("jobs").partitions[0].start_offset == 0
    with logstore.Store.open(d, **opts) as s:
        s.topic("jobs").publish(b"job-300")  # a producer: never opens the queue
        s.enforce_retention()
        assert s.topic("jobs").partitions[0].start_offset == 0
    with logstore.Store.open(d, **opts) as s:
        q = s.queue("jobs")
        got = []
        while True:
            m = q.get(timeout=0.05)
            if m is None:
                break
            got.append(m.value)
            q.ack(m)
        assert got == [b"job-%d" % i for i in range(301)]


# ---------------------------------------------------------------------------- compaction
class _SwapWatcher(logstore.fs.FileSystem):
    """Reads the log with read-only openers right after each compacted segment is renamed
    into place (before the writer has finished the pass)."""

    def __init__(self, directory, long_lived=None):
        self.directory = directory
        self.long_lived = long_lived
        self.results = []

    def replace(self, src, dst):
        super().replace(src, dst)
        if src.endswith(".log.swap"):
            readers = [("fresh", logstore.Log.open(self.directory, readonly=True))]
            if self.long_lived is not None:
                readers.append(("long-lived", self.long_lived))
            for name, ro in readers:
                try:
                    recs = list(ro.replay(ro.start_offset))
                    bad = [r.offset for r in recs if r.value != value(r.offset)]
                    self.results.append((name, "ok" if not bad else f"bad values {bad[:3]}"))
                except Exception as e:  # noqa: BLE001
                    self.results.append((name, f"{type(e).__name__}: {e}"))
            readers[0][1].close()


def test_readers_during_the_first_compaction_swap_see_no_false_corruption(tmp_path):
    """Main: the log is marked compacted (logstore.meta settings.compacted, which tells readers
    that offset gaps are fine) only after the cleaned segments are swapped in; a read-only
    reader in that window gets CorruptLogError "offsets ... are missing (the log is not
    compacted...)" and a follower loop dies on valid data."""
    d = str(tmp_path / "log")
    opts = dict(fsync="never", segment_bytes=2048, cleanup_policy="compact",
                retention_check_interval_s=0)
    with logstore.Log.open(d, **opts) as w:
        for i in range(300):
            w.append(value(i), key=b"k%d" % (i % 10))
    long_lived = logstore.Log.open(d, readonly=True)
    assert long_lived.end_offset == 300
    watcher = _SwapWatcher(d, long_lived)
    with logstore.Log.open(d, fs=watcher, **opts) as w:
        report = w.compact()
    long_lived.close()
    assert report["records_after"] < report["records_before"]
    assert watcher.results, "no swap seen"
    bad = [r for r in watcher.results if r[1] != "ok"]
    assert not bad, bad


# ---------------------------------------------------------------------------- store metadata
def test_missing_topic_json_is_not_recreated_with_another_partition_count(tmp_path):
    """Main: topics/t/topic.json gone, partition directories 0..3 intact: store.topic("t")
    silently re-creates the topic with 1 partition (partitions 1-3 and their records vanish
    from every view, keys route elsewhere) and `logstore verify` says OK."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t", partitions=4)
        for i in range(100):
            t.publish(value(i), key=b"k%d" % i)
        ends = t.end_offsets()
    assert all(ends.values())
    os.unlink(os.path.join(d, "topics", "t", "topic.json"))
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        try:
            t = s.topic("t")
        except logstore.CorruptLogError:
            return  # refused: fine
        assert t.partition_count == 4, "topic re-created with another partition count"
        assert t.end_offsets() == ends


def test_lost_lease_log_does_not_skip_messages_of_a_latest_group(tmp_path):
    """Main: a group created with start="latest" committed 101; its lease log for partition 0
    is lost; on the next open the group starts at the end again, silently skipping the 5
    messages published meanwhile. Expected: the loss is an error (or the group resumes from a
    position at or before its last commit), never a silent skip."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t", partitions=1)
        for i in range(100):
            t.publish(value(i))
        g = s.consumer("g", "t", start="latest")
        assert g.poll(1000) == []
        t.publish(value(100))
        assert [r.offset for r in g.poll(1000)] == [100]
        g.commit()
        g.close()
    shutil.rmtree(os.path.join(d, "internal", "groups", "t", "g", "0"))
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t")
        for i in range(101, 106):
            t.publish(value(i))
        try:
            g = s.consumer("g", "t", start="latest")
            got = [r.offset for r in g.poll(1000)]
        except logstore.CorruptLogError:
            return  # refused: fine
        assert set(range(101, 106)) <= set(got), f"delivered {got[:10]}..."


# ---------------------------------------------------------------------------- clocks
def test_delayed_message_not_stalled_by_a_clock_step_back(tmp_path, monkeypatch):
    """Main: a message put with delay=0.2 s keeps its wall-clock not-before time in memory; the
    wall clock steps back one hour (NTP, a VM resume) and the message waits an hour more.
    Visibility timeouts already use the monotonic clock; delays should too, in-process."""
    d = str(tmp_path / "store")
    s = logstore.Store.open(d, fsync="never", retention_check_interval_s=0)
    try:
        q = s.queue("jobs")
        q.put(b"later", delay=0.2)
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)
        m = q.get(timeout=3)
        assert m is not None and m.value == b"later", "delayed message stalled"
        q.ack(m)
    finally:
        monkeypatch.undo()
        s.close()


# ---------------------------------------------------------------------------- index hints
def test_time_retention_does_not_trust_a_damaged_time_index(tmp_path):
    """Indexes are hints (FORMAT.md), but retention_ms deletes on the word of a sealed
    segment's last time-index entry: in a segment with one index entry nothing checks it.
    Main: one damaged .timeindex entry (timestamp 1) and retention_ms=1h deletes a segment
    whose records are seconds old."""
    import struct

    d = str(tmp_path / "log")
    opts = dict(fsync="never", segment_bytes=2048, retention_ms=3_600_000,
                retention_check_interval_s=0)
    with logstore.Log.open(d, **opts) as w:
        for i in range(200):
            w.append(value(i))
    ti = os.path.join(d, "00000000000000000000.timeindex")
    size = os.path.getsize(ti)
    assert size == 12  # one entry: (max timestamp, next offset - base)
    with open(ti, "r+b") as f:
        f.seek(size - 12)
        f.write(struct.pack("<q", 1))
    with logstore.Log.open(d, **opts) as w:
        w.enforce_retention()
        assert w.start_offset == 0, "fresh records deleted on a damaged index's word"
        assert [r.value for r in w.replay()] == [value(i) for i in range(200)]
