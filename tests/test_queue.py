"""Work-queue view: delivery, ack, visibility timeout, nack/backoff, dead letters, crash safety."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logstore
from logstore import AckError, ConfigError, LogClosedError, QueueFullError


@pytest.fixture
def store(tmp_path):
    s = logstore.Store.open(str(tmp_path / "store"), fsync="never")
    yield s
    s.close()


def drain(q, timeout=0.05):
    out = []
    while True:
        m = q.get(timeout=timeout)
        if m is None:
            return out
        out.append(m)


def test_put_get_ack_and_order(store):
    q = store.queue("jobs")
    ids = [q.put(b"job%d" % i, key=b"k") for i in range(5)]
    assert ids == ["0:%d" % i for i in range(5)]
    got = drain(q)
    assert [m.value for m in got] == [b"job%d" % i for i in range(5)]
    assert all(m.delivery_count == 1 for m in got)
    assert q.stats()["in_flight"] == 5 and q.stats()["depth"] == 0
    for m in got:
        q.ack(m)
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["total"]) == (0, 0, 0)
    with pytest.raises(AckError):
        q.ack(got[0])  # already acked


def test_visibility_timeout_redelivers_and_stale_ack_fails(store):
    q = store.queue("jobs", visibility_timeout=0.1)
    q.put(b"x")
    m1 = q.get(timeout=1)
    assert q.get(timeout=0.02) is None  # invisible while in flight
    time.sleep(0.15)
    m2 = q.get(timeout=1)
    assert m2.id == m1.id and m2.delivery_count == 2
    with pytest.raises(AckError, match="expired"):
        q.ack(m1)
    q.extend(m2, 5)
    time.sleep(0.15)
    assert q.get(timeout=0.05) is None  # extended: still invisible
    q.ack(m2)
    assert q.stats()["total"] == 0


def test_max_deliveries_dead_letter_and_redrive(store):
    q = store.queue("jobs", visibility_timeout=0.05, max_deliveries=3)
    q.put(b"poison", headers={"h": b"1"})
    q.put(b"fine")
    deliveries = 0
    while True:
        m = q.get(timeout=0.3)
        if m is None:
            break
        if m.value == b"fine":
            m.ack()
        else:
            deliveries += 1  # never acked
    assert deliveries == 3
    s = q.stats()
    assert s["dead_lettered"] == 1 and s["total"] == 0
    dlq = store.topic("jobs.dlq").partitions[0]
    rec = dlq.get(0)
    assert rec.value == b"poison" and rec.headers["h"] == b"1"
    assert rec.headers["x-dead-letter-reason"] == b"max_deliveries"
    assert rec.headers["x-delivery-count"] == b"3"
    assert q.redrive() == 1
    assert q.stats()["dead_lettered"] == 0
    m = q.get(timeout=1)
    assert m.value == b"poison" and m.delivery_count == 1 and "x-dead-letter-reason" not in m.headers
    m.ack()


def test_nack_with_delay_and_backoff(store):
    q = store.queue("jobs", backoff=(0.05, 0.1), max_deliveries=10)
    q.put(b"x")
    m = q.get(timeout=1)
    q.nack(m, delay=0.2)
    assert q.stats()["delayed"] == 1
    assert q.get(timeout=0.05) is None
    m = q.get(timeout=2)
    assert m.delivery_count == 2
    start = time.monotonic()
    q.nack(m)  # default backoff: up to 0.05 * 2 s, jittered
    m = q.get(timeout=2)
    assert m.delivery_count == 3 and time.monotonic() - start < 1.5
    m.ack()


def test_delayed_put(store):
    q = store.queue("jobs")
    q.put(b"later", delay=0.2)
    q.put(b"now")
    assert q.get(timeout=1).value == b"now"
    assert q.stats()["delayed"] == 1
    t = time.monotonic()
    m = q.get(timeout=2)
    assert m.value == b"later" and time.monotonic() - t >= 0.1


def test_max_depth_reject_and_block(store):
    q = store.queue("small", max_depth=2)
    q.put(b"1")
    q.put(b"2")
    with pytest.raises(QueueFullError):
        q.put(b"3")
    qb = store.queue("blocking", max_depth=1, overflow="block")
    qb.put(b"1")
    with pytest.raises(QueueFullError):
        qb.put(b"2", timeout=0.05)
    threading.Timer(0.1, lambda: qb.get(timeout=1).ack()).start()
    qb.put(b"2", timeout=5)  # unblocked by the ack
    assert qb.get(timeout=1).value == b"2"


def test_bad_arguments(store):
    with pytest.raises(ConfigError):
        store.queue("q", visibility_timeout=0)
    with pytest.raises(ConfigError):
        store.queue("q2", overflow="drop")
    with pytest.raises(ConfigError):
        store.queue("../q")
    q = store.queue("q3")
    with pytest.raises(ValueError):
        q.put(b"x", delay=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(TypeError):
        q.put("text")
    with pytest.raises(AckError):
        q.ack("0:0")
    other = store.queue("q4")
    other.put(b"y")
    m = other.get(timeout=1)
    with pytest.raises(AckError):
        q.ack(m)  # a message of another queue
    m.ack()


def test_closed_store_raises(tmp_path):
    s = logstore.Store.open(str(tmp_path / "s"), fsync="never")
    q = s.queue("q")
    q.put(b"x")
    s.close()
    with pytest.raises(LogClosedError):
        q.get(timeout=0)
    with pytest.raises(LogClosedError):
        q.put(b"y")


def test_ack_state_survives_reopen(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root) as s:
        q = s.queue("jobs")
        for i in range(6):
            q.put(b"%d" % i)
        got = drain(q)
        for m in got[:3]:
            m.ack()
        got[3].nack(delay=0)
        # got[4], got[5] stay in flight when the store closes
    with logstore.Store.open(root) as s:
        q = s.queue("jobs")
        again = drain(q, timeout=0.2)
        assert sorted(m.value for m in again) == [b"3", b"4", b"5"]
        counts = {m.value: m.delivery_count for m in again}
        assert counts[b"3"] >= 2  # delivery counts are durable
        for m in again:
            m.ack()
    with logstore.Store.open(root) as s:
        assert s.queue("jobs").get(timeout=0.1) is None


def test_queue_storage_is_the_topic_log(store):
    q = store.queue("jobs", partitions=2)
    for i in range(10):
        q.put(b"%d" % i, key=b"%d" % i)
    topic = store.topic("jobs")
    values = sorted(r.value for log in topic.partitions for r in log.replay())
    assert values == sorted(b"%d" % i for i in range(10))
    # and a consumer group on the same topic sees the very same records
    assert len(store.consumer("g", "jobs").poll(100)) == 10
    # the queue directory holds only small events, not message copies
    qdir = os.path.join(store.root, "internal", "queues", "jobs")
    assert sum(os.path.getsize(os.path.join(qdir, f)) for f in os.listdir(qdir)
               if f.endswith(".log")) == 0


def test_eight_threads_every_message_exactly_once(store):
    q = store.queue("work", visibility_timeout=60)
    n = 100_000
    producers = 2
    seen = []
    lock = threading.Lock()

    def produce(k):
        for i in range(k, n, producers):
            q.put(b"%d" % i)

    def consume():
        local = []
        while True:
            m = q.get(timeout=1.0)
            if m is None:
                break
            local.append(int(m.value))
            q.ack(m)
        with lock:
            seen.extend(local)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    threads += [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == n, f"{n - len(seen)} lost or {len(seen) - n} duplicated"
    assert sorted(seen) == list(range(n))
    assert q.stats()["total"] == 0


CONSUMER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import logstore
s = logstore.Store.open(sys.argv[1], fsync="always")
q = s.queue("jobs", visibility_timeout=30)
while True:
    m = q.get(timeout=5)
    if m is None:
        break
    print("acking", m.value.decode(), flush=True)
    q.ack(m)
    print("acked", m.value.decode(), flush=True)
"""


