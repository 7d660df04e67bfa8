"""Enrichment: a stream-table join of ``orders`` with the compacted table topic ``users``.

    python examples/processing_enrich.py [--dir DIR]

Topic ``users`` holds the latest profile per user id (a table: the store runs with
``cleanup_policy="compact"``, so old versions of a profile are compacted away; a tombstone
deletes a user). The processor joins each order with its user's current profile (Kafka
Streams' ``KStream.join(KTable)``, here a left join: orders of unknown users pass with
``"tier": null``) and writes the enriched orders to ``orders-enriched``. Between two runs a
user is upgraded to gold: later orders see the new tier.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _orders  # noqa: E402

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402


def enrich(order, user):
    return {**order, "name": user and user["name"], "tier": user and user["tier"]}


def build(store: logstore.Store) -> lp.Processor:
    app = lp.Processor(store, "orders-enrich")
    users = app.table("users", value=lp.JSON)
    (app.stream("orders", value=lp.JSON)
     .join(users, enrich, how="left", on=lambda o: o["user"])
     .to("orders-enriched", value=lp.JSON))
    return app


def publish_users(store: logstore.Store, tiers) -> None:
    t = store.topic("users", partitions=2)
    t.publish_batch([json.dumps({"name": u.title(), "tier": tier}).encode()
                     for u, tier in tiers.items()], keys=[u.encode() for u in tiers])


def main() -> int:
    args = _orders.arguments(__doc__)
    rows = _orders.orders(4_000, seed=5)
    # Every record of a compacted store needs a key: orders are keyed by order id.
    with logstore.Store.open(args.dir, fsync="never", cleanup_policy="compact") as store:
        tiers = {u: "silver" for u in _orders.USERS[:-1]}  # the last user has no profile
        publish_users(store, tiers)
        _orders.publish_orders(store, "orders", rows[:2_000])
        build(store).run(until_caught_up=True)
        publish_users(store, {"user-0": "gold"})  # a new version of one profile
        _orders.publish_orders(store, "orders", rows[2_000:])
        build(store).run(until_caught_up=True)
        out = {o["order"]: o for _k, o in _orders.read_topic(store, "orders-enriched")}
    ok = len(out) == len(rows)
    for i, o in enumerate(rows):
        e = out.get(o["order"])
        want = None if o["user"] == _orders.USERS[-1] else (
            "gold" if o["user"] == "user-0" and i >= 2_000 else "silver")
        ok = ok and e is not None and e["tier"] == want and e["amount"] == o["amount"]
    sample = [out[o["order"]] for o in rows if o["user"] == "user-0"]
    print(f"{len(out)} orders enriched; user-0's first order: tier {sample[0]['tier']}, "
          f"last: tier {sample[-1]['tier']}")
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"enriched": len(out), "dir": args.dir}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
