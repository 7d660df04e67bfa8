"""Event sourcing by key: ``Log.replay_key`` / ``Topic.replay_key`` and the per-segment key
index (``<base>.keyindex``, segments/FORMAT.md "Key index").

The contract checked everywhere: ``log.replay_key(k, f) == [r for r in log.replay(f) if r.key
== k]``, record for record (offset, timestamp, key, value, headers), whatever the key index
files hold: missing, torn, flipped, another segment's, stale after compaction, left half
written by a SIGKILL. A wrong index costs a rebuild, never a wrong or missing record.
"""

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import logstore
from logstore.errors import CorruptLogError, OffsetOutOfRangeError
from logstore.format import key_index_entries as kie
from logstore.storage import key_index, key_replay
from logstore.storage.key_index import check_key_index_file

from helpers import flip, lines, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(log, key, from_offset=0):
    return [r for r in log.replay(from_offset) if r.key == key]


def key_files(d):
    return sorted(glob.glob(os.path.join(d, "*.keyindex")))


def fill(log, n, keys, rng, batch_max=6):
    """Append ``n`` records with keys from ``keys`` (None: no key), single and in batches."""
    done = 0
    while done < n:
        if rng.random() < 0.4:
            k = rng.choice(keys)
            log.append(b"s%d" % done, key=k, headers={"h": b"%d" % done} if done % 5 == 0
                       else None)
            done += 1
        else:
            m = rng.randint(1, batch_max)
            ks = [rng.choice(keys) for _ in range(m)]
            vals = [None if rng.random() < 0.05 else b"b%d-%d" % (done, i) for i in range(m)]
            log.append_batch(vals, keys=ks)
            done += m


def check_all(log, keys, rng=None):
    end = log.end_offset
    start = log.start_offset
    for k in keys:
        if k is None:
            continue
        if start == 0:
            assert log.replay_key(k) == model(log, k)
        f = start if rng is None else rng.randint(start, end)
        assert log.replay_key(k, f) == model(log, k, f), (k, f)


KEYS = [b"k%d" % i for i in range(12)] + [b"", b"a-much-longer-key-" * 5, None]


# ---------------------------------------------------------------------------------- the hash
def test_vectorised_hash_is_the_scalar_hash():
    rng = random.Random(1)
    keys = [bytes(rng.getrandbits(8) for _ in range(n))
            for n in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 71, 72, 73, 200, 1000]
            for _ in range(3)]
    keys += [b"a", b"a\0", b"\0", b"", b"\0" * 8, b"\0" * 9]
    lens = np.array([len(k) for k in keys], dtype=np.int64)
    starts = np.cumsum(lens) - lens
    got = kie.key_hashes(b"".join(keys), starts, lens)
    assert [int(x) for x in got] == [kie.key_hash(k) for k in keys]
    # zero padding is not confused with zero bytes: every distinct key got its own hash here
    assert len(set(got.tolist())) == len(set(keys))
    # known values pin the definition (a change of the hash is a format change)
    assert kie.key_hash(b"") == 0
    assert kie.key_hash(b"user-7") == kie.key_hashes(b"user-7", np.array([0]), np.array([6]))[0]


