"""The hot paths (``get``'s quick route, the one-record ``append`` framing) against the general
code they shortcut: same records, same bytes, and every odd case left to the general path.

``Segment.quick_locate`` (+ ``extract.extract_record``) gives a record or None ("take the general
path"); ``log.read`` decodes whole batches through a different route. For random logs (keys,
tombstones, headers, timestamps, batches of many sizes, tiny segments, compression on or off),
read by the writer, after a reopen, or by a read-only opener (pread for the active segment),
every offset must give the same record both ways; a damaged batch is reported (CorruptLogError
naming its position), never answered from.
"""

from __future__ import annotations

import bisect
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore import CorruptLogError, Log
from logstore.format import columns, encode, extract, header

values = st.one_of(st.none(), st.binary(max_size=40))
keys = st.one_of(st.none(), st.binary(max_size=8))
headers = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "é"]),
                                               st.binary(max_size=6), max_size=2))
record = st.tuples(values, keys, headers, st.integers(0, 10**6))
batches = st.lists(st.lists(record, min_size=1, max_size=12), min_size=1, max_size=25)


def segment_of(log: Log, offset: int):
    return log._segs.items[bisect.bisect_right(log._segs.bases, offset) - 1]


def quick_get(seg, offset: int):
    """get's quick route alone: the record, or None for "take the general path"."""
    found = seg.quick_locate(offset)
    if found is None:
        return None
    buf, at, h, pos = found
    return extract.extract_record(buf, h, offset, seg.path, pos, at)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, compression=st.sampled_from(["none", "zstd"]),
       segment_bytes=st.sampled_from([1024, 4096, 1 << 20]),
       index_interval=st.sampled_from([1, 64, 4096]),
       reader=st.sampled_from(["writer", "reopened", "readonly"]))
def test_quick_get_agrees_with_batch_decoding(tmp_path_factory, batches, compression,
                                              segment_bytes, index_interval, reader):
    path = str(tmp_path_factory.mktemp("log"))
    log = Log.open(path, fsync="never", compression=compression, segment_bytes=segment_bytes,
                   index_interval_bytes=index_interval)
    expected = []
    for batch in batches:
        if len(batch) == 1:
            v, k, h, ts = batch[0]
            log.append(v, key=k, headers=h, timestamp_ms=ts)
        else:
            log.append_batch([r[0] for r in batch], keys=[r[1] for r in batch],
                             headers=[r[2] for r in batch], timestamps_ms=[r[3] for r in batch])
        expected.extend(batch)
    writer = None
    if reader == "reopened":
        log.close()
        log = Log.open(path, fsync="never")
    elif reader == "readonly":  # pread for the active segment, mmap for sealed ones
        writer, log = log, Log.open(path, readonly=True)
    try:
        quick_answers = 0
        for offset, (v, k, h, ts) in enumerate(expected):
            via_batches = log.read(offset, max_records=1)[0]
            assert (via_batches.value, via_batches.key, via_batches.headers,
                    via_batches.timestamp_ms) == (v, k, h or {}, ts)
            quick = quick_get(segment_of(log, offset), offset)
            if quick is not None:
                quick_answers += 1
                assert quick == via_batches
                assert type(quick.value) in (bytes, type(None))
            assert log.get(offset) == via_batches
        if compression == "none":
            assert quick_answers > 0  # the quick route is really taken
        # get_many: any order, repeats, one call; the same records as get one by one.
        rnd = random.Random(len(expected))
        wanted = [rnd.randrange(len(expected)) for _ in range(len(expected) * 2)]
        assert log.get_many(wanted) == [log.get(o) for o in wanted]
    finally:
        log.close()
        if writer is not None:
            writer.close()


