"""logstore.processing: the model test (random pipelines against a plain-Python reference,
with restarts), windows, late records, state, joins, rebalancing between members (threads,
processors, processes), stop/SIGTERM, describe, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import processing_model as M  # noqa: E402

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _publish(topic, records, partition=0):
    """records: (key, value, ts); appended to ``partition`` as one batch."""
    topic.partitions[partition].append_batch(
        [v for _k, v, _t in records], keys=[k for k, _v, _t in records],
        timestamps_ms=[t for _k, _v, t in records])


def _read(store, name, loads=json.loads):
    return [[(r.key, None if r.value is None else loads(r.value), r.timestamp_ms)
             for r in log.replay()]
            for log in store.topic(name).partitions]


# ------------------------------------------------------------------------------ model
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(rnd=st.randoms(use_true_random=False), chunks=st.integers(1, 3),
       batch=st.sampled_from([5, 64, 2000]), threads=st.sampled_from([1, 1, 2]))
def test_random_pipelines_equal_the_reference(tmp_path_factory, rnd, chunks, batch, threads):
    spec = M.random_spec(rnd)
    inputs = M.make_input(rnd, spec["partitions"], rnd.randrange(0, 300))
    root = str(tmp_path_factory.mktemp("model"))
    cuts = sorted(rnd.randrange(0, 301) for _ in range(chunks - 1)) + [300]
    done = 0
    with logstore.Store.open(root, fsync="never") as store:
        for cut in cuts:
            # A new processor object for every chunk: state and positions come back from the
            # changelogs (a clean restart).
            M.publish(store, [recs[:cut] for recs in inputs], rnd, start=done)
            done = cut
            app = M.build(store, spec, batch_records=batch)
            app.run(until_caught_up=True, threads=threads)
        M.check(store, spec, inputs)


# ------------------------------------------------------------------------------ windows
def test_tumbling_final_grace_late_side_topic_and_metric(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("clicks", partitions=1)
        _publish(src, [(b"u1", b"1", 1_000), (b"u2", b"1", 5_000), (b"u1", b"1", 59_999),
                       (b"u1", b"1", 61_000),   # window 60s..120s; stream time 61 s
                       (b"u2", b"1", 30_000),   # window 0..60s still open (grace 5 s)
                       (b"u1", b"1", 66_000),   # stream time 66 s: 0..60s closes
                       (b"u2", b"1", 10_000),   # late: its window has closed
                       (b"u1", b"1", 200_000)])  # closes 60..120s; 180..240s stays open
        app = lp.Processor(store, "counts")
        res = app.stream("clicks").tumbling_window(60_000, grace_ms=5_000).count()
        res.final().to("counts", value=lp.JSON)
        res.late().to("late-clicks")
        stats = app.run(until_caught_up=True)
        assert _read(store, "counts") == [[
            (b"u1", {"start": 0, "end": 60_000, "value": 2}, 0),
            (b"u2", {"start": 0, "end": 60_000, "value": 2}, 0),
            (b"u1", {"start": 60_000, "end": 120_000, "value": 2}, 60_000)]]
        assert _read(store, "late-clicks", bytes) == [[(b"u2", b"1", 10_000)]]
        assert stats["late"] == 1
        assert lp.describe(store)[0]["late"] == 1
        assert lp.read_state(store, "counts", "tumbling-1") == {(b"u1", 180_000): 1}


def test_current_emits_every_update_and_agg_combines(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("orders", partitions=1)
        _publish(src, [(b"a", b'{"amount": 5}', 10), (b"a", b'{"amount": 7}', 20),
                       (b"b", b'{"amount": 1}', 30)])
        app = lp.Processor(store, "p")
        (app.stream("orders", value=lp.JSON).tumbling_window(1000)
         .agg(n=lp.Count(), total=lp.Sum(lambda o: o["amount"]),
              hi=lp.Max(lambda o: o["amount"]), avg=lp.Mean(lambda o: o["amount"]))
         .current().to("out", value=lp.JSON))
        app.run(until_caught_up=True)
        got = [(k, v["value"]) for k, v, _t in _read(store, "out")[0]]
        assert got == [(b"a", {"n": 1, "total": 5, "hi": 5, "avg": 5.0}),
                       (b"a", {"n": 2, "total": 12, "hi": 7, "avg": 6.0}),
                       (b"b", {"n": 1, "total": 1, "hi": 1, "avg": 1.0})]


def test_session_windows_merge_and_reduce_needs_merge(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("s", partitions=1)
        _publish(src, [(b"k", b"1", 100), (b"k", b"2", 300), (b"k", b"3", 200),
                       (b"k", b"4", 1000), (b"k", b"5", 1400),  # two sessions (gap 250)...
                       (b"k", b"6", 1200),  # ...bridged into one
                       (b"k", b"7", 5000)])
        app = lp.Processor(store, "sess")
        (app.stream("s").session_window(250, grace_ms=500)
         .reduce(lambda acc, v: acc + int(v), lambda v: int(v), merge=lambda a, b: a + b)
         .final().to("out", value=lp.JSON))
        app.run(until_caught_up=True)
        assert [(v["start"], v["end"], v["value"]) for _k, v, _t in _read(store, "out")[0]] \
            == [(100, 301, 6), (1000, 1401, 15)]
        app2 = lp.Processor(store, "bad")
        with pytest.raises(logstore.ConfigError, match="merge"):
            app2.stream("s").session_window(10).reduce(lambda a, v: a)


def test_timestamps_from_the_value_and_hopping(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("t", partitions=1)
        _publish(src, [(b"k", json.dumps({"at": at}).encode(), 0) for at in (5, 15, 25, 100)])
        app = lp.Processor(store, "hop")
        (app.stream("t", value=lp.JSON, timestamp=lambda v: v["at"])
         .hopping_window(20, 10).count().final().to("out", value=lp.JSON))
        app.run(until_caught_up=True)
        # 5 -> [0, 20); 15 -> [0, 20), [10, 30); 25 -> [10, 30), [20, 40); no window starts
        # before 0; at stream time 100 the windows up to [20, 40) have closed
        assert [(v["start"], v["value"]) for _k, v, _t in _read(store, "out")[0]] == [
            (0, 2), (10, 2), (20, 1)]


# ------------------------------------------------------------------------------ state
def test_keyed_state_ttl_dedup_and_metadata(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("msgs", partitions=2)
        recs = [(b"m1", b"a", 0), (b"m1", b"a", 50), (b"m2", b"b", 60), (b"m1", b"a", 200)]
        _publish(src, recs)
        app = lp.Processor(store, "dedup")
        seen = []

        def first(value, state):
            if state.exists("seen"):
                return False
            state.set("seen", True)
            return True

        (app.stream("msgs").filter(first, stateful=True, ttl_ms=100)
         .foreach(lambda v, k, t: seen.append((k, t)), metadata=True).to("unique"))
        app.run(until_caught_up=True)
        # m1 again after 200 ms: its entry expired (ttl 100 ms of stream time)
        assert sorted((t, k) for part in _read(store, "unique", bytes) for k, _v, t in part) \
            == [(0, b"m1"), (60, b"m2"), (200, b"m1")]
        assert seen == [(b"m1", 0), (b"m2", 60), (b"m1", 200)]
        assert lp.read_state(store, "dedup", "filter-1") == {b"m1": {"seen": True}}


def test_state_limit_is_loud(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        src = store.topic("e", partitions=1)
        _publish(src, [(b"k%d" % i, b"x", i) for i in range(5000)])
        app = lp.Processor(store, "big", max_state_bytes=10_000)
        app.stream("e").map(lambda v, s: s.set("v", v), stateful=True)
        with pytest.raises(lp.StateLimitError, match="max_state_bytes"):
            app.run(until_caught_up=True)


# ------------------------------------------------------------------------------ join, key_by
def test_stream_table_join_inner_left_and_key_by(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        users = store.topic("users", partitions=2)
        users.publish(b'{"name": "Ann"}', key=b"u1")
        users.publish(b'{"name": "Bob"}', key=b"u2")
        users.publish(b'{"name": "Bobby"}', key=b"u2")  # the latest value wins
        users.publish(b'{"name": "Cy"}', key=b"u3")
        users.publish(None, key=b"u3")  # a tombstone deletes
        orders = store.topic("orders", partitions=2)
        for i, u in enumerate(["u1", "u2", "u3", "u1"]):
            orders.publish(json.dumps({"id": i, "user": u}).encode(), key=b"o%d" % i)
        app = lp.Processor(store, "enrich")
        table = app.table("users", value=lp.JSON)
        s = app.stream("orders", value=lp.JSON)
        s.join(table, lambda o, u: {**o, "name": u["name"]}, on=lambda o: o["user"]) \
            .key_by(lambda o: o["user"]).to("enriched", value=lp.JSON)
        s.join(table, lambda o, u: u and u["name"], how="left", on=lambda o: o["user"]) \
            .to("names", value=lp.JSON)
        app.run(until_caught_up=True)
        got = sorted((k, v["id"], v["name"]) for part in _read(store, "enriched")
                     for k, v, _t in part)
        assert got == [(b"u1", 0, "Ann"), (b"u1", 3, "Ann"), (b"u2", 1, "Bobby")]
        names = sorted(v for part in _read(store, "names") for _k, v, _t in part
                       if v is not None)
        assert names == ["Ann", "Ann", "Bobby"]
        assert sum(len(p) for p in _read(store, "names")) == 4  # u3 -> null
        # keyed by user: each user's orders in one partition, as publish() would put them
        enriched = store.topic("enriched")
        for q, part in enumerate(_read(store, "enriched")):
            for k, _v, _t in part:
                assert enriched.partition_of(k) == q


# ------------------------------------------------------------------------------ running
def _count_app(store, name="counter", **options):
    app = lp.Processor(store, name, **options)

    def count(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return json.dumps([value.decode(), n]).encode()

    app.stream("events").map(count, stateful=True, name="counts").to("counted")
    return app


def _check_counted(store, n_keys, per_key):
    got = {}
    for part in _read(store, "counted"):
        for k, v, _t in part:
            got.setdefault(k, []).append(v[1])
    assert got == {b"user-%d" % i: list(range(1, per_key + 1)) for i in range(n_keys)}
    assert lp.read_state(store, "counter", "counts") == {
        b"user-%d" % i: {"n": per_key} for i in range(n_keys)}


def _publish_events(store, start, stop, n_keys=20, partitions=4):
    t = store.topic("events", partitions=partitions)
    t.publish_batch([b"%d" % i for i in range(start, stop)],
                    keys=[b"user-%d" % (i % n_keys) for i in range(start, stop)])


def test_two_processors_in_one_process_rebalance_and_restore_state(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 2000)
        a = _count_app(store, commit_interval_s=0.01)
        ta = threading.Thread(target=a.run, kwargs={"threads": 2})
        ta.start()
        _wait(lambda: a.stats()["records_in"] >= 2000)
        b = _count_app(store, commit_interval_s=0.01)
        tb = threading.Thread(target=b.run)
        tb.start()
        # the group now has three members: partitions move to b, restored from changelogs
        _wait(lambda: b.stats()["tasks"] and a.stats()["tasks"] and
              len(a.stats()["tasks"]) + len(b.stats()["tasks"]) == 4)
        assert any(t["restored_entries"] > 0 for t in b.stats()["tasks"])
        _publish_events(store, 2000, 4000)
        _wait(lambda: lp.describe(store)[0]["lag"] == 0)
        a.stop()
        ta.join()
        _publish_events(store, 4000, 6000)  # b takes a's partitions back
        _wait(lambda: lp.describe(store)[0]["lag"] == 0 and len(b.stats()["tasks"]) == 4)
        b.stop()
        tb.join()
        _check_counted(store, 20, 300)


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_empty_partitions_and_until_caught_up(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        t = store.topic("events", partitions=3)
        t.publish(b"1", key=b"k0", partition=1)
        app = _count_app(store)
        stats = app.run(until_caught_up=True, threads=2)
        assert stats["records_in"] == 1 and stats["lag"] == 0
        assert len(stats["tasks"]) == 3
        d = lp.describe(store)[0]
        assert [p["position"] for p in d["stages"][0]["partitions"]] == [0, 1, 0]
        assert d["lag"] == 0 and d["records_out"] == 1


def test_sigterm_stops_cleanly_and_commits(tmp_path):
    root = str(tmp_path)
    with logstore.Store.open(root, fsync="never") as store:
        _publish_events(store, 0, 3000)
    script = (
        "import sys, logstore; sys.path.insert(0, %r); import test_processing as T\n"
        "store = logstore.Store.open(%r, fsync='never')\n"
        "app = T._count_app(store)\n"
        "print('RUN', flush=True)\n"
        "app.run()\n"
        "print('STOPPED', flush=True)\n"
        "store.close()\n" % (HERE, root))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "RUN"
    with logstore.Store.open(root, readonly=True) as ro:
        _wait(lambda: lp.describe(ro) and lp.describe(ro)[0]["lag"] == 0)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "STOPPED"
    assert proc.wait(timeout=30) == 0
    with logstore.Store.open(root, readonly=True) as ro:
        _check_counted(ro, 20, 150)


def test_two_processes_on_read_only_stores_split_partitions_and_restore_state(tmp_path):
    """Processes open the store read-only (a state-only pipeline needs no writable store): the
    second member takes half of the partitions, restoring their state from the changelogs
    the first wrote; the per-key counts stay exact."""
    root = str(tmp_path)
    store = logstore.Store.open(root, fsync="never")
    try:
        topic = store.topic("events", partitions=4)
        topic.publish_batch([b"%d" % i for i in range(4000)],
                            keys=[b"k%d" % (i % 40) for i in range(4000)])
        member = [sys.executable, os.path.join(HERE, "processing_member.py"), root]
        a = subprocess.Popen(member, stdout=subprocess.PIPE, text=True)
        lines_a = _Lines(a)
        _wait(lambda: lp.describe(store) and lp.describe(store)[0]["lag"] == 0)
        b = subprocess.Popen(member, stdout=subprocess.PIPE, text=True)
        lines_b = _Lines(b)
        _wait(lambda: lines_b.held() and lines_a.held() and
              sorted(lines_a.held() + lines_b.held()) == [0, 1, 2, 3])
        topic.publish_batch([b"%d" % i for i in range(4000, 8000)],
                            keys=[b"k%d" % (i % 40) for i in range(4000, 8000)])
        _wait(lambda: lp.describe(store)[0]["lag"] == 0)
        for p in (a, b):
            p.send_signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0 and b.wait(timeout=30) == 0
        stats_b = lines_b.final()
        assert sum(t["restored_entries"] for t in stats_b["tasks"]) > 0
        assert lines_a.final()["records_in"] + stats_b["records_in"] >= 8000
        state = lp.read_state(store, "counter", "counts")
        expect = {}
        for i in range(8000):
            d = expect.setdefault(b"k%d" % (i % 40), {"n": 0, "sum": 0})
            d["n"] += 1
            d["sum"] += i
        assert state == expect
    finally:
        store.close()


def test_two_writing_processes_split_partitions_with_outputs_exactly_once(tmp_path):
    """Two processes on stores opened with shared=True run a processor that writes an output
    topic: the second takes half of the partitions mid-stream (state restored from the
    changelogs); every input record is in the output exactly once and the counts are exact."""
    root = str(tmp_path)
    store = logstore.Store.open(root, shared=True, fsync="never")
    try:
        topic = store.topic("events", partitions=4)
        store.topic("copy", partitions=4)
        topic.publish_batch([b"%d" % i for i in range(4000)],
                            keys=[b"k%d" % (i % 40) for i in range(4000)])
        member = [sys.executable, os.path.join(HERE, "processing_member.py"), root, "shared"]
        a = subprocess.Popen(member, stdout=subprocess.PIPE, text=True)
        lines_a = _Lines(a)
        _wait(lambda: lp.describe(store) and lp.describe(store)[0]["lag"] == 0)
        b = subprocess.Popen(member, stdout=subprocess.PIPE, text=True)
        lines_b = _Lines(b)
        _wait(lambda: lines_b.held() and lines_a.held() and
              sorted(lines_a.held() + lines_b.held()) == [0, 1, 2, 3])
        for start in range(4000, 8000, 500):  # published while both run
            topic.publish_batch([b"%d" % i for i in range(start, start + 500)],
                                keys=[b"k%d" % (i % 40) for i in range(start, start + 500)])
        _wait(lambda: lp.describe(store)[0]["lag"] == 0)
        for p in (a, b):
            p.send_signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0 and b.wait(timeout=30) == 0
        assert sum(t["restored_entries"] for t in lines_b.final()["tasks"]) > 0
        out = sorted(int(r.value) for log in store.topic("copy").partitions
                     for r in log.replay())
        assert out == list(range(8000))  # each exactly once: none lost, none doubled
        state = lp.read_state(store, "counter", "counts")
        expect = {}
        for i in range(8000):
            d = expect.setdefault(b"k%d" % (i % 40), {"n": 0, "sum": 0})
            d["n"] += 1
            d["sum"] += i
        assert state == expect
    finally:
        store.close()


class _Lines:
    """Reads a member process's stdout in a thread."""

    def __init__(self, proc):
        self.lines = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line.strip())

    def held(self):
        ts = [json.loads(ln[2:]) for ln in self.lines if ln.startswith("T ")]
        return ts[-1] if ts else []

    def final(self):
        self._t.join(10)
        return json.loads(next(ln[2:] for ln in self.lines if ln.startswith("S ")))


