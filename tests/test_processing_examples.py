"""Every examples/processing_*.py runs to completion, says OK (each checks its own results),
and leaves the topics it describes; their processors show no lag afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import logstore
from logstore import processing as lp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _run(name: str, tmp_path) -> dict:
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--dir",
                          str(tmp_path / "store"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "OK", out.stdout
    return json.loads(lines[-1])


def _described(tmp_path, processor: str) -> dict:
    with logstore.Store.open(tmp_path / "store", readonly=True) as store:
        (d,) = [d for d in lp.describe(store) if d["processor"] == processor]
        return d


def test_windows_example(tmp_path):
    summary = _run("processing_windows.py", tmp_path)
    assert summary["results"] > 100 and summary["late"] > 0
    d = _described(tmp_path, "orders-per-minute")
    assert d["lag"] == 0 and d["late"] == summary["late"]
    with logstore.Store.open(tmp_path / "store", readonly=True) as store:
        results = [json.loads(r.value) for log in store.topic("orders-per-minute").partitions
                   for r in log.replay()]
        assert sum(r["value"]["events"] for r in results) == summary["counted"]
        assert all(r["end"] - r["start"] == 60_000 for r in results)


def test_alerts_example(tmp_path):
    summary = _run("processing_alerts.py", tmp_path)
    with logstore.Store.open(tmp_path / "store", readonly=True) as store:
        alerts = [json.loads(r.value) for log in store.topic("alerts").partitions
                  for r in log.replay()]
    assert len(alerts) == summary["alerts"] > 0
    assert all(a["amount"] >= 50_000 for a in alerts)
    assert len({a["order"] for a in alerts}) == len(alerts)  # none twice
    assert _described(tmp_path, "high-value-alerts")["lag"] == 0


def test_dedup_example(tmp_path):
    summary = _run("processing_dedup.py", tmp_path)
    assert summary["unique"] == 10_000 < summary["in"]
    assert 0 < summary["state"] < summary["unique"]  # the time-to-live bounds the state
    d = _described(tmp_path, "payments-dedup")
    assert d["lag"] == 0 and len(d["stages"]) == 2  # re-keyed through a repartition topic


def test_enrich_example(tmp_path):
    summary = _run("processing_enrich.py", tmp_path)
    assert summary["enriched"] == 4_000
    assert _described(tmp_path, "orders-enrich")["lag"] == 0


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(EXAMPLES)
                                        if n.startswith("processing_")))
def test_every_processing_example_is_tested(name):
    tested = {"processing_windows.py", "processing_alerts.py", "processing_dedup.py",
              "processing_enrich.py"}
    assert name in tested
