"""Operator CLI over store roots: ``--topic``/``--partition``, store ``stats`` (groups, lag,
subscriptions, queue depth), ``compact``, ``retention``, ``recover`` of a store, and the
``demo`` end to end in a real process.

In-process runs use click's CliRunner (as tests/test_cli.py); a store opened by the test itself
plays the writer where one is needed (a read-only command must work beside it, a writing one
must fail with exit status 3).
"""

import base64
import json
import os
import subprocess
import sys
import time

import pytest

import logstore
from helpers import flip, lines, run
from logstore.diagnostics.targets import resolve_targets
from logstore.views.names import partition_for_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
T0 = 1_700_000_000_000
USERS = 17  # crc32c spreads these over 3 partitions as 6, 7 and 4 keys


def jsonl(result):
    return [json.loads(x) for x in lines(result)]


def snapshot(directory):
    out = {}
    for base, dirs, files in os.walk(directory):
        for name in files:
            p = os.path.join(base, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[os.path.relpath(p, directory)] = (f.read(), st.st_mtime_ns)
    return out


# The lease logs (committed offsets) of build_store's group and subscription, per partition.
LEASE_LOGS = [f"internal/groups/orders/{g}/{p}" for g in ("__sub__audit", "billing")
              for p in range(3)]


def build_store(root, close=True):
    """orders (3 partitions, keyed), group billing (100 read, committed), subscription audit
    (everything), queue jobs (10 put, 3 acked, 1 nacked for an hour, 1 in flight)."""
    store = logstore.Store.open(root, segment_bytes=2048, retention_check_interval_s=0,
                                dedup_window_s=0)
    orders = store.topic("orders", partitions=3)
    for i in range(300):
        orders.publish(b'{"n": %d}' % i, key=b"user-%d" % (i % USERS),
                       headers={"type": b"created"}, timestamp_ms=T0 + i * 1000)
    billing = store.consumer("billing", "orders")
    got = 0
    while got < 100:
        got += len(billing.poll(100 - got))
    billing.commit()
    billing.close()
    audit = store.subscribe("orders", "audit", start="earliest")
    while audit.poll(500):
        pass
    audit.commit()
    audit.close()
    q = store.queue("jobs", max_deliveries=5, visibility_timeout=600)
    for i in range(10):
        q.put(b"job-%d" % i)
    msgs = [q.get(timeout=1) for _ in range(5)]
    for m in msgs[:3]:
        q.ack(m)
    q.nack(msgs[3], delay=3600)
    # msgs[4] stays in flight
    if close:
        store.close()
        return None, None
    return store, q


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli_store") / "shop")
    build_store(root)
    return root


def api_records(root, topic):
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as store:
        t = store.topic(topic)
        return {p: [(r.offset, r.key, r.value) for r in log.replay()]
                for p, log in enumerate(t.partitions)}


# ------------------------------------------------------------------------------ targets
def test_resolve_targets_of_a_store(shop):
    labels = [t.label for t in resolve_targets(shop)]
    assert labels == ["jobs/0", "jobs.dlq/0", "orders/0", "orders/1", "orders/2"]
    labels = [t.label for t in resolve_targets(shop, internal=True)]
    assert labels[5:] == ["internal/offsets", "internal/queues/jobs"] + LEASE_LOGS
    [t] = resolve_targets(shop, "orders", 2)
    assert (t.topic, t.partition, t.expanded) == ("orders", 2, True)
    assert t.log_dir == os.path.join(shop, "topics", "orders", "2")
    # A topic directory is that topic; a partition directory is one log that knows its place.
    assert [t.label for t in resolve_targets(os.path.join(shop, "topics", "orders"))] == \
        ["orders/0", "orders/1", "orders/2"]
    [t] = resolve_targets(os.path.join(shop, "topics", "orders", "1"))
    assert (t.topic, t.partition, t.expanded) == ("orders", 1, False)


def test_usage_errors_for_store_options(shop, tmp_path):
    plain = str(tmp_path / "plain")
    with logstore.Log.open(plain) as log:
        log.append(b"x")
    for args, text in (
        (["dump", shop, "--topic", "nope"], "no topic 'nope' in store"),
        (["dump", shop, "--partition", 1], "--partition needs --topic"),
        (["verify", shop, "--topic", "orders", "--partition", 3], "has no partition 3"),
        (["replay", plain, "--topic", "orders"], "need a store root"),
        (["stats", shop, "--topic", "nope"], "no topic 'nope'"),
        (["produce", shop], "name the topic with --topic"),
        (["produce", shop, "--topic", "nope"], "no topic 'nope'"),
        (["retention", os.path.join(shop, "topics", "orders", "0")], "--topic orders"),
    ):
        r = run(*args, input="x\n")
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ reading
def test_dump_store_root_topic_and_partition(shop):
    want = api_records(shop, "orders")
    r = run("dump", shop, "--topic", "orders", "--partition", 1, "--json", "--values", "text")
    assert r.exit_code == 0, r.stderr
    got = jsonl(r)
    assert {(g["topic"], g["partition"]) for g in got} == {("orders", 1)}
    assert [(g["offset"], g["key"].encode(), g["value"].encode()) for g in got] == want[1]
    # Text: a heading per segment names the partition; every partition of every topic.
    r = run("dump", shop)
    assert r.exit_code == 0
    heads = [x for x in lines(r) if x.startswith("# ")]
    assert heads[0].startswith("# jobs/0 00000000000000000000.log (")
    assert {h.split()[1] for h in heads} == {"jobs/0", "jobs.dlq/0", "orders/0", "orders/1",
                                            "orders/2"}
    assert "# jobs.dlq/0 00000000000000000000.log (active, 0 bytes)" in lines(r)
    assert sum(1 for x in lines(r) if x.startswith("offset=")) == 310
    # --max applies per partition; batches and index entries carry the partition too.
    r = run("dump", shop, "--topic", "orders", "--max", 2)
    assert sum(1 for x in lines(r) if x.startswith("offset=")) == 6
    r = run("dump", shop, "--topic", "orders", "--batches", "--json")
    assert {b["partition"] for b in jsonl(r)} == {0, 1, 2}
    r = run("dump", shop, "--topic", "orders", "--partition", 0, "--index")
    assert r.exit_code == 0 and lines(r)[0].startswith("# orders/0 00000000000000000000.log")


def test_replay_consume_tail_store(shop):
    want = api_records(shop, "orders")
    r = run("replay", shop, "--topic", "orders", "--values", "text")
    assert r.exit_code == 0, r.stderr
    got = jsonl(r)
    # Partition after partition, each in offset order.
    assert [(g["partition"], g["offset"]) for g in got] == [
        (p, off) for p in sorted(want) for off, _, _ in want[p]]
    assert all(g["topic"] == "orders" and g["headers"] == {"type": "created"} for g in got)
    for g in got:
        assert partition_for_key(g["key"].encode(), 3) == g["partition"]
    # The topic directory is the same as --topic; offsets and time apply per partition.
    r2 = run("replay", os.path.join(shop, "topics", "orders"), "--values", "text")
    assert r2.stdout == r.stdout
    r = run("replay", shop, "--topic", "orders", "--from-offset", 90, "--to-offset", 95)
    assert [(g["partition"], g["offset"]) for g in jsonl(r)] == [
        (p, o) for p in range(3) for o in range(90, 95) if o < len(want[p])]
    r = run("replay", shop, "--topic", "orders", "--from-time", T0 + 297_000)
    assert sorted(base64.b64decode(g["value"]) for g in jsonl(r)) == [
        b'{"n": 297}', b'{"n": 298}', b'{"n": 299}']
    # A partition directory: objects know their topic and partition.
    r = run("replay", os.path.join(shop, "topics", "orders", "2"))
    assert {(g["topic"], g["partition"]) for g in jsonl(r)} == {("orders", 2)}
    # consume: --max in all.
    r = run("consume", shop, "--topic", "orders", "--max", 5, "--values", "text")
    assert [(g["partition"], g["offset"]) for g in jsonl(r)] == [(0, o) for o in range(5)]
    r = run("consume", shop, "--topic", "orders", "--from-offset", 10_000)
    assert r.exit_code == 0 and r.stdout == ""  # every partition ends before it: nothing
    r = run("consume", shop, "--topic", "orders", "--partition", 0, "--from-offset", 10_000)
    assert r.exit_code == 2 and "past the end" in r.stderr
    # tail: the last N over all partitions, by time, labelled.
    r = run("tail", shop, "--topic", "orders", "-n", 4)
    assert [x.split()[0] for x in lines(r)] == [
        f"orders/{partition_for_key(b'user-%d' % (i % USERS), 3)}" for i in range(296, 300)]
    assert lines(r)[-1].endswith('value="{\\"n\\": 299}"')
    r = run("tail", shop, "--topic", "orders", "-n", 1, "--json", "--values", "text")
    [g] = jsonl(r)
    assert (g["topic"], g["value"]) == ("orders", '{"n": 299}')


def test_read_only_commands_change_nothing_in_a_store(shop):
    before = snapshot(shop)
    time.sleep(0.01)
    for args in (["verify", shop], ["verify", shop, "--json"], ["stats", shop],
                 ["stats", shop, "--json", "--internal"], ["dump", shop], ["recover", shop],
                 ["tail", shop], ["replay", shop], ["consume", shop],
                 ["dump", shop, "--index"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.stdout, r.stderr)
    assert snapshot(shop) == before


# ------------------------------------------------------------------------------ verify
def test_verify_store_root_covers_partitions_and_internal_logs(shop, tmp_path):
    r = run("verify", shop)
    assert r.exit_code == 0, r.stdout
    heads = [x.split(":")[0] for x in lines(r) if not x.startswith(" ")]
    assert heads[:-1] == ["jobs/0", "jobs.dlq/0", "orders/0", "orders/1", "orders/2",
                          "internal/offsets", "internal/queues/jobs"] + LEASE_LOGS
    assert lines(r)[-1] == f"OK: no problems found in 13 logs of {shop}"
    doc = json.loads(run("verify", shop, "--json").stdout)
    assert doc["ok"] and [x["label"] for x in doc["logs"]][5:] == [
        "internal/offsets", "internal/queues/jobs"] + LEASE_LOGS
    assert doc["logs"][2]["topic"] == "orders" and doc["logs"][2]["partition"] == 0
    assert doc["logs"][-1]["internal"] is True
    # --topic: that topic only, no internal logs.
    r = run("verify", shop, "--topic", "orders", "--partition", 2)
    assert r.exit_code == 0 and lines(r)[0].startswith("orders/2: ")
    assert lines(r)[-1] == f"OK: no problems found in 1 log of {shop}"
    # Damage in a sealed segment of orders/1 and a missing queue event log.
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(shop, copy)
    seg = os.path.join(copy, "topics", "orders", "1", "00000000000000000000.log")
    flip(seg, 100)
    shutil.rmtree(os.path.join(copy, "topics", "orders", "2"))
    r = run("verify", copy)
    assert r.exit_code == 1
    assert f"PROBLEM [damaged] {seg} at byte " in r.stdout
    assert "orders/2: missing" in r.stdout
    assert lines(r)[-1].startswith("CORRUPT: 2 problems in orders/1, orders/2 (2 of 13 logs;")


# ------------------------------------------------------------------------------ stats
def test_stats_store_groups_subscriptions_and_queue_depth(tmp_path):
    root = str(tmp_path / "shop")
    build_store(root, close=True)
    # Reopen as the writer and keep it open: stats reads beside it (committed offsets and queue
    # events after the last checkpoint, which the close above wrote).
    store = logstore.Store.open(root, retention_check_interval_s=0, dedup_window_s=0)
    try:
        q = store.queue("jobs", max_deliveries=5, visibility_timeout=600)
        m = q.get(timeout=1)  # in flight now, its delivery event is after the checkpoint
        q.ack(q.get(timeout=1))
        orders = store.topic("orders")
        orders.publish(b"late", key=b"user-1")
        live = q.stats()
        ends = orders.end_offsets()
        r = run("stats", root, "--json")
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        [billing] = doc["groups"]
        assert billing["group"] == "billing" and billing["topic"] == "orders"
        committed = store.groups()["billing"]["orders"]
        assert {x["partition"]: x["committed"] for x in billing["partitions"]} == committed
        assert {x["partition"]: x["lag"] for x in billing["partitions"]} == {
            p: ends[p] - committed[p] for p in ends}
        assert billing["lag"] == sum(ends.values()) - sum(committed.values()) == 301 - 100
        [audit] = doc["subscriptions"]
        assert audit["subscription"] == "audit" and audit["lag"] == 1  # the late order
        [jobs] = doc["queues"]
        # 10 put: 4 acked, 1 nacked for an hour (delayed), 1 in flight, 4 never delivered.
        assert jobs["not_done"] == live["total"] == len(q) == 6
        assert jobs["delayed"] == live["delayed"] == 1
        # Delivered and not done: the nacked one and the one in flight now (it was in flight
        # when the store was closed too, and was redelivered after the reopen).
        assert jobs["unacked"] == 2
        assert jobs["dead_letter_topic"] == "jobs.dlq" and jobs["dead_lettered"] == 0
        assert jobs["events_replayed"] >= 3
        assert jobs["oldest_age_s"] is not None
        internal = {g["group"] for g in doc["internal"]["groups"]}
        assert internal == {"__queue__jobs"}
        assert [x["log"] for x in doc["internal"]["logs"]] == ["internal/offsets",
                                                              "internal/queues/jobs"] + LEASE_LOGS
        orders_doc = next(t for t in doc["topics"] if t["topic"] == "orders")
        assert [x["end_offset"] for x in orders_doc["partition_stats"]] == [ends[p]
                                                                          for p in range(3)]
        assert orders_doc["totals"]["records"] == 301
        # Text: aligned tables; internal groups only with --internal.
        r = run("stats", root)
        out = r.stdout
        assert out.startswith(f"store {root} (id {store.id})")
        assert "consumer groups:" in out
        # (issue 16: columns committed, start, end, lag, skipped; a total row: lag, skipped)
        row = next(x for x in lines(r) if x.split()[:3] == ["billing", "orders", "total"])
        assert row.split()[-2:] == ["201", "0"]
        assert any(x.split()[:3] == ["audit", "orders", "total"] and x.split()[-2] == "1"
                   for x in lines(r))
        qrow = next(x for x in lines(r) if x.split()[:1] == ["jobs"])
        assert qrow.split()[1:5] == ["1", "6", "2", "1"]
        assert "__queue__" not in out and "internal logs" not in out
        r = run("stats", root, "--internal")
        assert "__queue__jobs" in r.stdout and "internal/queues/jobs" in r.stdout
        # --topic/--partition narrow everything.
        doc = json.loads(run("stats", root, "--topic", "orders", "--partition", 1,
                             "--json").stdout)
        assert [t["topic"] for t in doc["topics"]] == ["orders"]
        assert [x["partition"] for x in doc["topics"][0]["partition_stats"]] == [1]
        assert [x["partition"] for x in doc["groups"][0]["partitions"]] == [1]
        assert doc["queues"] == []
        q.ack(m)
    finally:
        store.close()
    # After close (checkpoint written): the same numbers from the checkpoint alone.
    doc = json.loads(run("stats", root, "--json").stdout)
    assert doc["queues"][0]["not_done"] == 5 and doc["queues"][0]["delayed"] == 1


def test_stats_queue_state_matches_the_queue_through_dead_letters(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, retention_check_interval_s=0, dedup_window_s=0) as store:
        q = store.queue("work", max_deliveries=2, visibility_timeout=600, partitions=2)
        for i in range(20):
            q.put(b"w%d" % i, key=b"k%d" % i)
        for _ in range(30):
            m = q.get(timeout=0.2)
            if m is None:
                break
            if m.value in (b"w3", b"w4"):
                m.nack(delay=0)
            elif int(m.value[1:]) % 2:
                m.ack()
        live = q.stats()
        doc = json.loads(run("stats", root, "--json").stdout)
        [st] = doc["queues"]
        assert st["not_done"] == live["total"]
        assert st["dead_letter_topic"] == "work.dlq"
        assert st["dead_lettered"] == live["dead_lettered"] == 2
        assert q.redrive() == 2
        doc = json.loads(run("stats", root, "--json").stdout)
        assert doc["queues"][0]["dead_lettered"] == 0
        assert doc["queues"][0]["not_done"] == len(q)


# ------------------------------------------------------------------------------ produce
def test_produce_into_a_store_topic(tmp_path):
    root = str(tmp_path / "s")
    r = run("produce", root, "--topic", "events", "--create", "--partitions", 2,
            "--key", "user-3", input="a\nb\nc\n")
    assert r.exit_code == 0, r.stderr
    p = partition_for_key(b"user-3", 2)
    assert f"produced 3 records to {root} topic events: events/{p} offsets 0..2" in r.stderr
    r = run("produce", root, "--topic", "events", "--partition", 1 - p, "--batch", 1,
            input="x\ny\n")
    assert r.exit_code == 0, r.stderr
    recs = api_records(root, "events")
    assert [(o, v) for o, _, v in recs[p]] == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert [(o, k, v) for o, k, v in recs[1 - p]] == [(0, None, b"x"), (1, None, b"y")]
    with logstore.Store.open(root, retention_check_interval_s=0):
        r = run("produce", root, "--topic", "events", input="z\n")
        assert r.exit_code == 3 and "already open for writing" in r.stderr


# ------------------------------------------------------------------------------ recover
def test_recover_store_dry_run_apply_and_lock(tmp_path):
    root = str(tmp_path / "s")
    build_store(root)
    r = run("recover", root)
    assert r.exit_code == 0, r.stdout
    assert lines(r)[-1] == "nothing to recover in 13 logs"
    seg_dir = os.path.join(root, "topics", "orders", "1")
    active = sorted(n for n in os.listdir(seg_dir) if n.endswith(".log"))[-1]
    path = os.path.join(seg_dir, active)
    size = os.path.getsize(path)
    os.truncate(path, size - 5)
    # The store closed cleanly: its marker says those bytes were durable (data damage).
    r = run("recover", root, "--apply", "--topic", "orders")
    assert r.exit_code == 1 and "refused" in r.stdout and os.path.getsize(path) == size - 5
    os.unlink(os.path.join(seg_dir, "clean-shutdown"))  # as after a crash: a torn tail
    r = run("recover", root, "--topic", "orders")
    assert r.exit_code == 1
    assert "orders/1:" in r.stdout and f"would: truncate the torn tail of {active}" in r.stdout
    with logstore.Store.open(root, retention_check_interval_s=0):  # (opens no topic)
        r = run("recover", root, "--apply")
        assert r.exit_code == 3 and "already open for writing" in r.stderr
    assert os.path.getsize(path) == size - 5
    r = run("recover", root, "--apply", "--json")
    assert r.exit_code == 0, r.stdout
    doc = json.loads(r.stdout)
    assert doc["ok"] and len(doc["logs"]) == 13
    [torn] = [x for x in doc["logs"] if x["label"] == "orders/1"]
    assert "truncate" in [a["action"] for a in torn["actions"]]
    assert os.path.getsize(path) < size - 5  # cut back to the last whole batch
    assert run("verify", root).exit_code == 0


# ------------------------------------------------------------------------------ compact
def test_compact_plain_log_and_store(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, segment_bytes=1024) as log:
        for i in range(200):
            log.append(b"v%d" % i, key=b"k%d" % (i % 4), timestamp_ms=T0 + i)
        log.append(None, key=b"k0", timestamp_ms=T0 + 500)  # a tombstone
        for i in range(30):
            log.append(b"w%d" % i, key=b"k1", timestamp_ms=T0 + 1000 + i)
    # Issue 16 (case 3): the log's stored cleanup_policy is "delete": refused (exit 2),
    # unchanged; --dry-run counts; --force compacts.
    r = run("compact", d)
    assert r.exit_code == 2 and "cleanup_policy='delete'" in r.stderr
    r = run("compact", d, "--now-ms", T0 + 600, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    dry = json.loads(r.stdout)["logs"][0]["report"]
    assert dry["dry_run"] and dry["records_removed"] > 0
    r = run("compact", d, "--now-ms", T0 + 600, "-o", "delete_retention_ms=0", "--json",
            "--force")
    assert r.exit_code == 0, r.stderr
    [doc] = json.loads(r.stdout)["logs"]
    rep = doc["report"]
    assert rep["records_after"] < rep["records_before"] and rep["tombstones_dropped"] == 1
    with logstore.Log.open(d, readonly=True) as log:
        latest = {}
        for rec in log.replay():
            latest[rec.key] = rec.value
        assert latest[b"k1"] == b"w29" and b"k0" not in latest
    r = run("compact", d, "--force")
    assert r.exit_code == 0 and lines(r)[0].startswith(f"compact {d}: ")
    # Locked by a writer: exit 3.
    with logstore.Log.open(d):
        r = run("compact", d, "--force")
        assert r.exit_code == 3
    # A store: keyed topics are compacted, a queue's topic and keyless topics are skipped.
    root = str(tmp_path / "s")
    with logstore.Store.open(root, segment_bytes=1024, retention_check_interval_s=0) as store:
        prof = store.topic("profiles", partitions=2)
        for i in range(300):
            prof.publish(b"profile-%d" % i, key=b"user-%d" % (i % 5))
        logs = store.topic("logs")
        for i in range(100):
            logs.publish(b"line %d" % i)
        q = store.queue("jobs")
        for i in range(5):
            q.put(b"j", key=b"same")
    before = api_records(root, "profiles")
    r = run("compact", root)  # no topic's stored policy includes compact: all skipped
    assert r.exit_code == 0, r.stderr
    assert "  profiles/1: skipped: cleanup_policy='delete'" in r.stdout
    assert api_records(root, "profiles") == before
    r = run("compact", root, "--force")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "  jobs: skipped: a work queue's topic" in out
    assert "  logs/0: skipped: cannot compact " in out and "has no key" in out
    assert any(x.startswith("  profiles/0: ") and "records" in x for x in lines(r))
    assert "  internal/offsets: " in out
    recs = api_records(root, "profiles")
    assert sum(len(v) for v in recs.values()) < 300
    last = {}
    for p in recs:
        for _, k, v in recs[p]:
            last[k] = v
    assert last == {b"user-%d" % u: b"profile-%d" % (295 + u) for u in range(5)}
    assert sum(1 for _ in api_records(root, "jobs")[0]) == 5  # untouched
    r = run("compact", root, "--topic", "jobs")
    assert r.exit_code == 2 and "work queue" in r.stderr
    r = run("compact", root, "--topic", "logs", "--force")
    assert r.exit_code == 2 and r.stderr.startswith("logstore: error: cannot compact ")
    r = run("compact", os.path.join(root, "topics", "profiles", "1"), "--json", "--force")
    assert r.exit_code == 0
    assert [x["label"] for x in json.loads(r.stdout)["logs"]] == ["profiles/1"]
    assert run("verify", root).exit_code == 0


# ------------------------------------------------------------------------------ retention
def test_retention_plain_log_and_store(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, segment_bytes=1024) as log:
        for i in range(300):
            log.append(b"x" * 40, timestamp_ms=T0 + i)
    r = run("retention", d)
    assert r.exit_code == 0 and "nothing to delete (start offset 0)" in r.stdout
    r = run("retention", d, "-o", "retention_bytes=4000", "--json")
    assert r.exit_code == 0, r.stderr
    [doc] = json.loads(r.stdout)["logs"]
    assert doc["report"]["segments_removed"] > 0 and doc["start_offset_before"] == 0
    with logstore.Log.open(d, readonly=True) as log:
        assert log.start_offset == doc["report"]["start_offset"] > 0
    r = run("retention", d, "-o", "retention_bytes=nope")
    assert r.exit_code == 2 and "retention_bytes" in r.stderr
    # A store: limits for plain topics; a queue's unacked messages are never deleted.
    root = str(tmp_path / "s")
    with logstore.Store.open(root, segment_bytes=1024, retention_check_interval_s=0,
                             dedup_window_s=0) as store:
        events = store.topic("events")
        for i in range(200):
            events.publish(b"e" * 40)
        q = store.queue("jobs", visibility_timeout=600)
        for i in range(100):
            q.put(b"j" * 40)
        for _ in range(50):
            q.ack(q.get(timeout=1))
        with logstore.Store.open(root, readonly=True) as ro:
            assert ro.topics() == ["events", "jobs", "jobs.dlq"]
        r = run("retention", root, "-o", "retention_bytes=0")
        assert r.exit_code == 3
    r = run("retention", root, "-o", "retention_bytes=0")
    assert r.exit_code == 0, r.stderr
    row = next(x for x in lines(r) if x.startswith("  events/0: "))
    assert "deleted" in row and "start offset 0 -> " in row
    jobs = next(x for x in lines(r) if x.startswith("  jobs/0: "))
    with logstore.Store.open(root, retention_check_interval_s=0, dedup_window_s=0) as store:
        start = store.topic("jobs").partitions[0].start_offset
        assert 0 < start <= 50 and f"-> {start}" in jobs  # only acked segments went
        q = store.queue("jobs")
        assert len(q) == 50
        got = set()
        while True:
            m = q.get(timeout=0.1)
            if m is None:
                break
            got.add(m.offset)
            q.ack(m)
        assert got == set(range(50, 100))  # every unacked message is still there
    # Offsets given to a store root apply to every partition, clamped to what is left.
    r = run("replay", root, "--from-offset", 0, "--to-offset", 1000)
    assert r.exit_code == 0, r.stderr
    assert {g["topic"] for g in jsonl(r)} == {"events", "jobs"}
    assert min(g["offset"] for g in jsonl(r) if g["topic"] == "events") > 0
    r = run("consume", root, "--from-offset", 0, "--max", 1)
    assert r.exit_code == 0 and jsonl(r)[0]["offset"] > 0
    r = run("retention", root, "--topic", "events", "--json")
    assert r.exit_code == 0 and [x["label"] for x in json.loads(r.stdout)["logs"]][:1] == \
        ["events/0"]


# ------------------------------------------------------------------------------ demo
def test_demo_end_to_end_in_a_process(tmp_path):
    d = str(tmp_path / "demo")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "logstore.cli", "demo", d], capture_output=True,
                       text=True, env=ENV, timeout=120, cwd=str(tmp_path))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for text in ('1. published 50,000 orders keyed by user into topic "orders" (4 partitions)',
                 "2. pub/sub: 3 durable subscriptions each received every order",
                 '3. consumer group "billing" polled',
                 '4. work queue "payments": 200 payment jobs put, 4 consumer threads acked 199',
                 "delivered 3 times (max_deliveries=3), then dead-lettered",
                 "headers: x-dead-letter-reason=max_deliveries  x-dead-letter-source=payments:0:",
                 "x-delivery-count=3",
                 "then was killed with SIGKILL",
                 "crash recovery per partition:",
                 "     orders/0: ", "     orders/3: ",
                 "acknowledged records lost: 0 (must be 0)",
                 f"7. logstore stats {d}",
                 "consumer groups:", "durable subscriptions:",
                 "work queues:"):
        assert text in out, text
    assert "MISMATCH" not in out and r.stderr == ""
    stats_lines = out.splitlines()
    assert any(x.split()[:3] == ["billing", "orders", "total"] for x in stats_lines)
    assert any(x.split()[:2] == ["payments", "1"] and "1 (payments.dlq)" in x
               for x in stats_lines)
    assert took < 30, took
    # The demo leaves a store the operator commands understand.
    assert run("verify", d).exit_code == 0
    doc = json.loads(run("stats", d, "--json").stdout)
    assert [t["topic"] for t in doc["topics"]] == ["orders", "payments", "payments.dlq"]
    assert {s["subscription"] for s in doc["subscriptions"]} == {"audit", "analytics", "email"}
    assert doc["queues"][0]["dead_lettered"] == 1 and doc["queues"][0]["not_done"] == 0


STORE_WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import logstore
store = logstore.Store.open(sys.argv[1], segment_bytes=1024, retention_check_interval_s=0,
                            dedup_window_s=0)
t = store.topic("t", partitions=3)
print("ready", flush=True)
i = 0
while True:
    t.publish(b"m%d" % i, key=b"k%d" % (i % 5))
    i += 1
    time.sleep(0.005)
"""


def test_tail_follow_and_stats_beside_a_store_writer_process(tmp_path):
    import signal

    root = str(tmp_path / "s")
    w = subprocess.Popen([sys.executable, "-c", STORE_WRITER, root, ROOT],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        assert w.stdout.readline() == b"ready\n"
        t = subprocess.Popen([sys.executable, "-m", "logstore.cli", "tail", root, "--topic", "t",
                              "-n", "0", "--follow", "--interval", "0.02"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        got = [t.stdout.readline().decode().split() for _ in range(60)]  # crosses rolls
        t.send_signal(signal.SIGINT)
        _, err = t.communicate(timeout=20)
        assert t.returncode == 0 and err == b"", err
        per_part = {}
        for label, off, *_rest, value in got:
            per_part.setdefault(label, []).append((int(off[7:]), int(value[8:-1])))
        assert set(per_part) <= {"t/0", "t/1", "t/2"} and len(per_part) >= 2
        for seq in per_part.values():
            offs = [o for o, _ in seq]
            assert offs == list(range(offs[0], offs[0] + len(offs)))  # nothing skipped
            assert [v for _, v in seq] == sorted(v for _, v in seq)
        # stats and verify read beside the writer (which holds the store's lock).
        r = subprocess.run([sys.executable, "-m", "logstore.cli", "stats", root, "--json"],
                           capture_output=True, env=ENV, timeout=60)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["topics"][0]["totals"]["records"] >= 60
        r = subprocess.run([sys.executable, "-m", "logstore.cli", "compact", root],
                           capture_output=True, env=ENV, timeout=60)
        assert r.returncode == 3 and b"already open for writing" in r.stderr
    finally:
        w.kill()
        w.wait()
