"""Priorities, message expiry, overflow policies and event sourcing by key, in one store.

    python examples/queue_patterns.py [--dir DIR] [--json]

* **Priorities**: a ``tickets`` queue with ``max_priority=9``; 30 tickets of priority 0, 1 and 9
  are put in mixed order, then the store is closed and reopened (priorities are durable) and a
  worker drains it: every priority-9 ticket comes first, then the 1s, then the 0s, FIFO within
  a level.
* **Expiry**: an ``offers`` queue with ``message_ttl=0.2`` s and a dead-letter topic; 10 offers
  put, 5 more with ``ttl=60``; after 0.3 s a worker gets exactly the 5 long-lived ones; the 10
  expired ones are in ``offers.dlq`` with ``x-dead-letter-reason: expired``, counted by
  ``stats()["expired"]``.
* **Overflow**: ``readings`` with ``max_depth=5`` and ``overflow="drop_oldest"`` keeps the 5
  newest of 8 readings (the 3 oldest dead-lettered with reason ``overflow``); ``clicks`` with
  ``overflow="drop_newest"`` refuses the 6th to 8th put (``put`` returns False, counted as
  ``refused``).
* **Event sourcing by key**: an ``accounts`` topic of deposits and withdrawals for 50 accounts;
  one account's balance is rebuilt from ``topic.replay_key(key)`` (its events only, found through
  the per-segment key index, not a scan) and must equal the balance the application tracked.

Prints ``OK`` when every check holds (``MISMATCH`` and exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402

REASON = "x-dead-letter-reason"


def priorities(root: str) -> bool:
    rng = random.Random(7)
    levels = [rng.choice((0, 1, 9)) for _ in range(30)]
    with logstore.Store.open(root, fsync="always") as store:
        q = store.queue("tickets", max_priority=9)
        for i, prio in enumerate(levels):
            q.put(f"ticket-{i}".encode(), priority=prio)
    with logstore.Store.open(root, fsync="always") as store:  # reopened: still ordered
        q = store.queue("tickets", max_priority=9)
        got = []
        while (m := q.get(timeout=0.2)) is not None:
            got.append(int(m.value.split(b"-")[1]))
            q.ack(m)
    want = sorted(range(30), key=lambda i: (-levels[i], i))
    print(f"priorities: {len(got)} tickets, first five {got[:5]} (levels "
          f"{[levels[i] for i in got[:5]]})")
    return got == want


def expiry(root: str) -> bool:
    with logstore.Store.open(root, fsync="never") as store:
        q = store.queue("offers", message_ttl=0.2, dead_letter="offers.dlq")
        for i in range(10):
            q.put(b"flash-%d" % i)
        for i in range(5):
            q.put(b"lasting-%d" % i, ttl=60)
        time.sleep(0.3)
        got = []
        while (m := q.get(timeout=0.2)) is not None:
            got.append(m.value)
            q.ack(m)
        dead = store.topic("offers.dlq").partitions[0].read(0, 100)
        reasons = {r.headers.get(REASON) for r in dead}
        expired = q.stats()["expired"]
    print(f"expiry: delivered {len(got)}, dead-lettered {len(dead)} (reasons {reasons}), "
          f"stats expired {expired}")
    return (sorted(got) == [b"lasting-%d" % i for i in range(5)] and len(dead) == 10
            and reasons == {b"expired"} and expired == 10)


def overflow(root: str) -> bool:
    with logstore.Store.open(root, fsync="never") as store:
        oldest = store.queue("readings", max_depth=5, overflow="drop_oldest",
                             dead_letter="readings.dlq")
        for i in range(8):
            oldest.put(b"reading-%d" % i)
        kept = []
        while (m := oldest.get(timeout=0.1)) is not None:
            kept.append(m.value)
            oldest.ack(m)
        dropped = store.topic("readings.dlq").partitions[0].read(0, 100)
        newest = store.queue("clicks", max_depth=5, overflow="drop_newest")
        accepted = [newest.put(b"click-%d" % i) is not False for i in range(8)]
        st_old, st_new = oldest.stats(), newest.stats()
    print(f"overflow: drop_oldest kept {len(kept)}, dead-lettered {len(dropped)} "
          f"(overflow {st_old['overflow']}); drop_newest accepted {sum(accepted)}, "
          f"refused {st_new['refused']}")
    return (kept == [b"reading-%d" % i for i in range(3, 8)]
            and [r.value for r in dropped] == [b"reading-%d" % i for i in range(3)]
            and {r.headers.get(REASON) for r in dropped} == {b"overflow"}
            and st_old["overflow"] == 3 and accepted == [True] * 5 + [False] * 3
            and st_new["refused"] == 3)


def event_sourcing(root: str) -> bool:
    rng = random.Random(11)
    balances = {}
    with logstore.Store.open(root, fsync="never", segment_bytes=16 * 1024) as store:
        accounts = store.topic("accounts", partitions=4)
        for _ in range(20):  # batches of events for random accounts
            events = []
            for _ in range(500):
                acct = f"acct-{rng.randrange(50)}"
                amount = rng.randrange(-50, 100)
                balances[acct] = balances.get(acct, 0) + amount
                events.append((acct, amount))
            accounts.publish_batch([json.dumps({"amount": a}).encode() for _, a in events],
                                   keys=[k.encode() for k, _ in events])
    # (A writer saves the key index it builds for each sealed segment; a read-only process
    # builds it in memory only.)
    with logstore.Store.open(root, fsync="never") as store:
        accounts = store.topic("accounts")
        rebuilt = {}
        for acct in ("acct-7", "acct-23", "acct-42"):
            events = accounts.replay_key(acct.encode())
            assert all(r.key == acct.encode() for r in events)
            rebuilt[acct] = sum(json.loads(r.value)["amount"] for r in events)
    print(f"event sourcing: rebuilt {rebuilt} from replay_key; tracked "
          f"{ {a: balances[a] for a in rebuilt} }")
    return all(rebuilt[a] == balances[a] for a in rebuilt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="logstore-patterns-")
    results = {"priorities": priorities(root), "expiry": expiry(root),
               "overflow": overflow(root), "event_sourcing": event_sourcing(root)}
    ok = all(results.values())
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({**results, "dir": root}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
