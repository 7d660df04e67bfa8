"""``logstore replay``/``consume`` write records from whole batches (``logstore.cli.render``):
byte for byte what the per-record path (``json.dumps(record_json(rec))``, values back to back)
writes, on random logs: keys and no keys, tombstones, headers, non-UTF-8 bytes, zstd batches,
compacted logs with gaps, ranges starting and ending inside batches. And ``Out`` writes in
large pieces whatever PYTHONUNBUFFERED says.
"""

import json
import os
import random
import struct
import subprocess
import sys

import pytest

import logstore
from helpers import run
from logstore.cli import render
from logstore.cli.output import dumps, record_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_log(path, seed, compression="none", compacted=False):
    rng = random.Random(seed)
    opts = dict(fsync="never", compression=compression, segment_bytes=4096)
    if compacted:
        opts["cleanup_policy"] = "compact"
    with logstore.Log.open(path, **opts) as log:
        for _ in range(rng.randint(5, 30)):
            n = rng.randint(1, 40)
            values, keys, headers = [], [], []
            for _ in range(n):
                kind = rng.random()
                if kind < 0.1:
                    values.append(None)
                elif kind < 0.2:
                    values.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 20))))
                else:
                    values.append(rng.choice(["é€", "plain", "", '"quoted" \\ \n\t\x01']).encode()
                                  * rng.randint(0, 5))
                k = rng.random()
                keys.append(b"k%d" % rng.randint(0, 5) if compacted or k < 0.6 else
                            (None if k < 0.8 else b"\xff\xfe"))
                h = rng.random()
                headers.append(None if h < 0.6 else
                               {"a": b"1", "b\u00e9": b"\x80" if h < 0.7 else b"text"})
            if rng.random() < 0.3 and not compacted:
                keys = None
            if rng.random() < 0.3:
                headers = None
            log.append_batch(values, keys=keys, headers=headers,
                             timestamps_ms=[1_700_000_000_000 + rng.randint(0, 10**6)
                                            for _ in range(n)])
        if compacted:
            log.compact()
    return logstore.Log.open(path, readonly=True)


def slow_jsonl(recs, mode, where=None):
    out = []
    for rec in recs:
        obj = record_json(rec, mode)
        if where:
            obj = {**where, **obj}
        out.append(dumps(obj) + "\n")
    return "".join(out).encode("utf-8", "backslashreplace")


def slow_raw(recs, framing):
    out = []
    for rec in recs:
        v = rec.value
        if framing == "length":
            out.append(struct.pack(">I", 0xFFFFFFFF if v is None else len(v)) + (v or b""))
        else:
            out.append((v or b"") + (b"\n" if framing == "newline" else b""))
    return b"".join(out)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("compression,compacted", [("none", False), ("zstd", False),
                                                   ("none", True)])
def test_batch_rendering_equals_per_record_rendering(tmp_path, seed, compression, compacted):
    log = random_log(str(tmp_path / "log"), seed, compression, compacted)
    rng = random.Random(seed)
    with log:
        end = log.end_offset
        recs = list(log.replay())
        assert recs
        for _ in range(5):
            a = rng.randint(log.start_offset, end)
            b = rng.randint(a, end)
            want = [r for r in recs if a <= r.offset < b]
            where = rng.choice([None, {"topic": "t", "partition": 3}])
            pre = render.prefix(where or {})
            for mode in ("base64", "text"):
                got = b"".join(render.jsonl(batch, *render.bounds(batch, a, b), mode, pre)
                               for batch in log.replay_batches(a, b))
                assert got == slow_jsonl(want, mode, where), (mode, a, b)
            for framing in ("none", "newline", "length"):
                got = b"".join(bytes(render.raw(batch, *render.bounds(batch, a, b), framing))
                               for batch in log.replay_batches(a, b))
                assert got == slow_raw(want, framing), (framing, a, b)


def test_replay_command_matches_the_api_with_max_and_times(tmp_path):
    d = str(tmp_path / "log")
    random_log(d, 99).close()
    with logstore.Log.open(d, readonly=True) as log:
        recs = list(log.replay())
    r = run("replay", d, "--values", "text")
    assert r.exit_code == 0
    assert r.stdout.encode() == slow_jsonl(recs, "text")
    r = run("replay", d, "--max", 7, "--from-offset", 3)
    assert [json.loads(x)["offset"] for x in r.stdout.splitlines()] == \
        [x.offset for x in recs if x.offset >= 3][:7]
    # --from-time/--to-time: the first record at or after each (offset_for_time).
    ts = sorted(x.timestamp_ms for x in recs)
    t1, t2 = ts[len(ts) // 4], ts[3 * len(ts) // 4]
    with logstore.Log.open(d, readonly=True) as log:
        a, b = log.offset_for_time(t1), log.offset_for_time(t2)
    r = run("replay", d, "--from-time", t1, "--to-time", t2)
    assert [json.loads(x)["offset"] for x in r.stdout.splitlines()] == \
        [x.offset for x in recs if a <= x.offset < b]
    out = tmp_path / "raw"
    r = run("replay", d, "--format", "raw", "--length-prefixed", "-o", out)
    assert r.exit_code == 0 and out.read_bytes() == slow_raw(recs, "length")


def test_out_writes_large_pieces_under_pythonunbuffered(tmp_path):
    """20,000 records to a pipe with PYTHONUNBUFFERED=1: a handful of write() calls, not one
    per record (counted with strace-free means: the child counts its own os.write calls)."""
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never") as log:
        for i in range(0, 20_000, 1000):
            log.append_batch([b"v%06d" % j for j in range(i, i + 1000)])
    code = (
        "import io, sys\n"
        "from logstore.cli import output\n"
        "calls = []\n"
        "class Counting(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b):\n"
        "        calls.append(len(b)); return len(b)\n"
        "raw = sys.stdout.buffer\n"
        "sink = Counting()\n"
        "output.binary = lambda stream: sink\n"
        "from logstore.cli import main\n"
        "try:\n"
        "    main(['replay', sys.argv[1]], standalone_mode=False)\n"
        "finally:\n"
        "    raw.write(('%d %d\\n' % (len(calls), sum(calls))).encode()); raw.flush()\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", code, d], capture_output=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    calls, total = map(int, p.stdout.split())
    assert total > 20_000 * 40  # every record was written
    assert calls <= total // (1 << 20) + 2, calls