def test_key_index_file_roundtrip_and_damage_is_detected():
    rng = random.Random(2)
    hashes = np.array(sorted(rng.getrandbits(64) for _ in range(9000)), dtype=np.uint64)
    hashes[100:2500] = hashes[100]  # one hash over several blocks
    locs = np.arange(len(hashes), dtype=np.int64) << 32
    h = kie.KeyIndexHeader(100, 9100, 123456, len(hashes), 4000, 7, 9)
    data = kie.encode_key_index(h, hashes, locs)
    assert len(data) == kie.file_size(len(hashes))
    parsed, why, table, fences = kie.parse_directory(data, len(data))
    assert parsed == h and why == ""
    assert (fences == hashes[::kie.BLOCK_ENTRIES]).all()
    nb = kie.blocks(len(hashes))
    at = kie.block_span(0, len(hashes))[0]
    hh, ll, why = kie.parse_blocks(memoryview(data)[at:], len(hashes), 0, nb - 1, table)
    assert why == "" and (hh == hashes).all() and (ll == locs).all()
    for probe in [int(hashes[0]), int(hashes[100]), int(hashes[-1]), int(hashes[5000]) + 1, 0,
                  2**64 - 1]:
        first, last = kie.blocks_for(fences, probe)
        pos = kie.block_span(first, len(hashes))[0]
        bh, bl, why = kie.parse_blocks(memoryview(data)[pos:], len(hashes), first, last, table)
        assert why == ""
        assert list(bl[bh == np.uint64(probe)]) == list(locs[hashes == np.uint64(probe)])
    directory = kie.directory_size(len(hashes))
    for pos in (0, 5, 9, 20, 40, 63, 64, 70, directory - 1):  # header, CRC table, fences
        bad = bytearray(data)
        bad[pos] ^= 0x10
        assert kie.parse_directory(bytes(bad), len(bad))[0] is None, pos
    bad = bytearray(data)
    bad[directory + 17] ^= 0x01  # a block: its reader notices
    assert kie.parse_directory(bytes(bad), len(bad))[0] is not None
    assert kie.parse_blocks(memoryview(bytes(bad))[at:], len(hashes), 0, 0, table)[0] is None
    assert kie.parse_directory(data[:-1], len(data) - 1)[0] is None
    assert kie.parse_directory(data, len(data) + 8)[0] is None


# ---------------------------------------------------------------------------------- basics
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_replay_key_equals_filtered_replay(tmp_path, compression):
    rng = random.Random(3)
    d = str(tmp_path / "log")
    log = logstore.Log.open(d, fsync="never", segment_bytes=4096, compression=compression)
    fill(log, 1500, KEYS, rng)
    check_all(log, KEYS, rng)
    assert len(key_files(d)) == len(log.segments()) - 1  # every sealed segment, saved
    fill(log, 300, KEYS, rng)  # the active segment grows, rolls: the indexes follow
    check_all(log, KEYS, rng)
    log.close()
    for path in key_files(d):
        base = int(os.path.basename(path).split(".")[0])
        segs = {s["base_offset"]: s for s in logstore.Log.open(d, readonly=True).segments()}
        assert check_key_index_file(path, path[:-len(".keyindex")] + ".log", base,
                                    segs[base]["next_offset"], False) is None
    ro = logstore.Log.open(d, readonly=True)
    check_all(ro, KEYS, rng)
    log = logstore.Log.open(d, fsync="never")  # reopened: the saved files are used
    check_all(log, KEYS, rng)
    log.close()
    ro.close()


def test_arguments_and_ranges(tmp_path):
    log = logstore.Log.open(str(tmp_path / "l"), fsync="never", segment_bytes=1024)
    assert log.replay_key(b"x") == []
    log.append_batch([b"1", b"2", b"3"], keys=[b"x", b"y", b"x"])
    with pytest.raises(TypeError):
        log.replay_key("x")
    with pytest.raises(TypeError):
        log.replay_key(None)
    with pytest.raises(TypeError):
        log.replay_key(b"x", 1.5)
    with pytest.raises(OffsetOutOfRangeError):
        log.replay_key(b"x", 4)
    assert log.replay_key(b"x", 3) == []
    assert [r.value for r in log.replay_key(bytearray(b"x"))] == [b"1", b"3"]
    assert [r.offset for r in log.replay_key(memoryview(b"x"), 1)] == [2]
    log.close()
    with pytest.raises(logstore.LogClosedError):
        log.replay_key(b"x")


def test_fsync_always_sees_only_durable_records_and_retention_start(tmp_path):
    d = str(tmp_path / "l")
    log = logstore.Log.open(d, segment_bytes=1024, retention_bytes=3000)
    for i in range(200):
        log.append(b"v%d" % i, key=b"k%d" % (i % 3))
    assert log.replay_key(b"k1") == model(log, b"k1")
    log.enforce_retention()
    assert log.start_offset > 0
    with pytest.raises(OffsetOutOfRangeError):  # as replay(0): records of k1 were deleted
        log.replay_key(b"k1")
    assert log.replay_key(b"k1", log.start_offset) == model(log, b"k1", log.start_offset)
    # the deleted segments' key indexes went with them
    bases = {s["base_offset"] for s in log.segments()}
    assert {int(os.path.basename(p).split(".")[0]) for p in key_files(d)} <= bases
    log.close()


