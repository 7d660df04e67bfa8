"""``logstore produce`` like kafka-console-producer: per-line keys, headers, timestamps,
tombstones (null marker), ``--format jsonl`` reading exactly what ``replay`` writes (a
backup/restore round trip, byte for byte: keys, headers, timestamps, tombstones, non-UTF-8
bytes, partitions of a store), binary-safe raw input (length-prefixed), bad input (exit 2 after
the lines before it), a progress bar only on a terminal.
"""

import base64
import json
import os
import struct

import pytest

import logstore
from helpers import lines, run
from logstore.views.names import partition_for_key

T0 = 1_700_000_000_000


def records(path, **kw):
    with logstore.Log.open(path, readonly=True) as log:
        return [tuple(r)[:5] for r in log.replay(**kw)]


def store_records(root, topic):
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        t = s.get_topic(topic)
        return {p: [tuple(r)[:5] for r in log.replay()] for p, log in enumerate(t.partitions)}


def build_source(root):
    """Every shape a record can have, in a store of two topics."""
    with logstore.Store.open(root, fsync="never", dedup_window_s=0,
                             retention_check_interval_s=0) as s:
        t = s.topic("orders", partitions=3)
        for i in range(300):
            value = None if i % 41 == 0 else (b"\x00\xff" * (i % 5) + b"order %d \xc3\xa9" % i)
            key = None if i % 7 == 0 else (b"user-%d" % (i % 11) if i % 13 else b"\xfe\xff")
            headers = None if i % 3 else {"type": b"created", "bin": bytes([i % 256, 0x80])}
            t.publish(value, key, headers, timestamp_ms=T0 + i * 1000)
        u = s.topic("users", cleanup_policy="compact")
        for i in range(20):
            u.publish(b"name-%d" % i, key=b"u%d" % (i % 6), timestamp_ms=T0 + i)


@pytest.mark.parametrize("values", ["base64", "text"])
def test_replay_then_produce_restores_a_store_byte_for_byte(tmp_path, values):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    build_source(src)
    backup = run("replay", src, "--values", values)
    assert backup.exit_code == 0, backup.stderr
    # The topics must exist in the target store (a restore keeps partitions); `topics
    # --create` makes the store too.
    for args in (["--topic", "orders", "--partitions", 3],
                 ["--topic", "users", "-o", "cleanup_policy=compact"]):
        r = run("topics", dst, "--create", *args)
        assert r.exit_code == 0, r.stderr
    r = run("produce", dst, "--format", "jsonl", "--values", values, input=backup.stdout)
    assert r.exit_code == 0, r.stderr
    assert "produced 320 records" in r.stderr
    for topic in ("orders", "users"):
        assert store_records(dst, topic) == store_records(src, topic)
    again = run("replay", dst, "--values", values)
    assert again.stdout == backup.stdout  # the backup of the restore is the backup


def test_replay_then_produce_into_a_new_topic_and_a_plain_log(tmp_path):
    src = str(tmp_path / "src")
    build_source(src)
    one = run("replay", src, "--topic", "orders", "--partition", 1)
    r = run("produce", str(tmp_path / "log"), "--format", "jsonl", "--create", input=one.stdout)
    assert r.exit_code == 0, r.stderr
    assert records(str(tmp_path / "log")) == store_records(src, "orders")[1]
    whole = run("replay", src, "--topic", "orders")
    r = run("produce", str(tmp_path / "copy"), "--topic", "orders", "--format", "jsonl",
            "--create", "--partitions", 3, input=whole.stdout)
    assert r.exit_code == 0, r.stderr
    assert store_records(str(tmp_path / "copy"), "orders") == store_records(src, "orders")
    # Several partitions into one plain log: refused at the first record of another one.
    r = run("produce", str(tmp_path / "mixed"), "--format", "jsonl", "--create",
            input=whole.stdout)
    assert r.exit_code == 2 and "more than one partition" in r.stderr
    n = len(store_records(src, "orders")[0])
    assert len(records(str(tmp_path / "mixed"))) == n  # the records before it are written
    # --repartition: placed by key into a topic of another partition count.
    r = run("produce", str(tmp_path / "two"), "--topic", "orders", "--format", "jsonl",
            "--create", "--partitions", 2, input=whole.stdout)
    assert r.exit_code == 2 and "--repartition" in r.stderr
    r = run("produce", str(tmp_path / "two2"), "--topic", "orders", "--format", "jsonl",
            "--create", "--partitions", 2, "--repartition", input=whole.stdout)
    assert r.exit_code == 0, r.stderr
    got = store_records(str(tmp_path / "two2"), "orders")
    assert sum(len(v) for v in got.values()) == 300
    for p, recs in got.items():
        for _, _, key, _, _ in recs:
            if key is not None:
                assert partition_for_key(key, 2) == p


