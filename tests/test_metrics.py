"""store.metrics(), its Prometheus exposition, `logstore metrics` (printed and served) and the
threshold checks; figures after a restart and after a SIGKILL, from another process."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

import logstore
from logstore.cli import main
from logstore.diagnostics.metrics import (
    MetricsServer, breaches, parse_check, parse_address, store_metrics,
)
from logstore.views.counters import Timings, WindowCounter
from logstore.views.metrics import PROCESS_LOCAL, entities

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "messaging_child.py")
SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="([^"\\]|\\.)*"(,[a-z_]+="([^"\\]|\\.)*")*)?\})? '
                    r'(-?[0-9.e+-]+|NaN|[+-]Inf)$')


def parse_exposition(text):
    """{(name, frozenset(labels)): value} of a Prometheus text, checking every line's syntax,
    that each family has HELP and TYPE before its samples, and that a family is not split."""
    assert text.endswith("\n")
    samples, typed, done, current = {}, {}, set(), None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in done, f"family {name} split"
            if current:
                done.add(current)
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current and kind in ("counter", "gauge", "summary")
            typed[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            name = m.group(1)
            family = re.sub(r"_(sum|count)$", "", name) if name not in typed else name
            assert family == current, f"{name} outside its family {current}"
            labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            samples[(name, labels)] = float(m.group(7))
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def store(tmp_path):
    s = logstore.Store.open(tmp_path / "s", fsync="never", retention_check_interval_s=0)
    yield s
    s.close()


def shop(store):
    """A store with a topic, a group, a subscription and a queue in known states."""
    orders = store.topic("orders", partitions=2)
    for i in range(40):
        orders.publish(b"o%d" % i, key=b"user-%d" % (i % 4))
    g = store.consumer("billing", "orders")
    assert len(g.poll(500)) == 40
    g.commit({0: 5, 1: 7})
    store.subscribe("orders", "audit", start="earliest")
    q = store.queue("jobs", max_deliveries=1)
    for i in range(10):
        q.put(b"j%d" % i)
    acked = [q.get(timeout=5) for _ in range(4)]
    for m in acked:
        q.ack(m)
    q.get(timeout=5)  # in flight
    q.nack(q.get(timeout=5))  # max_deliveries=1: dead-lettered
    q.put(b"later", delay=3600)
    return g, q


def test_store_metrics_figures(store):
    g, q = shop(store)
    m = store.metrics()
    t = m["topics"]["orders"]
    assert t["records"] == 40 and t["end_offset"] == 40
    assert sum(p["records"] for p in t["partitions"].values()) == 40
    assert t["rate_in"] == pytest.approx(40 / 60)  # all published within the last minute
    billing = m["groups"]["billing"]["orders"]
    ends = {p: store.topic("orders").partitions[p].end_offset for p in (0, 1)}
    assert billing["partitions"][0]["lag"] == ends[0] - 5
    assert billing["lag"] == ends[0] - 5 + ends[1] - 7
    assert billing["lag_s"] > 0 and billing["polled_total"] == 40 and billing["errors_total"] == 0
    assert billing["members_here"] == 1
    audit = m["subscriptions"]["orders"]["audit"]
    assert audit["lag"] == 40
    jobs = m["queues"]["jobs"]
    assert (jobs["depth"], jobs["in_flight"], jobs["delayed"], jobs["total"]) == (4, 1, 1, 6)
    assert jobs["dead_lettered"] == 1 and jobs["dead_letter_topic"] == "jobs.dlq"
    assert jobs["lag"] == 6 and jobs["lag_s"] == jobs["oldest_age_s"] > 0
    assert (jobs["put_total"], jobs["delivered_total"], jobs["acked_total"],
            jobs["nacked_total"]) == (11, 6, 4, 1)
    assert jobs["errors_total"] == 1 and jobs["redelivered_total"] == 0
    proc = jobs["processing_s"]
    assert proc["count"] == 4 and 0 <= proc["p50_s"] <= proc["p90_s"] <= proc["p99_s"] \
        <= proc["max_s"]
    assert jobs["rate_out"] > 0
    kinds = {(k, n) for k, n, _ in entities(m)}
    assert {("topic", "orders"), ("partition", "orders/1"), ("group", "billing@orders"),
            ("subscription", "audit@orders"), ("queue", "jobs")} <= kinds


def test_redeliveries_and_ack_errors_are_counted(store):
    q = store.queue("jobs", visibility_timeout=0.05)
    q.put(b"x")
    first = q.get(timeout=5)
    again = None
    deadline = time.monotonic() + 30
    while again is None and time.monotonic() < deadline:
        again = q.get(timeout=0.1)  # redelivered once its visibility timeout passed
    assert again is not None and again.delivery_count == 2
    with pytest.raises(logstore.AckError):
        q.ack(first)  # expired delivery
    q.extend(again, 60)
    q.ack(again)
    jobs = store.metrics()["queues"]["jobs"]
    assert jobs["redelivered_total"] == 1 and jobs["ack_errors_total"] == 1
    assert jobs["acked_total"] == 1 and jobs["processing_s"]["count"] == 1
    assert jobs["total"] == 0


def test_prometheus_text_is_well_formed_and_matches_the_figures(store):
    shop(store)
    m = store.metrics()
    samples = parse_exposition(logstore.prometheus_text(m))
    assert value(samples, "logstore_topic_records", topic="orders") == 40
    assert value(samples, "logstore_queue_depth", queue="jobs") == 4
    assert value(samples, "logstore_queue_not_done", queue="jobs") == 6
    assert value(samples, "logstore_queue_dead_lettered", queue="jobs") == 1
    assert value(samples, "logstore_group_lag", group="billing", topic="orders",
                 kind="group") == m["groups"]["billing"]["orders"]["lag"]
    assert value(samples, "logstore_group_partition_committed_offset", group="billing",
                 topic="orders", kind="group", partition="1") == 7
    assert value(samples, "logstore_queue_processing_seconds_count", queue="jobs") == 4
    assert value(samples, "logstore_queue_processing_seconds", queue="jobs",
                 quantile="0.99") == pytest.approx(m["queues"]["jobs"]["processing_s"]["p99_s"])
    assert value(samples, "logstore_queue_acked_total", queue="jobs") == 4


def test_label_values_are_escaped():
    m = {"topics": {}, "queues": {}, "breakers": {'we"ird\\name\n': {"state": "open",
                                                                     "failures_total": 3}}}
    text = logstore.prometheus_text(m)
    samples = parse_exposition(text)
    assert value(samples, "logstore_breaker_state", breaker='we\\"ird\\\\name\\n') == 2
    assert value(samples, "logstore_breaker_failures_total",
                 breaker='we\\"ird\\\\name\\n') == 3


def test_read_only_figures_equal_the_writers_log_figures(store, tmp_path):
    shop(store)
    store.flush()
    mine = store.metrics()
    other = store_metrics(tmp_path / "s")  # read-only open, as another process would
    assert other["readonly"] and set(other["queues"]) == {"jobs"}
    for key in ("records", "end_offset"):
        assert other["topics"]["orders"][key] == mine["topics"]["orders"][key]
    assert other["groups"]["billing"]["orders"]["lag"] == mine["groups"]["billing"]["orders"]["lag"]
    jobs, mine_jobs = other["queues"]["jobs"], mine["queues"]["jobs"]
    for key in ("total", "dead_lettered", "in_flight"):
        assert jobs[key] == mine_jobs[key], key
    # From the event log, a message put with delay= was never delivered: it counts in depth
    # (only a nack's retry time is in the log); in this process it is "delayed".
    assert (mine_jobs["depth"], mine_jobs["delayed"]) == (4, 1)
    assert (jobs["depth"], jobs["delayed"]) == (5, 0)
    for key in PROCESS_LOCAL:
        assert key not in jobs and key not in other["groups"]["billing"]["orders"]
    assert "breakers" not in other and "requesters" not in other


def test_figures_survive_a_restart(tmp_path):
    root = tmp_path / "s"
    with logstore.Store.open(root, fsync="always") as s:
        shop(s)
        before = s.metrics()
    with logstore.Store.open(root, fsync="always") as s:
        after = s.metrics()  # the queue is not open in this store object: from its state
        jobs = after["queues"]["jobs"]
        assert jobs["total"] == before["queues"]["jobs"]["total"] == 6
        assert jobs["dead_lettered"] == 1 and jobs["delayed"] == 0 and jobs["depth"] == 5
        assert after["groups"]["billing"]["orders"]["lag"] == \
            before["groups"]["billing"]["orders"]["lag"]
        q = s.queue("jobs")  # open now: in flight before the close is ready again
        exact = s.metrics()["queues"]["jobs"]
        assert (exact["depth"], exact["in_flight"], exact["delayed"]) == (5, 0, 1)
        assert exact["put_total"] == 0  # process-local counters start again
        assert q.stats()["total"] == 6


def test_sigkill_then_logstore_metrics_from_another_process(tmp_path):
    root = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, CHILD, "metrics", root, "20", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        # While the writer lives: read-only, from this process.
        live = CliRunner().invoke(main, ["metrics", root, "--json"])
        assert live.exit_code == 0, live.output
        jobs = json.loads(live.output)["queues"]["jobs"]
        assert jobs["total"] == 13 and jobs["in_flight"] == 1 and jobs["depth"] == 12
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    res = CliRunner().invoke(main, ["metrics", root])
    assert res.exit_code == 0, res.output
    samples = parse_exposition(res.output)
    assert value(samples, "logstore_queue_not_done", queue="jobs") == 13  # 7 acks kept
    assert value(samples, "logstore_topic_records", topic="jobs") == 20
    assert ("logstore_queue_acked_total", frozenset({("queue", "jobs")})) not in samples
    with logstore.Store.open(root) as s:  # recovery agrees: 13 messages delivered again
        q = s.queue("jobs")
        got = [q.get(timeout=5).value for _ in range(13)]
        assert sorted(got) == sorted(b"%d" % i for i in range(7, 20))
        assert q.get(timeout=0.2) is None


def test_cli_metrics_errors(tmp_path):
    res = CliRunner().invoke(main, ["metrics", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a store" in res.output
    logstore.Store.open(tmp_path / "s").close()
    res = CliRunner().invoke(main, ["metrics", str(tmp_path / "s"), "--topic", "nope"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["metrics", str(tmp_path / "s"), "--serve", "x:y"])
    assert res.exit_code == 2 and "bad address" in res.output


def test_topic_directory_narrows_to_that_topic(store, tmp_path):
    shop(store)
    store.flush()
    res = CliRunner().invoke(main, ["metrics", str(tmp_path / "s" / "topics" / "jobs"),
                                    "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert set(m["topics"]) == {"jobs"} and set(m["queues"]) == {"jobs"} and m["groups"] == {}


def test_serve_answers_scrapes_and_stops_on_sigterm(store, tmp_path):
    shop(store)
    store.flush()
    proc = subprocess.Popen([sys.executable, "-m", "logstore.cli", "metrics",
                             str(tmp_path / "s"), "--serve", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=os.path.dirname(HERE))
    try:
        line = proc.stderr.readline().decode()
        url = re.search(r"(http://\S+/metrics)", line).group(1)
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parse_exposition(r.read().decode())
        assert value(samples, "logstore_queue_not_done", queue="jobs") == 6
        store.queue("jobs").put(b"one more")
        store.flush()
        with urllib.request.urlopen(url, timeout=30) as r:  # every scrape reads again
            assert value(parse_exposition(r.read().decode()), "logstore_queue_not_done",
                         queue="jobs") == 7
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=30)
        assert info.value.code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_metrics_server_in_process_has_process_local_figures(store):
    shop(store)
    server = MetricsServer(lambda: logstore.prometheus_text(store.metrics()),
                           ("127.0.0.1", 0)).start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as r:
            samples = parse_exposition(r.read().decode())
        assert value(samples, "logstore_queue_acked_total", queue="jobs") == 4
    finally:
        server.close()


def test_a_failing_source_answers_500():
    def source():
        raise RuntimeError("store gone")

    server = MetricsServer(source, "127.0.0.1:0").start()
    try:
        host, port = server.address
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30)
        assert info.value.code == 500 and b"store gone" in info.value.read()
    finally:
        server.close()


# ------------------------------------------------------------------------------ checks
def test_parse_check():
    c = parse_check("depth>1000")
    assert (c.name, c.figure, c.op, c.value) == (None, "depth", ">", 1000.0)
    c = parse_check(" jobs:lag_s >= 60.5 ")
    assert (c.name, c.figure, c.op, c.value) == ("jobs", "lag_s", ">=", 60.5)
    c = parse_check("billing@orders:lag!=0")
    assert c.name == "billing@orders"
    for bad in ("depth", "depth>>1", "depht>1", "depth>x", ">5", "lag_s=>3"):
        with pytest.raises(logstore.ConfigError):
            parse_check(bad)
    assert parse_address(":9108") == ("", 9108)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("9108") == ("", 9108)


def test_breaches_one_line_per_breach(store):
    shop(store)
    m = store.metrics()
    lines = breaches(m, [parse_check("depth>3"), parse_check("lag>10"),
                         parse_check("jobs:dead_lettered>0"), parse_check("orders:lag>0"),
                         parse_check("in_flight>5")])
    lag = m["groups"]["billing"]["orders"]["lag"]
    assert lines == [
        "queue jobs: depth=4 > 3",
        f"group billing@orders: lag={lag} > 10",
        "subscription audit@orders: lag=40 > 10",
        "queue jobs: dead_lettered=1 > 0",
    ]


def test_window_counter_and_timings():
    c = WindowCounter(window_s=10)
    t0 = c.created = 1000.0  # (a whole second: buckets are whole seconds)
    for s in range(25):
        c.add(2, now=t0 + s)
    assert c.total == 50
    assert c.rate(now=t0 + 24.5) == pytest.approx(2.0)  # the last 10 whole seconds: 20 events
    assert c.rate(now=t0 + 100) == 0.0
    t = Timings(samples=100)
    assert t.summary()["p50_s"] is None
    for i in range(1000):
        t.add(i / 1000)
    s = t.summary()
    assert s["count"] == 1000 and math.isclose(s["sum_s"], sum(i / 1000 for i in range(1000)))
    assert s["max_s"] == 0.999 and 0.9 <= s["p50_s"] <= s["p99_s"] <= 0.999  # recent ones


def test_a_damaged_queue_does_not_hide_the_other_figures(store, tmp_path):
    shop(store)
    store.queue("other").put(b"x")
    store.flush()
    os.remove(tmp_path / "s" / "internal" / "queues" / "other" / "logstore.meta")
    m = store_metrics(tmp_path / "s")
    assert "error" in m["queues"]["other"] and m["queues"]["jobs"]["total"] == 6
    samples = parse_exposition(logstore.prometheus_text(m))
    assert value(samples, "logstore_queue_error", queue="other") == 1
    lines = breaches(m, [parse_check("depth>100000")])
    assert len(lines) == 1 and lines[0].startswith("queue other: figures unavailable:")


# ------------------------------------------------------------------------------ stats --check
def test_stats_check_prints_one_line_per_breach_and_exits_1(store, tmp_path):
    shop(store)
    store.flush()
    root = str(tmp_path / "s")
    lag = store.metrics()["groups"]["billing"]["orders"]["lag"]
    res = CliRunner().invoke(main, ["stats", root, "--check", "depth>3", "--check",
                                    "billing@orders:lag>10", "--check", "dead_lettered>5"])
    assert res.exit_code == 1, res.output
    assert res.output.splitlines() == ["queue jobs: depth=5 > 3",
                                       f"group billing@orders: lag={lag} > 10"]
    # (read from the logs: the message put with delay= counts in depth, see the README)
    res = CliRunner().invoke(main, ["stats", root, "--check", "depth>1000", "--check",
                                    "lag_s>3600"])
    assert res.exit_code == 0 and res.output == ""
    res = CliRunner().invoke(main, ["stats", root, "--check", "depth>3", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["breaches"] == ["queue jobs: depth=5 > 3"]
    res = CliRunner().invoke(main, ["stats", root, "--topic", "orders", "--check", "depth>3"])
    assert res.exit_code == 0 and res.output == ""  # the queue is not in scope


def test_stats_check_usage_errors(store, tmp_path):
    shop(store)
    store.flush()
    root = str(tmp_path / "s")
    for bad in ("depth", "dpeth>1", "depth>>1"):
        res = CliRunner().invoke(main, ["stats", root, "--check", bad])
        assert res.exit_code == 2 and "bad check" in res.output, res.output
    res = CliRunner().invoke(main, ["stats", root + "/topics/orders/0", "--check", "lag>1"])
    assert res.exit_code == 2 and "needs a store" in res.output
