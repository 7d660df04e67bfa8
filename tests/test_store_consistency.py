"""Issue 17: crash consistency of the store around the logs (cases 2-9 and the rest of the class).

Every test reproduces a broken promise of the README on 8f4b83a:

* retention never deletes an unacked queue message, whatever is open (case 2);
* a position kept in one log that points into another (a queue's low watermark and
  checkpoint, a group's or subscription's commit, the redrive cursor, interest retention's
  protection) is checked against that log when the store opens and clamped, with a WARNING on
  the "logstore" logger and an entry in ``store.repairs``; the store always opens (case 3);
* compaction, retention and the metadata agree after a crash or an I/O error (cases 4, 5);
* a damaged time index is not trusted (case 6), ``verify`` sees what ``Store.open`` refuses
  (case 7), msg-id deduplication is by publish time (case 8);
* failure paths release what they took (case 9).

The states a power loss leaves (one log recovered to an earlier point than another) are made
deterministically with ``storefaults.cut_log`` (FORMAT.md's crash model: any unsynced suffix
of the active segment of each file may be lost, independently); crashes are real SIGKILLs of
child processes (``storefaults.run_child``); faults come through the public I/O seam.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
import time

import pytest

import logstore
from simfs import SimFS, abandon
from storefaults import (
    FaultFS,
    batches,
    cut_log,
    flip_byte,
    log_end,
    run_child,
    run_cli,
    segment_files,
    under,
)

NO_CLEANER = dict(retention_check_interval_s=0)


def topic_dir(root, topic, p=0):
    return os.path.join(root, "topics", topic, str(p))


def events_dir(root, queue):
    return os.path.join(root, "internal", "queues", queue)


def drain(q, timeout=0.2):
    """Every message the work queue hands out now, acked as they come: [value, ...]."""
    out = []
    while True:
        msg = q.get(timeout=timeout)
        if msg is None:
            return out
        out.append(msg.value)
        msg.ack()


def poll_all(consumer, want, timeout=2.0):
    """Poll until ``want`` records came or ``timeout`` passed (a bound, not an assertion)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out.extend(consumer.poll(1000, timeout=0.05))
    return out


def assert_repaired(store, caplog, what):
    """The repair was reported: a WARNING on the "logstore" logger and an entry in
    ``store.repairs`` (a list of human-readable strings)."""
    warnings = [r for r in caplog.records
                if r.name.startswith("logstore") and r.levelno >= logging.WARNING]
    assert warnings, f"{what}: no WARNING logged on the 'logstore' logger"
    repairs = store.repairs
    assert isinstance(repairs, list) and len(repairs) >= 1 and all(
        isinstance(r, str) for r in repairs), f"{what}: store.repairs = {repairs!r}"


@pytest.fixture
def warn_log(caplog):
    caplog.set_level(logging.WARNING, logger="logstore")
    return caplog


# ======================================================================================= case 2
@pytest.mark.parametrize("delayed", [False, True], ids=["ready", "delayed"])
def test_retention_keeps_unacked_messages_of_a_closed_queue(tmp_path, delayed):
    """Issue 17 case 2: the pass runs while no WorkQueue of the topic is open in this Store."""
    root = str(tmp_path / "s")
    s = logstore.Store.open(root, segment_bytes=1024, retention_bytes=2048, **NO_CLEANER)
    try:
        q = s.queue("jobs")
        for i in range(100):
            q.put(b"m%03d" % i, delay=3600 if delayed else 0)
        q.close()
        s.enforce_retention()
        q = s.queue("jobs")
        assert len(q) == 100, "retention deleted messages that were never acked"
        if not delayed:
            assert drain(q) == [b"m%03d" % i for i in range(100)]
        else:
            assert q.stats()["delayed"] == 100
        assert s.topic("jobs").partitions[0].start_offset == 0
    finally:
        s.close()


def test_retention_keeps_unacked_messages_when_only_the_topic_is_open(tmp_path):
    """Issue 17 case 2, second form: a reopened store touches the queue's topic (not the
    queue) before the retention pass: the topic must be recognised as a queue's from what is
    on disk."""
    root = str(tmp_path / "s")
    opts = dict(segment_bytes=1024, retention_bytes=2048, **NO_CLEANER)
    with logstore.Store.open(root, **opts) as s:
        q = s.queue("jobs")
        for i in range(100):
            q.put(b"m%03d" % i)
        for _ in range(10):  # the first 10 are done: they may go
            q.get(timeout=1).ack()
    with logstore.Store.open(root, **opts) as s:
        s.topic("jobs")
        s.enforce_retention()
        q = s.queue("jobs")
        assert len(q) == 90
        assert drain(q) == [b"m%03d" % i for i in range(10, 100)]


