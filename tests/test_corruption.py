"""Damaged files: torn tails, flipped bytes, lost or wrong indexes, foreign metadata, newer formats.

Every test builds a real log with tiny segments, damages its files the way a crash, a disk or an
operator could, and checks the documented outcome: a torn tail of the active segment is cut back
to exactly the last whole batch; corruption anywhere else is *reported* (CorruptLogError naming
the file and the batch's byte position), never silently skipped or truncated; indexes are only
hints; foreign or newer directories are refused without touching a file.

A "crash" here is a process crash simulated in-process: the Log object is dropped without
``close()`` (no clean-shutdown marker), its lock released and its file descriptors closed.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import struct

import crc32c
import pytest

from logstore import (
    CorruptLogError,
    Log,
    NotALogError,
    OffsetOutOfRangeError,
    UnsupportedFormatError,
)
import helpers
from logstore.format import encode, header
from logstore.record import Record

MARKER = "clean-shutdown"
META = "logstore.meta"
OPTS = dict(fsync="always", segment_bytes=2048, index_interval_bytes=64)
HEADER_SIZE = header.HEADER_SIZE


# ------------------------------------------------------------------------------ helpers
def crash(log: Log, trim: bool = True) -> None:
    """Drop ``log`` like a killed process would: no close(), no marker; lock and fds released.

    ``trim``: also cut the active segment's preallocated, never-written zero bytes, so that a
    test can append bytes right after the data (a killed writer leaves them: ``trim=False``).
    """
    active = log.segments()[-1]
    log.abandon()
    if trim:
        os.truncate(active["path"], active["size"])


def random_op(log: Log, rng: random.Random, expected: list) -> None:
    """Append one random single record or batch to ``log`` and to ``expected`` (Records)."""

    def value():
        r = rng.random()
        if r < 0.1:
            return None
        if r < 0.2:
            return b""
        return rng.randbytes(rng.randint(1, 90))

    def key():
        return None if rng.random() < 0.4 else rng.randbytes(rng.randint(0, 10))

    def headers():
        if rng.random() < 0.6:
            return None
        return {f"h{i}": rng.randbytes(rng.randint(0, 6)) for i in range(rng.randint(0, 2))}

    def ts():
        # Roughly increasing with jitter: offset_for_time has non-monotonic data to get right.
        return 1_000_000 + 10 * len(expected) + rng.randint(-35, 35)

    if rng.random() < 0.5:
        v, k, h, t = value(), key(), headers(), ts()
        off = log.append(v, key=k, headers=h, timestamp_ms=t)
        assert off == len(expected)
        expected.append(Record(off, t, k, v, dict(h or {})))
    else:
        n = rng.randint(2, 6)
        vs = [value() for _ in range(n)]
        ks = [key() for _ in range(n)] if rng.random() < 0.5 else None
        hs = [headers() for _ in range(n)] if rng.random() < 0.5 else None
        tss = []
        for _ in range(n):
            tss.append(ts())
        got = log.append_batch(vs, keys=ks, headers=hs, timestamps_ms=tss)
        assert got == range(len(expected), len(expected) + n)
        for i in range(n):
            expected.append(Record(got[i], tss[i], None if ks is None else ks[i], vs[i],
                                   dict((hs[i] if hs else None) or {})))


def build_log(path, seed: int, min_segments: int, min_active_batches: int, **options):
    """A log with at least ``min_segments`` segments whose active one holds at least
    ``min_active_batches`` batches. Returns the open log and the expected records."""
    rng = random.Random(seed)
    opts = {**OPTS, **options}
    log = Log.open(path, **opts)
    expected: list = []
    segments, active_batches = 1, 0
    while segments < min_segments or active_batches < min_active_batches:
        random_op(log, rng, expected)
        n = len(log.segments())
        if n != segments:
            segments, active_batches = n, 1
        else:
            active_batches += 1
        assert len(expected) < 20_000, "builder does not converge"
    return log, expected


def layout(path):
    """[(segment file, base offset, [ScannedBatch])] of a healthy log, read without changing it."""
    ro = Log.open(path, readonly=True)
    try:
        out = []
        for seg in ro._segs.items:
            scan = seg.scan(0)
            assert scan.error is None, scan.error
            out.append((seg.path, seg.base_offset, scan.batches))
        return out
    finally:
        ro.close()


def index_paths(log_file: str):
    stem = log_file[: -len(".log")]
    return stem + ".index", stem + ".timeindex"


def snapshot(root):
    """Every file and directory under ``root``: (kind, size, mtime_ns, content)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        st = os.stat(dirpath)
        out[os.path.relpath(dirpath, root)] = ("dir", None, st.st_mtime_ns, sorted(
            dirnames + filenames))
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = ("file", st.st_size, st.st_mtime_ns, f.read())
    return out


