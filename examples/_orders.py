"""Sample data shared by the processing examples (not an example itself)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms
USERS = [f"user-{i}" for i in range(20)]


def orders(n: int, seed: int = 7, minutes: int = 10) -> List[Dict[str, Any]]:
    """``n`` orders spread over ``minutes`` of event time (``ts``, ms), a tenth of them up to
    20 s out of order; amounts in cents."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * minutes * 60_000 // n
        if rnd.random() < 0.1:
            ts = max(T0, ts - rnd.randrange(20_000))
        out.append({"order": f"o-{i}", "user": rnd.choice(USERS), "ts": ts,
                    "amount": rnd.choice([rnd.randrange(100, 5_000), rnd.randrange(100, 90_000)])})
    return out


def publish_orders(store: logstore.Store, topic: str, rows: List[Dict[str, Any]],
                   key: str = "order", partitions: int = 4) -> None:
    t = store.topic(topic, partitions=partitions)
    for i in range(0, len(rows), 500):
        chunk = rows[i:i + 500]
        t.publish_batch([json.dumps(r).encode() for r in chunk],
                        keys=[r[key].encode() for r in chunk])


def arguments(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    if args.dir is None:
        args.dir = tempfile.mkdtemp(prefix="logstore-processing-")
    return args


def read_topic(store: logstore.Store, name: str) -> List[Any]:
    return [(r.key, json.loads(r.value)) for log in store.topic(name).partitions
            for r in log.replay()]
