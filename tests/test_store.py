"""Store, topics, committed offsets, consumer groups and pub/sub."""

import os
import subprocess
import sys
import time

import pytest

import logstore
from logstore import (
    ConfigError,
    LogClosedError,
    LogLockedError,
    NotALogError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    UnknownTopicError,
)
from logstore.views.names import partition_for_key


@pytest.fixture
def store(tmp_path):
    s = logstore.Store.open(str(tmp_path / "store"), fsync="never")
    yield s
    s.close()


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\0b", "x" * 201, ".hidden", "__internal",
                                 "-dash", "a..b", "sp ace"])
def test_topic_names_are_validated(store, bad):
    with pytest.raises(ConfigError):
        store.topic(bad)
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        store.topic(bad)
    assert os.listdir(os.path.join(store.root, "topics")) == []  # nothing created
    assert sorted(os.listdir(store.root)) == [".lock", "internal", "store.meta", "topics"]


def test_partition_count_fixed(store):
    store.topic("t", partitions=4)
    with pytest.raises(ConfigError):
        store.topic("t", partitions=5)
    assert store.topic("t").partition_count == 4
    with pytest.raises(ConfigError):
        store.topic("u", partitions=0)


def test_keyed_messages_keep_order_per_partition(store):
    t = store.topic("orders", partitions=4)
    placed = {}
    for i in range(200):
        key = b"user-%d" % (i % 10)
        p, off = t.publish(b"%d" % i, key=key)
        assert p == partition_for_key(key, 4)
        placed.setdefault(key, set()).add(p)
    assert all(len(ps) == 1 for ps in placed.values())
    # unkeyed messages spread round-robin
    parts = [t.publish(b"x")[0] for _ in range(8)]
    assert sorted(set(parts)) == [0, 1, 2, 3]


def test_partitioner_is_stable_across_processes():
    code = ("import sys; sys.path.insert(0, %r); from logstore.views.names import partition_for_key;"
            "print([partition_for_key(b'key-%%d' %% i, 7) for i in range(50)])"
            % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.check_output([sys.executable, "-c", code], env=env))
    assert len(outs) == 1
    assert eval(outs.pop()) == [partition_for_key(b"key-%d" % i, 7) for i in range(50)]


