"""One store, many processes (issue 19): ``Store.open(root, shared=True)``.

Work queues across processes (one getter at a time, visibility timeouts, extend, nack delays,
dead letters exactly once, redrive once, max_depth, stats, killed workers), pub/sub and
consumer groups with publishers in several processes, msg_id deduplication across processes,
and mixing modes. Deterministic cases use two or three Store objects opened with shared=True in
this process (flocks belong to open files: they behave like separate processes); the others
run real processes (``tests/shared_child.py``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

import pytest

import logstore
from logstore.errors import AckError, ConfigError, LogLockedError, QueueFullError

from shared_helpers import (
    check_lease_history, finish, kill, queue_events, records_of, snapshot, spawn, touch,
    value_of, verify, wait_for,
)

OPTS = dict(shared=True, fsync="never", retention_check_interval_s=0, dedup_window_s=3600)


def _stores(root: str, n: int, **kw: Any) -> List[logstore.Store]:
    return [logstore.Store.open(root, **dict(OPTS, **kw)) for _ in range(n)]


def _close(*stores: logstore.Store) -> None:
    for s in stores:
        s.close()


# ----------------------------------------------------------------------------- in one process
def test_a_later_nack_elsewhere_replaces_an_earlier_delay(tmp_path):
    """Store 1 nacks a message with a short delay; when it is due, store 2 takes it and nacks it
    with a long one. Store 1 still holds its own entry of the short delay: it must not hand the
    message out when that one comes due (nor before the long delay ends), and stats agree."""
    import time

    s1, s2 = _stores(str(tmp_path / "s"), 2)
    try:
        q1, q2 = (s.queue("jobs", visibility_timeout=30) for s in (s1, s2))
        q1.put(b"m")
        m = q1.get(timeout=5)
        q1.nack(m, delay=0.1)
        time.sleep(0.15)
        again = q2.get(timeout=5)
        assert again is not None and again.id == m.id and again.delivery_count == 2
        q2.nack(again, delay=30)
        assert q1.get(timeout=0.5) is None, "delivered before its latest delay ended"
        assert q2.get(timeout=0.1) is None
        assert q1.stats()["delayed"] == 1 and q2.stats()["delayed"] == 1
    finally:
        _close(s1, s2)


def test_one_getter_at_a_time_and_extend_across_stores(tmp_path):
    """A message another store holds is not handed out (lease 30 s); shortening the lease with
    extend() tells the other store, which then delivers it again (count 2); the first holder's
    ack is refused, the second's accepted, and nobody gets it again."""
    root = str(tmp_path / "s")
    s1, s2 = _stores(root, 2)
    try:
        q1 = s1.queue("jobs", visibility_timeout=30)
        q2 = s2.queue("jobs", visibility_timeout=30)
        q1.put(b"a")
        m = q2.get(timeout=5)
        assert m is not None and m.value == b"a" and m.delivery_count == 1
        assert q1.get(timeout=0.2) is None  # leased to the other store for 30 s
        assert q1.stats()["in_flight"] == 1
        q2.extend(m, 0.2)  # (shorter) the other store learns the new deadline
        m2 = q1.get(timeout=20)
        assert m2 is not None and (m2.id, m2.delivery_count) == (m.id, 2)
        with pytest.raises(AckError):
            q2.ack(m)  # its lease was taken over
        q1.ack(m2)
        with pytest.raises(AckError):
            q2.ack(m2)
        assert q2.get(timeout=0.3) is None and q1.get(timeout=0.1) is None
        for q in (q1, q2):
            st = q.stats()
            assert (st["total"], st["in_flight"], st["depth"]) == (0, 0, 0), st
    finally:
        _close(s1, s2)
    check_lease_history(queue_events(root, "jobs"))


