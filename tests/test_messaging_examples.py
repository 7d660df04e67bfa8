"""examples/rpc_resize.py, circuit_breaker.py, asyncio_service.py, metrics_alerts.py and
queue_patterns.py run to
completion and say OK (each checks its own results); what they leave in the store agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import logstore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _run(name: str, tmp_path) -> dict:
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--dir",
                          str(tmp_path / "ex"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "OK", out.stdout
    return json.loads(lines[-1])


def test_rpc_example(tmp_path):
    summary = _run("rpc_resize.py", tmp_path)
    assert summary["requests"] == 452 and summary["late"] == 1
    with logstore.Store.open(tmp_path / "ex", readonly=True) as s:
        assert s.metrics()["queues"]["rpc.resize"]["total"] == 0
        # 451 replies and the late one, all in the requester's inbox
        assert s.topic("rpc.inbox.0").partitions[0].end_offset == 452


def test_circuit_breaker_example(tmp_path):
    summary = _run("circuit_breaker.py", tmp_path)
    assert summary["charged"] == 200 and summary["opened"] >= 2
    with logstore.Store.open(tmp_path / "ex", readonly=True) as s:
        assert s.metrics()["queues"]["payments"]["total"] == 0


def test_asyncio_example(tmp_path):
    summary = _run("asyncio_service.py", tmp_path)
    assert summary["orders"] == 200
    with logstore.Store.open(tmp_path / "ex" / "store", readonly=True) as s:
        assert s.metrics()["topics"]["orders"]["records"] == 200
    with logstore.DurableQueue(str(tmp_path / "ex" / "receipts")) as q:
        assert q.qsize() == 0  # every receipt job durably done


def test_metrics_example(tmp_path):
    summary = _run("metrics_alerts.py", tmp_path)
    assert summary["alerts"][0] == "queue jobs: depth=2498 > 1000"


def test_queue_patterns_example(tmp_path):
    summary = _run("queue_patterns.py", tmp_path)
    assert all(summary[k] for k in ("priorities", "expiry", "overflow", "event_sourcing"))
    with logstore.Store.open(tmp_path / "ex", readonly=True) as s:
        assert s.topic("offers.dlq").partitions[0].end_offset == 10
        assert s.topic("readings.dlq").partitions[0].end_offset == 3
    # replay_key went through key indexes (built for the sealed segments it read)
    found = [f for _d, _s, fs in os.walk(tmp_path / "ex" / "topics" / "accounts") for f in fs
             if f.endswith(".keyindex")]
    assert found