def test_idempotent_publish_survives_reopen(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never") as s:
        t = s.topic("t", partitions=3)
        first = t.publish(b"v", msg_id="abc")
        assert t.publish(b"v-again", msg_id="abc") == first
        other = t.publish(b"w", msg_id="def")
        assert other != first
    with logstore.Store.open(root, fsync="never") as s:
        t = s.topic("t")
        assert t.publish(b"v3", msg_id="abc") == first
        assert sum(t.end_offsets().values()) == 2
    with logstore.Store.open(root, fsync="never", dedup_window_s=0) as s:
        assert s.topic("t").publish(b"v4", msg_id="abc") != first  # window 0: no dedup


def test_consumer_group_commit_and_resume(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root) as s:
        t = s.topic("ev", partitions=2)
        for i in range(10):
            t.publish(b"%d" % i, key=b"k%d" % (i % 3))
        g = s.consumer("g1", "ev")
        recs = g.poll(4)
        assert len(recs) == 4 and all(r.partition in (0, 1) for r in recs)
        g.commit()
        committed = g.committed()
        assert sum(committed.values()) == 4
        rest = g.poll(100)
        assert len(rest) == 6  # not committed
    with logstore.Store.open(root) as s:
        g = s.consumer("g1", "ev")
        again = g.poll(100)
        assert len(again) == 6  # resumes from the last commit: at-least-once
        assert {(r.partition, r.offset) for r in again} == {(r.partition, r.offset) for r in rest}
        other = s.consumer("g2", "ev")  # another group is independent
        assert len(other.poll(100)) == 10
        late = s.consumer("g3", "ev", start="latest")
        assert late.poll(100) == []


def test_group_members_split_partitions(store):
    t = store.topic("t", partitions=4)
    for i in range(40):
        t.publish(b"%d" % i, key=b"%d" % i)
    a = store.consumer("g", "t")
    b = store.consumer("g", "t")
    assert sorted(a.assignment() + b.assignment()) == [0, 1, 2, 3]
    assert not set(a.assignment()) & set(b.assignment())
    got = a.poll(100) + b.poll(100)
    assert sorted(r.value for r in got) == sorted(b"%d" % i for i in range(40))
    b.close()
    assert a.assignment() == [0, 1, 2, 3]


def test_seek_seek_to_time_and_lag(store):
    t = store.topic("t")
    for i in range(10):
        t.publish(b"%d" % i, timestamp_ms=1000 + i * 10)
    g = store.consumer("g", "t")
    assert g.lag() == {0: 10}
    g.poll(3)
    assert g.lag() == {0: 7}
    g.seek(0, 8)
    assert [r.value for r in g.poll(10)] == [b"8", b"9"]
    g.seek_to_time(1045)
    assert g.poll(1)[0].offset == 5
    with pytest.raises(OffsetOutOfRangeError):
        g.seek(0, 11)
    with pytest.raises(UnknownTopicError):
        g.seek(3, 0)


def test_commit_errors(store):
    t = store.topic("t", partitions=2)
    t.publish(b"x", partition=0)
    g = store.consumer("g", "t")
    with pytest.raises(OffsetOutOfRangeError):
        g.commit({0: 5})
    with pytest.raises(UnknownTopicError):
        g.commit({7: 0})
    with pytest.raises(ConfigError):
        store.consumer("__reserved", "t")
    g.commit({0: 1})
    assert g.committed()[0] == 1


def test_poll_timeout_wakes_on_publish(store):
    import threading

    t = store.topic("t")
    g = store.consumer("g", "t")
    assert g.poll(timeout=0.05) == []
    threading.Timer(0.1, lambda: t.publish(b"late")).start()
    start = time.monotonic()
    got = g.poll(timeout=5)
    assert [r.value for r in got] == [b"late"] and time.monotonic() - start < 4


def test_pubsub_every_subscription_gets_every_message(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never") as s:
        t = s.topic("news", partitions=2)
        t.publish(b"before")
        subs = [s.subscribe("news", f"sub{i}") for i in range(4)]
        early = s.subscribe("news", "early", start="earliest")
        seen = []
        remove = s.on("news", seen.append)
        for i in range(20):
            t.publish(b"m%d" % i)
        remove()
        t.publish(b"after-callback-removed")
        for sub in subs:
            vals = sorted(r.value for r in sub.poll(100))
            assert vals == sorted([b"m%d" % i for i in range(20)] + [b"after-callback-removed"])
        subs[0].commit()
        assert len(early.poll(100)) == 22
        assert [r.value for r in seen] == [b"m%d" % i for i in range(20)]
        assert set(s.subscriptions("news")) == {"sub0", "sub1", "sub2", "sub3", "early"}
        s.unsubscribe("news", "sub1")
        assert "sub1" not in s.subscriptions("news")
    with logstore.Store.open(root, fsync="never") as s:
        t = s.topic("news")
        t.publish(b"new")
        assert [r.value for r in s.subscribe("news", "sub0").poll(10)] == [b"new"]
        assert len(s.subscribe("news", "sub2").poll(100)) == 22  # never committed
        assert [r.value for r in s.subscribe("news", "sub1").poll(10)] == []  # re-created: latest


def test_store_errors(tmp_path):
    root = str(tmp_path / "s")
    s = logstore.Store.open(root)
    with pytest.raises(LogLockedError):
        logstore.Store.open(root)
    ro = logstore.Store.open(root, readonly=True)
    s.topic("t").publish(b"x")
    assert ro.get_topic("t").partitions[0].get(0).value == b"x"
    with pytest.raises(ReadOnlyError):
        ro.topic("t").publish(b"y")
    with pytest.raises(UnknownTopicError):
        ro.get_topic("nope")
    ro.close()
    s.close()
    with pytest.raises(LogClosedError):
        s.topic("t").publish(b"z")
    with pytest.raises(LogClosedError):
        s.topic("t")
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(NotALogError):
        logstore.Store.open(str(other))
    assert os.listdir(other) == ["file"]


def test_publish_batch_places_like_publish_and_returns_positions_in_order(store):
    t = store.topic("orders", partitions=4)
    seen = []
    store.on("orders", seen.append)
    keys = [b"user-%d" % (i % 7) if i % 3 else None for i in range(60)]
    values = [b"v%d" % i for i in range(60)]
    hdrs = [{"i": b"%d" % i} if i % 2 else None for i in range(60)]
    out = t.publish_batch(values, keys=keys, headers=hdrs)
    assert len(out) == 60
    unkeyed_parts = {out[i][0] for i in range(60) if keys[i] is None}
    assert len(unkeyed_parts) == 1  # one call's unkeyed messages share one partition
    for i, (p, off) in enumerate(out):
        if keys[i] is not None:
            assert p == partition_for_key(keys[i], 4)
        rec = t.partitions[p].get(off)
        assert (rec.value, rec.key, rec.headers) == (values[i], keys[i], hdrs[i] or {})
    # per-key order: offsets increase in input order within each partition
    for p in range(4):
        offs = [off for q, off in out if q == p]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    assert sorted((r.partition, r.offset) for r in seen) == sorted(out)
    # a consumer reads them all
    g = store.consumer("g", "orders")
    got = []
    while True:
        batch = g.poll(100)
        if not batch:
            break
        got.extend(batch)
    assert sorted(r.value for r in got) == sorted(values)
    assert t.publish_batch([]) == []


def test_publish_batch_bad_input_writes_nothing(tmp_path):
    s = logstore.Store.open(str(tmp_path / "s"), fsync="never")
    try:
        t = s.topic("t", partitions=3)
        before = t.end_offsets()
        with pytest.raises(TypeError):
            t.publish_batch([b"ok", "not bytes"], keys=[b"a", b"b"])
        with pytest.raises(TypeError):
            t.publish_batch(b"a single bytes object")
        with pytest.raises(ValueError):
            t.publish_batch([b"a", b"b"], keys=[b"k"])
        with pytest.raises(TypeError):
            t.publish_batch([b"a", b"b"], headers=[None, {"h": "str value"}])
        assert t.end_offsets() == before
    finally:
        s.close()
    c = logstore.Store.open(str(tmp_path / "c"), fsync="never", cleanup_policy="compact")
    try:
        t = c.topic("kv", partitions=2)
        with pytest.raises(logstore.MissingKeyError):
            t.publish_batch([b"1", b"2"], keys=[b"a", None])
        assert t.end_offsets() == {0: 0, 1: 0}
        assert len(t.publish_batch([b"1", b"2"], keys=[b"a", b"b"])) == 2
    finally:
        c.close()
    ro = logstore.Store.open(str(tmp_path / "s"), readonly=True)
    try:
        with pytest.raises(ReadOnlyError):
            ro.topic("t").publish_batch([b"x"])
    finally:
        ro.close()


def test_seek_to_beginning_end_and_start_offsets(tmp_path):
    s = logstore.Store.open(str(tmp_path / "s"), fsync="never", segment_bytes=1024,
                            retention_check_interval_s=0)
    try:
        t = s.topic("t", partitions=2)
        for j in range(40):  # many small batches: several segments per partition
            t.publish_batch([b"x%03d" % i * 20 for i in range(5)],
                            keys=[b"k%d" % i for i in range(5)])
        for log in t.partitions:
            log.enforce_retention(keep_from=log.end_offset // 2)  # drop some old segments
        starts, ends = t.start_offsets(), t.end_offsets()
        assert all(starts[p] > 0 for p in starts) and all(starts[p] < ends[p] for p in starts)
        assert starts == {p: log.start_offset for p, log in enumerate(t.partitions)}
        g = s.consumer("g", "t")
        g.seek_to_end()
        assert g.poll(1000) == []
        assert {p: g.position(p) for p in g.assignment()} == ends
        g.seek_to_beginning()
        assert {p: g.position(p) for p in g.assignment()} == starts
        got = []
        while True:
            recs = g.poll(1000)
            if not recs:
                break
            got += recs
        assert len(got) == sum(ends[p] - starts[p] for p in ends)
        g.close()
    finally:
        s.close()
