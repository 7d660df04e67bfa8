"""Issue 21 (1-3): work-queue priorities, message TTL, overflow policies; the batch API."""

import os
import time

import pytest

import logstore

NO_CLEANER = {"retention_check_interval_s": 0, "fsync": "never"}


def values(msgs):
    return [m.value for m in msgs]


# ------------------------------------------------------------------ priorities
def test_higher_priority_first_fifo_within_a_level(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_priority=9)
        for i in range(5):
            q.put(b"low-%d" % i)
        q.put(b"high-0", priority=9)
        q.put(b"mid-0", priority=5)
        q.put(b"high-1", priority=9)
        q.put(b"mid-1", priority=5)
        got = [q.get(timeout=1) for _ in range(9)]
        assert values(got) == [b"high-0", b"high-1", b"mid-0", b"mid-1",
                               b"low-0", b"low-1", b"low-2", b"low-3", b"low-4"]
        assert q.get(timeout=0) is None


def test_a_late_high_priority_message_is_found_behind_a_long_backlog(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_priority=3)
        t = s.topic("jobs")
        t.publish_batch([b"bulk-%d" % i for i in range(5000)])  # (not via put: not in memory)
        q.put(b"urgent", priority=3)
        assert q.get(timeout=1).value == b"urgent"
        assert q.get(timeout=1).value == b"bulk-0"


def test_redeliveries_and_delays_keep_their_priority(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_priority=5, visibility_timeout=0.2)
        q.put(b"low")
        q.put(b"high", priority=5)
        m = q.get(timeout=1)
        assert m.value == b"high"
        m.nack(delay=0)
        assert q.get(timeout=1).value == b"high"  # nacked: back first, not behind "low"
        time.sleep(0.3)  # its visibility timeout passes: delivered again, first again
        m = q.get(timeout=1)
        assert m.value == b"high"
        m.ack()
        q.put(b"later-high", priority=5, delay=2.0)
        m = q.get(timeout=1)
        assert m.value == b"low"  # the delayed one is not ready yet
        m.ack()
        assert q.get(timeout=5).value == b"later-high"


def test_priorities_survive_a_reopen(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, **NO_CLEANER) as s:
        q = s.queue("jobs", max_priority=2)
        q.put(b"a")
        q.put(b"b", priority=2)
        q.put(b"c", priority=1)
    with logstore.Store.open(root, **NO_CLEANER) as s:
        q = s.queue("jobs", max_priority=2)
        assert values([q.get(timeout=1) for _ in range(3)]) == [b"b", b"c", b"a"]


