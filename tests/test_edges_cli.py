"""Issue 16 through the real CLI (and the API paths behind it): cases 3, 4, 5, 6, 7, 10, 11,
13, and the members of their class found while hunting (damage hidden by a clean-shutdown
marker, a missing last segment, a bad group.json).

Each test states what main 8f4b83a does and what /work/notes/spec16.md says must happen.
"""

import json
import logging
import os
import re
import shutil

import pytest

import logstore
from edge_helpers import (ROOT, batch_positions, overwrite, run_cli, segment_paths,
                          snapshot)


def value(i):
    return b"v%06d" % i


def make_log(d, batches=30, per=1000, **kw):
    opts = dict(fsync="never")
    opts.update(kw)
    with logstore.Log.open(d, **opts) as log:
        for b in range(batches):
            log.append_batch([value(b * per + i) for i in range(per)])
    return d


# ============================================================================ case 3: compact
def _keyed_log(d, n=3000, **kw):
    opts = dict(fsync="never", segment_bytes=4096, retention_check_interval_s=0)
    opts.update(kw)
    with logstore.Log.open(d, **opts) as log:
        for i in range(n):
            log.append(value(i), key=b"k%d" % (i % 10))
    return d


def _values(d):
    with logstore.Log.open(d, readonly=True) as log:
        return [(r.offset, r.value) for r in log.replay()]


def test_compact_refuses_a_log_not_configured_for_compaction(tmp_path):
    """Main: `logstore compact LOG` turned 185,000 records of a plain log into 100."""
    d = _keyed_log(str(tmp_path / "plain"))
    before = snapshot(d)
    r = run_cli("compact", d)
    assert snapshot(d) == before, f"compact changed a plain log: {r}"
    assert r.exit_code == 2, r
    assert "cleanup_policy" in r.stderr and "--force" in r.stderr and "--dry-run" in r.stderr
    # --dry-run says what a pass would remove and changes nothing.
    r = run_cli("compact", d, "--dry-run")
    assert r.exit_code == 0, r
    assert snapshot(d) == before
    # --force compacts anyway and says how much went.
    r = run_cli("compact", d, "--force", "--json")
    assert r.exit_code == 0, r
    assert len(_values(d)) < 3000


def test_compact_dry_run_changes_nothing_and_counts(tmp_path):
    d = _keyed_log(str(tmp_path / "compacted"), cleanup_policy="compact")
    before = snapshot(d)
    r = run_cli("compact", d, "--dry-run", "--json")
    assert r.exit_code == 0, r
    assert snapshot(d) == before
    dry = json.loads(r.stdout)
    r = run_cli("compact", d, "--json")
    assert r.exit_code == 0, r
    done = json.loads(r.stdout)
    removed = (done["logs"][0]["report"]["records_before"]
               - done["logs"][0]["report"]["records_after"])
    assert removed > 0
    assert str(removed) in json.dumps(dry), (dry, removed)


