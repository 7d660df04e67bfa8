"""Operator CLI tests: ``logstore dump/verify/stats/tail/replay/produce/consume/recover``.

Exact output is checked on the committed golden logs (``segments/golden``, written by
``tools/make_golden.py``), so any change of an output format shows up here. Damage is always
made on copies in a temporary directory. In-process runs use click's CliRunner; the behaviour
that needs a real process (pipes closed early, SIGINT, a writer in another process) uses
``python -m logstore.cli``.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import logstore
from helpers import flip, lines, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "segments", "golden")
PLAIN = "segments/golden/plain"  # relative to ROOT: labels in the output are the path as typed
ZSTD = "segments/golden/zstd"
ACTIVE = "00000000000000000037.log"  # last segment of the plain golden log
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def copy_golden(tmp_path, name="plain"):
    dst = tmp_path / name
    shutil.copytree(os.path.join(GOLDEN, name), dst)
    return str(dst)


def snapshot(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        st = os.stat(p)
        with open(p, "rb") as f:
            out[name] = (f.read(), st.st_mtime_ns, st.st_size)
    return out


# ------------------------------------------------------------------------------ golden output
def test_dump_golden_records_exact():
    r = run("dump", PLAIN, "--values", "text", "--max", "12")
    assert r.exit_code == 0, r.stderr
    assert lines(r) == [
        "# segments/golden/plain/00000000000000000000.log (sealed, 920 bytes)",
        'offset=0 ts=1700000000000 time=2023-11-14T22:13:20.000Z key="user-0" size=8 headers={} batch=0 codec=none crc=ok '
        'value="{\\"n\\": 0}"',
        'offset=1 ts=1700000001000 time=2023-11-14T22:13:21.000Z key="user-1" size=8 headers={} batch=88 codec=none crc=ok '
        'value="{\\"n\\": 1}"',
        'offset=2 ts=1700000002000 time=2023-11-14T22:13:22.000Z key="user-2" size=8 headers={} batch=176 codec=none crc=ok '
        'value="{\\"n\\": 2}"',
        'offset=3 ts=1700000003000 time=2023-11-14T22:13:23.000Z key="user-0" size=8 headers={} batch=264 codec=none crc=ok '
        'value="{\\"n\\": 3}"',
        'offset=4 ts=1700000004000 time=2023-11-14T22:13:24.000Z key="user-1" size=8 headers={} batch=352 codec=none crc=ok '
        'value="{\\"n\\": 4}"',
        'offset=5 ts=1700000005000 time=2023-11-14T22:13:25.000Z key="user-2" size=8 headers={} batch=440 codec=none crc=ok '
        'value="{\\"n\\": 5}"',
        'offset=6 ts=1700000006000 time=2023-11-14T22:13:26.000Z key="user-0" size=7 headers={"type":"created","trace":"t-1"} '
        'batch=528 codec=none crc=ok value="created"',
        'offset=7 ts=1700000007000 time=2023-11-14T22:13:27.000Z key="user-1" size=null headers={} batch=648 codec=none crc=ok '
        'value=null',
        'offset=8 ts=1700000008000 time=2023-11-14T22:13:28.000Z key=null size=0 headers={} batch=728 codec=none crc=ok value=""',
        'offset=9 ts=1700000009000 time=2023-11-14T22:13:29.000Z key=0xfffe6b6579 size=10 headers={"bin":0x8081,"ok":"yes"} '
        'batch=800 codec=none crc=ok value=0x00fffe2062696e617279',
        "# segments/golden/plain/00000000000000000010.log (sealed, 792 bytes)",
        'offset=10 ts=1700000010000 time=2023-11-14T22:13:30.000Z key="user-1" size=16 headers={"batch":"0"} batch=0 '
        'codec=none crc=ok value="batch-0-record-0"',
        'offset=11 ts=1700000011000 time=2023-11-14T22:13:31.000Z key=null size=16 headers={} batch=0 codec=none crc=ok '
        'value="batch-0-record-1"',
    ]
    # Default: no values; --from-offset lands inside a batch of the second segment.
    r = run("dump", PLAIN, "--from-offset", 13, "--max", 2)
    assert lines(r)[-2:] == [
        'offset=13 ts=1700000013000 time=2023-11-14T22:13:33.000Z key=null size=null headers={} batch=0 codec=none crc=ok',
        'offset=14 ts=1700000014000 time=2023-11-14T22:13:34.000Z key="user-2" size=16 headers={} batch=0 codec=none crc=ok',
    ]


def test_dump_golden_json_batches_index_exact():
    r = run("dump", PLAIN, "--json", "--values", "base64", "--from-offset", 9, "--max", 1)
    assert r.exit_code == 0
    assert lines(r) == [
        '{"segment": "00000000000000000000.log", "offset": 9, "timestamp_ms": 1700000009000, '
        '"key": "//5rZXk=", "key_encoding": "base64", "value_size": 10, "value": '
        '"AP/+IGJpbmFyeQ==", "headers": {"bin": "gIE=", "ok": "eWVz"}, "headers_encoding": '
        '"base64", "batch_position": 800, "codec": "none", "crc": "ok"}']
    r = run("dump", PLAIN, "--batches", "--from-offset", 10, "--max", 2)
    assert lines(r) == [
        "# segments/golden/plain/00000000000000000010.log (sealed, 792 bytes)",
        "batch=0 offsets=10..14 records=5 base_ts=1700000010000 max_ts=1700000014000 length=264 "
        "payload=194 raw=194 codec=none version=1 chunks=0 crc=ok",
        "batch=264 offsets=15..19 records=5 base_ts=1700000015000 max_ts=1700000019000 "
        "length=264 payload=194 raw=194 codec=none version=1 chunks=0 crc=ok",
    ]
    r = run("dump", PLAIN + "/00000000000000000010.log", "--index")
    assert r.exit_code == 0
    assert lines(r) == [
        "# segments/golden/plain/00000000000000000010.log (sealed)",
        "index entry=0 offset=15 position=264 ok",
        "index entry=1 offset=20 position=528 ok",
        "timeindex entry=0 timestamp=1700000014000 offset=15 ok",
        "timeindex entry=1 timestamp=1700000019000 offset=20 ok",
        "timeindex entry=2 timestamp=1700000024000 offset=25 ok",
    ]
    # zstd: decoded content and codec (compressed sizes depend on the zstd version).
    r = run("dump", ZSTD, "--values", "text", "--max", 1)
    assert lines(r)[1] == (
        'offset=0 ts=1700000000000 time=2023-11-14T22:13:20.000Z key="user-0" size=72 headers={"type":"order-created"} '
        'batch=0 codec=zstd crc=ok value="{\\"order\\": 0, \\"user\\": \\"user-0\\", '
        '\\"amount\\": 0, \\"note\\": \\"standard shipping\\"}"')


def test_verify_and_stats_golden_exact():
    r = run("verify", PLAIN)
    assert r.exit_code == 0, r.stdout
    assert lines(r) == [
        "segments/golden/plain: 4 segments, offsets [0, 40), 40 records in 24 batches, 2968 bytes",
        "  00000000000000000000.log  sealed  offsets 0..9  10 records  10 batches  920 bytes  ok",
        "  00000000000000000010.log  sealed  offsets 10..24  15 records  3 batches  792 bytes  ok",
        "  00000000000000000025.log  sealed  offsets 25..36  12 records  8 batches  960 bytes  ok",
        "  00000000000000000037.log  active  offsets 37..39  3 records  3 batches  296 bytes  ok",
        "OK: no problems found",
    ]
    assert run("verify", PLAIN, "--quiet").stdout == ""
    r = run("verify", ZSTD, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ok"] and doc["logs"][0]["totals"]["records"] == 121
    r = run("stats", PLAIN)
    assert r.exit_code == 0
    assert lines(r)[:3] == [
        "log segments/golden/plain",
        "segment                   base  end  records  batches  bytes  payload   raw  ratio  "
        "first timestamp           max timestamp             status",
        "00000000000000000000.log     0   10       10       10    920      255   255   1.00  "
        "2023-11-14T22:13:20.000Z  2023-11-14T22:13:29.000Z  ok",
    ]
    assert lines(r)[-2:] == [
        "total                        0   40       40       24   2968     1351  1351   1.00  "
        "2023-11-14T22:13:20.000Z  2023-11-14T22:13:59.000Z  ok",
        "batches by codec: none: 24",
    ]
    t = json.loads(run("stats", ZSTD, "--json").stdout)["logs"][0]["totals"]
    assert t["records"] == 121 and t["batches"] == 7 and t["codecs"] == {"none": 1, "zstd": 6}
    assert t["compression_ratio"] > 3 and t["raw_bytes"] == 14906
    assert (t["first_timestamp"], t["max_timestamp"]) == (1700000000000, 1700000012000)


def test_make_golden_is_deterministic(tmp_path):
    out = tmp_path / "golden"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_golden.py"), "--out",
                    str(out)], check=True, capture_output=True, env=ENV)
    for name in ("plain", "tables"):
        assert snapshot_bytes(out / name) == snapshot_bytes(os.path.join(GOLDEN, "v2", name))
    for name in ("plain", "zstd"):  # the same records in both versions
        a = logstore.Log.open(out / name, readonly=True)
        b = logstore.Log.open(os.path.join(GOLDEN, name), readonly=True)
        assert [tuple(r)[:5] for r in a.replay()] == [tuple(r)[:5] for r in b.replay()]
        a.close()
        b.close()


def snapshot_bytes(directory):
    return {k: v[0] for k, v in snapshot(str(directory)).items()}


# ------------------------------------------------------------------------------ verify
def test_verify_torn_active_segment_is_recoverable(tmp_path):
    d = copy_golden(tmp_path)
    seg = os.path.join(d, ACTIVE)
    os.truncate(seg, os.path.getsize(seg) - 10)
    # After a clean close (the golden log's marker says how many bytes close() made durable)
    # a shorter file is data damage (issue 16, case 5)...
    r = run("verify", d)
    assert r.exit_code == 1 and "0 repairable by `logstore recover --apply`, 1 data damage" \
        in r.stdout, r.stdout
    # ...after a crash (no marker) it is a torn tail.
    os.unlink(os.path.join(d, "clean-shutdown"))
    r = run("verify", d)
    assert r.exit_code == 1
    out = r.stdout
    assert f"PROBLEM [torn_tail] {seg} at byte 192: truncated batch" in out
    assert "`logstore recover --apply` does it now" in out and "torn tail" in out
    assert "1 repairable by `logstore recover --apply`, 0 data damage" in out
    doc = json.loads(run("verify", d, "--json").stdout)
    [p] = doc["logs"][0]["problems"]
    assert (p["kind"], p["file"], p["position"], p["recoverable"]) == ("torn_tail", seg, 192, True)


def test_verify_bit_flip_in_sealed_segment_is_damage(tmp_path):
    d = copy_golden(tmp_path)
    seg = os.path.join(d, "00000000000000000010.log")
    flip(seg, 300)  # inside the second batch (bytes 264..527)
    r = run("verify", d)
    assert r.exit_code == 1
    assert f"PROBLEM [damaged] {seg} at byte 264: CRC32C mismatch" in r.stdout
    assert "data damaged in a sealed segment" in r.stdout
    assert "cannot repair" in r.stdout and "valid batches resume at byte 528" in r.stdout
    assert "0 repairable by `logstore recover --apply`, 1 data damage" in r.stdout


def test_verify_index_problems_and_leftovers(tmp_path):
    d = copy_golden(tmp_path)
    flip(os.path.join(d, "00000000000000000000.index"), 0)  # entry 0 points at a wrong byte
    open(os.path.join(d, "x.tmp"), "wb").close()
    r = run("verify", d)
    assert r.exit_code == 1
    assert ("PROBLEM [index] " + os.path.join(d, "00000000000000000000.index")
            + " at byte 0: entry 0 (offset 2 -> log byte 229): no batch starts at byte 229"
            in r.stdout)
    assert "WARNING leftover x.tmp" in r.stdout
    r = run("dump", d, "--index")
    assert r.exit_code == 1 and "index entry=0 offset=2 position=229 BAD: no batch" in r.stdout
    # A leftover alone is a warning, not a failure.
    d2 = copy_golden(tmp_path, "zstd")
    open(os.path.join(d2, "00000000000000000000.log.cleaned"), "wb").close()
    r = run("verify", d2)
    assert r.exit_code == 0 and "WARNING leftover 00000000000000000000.log.cleaned" in r.stdout


def test_verify_compacted_log_and_compaction_leftovers(tmp_path):
    d = str(tmp_path / "compacted")
    with logstore.Log.open(d, cleanup_policy="compact", segment_bytes=1024) as log:
        for i in range(120):
            log.append(b"v%d" % i, key=b"k%d" % (i % 5), timestamp_ms=1700000000000 + i)
        log.compact()
    r = run("verify", d)
    assert r.exit_code == 0, r.stdout  # gaps and emptied segments are expected after compaction
    doc = json.loads(run("verify", d, "--json").stdout)["logs"][0]
    assert doc["compacted"] and doc["totals"]["records"] < 120
    r = run("replay", d, "--values", "text")
    with logstore.Log.open(d, readonly=True) as log:
        assert [json.loads(x)["offset"] for x in lines(r)] == [x.offset for x in log.replay()]
    # Files an interrupted compaction or retention pass leaves behind are warnings, and a dry
    # run of recover says what the writer's open will do with them.
    for name in ("00000000000000000000.log.cleaned", "00000000000000000000.log.swap",
                 "00000000000000000099.log.deleted"):
        open(os.path.join(d, name), "wb").close()
    r = run("verify", d)
    assert r.exit_code == 0
    assert ("WARNING leftover 00000000000000000000.log.swap: an uncommitted compaction swap, "
            "not part of the log (a writer's open finds it deleted)") in r.stdout
    r = run("recover", d)
    assert "would: leftover 00000000000000000099.log.deleted (a segment being deleted by " \
        "retention): deleted" in r.stdout
    r = run("recover", d, "--apply")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert not [n for n in os.listdir(d) if n.endswith((".cleaned", ".swap", ".deleted"))]


def test_read_only_commands_change_nothing(tmp_path):
    clean = copy_golden(tmp_path)
    torn = copy_golden(tmp_path, "zstd")
    os.truncate(os.path.join(torn, "00000000000000000100.log"), 300)
    before = {d: snapshot(d) for d in (clean, torn)}
    time.sleep(0.01)
    for d in (clean, torn):
        for args in (["verify", d], ["verify", d, "--json"], ["stats", d], ["dump", d],
                     ["dump", d, "--batches", "--continue-on-error"], ["dump", d, "--index"],
                     ["recover", d], ["tail", d], ["replay", d], ["consume", d],
                     ["verify", os.path.join(d, sorted(os.listdir(d))[1])]):
            run(*args)
        assert snapshot(d) == before[d]
        assert not os.path.exists(os.path.join(d, ".lock"))


def test_verify_while_a_writer_holds_the_lock(tmp_path):
    d = str(tmp_path / "log")
    log = logstore.Log.open(d, segment_bytes=4096, index_interval_bytes=64)
    for i in range(50):
        log.append(b"value %d" % i, key=b"k")
    r = run("verify", d)
    assert r.exit_code == 0, r.stdout
    assert f"a writer (pid {os.getpid()}) has the log open" in r.stdout
    # The active segment's index is preallocated (zero entries at its end): still a good hint.
    for off in (0, 17, 31, 49):
        r = run("dump", d, "--from-offset", off, "--max", 1, "--values", "text")
        assert lines(r)[-1].startswith(f"offset={off} ") and f'value="value {off}"' in r.stdout
    log.append(b"still the writer")  # verify did not take or break the lock
    r = run("produce", d, input="x\n")
    assert r.exit_code == 3 and "already open for writing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("recover", d, "--apply")
    assert r.exit_code == 3
    log.close()


# ------------------------------------------------------------------------------ dump errors
def test_dump_stops_or_continues_on_corruption(tmp_path):
    d = copy_golden(tmp_path)
    flip(os.path.join(d, "00000000000000000010.log"), 300)
    r = run("dump", d)
    assert r.exit_code == 1
    offsets = [int(x.split()[0][7:]) for x in lines(r) if x.startswith("offset=")]
    assert offsets == list(range(15))
    assert ("corrupt data in " + os.path.join(d, "00000000000000000010.log")
            + " at byte 264: CRC32C mismatch (data damaged; the next valid batch is at byte 528)"
            in r.stderr)
    r = run("dump", d, "--continue-on-error")
    assert r.exit_code == 1
    offsets = [int(x.split()[0][7:]) for x in lines(r) if x.startswith("offset=")]
    assert offsets == list(range(15)) + list(range(20, 40))
    assert "skipping bytes 264..527" in r.stderr
    r = run("dump", d, "--batches", "--from-offset", 10, "--max", 3)
    assert "batch=264 offsets=15..19 records=5" in r.stdout and r.stdout.count("crc=BAD") == 1


def test_usage_errors_are_one_line(tmp_path):
    for args, code, text in (
        (["verify", str(tmp_path / "missing")], 2, "no such file or directory"),
        (["verify", str(tmp_path)], 2, "is not a log directory"),
        (["dump", __file__], 2, "neither a log directory nor a .log segment file"),
        (["tail", os.path.join(GOLDEN, "plain", ACTIVE)], 2, "needs a log directory"),
        (["consume", PLAIN, "--from-offset", 41], 2, "past the end of the log"),
        (["produce", str(tmp_path / "nolog")], 2, "no such file or directory"),
    ):
        r = run(*args)
        assert r.exit_code == code, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("logstore: error: ") and text in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert run("verify").exit_code == 2  # click usage error


# ------------------------------------------------------------------------------ reading
def _decode(obj, name):
    v = obj[name]
    if v is None:
        return None
    return base64.b64decode(v) if obj.get(name + "_encoding", "base64") == "base64" \
        else v.encode()


def test_replay_jsonl_matches_api(tmp_path):
    for path in (PLAIN, ZSTD):
        r = run("replay", path)
        assert r.exit_code == 0
        got = [json.loads(x) for x in lines(r)]
        with logstore.Log.open(path, readonly=True) as log:
            want = list(log.replay())
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert (g["offset"], g["timestamp_ms"]) == (w.offset, w.timestamp_ms)
            assert _decode(g, "key") == w.key and _decode(g, "value") == w.value
            assert {k: base64.b64decode(v) for k, v in g["headers"].items()} == w.headers
    # --values text: UTF-8 as text, the rest base64 with a marker.
    r = run("replay", PLAIN, "--values", "text", "--from-offset", 6, "--to-offset", 10)
    assert lines(r) == [
        '{"offset": 6, "timestamp_ms": 1700000006000, "key": "user-0", "value": "created", '
        '"headers": {"type": "created", "trace": "t-1"}}',
        '{"offset": 7, "timestamp_ms": 1700000007000, "key": "user-1", "value": null, '
        '"headers": {}}',
        '{"offset": 8, "timestamp_ms": 1700000008000, "key": null, "value": "", "headers": {}}',
        '{"offset": 9, "timestamp_ms": 1700000009000, "key": "//5rZXk=", "key_encoding": '
        '"base64", "value": "AP/+IGJpbmFyeQ==", "value_encoding": "base64", "headers": '
        '{"bin": "gIE=", "ok": "eWVz"}, "headers_encoding": "base64"}',
    ]
    r = run("replay", PLAIN, "--from-time", "2023-11-14T22:13:57Z", "--values", "text")
    assert [json.loads(x)["offset"] for x in lines(r)] == [37, 38, 39]
    out = tmp_path / "raw"
    r = run("replay", PLAIN, "--format", "raw", "--newline", "--to-offset", 9, "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    with logstore.Log.open(PLAIN, readonly=True) as log:
        want = b"".join((rec.value or b"") + b"\n" for rec in log.replay(0, 9))
    assert out.read_bytes() == want


def test_produce_consume_tail_roundtrip(tmp_path):
    d = str(tmp_path / "new")
    r = run("produce", d, "--create", "--key", "k1", "--batch", "2", input="a\nb\n\nc")
    assert r.exit_code == 0 and "produced 4 records at offsets 0..3" in r.stderr
    r = run("produce", d, "--quiet", input="d\n")
    assert r.exit_code == 0 and r.stderr == ""
    got = [json.loads(x) for x in lines(run("consume", d, "--values", "text"))]
    assert [(g["offset"], g["key"], g["value"]) for g in got] == [
        (0, "k1", "a"), (1, "k1", "b"), (2, "k1", ""), (3, "k1", "c"), (4, None, "d")]
    got = [json.loads(x)["offset"] for x in lines(run("consume", d, "--from-offset", 1,
                                                          "--max", 2))]
    assert got == [1, 2]
    r = run("tail", d, "-n", 2)
    assert [x.split()[0] for x in lines(r)] == ["offset=3", "offset=4"]
    assert lines(r)[1].endswith('key=null size=1 headers={} value="d"')
    with logstore.Log.open(d, readonly=True) as log:
        assert log.end_offset == 5 and log.get(0).key == b"k1"


# ------------------------------------------------------------------------------ recover
def test_recover_dry_run_then_apply_torn_tail(tmp_path):
    d = copy_golden(tmp_path)
    os.unlink(os.path.join(d, "clean-shutdown"))  # as after a crash (with it: data damage)
    seg = os.path.join(d, ACTIVE)
    os.truncate(seg, 250)
    before = snapshot(d)
    r = run("recover", d)
    assert r.exit_code == 1
    assert "would: truncate the torn tail of 00000000000000000037.log: 58 bytes from byte 192" \
        in r.stdout
    assert snapshot(d) == before
    r = run("recover", d, "--apply")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "did: truncate the torn tail" in r.stdout and "OK: the log verifies clean" in r.stdout
    assert os.path.getsize(seg) == 192
    assert run("verify", d).exit_code == 0
    r = run("recover", d)
    assert r.exit_code == 0 and "nothing to recover" in r.stdout
    with logstore.Log.open(d, readonly=True) as log:
        assert log.end_offset == 39


def test_recover_apply_mid_file_damage_in_active_segment(tmp_path):
    d = copy_golden(tmp_path)
    os.unlink(os.path.join(d, "clean-shutdown"))  # as after a crash
    flip(os.path.join(d, ACTIVE), 70)  # first batch of the active segment; two valid follow
    with pytest.raises(logstore.CorruptLogError):
        logstore.Log.open(d)
    r = run("verify", d)
    assert r.exit_code == 1 and "a valid batch follows at byte 96, so this is not a torn tail" \
        in r.stdout
    # The damaged bytes were durable (later batches say so): data damage. recover --apply
    # refuses and changes nothing (issue 16, case 5); --force cuts.
    before = snapshot(d)
    for args in ((), ("--apply",)):
        r = run("recover", d, *args)
        assert r.exit_code == 1
        assert "refused (data damage): 00000000000000000037.log: CRC32C mismatch" in r.stdout
        assert snapshot(d) == before
    r = run("recover", d, "--force")
    assert r.exit_code == 1
    assert ("would: cut 00000000000000000037.log at byte 0, DROPPING 296 bytes including 2 "
            "records" in r.stdout)
    assert snapshot(d) == before
    r = run("recover", d, "--apply", "--force")
    assert r.exit_code == 0, r.stdout + r.stderr
    with logstore.Log.open(d) as log:
        assert log.end_offset == 37
        log.append(b"writable again")
    assert run("verify", d).exit_code == 0


def test_recover_apply_leaves_sealed_damage_and_fixes_indexes(tmp_path):
    d = copy_golden(tmp_path)
    flip(os.path.join(d, "00000000000000000010.log"), 300)
    flip(os.path.join(d, "00000000000000000025.index"), 0)
    r = run("recover", d, "--apply")
    assert r.exit_code == 1
    assert "did: rewrite the indexes of sealed segment 00000000000000000025.log" in r.stdout
    assert "cannot repair: 00000000000000000010.log at byte 264: CRC32C mismatch" in r.stdout
    doc = json.loads(run("verify", d, "--json").stdout)
    assert [p["kind"] for p in doc["logs"][0]["problems"]] == ["damaged"]


# ------------------------------------------------------------------------------ processes
def _big_log(tmp_path):
    d = str(tmp_path / "big")
    with logstore.Log.open(d, fsync="never", segment_bytes=256 * 1024) as log:
        for b in range(40):
            log.append_batch([b"value-%d" % (b * 1000 + j) for j in range(1000)])
    return d


def test_pipe_closed_early_is_quiet(tmp_path):
    d = _big_log(tmp_path)
    for args in (["dump", d, "--values", "text"], ["replay", d], ["tail", d, "-n", "40000"]):
        p = subprocess.Popen([sys.executable, "-m", "logstore.cli"] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        first = p.stdout.readline()
        assert first
        p.stdout.close()  # like `| head -1`
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(timeout=30) == 0, err
        assert err == b"", err


WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import logstore
log = logstore.Log.open(sys.argv[1], segment_bytes=1024)
print("ready", flush=True)
i = 0
while True:
    log.append(b"m%d" % i, key=b"k")
    i += 1
    time.sleep(0.005)
"""