def test_retention_keeps_unacked_messages_in_background_pass(tmp_path):
    """Case 2 through the store's own cleanup thread (the same pass, run by the store)."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, segment_bytes=1024, **NO_CLEANER) as s:
        q = s.queue("jobs")
        for i in range(100):
            q.put(b"m%03d" % i)
    with logstore.Store.open(root, segment_bytes=1024, retention_bytes=2048,
                             retention_check_interval_s=0.02) as s:
        t = s.topic("jobs")
        deadline = time.monotonic() + 1.0  # several passes of the cleaner
        while time.monotonic() < deadline and t.partitions[0].start_offset == 0:
            time.sleep(0.02)
        assert t.partitions[0].start_offset == 0, "the background pass deleted unacked messages"
        q = s.queue("jobs")
        assert len(q) == 100


# ======================================================================================= case 3
def _queue_all_acked(root, n=10, **opts):
    with logstore.Store.open(root, fsync="never", **NO_CLEANER, **opts) as s:
        q = s.queue("jobs")
        for i in range(n):
            q.put(b"m%d" % i)
        for _ in range(n):
            q.get(timeout=1).ack()


@pytest.mark.parametrize("how", ["put", "publish_before_queue_open"])
def test_queue_low_watermark_beyond_topic_end_is_repaired(tmp_path, warn_log, how):
    """Issue 17 case 3: the queue's state says 0..9 are done, its topic recovered to 5 records
    (its unsynced tail was lost, the queue's logs kept theirs). Messages put after recovery
    reuse offsets 5.. and must be delivered; len(q) must work."""
    root = str(tmp_path / "s")
    _queue_all_acked(root)
    cut_log(topic_dir(root, "jobs"), 5)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        if how == "put":
            q = s.queue("jobs")
            for i in range(3):
                q.put(b"n%d" % i)
        else:  # the topic is written to before its queue is opened in this store
            t = s.topic("jobs")
            for i in range(3):
                t.publish(b"n%d" % i)
            q = s.queue("jobs")
        assert len(q) == 3
        assert drain(q) == [b"n0", b"n1", b"n2"], "messages put after recovery were never delivered"
        assert len(q) == 0
        assert_repaired(s, warn_log, "queue low watermark")


def test_durable_queue_opens_after_its_topic_lost_its_tail(tmp_path, warn_log):
    """Issue 17 case 3: DurableQueue(path) could not be opened at all (len() < 0)."""
    path = str(tmp_path / "dq")
    q = logstore.DurableQueue(path, fsync="never")
    for i in range(10):
        q.put(i)
    for _ in range(10):
        q.get()
        q.task_done()
    q.close()
    cut_log(topic_dir(path, "items"), 5)
    q = logstore.DurableQueue(path, fsync="never")
    try:
        assert q.qsize() == 0
        for i in range(3):
            q.put(f"new{i}")
        assert [q.get(timeout=1) for _ in range(3)] == ["new0", "new1", "new2"]
    finally:
        q.close()
    assert [r for r in warn_log.records if r.name.startswith("logstore")
            and r.levelno >= logging.WARNING]


def test_queue_done_offsets_beyond_topic_end_are_repaired(tmp_path, warn_log):
    """Rest of the class: not only the low watermark. Offsets 0..4 and 7 were acked (5, 6
    were not) and the topic recovered to 6 records: 7 is "done" in the queue's state although
    the topic no longer has it. A message put after recovery lands at offset 7 and must be
    delivered, not skipped as done."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs")
        for i in range(10):
            q.put(b"m%d" % i)
        msgs = [q.get(timeout=1) for _ in range(10)]
        for m in msgs[:5] + [msgs[7]]:
            m.ack()
    cut_log(topic_dir(root, "jobs"), 6)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs")
        for i in range(3):
            q.put(b"n%d" % i)  # offsets 6, 7, 8
        got = drain(q)
        assert sorted(got) == [b"m5", b"n0", b"n1", b"n2"], \
            f"a message put after recovery was treated as already acked: got {got}"
        assert len(q) == 0
        assert_repaired(s, warn_log, "queue done offsets")