def test_readonly_opener_never_writes_a_key_index(tmp_path):
    d = str(tmp_path / "l")
    rng = random.Random(4)
    log = logstore.Log.open(d, fsync="never", segment_bytes=2048)
    fill(log, 400, KEYS, rng)
    ro = logstore.Log.open(d, readonly=True)
    before = sorted(os.listdir(d))
    check_all(ro, KEYS, rng)
    assert sorted(os.listdir(d)) == before and key_files(d) == []
    fill(log, 400, KEYS, rng)  # the reader follows rolls: its active index becomes sealed
    check_all(ro, KEYS, rng)
    assert key_files(d) == []
    ro.close()
    log.close()


# ---------------------------------------------------------------------------------- the model
class KeyIndexMachine(RuleBasedStateMachine):
    """Random appends (single, batches, null keys, tombstones, headers), rolls, compaction,
    retention, reopen, a read-only reader and damaged key index files, against
    ``[r for r in replay(f) if r.key == k]``."""

    @initialize(compression=st.sampled_from(["none", "zstd"]),
                compact=st.booleans())
    def setup(self, compression, compact):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="keyindex-")
        self.opts = dict(fsync="never", segment_bytes=1024, compression=compression,
                         cleanup_policy="compact" if compact else "delete",
                         retention_check_interval_s=0)
        self.compact_log = compact
        self.keys = [b"a", b"b", b"c", b"dd" * 9] + ([] if compact else [None])
        self.log = logstore.Log.open(self.dir, **self.opts)
        self.reader = None
        self.rng = random.Random(0)

    def teardown(self):
        if getattr(self, "log", None) is not None:
            self.log.close()
        if getattr(self, "reader", None) is not None:
            self.reader.close()
        shutil.rmtree(getattr(self, "dir", "/nonexistent"), ignore_errors=True)

    @rule(k=st.integers(0, 4), tomb=st.booleans())
    def append(self, k, tomb):
        key = self.keys[k % len(self.keys)]
        self.log.append(None if tomb and key is not None else b"v" * (k + 1), key=key)

    @rule(ks=st.lists(st.integers(0, 4), min_size=1, max_size=12))
    def append_batch(self, ks):
        keys = [self.keys[k % len(self.keys)] for k in ks]
        self.log.append_batch([b"x%d" % i for i in range(len(ks))], keys=keys,
                              headers=[{"i": b"%d" % i} if i % 3 == 0 else None
                                       for i in range(len(ks))])

    @rule()
    def compact(self):
        if self.compact_log:
            self.log.compact(now_ms=2**62)

    @rule()
    def retention(self):
        segs = self.log.segments()
        if len(segs) > 2:
            self.log.enforce_retention(keep_from=segs[1]["base_offset"])

    @rule()
    def reopen(self):
        self.log.close()
        self.log = logstore.Log.open(self.dir, **self.opts)

    @rule()
    def open_reader(self):
        if self.reader is None:
            self.reader = logstore.Log.open(self.dir, readonly=True)

    @rule(how=st.sampled_from(["flip", "truncate", "swap", "empty", "delete"]),
          pick=st.integers(0, 1000), at=st.integers(0, 10**6))
    def damage_key_index(self, how, pick, at):
        files = key_files(self.dir)
        if not files:
            return
        path = files[pick % len(files)]
        data = open(path, "rb").read()
        if how == "flip":
            flip(path, at % len(data), xor=1 << (at % 8))
        elif how == "truncate":
            with open(path, "r+b") as f:
                f.truncate(at % len(data))
        elif how == "swap" and len(files) > 1:
            other = files[(pick + 1) % len(files)]
            shutil.copyfile(other, path + ".x")
            os.replace(path + ".x", path)
        elif how == "empty":
            open(path, "wb").close()
        elif how == "delete":
            os.unlink(path)

    @invariant()
    def replay_key_is_the_filtered_replay(self):
        if not hasattr(self, "log"):
            return
        start, end = self.log.start_offset, self.log.end_offset
        f = self.rng.randint(start, end)
        for k in self.keys:
            if k is None:
                continue
            assert self.log.replay_key(k, start) == model(self.log, k, start)
            assert self.log.replay_key(k, f) == model(self.log, k, f)
            if self.reader is not None:
                rstart = self.reader.start_offset
                assert self.reader.replay_key(k, rstart) == model(self.reader, k, rstart)


