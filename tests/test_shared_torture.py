"""The many-process torture of issue 19: 3 producer and 3 worker processes on one shared store
(fsync="always"), random SIGKILLs of any of them and restarts, for LOGSTORE_TORTURE_ROUNDS
rounds (default 20).

Producers publish ``p<j>-<seq>`` with msg_id of the same name and record each publish once it
returned (their record files are fsynced); a restarted producer resumes after its last recorded
publish (the one after it may have been published before the kill: publishing it again must be
deduplicated). Workers record each message they process before acking it and each ack after it
returned. At the end, with the queue drained:

* every acknowledged publish is in the topic exactly once, at the position its publish returned,
  and nothing else is (no duplicate of any msg_id);
* per producer, its messages are in seq order within each partition;
* every ack in the queue's event log is of a message a worker processed (that very delivery);
  every ack a worker recorded is in the event log;
* no acked message was delivered again, no two leases of a message overlapped, every message
  was acked exactly once;
* ``logstore verify`` of the store is clean.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from typing import Dict, List, Tuple

import logstore

from shared_helpers import (
    check_lease_history, finish, kill, queue_events, records_of, spawn, touch, verify, wait_for,
)

ROUNDS = int(os.environ.get("LOGSTORE_TORTURE_ROUNDS", "20"))
SEED = int(os.environ.get("LOGSTORE_TORTURE_SEED", str(int(time.time()) % 100000)))
PARTITIONS = 3
QOPTS = {"visibility_timeout": 1.0, "max_deliveries": 100000}


def test_torture_producers_and_workers_killed_at_random(tmp_path):
    rng = random.Random(SEED)
    root = str(tmp_path / "store")
    pstop, wstop = str(tmp_path / "pstop"), str(tmp_path / "wstop")
    base = dict(path=root, fsync="always", queue="jobs", queue_options=QOPTS,
                partitions=PARTITIONS)
    with logstore.Store.open(root, shared=True, fsync="always", retention_check_interval_s=0,
                             dedup_window_s=3600) as s:
        s.queue("jobs", partitions=PARTITIONS, **QOPTS)
    roles: Dict[str, Tuple[str, dict]] = {}
    for j in range(3):
        roles[f"p{j}"] = ("torture_producer", dict(base, producer=j, stop=pstop,
                                                   out=str(tmp_path / f"p{j}.jsonl")))
        roles[f"w{j}"] = ("torture_worker", dict(base, stop=wstop,
                                                 out=str(tmp_path / f"w{j}.jsonl")))
    procs = {name: spawn(*roles[name]) for name in roles}
    born = {name: time.monotonic() for name in roles}
    kills = Counter()
    t0 = time.monotonic()
    try:
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.3, 1.5))
            for name, p in procs.items():
                assert p.poll() is None, f"{name} exited {p.returncode}: {p.stderr.read()}"
            # Kill one or two that have run a while (a kill during start-up tests little).
            grown = [n for n in procs if time.monotonic() - born[n] > 1.0] or list(procs)
            for name in rng.sample(grown, min(len(grown), rng.choice([1, 1, 2]))):
                kill(procs[name])
                kills[name[0]] += 1
                procs[name] = spawn(*roles[name])
                born[name] = time.monotonic()
        touch(pstop)
        for name in ("p0", "p1", "p2"):
            finish(procs[name])
        with logstore.Store.open(root, shared=True, fsync="always",
                                 retention_check_interval_s=0, dedup_window_s=3600) as s:
            q = s.queue("jobs", **QOPTS)
            wait_for(lambda: q.stats()["total"] == 0, 180, "the workers to drain the queue",
                     [procs[n] for n in ("w0", "w1", "w2")])
            topic: Dict[str, Tuple[int, int]] = {}
            per_partition: List[List[str]] = []
            dups = []
            for p, log in enumerate(s.topic("jobs").partitions):
                ids = []
                for rec in log.replay(0):
                    mid = rec.headers["x-msg-id"].decode()
                    assert rec.value == mid.encode()
                    if mid in topic:
                        dups.append(mid)
                    topic[mid] = (p, rec.offset)
                    ids.append(mid)
                per_partition.append(ids)
        touch(wstop)
        for name in ("w0", "w1", "w2"):
            finish(procs[name])
    finally:
        for p in procs.values():
            kill(p)
    elapsed = time.monotonic() - t0
    assert not dups, f"published twice: {dups[:10]}"

    # Every acknowledged publish is in the topic exactly once, where publish said; nothing else.
    published = 0
    for j in range(3):
        lines = [r for r in records_of(str(tmp_path / f"p{j}.jsonl")) if "s" in r]
        seqs = [r["s"] for r in lines]
        assert seqs == list(range(len(seqs))), f"producer {j}: recorded seqs out of order"
        for r in lines:
            assert topic.get(f"p{j}-{r['s']}") == (r["p"], r["o"]), (j, r)
        mine = {mid for mid in topic if mid.startswith(f"p{j}-")}
        # (plus, at most, the one publish a kill interrupted just before the stop: its
        # producer's last incarnation started after the stop and published nothing)
        acknowledged = {f"p{j}-{s}" for s in seqs}
        assert acknowledged <= mine and mine - acknowledged <= {f"p{j}-{len(seqs)}"}, (
            f"producer {j}: in the topic but never acknowledged: "
            f"{sorted(mine - acknowledged)[:5]}")
        published += len(seqs)
    assert len(topic) - 3 <= published <= len(topic)
    # Per-producer order within each partition.
    for p, ids in enumerate(per_partition):
        last: Dict[str, int] = {}
        for mid in ids:
            j, seq = mid.split("-")
            assert seq_after(last.get(j), int(seq)), f"partition {p}: {mid} after {j}-{last[j]}"
            last[j] = int(seq)

    # The queue: leases never overlapped, each message acked once, never delivered after.
    events = queue_events(root, "jobs")
    history = check_lease_history(events)
    by_pos = {pos: mid for mid, pos in topic.items()}
    assert set(history) == set(by_pos), "messages the queue never saw, or phantoms"
    assert all(st["acked"] for st in history.values()), "not every message was acked"
    processed = set()
    worker_acks = []
    delivered_after: Dict[str, List[int]] = defaultdict(list)
    for j in range(3):
        for r in records_of(str(tmp_path / f"w{j}.jsonl")):
            if "P" in r:
                processed.add((r["P"], r["c"]))
                delivered_after[r["P"]].append(r["c"])
                assert r["v"] == by_pos[tuple(int(x) for x in r["P"].split(":"))]
            elif "A" in r:
                worker_acks.append((r["A"], r["c"]))
    acks = {f"{p}:{o}": st["acked"] for (p, o), st in history.items()}
    for mid, c in acks.items():
        assert (mid, c) in processed, f"{mid} acked (delivery {c}) but never processed"
        assert max(delivered_after[mid]) == c, f"{mid} delivered again after its ack"
    for mid, c in worker_acks:
        assert acks[mid] == c, f"a worker's ack of {mid} (delivery {c}) is not the one recorded"
    redelivered = sum(st["deliveries"] - 1 for st in history.values())
    verify(root)
    print(f"\ntorture: seed {SEED}, {ROUNDS} rounds, kills {dict(kills)}, {published} "
          f"publishes, {len(acks)} acks ({len(worker_acks)} recorded by workers), "
          f"{redelivered} redeliveries, {elapsed:.1f} s")
    assert sum(kills.values()) >= ROUNDS


def seq_after(prev, seq: int) -> bool:
    return prev is None or seq > prev