@pytest.mark.parametrize("kind", ["group", "subscription"])
def test_commit_beyond_topic_end_is_repaired(tmp_path, warn_log, kind):
    """Issue 17 case 3: a group (or subscription) committed 10, the topic recovered to 5.
    Records published after recovery (offsets 5..7) must be delivered and counted in lag()."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        t = s.topic("t")
        c = s.consumer("g", "t") if kind == "group" else s.subscribe("t", "audit",
                                                                     start="earliest")
        for i in range(10):
            t.publish(b"m%d" % i)
        assert len(poll_all(c, 10)) == 10
        c.commit()
    cut_log(topic_dir(root, "t"), 5)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        t = s.topic("t")
        for i in range(3):
            t.publish(b"n%d" % i)
        c = s.consumer("g", "t") if kind == "group" else s.subscribe("t", "audit")
        assert c.lag() == {0: 3}, "records published after recovery are not counted as lag"
        got = [r.value for r in poll_all(c, 3, timeout=1.0)]
        assert got == [b"n0", b"n1", b"n2"], "records published after recovery were skipped"
        assert c.committed()[0] <= 5
        assert_repaired(s, warn_log, f"{kind} commit")


def test_interest_retention_never_deletes_unread_records_after_divergence(tmp_path, warn_log):
    """Rest of the class (retention's protection of interests): a stale commit beyond the
    topic's end must not let an "interest" topic delete records nobody has read."""
    root = str(tmp_path / "s")
    opts = dict(fsync="never", segment_bytes=1024, **NO_CLEANER)
    with logstore.Store.open(root, **opts) as s:
        t = s.topic("t", retention="interest")
        c = s.consumer("g", "t")
        for i in range(40):
            t.publish(b"m%02d" % i * 8)
        assert len(poll_all(c, 40)) == 40
        c.commit()
        active_base = t.partitions[0].segments()[-1]["base_offset"]
    assert active_base < 39
    cut_log(topic_dir(root, "t"), active_base + 1)
    with logstore.Store.open(root, **opts) as s:
        t = s.topic("t")
        for i in range(60):
            t.publish(b"n%02d" % i * 8)
        s.enforce_retention()
        c = s.consumer("g", "t")
        got = [r.value for r in poll_all(c, 60)]
        assert got == [b"n%02d" % i * 8 for i in range(60)], \
            f"interest retention deleted unread records: got {len(got)} of 60"
        assert_repaired(s, warn_log, "interest commit")


def test_queue_checkpoint_beyond_event_log_end_is_repaired(tmp_path, warn_log):
    """Issue 17 case 3: the checkpoint committed in the offsets log is beyond the end of the
    queue's event log (which lost its tail): store.queue() raised OffsetOutOfRangeError at
    every open. It must open; what the surviving events say is done stays done, the rest is
    delivered (at-least-once)."""
    root = str(tmp_path / "s")
    _queue_all_acked(root)  # events: G0 A0 G1 A1 ... G9 A9 (0..19), checkpoint at 20
    assert log_end(events_dir(root, "jobs")) == 21
    cut_log(events_dir(root, "jobs"), 15)  # survives: acks of m0..m6 and the delivery of m7
    for attempt in range(2):
        with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
            q = s.queue("jobs")
            got = drain(q)
            if attempt == 0:
                assert got == [b"m7", b"m8", b"m9"], \
                    f"acked messages delivered again or unacked ones lost: {got}"
                assert_repaired(s, warn_log, "queue checkpoint")
            else:
                assert got == []


def test_queue_checkpoint_record_lost_at_event_log_end_redelivers_nothing_acked(tmp_path,
                                                                                warn_log):
    """Rest of the class: the checkpoint record itself was the lost tail (the event log ends
    exactly at the committed checkpoint offset). Opening replayed nothing and started from
    an empty state: every acked message was delivered again."""
    root = str(tmp_path / "s")
    _queue_all_acked(root)
    cut_log(events_dir(root, "jobs"), 20)  # every G/A event survives, the checkpoint not
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs")
        got = drain(q)
        assert got == [], f"acked messages delivered again: {got}"
        assert len(q) == 0
        assert_repaired(s, warn_log, "lost queue checkpoint")


def test_redrive_cursor_beyond_dead_letter_topic_end_is_repaired(tmp_path, warn_log):
    """Rest of the class: the redrive cursor (offsets log) points past the end of the
    dead-letter topic, which lost its tail. Dead letters written after recovery must be
    counted and redriven."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs", max_deliveries=1)
        for i in range(5):
            q.put(b"m%d" % i)
        for _ in range(5):
            q.get(timeout=1).nack()  # max_deliveries=1: dead-lettered
        assert q.redrive() == 5
        assert sorted(drain(q)) == [b"m%d" % i for i in range(5)]
    cut_log(topic_dir(root, "jobs.dlq"), 2)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs", max_deliveries=1)
        for i in range(3):
            q.put(b"d%d" % i)
        for _ in range(3):
            q.get(timeout=1).nack()  # dead letters at offsets 2, 3, 4 of jobs.dlq
        assert q.dead_lettered() == 3, "dead letters written after recovery are not counted"
        assert q.redrive() == 3
        assert sorted(drain(q)) == [b"d0", b"d1", b"d2"]
        assert_repaired(s, warn_log, "redrive cursor")


# ======================================================================================= case 4
def _compactable_log(d):
    with logstore.Log.open(d, segment_bytes=1024, cleanup_policy="compact", fsync="never") as log:
        for i in range(120):
            log.append(b"%d" % i * 5, key=b"k%d" % (i % 6))


def _records(log):
    return [(r.offset, r.key, r.value) for r in log.replay()]


_COMPACT_AND_DIE = """
import logstore
from storefaults import FaultFS, kill_self
point = sys.argv[2]
def when(op, path):
    if point == "swap_rename":      # the first .swap renamed over its .log (after the commit)
        return op == "replace" and path.endswith(".swap")
    if point == "commit_unlink":    # every swap done, the commit file being removed
        return op == "unlink" and path.endswith("compaction.commit")
    return op == "open" and path.endswith("logstore.meta.tmp")   # the "compacted" rewrite
fs = FaultFS(when, make_error=kill_self)
log = logstore.Log.open(sys.argv[1], fs=fs, cleanup_policy="compact", **{"retention_check_interval_s": 0})
log.compact()
print("compaction finished without reaching the kill point")
die()
"""


@pytest.mark.parametrize("point", ["swap_rename", "commit_unlink", "meta_rewrite"])
def test_crash_after_compaction_commit_leaves_a_readable_log(tmp_path, point):
    """Issue 17 case 4: a process killed after compaction's commit point but before the
    "compacted": true metadata rewrite left a log that read-only openers, replay and verify
    call corrupt forever (offsets missing, "the log is not compacted")."""
    ref, d = str(tmp_path / "ref"), str(tmp_path / "log")
    _compactable_log(ref)
    _compactable_log(d)
    with logstore.Log.open(ref, readonly=True) as ro:
        pre = _records(ro)
    with logstore.Log.open(ref, cleanup_policy="compact") as log:
        log.compact()
        post = _records(log)
    assert post != pre
    out = run_child(_COMPACT_AND_DIE, d, point)
    assert "finished" not in out
    # The log is marked compacted before the commit point: a kill at that rewrite is before
    # the commit (the pre-compaction log), the others after it (the post-compaction log).
    want = pre if point == "meta_rewrite" else post
    with logstore.Log.open(d) as log:  # a writer without the compact policy runs recovery
        assert _records(log) == want
    with logstore.Log.open(d, readonly=True) as ro:
        assert _records(ro) == want
    r = run_cli("verify", d)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    r = run_cli("replay", d)
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout.splitlines()) == len(want)


# ======================================================================================= case 5
def test_failed_swap_rename_then_retention_never_resurrects_segments(tmp_path):
    """Issue 17 case 5: an I/O error renaming a .swap into place, then a retention pass, then a
    reopen: the deleted segments came back (start_offset went backwards)."""
    d = str(tmp_path / "log")
    with logstore.Log.open(d, segment_bytes=1024, cleanup_policy="compact,delete",
                           retention_bytes=2048, fsync="never", **NO_CLEANER) as log:
        for i in range(300):
            log.append(b"%d" % i * 5, key=b"k%d" % (i % 6))
    opts = dict(segment_bytes=1024, cleanup_policy="compact,delete", retention_bytes=2048,
                **NO_CLEANER)
    fs = FaultFS(lambda op, path: op == "replace" and path.endswith(".swap"))
    log = logstore.Log.open(d, fs=fs, **opts)
    with pytest.raises(logstore.StorageError):
        log.compact()
    try:
        log.enforce_retention()
    except logstore.StorageError:
        pass  # refusing is fine; bringing deleted data back is not
    start = log.start_offset
    try:
        log.close()
    except logstore.StorageError:
        pass
    with logstore.Log.open(d, **opts) as log:
        assert log.start_offset >= start, \
            f"segments deleted by retention came back: start_offset {start} -> {log.start_offset}"
        offsets = [r.offset for r in log.replay()]
        assert offsets and min(offsets) >= start


# ======================================================================================= case 6
def test_damaged_last_time_index_entry_of_sealed_segment_is_not_trusted(tmp_path):
    """Issue 17 case 6: the last .timeindex entry of a sealed segment says "everything here is
    older than T"; a damaged T (here: 1970) made offset_for_time skip the segment and
    retention_ms delete records written a moment ago."""
    d = str(tmp_path / "log")
    t0 = int(time.time() * 1000)
    with logstore.Log.open(d, segment_bytes=1024, retention_ms=60_000) as log:
        for i in range(40):
            log.append(b"v%03d" % i * 10)
        assert len(log.segments()) >= 3
    ti = segment_files(d)[0][:-len(".log")] + ".timeindex"
    with open(ti, "r+b") as f:
        data = f.read()
        assert len(data) % 12 == 0 and data
        f.seek(len(data) - 12)
        f.write(struct.pack("<q", 1))  # the entry's timestamp; its offset stays right
    with logstore.Log.open(d, **NO_CLEANER) as log:  # (the stored settings apply)
        assert log.offset_for_time(t0 - 1000) == 0
        report = log.enforce_retention()
        assert report["segments_removed"] == 0, "retention_ms deleted records written just now"
        assert log.start_offset == 0
        assert log.get(0).value == b"v000" * 10


# ======================================================================================= case 7
@pytest.mark.parametrize("log_path", ["internal/offsets", "internal/queues/jobs", "topics/t/0",
                                      "internal/groups/t/g/0"])
def test_verify_reports_damaged_meta_of_a_store_log(tmp_path, log_path):
    """Issue 17 case 7: `logstore verify STORE` said OK (exit 0) when a log of the store had a
    damaged logstore.meta, while the store refuses that log."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, **NO_CLEANER) as s:
        s.topic("t").publish(b"x")
        c = s.consumer("g", "t")
        c.poll(10)
        c.commit()
        s.queue("jobs").put(b"y")
    with open(os.path.join(root, log_path, "logstore.meta"), "wb") as f:
        f.write(b'{"format": "logstore-lo')  # a torn rewrite
    with pytest.raises(logstore.NotALogError):  # the store refuses it (precondition)
        with logstore.Store.open(root, **NO_CLEANER) as s:
            if log_path.startswith("topics"):
                s.topic("t")
            elif "queues" in log_path:
                s.queue("jobs")
            elif "groups" in log_path:
                s.consumer("g", "t")
    r = run_cli("verify", root)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 1, f"verify exit {r.returncode}: {out.splitlines()[-1:]}"
    assert "logstore.meta" in out


# ======================================================================================= case 8
def test_dedup_of_old_timestamp_is_by_publish_time(tmp_path):
    """Issue 17 case 8: with timestamp_ms older than the window, an immediate retry appended a
    duplicate."""
    with logstore.Store.open(str(tmp_path / "s"), dedup_window_s=120, **NO_CLEANER) as s:
        t = s.topic("t")
        old = int(time.time() * 1000) - 3_600_000
        first = t.publish(b"x", msg_id="order-1", timestamp_ms=old)
        again = t.publish(b"x", msg_id="order-1", timestamp_ms=old)
        assert again == first
        assert t.partitions[0].end_offset == 1, "the retry appended a duplicate"


def test_dedup_of_old_timestamp_survives_reopen(tmp_path):
    """Rest of the class (dedup windows across reopen): the window rebuilt at open selected
    records by their timestamp, so a retry after a restart appended a duplicate."""
    root = str(tmp_path / "s")
    old = int(time.time() * 1000) - 3_600_000
    with logstore.Store.open(root, dedup_window_s=120, **NO_CLEANER) as s:
        first = s.topic("t").publish(b"x", msg_id="order-1", timestamp_ms=old)
    with logstore.Store.open(root, dedup_window_s=120, **NO_CLEANER) as s:
        t = s.topic("t")
        assert t.publish(b"x", msg_id="order-1", timestamp_ms=old) == first
        assert t.partitions[0].end_offset == 1, "the retry after reopen appended a duplicate"


def test_dedup_future_timestamp_does_not_block_expiry(tmp_path):
    """Issue 17 case 8: one far-future timestamp_ms kept its entry, and every entry after it,
    forever (the window never expired; the dict grew without bound)."""
    with logstore.Store.open(str(tmp_path / "s"), dedup_window_s=0.2, **NO_CLEANER) as s:
        t = s.topic("t")
        future = int(time.time() * 1000) + 10 * 365 * 86_400_000
        t.publish(b"f", msg_id="future", timestamp_ms=future)
        t.publish(b"b", msg_id="later")
        time.sleep(0.5)  # past the window (publish time)
        t.publish(b"b", msg_id="later")
        t.publish(b"f", msg_id="future", timestamp_ms=future)
        assert t.partitions[0].end_offset == 4, \
            "msg ids published before the window were still deduplicated"


# ======================================================================================= case 9
def test_failed_topic_open_releases_its_logs(tmp_path):
    """Issue 17 case 9: a failed store.topic() kept the partitions it had opened: every retry
    raised LogLockedError, still after store.close()."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, **NO_CLEANER) as s:
        s.topic("t", partitions=3).publish(b"x", partition=0)
    with open(os.path.join(topic_dir(root, "t", 2), "logstore.meta"), "wb") as f:
        f.write(b"garbage")
    s = logstore.Store.open(root, **NO_CLEANER)
    try:
        for _ in range(2):
            with pytest.raises(logstore.NotALogError):
                s.topic("t")
    finally:
        s.close()
    with logstore.Log.open(topic_dir(root, "t", 0)) as log:  # nothing left locked
        assert log.end_offset == 1


_QUEUE_WORK_AND_DIE = """
import logstore
s = logstore.Store.open(sys.argv[1], fsync="never", segment_bytes=1024,
                        **{"retention_check_interval_s": 0})
q = s.queue("jobs")
for i in range(50):
    q.put(b"m%d" % i)
for i in range(50):
    q.get(timeout=1).ack()
die()
"""


def test_failed_queue_open_releases_its_event_log(tmp_path):
    """Issue 17 case 9: a failed store.queue() kept its event log open: the retry raised
    LogLockedError instead of the real error, and the lock outlived store.close()."""
    root = str(tmp_path / "s")
    run_child(_QUEUE_WORK_AND_DIE, root)  # no checkpoint: the next open replays every event
    first = segment_files(events_dir(root, "jobs"))[0]
    flip_byte(first, batches(first)[0].position + 70)  # damage in a sealed segment
    s = logstore.Store.open(root, **NO_CLEANER)
    try:
        for _ in range(2):
            with pytest.raises(logstore.CorruptLogError):
                s.queue("jobs")
    finally:
        s.close()
    logstore.Log.open(events_dir(root, "jobs")).close()  # not locked any more


def test_failed_store_open_releases_the_offsets_log(tmp_path):
    """Rest of the class (failure paths): Store.open failing while loading the committed
    offsets kept the offsets log locked: the retry raised LogLockedError."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, segment_bytes=1024, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs")
        for _ in range(60):
            q.checkpoint()  # each commits a position into internal/offsets
    offsets_dir = os.path.join(root, "internal", "offsets")
    segs = segment_files(offsets_dir)
    assert len(segs) >= 3
    flip_byte(segs[0], batches(segs[0])[1].position + 70)
    for _ in range(2):
        with pytest.raises(logstore.CorruptLogError):
            logstore.Store.open(root, **NO_CLEANER)
    logstore.Log.open(offsets_dir).close()  # not locked