def test_extend_keeps_a_message_from_other_stores(tmp_path):
    """A lease extended past the visibility timeout holds in the other store too. (The lease is
    first cut to 0.5 s, then extended to 30 s: if this machine stalled between the two calls
    the extension is refused as expired and the scenario is run again.)"""
    root = str(tmp_path / "s")
    s1, s2 = _stores(root, 2)
    try:
        q1 = s1.queue("jobs", visibility_timeout=30)
        q2 = s2.queue("jobs", visibility_timeout=30)
        for attempt in range(3):
            q1.put(b"x%d" % attempt)
            m = q1.get(timeout=5)
            q1.extend(m, 0.5)
            try:
                q1.extend(m, 30)
            except AckError:
                continue  # (stalled over 0.5 s between two calls: try again)
            break
        else:
            pytest.fail("extend kept failing")
        time.sleep(1.0)  # past the 0.5 s deadline the other store saw first
        assert q2.get(timeout=0.3) is None, "the other store ignored the extension"
        q1.ack(m)
        for sk in range(attempt):  # (messages of stalled attempts: deliver and ack them)
            got = q2.get(timeout=30)
            assert got is not None
            q2.ack(got)
        assert q2.stats()["total"] == 0
    finally:
        _close(s1, s2)
    check_lease_history(queue_events(root, "jobs"))


def test_nack_delay_stats_and_acks_across_stores(tmp_path):
    """nack(delay) in one store delays the message in the others; stats() agree across three
    stores (in flight here and there, delayed, depth); an acked message never comes back."""
    root = str(tmp_path / "s")
    s1, s2, s3 = _stores(root, 3)
    try:
        q1, q2, q3 = (s.queue("jobs", visibility_timeout=30) for s in (s1, s2, s3))
        for i in range(6):
            (q1 if i % 2 else q2).put(b"m%d" % i)
        a, b = q1.get(timeout=5), q1.get(timeout=5)
        c = q2.get(timeout=5)
        d = q2.get(timeout=5)
        assert len({m.id for m in (a, b, c, d)}) == 4
        q2.nack(d, delay=30)
        want = {"total": 6, "in_flight": 3, "delayed": 1, "depth": 2}
        for q in (q1, q2, q3):
            st = q.stats()
            assert {k: st[k] for k in want} == want, st
        q1.ack(a)
        q2.nack(c, delay=0.2)
        got = [q3.get(timeout=10) for _ in range(3)]  # 2 ready + c after its delay
        assert all(got) and {m.id for m in got} >= {c.id}
        assert next(m for m in got if m.id == c.id).delivery_count == 2
        assert d.id not in {m.id for m in got}  # still delayed for 30 s
        assert a.id not in {m.id for m in got}
        q3.ack_many(got)
        q1.ack(b)
        st = q2.stats()
        assert (st["total"], st["in_flight"], st["delayed"], st["depth"]) == (1, 0, 1, 0), st
        assert q1.get(timeout=0.2) is None and q2.get(timeout=0.1) is None
    finally:
        _close(s1, s2, s3)
    history = check_lease_history(queue_events(root, "jobs"))
    assert sum(1 for s in history.values() if s["acked"]) == 5


def test_max_depth_reject_and_block_across_stores(tmp_path):
    root = str(tmp_path / "s")
    s1, s2, s3 = _stores(root, 3)
    try:
        q1 = s1.queue("jobs", max_depth=3)
        q2 = s2.queue("jobs", max_depth=3)
        q1.put(b"a")
        q2.put(b"b")
        q1.put(b"c")
        for q in (q1, q2):
            with pytest.raises(QueueFullError):
                q.put(b"d")  # the others' messages count
        q3 = s3.queue("jobs", max_depth=3, overflow="block")
        with pytest.raises(QueueFullError):
            q3.put(b"e", timeout=0.2)
        done: List[str] = []
        t = threading.Thread(target=lambda: done.append(q3.put(b"e", timeout=60)))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not done, "a blocking put went through a full queue"
        m = q2.get(timeout=5)
        q2.ack(m)  # room for one, made in another store
        t.join(60)
        assert done, "the blocked put never went through"
        with pytest.raises(QueueFullError):
            q1.put(b"f")
        values = sorted(bytes(r.value) for p in s1.topic("jobs").partitions
                        for r in p.read(0))
        assert values == [b"a", b"b", b"c", b"e"]
    finally:
        _close(s1, s2, s3)


