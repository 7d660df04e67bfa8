"""A circuit breaker in front of a flaky payment provider.

    python examples/circuit_breaker.py [--dir DIR] [--json]

Queue ``payments`` holds 200 payments; two worker threads charge them through a
``CircuitBreaker`` (3 failures within 10 s open it, 0.3 s cool-down). The provider goes down
for a while: the workers' first failures open the breaker and they stop taking payments
(the failed ones stay in flight until their 0.5 s visibility timeout, then come back); after the
cool-down one probe fails (still down) and the breaker opens again; once the provider is back
the next probe succeeds, the breaker closes and the rest flows. Every payment is charged
exactly once by the provider (it deduplicates by payment id, as a real one would by an
idempotency key) and acked; the breaker's history is in ``store.metrics()["breakers"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402


class Provider:
    """Charges payments; down from the 20th call until it is brought back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.charged: dict = {}
        self.up = threading.Event()
        self.up.set()

    def charge(self, payment_id: str, amount: int) -> None:
        with self.lock:
            self.calls += 1
            if self.calls == 20:
                self.up.clear()
        if not self.up.is_set():
            raise ConnectionError("payment provider unavailable")
        with self.lock:
            self.charged.setdefault(payment_id, amount)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="logstore-breaker-")
    provider = Provider()
    transitions = []
    with logstore.Store.open(root, fsync="never") as store:
        q = store.queue("payments", visibility_timeout=0.5, max_deliveries=100)
        for i in range(200):
            q.put(json.dumps({"id": f"pay-{i}", "amount": 100 + i}).encode())
        breaker = logstore.CircuitBreaker("payments", failures=3, window_s=10,
                                          cooldown_s=0.3, store=store)

        def handle(msg: logstore.views.workqueue.Message) -> None:
            p = json.loads(msg.value)
            provider.charge(p["id"], p["amount"])

        workers = [threading.Thread(target=breaker.run, args=(q, handle),
                                    kwargs={"timeout": 0.05}) for _ in range(2)]
        for w in workers:
            w.start()
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = breaker.state
            if state != last:  # (sampled: a short half-open may pass unseen)
                transitions.append(state)
                print(f"breaker {state}")
                last = state
            if breaker.metrics()[2]["opened_total"] >= 2 and not provider.up.is_set():
                provider.up.set()  # the provider is back
                print("provider back up")
            if q.stats()["total"] == 0:
                break
            time.sleep(0.005)
        breaker.stop()
        for w in workers:
            w.join()
        figures = store.metrics()
    b = figures["breakers"]["payments"]
    jobs = figures["queues"]["payments"]
    print(f"{len(provider.charged)} payments charged by {provider.calls} provider calls; "
          f"breaker opened {b['opened_total']} times, {b['probes_total']} probes, "
          f"{b['failures_total']} failures; queue: {jobs['total']} left, "
          f"{jobs['redelivered_total']} redeliveries, {jobs['errors_total']} errors")
    ok = (sorted(provider.charged) == sorted(f"pay-{i}" for i in range(200))
          and all(provider.charged[f"pay-{i}"] == 100 + i for i in range(200))
          and jobs["total"] == 0 and b["opened_total"] >= 2 and b["probes_total"] >= 1
          and b["state"] == "closed" and "open" in transitions)
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"opened": b["opened_total"], "charged": len(provider.charged),
                          "dir": root}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