def test_store_close_releases_everything_when_a_view_close_fails(tmp_path):
    """Issue 17 case 9: Store.close() stopped at the first view whose close failed, leaving
    the store lock, the other views and the logs held."""
    root = str(tmp_path / "s")
    fs = FaultFS(lambda op, path: op == "fdatasync" and under("internal", "queues", "a")(path),
                 times=10 ** 6, armed=False)
    s = logstore.Store.open(root, fs=fs, **NO_CLEANER)
    qa, qb = s.queue("a"), s.queue("b")
    qa.put(b"x")
    qb.put(b"y")
    qb.get(timeout=1).ack()
    g = s.consumer("g", "a")
    assert len(poll_all(g, 1)) == 1
    g.commit()
    fs.armed = True  # queue a's checkpoint at close cannot be made durable
    with pytest.raises(logstore.StorageError):
        s.close()
    assert s.closed
    with logstore.Store.open(root, **NO_CLEANER) as again:  # the store lock was released
        assert len(again.queue("b")) == 0  # queue b was closed (checkpointed) too
        assert len(again.queue("a")) == 1
        c = again.consumer("g", "a")  # its lease was released
        assert c.committed() == {0: 1}
        assert c.assignment() == [0]


def test_failed_consumer_join_leaves_no_zombie_member(tmp_path):
    """Rest of the class (a view's construction): store.consumer() failing while taking a
    lease left its member registered in the group: the next member of the group was assigned
    only half the partitions, the other half belonged to the dead member forever."""
    root = str(tmp_path / "s")
    fs = FaultFS(lambda op, path: op == "open" and under("internal", "groups", "t", "g", "1")(path),
                 armed=False)
    with logstore.Store.open(root, fs=fs, fsync="never", **NO_CLEANER) as s:
        t = s.topic("t", partitions=2)
        for i in range(20):
            t.publish(b"v%d" % i)
        fs.armed = True
        with pytest.raises(logstore.StorageError):
            s.consumer("g", "t")
        c = s.consumer("g", "t")
        got = poll_all(c, 20, timeout=1.0)
        assert len(got) == 20, f"only partitions {c.assignment()} were assigned: " \
                               f"{len(got)} of 20 records delivered"


