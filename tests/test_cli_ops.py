"""The operator's store commands: ``consume --group`` (commits as it goes, resumes, ends on
--max/--timeout, --follow beside a writer process), ``groups`` (list, describe with lag,
--reset-offsets dry run / --execute refused while members live, --delete), ``topics`` (list,
describe, create, delete refused while groups are live unless --force), ``queue`` (stats,
peek, dlq with the dead-letter headers, redrive, purge with confirmation), ``docs``, and the
--help of every command carrying an example.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import logstore
from helpers import lines, run
from logstore.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
T0 = 1_700_000_000_000


def jsonl(r):
    return [json.loads(x) for x in lines(r)]


def make_store(root, n=60):
    """orders: 3 partitions, n records keyed user-0..5, timestamps T0 + i s."""
    with logstore.Store.open(root, fsync="never", dedup_window_s=0,
                             retention_check_interval_s=0) as s:
        t = s.topic("orders", partitions=3)
        for i in range(n):
            t.publish(b"order-%d" % i, key=b"user-%d" % (i % 6), timestamp_ms=T0 + i * 1000)


def commits(root, group, topic="orders"):
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        return s.group_commits(group, topic)


def ends(root, topic="orders"):
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        return s.get_topic(topic).end_offsets()


# ------------------------------------------------------------------------------ consume
def test_consume_group_commits_as_it_goes_and_resumes(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    seen = []
    r = run("consume", root, "--topic", "orders", "--group", "g", "--max", 25, "--values", "text")
    assert r.exit_code == 0, r.stderr
    first = jsonl(r)
    assert len(first) == 25
    seen += first
    # The commits are the positions after what was written.
    c = commits(root, "g")
    for p in range(3):
        mine = [x["offset"] for x in first if x["partition"] == p]
        if mine:
            assert c[p] == max(mine) + 1
    r = run("consume", root, "--topic", "orders", "--group", "g", "--values", "text")
    assert r.exit_code == 0, r.stderr
    seen += jsonl(r)
    assert sorted((x["partition"], x["offset"]) for x in seen) == sorted(
        (p, o) for p, e in ends(root).items() for o in range(e))
    assert commits(root, "g") == ends(root)
    # Caught up: nothing more, exit 0.
    r = run("consume", root, "--topic", "orders", "--group", "g")
    assert r.exit_code == 0 and r.stdout == ""


def test_consume_group_range_options_and_usage_errors(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    # --from-time moves the group's position; --to-offset stops each partition there.
    r = run("consume", root, "--topic", "orders", "--group", "h", "--from-time",
            "2023-11-14T22:14:00Z", "--to-offset", 15, "--values", "text")
    assert r.exit_code == 0, r.stderr
    got = jsonl(r)
    assert got and all(x["timestamp_ms"] >= T0 + 40_000 and x["offset"] < 15 for x in got)
    for bad, what in [(["--group", "g"], "--topic"),
                      (["--group", "g", "--topic", "orders", "--partition", 0], "--partition"),
                      (["--topic", "orders", "--follow", "--to-offset", 3], "--follow"),
                      (["--group", "__x", "--topic", "orders"], "reserved")]:
        r = run("consume", root, *bad)
        assert r.exit_code == 2 and what in r.stderr, (bad, r.stderr)
    r = run("consume", root, "--topic", "nope", "--group", "g")
    assert r.exit_code == 2 and "no topic" in r.stderr


def test_consume_group_beside_the_writer_and_follow_with_timeout(tmp_path):
    root = str(tmp_path / "s")
    make_store(root, n=9)
    with logstore.Store.open(root, retention_check_interval_s=0, dedup_window_s=0) as s:
        t = s.topic("orders")
        # The writer holds the store: consume (read-only) works beside it.
        proc = subprocess.Popen([sys.executable, "-m", "logstore.cli", "consume", root,
                                 "--topic", "orders", "--group", "f", "--follow", "--max", "20",
                                 "--values", "text"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV)
        time.sleep(1.0)
        for i in range(11):
            t.publish(b"late-%d" % i, key=b"user-%d" % i)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        got = [json.loads(x) for x in out.decode().splitlines()]
        assert len(got) == 20 and sum(x["value"].startswith("late-") for x in got) == 11
    assert sum(commits(root, "f").values()) == 20
    # --timeout ends a --follow that gets nothing new.
    start = time.monotonic()
    r = run("consume", root, "--topic", "orders", "--group", "f", "--follow", "--timeout", 0.5)
    assert r.exit_code == 0 and r.stdout == "" and time.monotonic() - start < 30


def test_consume_without_group_follow_timeout_and_max(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never") as log:
        log.append_batch([b"a", b"b", b"c", b"d"])
    r = run("consume", d, "--from-offset", 1, "--max", 2, "--values", "text")
    assert [x["value"] for x in jsonl(r)] == ["b", "c"]
    r = run("consume", d, "--follow", "--timeout", 0.3, "--values", "text")
    assert r.exit_code == 0 and [x["value"] for x in jsonl(r)] == ["a", "b", "c", "d"]
    r = run("consume", d, "--format", "raw", "--newline", "--to-offset", 3)
    assert r.stdout == "a\nb\nc\n"


def test_tail_range_options(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never") as log:
        log.append_batch([b"v%d" % i for i in range(50)],
                         timestamps_ms=[T0 + i * 1000 for i in range(50)])
    r = run("tail", d, "-n", 3, "--to-offset", 20)
    assert [x.split()[0] for x in lines(r)] == ["offset=17", "offset=18", "offset=19"]
    assert "time=2023-11-14T22:13:37.000Z" in lines(r)[0]
    r = run("tail", d, "-n", 100, "--from-time", "2023-11-14T22:14:00Z", "--max", 2)
    assert [x.split()[0] for x in lines(r)] == ["offset=40", "offset=41"]
    r = run("tail", d, "--follow", "--to-time", "-1h")
    assert r.exit_code == 2


# ------------------------------------------------------------------------------ groups
def test_groups_list_describe_reset_and_delete(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    run("consume", root, "--topic", "orders", "--group", "billing", "--max", 30)
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        sub = s.subscribe("orders", "audit", start="earliest")
        sub.poll(5)
        sub.commit()
        sub.close()
    r = run("groups", root, "--json")
    assert r.exit_code == 0, r.stderr
    rows = {x["group"]: x for x in json.loads(r.stdout)["groups"]}
    assert rows["billing"]["lag"] == 30 and rows["billing"]["kind"] == "group"
    assert rows["audit"]["kind"] == "subscription" and rows["audit"]["lag"] == 55
    assert rows["billing"]["members"] == 0
    r = run("groups", root, "--group", "billing", "--json")
    doc = json.loads(r.stdout)["topics"][0]
    e = ends(root)
    c = commits(root, "billing")
    for p in range(3):
        x = doc["partitions"][str(p)]
        assert x["committed"] == c[p] and x["end_offset"] == e[p]
        assert x["lag"] == e[p] - c[p]
        assert (x["lag_s"] > 0) == (x["lag"] > 0)
    assert "LAG AGE" in run("groups", root, "--group", "billing").stdout
    # Reset: a dry run changes nothing.
    before = commits(root, "billing")
    r = run("groups", root, "--group", "billing", "--topic", "orders", "--reset-offsets",
            "--to-earliest", "--json")
    plan = json.loads(r.stdout)
    assert plan["executed"] is False and all(v["new"] == 0 for v in plan["partitions"].values())
    assert commits(root, "billing") == before
    assert "dry run" in run("groups", root, "--group", "billing", "--topic", "orders",
                            "--reset-offsets", "--to-latest").stdout
    # Refused while a member is live (a consumer of the group in another store object).
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        member = s.consumer("billing", "orders")
        r = run("groups", root, "--group", "billing", "--topic", "orders", "--reset-offsets",
                "--to-earliest", "--execute")
        assert r.exit_code == 3 and "active" in r.stderr
        r = run("groups", root, "--group", "billing", "--delete")
        assert r.exit_code == 3
        assert run("groups", root, "--group", "billing", "--json").exit_code == 0
        member.close()
    assert commits(root, "billing") == before
    r = run("groups", root, "--group", "billing", "--topic", "orders", "--reset-offsets",
            "--shift-by", -3, "--partition", 0, "--execute")
    assert r.exit_code == 0 and "committed" in r.stdout
    assert commits(root, "billing") == {**before, 0: max(0, before[0] - 3)}
    r = run("groups", root, "--group", "billing", "--topic", "orders", "--reset-offsets",
            "--to-time", "2023-11-14T22:13:50Z", "--execute")
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        want = {p: log.offset_for_time(T0 + 30_000)
                for p, log in enumerate(s.get_topic("orders").partitions)}
    assert commits(root, "billing") == want
    # The next consumer resumes at the reset offsets.
    r = run("consume", root, "--topic", "orders", "--group", "billing")
    assert len(jsonl(r)) == sum(e[p] - want[p] for p in range(3))
    # Delete.
    r = run("groups", root, "--subscription", "audit", "--delete")
    assert r.exit_code == 0, r.stderr
    assert "audit" not in {x["group"] for x in json.loads(run("groups", root, "--json").stdout)
                           ["groups"]}
    r = run("groups", root, "--group", "nobody")
    assert r.exit_code == 2 and "no group" in r.stderr
    for bad in (["--to-earliest"], ["--reset-offsets", "--group", "g", "--topic", "orders"],
                ["--reset-offsets", "--to-earliest", "--group", "g"]):
        assert run("groups", root, *bad).exit_code == 2


# ------------------------------------------------------------------------------ topics
def test_topics_list_describe_create_delete(tmp_path):
    root = str(tmp_path / "s")
    make_store(root)
    r = run("topics", root, "--json")
    (doc,) = json.loads(r.stdout)["topics"]
    assert doc["topic"] == "orders" and doc["partitions"] == 3 and doc["records"] == 60
    assert doc["settings"]["cleanup_policy"] == "delete"
    r = run("topics", root, "--create", "--topic", "events", "--partitions", 4,
            "-o", "retention_ms=3600000", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["retention_ms"] == 3600000
    r = run("topics", root, "--create", "--topic", "events")
    assert r.exit_code == 2 and "exists" in r.stderr
    assert run("topics", root, "--create", "--topic", "events", "--if-not-exists").exit_code == 0
    r = run("topics", root, "--topic", "events", "--json")
    assert json.loads(r.stdout)["partitions"] == 4
    assert "retention_ms = 3600000" in run("topics", root, "--topic", "events").stdout
    assert run("topics", root, "--create", "--topic", "x", "-o", "fsync=never").exit_code == 2
    # Delete: refused while a group of it has a live member, unless --force.
    run("consume", root, "--topic", "orders", "--group", "g", "--max", 5)
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        member = s.consumer("g", "orders")
        r = run("topics", root, "--delete", "--topic", "orders")
        assert r.exit_code == 3 and "active consumers" in r.stderr
        member.close()
    assert "orders" in run("topics", root).stdout
    # --force: even with a live member (in another process, which then fails at its own pace).
    code = ("import sys, logstore\n"
            "s = logstore.Store.open(sys.argv[1], readonly=True, dedup_window_s=0)\n"
            "c = s.consumer('g', 'orders')\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")
    member = subprocess.Popen([sys.executable, "-c", code, root], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=ENV)
    try:
        assert member.stdout.readline() == b"ready\n"
        r = run("topics", root, "--delete", "--topic", "orders")
        assert r.exit_code == 3 and "active consumers" in r.stderr
        r = run("topics", root, "--delete", "--topic", "orders", "--force")
        assert r.exit_code == 0, r.stderr
    finally:
        member.kill()
        member.wait()
    assert not os.path.exists(os.path.join(root, "topics", "orders"))
    assert not os.path.exists(os.path.join(root, "internal", "groups", "orders"))
    assert os.listdir(os.path.join(root, "internal", ".trash")) == []
    # A topic created again with the name is new: no records, no group.
    with logstore.Store.open(root, dedup_window_s=0) as s:
        assert s.topic("orders", partitions=2).end_offsets() == {0: 0, 1: 0}
        assert "g" not in s.groups()
    # The writer's lock is needed: exit 3 while a writer has the store.
    with logstore.Store.open(root, dedup_window_s=0, retention_check_interval_s=0):
        assert run("topics", root, "--delete", "--topic", "events").exit_code == 3
        assert run("topics", root).exit_code == 0  # listing is read-only


# ------------------------------------------------------------------------------ queues
def make_queue(root):
    """jobs: 6 messages; 1 acked, 1 in flight, 1 nacked for an hour, 1 dead-lettered."""
    with logstore.Store.open(root, fsync="never", dedup_window_s=0,
                             retention_check_interval_s=0) as s:
        q = s.queue("jobs", max_deliveries=1, visibility_timeout=600)
        for i in range(6):
            q.put(b"job-%d" % i, key=b"k%d" % i, headers={"n": b"%d" % i})
        m0, m1, m2 = q.get(timeout=1), q.get(timeout=1), q.get(timeout=1)
        q.ack(m0)
        q.nack(m2)  # max_deliveries=1: dead-lettered
        q2 = s.queue("slow", max_deliveries=5)
        q2.put(b"x")
        q2.nack(q2.get(timeout=1), delay=3600)
        q.close()
        q2.close()
    return m1.id


def test_queue_stats_peek_dlq_redrive_purge(tmp_path):
    root = str(tmp_path / "s")
    in_flight = make_queue(root)
    r = run("queue", root, "jobs", "--json")
    assert r.exit_code == 0, r.stderr
    fig = json.loads(r.stdout)
    assert (fig["total"], fig["in_flight"], fig["dead_lettered"]) == (4, 1, 1)
    assert fig["depth"] == 3
    assert "ready" in run("queue", root, "jobs").stdout
    r = run("queue", root, "jobs", "peek", "-n", 10, "--json")
    msgs = json.loads(r.stdout)["messages"]
    assert [m["value"] for m in msgs] == ["job-1", "job-3", "job-4", "job-5"]
    assert {m["id"]: m["state"] for m in msgs}[in_flight] == "in_flight"
    assert msgs[0]["deliveries"] == 1 and msgs[1]["deliveries"] == 0
    slow = json.loads(run("queue", root, "slow", "peek", "--json").stdout)["messages"]
    assert [m["state"] for m in slow] == ["delayed"]
    r = run("queue", root, "jobs", "dlq", "--json")
    (dead,) = json.loads(r.stdout)["dead_letters"]
    assert dead["value"] == "job-2" and dead["reason"] == "max_deliveries"
    assert dead["deliveries"] == "1" and dead["source"].startswith("jobs:0:")
    assert dead["headers"]["n"] == "2"
    assert "max_deliveries" in run("queue", root, "jobs", "dlq").stdout
    # Redrive and purge need the writer's lock.
    with logstore.Store.open(root, dedup_window_s=0, retention_check_interval_s=0):
        assert run("queue", root, "jobs", "redrive").exit_code == 3
        assert run("queue", root, "jobs", "purge", "--yes").exit_code == 3
        assert run("queue", root, "jobs").exit_code == 0
    r = run("queue", root, "jobs", "redrive")
    assert r.exit_code == 0 and "redrove 1 message" in r.stdout
    assert json.loads(run("queue", root, "jobs", "--json").stdout)["total"] == 5
    assert "0 dead letters" in run("queue", root, "jobs", "dlq").stdout
    assert "(redriven)" in run("queue", root, "jobs", "dlq", "--all").stdout
    # Purge: not on a pipe without --yes; --yes: one checkpoint record, nothing left.
    r = run("queue", root, "jobs", "purge")
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert json.loads(run("queue", root, "jobs", "--json").stdout)["total"] == 5
    events = os.path.join(root, "internal", "queues", "jobs")
    with logstore.Log.open(events, readonly=True) as ev:
        before = ev.end_offset
    r = run("queue", root, "jobs", "purge", "--yes")
    assert r.exit_code == 0 and "purged 5 messages" in r.stdout
    with logstore.Log.open(events, readonly=True) as ev:
        assert ev.end_offset == before + 1 and ev.get(before).value[:1] == b"C"
    assert json.loads(run("queue", root, "jobs", "--json").stdout)["total"] == 0
    with logstore.Store.open(root, dedup_window_s=0, retention_check_interval_s=0) as s:
        q = s.queue("jobs")
        assert q.get(timeout=0.2) is None  # nothing purged comes back
        q.put(b"after")
        assert q.get(timeout=1).value == b"after"
    assert run("queue", root, "nope").exit_code == 2


# ------------------------------------------------------------------------------ help and docs
def test_every_command_help_has_an_example():
    for name, command in main.commands.items():
        r = run(name, "--help")
        assert r.exit_code == 0, name
        assert "Example" in r.stdout and f"logstore {name}" in r.stdout, name
    top = run("--help").stdout
    assert "README.md" not in top and "logstore docs" in top


def test_docs_prints_the_readme_and_its_sections():
    r = run("docs", "--list")
    assert r.exit_code == 0 and "Command line" in r.stdout
    r = run("docs", "command line")
    assert r.exit_code == 0 and r.stdout.startswith("## Command line")
    assert "logstore --help" in r.stdout and "## Retention" not in r.stdout  # one section
    full = run("docs").stdout
    assert full.startswith("# logstore") and r.stdout in full
    r = run("docs", "no such section at all")
    assert r.exit_code == 2