def test_msg_id_dedup_across_stores(tmp_path):
    root = str(tmp_path / "s")
    s1, s2 = _stores(root, 2)
    try:
        t1, t2 = s1.topic("t", partitions=3), s2.topic("t")
        first = t1.publish(b"one", msg_id="order-1")
        assert t2.publish(b"again", msg_id="order-1") == first
        assert t1.publish(b"again", msg_id="order-1") == first
        other = t2.publish(b"two", msg_id="order-2")
        assert t1.publish(b"two?", msg_id="order-2") == other
        assert sum(t1.end_offsets().values()) == 2 == sum(t2.end_offsets().values())
    finally:
        _close(s1, s2)
    s3 = logstore.Store.open(root, **OPTS)  # the window is rebuilt from the topic at open
    try:
        assert s3.topic("t").publish(b"x", msg_id="order-1") == first
    finally:
        s3.close()


# ----------------------------------------------------------------------------- mixing modes
def test_store_modes_do_not_mix(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root) as only:
        only.topic("t").publish(b"x")
        before = snapshot(root)
        with pytest.raises(LogLockedError) as info:
            logstore.Store.open(root, shared=True)
        assert "without shared=True" in str(info.value) and str(os.getpid()) in str(info.value)
        assert snapshot(root) == before
        only.topic("t").publish(b"y")
    a, b = _stores(root, 2)
    try:
        a.topic("t").publish(b"z")
        before = snapshot(root)
        with pytest.raises(LogLockedError) as info:
            logstore.Store.open(root)
        assert "shared=True" in str(info.value)
        with pytest.raises(LogLockedError):  # nor one of its logs, behind the store's back
            logstore.Log.open(os.path.join(root, "topics", "t", "0"))
        assert snapshot(root) == before
        ro = logstore.Store.open(root, readonly=True)  # readers are welcome
        try:
            b.topic("t").publish(b"w")
            assert [r.value for r in ro.topic("t").partitions[0].read(0)] == \
                [b"x", b"y", b"z", b"w"]
        finally:
            ro.close()
    finally:
        _close(a, b)
    with pytest.raises(ConfigError):
        logstore.Store.open(root, shared=True, readonly=True)


def test_exclusive_store_in_another_process_names_its_pid(tmp_path):
    root = str(tmp_path / "s")
    stop, out = str(tmp_path / "stop"), str(tmp_path / "hold.jsonl")
    child = spawn("log_hold", dict(path=root, out=out, stop=stop, kind="store", shared=False))
    try:
        pid = wait_for(lambda: next((r["ready"] for r in records_of(out) if "ready" in r),
                                    None), 60, "the holder", [child])
        before = snapshot(root)
        with pytest.raises(LogLockedError) as info:
            logstore.Store.open(root, shared=True)
        assert f"pid {pid}" in str(info.value)
        assert snapshot(root) == before
        touch(stop)
        finish(child)
    finally:
        kill(child)