class _InterruptFS(SimFS):
    """SimFS (power-loss model of one log directory) that raises KeyboardInterrupt at the k-th
    seam operation once armed."""

    def __init__(self, root, k):
        super().__init__(root)
        self.k, self.armed, self.n, self.hit = k, False, 0, None

    def _step(self, op):
        if self.armed and not self.crashed:
            self.n += 1
            if self.n == self.k:
                self.armed = False
                self.hit = op
                raise KeyboardInterrupt(f"interrupt at {op}")
        super()._step(op)


def _value(i):
    return b"%04d" % i * 25  # 100 bytes: a one-record batch is 168 bytes framed


def _interrupted_roll(d, k):
    """A log whose next append rolls; the k-th seam operation from there raises
    KeyboardInterrupt. Returns (fs, log, acked, outcomes of the appends after it)."""
    fs = _InterruptFS(d, k)
    log = logstore.Log.open(d, fs=fs, segment_bytes=1024, fsync="always")
    acked = {}
    i = 0
    while log.segments()[-1]["size"] + 168 <= 1024:
        acked[log.append(_value(i))] = _value(i)
        i += 1
    fs.armed = True
    outcomes = []
    for j in range(4):
        v = _value(1000 + j)
        try:
            acked[log.append(v)] = v
            outcomes.append("ok")
        except KeyboardInterrupt:
            outcomes.append("interrupted")
        except (logstore.StorageError, logstore.LogClosedError):
            outcomes.append("refused")
        except Exception as e:  # noqa: BLE001 - anything else is the bug
            outcomes.append(f"{type(e).__name__}: {e}")
    fs.armed = False  # the sweep is over the roll and the appends after it, not close()
    return fs, log, acked, outcomes