def test_error_in_a_function_releases_without_commit_and_rerun_is_exact(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 2000)
        boom = {"on": True}

        def maybe_fail(value):
            if boom["on"] and value == b"1234":
                raise RuntimeError("boom")
            return value

        def app_with(fail):
            app = lp.Processor(store, "counter", batch_records=50, commit_interval_s=0)

            def count(value, state):
                n = state.get("n", 0) + 1
                state.set("n", n)
                return json.dumps([value.decode(), n]).encode()

            app.stream("events").map(maybe_fail).map(count, stateful=True,
                                                      name="counts").to("counted")
            return app

        with pytest.raises(RuntimeError, match="boom"):
            app_with(True).run(until_caught_up=True)
        boom["on"] = False
        app_with(False).run(until_caught_up=True)
        _check_counted(store, 20, 100)


def test_topology_change_is_refused(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 10)
        _count_app(store).run(until_caught_up=True)
        app = lp.Processor(store, "counter")
        app.stream("events").tumbling_window(10).count().final().to("x")
        with pytest.raises(logstore.ConfigError, match="another topology"):
            app.run(until_caught_up=True)
        # a grace period or a TTL may change: the stored state does not depend on them
        w = lp.Processor(store, "win")
        w.stream("events").tumbling_window(10, grace_ms=0).count().final().to("y")
        w.run(until_caught_up=True)
        w = lp.Processor(store, "win")
        w.stream("events").tumbling_window(10, grace_ms=500).count().final().to("y")
        w.run(until_caught_up=True)
        w = lp.Processor(store, "win")
        w.stream("events").tumbling_window(20).count().final().to("y")
        with pytest.raises(logstore.ConfigError, match="another topology"):
            w.run(until_caught_up=True)


