"""Batch format version 2 (issue 23): item end columns and chunk tables, read by checking only
the bytes a read uses; version 1 logs stay readable and take version 2 appends.

What is checked here, byte for byte:

* the version 1 golden logs (``segments/golden/{plain,zstd}``) read as before, are upgraded
  (``logstore.meta`` version 2) only by a writable open, then hold both versions and every read
  path returns every record;
* a version 2 batch with a chunk table: every read path agrees with whole-batch decoding; a byte
  flipped anywhere in it is either reported by ``get`` (``CorruptLogError``) or harmless (the
  exact original record), and always reported when ``get`` returned or used that byte; a full
  replay reports every byte it returns, a scan (recovery, ``verify``) every byte of the batch;
* torn and stale tails of a tabled batch are cut by recovery; the on-disk overhead is the
  table, 4 bytes per 2 KiB chunk;
* records without headers share one immutable empty ``dict``.

These tests use the format modules directly (``logstore.format``), by design.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logstore
from logstore import CorruptLogError, Log, UnsupportedFormatError
from logstore.format import encode, header
from logstore.format.columns import EMPTY_HEADERS
from logstore.fs import DEFAULT_FS
from logstore.storage.segment import Segment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "segments", "golden")
HDR = header.HEADER_SIZE


# ------------------------------------------------------------------------------ helpers
def batches_of(path: str):
    """[(position, header)] of every batch of a segment file, walked by length."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + HDR <= len(data):
        h = header.parse_header(data, pos)
        if h.magic != header.MAGIC:
            break
        out.append((pos, h))
        pos += h.length
    return out


def segment_files(d: str):
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".log"))


def scan_all(d: str) -> None:
    """Every segment scanned strictly (every byte of every batch, chunk tables included)."""
    for path in segment_files(d):
        seg = Segment(d, int(os.path.basename(path)[:20]), DEFAULT_FS, 4096, writable=False)
        seg.scan(0, strict=True)


def read_meta(d: str) -> dict:
    with open(os.path.join(d, "logstore.meta")) as f:
        return json.load(f)


def snapshot(d: str) -> dict:
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


def all_ways(log: Log, expected) -> None:
    """get, get_many, read, replay and replay_batches all return ``expected`` exactly."""
    offsets = [r.offset for r in expected]
    assert list(log.replay()) == expected
    assert [log.get(o) for o in offsets] == expected
    rnd = random.Random(len(expected))
    wanted = [rnd.choice(offsets) for _ in range(3 * len(offsets))]
    by = {r.offset: r for r in expected}
    assert log.get_many(wanted) == [by[o] for o in wanted]
    assert [r for b in log.replay_batches() for r in b.records()] == expected
    for o in rnd.sample(offsets, min(20, len(offsets))):
        assert log.read(o, max_records=7) == [r for r in expected if r.offset >= o][:7]


def big_batch(n: int = 300, seed: int = 1):
    """Values, keys, headers and timestamps of a batch whose payload needs a chunk table."""
    rnd = random.Random(seed)
    values = [None if j % 23 == 4 else rnd.randbytes(rnd.randrange(0, 200)) for j in range(n)]
    keys = [None if j % 5 == 2 else b"key-%d" % (j % 13) for j in range(n)]
    hdrs = [{"n": b"%d" % j} if j % 6 == 0 else None for j in range(n)]
    ts = [1_700_000_000_000 + 7 * j for j in range(n)]
    return values, keys, hdrs, ts


def write_big_log(d: str, **options) -> list:
    """Small batches around one big tabled batch (keys, headers, timestamps, nulls) and one
    big values-only batch; returns every record."""
    values, keys, hdrs, ts = big_batch()
    with Log.open(d, fsync="never", **options) as log:
        log.append(b"before", key=b"k")
        log.append_batch([b"s%d" % i for i in range(5)])
        log.append_batch(values, keys=keys, headers=hdrs, timestamps_ms=ts)
        log.append_buffer(bytes(range(256)) * 100, [256] * 100, timestamp_ms=5)
        log.append(b"after", headers={"h": b"v"})
        return list(log.replay())