@pytest.mark.parametrize("then", ["close", "power_loss"])
def test_keyboard_interrupt_during_roll(tmp_path, then):
    """Issue 17 case 9: a KeyboardInterrupt at any seam operation of a segment roll leaves the
    log usable or cleanly refusing (StorageError/LogClosedError), never raising TypeError from
    half-sealed state; close() works; and every acknowledged record (fsync="always") survives
    a reopen (``close``) or a power loss right after (``power_loss``)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    work = os.path.join(base, f"logstore-h17-{os.getpid()}-{then}")
    shutil.rmtree(work, ignore_errors=True)
    problems = []
    try:
        for k in range(1, 60):
            d = os.path.join(work, str(k))
            fs, log, acked, outcomes = _interrupted_roll(d, k)
            where = f"interrupt at op {k} ({fs.hit})"
            if fs.hit is None:
                log.close()
                break
            bad = [o for o in outcomes if o not in ("ok", "interrupted", "refused")]
            if bad:
                problems.append(f"{where}: append raised {bad[0]}")
            if then == "close":
                try:
                    log.close()
                except logstore.StorageError:
                    pass
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{where}: close raised {type(e).__name__}: {e}")
                    abandon(fs, log)
            else:
                abandon(fs, log)
                fs.materialize(random.Random(k), modes=("drop",))
            with logstore.Log.open(d, segment_bytes=1024) as again:
                end = again.end_offset
                lost = [o for o in acked if o >= end or again.get(o).value != acked[o]]
            if lost:
                problems.append(f"{where}: acknowledged offsets {lost} lost")
        else:
            raise AssertionError("the sweep never got past the roll")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert not problems, "\n".join(problems)


# ============================================================= rest of the class: trimming
_TRIM_EVENTS_AND_LOSE_POWER = """
import logstore
from storefaults import DirsSimFS
root = sys.argv[1]
fs = DirsSimFS([os.path.join(root, "internal", "queues", "jobs"),
                os.path.join(root, "internal", "offsets")])