def test_compact_store_compacts_only_compacted_topics(tmp_path):
    """Main: `logstore compact ./logstore-demo` turned ~52k orders into 755 records, ~20k of
    them not yet read by group billing."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", segment_bytes=4096,
                             retention_check_interval_s=0) as s:
        orders = s.topic("orders", partitions=2)
        for i in range(2000):
            orders.publish(value(i), key=b"user-%d" % (i % 20))
        g = s.consumer("billing", "orders")
        g.poll(100)
        g.commit()
    orders_dir = os.path.join(d, "topics", "orders")
    before = snapshot(orders_dir)
    r = run_cli("compact", d)
    assert snapshot(orders_dir) == before, f"compact changed topic orders: {r}"
    assert r.exit_code == 0, r
    assert re.search(r"orders\S*: skipped", r.stdout), r.stdout
    r = run_cli("compact", d, "--topic", "orders")
    assert r.exit_code == 2, r
    assert "cleanup_policy" in r.stderr
    assert snapshot(orders_dir) == before


def test_compact_store_compacts_a_topic_stored_as_compacted(tmp_path):
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", segment_bytes=4096,
                             retention_check_interval_s=0) as s:
        prices = s.topic("prices", partitions=1, cleanup_policy="compact")
        orders = s.topic("orders", partitions=1)
        for i in range(2000):
            prices.publish(value(i), key=b"sym-%d" % (i % 5))
            orders.publish(value(i), key=b"user-%d" % (i % 5))
    r = run_cli("compact", d, "--json")
    assert r.exit_code == 0, r
    logs = {x["label"]: x for x in json.loads(r.stdout)["logs"]}
    assert logs["prices/0"]["report"]["records_after"] < 2000
    assert "skipped" in logs["orders/0"]
    assert len(_values(os.path.join(d, "topics", "orders", "0"))) == 2000


# ============================================================================ case 4
def _flip_in_batch(seg, k, nbytes=16, at=200):
    pos, length = batch_positions(seg)[k]
    assert at + nbytes < length
    with open(seg, "r+b") as f:
        f.seek(pos + at)
        data = f.read(nbytes)
        f.seek(pos + at)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture
def damaged_active(tmp_path):
    """30 batches of 1,000 under fsync="always", clean close, 16 bytes flipped in batch 21."""
    d = make_log(str(tmp_path / "log"), fsync="always")
    seg = segment_paths(d)[-1]
    _flip_in_batch(seg, 20)
    return d


def test_readonly_reads_raise_at_damage_in_cleanly_closed_active_segment(damaged_active):
    """Main: a read-only open shows end_offset 20,000 and replay yields 20,000 records without
    error (the writer's replay raises CorruptLogError)."""
    d = damaged_active
    with logstore.Log.open(d, readonly=True) as ro:
        got = []
        with pytest.raises(logstore.CorruptLogError):
            for rec in ro.replay():
                got.append(rec)
        assert [r.value for r in got] == [value(i) for i in range(len(got))]
        assert len(got) <= 20_000
        with pytest.raises(logstore.CorruptLogError):
            ro.read(20_000)
        with pytest.raises(logstore.CorruptLogError):
            ro.get(25_000)
    with logstore.Log.open(d) as w:  # the writer already did
        with pytest.raises(logstore.CorruptLogError):
            list(w.replay())


@pytest.mark.parametrize("command", [["replay"], ["consume"], ["tail"], ["tail", "-n", "30000"],
                                     ["stats"]])
def test_cli_readers_exit_1_at_damage_in_cleanly_closed_active_segment(damaged_active,
                                                                        command):
    """Main: `logstore replay/consume/tail/stats` print 20,000 records (or stats) and exit 0."""
    r = run_cli(command[0], damaged_active, *command[1:])
    assert r.exit_code == 1, r
    assert "corrupt" in r.stderr.lower(), r


# ============================================================================ case 5
def test_damage_in_cleanly_closed_never_log_is_data_damage_not_a_torn_tail(tmp_path):
    """Main: verify calls it a repairable torn tail ("a zero-filled sector follows") and
    `recover --apply` deletes the 10,000 valid records that close() had made durable."""
    d = make_log(str(tmp_path / "log"), fsync="never")
    seg = segment_paths(d)[-1]
    _flip_in_batch(seg, 20)
    r = run_cli("verify", d, "--json")
    assert r.exit_code == 1, r
    problems = json.loads(r.stdout)["logs"][0]["problems"]
    kinds = {p["kind"] for p in problems}
    assert "torn_tail" not in kinds, problems
    assert any(p["kind"] == "damaged" and not p["recoverable"] for p in problems), problems
    before = snapshot(d)
    r = run_cli("recover", d, "--apply")
    assert snapshot(d) == before, f"recover --apply changed the log: {r.stdout}"
    assert r.exit_code == 1, r
    assert "data damage" in (r.stdout + r.stderr), r


def test_truncated_active_segment_of_cleanly_closed_log_is_data_damage(tmp_path):
    """Main: marker says 331,920 bytes, file has 200,000: "repairable, 0 data damage", and a
    writer open silently accepts what is left."""
    d = make_log(str(tmp_path / "log"), fsync="never")
    seg = segment_paths(d)[-1]
    os.truncate(seg, 200_000)
    r = run_cli("verify", d, "--json")
    assert r.exit_code == 1, r
    problems = json.loads(r.stdout)["logs"][0]["problems"]
    assert any(p["kind"] == "damaged" and not p["recoverable"] for p in problems), problems
    before = snapshot(d)
    r = run_cli("recover", d, "--apply")
    assert snapshot(d) == before, r
    assert r.exit_code == 1, r
    with pytest.raises(logstore.CorruptLogError):
        logstore.Log.open(d)
    assert snapshot(d) == before


def test_zeroed_tail_of_cleanly_closed_log_is_data_damage_not_preallocation(tmp_path):
    """Found while hunting (stats "exit 0 on a segment with bad magic"): the last two batches
    of a cleanly closed active segment read back as zeros (lost write-back). Main calls them a
    preallocated, never-written tail: verify OK, stats exit 0, the writer trims 2,000 records
    that close() had made durable."""
    d = make_log(str(tmp_path / "log"), fsync="never")
    seg = segment_paths(d)[-1]
    batches = batch_positions(seg)
    start = batches[-2][0]
    overwrite(seg, start, bytes(os.path.getsize(seg) - start))
    before = snapshot(d)
    for cmd in ("verify", "stats"):
        r = run_cli(cmd, d)
        assert r.exit_code == 1, (cmd, r)
    with pytest.raises(logstore.CorruptLogError):
        logstore.Log.open(d)
    assert snapshot(d) == before


def test_zero_filled_active_segment_file_of_clean_log(tmp_path):
    """A whole active segment reading back as zeros ("bad magic" at byte 0) after a clean
    close: main's stats/verify call it preallocated space and exit 0."""
    d = make_log(str(tmp_path / "log"), batches=3, fsync="never")
    seg = segment_paths(d)[-1]
    overwrite(seg, 0, bytes(os.path.getsize(seg)))
    for cmd in ("stats", "verify"):
        r = run_cli(cmd, d)
        assert r.exit_code == 1, (cmd, r)
        r = run_cli(cmd, seg)
        assert r.exit_code == 1, (cmd, "segment file", r)


def test_missing_last_segment_of_cleanly_closed_log(tmp_path):
    """Found while hunting: the active segment file of a cleanly closed log is gone. Main:
    verify "OK: no problems found" (the marker is called stale), and a writer opens at the end
    of the previous segment, so the lost offsets are assigned again."""
    d = make_log(str(tmp_path / "log"), batches=100, per=100, segment_bytes=16 * 1024)
    segs = segment_paths(d)
    assert len(segs) > 2
    last_base = int(os.path.basename(segs[-1])[:-4])
    for suffix in (".log", ".index", ".timeindex"):
        p = segs[-1][:-4] + suffix
        if os.path.exists(p):
            os.unlink(p)
    r = run_cli("verify", d)
    assert r.exit_code == 1, r
    before = snapshot(d)
    try:
        log = logstore.Log.open(d)
    except logstore.CorruptLogError:
        assert snapshot(d) == before
        return
    try:
        off = log.append(b"new")
    finally:
        log.close()
    pytest.fail(f"the writer opened and assigned offset {off} again (the lost segment held "
                f"{last_base}..9999)")


# ============================================================================ case 6
@pytest.fixture
def gap_log(tmp_path):
    d = make_log(str(tmp_path / "log"), batches=100, per=100, segment_bytes=16 * 1024)
    segs = segment_paths(d)
    assert len(segs) >= 5
    victim = segs[len(segs) // 2]
    lo = int(os.path.basename(victim)[:-4])
    hi = int(os.path.basename(segs[len(segs) // 2 + 1])[:-4])
    for suffix in (".log", ".index", ".timeindex"):
        os.unlink(victim[:-4] + suffix)
    return d, lo, hi


def test_verify_names_a_segment_missing_from_the_middle_as_data_damage(gap_log):
    """Main: "0 data damage" (the previous segment's time index is blamed, "no data is
    affected"), and recover --apply "repairs" it."""
    d, lo, hi = gap_log
    r = run_cli("verify", d, "--json")
    assert r.exit_code == 1, r
    problems = json.loads(r.stdout)["logs"][0]["problems"]
    hits = [p for p in problems if p["kind"] == "damaged" and not p["recoverable"]
            and f"{lo}..{hi - 1}" in p["reason"]]
    assert hits, problems
    r = run_cli("recover", d)
    assert r.exit_code == 1, r
    assert f"{lo}..{hi - 1}" in r.stdout, r
    _api_reads_raise_at_the_gap(d, lo)  # (already so on main)


@pytest.mark.parametrize("command", ["dump", "replay", "consume"])
def test_readers_stop_at_a_missing_middle_segment(gap_log, command):
    """Main: dump exits 0 while skipping the missing offsets (even after recover --apply)."""
    d, lo, hi = gap_log
    run_cli("recover", d, "--apply")  # whatever it does, it must not hide the gap
    r = run_cli(command, d)
    assert r.exit_code == 1, r
    assert f"{lo}" in r.stderr, r
    printed = [int(m) for m in re.findall(r'(?:offset=|"offset": ?)(\d+)', r.stdout)]
    assert printed and max(printed) < lo, "records after the gap were printed"
    if command != "dump":  # records before the gap, in order (consume reads in chunks)
        assert printed == list(range(len(printed)))


def _api_reads_raise_at_the_gap(d, lo):
    for readonly in (True, False):
        try:
            log = logstore.Log.open(d, readonly=readonly)
        except logstore.CorruptLogError:
            continue
        with log:
            with pytest.raises(logstore.CorruptLogError):
                list(log.replay())
            with pytest.raises(logstore.CorruptLogError):
                log.read(lo)


def test_stats_exits_1_on_a_missing_middle_segment(gap_log):
    """Main: `logstore stats` prints totals that silently leave out the missing offsets and
    exits 0 (headers only, no continuity check across segments)."""
    d, lo, hi = gap_log
    r = run_cli("stats", d)
    assert r.exit_code == 1, r
    assert f"{lo}..{hi - 1}" in r.stderr, r


# ============================================================================ case 7
@pytest.fixture
def store_missing_partition(tmp_path):
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t", partitions=2)
        for p in range(2):
            t.partitions[p].append_batch([value(i) for i in range(500)])
        s.topic("other").publish(b"fine")
        g = s.consumer("g", "t")
        n = 0
        while True:
            recs = g.poll(1000)
            if not recs:
                break
            n += len(recs)
        assert n == 1000
        g.commit()
        g.close()
    shutil.rmtree(os.path.join(d, "topics", "t", "1"))
    return d


def test_store_refuses_a_topic_whose_partition_directory_is_missing(store_missing_partition):
    """Main: Store.open re-creates topics/t/1 empty, publish returns (1, 0) again and group g
    never sees the new messages (committed 500, end 6, lag 0)."""
    d = store_missing_partition
    part = os.path.join(d, "topics", "t", "1")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        with pytest.raises(logstore.CorruptLogError) as ei:
            s.topic("t")
        assert part in str(ei.value) or "t/1" in str(ei.value)
        with pytest.raises(logstore.CorruptLogError):
            s.get_topic("t")
        with pytest.raises(logstore.CorruptLogError):
            s.publish("t", b"x", partition=1)
        with pytest.raises(logstore.CorruptLogError):
            s.consumer("g", "t")
        assert s.topic("other").publish(b"still fine") == (0, 1)
    assert not os.path.exists(part), "the missing partition directory was re-created"
    with logstore.Store.open(d, readonly=True) as ro:
        with pytest.raises(logstore.CorruptLogError):
            ro.topic("t")
    r = run_cli("verify", d)
    assert r.exit_code == 1 and "t/1" in r.stdout, r


def test_committed_beyond_end_is_reported_and_the_consumer_continues(tmp_path, caplog):
    """A partition restored from an older copy (end 6 < committed 500): main hides it (lag 0,
    new messages never delivered). Expected: stats flags it, the consumer clamps to the end
    with a WARNING and receives what is published next."""
    d = str(tmp_path / "store")
    part = os.path.join(d, "topics", "t", "0")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t", partitions=1)
        t.partitions[0].append_batch([value(i) for i in range(6)])
    shutil.copytree(part, str(tmp_path / "backup"))
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t")
        t.partitions[0].append_batch([value(i) for i in range(6, 500)])
        g = s.consumer("g", "t")
        while g.poll(1000):
            pass
        g.commit()
        assert g.committed() == {0: 500}
        g.close()
    shutil.rmtree(part)
    shutil.copytree(str(tmp_path / "backup"), part)
    r = run_cli("stats", d, "--json")
    doc = json.loads(r.stdout)
    row = doc["groups"][0]["partitions"][0]
    assert row["committed"] == 500 and row["end_offset"] == 6
    base = {"partition", "committed", "start", "start_offset", "end_offset", "lag", "skipped"}
    flags = {k: v for k, v in row.items() if k not in base and v}
    assert flags or r.exit_code != 0, f"committed > end not flagged: {row}"
    caplog.set_level(logging.WARNING, logger="logstore")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t")
        assert [t.publish(b"new-%d" % i) for i in range(3)] == [(0, 6), (0, 7), (0, 8)]
        g = s.consumer("g", "t")
        got = g.poll(100)
        assert [r.value for r in got] == [b"new-0", b"new-1", b"new-2"]
        assert [x for x in caplog.records if x.levelno >= logging.WARNING
                and "500" in x.getMessage()], "no WARNING about committed 500 > end 6"


# ============================================================================ case 10
def test_one_bad_topic_json_does_not_hide_the_other_topics(tmp_path):
    """Main: verify, stats and dump of every topic fail with exit 2."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        for name in ("a", "b", "c"):
            s.topic(name).publish(b"hello-" + name.encode())
    with open(os.path.join(d, "topics", "b", "topic.json"), "wb") as f:
        f.write(b"{garbage")
    r = run_cli("verify", d)
    assert r.exit_code == 1, r
    assert "a/0" in r.stdout and "c/0" in r.stdout and "topics/b" in (r.stdout + r.stderr)
    r = run_cli("stats", d, "--json")
    assert r.exit_code == 1, r
    shown = {t["topic"] for t in json.loads(r.stdout)["topics"]}
    assert {"a", "c"} <= shown, shown
    r = run_cli("dump", d, "--values", "text")
    assert r.exit_code == 1, r
    assert "hello-a" in r.stdout and "hello-c" in r.stdout
    r = run_cli("verify", d, "--topic", "a")
    assert r.exit_code == 0, r


def test_one_bad_group_json_does_not_hide_the_store(tmp_path):
    """Found while hunting (the same class as case 10): a garbage group.json of one group makes
    verify and stats of the whole store fail with exit 2 on main."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("t")
        t.publish(b"x")
        for name in ("g1", "g2"):
            g = s.consumer(name, "t")
            g.poll(10)
            g.commit()
            g.close()
    with open(os.path.join(d, "internal", "groups", "t", "g1", "group.json"), "wb") as f:
        f.write(b"{bad")
    for cmd in ("verify", "stats"):
        r = run_cli(cmd, d)
        assert r.exit_code == 1, (cmd, r)
        assert "t/0" in r.stdout, (cmd, r)
    r = run_cli("stats", d, "--json")
    groups = {g["group"] for g in json.loads(r.stdout)["groups"]}
    assert "g2" in groups


# ============================================================================ case 11
def test_dump_from_offset_past_the_end_exits_2(tmp_path):
    d = make_log(str(tmp_path / "log"), batches=2, per=100)
    r = run_cli("replay", d, "--from-offset", "1000")
    assert r.exit_code == 2  # (already so on main)
    r = run_cli("dump", d, "--from-offset", "1000")
    assert r.exit_code == 2, r


def test_replay_with_to_offset_below_from_offset_exits_2(tmp_path):
    d = make_log(str(tmp_path / "log"), batches=2, per=100)
    r = run_cli("replay", d, "--from-offset", "10", "--to-offset", "5")
    assert r.exit_code == 2, r
    assert "to-offset" in r.stderr or "to_offset" in r.stderr, r


@pytest.mark.parametrize("target", ["log", "store"])
def test_produce_failure_says_what_was_written(tmp_path, target):
    """Main: a too-large line 150 (batches of 100) says "nothing was written" after writing
    100 records, exit 4."""
    lines = "".join("line-%d\n" % i for i in range(149)) + "x" * (9 << 20) + "\n" + \
        "".join("more-%d\n" % i for i in range(10))
    if target == "log":
        d = str(tmp_path / "log")
        r = run_cli("produce", d, "--create", "-o", "fsync=never", input=lines)
        log_dir = d
    else:
        d = str(tmp_path / "store")
        r = run_cli("produce", d, "--create", "--topic", "t", "-o", "fsync=never",
                    input=lines)
        log_dir = os.path.join(d, "topics", "t", "0")
    with logstore.Log.open(log_dir, readonly=True) as log:
        written = log.end_offset
    assert written == 100
    assert r.exit_code in (2, 4), r
    assert "nothing was written" not in r.stderr, r
    assert "100" in r.stderr and "0..99" in r.stderr, r


def test_stats_never_prints_none(store_missing_partition):
    """Main: `logstore stats` prints "at byte None"."""
    r = run_cli("stats", store_missing_partition)
    assert "None" not in r.stdout + r.stderr, r


def test_store_stats_lag_and_skipped_columns(tmp_path):
    """lag = end - max(committed, start) (records readable); skipped = max(0, start -
    committed) (records the group will never see). README says exactly that."""
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", segment_bytes=2048, retention_bytes=4096,
                             retention_check_interval_s=0) as s:
        t = s.topic("t")
        for i in range(20):
            t.publish(value(i))
        g = s.consumer("g", "t")
        assert len(g.poll(5)) == 5
        g.commit()
        g.close()
        for i in range(20, 500):
            t.publish(value(i))
        s.enforce_retention()
        start, end = t.partitions[0].start_offset, t.partitions[0].end_offset
    assert start > 5
    r = run_cli("stats", d, "--json")
    assert r.exit_code == 0, r
    row = json.loads(r.stdout)["groups"][0]["partitions"][0]
    assert row["committed"] == 5
    assert row.get("start_offset", row.get("start")) == start, row
    assert row["lag"] == end - start
    assert row["skipped"] == start - 5
    r = run_cli("stats", d)
    header = next(x for x in r.stdout.splitlines() if "committed" in x)
    assert "start" in header and "skipped" in header, header
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "end - max(committed, start)" in readme
    assert "max(0, start - committed)" in readme


# ============================================================================ case 13
def test_readme_documents_that_a_future_timestamp_holds_back_time_retention():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Retention and compaction"):]
    section = section[:section.index("\n## ", 5)]
    assert re.search(r"future", section) and "oldest" in section, \
        "README does not say a far-future timestamp holds back time retention"
