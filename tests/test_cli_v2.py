"""Operator commands on batch format version 2 (issue 23): ``dump`` (records, ``--batches``,
``--index``), ``verify``, ``stats`` and ``recover`` on the version 2 golden logs
(``segments/golden/v2``), on a version 1 log that took version 2 appends, and on damage that
only a full check finds (a stale chunk table entry). Exact output where it is part of the
format; damage always on copies.
"""

import json
import os
import shutil
import struct

import pytest

import logstore
from helpers import lines, run
from logstore.format import header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "segments", "golden")
TABLES = "segments/golden/v2/tables"  # relative to ROOT, as the labels print it
PLAIN2 = "segments/golden/v2/plain"


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_dump_batches_of_the_tables_golden_exact():
    r = run("dump", TABLES, "--batches")
    assert r.exit_code == 0, r.stderr
    assert lines(r) == [
        "# segments/golden/v2/tables/00000000000000000000.log (sealed, 24528 bytes)",
        "batch=0 offsets=0..0 records=1 base_ts=1700000000000 max_ts=1700000000000 length=88 "
        "payload=19 raw=19 codec=none version=2 chunks=0 crc=ok",
        # 300 records with keys, headers, tombstones, timestamps: 24,245 bytes of payload in 12
        # chunks of 2 KiB, a 48-byte table, 3 bytes of padding
        "batch=88 offsets=1..300 records=300 base_ts=1700000001000 max_ts=1700000001299 "
        "length=24360 payload=24245 raw=24245 codec=none version=2 chunks=12 crc=ok",
        "batch=24448 offsets=301..301 records=1 base_ts=1700000002000 max_ts=1700000002000 "
        "length=80 payload=11 raw=11 codec=none version=2 chunks=0 crc=ok",
        "# segments/golden/v2/tables/00000000000000000302.log (active, 41832 bytes)",
        # 400 values of 100 bytes: 400 end positions + 40,000 bytes, 21 chunks
        "batch=0 offsets=302..701 records=400 base_ts=1700000003000 max_ts=1700000003000 "
        "length=41752 payload=41600 raw=41600 codec=none version=2 chunks=21 crc=ok",
        "batch=41752 offsets=702..702 records=1 base_ts=1700000004000 max_ts=1700000004000 "
        "length=80 payload=14 raw=14 codec=none version=2 chunks=0 crc=ok",
    ]
    doc = json.loads(run("dump", TABLES, "--batches", "--json", "--max", 2).stdout.split("\n")[1])
    assert (doc["version"], doc["chunks"], doc["records"]) == (2, 12, 300)


def test_dump_records_verify_and_stats_of_the_tables_golden():
    with logstore.Log.open(TABLES, readonly=True) as log:
        expected = list(log.replay())
    assert len(expected) == 703
    r = run("dump", TABLES, "--json", "--values", "base64")
    assert r.exit_code == 0, r.stderr
    docs = [json.loads(line) for line in lines(r)]
    assert [d["offset"] for d in docs] == list(range(703))
    assert [d["value_size"] for d in docs] == [None if x.value is None else len(x.value)
                                             for x in expected]
    r = run("verify", TABLES)
    assert r.exit_code == 0, r.stdout
    assert lines(r)[0] == ("segments/golden/v2/tables: 2 segments, offsets [0, 703), 703 records "
                           "in 5 batches, 66360 bytes")
    assert lines(r)[-1] == "OK: no problems found"
    r = run("dump", TABLES + "/00000000000000000302.log", "--index")
    assert r.exit_code == 0
    assert all(line.endswith(" ok") for line in lines(r)[1:])
    r = run("stats", TABLES, "--json")
    assert r.exit_code == 0
    t = json.loads(r.stdout)["logs"][0]["totals"]
    assert (t["records"], t["batches"]) == (703, 5)


def test_verify_finds_a_stale_chunk_table_entry_that_reads_never_return(tmp_path):
    d = str(tmp_path / "tables")
    shutil.copytree(os.path.join(ROOT, TABLES), d)
    seg = os.path.join(d, "00000000000000000000.log")
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    h = header.parse_header(data, 88)
    entry = 88 + 64 + h.payload_length + 4 * 5  # chunk 5's running CRC
    data[entry] ^= 0x01
    with open(seg, "wb") as f:
        f.write(data)
    r = run("verify", d)
    assert r.exit_code == 1
    assert "at byte 88" in r.stdout and "chunk 5" in r.stdout, r.stdout
    # The records are all still intact: a full replay returns them; get reports the chunk.
    with logstore.Log.open(d, readonly=True) as log:
        assert len(list(log.replay())) == 703
        with pytest.raises(logstore.CorruptLogError):
            for o in range(1, 301):
                log.get(o)


def test_v1_golden_with_v2_appends_dumps_and_verifies(tmp_path):
    d = str(tmp_path / "plain")
    shutil.copytree(os.path.join(GOLDEN, "plain"), d)
    with logstore.Log.open(d) as log:
        log.append_batch([b"v2-%03d" % i * 20 for i in range(300)],
                         keys=[b"user-%d" % (i % 3) for i in range(300)])
        log.append(b"v2 single", key=b"user-0")
    r = run("dump", d, "--batches", "--json")
    assert r.exit_code == 0, r.stderr
    versions = [json.loads(line)["version"] for line in lines(r)]
    assert versions[0] == 1 and versions[-1] == 2 and set(versions) == {1, 2}
    assert any(json.loads(line)["chunks"] for line in lines(r))
    r = run("verify", d)
    assert r.exit_code == 0, r.stdout
    assert "341 records" in lines(r)[0]
    r = run("dump", d, "--from-offset", 40, "--max", 1, "--values", "text")
    assert r.exit_code == 0
    assert lines(r)[-1].endswith('value="v2-000v2-000v2-000v2-000v2-000v2-000v2-000v2-000v2-000'
                                 'v2-000v2-000v2-000v2-000v2-000v2-000v2-000v2-000v2-000v2-000'
                                 'v2-000"')


def test_recover_cuts_a_torn_tabled_batch(tmp_path):
    d = str(tmp_path / "tables")
    shutil.copytree(os.path.join(ROOT, TABLES), d)
    os.unlink(os.path.join(d, "clean-shutdown"))
    seg = os.path.join(d, "00000000000000000302.log")
    os.truncate(seg, 30000)  # inside the 400-record batch, the segment's first
    r = run("verify", d)
    assert r.exit_code == 1 and "torn_tail" in r.stdout, r.stdout
    r = run("recover", "--apply", d)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert os.path.getsize(seg) == 0
    with logstore.Log.open(d, readonly=True) as log:
        assert log.end_offset == 302
    assert run("verify", d).exit_code == 0


def test_v2_plain_golden_dumps_like_v1():
    """The version 2 plain golden holds the same records as version 1's, in batches of the same
    sizes (end positions take the bytes lengths took): only the version field differs."""
    a = run("dump", "segments/golden/plain", "--json", "--values", "base64")
    b = run("dump", PLAIN2, "--json", "--values", "base64")
    assert a.exit_code == b.exit_code == 0
    assert lines(a) == lines(b)
    a = run("dump", "segments/golden/plain", "--batches")
    b = run("dump", PLAIN2, "--batches")
    assert [x.replace("version=1", "version=2").replace("golden/plain", "golden/v2/plain")
            for x in lines(a)] == lines(b)
    for line in lines(b):
        assert struct is not None and (line.startswith("#") or "version=2 chunks=0" in line)