def test_tail_follow_against_writer_process(tmp_path):
    d = str(tmp_path / "log")
    w = subprocess.Popen([sys.executable, "-c", WRITER, d, ROOT], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    try:
        assert w.stdout.readline() == b"ready\n"
        t = subprocess.Popen([sys.executable, "-m", "logstore.cli", "tail", d, "-n", "0",
                              "--follow", "--interval", "0.02"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        got = [t.stdout.readline().decode() for _ in range(40)]  # crosses segment rolls
        offsets = [int(x.split()[0][7:]) for x in got]
        assert offsets == list(range(offsets[0], offsets[0] + 40))
        assert all(f'value="m{o}"' in x for o, x in zip(offsets, got))
        t.send_signal(signal.SIGINT)
        _, err = t.communicate(timeout=20)
        assert t.returncode == 0, err
        assert b"Traceback" not in err and err == b""
    finally:
        w.kill()
        w.wait()


def test_module_entry_point_and_demo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "logstore.cli", "--help"], capture_output=True,
                       env=ENV, text=True)
    assert r.returncode == 0 and "Usage: logstore" in r.stdout
    for cmd in ("dump", "verify", "stats", "tail", "replay", "produce", "consume", "recover",
                "demo"):
        assert cmd in r.stdout
    r = run("demo", str(tmp_path / "demo"), "--records", "1000")
    assert r.exit_code == 0, r.stdout
    assert "acknowledged records lost: 0 (must be 0)" in r.stdout