def test_get_reports_a_damaged_batch_by_position_and_reads_the_intact_ones(tmp_path):
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="always")
    for i in range(20):
        log.append_batch([b"v%d-%d" % (i, j) for j in range(10)])
    log.close()
    seg_file = os.path.join(path, "00000000000000000000.log")
    with open(seg_file, "r+b") as f:
        data = bytearray(f.read())
        # Flip a byte inside the values of the 8th batch (not in its header).
        pos = 0
        for _ in range(7):
            pos += header.HEADER.unpack_from(data, pos)[2]
        f.seek(pos + header.HEADER_SIZE + 50)
        f.write(bytes([data[pos + header.HEADER_SIZE + 50] ^ 0x40]))
    log = Log.open(path, fsync="never")
    try:
        assert log.get(5).value == b"v0-5"  # intact batches still read
        with pytest.raises(CorruptLogError) as e:
            log.get(75)
        assert "CRC32C" in str(e.value) and e.value.position == pos
        assert [r.value for r in log.get_many([80, 5, 69])] == [b"v8-0", b"v0-5", b"v6-9"]
        with pytest.raises(CorruptLogError) as e:
            log.get_many([5, 71, 150])  # 71 shares the damaged batch with 75
        assert "CRC32C" in str(e.value) and e.value.position == pos
    finally:
        log.close()


@pytest.mark.parametrize("seed", range(12))
def test_a_damaged_header_before_the_target_never_yields_a_wrong_record(tmp_path, seed):
    """The quick route steps over the batches between its index entry and the target on four
    header fields only. Whatever byte of such a header is damaged, every get returns the
    right record or raises CorruptLogError, and the damaged batch itself always raises."""
    import random

    rnd = random.Random(seed)
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="never", segment_bytes=8192)  # index entry every 4096 B
    values = [b"value-%d-" % i + bytes(rnd.randrange(40)) for i in range(150)]
    for v in values:
        log.append(v, key=b"k" if rnd.random() < 0.3 else None)
    log.close()
    seg_file = os.path.join(path, "00000000000000000000.log")
    with open(seg_file, "r+b") as f:
        data = bytearray(f.read())
    positions, pos = [], 0
    while pos < len(data):
        positions.append(pos)
        pos += header.HEADER.unpack_from(data, pos)[2]
    victim = rnd.randrange(1, len(positions) - 1)  # a batch of the first, sealed segment
    at = positions[victim] + rnd.randrange(header.HEADER_SIZE)
    data[at] ^= 1 << rnd.randrange(8)
    with open(seg_file, "r+b") as f:
        f.write(data)
    log = Log.open(path, fsync="never")
    try:
        with pytest.raises(CorruptLogError):
            log.get(victim)
        for offset, v in enumerate(values):
            if offset == victim:
                continue
            try:
                rec = log.get(offset)
            except CorruptLogError:
                # Only a get that walks past the damaged header from an earlier index entry
                # may report it; records before it and in other segments always read.
                assert victim < offset < len(positions)
                continue
            assert rec.offset == offset and rec.value == v
    finally:
        log.close()


@given(value=st.binary(max_size=300), key=st.one_of(st.none(), st.binary(max_size=50)),
       base=st.integers(0, 2**40), ts=st.integers(0, 2**50), synced=st.integers(0, 2**31))
def test_frame_single_matches_general_framing(value, key, base, ts, synced):
    prepared = encode.prepare_one(value, key, None, ts, header.CODEC_NONE, 3, 1 << 30)
    assert encode.frame_single(base, ts, value, key, synced) == bytes(
        encode.frame(prepared, base, synced))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.one_of(st.just(-1), st.integers(0, 1 << 19)), max_size=2100),
       start=st.integers(0, 2100), pad=st.integers(0, 7))
def test_lengths_before_skips_nulls(lengths, start, pad):
    """The column sum get uses: -1 entries (nulls) count 0, whatever their number (lengths of
    a valid batch, which sum below MAX_BATCH_LENGTH)."""
    buf = b"\x00" * pad + b"".join(x.to_bytes(4, "little", signed=True) for x in lengths)
    start = min(start, len(lengths))
    count = len(lengths) - start
    want = sum(x for x in lengths[start:] if x >= 0)
    assert columns.lengths_before(buf, pad + 4 * start, count) == want