s = logstore.Store.open(root, fs=fs, fsync="never", segment_bytes=1024,
                        **{"retention_check_interval_s": 0})
q = s.queue("jobs")
for i in range(100):
    q.put(b"m%d" % i)
msgs = [q.get(timeout=1) for _ in range(100)]
for m in msgs[1:]:
    m.ack()  # m0 stays in flight: the topic keeps every message
q.checkpoint()
report = s.enforce_retention()
print("trimmed", report.get("queue-events/jobs", {}).get("segments_removed", 0))
fs.power_loss()  # the queue's event log and the offsets log lose what was never fsynced
die()
"""


def test_event_log_trim_never_outruns_a_durable_checkpoint(tmp_path):
    """Rest of the class (fsync="never"): the retention pass trimmed the queue's event log
    below a checkpoint that was not durable yet (the deletion is durable at once, the
    checkpoint record and its commit are not). After a power loss every ack in the trimmed,
    long-fsynced segments was gone: 99 acked messages delivered again. At most the acks of the
    event log's unsynced tail (its active segment, under 10 events) may be lost."""
    root = str(tmp_path / "s")
    out = run_child(_TRIM_EVENTS_AND_LOSE_POWER, root)
    assert int(out.split()[-1]) > 5, out  # the pass trimmed the event log (precondition)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        got = drain(s.queue("jobs"))
    assert b"m0" in got
    assert len(got) <= 10, f"{len(got)} messages acked before the last fsyncs were delivered again"


