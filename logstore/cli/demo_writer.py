"""The demo's crash victim: ``python -m logstore.cli.demo_writer STORE FIRST_ORDER``.

Publishes orders durably (``fsync="always"``) into topic ``orders`` of the store, forever,
printing ``partition offset order`` once each publish is acknowledged, until ``logstore demo``
kills it with SIGKILL; the demo then reopens the store and reads back every acknowledged order.
"""

from __future__ import annotations

import json
import random
import sys
from typing import List

from ..views.store import Store


def main(argv: List[str]) -> None:
    directory, first = argv[0], int(argv[1])
    store = Store.open(directory, fsync="always", segment_bytes=64 * 1024,
                       dedup_window_s=0, retention_check_interval_s=0)
    orders = store.topic("orders")
    rng = random.Random(first)
    i = 0
    while True:
        user = f"user-{rng.randrange(200)}"
        value = json.dumps({"order": first + i, "user": user, "amount": rng.randint(1, 500)})
        p, off = orders.publish(value.encode(), key=user.encode(),
                                headers={"type": b"order-created"})
        print(p, off, first + i, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1:])
