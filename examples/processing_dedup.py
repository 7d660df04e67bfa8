"""Deduplication by message id within a window: producers that retry send some payments twice.

    python examples/processing_dedup.py [--dir DIR]

Publishes 10,000 payments into topic ``payments``, a fifth of them sent again by a retrying
producer a few seconds later (same ``id``, another partition possibly: they are keyed by
account). The processor re-keys them by message id (so that both copies meet in one task),
keeps the first copy of each id seen within 10 minutes of event time (per-key state with a
time-to-live, so the state stays bounded) and writes the survivors to ``payments-unique``.
"""

from __future__ import annotations

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _orders  # noqa: E402

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402

WINDOW_MS = 10 * 60_000


def first_seen(payment, state) -> bool:
    """True for the first copy of a message id (the key after ``key_by``)."""
    if state.exists("seen"):
        return False
    state.set("seen", payment["ts"])
    return True


def build(store: logstore.Store) -> lp.Processor:
    app = lp.Processor(store, "payments-dedup")
    (app.stream("payments", value=lp.JSON, timestamp=lambda p: p["ts"])
     .key_by(lambda p: p["id"])
     .filter(first_seen, stateful=True, ttl_ms=WINDOW_MS, name="seen-ids")
     .to("payments-unique", value=lp.JSON))
    return app


def payments(n: int):
    rnd = random.Random(3)
    rows = []
    for i in range(n):
        p = {"id": f"pay-{i}", "account": f"acct-{rnd.randrange(50)}",
             "amount": rnd.randrange(100, 10_000), "ts": _orders.T0 + i * 150}
        rows.append(p)
        if rnd.random() < 0.2:  # a retry, a few seconds later
            rows.append(dict(p, ts=p["ts"] + rnd.randrange(1_000, 5_000)))
    rows.sort(key=lambda p: p["ts"])
    return rows


def main() -> int:
    args = _orders.arguments(__doc__)
    rows = payments(10_000)
    with logstore.Store.open(args.dir, fsync="never") as store:
        _orders.publish_orders(store, "payments", rows, key="account")
        stats = build(store).run(until_caught_up=True)
        unique = _orders.read_topic(store, "payments-unique")
        ids_in_state = len(lp.read_state(store, "payments-dedup", "seen-ids"))
    ids = sorted(p["id"] for _k, p in unique)
    ok = ids == sorted({p["id"] for p in rows})
    print(f"{len(rows)} payments in, {len(unique)} unique out, "
          f"{len(rows) - len(unique)} duplicates dropped; {ids_in_state} ids still remembered "
          f"(the last {WINDOW_MS // 60_000} minutes of event time)")
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"in": len(rows), "unique": len(unique), "state": ids_in_state,
                          "records_in": stats["records_in"], "dir": args.dir}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