TestKeyIndexModel = KeyIndexMachine.TestCase
TestKeyIndexModel.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                      suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------- hints
def _log_with_indexes(tmp_path, rng, n=1200, **opts):
    d = str(tmp_path / "l")
    log = logstore.Log.open(d, fsync="never", segment_bytes=4096, **opts)
    fill(log, n, KEYS, rng)
    check_all(log, KEYS)
    return d, log


def test_damaged_key_index_files_never_give_a_wrong_or_missing_record(tmp_path):
    """Flip every 7th byte, one at a time, of a key index file: each time, replay_key of
    every key is exact (the damage is noticed where it matters and the file rebuilt)."""
    rng = random.Random(5)
    d, log = _log_with_indexes(tmp_path, rng)
    log.close()
    path = key_files(d)[1]
    good = open(path, "rb").read()
    want = {}
    with logstore.Log.open(d, readonly=True) as ro:
        for k in KEYS:
            if k is not None:
                want[k] = model(ro, k)
    for pos in range(0, len(good), 7):
        with open(path, "wb") as f:
            f.write(good)
        flip(path, pos, xor=0x01 << (pos % 8))
        with logstore.Log.open(d, fsync="never") as log:
            for k, recs in want.items():
                assert log.replay_key(k) == recs, (pos, k)
    with logstore.Log.open(d, fsync="never") as log:
        for k, recs in want.items():
            assert log.replay_key(k) == recs
    # whatever happened, the writer left a file that agrees with the segment (or none)
    for p in key_files(d):
        assert _file_check(d, p) is None


def _file_check(d, path):
    base = int(os.path.basename(path).split(".")[0])
    with logstore.Log.open(d, readonly=True) as ro:
        nxt = {s["base_offset"]: s["next_offset"] for s in ro.segments()}[base]
    return check_key_index_file(path, path[:-len(".keyindex")] + ".log", base, nxt, False)


