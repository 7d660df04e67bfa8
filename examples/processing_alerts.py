"""High-value transaction alerts: a stateless filter from ``orders`` to ``alerts``.

    python examples/processing_alerts.py [--dir DIR]

Publishes 20,000 orders, then runs a processor that keeps the orders of 500.00 or more, turns
each into an alert message and writes it to topic ``alerts`` (keyed by order id, like the
input), exactly once. It is run twice with more orders in between, as a service restarted
between batches would be: the second run starts where the first committed.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _orders  # noqa: E402

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402

THRESHOLD = 50_000  # cents


def build(store: logstore.Store) -> lp.Processor:
    app = lp.Processor(store, "high-value-alerts")
    (app.stream("orders", value=lp.JSON)
     .filter(lambda o: o["amount"] >= THRESHOLD)
     .map(lambda o: {"alert": "high-value order", "order": o["order"], "user": o["user"],
                     "amount": o["amount"], "at": o["ts"]})
     .to("alerts", value=lp.JSON))
    return app


def main() -> int:
    args = _orders.arguments(__doc__)
    rows = _orders.orders(20_000, seed=11)
    with logstore.Store.open(args.dir, fsync="never") as store:
        _orders.publish_orders(store, "orders", rows[:12_000])
        first = build(store).run(until_caught_up=True)
        _orders.publish_orders(store, "orders", rows[12_000:])
        second = build(store).run(until_caught_up=True)
        alerts = _orders.read_topic(store, "alerts")
    print(f"run 1: {first['records_in']} orders, {first['records_out']} alerts; "
          f"run 2: {second['records_in'] - first['records_in']} more orders")
    for _key, a in alerts[:3]:
        print(f"  {a['order']:8} {a['user']:8} {a['amount'] / 100:>10,.2f}")
    expect = sorted(o["order"] for o in rows if o["amount"] >= THRESHOLD)
    got = sorted(a["order"] for _k, a in alerts)
    ok = got == expect
    print(f"{len(got)} alerts" + (" OK" if ok else f", {len(expect)} expected: MISMATCH"))
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"alerts": len(got), "dir": args.dir}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