def age_everything(root):
    """Set every mtime under ``root`` far in the past, so any later write shows."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), ns=(10**18, 10**18))
        os.utime(dirpath, ns=(10**18, 10**18))


flip = functools.partial(helpers.flip, xor=0xFF)  # flip(path, position, new_byte=None)


def expected_for_time(expected, ts: int) -> int:
    return next((r.offset for r in expected if r.timestamp_ms >= ts), len(expected))


def probe_timestamps(expected):
    stamps = sorted({r.timestamp_ms for r in expected})
    return [0] + stamps + [t + 1 for t in stamps[::7]] + [stamps[-1] + 1, 2**63 - 1]


def check_all_lookups(log: Log, expected) -> None:
    """get, read, replay and offset_for_time agree with ``expected`` everywhere."""
    n = len(expected)
    assert log.start_offset == 0 and log.end_offset == n
    assert list(log.replay()) == expected
    for o in range(n):
        assert log.get(o) == expected[o]
    for o in range(0, n, 3):
        assert log.read(o, max_records=5) == expected[o: o + 5]
    for o in range(0, n, 11):
        assert list(log.replay(o, o + 13)) == expected[o: o + 13]
    for ts in probe_timestamps(expected):
        assert log.offset_for_time(ts) == expected_for_time(expected, ts), ts
    assert log.read(n) == []
    with pytest.raises(OffsetOutOfRangeError):
        log.get(n)


# ------------------------------------------------------------------------------ (a) torn tail
@pytest.mark.parametrize("marker", ["absent", "stale"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_torn_tail_of_active_segment_is_cut_back_to_last_whole_batch(tmp_path, compression,
                                                                      marker):
    src = tmp_path / "src"
    log, expected = build_log(src, seed=11, min_segments=3, min_active_batches=6,
                              compression=compression)
    if marker == "absent":
        crash(log, trim=False)
        assert not (src / MARKER).exists()
    else:
        log.close()  # the marker names the intact size: a shorter file must not match it
        assert (src / MARKER).exists()
    segs = layout(src)
    active_path, active_base, batches = segs[-1]
    assert len(batches) >= 6 and len(segs) >= 3
    assert batches[-1].next_offset == len(expected)
    size = os.path.getsize(active_path)
    data_end = batches[-1].position + batches[-1].length
    # A crashed syncing writer leaves the preallocated, never-written zero bytes after its data
    # (cuts in there must recover everything); a clean close trims them.
    assert size > data_end if marker == "absent" else size == data_end
    with open(active_path, "rb") as f:
        assert not f.read()[data_end:].strip(b"\0")

    rng = random.Random(5)
    cuts = {0, 1, HEADER_SIZE - 1, HEADER_SIZE, data_end - 1, data_end, data_end + 1,
            size - 1, size}
    for b in rng.sample(batches, 4):
        cuts |= {b.position, b.position + 1, b.position + HEADER_SIZE, b.position + b.length - 1}
    while len(cuts) < 34:
        cuts.add(rng.randrange(0, size + 1))
    name = os.path.basename(active_path)
    for cut in sorted(cuts):
        dst = tmp_path / f"cut-{cut}"
        shutil.copytree(src, dst)
        with open(dst / name, "r+b") as f:
            f.truncate(cut)
        whole = [b for b in batches if b.position + b.length <= cut]
        end = whole[-1].next_offset if whole else active_base
        valid_end = whole[-1].position + whole[-1].length if whole else 0

        if marker == "stale" and cut < size:
            # Issue 16 (case 5): the marker says close() made `size` bytes durable: a shorter
            # file lost durable data. Data damage, not a torn tail: refused, nothing changed.
            before = {n: (dst / n).read_bytes() for n in os.listdir(dst)}
            with pytest.raises(CorruptLogError) as ei:
                Log.open(dst, compression=compression, **OPTS)
            assert "clean-shutdown marker" in str(ei.value)
            assert {n: (dst / n).read_bytes() for n in os.listdir(dst)} == before
            shutil.rmtree(dst)
            continue
        log = Log.open(dst, compression=compression, **OPTS)
        try:
            report = log.recovery_report
            if cut != size or marker == "absent":
                assert not report.clean
                assert report.truncated_bytes == cut - valid_end
            assert os.path.getsize(dst / name) == valid_end, cut
            assert log.start_offset == 0
            assert log.end_offset == end, cut
            assert list(log.replay()) == expected[:end]
            for o in range(active_base, end):
                assert log.get(o) == expected[o]
            assert log.read(end) == []
            with pytest.raises(OffsetOutOfRangeError):
                log.get(end)
            assert log.offset_for_time(2**62) == end
            # The log goes on from exactly there.
            assert log.append(b"after", key=b"k", timestamp_ms=7) == end
            assert log.append_batch([b"x", None], timestamps_ms=[8, 9]) == range(end + 1, end + 3)
            assert log.get(end) == Record(end, 7, b"k", b"after", {})
        finally:
            log.close()
        with Log.open(dst, compression=compression, **OPTS) as log:
            assert log.recovery_report.clean
            assert log.end_offset == end + 3
            tail = list(log.replay(max(0, end - 3)))
            assert tail == expected[max(0, end - 3): end] + [
                Record(end, 7, b"k", b"after", {}), Record(end + 1, 8, None, b"x", {}),
                Record(end + 2, 9, None, None, {})]
        shutil.rmtree(dst)


# ------------------------------------------------------------------------------ (b) sealed flip
# (name, position inside the batch or a function of the batch length)
HEADER_SPOTS = [
    ("magic", 0), ("magic_last", 3), ("crc", 4), ("crc_high", 7), ("length_low", 8),
    ("length_byte1", 9), ("length_high", 11), ("version", 12), ("attributes", 14),
    ("base_offset_low", 16), ("base_offset_byte1", 17), ("base_offset_high", 23),
    ("base_timestamp", 24), ("max_timestamp", 32), ("max_timestamp_sign", 39),
    ("record_count", 40), ("last_offset_delta", 44), ("payload_length", 48),
    ("raw_length", 52), ("reserved", 56), ("reserved_last", 63),
]
PAYLOAD_SPOTS = [("payload_first", lambda n: HEADER_SIZE), ("payload_middle", lambda n: n // 2 + 4),
                 ("last_byte", lambda n: n - 1)]
SPOTS = HEADER_SPOTS + PAYLOAD_SPOTS


def spot_position(spot, length: int) -> int:
    return spot if isinstance(spot, int) else spot(length)


@pytest.fixture(scope="module")
def sealed_source(tmp_path_factory):
    """A cleanly closed log with >= 5 segments (fsync=always, tiny segments)."""
    path = tmp_path_factory.mktemp("sealed") / "log"
    log, expected = build_log(path, seed=23, min_segments=5, min_active_batches=2)
    log.close()
    return path, expected, layout(path)


def _pick_batch(batches):
    """A multi-record batch in the middle of the segment (not first, not last)."""
    inner = batches[1:-1]
    multi = [b for b in inner if b.record_count > 1]
    return (multi or inner)[len(multi or inner) // 2]


def check_damaged_batch_raises(log, seg_path, batch, expected):
    """Every way of reading a record of the damaged batch raises, naming file and position."""
    for o in range(batch.base_offset, batch.next_offset):
        for read in (lambda: log.get(o), lambda: log.read(o), lambda: log.read(o, max_records=1),
                     lambda: log.read(o, max_bytes=0), lambda: list(log.replay(o, o + 1)),
                     lambda: list(log.replay(o))):
            with pytest.raises(CorruptLogError) as info:
                read()
            assert info.value.path == seg_path, (o, info.value)
            assert info.value.position == batch.position, (o, info.value)
    # A full replay yields exactly the records before the damage, then raises there.
    got = []
    with pytest.raises(CorruptLogError) as info:
        for rec in log.replay():
            got.append(rec)
    assert got == expected[: batch.base_offset]
    assert info.value.path == seg_path and info.value.position == batch.position


@pytest.fixture(scope="module")
def unindexed_source(tmp_path_factory):
    """Like sealed_source, but with the default index interval (4 KiB): segments of 2 KiB get no
    offset-index entries at all, so every lookup walks the segment from its first batch."""
    path = tmp_path_factory.mktemp("unindexed") / "log"
    log, expected = build_log(path, seed=23, min_segments=5, min_active_batches=2,
                              index_interval_bytes=4096)
    log.close()
    segs = layout(path)
    for p, _, _ in segs[:-1]:
        assert os.path.getsize(index_paths(p)[0]) == 0
    return path, expected, segs


WALK_BUG_FIXED = (  # regression test for a fixed bug:
    (
    "BUG: when no index entry points at the damaged batch, the header walk (Segment.walk_to) "
    "steps over it trusting its unvalidated length / base offset: a base offset damaged to a "
    "lower (or negative) value, or a length damaged to a larger multiple of 8, makes "
    "get/read/replay raise CorruptLogError('offsets .. are missing') naming the NEXT, intact "
    "batch - or byte 0 of the NEXT segment file - instead of the damaged batch"))
# Spots whose damage the walk steps over (with the layouts these seeds produce).
WALKED_OVER = {"length_byte1", "length_high", "base_offset_high"}


SEALED_CASES = [pytest.param(src, name, spot, id=f"{src}-{name}",
                             marks=[] if src == "unindexed_source" and name in WALKED_OVER
                             else [])
                for src in ("sealed_source", "unindexed_source") for name, spot in SPOTS]


@pytest.mark.parametrize("source,spot_name,spot", SEALED_CASES)
def test_flipped_byte_in_sealed_segment_is_reported_not_skipped(tmp_path, request, source,
                                                                spot_name, spot):
    src, expected, segs = request.getfixturevalue(source)
    seg_index = 1
    seg_path, seg_base, batches = segs[seg_index]
    batch = _pick_batch(batches)
    dst = tmp_path / "log"
    shutil.copytree(src, dst)
    damaged = os.path.join(dst, os.path.basename(seg_path))
    flip(damaged, batch.position + spot_position(spot, batch.length))

    opts = {**OPTS, "index_interval_bytes": 4096} if source == "unindexed_source" else OPTS
    with Log.open(dst, **opts) as log:
        assert log.recovery_report.clean  # sealed segments are not scanned at open
        assert log.end_offset == len(expected)
        check_damaged_batch_raises(log, damaged, batch, expected)
        # Every other segment reads exactly as before.
        for i, (path, base, seg_batches) in enumerate(segs):
            if i == seg_index:
                continue
            nxt = seg_batches[-1].next_offset
            for o in range(base, nxt):
                assert log.get(o) == expected[o]
            assert list(log.replay(base, nxt)) == expected[base:nxt]
            assert log.read(base, max_records=nxt - base) == expected[base:nxt]
        # In the damaged segment: before the damage everything reads; after it, a record is
        # either exactly right or the read fails naming this segment; never anything else.
        for o in range(seg_base, batch.base_offset):
            assert log.get(o) == expected[o]
        assert list(log.replay(seg_base, batch.base_offset)) == expected[seg_base:batch.base_offset]
        for o in range(batch.next_offset, batches[-1].next_offset):
            try:
                assert log.get(o) == expected[o]
            except CorruptLogError as e:
                assert e.path == damaged


OFT_BUG_FIXED = (  # regression test for a fixed bug:
    (
    "BUG: offset_for_time skips a batch when its header's max_timestamp is below the target "
    "(Log.offset_for_time: `if h.max_timestamp < ts: continue`) without checking the CRC, so a "
    "damaged max_timestamp field makes it silently return a later offset instead of raising "
    "CorruptLogError"))
OFT_SPOTS = [pytest.param(name, spot, id=name, marks=[] if name == "max_timestamp" else [])
             for name, spot in SPOTS]


@pytest.mark.parametrize("spot_name,spot", OFT_SPOTS)
def test_offset_for_time_never_skips_a_damaged_batch(tmp_path, sealed_source, spot_name, spot):
    """offset_for_time either answers exactly as for the intact log or raises CorruptLogError."""
    src, expected, segs = sealed_source
    seg_path, _, batches = segs[1]
    batch = _pick_batch(batches)
    dst = tmp_path / "log"
    shutil.copytree(src, dst)
    damaged = os.path.join(dst, os.path.basename(seg_path))
    flip(damaged, batch.position + spot_position(spot, batch.length))
    with Log.open(dst, **OPTS) as log:
        for ts in probe_timestamps(expected):
            try:
                got = log.offset_for_time(ts)
            except CorruptLogError as e:
                assert e.path == damaged
                continue
            assert got == expected_for_time(expected, ts), (ts, got)


@pytest.mark.parametrize("where", ["middle", "last_of_segment"])
@pytest.mark.parametrize("source", [
    "sealed_source", "unindexed_source"])
def test_sealed_batch_whose_base_offset_went_down(tmp_path, request, source, where):
    """A damaged base offset that points *back* must be reported at the damaged batch too."""
    src, expected, segs = request.getfixturevalue(source)
    seg_path, _, batches = segs[1]
    batch = _pick_batch(batches) if where == "middle" else batches[-1]
    assert batch.base_offset > 0
    dst = tmp_path / "log"
    shutil.copytree(src, dst)
    damaged = os.path.join(dst, os.path.basename(seg_path))
    # Clear the lowest set bit of the base offset: a one-bit flip making it smaller.
    new_base = batch.base_offset & (batch.base_offset - 1)
    byte = next(i for i in range(8)
                if (batch.base_offset >> 8 * i) & 0xFF != (new_base >> 8 * i) & 0xFF)
    flip(damaged, batch.position + 16 + byte, (new_base >> 8 * byte) & 0xFF)
    opts = {**OPTS, "index_interval_bytes": 4096} if source == "unindexed_source" else OPTS
    with Log.open(dst, **opts) as log:
        check_damaged_batch_raises(log, damaged, batch, expected)


# ------------------------------------------------------------------------------ (c) active flip
ACTIVE_SPOTS = [("magic", 0), ("crc", 5), ("length_byte1", 9), ("base_offset", 16),
                ("record_count", 40), ("payload_middle", lambda n: n // 2 + 4),
                ("last_byte", lambda n: n - 1)]


@pytest.fixture(scope="module")
def active_source(tmp_path_factory):
    """A log (2+ segments) whose active segment holds >= 6 batches; crashed, so no marker."""
    path = tmp_path_factory.mktemp("active") / "log"
    log, expected = build_log(path, seed=31, min_segments=2, min_active_batches=6)
    crash(log)
    return path, expected, layout(path)


def files_except_lock(root):
    return {k: v[1:] for k, v in snapshot(root).items()
            if k not in (".lock", ".") and not k.endswith(".lock")}


@pytest.mark.parametrize("spot_name,spot", ACTIVE_SPOTS, ids=[s[0] for s in ACTIVE_SPOTS])
def test_flipped_byte_inside_active_segment_after_crash_refuses_to_open(tmp_path, active_source,
                                                                        spot_name, spot):
    src, expected, segs = active_source
    active_path, _, batches = segs[-1]
    batch = batches[2]  # valid batches follow it
    dst = tmp_path / "log"
    shutil.copytree(src, dst)
    damaged = os.path.join(dst, os.path.basename(active_path))
    flip(damaged, batch.position + spot_position(spot, batch.length))
    assert not (dst / MARKER).exists()
    before = files_except_lock(dst)
    for _ in range(2):  # refusing is repeatable: nothing was changed, the lock was released
        with pytest.raises(CorruptLogError) as info:
            Log.open(dst, **OPTS)
        assert info.value.path == damaged
        assert info.value.position == batch.position
        assert files_except_lock(dst) == before  # not truncated, indexes untouched


@pytest.mark.parametrize("spot_name,spot", ACTIVE_SPOTS, ids=[s[0] for s in ACTIVE_SPOTS])
def test_flipped_byte_inside_active_segment_after_clean_close_is_reported_on_read(
        tmp_path, active_source, spot_name, spot):
    src, expected, segs = active_source
    active_path, active_base, batches = segs[-1]
    batch = batches[2]
    dst = tmp_path / "log"
    shutil.copytree(src, dst)
    Log.open(dst, **OPTS).close()  # recover the crash, then a clean close writes the marker
    assert (dst / MARKER).exists()
    damaged = os.path.join(dst, os.path.basename(active_path))
    size = os.path.getsize(damaged)
    flip(damaged, batch.position + spot_position(spot, batch.length))
    n = len(expected)
    with Log.open(dst, **OPTS) as log:
        assert log.recovery_report.clean
        assert log.end_offset == n
        check_damaged_batch_raises(log, damaged, batch, expected)
        for o in range(0, batch.base_offset):
            assert log.get(o) == expected[o]
        for o in range(batch.next_offset, n):
            try:
                assert log.get(o) == expected[o]
            except CorruptLogError as e:
                assert e.path == damaged
        assert os.path.getsize(damaged) == size  # nothing cut
        assert log.append(b"more", timestamp_ms=1) == n
        assert log.get(n) == Record(n, 1, None, b"more", {})
    with Log.open(dst, **OPTS) as log:
        assert log.end_offset == n + 1
        assert log.get(n).value == b"more"
        with pytest.raises(CorruptLogError):
            log.get(batch.base_offset)


# Regression test for a fixed bug: a flipped byte in the active segment followed by valid,
# fsynced batches was treated as a torn tail (and the acknowledged records after it truncated
# away) whenever a 512-byte-aligned all-zero sector lay after the damage.
def test_mid_segment_corruption_followed_by_zero_filled_record_is_not_truncated(tmp_path):
    path = tmp_path / "log"
    log = Log.open(path, fsync="always", segment_bytes=64 * 1024)
    for i in range(5):
        log.append(b"record %d" % i, timestamp_ms=i)
    log.append(bytes(2048), timestamp_ms=5)  # an ordinary, acknowledged record of zeros
    log.append(b"last", timestamp_ms=6)
    crash(log)
    active = layout(path)[-1]
    damaged, _, batches = active
    flip(damaged, batches[1].position + HEADER_SIZE + 1)  # payload of record 1
    size = os.path.getsize(damaged)
    with pytest.raises(CorruptLogError):
        Log.open(path, fsync="always", segment_bytes=64 * 1024)
    assert os.path.getsize(damaged) == size


# ------------------------------------------------------------------------------ (d) lost indexes
@pytest.fixture(scope="module")
def indexed_source(tmp_path_factory):
    """Two copies of one log (>= 4 segments): one closed cleanly, one crashed."""
    root = tmp_path_factory.mktemp("indexed")
    log, expected = build_log(root / "clean", seed=47, min_segments=4, min_active_batches=5)
    log.close()
    shutil.copytree(root / "clean", root / "crash")
    os.unlink(root / "crash" / MARKER)  # as if the process had died after its last append
    return root, expected, layout(root / "clean")


def _targets(segs, which):
    if which == "sealed":
        return [p for p, _, _ in segs[:-1]]
    if which == "active":
        return [segs[-1][0]]
    return [p for p, _, _ in segs]


@pytest.mark.parametrize("kind", ["both", "index", "timeindex"])
@pytest.mark.parametrize("which", ["sealed", "active", "all"])
@pytest.mark.parametrize("shutdown", ["clean", "crash"])
def test_deleted_index_files_are_rebuilt(tmp_path, indexed_source, shutdown, which, kind):
    root, expected, segs = indexed_source
    dst = tmp_path / "log"
    shutil.copytree(root / shutdown, dst)
    originals = {}
    for p, _, _ in segs[:-1]:
        for ip in index_paths(str(dst / os.path.basename(p))):
            with open(ip, "rb") as f:
                originals[ip] = f.read()
    removed = []
    for p in _targets(segs, which):
        idx, tidx = index_paths(str(dst / os.path.basename(p)))
        for ip in {"both": (idx, tidx), "index": (idx,), "timeindex": (tidx,)}[kind]:
            os.unlink(ip)
            removed.append(ip)
    with Log.open(dst, **OPTS) as log:
        assert log.recovery_report.clean == (shutdown == "clean")
        check_all_lookups(log, expected)
        for ip in removed:
            assert os.path.exists(ip), f"{ip} was not recreated"
        # A rebuilt sealed index is the very index the writer made.
        for ip, data in originals.items():
            with open(ip, "rb") as f:
                assert f.read() == data, ip
        assert log.append(b"next", timestamp_ms=5) == len(expected)
    with Log.open(dst, **OPTS) as log:
        assert log.recovery_report.clean
        check_all_lookups(log, expected + [Record(len(expected), 5, None, b"next", {})])


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
def test_deleted_index_files_read_only_open_reads_without_writing(tmp_path, indexed_source,
                                                                  shutdown):
    root, expected, segs = indexed_source
    dst = tmp_path / "log"
    shutil.copytree(root / shutdown, dst)
    for p, _, _ in segs:
        for ip in index_paths(str(dst / os.path.basename(p))):
            os.unlink(ip)
    age_everything(dst)
    before = snapshot(dst)
    log = Log.open(dst, readonly=True)
    try:
        check_all_lookups(log, expected)
    finally:
        log.close()
    assert snapshot(dst) == before  # read-only opens never create or change a file


# ------------------------------------------------------------------------------ (e) wrong indexes
def _offset_entries(pairs):
    return b"".join(struct.pack("<q", (rel << 32) | pos) for rel, pos in pairs)


def corrupt_offset_index(path, seg_base, batches, how, rng):
    size = os.path.getsize(path)
    inner = batches[1:]
    if how == "random":
        data = rng.randbytes(max(8, size // 8 * 8))
    elif how == "zeros":
        data = bytes(max(8, size // 8 * 8))
    elif how == "odd_length":
        with open(path, "rb") as f:
            data = f.read()[:-3] if size >= 8 else b"\x01\x02\x03"
    elif how == "mid_batch":  # right offsets, positions inside the batches
        data = _offset_entries((b.base_offset - seg_base, b.position + 8) for b in inner)
    elif how == "into_payload":
        data = _offset_entries((b.base_offset - seg_base, b.position + HEADER_SIZE)
                               for b in inner if b.length > HEADER_SIZE)
    elif how == "shifted":  # real batch starts, each paired with the previous batch's offset
        data = _offset_entries((a.base_offset - seg_base, b.position)
                               for a, b in zip(inner, inner[1:]))
    elif how == "empty":
        data = b""
    else:
        raise AssertionError(how)
    with open(path, "wb") as f:
        f.write(data)


def corrupt_time_index(path, how, rng):
    size = os.path.getsize(path)
    if how == "random":
        data = rng.randbytes(max(12, size // 12 * 12))
    elif how == "zeros":
        data = bytes(max(12, size // 12 * 12))
    elif how == "odd_length":
        with open(path, "rb") as f:
            data = f.read() + b"\x07"
    elif how == "empty":
        data = b""
    else:
        raise AssertionError(how)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["random", "zeros", "odd_length", "mid_batch", "into_payload",
                                 "shifted", "empty"])
@pytest.mark.parametrize("which", ["sealed", "active"])
def test_wrong_offset_index_is_never_trusted(tmp_path, indexed_source, which, how):
    root, expected, segs = indexed_source
    dst = tmp_path / "log"
    shutil.copytree(root / "clean", dst)  # clean close: the active segment's index is trusted
    rng = random.Random(how)
    targets = segs[:-1] if which == "sealed" else segs[-1:]
    for p, base, batches in targets:
        corrupt_offset_index(index_paths(str(dst / os.path.basename(p)))[0], base, batches, how,
                             rng)
    with Log.open(dst, **OPTS) as log:
        assert log.recovery_report.clean
        check_all_lookups(log, expected)
    with Log.open(dst, readonly=True) as log:
        check_all_lookups(log, expected)


@pytest.mark.parametrize("how", ["random", "zeros", "odd_length", "empty"])
@pytest.mark.parametrize("which", ["sealed", "active"])
def test_damaged_time_index_is_never_trusted(tmp_path, indexed_source, which, how):
    root, expected, segs = indexed_source
    dst = tmp_path / "log"
    shutil.copytree(root / "clean", dst)
    rng = random.Random(how)
    targets = segs[:-1] if which == "sealed" else segs[-1:]
    for p, _, _ in targets:
        corrupt_time_index(index_paths(str(dst / os.path.basename(p)))[1], how, rng)
    with Log.open(dst, **OPTS) as log:
        check_all_lookups(log, expected)


# Regression test for a fixed bug: time-index entries were trusted without any check against
# the log, so a plausible but wrong .timeindex made offset_for_time skip records.
@pytest.mark.parametrize("which", ["sealed", "active"])
def test_plausible_but_wrong_time_index_does_not_change_offset_for_time(tmp_path, indexed_source,
                                                                         which):
    root, expected, segs = indexed_source
    dst = tmp_path / "log"
    shutil.copytree(root / "clean", dst)
    targets = segs[:-1] if which == "sealed" else segs[-1:]
    for p, _, _ in targets:
        tpath = index_paths(str(dst / os.path.basename(p)))[1]
        with open(tpath, "rb") as f:
            data = bytearray(f.read())
        assert len(data) >= 12
        for i in range(0, len(data), 12):
            struct.pack_into("<q", data, i, 0)  # "every record before rel has timestamp <= 0"
        with open(tpath, "wb") as f:
            f.write(data)
    with Log.open(dst, **OPTS) as log:
        for ts in probe_timestamps(expected):
            assert log.offset_for_time(ts) == expected_for_time(expected, ts), ts


# ------------------------------------------------------------------------------ (f) not a log
def _fresh_log(path):
    with Log.open(path, **OPTS) as log:
        for i in range(40):
            log.append(b"v%d" % i, timestamp_ms=i)


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _case_garbage_meta(d):
    _fresh_log(d)
    _write(d / META, b"\x00\x01 this is { not json")


def _case_wrong_format_name(d):
    _fresh_log(d)
    _write(d / META, b'{"format": "someone-else", "version": 1}')


def _case_bad_version_type(d):
    _fresh_log(d)
    _write(d / META, b'{"format": "logstore-log", "version": "one"}')


def _case_meta_is_a_list(d):
    _fresh_log(d)
    _write(d / META, b"[1, 2, 3]")


def _case_future_version(d):
    _fresh_log(d)
    _write(d / META, b'{"format": "logstore-log", "version": 99, "id": "x", "settings": {}}')


def _case_foreign_dir(d):
    d.mkdir()
    _write(d / "notes.txt", b"my files")
    (d / "sub").mkdir()
    _write(d / "sub" / "x.bin", b"\x00" * 10)


def _case_log_without_meta(d):
    _fresh_log(d)
    os.unlink(d / META)


def _case_foreign_dir_with_segment_names(d):
    d.mkdir()
    _write(d / "00000000000000000000.log", b"not a segment")


REFUSALS = [
    ("garbage_meta", _case_garbage_meta, NotALogError),
    ("wrong_format_name", _case_wrong_format_name, NotALogError),
    ("bad_version_type", _case_bad_version_type, NotALogError),
    ("meta_is_a_list", _case_meta_is_a_list, NotALogError),
    ("future_version", _case_future_version, UnsupportedFormatError),
    ("foreign_dir", _case_foreign_dir, NotALogError),
    ("log_without_meta", _case_log_without_meta, NotALogError),
    ("foreign_dir_with_segment_names", _case_foreign_dir_with_segment_names, NotALogError),
]


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("name,make,error", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_directories_are_left_untouched(tmp_path, name, make, error, readonly):
    d = tmp_path / "d"
    make(d)
    age_everything(tmp_path)
    before = snapshot(tmp_path)
    for _ in range(2):
        with pytest.raises(error):
            Log.open(d, readonly=readonly, **OPTS)
    assert snapshot(tmp_path) == before  # no file created, changed, touched or removed


# ------------------------------------------------------------------------------ (g) newer batch
def _future_batch(base_offset: int, version: int = 3) -> bytes:
    """A CRC-valid batch (one record, small: one CRC32C over all of it) whose header says
    format ``version``."""
    p = encode.prepare_one(b"from the future", b"key", None, 123)
    buf = bytearray(encode.frame(p, base_offset))
    struct.pack_into("<H", buf, 12, version)
    struct.pack_into("<I", buf, 4, crc32c.crc32c(bytes(buf[8:])))
    return bytes(buf)


@pytest.mark.parametrize("version", [3, 2])
def test_crc_valid_batch_of_unknown_version_at_tail_is_refused_not_truncated(tmp_path, version):
    """version=3 must be refused without truncation; version=2 (same crafting) is the control:
    it proves the crafted batch is otherwise valid and is read back."""
    path = tmp_path / "log"
    log, expected = build_log(path, seed=59, min_segments=2, min_active_batches=3)
    log.close()
    active = layout(path)[-1][0]
    n = len(expected)
    with open(active, "ab") as f:
        f.write(_future_batch(n, version))
    os.unlink(path / MARKER)
    size = os.path.getsize(active)
    with open(active, "rb") as f:
        content = f.read()
    if version == 2:
        with Log.open(path, **OPTS) as log:
            assert log.end_offset == n + 1
            assert log.get(n) == Record(n, 123, b"key", b"from the future", {})
            assert list(log.replay()) == expected + [log.get(n)]
        return
    for _ in range(2):
        with pytest.raises(UnsupportedFormatError):
            Log.open(path, **OPTS)
        assert os.path.getsize(active) == size
        with open(active, "rb") as f:
            assert f.read() == content


def test_unknown_version_batch_with_bad_crc_is_a_torn_tail(tmp_path):
    """Contrast: the same batch with a CRC that does not match is indistinguishable from a torn
    write, so it is cut off (the version is only believed once the CRC is valid)."""
    path = tmp_path / "log"
    log, expected = build_log(path, seed=59, min_segments=2, min_active_batches=3)
    crash(log)
    active = layout(path)[-1][0]
    size = os.path.getsize(active)
    batch = bytearray(_future_batch(len(expected)))
    batch[4] ^= 0xFF
    with open(active, "ab") as f:
        f.write(bytes(batch))
    with Log.open(path, **OPTS) as log:
        assert log.end_offset == len(expected)
        assert log.recovery_report.truncated_bytes == len(batch)
    assert os.path.getsize(active) == size