def test_sigkill_consumer_at_least_once_and_acks_durable(tmp_path):
    root = str(tmp_path / "s")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    n = 600
    with logstore.Store.open(root, fsync="always") as s:
        q = s.queue("jobs")
        for i in range(0, n, 50):
            for j in range(i, i + 50):
                q.put(b"%d" % j)
    acked = set()  # ack returned: must never be delivered again
    attempted = set()  # ack started: may or may not have happened before the kill
    rng = random.Random(5)

    def note(line):
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            (acked if parts[0] == "acked" else attempted).add(int(parts[1]))

    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CONSUMER, root, repo],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first = proc.stdout.readline()  # the consumer is up and working
        note(first)
        deadline = time.time() + rng.uniform(0.1, 0.6)
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            note(line)
        os.kill(proc.pid, signal.SIGKILL)
        # Read the rest through the same file object: communicate() would bypass lines that
        # readline() already buffered.
        for line in proc.stdout.read().splitlines():
            note(line)
        proc.wait()
    with logstore.Store.open(root, fsync="always") as s:
        q = s.queue("jobs")
        rest = [int(m.value) for m in drain(q, timeout=0.3)]
    assert acked, "the consumer never got to ack anything"
    assert not set(rest) & acked, "an acknowledged message was delivered again"
    assert set(rest) | attempted | acked == set(range(n)), "a message was lost"


class QueueModel:
    def __init__(self):
        self.pending = []  # values not done, in put order
        self.inflight = {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(["put", "get", "ack", "nack", "reopen"]), max_size=40))
def test_queue_matches_model(tmp_path_factory, ops):
    root = str(tmp_path_factory.mktemp("qm"))
    s = logstore.Store.open(root, fsync="never")
    q = s.queue("m", max_deliveries=100)
    pending = set()  # values put and not acked
    inflight = []
    counter = 0
    try:
        for op in ops:
            if op == "put":
                v = b"%d" % counter
                counter += 1
                q.put(v)
                pending.add(v)
            elif op == "get":
                m = q.get(timeout=0)
                ready = pending - {x.value for x in inflight}
                if ready:
                    assert m is not None and m.value in ready
                    assert m.value == min(ready, key=lambda v: int(v))  # oldest first
                    inflight.append(m)
                else:
                    assert m is None
            elif op in ("ack", "nack") and inflight:
                m = inflight.pop(0)
                if op == "ack":
                    q.ack(m)
                    pending.discard(m.value)
                else:
                    q.nack(m, delay=0)
            elif op == "reopen":
                s.close()
                s = logstore.Store.open(root, fsync="never")
                q = s.queue("m", max_deliveries=100)
                inflight = []  # everything in flight is ready again
            assert q.stats()["total"] == len(pending)
    finally:
        s.close()