def test_raw_length_prefixed_round_trip_is_binary_safe(tmp_path):
    src = str(tmp_path / "src")
    vals = [bytes(range(256)) * 3, b"", None, b"\n\n\r\x00", b"x" * 70000, None]
    with logstore.Log.open(src, fsync="never") as log:
        log.append_batch(vals)
    raw = run("replay", src, "--format", "raw", "--length-prefixed")
    data = raw.stdout_bytes
    assert data.startswith(struct.pack(">I", 768))
    r = run("produce", str(tmp_path / "dst"), "--format", "raw", "--length-prefixed",
            "--create", input=data)
    assert r.exit_code == 0, r.stderr
    assert [v for _, _, _, v, _ in records(str(tmp_path / "dst"))] == vals
    # A truncated input: what came before is written, exit 2.
    r = run("produce", str(tmp_path / "cut"), "--format", "raw", "--length-prefixed",
            "--create", input=data[:-10])
    assert r.exit_code == 2 and "ends" in r.stderr
    assert len(records(str(tmp_path / "cut"))) == 4
    # Without framing, the whole input is one value.
    blob = bytes(range(256)) * 10
    r = run("produce", str(tmp_path / "one"), "--format", "raw", "--create", input=blob)
    assert r.exit_code == 0
    assert [v for _, _, _, v, _ in records(str(tmp_path / "one"))] == [blob]


def test_text_lines_with_key_separator_headers_timestamp_and_null_marker(tmp_path):
    d = str(tmp_path / "log")
    r = run("produce", d, "--create", "--key-separator", ":", "--header", "src=cli",
            "--header", "v=2", "--timestamp", "2023-11-14T22:13:20Z", "--null-marker", "NULL",
            input="alice:hello\nbob:a:b\n:empty key\ncarol:NULL\n")
    assert r.exit_code == 0, r.stderr
    assert records(d) == [
        (0, T0, b"alice", b"hello", {"src": b"cli", "v": b"2"}),
        (1, T0, b"bob", b"a:b", {"src": b"cli", "v": b"2"}),
        (2, T0, b"", b"empty key", {"src": b"cli", "v": b"2"}),
        (3, T0, b"carol", None, {"src": b"cli", "v": b"2"}),
    ]
    # A line without the separator: the lines before it are written, exit 2, line named.
    r = run("produce", d, "--key-separator", ":", input="dave:1\nno separator\neve:2\n")
    assert r.exit_code == 2 and "line 2" in r.stderr and "offsets 4..4" in r.stderr
    assert len(records(d)) == 5
    # Relative timestamps.
    r = run("produce", d, "--timestamp", "-1h", input="old\n")
    rec = records(d)[-1]
    import time
    assert abs(rec[1] - (time.time() * 1000 - 3_600_000)) < 60_000


def test_bad_options_and_bad_jsonl_are_usage_errors(tmp_path):
    d = str(tmp_path / "log")
    for args, what in [
        (["--format", "jsonl", "--key", "k"], "--key"),
        (["--format", "jsonl", "--header", "a=b"], "carry"),
        (["--length-prefixed"], "--format raw"),
        (["--key", "k", "--key-separator", ":"], "choose one"),
        (["--header", "nothing"], "NAME=VALUE"),
        (["--timestamp", "yesterday"], "not a time"),
    ]:
        r = run("produce", d, "--create", *args, input="x\n")
        assert r.exit_code == 2, (args, r.stderr)
        assert what in r.stderr, (args, r.stderr)
    good = json.dumps({"offset": 0, "timestamp_ms": T0, "key": None,
                       "value": base64.b64encode(b"ok").decode(), "headers": {}})
    for bad, what in [("{not json", "not JSON"), ('{"key": null}', "no \"value\""),
                      ('{"value": "***"}', "encoding"), ('{"value": 5}', "a string")]:
        r = run("produce", d, "--create", "--format", "jsonl", input=good + "\n" + bad + "\n")
        assert r.exit_code == 2 and "line 2" in r.stderr and what in r.stderr, r.stderr
    assert [v for _, _, _, v, _ in records(d)] == [b"ok"] * 4


def test_produce_from_a_file_shows_no_progress_bar_when_not_on_a_terminal(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)))
    r = run("produce", str(tmp_path / "log"), "--create", "--file", f)
    assert r.exit_code == 0
    assert r.stderr.strip().splitlines() == ["produced 1000 records at offsets 0..999 to "
                                             + str(tmp_path / "log")]
    assert lines(run("replay", str(tmp_path / "log"), "--format", "raw", "--newline")) == \
        [f"line {i}" for i in range(1000)]