# ------------------------------------------------------------------------------ version 1
@pytest.mark.parametrize("name", ["plain", "zstd"])
def test_v1_golden_log_reads_upgrades_and_takes_v2_batches(tmp_path, name):
    d = str(tmp_path / name)
    shutil.copytree(os.path.join(GOLDEN, name), d)
    assert read_meta(d)["version"] == 1
    assert {h.version for p in segment_files(d) for _, h in batches_of(p)} == {1}
    before = snapshot(d)
    with Log.open(d, readonly=True) as ro:
        old = list(ro.replay())
        all_ways(ro, old)
    assert snapshot(d) == before  # a read-only open changes nothing, not even the version
    assert len(old) in (40, 121)

    values, keys, hdrs, ts = big_batch(300)
    with Log.open(d) as log:  # (its stored settings: tiny segments)
        assert read_meta(d)["version"] == 2  # upgraded before anything was written
        log.append(b"single v2", key=b"user-0")
        log.append_batch([b"a", None, b"c"], keys=[b"user-1", b"user-2", None])
        log.append_batch(values, keys=keys, headers=hdrs, timestamps_ms=ts)
        new = list(log.replay(len(old)))
        assert len(new) == 4 + len(values)
        all_ways(log, old + new)
    versions = [h.version for p in segment_files(d) for _, h in batches_of(p)]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    [big] = [h for p in segment_files(d) for _, h in batches_of(p)
             if h.record_count == len(values)]
    if big.attributes & header.CODEC_MASK:  # (zstd: compressed whole, no chunk table)
        assert name == "zstd" and not big.attributes & header.CHUNK_SHIFT_MASK
    else:
        assert big.attributes & header.CHUNK_SHIFT_MASK
    scan_all(d)
    with Log.open(d, readonly=True) as ro:  # reopened: clean marker
        all_ways(ro, old + new)
    log = Log.open(d)
    log.append(b"unflushed")
    log.abandon()  # a crash: the next open scans the active segment
    with Log.open(d) as log:
        assert log.recovery_report is not None and not log.recovery_report.clean
        assert list(log.replay()) == old + new + [log.get(len(old) + len(new))]


def test_newer_log_format_is_refused_and_left_untouched(tmp_path):
    d = str(tmp_path / "log")
    write_big_log(d)
    meta = read_meta(d)
    meta["version"] = 3
    with open(os.path.join(d, "logstore.meta"), "w") as f:
        json.dump(meta, f)
    before = snapshot(d)
    for readonly in (True, False):
        with pytest.raises(UnsupportedFormatError, match="version 3"):
            Log.open(d, readonly=readonly)
    assert snapshot(d) == before