def test_at_least_once_mode_writes_no_markers(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 500)
        app = _count_app(store, guarantee="at_least_once")
        app.run(until_caught_up=True)
        _check_counted(store, 20, 25)
        for log in store.topic("counted").partitions:
            assert all(not r.headers for r in log.replay())


def test_bad_arguments(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        store.topic("events")
        with pytest.raises(logstore.ConfigError):
            lp.Processor(store, "../x")
        with pytest.raises(logstore.ConfigError):
            lp.Processor(store, "p", guarantee="maybe")
        app = lp.Processor(store, "p")
        with pytest.raises(TypeError):
            app.stream("events").map(42)
        with pytest.raises(logstore.ConfigError):
            app.stream("events").hopping_window(10, 20)
        with pytest.raises(TypeError, match="serializer"):
            app.stream("events").to("x", value=str)
        app2 = lp.Processor(store, "q")
        app2.stream("nope").to("x")
        with pytest.raises(logstore.UnknownTopicError):
            app2.run(until_caught_up=True)
        app3 = lp.Processor(store, "r")
        app3.stream("events").key_by(lambda v: 3).to("x")
        store.topic("events").publish(b"v")
        with pytest.raises(TypeError, match="key_by must return"):
            app3.run(until_caught_up=True)
        app4 = lp.Processor(store, "s")
        with pytest.raises(logstore.ConfigError, match="no streams"):
            app4.run(until_caught_up=True)


def test_read_only_store_with_outputs_is_refused(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 10)
    with logstore.Store.open(tmp_path, readonly=True) as ro:
        with pytest.raises(logstore.ReadOnlyError, match="shared=True"):
            _count_app(ro).run(until_caught_up=True)


def test_two_streams_of_one_topic_are_branches_of_one_reading(tmp_path):
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 400)
        app = lp.Processor(store, "branches")
        app.stream("events").filter(lambda v: int(v) % 2 == 0).to("even", partitions=1)
        app.stream("events").filter(lambda v: int(v) % 2 == 1).to("odd", partitions=1)
        with pytest.raises(logstore.ConfigError, match="other options"):
            app.stream("events", value=lp.JSON)
        stats = app.run(until_caught_up=True, threads=2)
        assert stats["records_in"] == 400  # read once, not once per stream
        even = sorted(int(v) for _k, v, _t in _read(store, "even", bytes)[0])
        odd = sorted(int(v) for _k, v, _t in _read(store, "odd", bytes)[0])
        assert even == list(range(0, 400, 2)) and odd == list(range(1, 400, 2))
        assert len(lp.describe(store)[0]["stages"]) == 1