# ----------------------------------------------------------------------------- processes
def _deliveries(outs: List[str]) -> Tuple[List[Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]:
    """Every worker line (tagged with its file), and by kind."""
    lines = []
    for w, out in enumerate(outs):
        for r in records_of(out):
            r["w"] = w
            lines.append(r)
    by: Dict[str, List[Dict[str, Any]]] = {k: [r for r in lines if k in r]
                                           for k in ("g", "a", "x", "n", "e")}
    return lines, by


def test_work_queue_one_producer_three_worker_processes(tmp_path):
    """1 producer and 3 worker processes on one queue; the workers get (one and many), ack (one
    and many), nack with delays, extend, and sometimes let a lease expire (their late ack must
    be refused). Every message is acked exactly once, by the holder of its current delivery;
    no two leases of a message ever overlap (the event log, with the lease deadlines); an acked
    message is never delivered again; every delivery went to exactly one getter; the queue
    ends empty in every process's stats()."""
    root = str(tmp_path / "s")
    n = 300
    stop, start = str(tmp_path / "stop"), str(tmp_path / "start")
    qopts = {"visibility_timeout": 1.0, "max_deliveries": 1000, "backoff": [0.01, 0.05]}
    outs = [str(tmp_path / f"w{i}.jsonl") for i in range(3)]
    pout = str(tmp_path / "producer.jsonl")
    workers = [spawn("queue_worker", dict(path=root, out=o, stop=stop, start=start,
                                          queue_options=qopts,
                                          mix={"expire": 0.005, "nack": 0.04, "extend": 0.005}))
               for o in outs]
    producer = spawn("queue_put", dict(path=root, out=pout, first=0, n=n, start=start,
                                       queue_options=qopts))
    procs = workers + [producer]
    here = None
    try:
        # (The children create the queue, its topic and event log at about the same time.)
        wait_for(lambda: all(records_of(o) for o in outs + [pout]), 60, "the children", procs)
        here = logstore.Store.open(root, **OPTS)
        q = here.queue("jobs", **qopts)
        touch(start)
        finish(producer)
        put = {r["id"]: r["put"] for r in records_of(pout) if "put" in r}
        assert len(put) == n
        wait_for(lambda: q.stats()["total"] == 0, 120, "the workers to ack everything", procs)
        touch(stop)
        for w in workers:
            finish(w)
    finally:
        for p in procs:
            kill(p)
    st = q.stats()
    assert (st["total"], st["in_flight"], st["delayed"], st["depth"]) == (0, 0, 0, 0), st
    here.close()
    lines, by = _deliveries(outs)
    # Every delivery went to one getter (a (message, count) pair is handed out once).
    pairs = Counter((r["g"], r["c"]) for r in by["g"])
    assert max(pairs.values()) == 1, [p for p, c in pairs.items() if c > 1][:5]
    assert {r["g"] for r in by["g"]} == set(put)
    for r in by["g"]:
        assert r["v"] == "m%d" % put[r["g"]]
    # Acked exactly once, by the holder of the delivery it acked; never delivered again.
    acks = Counter(r["a"] for r in by["a"])
    assert set(acks) == set(put) and max(acks.values()) == 1
    acked = {r["a"]: r for r in by["a"]}
    holder = {(r["g"], r["c"]): r["w"] for r in by["g"]}
    for mid, r in acked.items():
        assert holder[(mid, r["c"])] == r["w"], f"{mid} acked by a worker not holding it"
        later = [g for g in by["g"] if g["g"] == mid and (g["c"] > r["c"] or g["t"] > r["t"])]
        assert not later, f"{mid} delivered again after its ack: {later}"
    assert by["x"], "no lease ever expired: the test did not exercise timeouts"
    assert by["n"] and by["e"], "no nack or extend happened"
    for r in by["x"]:  # an expired delivery was handed out again (to someone)
        assert (r["x"], r["c"] + 1) in pairs, r
    for r in by["n"]:  # a nacked one too, not before its delay
        nxt = [g for g in by["g"] if g["g"] == r["n"] and g["c"] == r["c"] + 1]
        assert nxt and nxt[0]["t"] >= r["t0"] + r["d"] - 0.1, (r, nxt)
    # The event log agrees: leases never overlapped, acks were of the current delivery.
    history = check_lease_history(queue_events(root, "jobs"))
    assert {f"{p}:{o}" for (p, o), s in history.items() if s["acked"]} == set(put)
    for (p, o), s in history.items():
        assert s["acked"] == acked[f"{p}:{o}"]["c"]
        assert s["deliveries"] == sum(1 for g in by["g"] if g["g"] == f"{p}:{o}")
    verify(root)


def test_killed_worker_messages_come_back_after_their_visibility_timeout(tmp_path):
    """A worker process takes 5 messages (lease 3 s) and is SIGKILLed holding them. This store
    (open all along) gets none of them while the leases run, then every one, as delivery 2,
    not before its lease deadline (as recorded in the event log)."""
    root = str(tmp_path / "s")
    qopts = {"visibility_timeout": 3.0}
    here = logstore.Store.open(root, **OPTS)
    q = here.queue("jobs", **qopts)
    ids = {q.put(b"m%d" % i) for i in range(5)}
    out = str(tmp_path / "grab.jsonl")
    child = spawn("queue_grab", dict(path=root, out=out, n=5, queue_options=qopts))
    try:
        wait_for(lambda: any("holding" in r for r in records_of(out)), 60, "the grab", [child])
        assert q.get(timeout=0) is None  # every message is leased to the child
        kill(child)
        assert child.returncode == -9
    finally:
        kill(child)
    held = {r["g"] for r in records_of(out) if "g" in r}
    assert held == ids
    deadlines = {f"{p}:{o}": t for _ts, k, p, o, c, t in queue_events(root, "jobs") if k == "G"}
    back: Dict[str, Tuple[int, float]] = {}
    limit = time.monotonic() + 60
    while len(back) < 5 and time.monotonic() < limit:
        for m in q.get_many(5, timeout=1):
            back[m.id] = (m.delivery_count, time.time())
            q.ack(m)
    assert set(back) == ids, f"came back: {sorted(back)}"
    for mid, (count, t) in back.items():
        assert count == 2
        assert t * 1000 >= deadlines[mid] - 100, (mid, t * 1000, deadlines[mid])
    here.close()
    check_lease_history(queue_events(root, "jobs"))


def test_killed_worker_messages_come_back_at_once_to_a_lone_opener(tmp_path):
    """A worker process alone on the store takes 5 messages with a 60 s lease and is killed.
    The next process to open the queue finds nobody sharing it: the messages are ready at
    once (delivery 2), not after 60 s."""
    root = str(tmp_path / "s")
    qopts = {"visibility_timeout": 60.0}
    with logstore.Store.open(root, **OPTS) as s:
        q = s.queue("jobs", **qopts)
        ids = {q.put(b"m%d" % i) for i in range(5)}
    out = str(tmp_path / "grab.jsonl")
    child = spawn("queue_grab", dict(path=root, out=out, n=5, queue_options=qopts))
    try:
        wait_for(lambda: any("holding" in r for r in records_of(out)), 60, "the grab", [child])
    finally:
        kill(child)
    assert {r["g"] for r in records_of(out) if "g" in r} == ids
    with logstore.Store.open(root, **OPTS) as s:
        q = s.queue("jobs", **qopts)
        got = q.get_many(5, timeout=10)
        while len(got) < 5:
            more = q.get_many(5, timeout=10)
            assert more, f"only {len(got)} of 5 came back (the killed worker's leases held)"
            got += more
        assert {m.id for m in got} == ids and {m.delivery_count for m in got} == {2}
        q.ack_many(got)
    # (No lease history check: dropping the dead worker's leases at once is the point here.)
    kinds = Counter(k for _ts, k, *_rest in queue_events(root, "jobs"))
    assert (kinds["G"], kinds["A"]) == (10, 5), kinds


def test_dead_letters_once_and_redrive_once_across_processes(tmp_path):
    """max_deliveries=2, leases of 0.3 s that nobody settles: three processes keep taking the
    messages and calling stats() (both expire leases). Each message goes to the dead-letter
    topic exactly once. Then two processes redrive at once: each dead letter moves once."""
    root = str(tmp_path / "s")
    n = 20
    qopts = {"visibility_timeout": 0.3, "max_deliveries": 2}
    here = logstore.Store.open(root, **OPTS)
    q = here.queue("jobs", **qopts)
    ids = {q.put(b"m%d" % i) for i in range(n)}
    stop, start = str(tmp_path / "stop"), str(tmp_path / "start")
    outs = [str(tmp_path / f"idle{i}.jsonl") for i in range(3)]
    procs = [spawn("queue_idle", dict(path=root, out=o, stop=stop, start=start,
                                      queue_options=qopts)) for o in outs]
    dlq = here.topic("jobs.dlq")
    try:
        wait_for(lambda: all(records_of(o) for o in outs), 60, "the idle getters", procs)
        touch(start)
        wait_for(lambda: dlq.partitions[0].end_offset >= n, 120, "the dead letters", procs)
        time.sleep(1.0)  # the getters go on looking at expired leases for a while
        touch(stop)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    dead = dlq.partitions[0].read(0)
    sources = Counter(r.headers["x-dead-letter-source"].decode() for r in dead)
    assert len(dead) == n and set(sources.values()) == {1}, sources
    assert {s.split(":", 1)[1] for s in sources} == ids
    assert {r.headers["x-delivery-count"] for r in dead} == {b"2"}
    got = Counter((r["g"], r["c"]) for o in outs for r in records_of(o) if "g" in r)
    assert set(got) == {(i, c) for i in ids for c in (1, 2)} and set(got.values()) == {1}
    history = check_lease_history(queue_events(root, "jobs"))
    assert all(s["dead"] == 2 and not s["acked"] for s in history.values())
    st = q.stats()
    assert (st["total"], st["dead_lettered"]) == (0, n), st
    # Two processes redrive at the same time: every dead letter moves once.
    ends = sum(q.topic.end_offsets().values())
    routs = [str(tmp_path / f"redrive{i}.jsonl") for i in range(2)]
    start2 = str(tmp_path / "start2")
    procs = [spawn("queue_redrive", dict(path=root, out=o, start=start2, queue_options=qopts))
             for o in routs]
    try:
        wait_for(lambda: all(records_of(o) for o in routs), 60, "the redrivers", procs)
        touch(start2)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    moved = [r["moved"] for o in routs for r in records_of(o) if "moved" in r]
    assert sum(moved) == n
    assert sum(q.topic.end_offsets().values()) == ends + n
    assert q.dead_lettered() == 0
    again = []
    while len(again) < n:
        more = q.get_many(n, timeout=10)
        assert more
        again += more
    assert sorted(m.value for m in again) == sorted(r.value for r in dead)
    q.ack_many(again)
    assert q.get(timeout=0.2) is None
    here.close()


def test_pubsub_and_groups_with_publishers_in_several_processes(tmp_path):
    """Three processes publish (single, keyed, batches) while a subscription is read here, a
    second subscription's member and two members of a consumer group run in other processes.
    Each subscription gets every message exactly once, the group every message (at least
    once), with the publishers' values at the publishers' positions; the commits end at the
    partitions' ends, and a new member of the group finds nothing left."""
    root = str(tmp_path / "s")
    stop, start = str(tmp_path / "stop"), str(tmp_path / "start")
    here = logstore.Store.open(root, **OPTS)
    topic = here.topic("events", partitions=4)
    billing = here.subscribe("events", "billing", start="earliest")
    here.subscribe("events", "audit", start="earliest").close()
    pouts = [str(tmp_path / f"pub{i}.jsonl") for i in range(3)]
    pubs = [spawn("publisher", dict(path=root, out=o, wid=i, n=300, topic="events",
                                    start=start)) for i, o in enumerate(pouts)]
    mouts = [str(tmp_path / f"member{i}.jsonl") for i in range(3)]
    members = [spawn("member", dict(path=root, out=mouts[0], topic="events",
                                    subscription="audit", stop=stop)),
               *[spawn("member", dict(path=root, out=o, topic="events", group="g", stop=stop))
                 for o in mouts[1:]]]
    procs = pubs + members
    got_billing: List[logstore.Record] = []
    try:
        wait_for(lambda: all(records_of(o) for o in pouts + mouts), 60, "the children", procs)
        touch(start)
        while any(p.poll() is None for p in pubs):
            got_billing += billing.poll(200, timeout=0.05)
            billing.commit()
        for p in pubs:
            finish(p)
        ends = topic.end_offsets()
        assert sum(ends.values()) == 900
        while sum(billing.committed().values()) < 900:
            got_billing += billing.poll(500, timeout=0.1)
            billing.commit()

        def committed(group: str) -> bool:
            return here.groups().get(group, {}).get("events") == ends

        wait_for(lambda: committed("g") and committed("__sub__audit"), 120,
                 "the members' commits", procs)
        touch(stop)
        for p in members:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    published: Dict[Tuple[int, int], bytes] = {}
    for w, o in enumerate(pouts):
        for r in records_of(o):
            if "po" in r:
                for j, (p, off) in enumerate(r["po"]):
                    published[(p, off)] = value_of(w, r["i"] + j)
    assert len(published) == 900
    assert Counter((r.partition, r.offset) for r in got_billing) == Counter(set(published))
    for r in got_billing:
        assert r.value == published[(r.partition, r.offset)]
    audit = Counter((p, off) for r in records_of(mouts[0]) if "r" in r for p, off, _v in r["r"])
    assert audit == Counter(set(published)), "the subscription in another process missed or repeated"
    group = [(p, off, v) for o in mouts[1:] for r in records_of(o) if "r" in r
             for p, off, v in r["r"]]
    assert {(p, off) for p, off, _v in group} == set(published)
    for p, off, v in group:
        assert v.encode() == published[(p, off)]
    late = here.consumer("g", "events")
    assert late.poll(100, timeout=0.3) == []
    late.close()
    billing.close()
    here.close()
    verify(root)


def test_msg_id_dedup_across_processes(tmp_path):
    """Four processes create a topic at about the same time and publish the same 150 msg_ids
    (each in its own order) at once: one topic of 3 partitions, one record per msg_id, and
    every process got that record's position back."""
    root = str(tmp_path / "s")
    start = str(tmp_path / "start")
    ids = [f"id-{i}" for i in range(150)]
    # (No topic yet: the four processes create it at about the same time.)
    outs = [str(tmp_path / f"d{i}.jsonl") for i in range(4)]
    procs = [spawn("dedup_publisher", dict(path=root, out=o, topic="t", ids=ids, start=start,
                                           keyed=i % 2 == 0, partitions=3))
             for i, o in enumerate(outs)]
    try:
        wait_for(lambda: all(records_of(o) for o in outs), 60, "the publishers", procs)
        touch(start)
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            kill(p)
    with logstore.Store.open(root, readonly=True) as s:
        assert s.topics() == ["t"] and s.topic("t").partition_count == 3
        recs = [(p, r) for p, log in enumerate(s.topic("t").partitions) for r in log.read(0)]
    where = {r.headers["x-msg-id"].decode(): (p, r.offset) for p, r in recs}
    assert len(recs) == len(ids) and set(where) == set(ids), len(recs)
    for _p, rec in recs:
        assert rec.value == f"v-{rec.headers['x-msg-id'].decode()}".encode()
    for o in outs:
        lines = [r for r in records_of(o) if "id" in r]
        assert len(lines) == len(ids)
        for r in lines:
            assert (r["p"], r["o"]) == where[r["id"]], r


@pytest.mark.parametrize("fsync,point", [("always", "seal_fdatasync"), ("never", "pwrite_full")])
def test_msg_id_retry_after_the_publisher_was_killed_inside_publish(tmp_path, fsync, point):
    """A publisher process is SIGKILLed inside ``publish(msg_id="order-1")`` after its record
    is in the file (in the fsync of fsync="always"; right after the pwrite, holding the write
    lock, under "never") while this store has the topic open. Its replacement retries with the
    same msg_id: the retry must return the first record's position and append nothing (the
    written record is kept, whole: it is the one to deduplicate against)."""
    root = str(tmp_path / "s")
    opts = dict(OPTS, fsync=fsync)
    here = logstore.Store.open(root, **opts)
    topic = here.topic("t")
    topic.publish(b"first")
    out = str(tmp_path / "killed.jsonl")
    child = spawn("dedup_killed", dict(path=root, out=out, topic="t", point=point,
                                       fsync=fsync))
    try:
        _, err = child.communicate(timeout=120)
        assert child.returncode == -9, f"the publisher was not killed at {point}: {err}"
    finally:
        kill(child)
    retry = logstore.Store.open(root, **opts)
    try:
        pos = retry.topic("t").publish(b"order", msg_id="order-1")
        again = topic.publish(b"order", msg_id="order-1")
        recs = retry.topic("t").partitions[0].read(0)
    finally:
        _close(retry, here)
    copies = [r.offset for r in recs if r.headers.get("x-msg-id") == b"order-1"]
    assert len(copies) == 1, f"order-1 stored {len(copies)} times, at {copies}"
    assert pos == again == (0, copies[0])