# ------------------------------------------------------------------------------ layout
def test_layout_and_size_overhead_of_100_byte_records(tmp_path):
    d = str(tmp_path / "log")
    n = 1000
    with Log.open(d, fsync="never") as log:
        log.append_batch([bytes([i % 256]) * 100 for i in range(n)])
        log.append(b"x" * 100)
        log.append_batch([b"y" * 100] * 100)
    [(p0, big), (p1, one), (p2, hundred)] = batches_of(segment_files(d)[0])
    assert {big.version, one.version, hundred.version} == {2}
    # 1,000 records: a chunk table of ceil(payload / 2 KiB) running CRCs after the payload.
    shift = (big.attributes >> header.CHUNK_SHIFT_AT) & 0x1F
    assert shift == encode.CHUNK_SHIFT == 11
    chunks = -(-big.payload_length // 2048)
    assert big.payload_length == n * 104  # an end position (4 B) per value, as v1's length
    assert big.length == header.align(HDR + big.payload_length + 4 * chunks)
    overhead = (big.length - header.align(HDR + big.payload_length)) / big.length
    assert 0 < overhead < 0.005  # 4 bytes per 2 KiB: 0.2%
    # Small batches (payload <= 16 KiB): no table, one CRC32C over everything, v1's size.
    for h in (one, hundred):
        assert not h.attributes & header.CHUNK_SHIFT_MASK
        assert h.length == header.align(HDR + h.payload_length)
    assert one.length == header.align(HDR + 4 + 100)
    # The table entries are the running CRC32C from byte 8 to the end of each chunk.
    with open(segment_files(d)[0], "rb") as f:
        data = f.read()
    end = p0 + HDR + big.payload_length
    table = struct.unpack_from(f"<{chunks}I", data, end)
    for i in (0, 1, chunks - 1):
        stop = min(p0 + HDR + (i + 1) * 2048, end)
        assert table[i] == header.crc32c(data[p0 + 8:stop])
    assert big.crc == header.crc32c(data[p0 + 8:p0 + HDR])
    assert hundred.crc == header.crc32c(data[p2 + 8:p2 + hundred.length])


def test_reseal_recomputes_exactly_what_the_writer_wrote(tmp_path):
    d = str(tmp_path / "log")
    write_big_log(d)
    path = segment_files(d)[0]
    with open(path, "rb") as f:
        data = f.read()
    buf = bytearray(data)
    for pos, _h in batches_of(path):
        struct.pack_into("<I", buf, pos + 4, 0)  # wrong CRC
        end = pos + HDR + _h.payload_length
        if _h.attributes & header.CHUNK_SHIFT_MASK:
            buf[end:end + 8] = bytes(8)  # wrong table entries
        encode.reseal(buf, pos)
    assert bytes(buf) == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(batches=st.lists(st.tuples(st.integers(1, 400), st.integers(0, 300), st.booleans(),
                                  st.booleans(), st.booleans(), st.booleans()),
                        min_size=1, max_size=6),
       compression=st.sampled_from(["none", "none", "zstd"]),
       reader=st.sampled_from(["writer", "reopened", "readonly"]), seed=st.integers(0, 99))
def test_every_read_path_agrees_on_random_big_batches(tmp_path_factory, batches, compression,
                                                      reader, seed):
    d = str(tmp_path_factory.mktemp("log"))
    rnd = random.Random(seed)
    log = Log.open(d, fsync="never", compression=compression, segment_bytes=1 << 20)
    expected = []
    for n, size, with_keys, with_headers, with_ts, with_nulls in batches:
        values = [None if with_nulls and rnd.random() < 0.1 else
                  rnd.randbytes(rnd.randrange(0, size + 1)) for _ in range(n)]
        keys = [None if rnd.random() < 0.2 else rnd.randbytes(rnd.randrange(0, 20))
                for _ in range(n)] if with_keys else None
        hdrs = [{"h": rnd.randbytes(3)} if rnd.random() < 0.3 else None
                for _ in range(n)] if with_headers else None
        ts = [rnd.randrange(10**6) for _ in range(n)] if with_ts else None
        if n == 1 and rnd.random() < 0.5:
            log.append(values[0], key=keys[0] if keys else None,
                       headers=hdrs[0] if hdrs else None, timestamp_ms=ts[0] if ts else None)
        else:
            log.append_batch(values, keys=keys, headers=hdrs, timestamps_ms=ts)
    expected = list(log.replay())
    for r in expected:  # what was written, independently of the read paths under test
        assert r.headers == {} or isinstance(r.headers, dict)
    writer = None
    if reader == "reopened":
        log.close()
        log = Log.open(d, fsync="never")
    elif reader == "readonly":
        writer, log = log, Log.open(d, readonly=True)
    try:
        all_ways(log, expected)
        decoded = [r for b in log.replay_batches() for r in b.records()]
        assert decoded == expected
    finally:
        log.close()
        if writer is not None:
            writer.close()
    scan_all(d)


# ------------------------------------------------------------------------------ damage
def _used_ranges(data: bytes, pos: int, h, j: int):
    """Byte ranges (absolute) record ``j`` of the plain version 2 batch at ``pos`` uses: the
    magic and header fields, its column entries, its timestamp delta, its items."""
    n, a = h.record_count, h.attributes
    p = pos + HDR
    used = [(pos, pos + 4), (pos + 8, pos + HDR)]
    col = 0
    if a & header.ATTR_TIMESTAMPS:
        used.append((p + 8 * j, p + 8 * j + 8))
        col = 8 * n
    first = col + 4 * n * (1 + bool(a & header.ATTR_KEYS) + bool(a & header.ATTR_HEADERS))
    start = first
    for present in (a & header.ATTR_KEYS, True, a & header.ATTR_HEADERS):
        if not present:
            continue
        lo = col + 4 * j - 4 if j or start != first else col
        e = struct.unpack_from("<I", data, p + col + 4 * j)[0] & header.END_MASK
        s = struct.unpack_from("<I", data, p + col + 4 * j - 4)[0] & header.END_MASK \
            if j or start != first else first
        used.append((p + lo, p + col + 4 * j + 4))
        if e > s:
            used.append((p + s, p + e))
        col += 4 * n
        start = -1
    return used


def test_any_flipped_byte_of_a_tabled_batch_is_reported_or_harmless(tmp_path):
    d = str(tmp_path / "log")
    expected = write_big_log(d)
    path = segment_files(d)[0]
    with open(path, "rb") as f:
        data = f.read()
    tabled = [(p, h) for p, h in batches_of(path) if h.attributes & header.CHUNK_SHIFT_MASK]
    assert len(tabled) == 2
    by_offset = {r.offset: r for r in expected}
    rnd = random.Random(7)
    log = Log.open(d, readonly=True)
    fd = os.open(path, os.O_RDWR)
    try:
        for pos, h in tabled:
            offsets = range(h.base_offset, h.next_offset)
            used = {o: _used_ranges(data, pos, h, o - h.base_offset) for o in offsets}
            payload_end = pos + HDR + h.payload_length
            spots = set(range(pos, pos + HDR)) | set(range(payload_end, pos + h.length))
            spots |= set(rnd.sample(range(pos + HDR, payload_end), 150))
            for o in rnd.sample(list(offsets), 10):  # bytes some records surely use
                for lo, hi in used[o]:
                    spots |= {lo, hi - 1}
            for spot in sorted(spots):
                os.pwrite(fd, bytes([data[spot] ^ 0x5A]), spot)  # the mapping sees it
                try:
                    for o in offsets:
                        hit = any(lo <= spot < hi for lo, hi in used[o])
                        try:
                            rec = log.get(o)
                        except CorruptLogError:
                            continue
                        assert not hit, f"byte {spot} was used by get({o}) but not caught"
                        assert rec == by_offset[o], f"byte {spot}: get({o}) returned {rec}"
                    for o in rnd.sample(list(offsets), 3):  # get_many and short reads too
                        for fn in (lambda: log.get_many([o, o + 1 if o + 1 < h.next_offset
                                                          else o]),
                                   lambda: log.read(o, max_records=2)):
                            try:
                                got = fn()
                            except CorruptLogError:
                                continue
                            assert all(r == by_offset[r.offset] for r in got), (spot, got)
                    if pos + 8 <= spot < payload_end or spot < pos + 4 or (
                            payload_end + 4 * (-(-h.payload_length // 2048) - 1) <= spot
                            < payload_end + 4 * -(-h.payload_length // 2048)):
                        # every byte a full read returns or uses: the replay reports it
                        with pytest.raises(CorruptLogError):
                            list(log.replay(h.base_offset, h.next_offset))
                    with pytest.raises(CorruptLogError):  # a scan checks every byte
                        Segment(d, 0, DEFAULT_FS, 4096, writable=False).scan(0, strict=True)
                finally:
                    os.pwrite(fd, data[spot:spot + 1], spot)
            assert [log.get(o) for o in offsets] == [by_offset[o] for o in offsets]
    finally:
        os.close(fd)
        log.close()


def test_a_stale_chunk_table_entry_fails_only_the_reads_of_its_chunk(tmp_path):
    d = str(tmp_path / "log")
    expected = write_big_log(d)
    path = segment_files(d)[0]
    pos, h = next((p, h) for p, h in batches_of(path) if h.attributes & header.CHUNK_SHIFT_MASK
                  and not h.attributes & header.ATTR_KEYS)  # the values-only batch
    chunk = 2048
    entry = pos + HDR + h.payload_length + 4 * 3  # the running CRC at the end of chunk 3
    with open(path, "r+b") as f:
        f.seek(entry)
        f.write(b"\0\0\0\0")
    by = {r.offset: r for r in expected}
    with Log.open(d, readonly=True) as log:
        assert list(log.replay()) == expected  # the whole payload checks against the last entry
        failed = []
        for o in range(h.base_offset, h.next_offset):
            j = o - h.base_offset
            try:
                assert log.get(o) == by[o]
            except CorruptLogError as e:
                assert e.position == pos and "CRC32C mismatch" in str(e)
                failed.append(j)
        # Values of 256 bytes after 400 bytes of end entries: chunk 3 holds records ~22..29;
        # reads that check chunks 3 or 4 (seeded with entry 3) fail, no other.
        assert failed and all((400 + 256 * j) // chunk in (2, 3, 4) or
                              (400 + 256 * j + 255) // chunk in (2, 3, 4) for j in failed)
        assert len(failed) < h.record_count // 2
    with pytest.raises(CorruptLogError, match="chunk 3"):
        Segment(d, 0, DEFAULT_FS, 4096, writable=False).scan(0, strict=True)


@pytest.mark.parametrize("cut", ["header", "payload", "table", "padding", "zero_table"])
def test_torn_tail_in_a_tabled_batch_is_cut_by_recovery(tmp_path, cut):
    d = str(tmp_path / "log")
    values, keys, hdrs, ts = big_batch()
    log = Log.open(d, fsync="never")
    log.append_batch([b"a", b"b"])
    log.append(b"c")
    kept = list(log.replay())
    log.append_batch(values, keys=keys, headers=hdrs, timestamps_ms=ts)
    log.abandon()
    path = segment_files(d)[0]
    pos, h = batches_of(path)[-1]
    assert h.attributes & header.CHUNK_SHIFT_MASK
    end = pos + HDR + h.payload_length
    size = os.path.getsize(path)
    if cut == "zero_table":  # all bytes there, but the table never reached the disk
        with open(path, "r+b") as f:
            f.seek(end)
            f.write(bytes(pos + h.length - end))
    else:
        at = {"header": pos + 20, "payload": pos + HDR + h.payload_length // 2,
              "table": end + 6, "padding": pos + h.length - 1}[cut]
        if cut == "padding" and (pos + h.length - end) % 4 == 0 and h.length - (end - pos) \
                == 4 * -(-h.payload_length // 2048):
            at = pos + h.length - 2  # no padding in this batch: cut into the last entry
        os.truncate(path, at)
    with Log.open(d) as log:
        report = log.recovery_report
        assert report is not None and report.truncated_bytes == (
            size - pos if cut == "zero_table" else at - pos)
        assert log.end_offset == 3 and list(log.replay()) == kept
        log.append(b"d")
    assert os.path.getsize(path) < size
    scan_all(d)


def test_corrupt_entries_with_valid_checksums_are_refused(tmp_path):
    """A crafted (checksum-valid) batch whose end positions go back, or claim a null header,
    is reported as corrupt by every read, never read as records."""
    for tamper in ("back", "null_header", "past_end"):
        d = str(tmp_path / tamper)
        with Log.open(d, fsync="never") as log:
            log.append_batch([b"v%03d" % i * 10 for i in range(500)],
                             headers=[{"x": b"1"}] * 500)
        path = segment_files(d)[0]
        [(pos, h)] = batches_of(path)
        assert h.attributes & header.CHUNK_SHIFT_MASK
        buf = bytearray(open(path, "rb").read())
        p = pos + HDR
        values_col, headers_col = 0, 4 * 500
        if tamper == "back":
            struct.pack_into("<I", buf, p + values_col + 4 * 10, 100)
        elif tamper == "null_header":
            e = struct.unpack_from("<I", buf, p + headers_col + 4 * 10)[0]
            struct.pack_into("<I", buf, p + headers_col + 4 * 10, e | header.NULL_BIT)
        else:
            struct.pack_into("<I", buf, p + values_col + 4 * 10, h.payload_length + 50)
        encode.reseal(buf, pos)
        with open(path, "wb") as f:
            f.write(buf)
        with Log.open(d, readonly=True) as log:
            with pytest.raises(CorruptLogError):
                log.get(10)
            with pytest.raises(CorruptLogError):
                list(log.replay())
            assert log.get(300).value == b"v300" * 10  # records elsewhere still read


# ------------------------------------------------------------------------------ records
def test_records_without_headers_share_an_immutable_empty_dict(tmp_path):
    d = str(tmp_path / "log")
    with Log.open(d, fsync="never") as log:
        log.append(b"a")
        log.append_batch([b"b", b"c"], headers=[None, {"k": b"v"}])
        log.append_batch([b"%d" % i for i in range(600)])
        recs = [log.get(0), log.get(1), log.get(2)] + log.read(3, 600)
        recs += list(log.replay()) + log.get_many([5, 0, 1])
    plain = [r for r in recs if r.value != b"c"]
    assert all(r.headers is EMPTY_HEADERS for r in plain)
    assert recs[2].headers == {"k": b"v"} and type(recs[2].headers) is dict
    h = recs[0].headers
    assert h == {} and isinstance(h, dict) and not h and len(h) == 0 and repr(h) == "{}"
    for mutate in (lambda: h.__setitem__("x", b"1"), lambda: h.update(x=b"1"),
                   lambda: h.setdefault("x", b"1"), lambda: h.pop("x"), h.clear,
                   h.popitem, lambda: h.__delitem__("x")):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert h == {}
    copy = dict(h)
    copy["x"] = b"1"  # a copy is an ordinary dict
    back = pickle.loads(pickle.dumps(recs[0]))
    assert back == recs[0] and type(back.headers) is dict
    assert json.dumps(h) == "{}"
    assert logstore.Record(0, 1, None, b"a", {}) == logstore.Record(0, 1, None, b"a", h)