def test_bad_priority_is_refused_and_nothing_is_stored(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        plain = s.queue("plain")
        with pytest.raises(ValueError, match="max_priority"):
            plain.put(b"x", priority=1)
        q = s.queue("jobs", max_priority=3)
        for bad in (4, -1, 1.5, True, "2"):
            with pytest.raises(ValueError):
                q.put(b"x", priority=bad)
        assert q.stats()["total"] == 0 and plain.stats()["total"] == 0
        with pytest.raises(logstore.ConfigError):
            s.queue("other", max_priority=0)


# ------------------------------------------------------------------ TTL
def test_expired_messages_are_dead_lettered_never_delivered(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", message_ttl=0.2)
        q.put(b"old")
        q.put(b"keeps", ttl=30)
        time.sleep(0.3)
        q.put(b"fresh")
        got = [q.get(timeout=1), q.get(timeout=1)]
        assert sorted(values(got)) == [b"fresh", b"keeps"]
        assert q.get(timeout=0.1) is None
        st = q.stats()
        assert st["expired"] == 1 and st["dead_lettered"] == 1
        [dead] = list(s.topic("jobs.dlq").partitions[0].replay())
        assert dead.value == b"old"
        assert dead.headers["x-dead-letter-reason"] == b"expired"


def test_expiry_counts_survive_a_reopen_and_bad_ttl_is_refused(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, **NO_CLEANER) as s:
        q = s.queue("jobs")
        q.put(b"short", ttl=0.05)
        time.sleep(0.1)
        assert q.get(timeout=0.1) is None
        for bad in (0, -1, "1", True):
            with pytest.raises(ValueError):
                q.put(b"x", ttl=bad)
        with pytest.raises(logstore.ConfigError):
            s.queue("other", message_ttl=0)
        q.checkpoint()
    with logstore.Store.open(root, **NO_CLEANER) as s:
        st = s.queue("jobs").stats()
        assert st["expired"] == 1 and st["total"] == 0


# ------------------------------------------------------------------ overflow
def test_drop_newest_refuses_and_counts(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_depth=2, overflow="drop_newest")
        assert q.put(b"1") and q.put(b"2")
        assert q.put(b"3") is False
        st = q.stats()
        assert st["refused"] == 1 and st["total"] == 2
        q.get(timeout=1).ack()
        assert q.put(b"4")
        assert sorted(values([q.get(timeout=1), q.get(timeout=1)])) == [b"2", b"4"]


def test_drop_oldest_dead_letters_the_oldest_waiting(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_depth=3, overflow="drop_oldest")
        for v in (b"a", b"b", b"c"):
            q.put(v)
        held = q.get(timeout=1)  # "a" is in flight: not dropped
        assert held.value == b"a"
        q.put(b"d")  # drops "b", the oldest not in flight
        st = q.stats()
        assert st["overflow"] == 1 and st["total"] == 3
        [dead] = list(s.topic("jobs.dlq").partitions[0].replay())
        assert dead.value == b"b" and dead.headers["x-dead-letter-reason"] == b"overflow"
        held.ack()
        assert values([q.get(timeout=1), q.get(timeout=1)]) == [b"c", b"d"]


def test_drop_oldest_with_everything_in_flight_raises(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", max_depth=1, overflow="drop_oldest")
        q.put(b"a")
        q.get(timeout=1)
        with pytest.raises(logstore.QueueFullError, match="in flight"):
            q.put(b"b")
        with pytest.raises(logstore.ConfigError):
            s.queue("x", overflow="drop_everything")


# ------------------------------------------------------------------ batch API
def test_get_many_ack_many(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs", partitions=2)
        for i in range(250):
            q.put(b"%d" % i)
        seen = []
        while True:
            batch = q.get_many(100, timeout=0.1)
            if not batch:
                break
            assert len(batch) <= 100
            q.ack_many(batch)
            seen += [int(m.value) for m in batch]
        assert sorted(seen) == list(range(250))
        assert q.stats()["total"] == 0
        with pytest.raises(ValueError):
            q.get_many(0)


def test_ack_many_is_all_or_nothing(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), **NO_CLEANER) as s:
        q = s.queue("jobs")
        for i in range(3):
            q.put(b"%d" % i)
        batch = q.get_many(3)
        batch[0].ack()
        with pytest.raises(logstore.AckError, match="already done"):
            q.ack_many(batch)
        assert q.stats()["in_flight"] == 2  # the other two are still held, unacked
        with pytest.raises(logstore.AckError, match="twice"):
            q.ack_many([batch[1], batch[1]])
        q.ack_many(batch[1:])
        assert q.stats()["total"] == 0


def test_work_queue_events_of_an_unknown_kind_are_refused(tmp_path):
    """A record of the queue's event log that is no known event is damage, never skipped."""
    root = str(tmp_path / "s")
    with logstore.Store.open(root, **NO_CLEANER) as s:
        s.queue("jobs").put(b"x")
    with logstore.Log.open(os.path.join(root, "internal", "queues", "jobs")) as log:
        log.append(b"Z" + bytes(24))  # (an event record is 25 bytes)
    with pytest.raises(logstore.CorruptLogError, match="unknown queue event"):
        with logstore.Store.open(root, **NO_CLEANER) as s:
            s.queue("jobs")