def test_truncated_swapped_and_foreign_key_index_files(tmp_path):
    rng = random.Random(6)
    d, log = _log_with_indexes(tmp_path, rng)
    files = key_files(d)
    want = {k: model(log, k) for k in KEYS if k is not None}
    log.close()
    a, b = open(files[0], "rb").read(), open(files[2], "rb").read()
    open(files[0], "wb").write(b)  # another segment's index
    open(files[2], "wb").write(a[: len(a) // 2])  # torn
    open(files[3], "wb").write(b"")  # empty
    # a different log's index for a segment at the same base offset
    other = str(tmp_path / "other")
    with logstore.Log.open(other, fsync="never", segment_bytes=4096) as o:
        fill(o, 1200, [b"k1", b"zz"], random.Random(7))
        o.replay_key(b"k1")
    shutil.copyfile(key_files(other)[1], files[1])
    for opener in (dict(readonly=True), dict(fsync="never")):
        with logstore.Log.open(d, **opener) as log:
            for k, recs in want.items():
                assert log.replay_key(k) == recs
    for p in key_files(d):
        assert _file_check(d, p) is None


def _read_entries(path):
    data = open(path, "rb").read()
    header, why, table, _fences = kie.parse_directory(data, len(data))
    at = kie.block_span(0, header.count, header.block_entries)[0]
    hashes, locs, why = kie.parse_blocks(memoryview(data)[at:], header.count, 0,
                                         kie.blocks(header.count, header.block_entries) - 1,
                                         table, header.block_entries)
    return header, np.array(hashes), np.array(locs)


@pytest.mark.parametrize("forgery", ["positions", "offsets", "other_key", "duplicate"])
def test_forged_entries_with_valid_checksums_are_caught_by_the_batch_check(tmp_path, forgery):
    """A key index whose checksums and identity are right but whose entries lie (what a bug
    in a writer could save) is caught by checking each hit against its batch: the record at
    the entry's place must be there and carry the key."""
    rng = random.Random(17)
    d = str(tmp_path / "l")
    log = logstore.Log.open(d, fsync="never", segment_bytes=8192)
    fill(log, 1500, [b"k1", b"k2", b"k3"], rng, batch_max=3)
    want = {k: model(log, k) for k in (b"k1", b"k2", b"k3")}
    for k in want:
        log.replay_key(k)
    log.close()
    path = key_files(d)[1]
    header, hashes, locs = _read_entries(path)
    h1 = np.uint64(kie.key_hash(b"k1"))
    mine = np.flatnonzero(hashes == h1)
    rel, pos = locs >> 32, locs & 0xFFFFFFFF
    k1_offsets = set((rel[mine]).tolist())
    # one k1 entry whose next offset is not a k1 record: changing it alone must be caught
    victim = next(i for i in mine[1:-1] if int(rel[i]) + 1 not in k1_offsets)
    if forgery == "positions":  # it names the batch of the next k1 entry
        nxt = next(i for i in mine if pos[i] != pos[victim] and rel[i] > rel[victim])
        pos[victim] = pos[nxt]
    elif forgery == "offsets":  # it names the offset after its record (another key's, or
        rel[victim] += 1  # one outside its batch)
    elif forgery == "other_key":  # it names a k2 record
        other = np.flatnonzero(hashes == np.uint64(kie.key_hash(b"k2")))[0]
        rel[victim], pos[victim] = rel[other], pos[other]
        order = np.lexsort((rel, hashes))
        hashes, rel, pos = hashes[order], rel[order], pos[order]
    else:  # it repeats the first k1 entry (one record twice, one missing)
        rel[victim], pos[victim] = rel[mine[0]], pos[mine[0]]
        order = np.lexsort((rel, hashes))
        hashes, rel, pos = hashes[order], rel[order], pos[order]
    with open(path, "wb") as f:
        f.write(kie.encode_key_index(header, hashes, (rel << 32) | pos))
    for opener in (dict(readonly=True), dict(fsync="never")):
        with logstore.Log.open(d, **opener) as log:
            for k, recs in want.items():
                assert log.replay_key(k) == recs, (opener, k)
    assert _file_check(d, path) is None  # the writer saved a good one again


def test_stale_key_index_after_compaction(tmp_path):
    """A key index saved before compaction rewrote its segment (as a crash between the swap
    and the index's removal leaves it) is detected: records compaction removed are not
    returned, the kept ones are."""
    d = str(tmp_path / "l")
    log = logstore.Log.open(d, fsync="never", segment_bytes=2048, cleanup_policy="compact",
                            retention_check_interval_s=0)
    rng = random.Random(8)
    keys = [b"k%d" % i for i in range(5)]
    fill(log, 800, keys, rng)
    for k in keys:
        log.replay_key(k)
    saved = {p: open(p, "rb").read() for p in key_files(d)}
    log.compact(now_ms=2**62)
    assert len(key_files(d)) < len(saved)  # the swapped segments' indexes were removed
    for p, data in saved.items():
        open(p, "wb").write(data)  # put the stale ones back
    for k in keys:
        assert log.replay_key(k) == model(log, k)
    log.close()
    with logstore.Log.open(d, readonly=True) as ro:
        for k in keys:
            assert ro.replay_key(k) == model(ro, k)


def test_hash_collisions_are_filtered_by_the_key(tmp_path, monkeypatch):
    """With a hash of 2 bits every key collides with others: replay_key still returns exactly
    the records of the key asked for."""
    orig_many, orig_one = key_index.key_hashes, key_replay.key_hash
    monkeypatch.setattr(key_index, "key_hashes", lambda *a: orig_many(*a) & np.uint64(3))
    monkeypatch.setattr(key_replay, "key_hash", lambda k: orig_one(k) & 3)
    rng = random.Random(9)
    d = str(tmp_path / "l")
    with logstore.Log.open(d, fsync="never", segment_bytes=4096) as log:
        fill(log, 800, KEYS, rng)
        check_all(log, KEYS, rng)
    with logstore.Log.open(d, fsync="never") as log:
        check_all(log, KEYS, rng)


def test_damaged_segment_raises_instead_of_skipping(tmp_path):
    rng = random.Random(10)
    d, log = _log_with_indexes(tmp_path, rng)
    log.close()
    seg = sorted(glob.glob(os.path.join(d, "*.log")))[1]
    for p in key_files(d):
        os.unlink(p)
    flip(seg, os.path.getsize(seg) // 2)
    with logstore.Log.open(d, fsync="never") as log:
        with pytest.raises(CorruptLogError):
            log.replay_key(b"k1")


def test_orphan_key_index_is_removed_at_open(tmp_path):
    d = str(tmp_path / "l")
    with logstore.Log.open(d, fsync="never", segment_bytes=1024) as log:
        fill(log, 300, KEYS, random.Random(11))
    orphan = os.path.join(d, "00000000000099999999.keyindex")
    open(orphan, "wb").write(b"junk")
    left = os.path.join(d, "00000000000000000000.keyindex.123-4.tmp")
    open(left, "wb").write(b"junk")
    with logstore.Log.open(d, fsync="never"):
        pass
    assert not os.path.exists(orphan) and not os.path.exists(left)


def test_threads_query_while_the_writer_rolls(tmp_path):
    d = str(tmp_path / "l")
    log = logstore.Log.open(d, fsync="never", segment_bytes=2048)
    stop = threading.Event()
    errors = []

    def reader():
        try:
            while not stop.is_set():
                end = log.end_offset
                recs = log.replay_key(b"k1")
                assert [r.offset for r in recs if r.offset < end] == \
                    [r.offset for r in model(log, b"k1", 0) if r.offset < end]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    fill(log, 1500, [b"k1", b"k2", None], random.Random(12))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert log.replay_key(b"k1") == model(log, b"k1")
    log.close()


# ---------------------------------------------------------------------------------- SIGKILL
CHILD = textwrap.dedent("""
    import os, sys, glob
    sys.path.insert(0, {root!r})
    import logstore
    log = logstore.Log.open({d!r}, fsync="never")
    print("ready", flush=True)
    while True:  # build and save every sealed segment's key index, again and again
        for p in glob.glob(os.path.join({d!r}, "*.keyindex")):
            os.unlink(p)
        log.replay_key(b"k1")
""")


def test_sigkill_while_key_indexes_are_written_leaves_a_usable_log(tmp_path):
    d = str(tmp_path / "l")
    with logstore.Log.open(d, fsync="never", segment_bytes=256 * 1024) as log:
        rng = random.Random(13)
        for _ in range(60):
            ks = [rng.choice([b"k1", b"k2", b"k3"]) for _ in range(500)]
            log.append_batch([b"v" * 20] * 500, keys=ks)
        want = {k: model(log, k) for k in (b"k1", b"k2", b"k3")}
    rng = random.Random(14)
    for round_ in range(6):
        p = subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT, d=d)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with logstore.Log.open(d, readonly=True) as ro:  # a reader first: trusts nothing
            for k, recs in want.items():
                assert ro.replay_key(k) == recs, round_
        with logstore.Log.open(d, fsync="never") as log:  # the writer's open sweeps *.tmp
            assert not glob.glob(os.path.join(d, "*.tmp"))
            for k, recs in want.items():
                assert log.replay_key(k) == recs, round_
        for path in key_files(d):
            assert _file_check(d, path) is None
    r = run("verify", d)
    assert r.exit_code == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------- store, CLI
def test_topic_replay_key(tmp_path):
    store = logstore.Store.open(str(tmp_path / "s"), fsync="never")
    t = store.topic("orders", partitions=3, segment_bytes=2048)
    rng = random.Random(15)
    users = [b"user-%d" % i for i in range(10)]
    for i in range(600):
        t.publish(b"e%d" % i, key=rng.choice(users))
    t.publish_batch([b"b1", b"b2"], keys=[b"user-1", b"user-2"])
    for u in users:
        p = t.partition_of(u)
        recs = t.replay_key(u)
        assert recs and all(r.partition == p for r in recs)
        assert recs == [r._replace(partition=p) for r in model(t.partitions[p], u)]
    p = (t.partition_of(b"user-1") + 1) % 3
    t.publish(b"elsewhere", key=b"user-1", partition=p)
    assert [r.value for r in t.replay_key(b"user-1", partition=p)] == [b"elsewhere"]
    with pytest.raises(logstore.UnknownTopicError):
        t.replay_key(b"user-1", partition=7)
    with pytest.raises(TypeError):
        t.replay_key("user-1")
    store.close()
    ro = logstore.Store.open(str(tmp_path / "s"), readonly=True)
    t = ro.get_topic("orders")
    assert [r.value for r in t.replay_key(b"user-1")][-1] == b"b1"
    ro.close()


def test_cli_dump_key(tmp_path):
    root = str(tmp_path / "s")
    store = logstore.Store.open(root, fsync="never")
    t = store.topic("orders", partitions=2, segment_bytes=1024)
    store.topic("other", partitions=1)
    for i in range(100):
        t.publish(b"e%d" % i, key=b"u%d" % (i % 4), headers={"n": b"%d" % i})
    want = t.replay_key(b"u1")
    store.close()
    r = run("dump", root, "--topic", "orders", "--key", "u1", "--values", "text")
    assert r.exit_code == 0, r.stderr
    got = lines(r)
    assert len(got) == len(want) == 25
    assert got[0].startswith(f"orders/{want[0].partition} offset={want[0].offset} ")
    assert all('key="u1"' in line for line in got)
    r = run("dump", root, "--topic", "orders", "--key-hex", b"u1".hex(), "--json", "--max", "2",
            "--from-offset", str(want[3].offset))
    import json
    objs = [json.loads(x) for x in lines(r)]
    assert [o["offset"] for o in objs] == [w.offset for w in want[3:5]]
    assert objs[0]["topic"] == "orders" and objs[0]["key"] == "u1"
    assert run("dump", root, "--key", "u1").exit_code == 2  # two topics: which one?
    assert run("dump", root, "--topic", "orders", "--key", "u1", "--batches").exit_code == 2
    d = os.path.join(root, "topics", "orders", str(want[0].partition))
    r = run("dump", d, "--key", "u1")
    assert r.exit_code == 0 and len(lines(r)) == 25
    assert run("dump", d, "--key", "nobody").stdout == ""


def test_cli_verify_warns_and_recover_deletes(tmp_path):
    d = str(tmp_path / "l")
    with logstore.Log.open(d, fsync="never", segment_bytes=2048) as log:
        fill(log, 600, KEYS, random.Random(16))
        check_all(log, KEYS)
    files = key_files(d)
    flip(files[1], os.path.getsize(files[1]) - 3)
    shutil.copyfile(files[3], files[2])
    r = run("verify", d)
    assert r.exit_code == 0, r.stdout + r.stderr  # a hint: a warning, not a data problem
    text = r.stdout + r.stderr
    assert os.path.basename(files[1]) in text and os.path.basename(files[2]) in text
    assert "disagrees with its segment" in text
    r = run("recover", d)
    assert r.exit_code == 1 and "delete " + os.path.basename(files[1]) in r.stdout
    r = run("recover", d, "--apply")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert not os.path.exists(files[1]) and not os.path.exists(files[2])
    assert os.path.exists(files[0])
    r = run("verify", d)
    assert "disagrees" not in r.stdout + r.stderr
    with logstore.Log.open(d, fsync="never") as log:
        check_all(log, KEYS)


# ------------------------------------------------------------------- both format versions
GOLDEN = os.path.join(ROOT, "segments", "golden")


def _tabled_batch(log, n, rng, value_bytes=300):
    """One batch of ``n`` keyed records large enough for a chunk table (format version 2)."""
    ks = [rng.choice(KEYS) for _ in range(n)]
    vals = [None if i % 17 == 3 else (b"%06d-" % i) * (value_bytes // 7) for i in range(n)]
    log.append_batch(vals, keys=ks, headers=[{"i": b"%d" % i} if i % 3 else None
                                             for i in range(n)])


def _versions(d):
    from logstore.format.header import CHUNK_SHIFT_MASK, parse_header
    out = set()
    for p in sorted(glob.glob(os.path.join(d, "*.log"))):
        data = open(p, "rb").read()
        pos = 0
        while pos + 64 <= len(data) and data[pos:pos + 4] == b"LSTB":
            h = parse_header(data, pos)
            out.add((h.version, bool(h.attributes & CHUNK_SHIFT_MASK)))
            pos += h.length
    return out


@pytest.mark.parametrize("name", ["plain", "zstd", "v2/plain", "v2/zstd", "v2/tables"])
def test_replay_key_on_golden_logs_of_both_versions_and_their_v2_appends(tmp_path, name):
    """Golden logs of format versions 1 and 2 (with chunk tables in v2/tables), then version 2
    appends to them (one-record batches, big batches with a chunk table, a one-record batch
    with a chunk table): replay_key is the filtered replay, through saved indexes too."""
    d = str(tmp_path / "l")
    shutil.copytree(os.path.join(GOLDEN, name), d)
    with logstore.Log.open(d, readonly=True) as ro:
        old_keys = {r.key for r in ro.replay()} | set(KEYS)
    rng = random.Random(23)
    with logstore.Log.open(d, fsync="never") as log:
        check_all(log, old_keys)
        fill(log, 200, KEYS, rng)
        _tabled_batch(log, 150, rng)
        log.append(b"x" * 40000, key=b"k1")  # one record, with a chunk table
        log.append(b"y" * 40000, key=None, headers={"h": b"1"})
        fill(log, 100, KEYS, rng)
        check_all(log, old_keys, rng)
        log.flush()
        with logstore.Log.open(d, readonly=True) as ro:
            check_all(ro, old_keys, rng)
    if "zstd" not in name:  # (zstd logs compress their batches: no chunk tables)
        assert (2, True) in _versions(d)
    with logstore.Log.open(d, fsync="never") as log:  # saved key indexes, reopened
        check_all(log, old_keys)
        assert any(r.value == b"x" * 40000 for r in log.replay_key(b"k1"))


def test_damage_inside_a_chunk_tabled_batch_is_raised_not_skipped(tmp_path):
    """A hit in a version 2 batch is checked through its chunks: a flipped value byte of a
    record the index points at raises CorruptLogError (the rebuilt index's scan finds it),
    before and after the key index file exists."""
    rng = random.Random(24)
    d = str(tmp_path / "l")
    with logstore.Log.open(d, fsync="never", segment_bytes=4096) as log:
        _tabled_batch(log, 200, rng, value_bytes=500)  # alone in its segment, sealed by:
        log.append(b"tail", key=b"k0")
        want = model(log, b"k2")
        assert want and log.replay_key(b"k2") == want
    assert key_files(d)  # (the sealed segment's index was saved)
    [seg] = [p for p in glob.glob(os.path.join(d, "*.log")) if os.path.getsize(p) > 50000]
    data = open(seg, "rb").read()
    victim = want[len(want) // 2].value
    at = data.index(victim)  # (values differ per record: the first match is that record)
    flip(seg, at + len(victim) // 2)
    for keep_index in (True, False):
        if not keep_index:
            for p in key_files(d):
                os.unlink(p)
        with logstore.Log.open(d, readonly=True) as ro:
            with pytest.raises(CorruptLogError):
                ro.replay_key(b"k2")
