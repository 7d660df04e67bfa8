"""Metrics and alerts: watch a queue's depth and a consumer group's lag.

    python examples/metrics_alerts.py [--dir DIR] [--json]

A producer puts 3,000 jobs on queue ``jobs`` and publishes 5,000 events; a slow worker acks 500
jobs and a consumer group commits part of the events. Then:

* ``store.metrics()`` in this (the working) process: depth, in flight, lag in records and
  seconds, dead letters, acks per second, processing-time percentiles (get to ack);
* the alert thresholds ``depth>1000`` and ``lag_s>0.5`` (what ``logstore stats PATH --check
  'depth>1000' --check 'lag_s>0.5'`` runs from cron), one line per breach;
* a Prometheus scrape endpoint serving this process's figures (``MetricsServer``), scraped once;
* ``logstore metrics PATH`` from another process: the same depth and lag, read from the logs,
  without the process-local figures; and ``logstore stats PATH --check ...`` as cron runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402
from logstore.diagnostics.metrics import MetricsServer, breaches, parse_check  # noqa: E402


def sample(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + "{") or
                x.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="logstore-metrics-")
    with logstore.Store.open(root, fsync="never") as store:
        q = store.queue("jobs", max_deliveries=1)
        for i in range(3000):
            q.put(b"job-%d" % i)
        events = store.topic("events", partitions=2)
        events.publish_batch([b"e%d" % i for i in range(5000)])
        for _ in range(500):
            msg = q.get(timeout=5)
            time.sleep(0.0002)  # the work
            q.ack(msg)
        q.nack(q.get(timeout=5))  # max_deliveries=1: dead-lettered
        in_flight = q.get(timeout=5)
        g = store.consumer("analytics", "events")
        g.poll(1200)
        g.commit()
        time.sleep(0.6)  # the oldest unconsumed event is now older than the lag threshold

        m = store.metrics()
        jobs, lag = m["queues"]["jobs"], m["groups"]["analytics"]["events"]
        proc = jobs["processing_s"]
        print(f"queue jobs: depth {jobs['depth']}, in flight {jobs['in_flight']}, dead-lettered "
              f"{jobs['dead_lettered']}, oldest {jobs['oldest_age_s']:.1f} s, "
              f"{jobs['rate_out']:.0f} acks/s, processing p50 {proc['p50_s'] * 1e3:.2f} ms "
              f"p99 {proc['p99_s'] * 1e3:.2f} ms ({proc['count']} acked)")
        print(f"group analytics on events: lag {lag['lag']} records, {lag['lag_s']:.1f} s")
        alerts = breaches(m, [parse_check("depth>1000"), parse_check("lag_s>0.5")])
        for line in alerts:
            print("ALERT", line)

        server = MetricsServer(lambda: logstore.prometheus_text(store.metrics()),
                               "127.0.0.1:0").start()
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as r:
            scraped = r.read().decode()
        server.close()
        print(f"scraped http://{host}:{port}/metrics: {len(scraped.splitlines())} lines, "
              f"logstore_queue_acked_total {sample(scraped, 'logstore_queue_acked_total'):.0f}")
        q.ack(in_flight)
        store.flush()
        cli = subprocess.run([sys.executable, "-m", "logstore.cli", "metrics", root, "--json"],
                             capture_output=True, text=True, timeout=120)
        other = json.loads(cli.stdout)
        o_jobs = other["queues"]["jobs"]
        print(f"logstore metrics (another process): depth {o_jobs['depth']}, lag "
              f"{other['groups']['analytics']['events']['lag']}, process-local acked_total: "
              f"{o_jobs.get('acked_total', 'absent')}")
        cron = subprocess.run([sys.executable, "-m", "logstore.cli", "stats", root, "--check",
                               "depth>1000", "--check", "dead_lettered>0"],
                              capture_output=True, text=True, timeout=120)
        print(f"logstore stats --check 'depth>1000' --check 'dead_lettered>0': exit "
              f"{cron.returncode}")
        for line in cron.stdout.splitlines():
            print("  " + line)
    ok = (jobs["depth"] == 2498 and jobs["in_flight"] == 1 and jobs["dead_lettered"] == 1
          and proc["count"] == 500 and lag["lag"] == 3800
          and [a.split("=")[0] for a in alerts] == [
              "queue jobs: depth", "group analytics@events: lag_s", "queue jobs: lag_s"]
          and alerts[0] == "queue jobs: depth=2498 > 1000"
          and sample(scraped, "logstore_queue_acked_total") == 500
          and o_jobs["depth"] == 2498 and "acked_total" not in o_jobs
          and other["groups"]["analytics"]["events"]["lag"] == 3800
          and cron.returncode == 1 and cron.stdout.splitlines() == [
              "queue jobs: depth=2498 > 1000", "queue jobs: dead_lettered=1 > 0"])
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"alerts": alerts, "dir": root}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
