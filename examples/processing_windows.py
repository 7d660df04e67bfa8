"""Per-user 60-second tumbling windows: events and total value per user per minute.

    python examples/processing_windows.py [--dir DIR]

Publishes 20,000 orders (keyed by user, event time in the value, a tenth of them up to 20 s out
of order) into topic ``orders``, then runs a processor that counts them and sums their amounts
per user in 60-second tumbling windows of event time (10 s grace for late orders), and writes one
result per user and minute, once the minute has closed, to ``orders-per-minute``. Orders later
than the grace go to ``orders-late``. The results are checked against a plain computation.

The orders are keyed by user, so each user's orders are in one partition and no repartitioning
is needed. (Windowing by something else than the key: ``.key_by(lambda o: o["user"])`` before the
window; see README, "Stream processing", about grace periods after a repartition.)
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _orders  # noqa: E402

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402


def build(store: logstore.Store) -> lp.Processor:
    app = lp.Processor(store, "orders-per-minute")
    per_minute = (
        app.stream("orders", value=lp.JSON, timestamp=lambda o: o["ts"])
        .tumbling_window(60_000, grace_ms=10_000)
        .agg(events=lp.Count(), total=lp.Sum(lambda o: o["amount"])))
    per_minute.final().to("orders-per-minute", value=lp.JSON)
    per_minute.late().to("orders-late", value=lp.JSON)
    return app


def main() -> int:
    args = _orders.arguments(__doc__)
    rows = _orders.orders(20_000)
    with logstore.Store.open(args.dir, fsync="never") as store:
        _orders.publish_orders(store, "orders", rows, key="user")
        stats = build(store).run(until_caught_up=True)
        results = _orders.read_topic(store, "orders-per-minute")
        late = _orders.read_topic(store, "orders-late")
    print(f"{stats['records_in']} records in, {len(results)} (user, minute) results, "
          f"{stats['late']} late orders")
    for key, r in sorted(results, key=lambda kv: (kv[1]["start"], kv[0]))[:5]:
        print(f"  {key.decode():8} minute {(r['start'] - _orders.T0) // 60_000}: "
              f"{r['value']['events']} orders, {r['value']['total'] / 100:,.2f}")
    # Check: every order that was not late is in exactly one result; the last minute stays
    # open (the stream time never passes its end + grace), so it is not emitted.
    counted = sum(r["value"]["events"] for _k, r in results)
    closed = {r["start"] for _k, r in results}
    late_ids = {o["order"] for _k, o in late}
    expect = sum(1 for o in rows if o["order"] not in late_ids
                 and o["ts"] - o["ts"] % 60_000 in closed)
    ok = counted == expect and len(late) == stats["late"]
    print("OK" if ok else f"MISMATCH: {counted} counted, {expect} expected")
    if args.json:
        print(json.dumps({"results": len(results), "late": stats["late"], "counted": counted,
                          "dir": args.dir}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
