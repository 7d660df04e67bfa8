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

import errno
import json
import logging
import os
import random
import shutil
import struct
import time

import pytest

import logstore
from logstore.fs import FileSystem
from simfs import SimFS
from storefaults import (
    FaultFS,
    batches,
    cut_log,
    flip_byte,
    kill_self,
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