_TRIM_LEASE_AND_LOSE_POWER = """
import logstore
from storefaults import DirsSimFS
root = sys.argv[1]
lease = os.path.join(root, "internal", "groups", "t", "__sub__audit", "0")
fs = DirsSimFS([lease])
s = logstore.Store.open(root, fs=fs, fsync="never", **{"retention_check_interval_s": 0})
t = s.topic("t")
sub = s.subscribe("t", "audit")
for i in range(10):
    t.publish(b"m%d" % i)
assert len(sub.poll(5)) == 5
for _ in range(33_000):  # enough commits for the lease log to drop its first segment
    sub.commit({0: 5})
print("trimmed" if "00000000000000000000.log" not in os.listdir(lease) else "not-trimmed")
fs.power_loss()  # the lease log loses what was never fsynced (fsync="never")
die()
"""


def test_lease_log_trim_never_outruns_a_durable_commit(tmp_path):
    """Rest of the class (group commits, fsync="never"): a lease log drops its old segments
    (durably) once it holds 32,768 commits, while the newest commits are not fsynced yet. A
    power loss then left no commit at all: the subscription restarted at "latest" and
    skipped the 5 records it had not read. It must resume from its last durable commit."""
    root = str(tmp_path / "s")
    out = run_child(_TRIM_LEASE_AND_LOSE_POWER, root)
    assert out.strip() == "trimmed", out  # precondition: the lease log was trimmed
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        sub = s.subscribe("t", "audit")
        got = [r.value for r in poll_all(sub, 5, timeout=1.0)]
    assert got == [b"m5", b"m6", b"m7", b"m8", b"m9"], \
        f"the subscription skipped records after losing its commits: {got}"


@pytest.mark.parametrize("stale", ["delivery_count", "not_before"])
def test_queue_per_offset_state_beyond_topic_end_is_dropped(tmp_path, warn_log, stale):
    """Rest of the class: the queue's delivery counts and nack delays are kept per offset too.
    Offset 5 was delivered twice (or nacked for an hour) when the topic lost it; the message
    put after recovery at offset 5 must start fresh: first delivery 1, not delayed (it was
    handed out as delivery 3 of max_deliveries=3 and dead-lettered after one nack, or held
    back for the old message's hour)."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs", max_deliveries=3)
        for i in range(6):
            q.put(b"m%d" % i)
        for _ in range(5):
            q.get(timeout=1).ack()
        m5 = q.get(timeout=1)
        if stale == "delivery_count":
            m5.nack(delay=0)
            assert q.get(timeout=1).delivery_count == 2  # in flight at close
        else:
            m5.nack(delay=3600)
    cut_log(topic_dir(root, "jobs"), 5)
    with logstore.Store.open(root, fsync="never", **NO_CLEANER) as s:
        q = s.queue("jobs", max_deliveries=3)
        q.put(b"new")
        msg = q.get(timeout=0.5)
        assert msg is not None, "the new message inherited the lost message's nack delay"
        assert (msg.value, msg.delivery_count) == (b"new", 1), \
            f"the new message inherited the lost message's deliveries: {msg}"
        msg.ack()
        assert s.topic("jobs.dlq").partitions[0].end_offset == 0
        assert_repaired(s, warn_log, f"queue {stale}")
