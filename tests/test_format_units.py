"""Unit tests of pure format modules: the torn-tail rules (``format/damage``), the work-queue
event log (``format/queue_events``) and offset-index entries (``format/index_entries``).

Each is also checked against the engine it must agree with: the damage rules against the
loader's mmap copy, the event fold against a real WorkQueue reopened on the same store.
"""

import struct

import numpy as np
import pytest

import logstore
from logstore import CorruptLogError
from logstore.format import damage, encode, queue_events
from logstore.format.header import (
    ALIGN, HEADER_SIZE, MAGIC, crc_ok, header_problem, parse_header,
)
from logstore.format.index_entries import (
    first_entry_above, pack_offset_entry, unpack_offset_entry,
)
from logstore.format.names import QUEUE_EVENTS_TOPIC, QUEUE_GROUP, queue_events_dir


class Bytes:
    """A ByteSource over bytes in memory, counting reads."""

    def __init__(self, data):
        self.data = bytes(data)
        self.reads = 0

    def read(self, pos, n):
        self.reads += 1
        return self.data[pos : pos + n]


def segment_bytes(n, synced=lambda i, pos: 0, first_offset=0):
    """``n`` one-record batches at offsets first_offset.., each batch's synced_before from
    ``synced(i, position)``. Returns (bytes, positions, lengths)."""
    data = bytearray()
    positions, lengths = [], []
    for i in range(n):
        p = encode.prepare_one(b"value-%d" % i * (i % 3 + 1), b"k%d" % i, None,
                               1_700_000_000_000 + i)
        b = encode.frame(p, first_offset + i, synced(i, len(data)))
        positions.append(len(data))
        lengths.append(len(b))
        data += b
    return data, positions, lengths


def damaged(data, pos):
    out = bytearray(data)
    out[pos] ^= 0x55
    return out


def brute_force_next(data, start, end, min_offset):
    """The reference rule: try every 8-aligned position."""
    data = bytes(data[:end])
    for p in range(start + (-start % ALIGN), end - HEADER_SIZE + 1, ALIGN):
        h = parse_header(data, p)
        if (h.magic == MAGIC and header_problem(h) is None and p + h.length <= end
                and (min_offset is None or h.base_offset >= min_offset) and crc_ok(data, p, h)):
            return p
    return None


# ------------------------------------------------------------------------------ damage
def test_find_valid_batch_skips_damage_to_the_next_whole_batch():
    data, pos, _ = segment_bytes(6)
    bad = damaged(data, pos[2] + HEADER_SIZE + 1)  # payload of batch 2: CRC mismatch
    src = Bytes(bad)
    assert damage.find_valid_batch(src, pos[2] + 1, len(bad), 2) == pos[3]
    assert damage.find_valid_batch(src, pos[2], len(bad), 2) == pos[3]  # batch 2 is invalid
    assert damage.find_valid_batch(src, 0, len(bad), None) == pos[0]
    # min_offset: a valid batch whose base offset goes back does not count
    assert damage.find_valid_batch(src, pos[2] + 1, len(bad), 4) == pos[4]
    # a batch must end by `end`
    assert damage.find_valid_batch(src, pos[5], len(bad) - 1, None) is None
    assert damage.find_valid_batch(src, pos[5] + 1, len(bad), None) is None


def test_find_valid_batch_ignores_unaligned_and_fake_magics():
    data, pos, _ = segment_bytes(3)
    junk = bytearray(b"\x00" * 40)
    junk[3:7] = MAGIC  # unaligned
    junk[16:20] = MAGIC  # aligned, but no valid header/CRC behind it
    buf = bytes(junk) + bytes(data)
    src = Bytes(buf)
    assert damage.find_valid_batch(src, 0, len(buf), None) == 40  # 40 is 8-aligned


@pytest.mark.parametrize("chunk", [64, 72, 100, 129, 4 << 20])
def test_find_valid_batch_is_the_same_whatever_the_search_chunk(monkeypatch, chunk):
    monkeypatch.setattr(damage, "SEARCH_CHUNK", chunk)
    data, pos, _ = segment_bytes(12)
    bad = damaged(damaged(data, pos[1] + 9), pos[6] + HEADER_SIZE)
    for start in range(0, len(bad), 5):
        for min_offset in (None, 0, 7):
            want = brute_force_next(bad, start, len(bad), min_offset)
            assert damage.find_valid_batch(Bytes(bad), start, len(bad), min_offset) == want, \
                (start, min_offset)


