"""Power loss at every operation of the Store's views (logstore.testing.sweep over a whole store
tree: topics/<t>/<p>/, internal/queues/..., internal/groups/..., internal/offsets).

Each workload acknowledges what the application would promise its callers; each check reopens
the store after power-up and asserts that every promise holds (allowing the one operation that
was in flight when the power went).
"""

from __future__ import annotations

import os

from logstore import DurableQueue
from logstore.testing import sweep

ALWAYS = {"fsync": "always"}


def queue_workload(store, ack):
    q = store.queue("jobs", visibility_timeout=30, max_deliveries=3)
    for i in range(8):
        q.put(b"job%d" % i)
        ack(("put", b"job%d" % i))
    for _ in range(5):
        m = q.get(timeout=0)
        ack(("got", m.value))
        q.ack(m)
        ack(("acked", m.value))


def queue_check(store, acked):
    """Every put message is delivered again unless its ack was acknowledged (or in flight);
    no acknowledged ack is ever undone."""
    q = store.queue("jobs", visibility_timeout=30, max_deliveries=3)
    puts = [v for k, v in acked if k == "put"]
    done = {v for k, v in acked if k == "acked"}
    got = [v for k, v in acked if k == "got"]
    in_flight = set(got[-1:]) - done
    delivered = []
    while True:
        m = q.get(timeout=0)
        if m is None:
            break
        delivered.append(m.value)
        q.ack(m)
    assert not set(delivered) & done, f"acked messages delivered again: {delivered} {done}"
    lost = [p for p in puts if p not in done and p not in delivered and p not in in_flight]
    assert not lost, f"messages put and never acked are gone: {lost}"
    assert len(delivered) == len(set(delivered))


def test_work_queue_puts_and_acks_survive_power_loss():
    report = sweep(queue_workload, queue_check, kind="store", options=ALWAYS)
    assert report.ops > 150 and report.acks == 18


def subscription_workload(store, ack):
    t = store.topic("t")
    sub = store.subscribe("t", "audit", start="earliest")
    for i in range(5):
        t.publish(b"%d" % i)
    got = sub.poll(100)
    sub.commit()
    ack(("committed", len(got)))
    sub.close()
    store.unsubscribe("t", "audit")
    ack(("unsubscribed",))


def subscription_check(store, acked):
    subs = store.subscriptions("t") if "t" in store.topics() else []
    if ("unsubscribed",) in acked:
        assert "audit" not in subs, subs  # the removal (rename + directory fsync) held
    elif acked:
        # After the commit only the unsubscribe runs: cut short, it may have happened or not.
        if "audit" in subs:
            commits = store.groups().get("__sub__audit", {}).get("t", {})
            assert commits.get(0, 0) >= acked[0][1], commits


def test_subscription_commit_and_unsubscribe_survive_power_loss():
    sweep(subscription_workload, subscription_check, kind="store", options=ALWAYS)


def durable_queue_workload(path, fs, ack):
    q = DurableQueue(path, fs=fs)
    for i in range(6):
        q.put(i)
        ack(("put", i))
    for _ in range(3):
        item = q.get()
        q.task_done()
        ack(("done", item))
    q.close()


def durable_queue_check(path, acked):
    if not os.path.exists(os.path.join(path, "store.meta")):
        assert not acked
        return
    puts = [v for k, v in acked if k == "put"]
    done = [v for k, v in acked if k == "done"]
    q = DurableQueue(path)
    got = []
    while not q.empty():
        got.append(q.get())
        q.task_done()
    q.close()
    assert not set(got) & set(done), f"done items delivered again: {got} {done}"
    in_flight = set(puts[len(done):len(done) + 1])  # the one being got/done at the crash
    assert set(puts) - set(done) - in_flight <= set(got), (puts, done, got)
    assert got == sorted(got)  # FIFO


def test_durable_queue_survives_power_loss():
    sweep(durable_queue_workload, durable_queue_check, kind="dir")


def compaction_workload(log, ack):
    for i in range(60):
        log.append(b"v%d" % i, key=b"k%d" % (i % 5))
        ack((i % 5, b"v%d" % i))
    log.compact()
    ack("compacted")


def compaction_check(log, acked):
    """Crash anywhere in a compaction: the log is the pre- or the post-compaction log; the
    latest acknowledged value of every key is there (or the one append in flight after it)."""
    n = sum(1 for a in acked if a != "compacted")  # appends acknowledged: values 0..n-1
    found = {}
    for rec in log.replay():
        i = int(rec.value[1:])
        assert rec.key == b"k%d" % (i % 5) and i <= n, f"invented or garbage record {rec}"
        found[i % 5] = i
    for key in range(5):
        latest = max((i for i in range(n) if i % 5 == key), default=None)
        allowed = {latest} | ({n} if n < 60 and n % 5 == key else set())
        assert found.get(key) in allowed, (key, found.get(key), allowed)
    if "compacted" in acked:
        assert log.end_offset == 60 and len(list(log.replay())) < 60  # compacted for good


def test_compaction_survives_power_loss_at_every_step():
    options = dict(ALWAYS, segment_bytes=1024, cleanup_policy="compact",
                   retention_check_interval_s=0)
    report = sweep(compaction_workload, compaction_check, kind="log", options=options)
    assert report.ops > 200