def test_logstore_stats_shows_each_processors_lag_late_and_state(tmp_path):
    """``logstore stats`` (text and --json) lists every processor with its input lag, late
    records and state size, per stage and input partition; a damaged processor metadata file
    is reported as a problem (exit 1), not dropped."""
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 100)
        _count_app(store).run(until_caught_up=True)
        _publish_events(store, 100, 130)  # 30 records the processor has not seen: its lag

    def stats(*args):
        return subprocess.run([sys.executable, "-m", "logstore.cli", "stats", str(tmp_path),
                               *args], capture_output=True, text=True, timeout=120)

    out = stats("--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (proc,) = doc["processors"]
    assert proc["processor"] == "counter" and proc["lag"] == 30 and proc["late"] == 0
    assert proc["state_entries"] == 20 and proc["state_bytes"] > 0
    assert proc["records_in"] == 100
    rows = proc["stages"][0]["partitions"]
    assert sum(r["lag"] for r in rows) == 30 and len(rows) == 4
    text = stats()
    assert text.returncode == 0, text.stderr
    assert "stream processors:" in text.stdout and "counter" in text.stdout
    line = next(ln for ln in text.stdout.splitlines() if ln.strip().startswith("counter"))
    assert line.split()[1:3] == ["30", "0"]  # lag, late
    meta = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
                if f == "processor.json")
    with open(meta, "wb") as f:
        f.write(b"{not json")
    bad = stats("--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["processors"][0].get("error") and doc["problems"]


def test_verify_checks_the_processors_changelogs(tmp_path):
    """``logstore verify STORE`` reads every stream processor's task changelogs like the other
    internal logs: listed when intact, a flipped byte is reported (exit 1) naming the log."""
    with logstore.Store.open(tmp_path, fsync="never") as store:
        _publish_events(store, 0, 200)
        _count_app(store).run(until_caught_up=True)

    def verify():
        return subprocess.run([sys.executable, "-m", "logstore.cli", "verify", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for p in range(4):
        assert f"internal/processing/counter/stage-0/{p}:" in ok.stdout
    seg = os.path.join(tmp_path, "internal", "processing", "counter", "stage-0", "2",
                       "00000000000000000000.log")
    with open(seg, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = verify()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "internal/processing/counter/stage-0/2" in bad.stdout and "CRC32C" in bad.stdout