def test_damage_with_nothing_valid_after_it_is_a_torn_tail():
    data, pos, lengths = segment_bytes(4)
    torn = bytes(data[: pos[3] + lengths[3] // 2])  # the last batch half written
    d = damage.classify_damage(Bytes(torn), pos[3], len(torn), 3)
    assert d == damage.Damage(resume=None, torn_tail=True, zero_hole=False)


def test_damage_in_bytes_no_later_batch_vouches_for_is_a_zero_hole():
    # Every batch was written while nothing of the segment was durable yet (synced_before 0):
    # a hole of zeros in batch 1 followed by whole batches is unsynced data lost, a torn tail.
    data, pos, lengths = segment_bytes(4)
    holed = bytearray(data)
    holed[pos[1] : pos[1] + lengths[1]] = bytes(lengths[1])
    d = damage.classify_damage(Bytes(holed), pos[1], len(holed), 1)
    assert d == damage.Damage(resume=pos[2], torn_tail=True, zero_hole=True)


def test_damage_just_past_the_synced_bytes_is_a_torn_tail():
    # synced_before = X says bytes [0, X) were durable: damage starting at X was not.
    _, pos, _ = segment_bytes(4)
    data, _, _ = segment_bytes(4, synced=lambda i, p: pos[1] if i == 3 else 0)
    bad = damaged(data, pos[1] + HEADER_SIZE + 2)
    d = damage.classify_damage(Bytes(bad), pos[1], len(bad), 1)
    assert d == damage.Damage(resume=pos[2], torn_tail=True, zero_hole=True)
    d = damage.classify_damage(Bytes(bad), pos[1] - 1, len(bad), 1)
    assert not d.torn_tail


def test_damage_in_bytes_a_later_batch_says_were_synced_is_corruption():
    # Batch 3 was written after an fsync covered batches 0..2 (synced_before = its position):
    # damage in batch 1 is in durable bytes, even though batch 2 (written before) says 0.
    data, pos, _ = segment_bytes(4, synced=lambda i, p: p if i == 3 else 0)
    bad = damaged(data, pos[1] + HEADER_SIZE + 2)
    src = Bytes(bad)
    assert damage.max_synced_before(src, pos[2], len(bad)) == pos[3]
    assert not damage.is_unsynced(src, pos[1], pos[2], len(bad))
    d = damage.classify_damage(src, pos[1], len(bad), 1)
    assert d == damage.Damage(resume=pos[2], torn_tail=False, zero_hole=False)




# ------------------------------------------------------------------------------ queue events
def events(*items):
    """(offset, value) pairs numbered from 0."""
    return list(enumerate(items))


def test_event_records_round_trip():
    v = queue_events.encode_event(queue_events.NACKED, 2, 12345, 3, 1_700_000_000_000)
    assert len(v) == queue_events.EVENT.size == 25
    assert queue_events.decode_event(v) == (b"N", 2, 12345, 3, 1_700_000_000_000)


def test_fold_replays_deliveries_nacks_and_acks():
    E = queue_events.encode_event
    parts, replayed = queue_events.fold(events(
        E(b"G", 0, 5, 1), E(b"G", 0, 6, 1), E(b"N", 0, 6, 2, 999), E(b"A", 0, 5, 1),
        E(b"G", 1, 0, 1), E(b"D", 1, 0, 3), None, E(b"A", 0, 8, 1),
        E(b"G", 7, 0, 1),  # a partition the queue does not have: ignored
    ), [5, 0])
    assert replayed == 9
    p0, p1 = parts
    assert (p0.low, p0.done, p0.counts, p0.not_before) == (6, {8}, {6: 2}, {6: 999})
    assert (p1.low, p1.done, p1.counts, p1.not_before) == (1, set(), {}, {})


def test_done_offsets_advance_the_watermark_in_any_order():
    st = queue_events.PartitionState(10)
    for off in (12, 13, 11, 9):  # 9 is below the watermark: nothing to do
        st.mark_done(off)
    assert (st.low, st.done) == (10, {11, 12, 13})
    st.mark_done(10)
    assert (st.low, st.done) == (14, set())
    st.note_delivery(b"G", 12, 4, 0)  # already done: not counted
    assert st.counts == {}


def test_a_checkpoint_replaces_the_state_and_later_events_apply_on_top():
    E = queue_events.encode_event
    before = [queue_events.PartitionState(3), queue_events.PartitionState(0)]
    before[0].mark_done(5)
    before[0].note_delivery(b"N", 4, 2, 777)
    cp = queue_events.encode_checkpoint(before)
    parts, _ = queue_events.fold(events(E(b"A", 0, 0, 1), cp, E(b"A", 0, 3, 1)), [0, 0])
    p0 = parts[0]
    assert (p0.low, p0.done, p0.counts, p0.not_before) == (4, {5}, {4: 2}, {4: 777})
    assert parts[1].low == 0


def test_retention_moves_the_watermark_to_the_partition_start():
    # A checkpoint from before retention removed offsets 10..19 of the partition.
    old = queue_events.PartitionState(10)
    for off in (12, 20, 21, 25):
        old.mark_done(off)
    cp = queue_events.encode_checkpoint([old])
    parts, _ = queue_events.fold(events(cp), [20])
    assert (parts[0].low, parts[0].done) == (22, {25})
    parts, _ = queue_events.fold(events(cp, queue_events.encode_event(b"A", 0, 22, 1)), [15])
    assert (parts[0].low, parts[0].done) == (15, {20, 21, 22, 25})


def test_fold_builds_partitions_with_the_given_factory():
    class Mine(queue_events.PartitionState):
        pass

    cp = queue_events.encode_checkpoint([queue_events.PartitionState(2)])
    parts, _ = queue_events.fold(events(cp), [0, 0], new=Mine)
    assert all(type(p) is Mine for p in parts)


@pytest.mark.parametrize("value,what", [(b"Gshort", "event"), (b"C{not json", "checkpoint"),
                                        (b'C{"partitions": [{"low": 1}]}', "checkpoint")])
def test_a_bad_record_is_a_corrupt_log_not_a_silent_skip(value, what):
    with pytest.raises(CorruptLogError) as e:
        queue_events.fold([(0, queue_events.encode_event(b"G", 0, 0, 1)), (1, value)], [0],
                          where="/q")
    assert f"bad queue {what} at offset 1" in str(e.value)
    assert e.value.path == "/q"


def test_replay_starts_at_the_checkpoint_unless_retention_removed_it():
    assert queue_events.replay_start(None, 4) == 4
    assert queue_events.replay_start(2, 4) == 4
    assert queue_events.replay_start(9, 4) == 9


def test_fold_rebuilds_what_a_reopened_work_queue_rebuilds(tmp_path):
    root = str(tmp_path / "store")
    store = logstore.Store.open(root, fsync="never", dedup_window_s=0,
                                retention_check_interval_s=0)
    q = store.queue("jobs", partitions=2, visibility_timeout=60)
    for i in range(30):
        q.put(b"job-%d" % i, key=b"k%d" % (i % 7))
    got = [q.get(timeout=1) for _ in range(12)]
    for m in got[:5]:
        m.ack()
    q.checkpoint()
    for m in got[5:9]:
        m.ack()
    got[9].nack(delay=3600)
    store.close()

    store = logstore.Store.open(root, readonly=True, dedup_window_s=0)
    try:
        checkpoint = store.groups().get(QUEUE_GROUP + "jobs", {}).get(QUEUE_EVENTS_TOPIC, {}).get(0)
        starts = [log.start_offset for log in store.topic("jobs").partitions]
    finally:
        store.close()
    assert checkpoint is not None
    with logstore.Log.open(queue_events_dir(root, "jobs"), readonly=True) as ev:
        start = queue_events.replay_start(checkpoint, ev.start_offset)
        parts, _ = queue_events.fold(((r.offset, r.value) for r in ev.replay(start)), starts)

    store = logstore.Store.open(root, dedup_window_s=0, retention_check_interval_s=0)
    try:
        wq = store.queue("jobs", partitions=2, visibility_timeout=60)
        mine = [(p.low, p.done, p.counts, p.not_before) for p in parts]
        theirs = [(p.low, p.done, p.counts, p.not_before) for p in wq._state.parts]
        assert mine == theirs
        assert sum(len(p.counts) for p in parts) == 3  # delivered, not acked: 9, 10, 11
        assert sum(len(p.not_before) for p in parts) == 1
    finally:
        store.close()


# ------------------------------------------------------------------------------ index entries
def test_offset_entries_pack_unpack_and_sort_by_offset():
    pairs = [(1, 4096), (2, 100), (7, 0xFFFFFFFF), ((1 << 31) - 1, 5)]
    packed = [pack_offset_entry(r, p) for r, p in pairs]
    assert [unpack_offset_entry(v) for v in packed] == pairs
    assert packed == sorted(packed)
    arr = np.array(packed, dtype="<i8")
    # entries naming offsets <= 2: the first two
    assert int(np.searchsorted(arr, first_entry_above(2))) == 2
    assert struct.pack("<q", packed[0]) == struct.pack("<II", 4096, 1)  # FORMAT.md layout
