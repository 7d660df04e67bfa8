"""The log's read paths over its segment list: ranges of batches, records, many random offsets,
and the offset for a time.

These functions run with the log's lock held only while they locate batches and pin their bytes
(a mapping, or bytes read with pread); CRC checks and decoding run outside it, so readers do not
stall the writer. They know the log only through :class:`ReadHooks`: its lock and segment list,
its open check, a read-only opener's catch-up with the writer, and its rule for offset gaps
(allowed only in compacted logs).
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from ..errors import CorruptLogError, OffsetOutOfRangeError, RecordRemovedError
from ..format.decode import DecodedBatch, decode
from ..format.extract import extract_range, extract_record, extract_records
from ..format.header import ATTR_OFFSET_DELTAS, CODEC_MASK, FORMAT_VERSION, BatchHeader, crc_ok
from ..record import Record
from ..util import check_offset
from . import meta
from .filecache import SegmentReplaced
from .segment import Segment
from .segments import SegmentList

SPAN_BATCHES = 64  # batches located per hold of the log lock while reading
RECORDS_PER_LIST = 500  # records() yields a big batch's records in lists of at most this many
# Batches that records() decodes whole (not with get's one-record extraction).
WHOLE_BATCH_ATTRS = CODEC_MASK | ATTR_OFFSET_DELTAS

# (buf, at, header, segment, position): a batch's bytes are buf[at : at + header.length].
Span = Tuple[Any, int, BatchHeader, Segment, int]
# gap(expected, found, segment, position): raise CorruptLogError unless offsets may have gaps.
GapCheck = Callable[[int, int, Segment, int], None]


class ReadHooks(NamedTuple):
    """What the read paths need from the log that owns ``segs``."""

    lock: threading.Lock
    segs: SegmentList
    check_open: Callable[[], None]
    refresh: Optional[Callable[[], None]]  # a read-only opener's catch-up (lock held)
    gaps_allowed: Callable[[], bool]
    gap: GapCheck
    # (lock held) catch up with other processes if this opener follows them; the end readers see
    end: Callable[[], int]


class GapRule:
    """Offsets are dense unless the log is compacted: a gap elsewhere is corruption.

    ``allowed`` is set from the settings (and when this writer compacts); a read-only opener
    also learns from the metadata that the writer compacted since it opened.
    """

    def __init__(self, directory: str, readonly: bool):
        self.directory = directory
        self.readonly = readonly
        self.allowed = False

    def gaps_allowed(self) -> bool:
        if not self.allowed and self.readonly:
            found = meta.read_meta(self.directory) or {}
            self.allowed = bool(found.get("settings", {}).get("compacted"))
        return self.allowed

    def check(self, expected: int, found: int, seg: Segment, pos: int) -> None:
        """A batch starting at ``found`` where ``expected`` was next: CorruptLogError if
        offsets are missing and gaps are not allowed."""
        if found > expected and not self.gaps_allowed():
            raise CorruptLogError(
                f"offsets {expected}..{found - 1} are missing (the log is not compacted, so "
                f"offsets must be dense)", seg.path, pos)


def batch_for(segs: SegmentList, offset: int) -> Tuple[Segment, Any, int, Any, int]:
    """(lock held) ``get``'s general route: ``(segment, buf, at, header, position)`` of the
    first batch reaching ``offset``, its bytes being ``buf[at : at + header.length]``."""
    loc = segs.locate(offset)
    if loc is None:
        raise CorruptLogError(f"offset {offset} should exist but no batch holds it",
                              segs.active.path)
    i, pos, h = loc
    seg = segs.items[i]
    if seg.use_pread:
        return seg, seg.read_bytes(pos, h.length), 0, h, pos
    return seg, seg.mapped(pos + h.length), pos, h, pos


def check_range(segs: SegmentList, offset: int, end: int) -> None:
    """Refuse an offset outside ``[start_offset, end]``."""
    start = segs.start_offset
    if offset < start or offset > end:
        raise OffsetOutOfRangeError(
            f"offset {offset} is outside the log [{start}, {end}] (start_offset, end_offset)")


def check_get_range(segs: SegmentList, offset: int, end: int) -> None:
    """Refuse an offset ``get`` cannot answer: outside the log, or ``end`` itself."""
    if offset == end:
        raise OffsetOutOfRangeError(
            f"offset {offset} is end_offset: no record there yet (use read() to poll)")
    check_range(segs, offset, end)


def record_at(segs: SegmentList, offset: int, end: int, gap: GapCheck) -> Record:
    """(lock held) ``get``: the record at ``offset`` below ``end``; the sparse index's quick
    route first, the general one (any batch layout, gaps checked) otherwise."""
    bases = segs.bases
    if bases and bases[0] <= offset < end:
        try:
            rec = segs.items[bisect.bisect_right(bases, offset) - 1].quick_get(offset)
        except SegmentReplaced:  # the general route finds it in the directory as it is now
            rec = None
        if rec is not None:
            return rec
    check_get_range(segs, offset, end)
    seg, buf, at, h, pos = batch_for(segs, offset)
    rec = extract_record(buf, h, offset, seg.path, pos, at)
    if rec is None:
        gap(offset, h.base_offset if h.base_offset > offset else offset + 1, seg, pos)
        raise RecordRemovedError(f"offset {offset} was removed by compaction")
    return rec


def collect_sorted(segs: SegmentList, sorted_offs: List[int], order: List[int],
                   out: List[Any], gap: GapCheck) -> None:
    """(log lock held; ``get_many``) Put the record at each of ``sorted_offs`` (ascending, all
    inside the log) into ``out[order[k]]``, locating and CRC-checking each stored batch once for
    all the offsets it holds. Raises what ``get`` raises for the first offending offset."""
    bases, segments = segs.bases, segs.items
    k = 0
    n = len(sorted_offs)
    while k < n:
        offset = sorted_offs[k]
        seg = segments[bisect.bisect_right(bases, offset) - 1]
        try:
            found = seg.quick_locate(offset)  # get's route, when it applies
        except SegmentReplaced:
            found = None
        if found is not None:
            buf, at, h, pos = found
        else:
            seg, buf, at, h, pos = batch_for(segs, offset)
        # Header fields by index: h is a BatchHeader or quick_locate's plain tuple.
        stop = bisect.bisect_right(sorted_offs, h[5] + h[9], k)  # base + last delta
        path = seg.path
        if stop == k:  # (the located batch must reach the offset: never loop on it)
            raise CorruptLogError(f"the batch located for offset {offset} ends before "
                                  f"it", path, pos)
        if h[4] & (CODEC_MASK | ATTR_OFFSET_DELTAS):
            # Compressed or sparse: decode it once (CRC, decompression, columns).
            batch = decode(buf, at, h, path, pos, header_checked=True)
            count = len(batch)
            for kk in range(k, stop):
                offset = sorted_offs[kk]
                j = batch.index_of(offset)
                if j >= count or batch.offset_at(j) != offset:
                    gap(offset, batch.offset_at(j) if j < count else offset + 1,
                              seg, pos)
                    raise RecordRemovedError(
                        f"offset {offset} was removed by compaction")
                out[order[kk]] = batch.record_at(j)
        else:
            if offset < h[5]:  # the first batch reaching it starts after it: a gap
                gap(offset, h[5], seg, pos)
                raise RecordRemovedError(f"offset {offset} was removed by compaction")
            # Plain: the batch is checked once for all its records (version 1: whole;
            # version 2: the chunks they use), and read as get reads it.
            if stop - k == 1:
                out[order[k]] = extract_record(buf, h, offset, path, pos, at)
            else:
                recs = extract_records(buf, h, sorted_offs[k:stop], path, pos, at)
                for kk, rec in zip(range(k, stop), recs):
                    out[order[kk]] = rec
        k = stop


def spans(hooks: ReadHooks, start: int, stop: int) -> Iterator[Span]:
    """The stored batches covering ``[start, stop)``, in order, as ``(buf, at, header,
    segment, position)``: the batch's bytes are ``buf[at : at + header.length]`` (the
    segment's mapping, or bytes read with pread). Headers are validated and the bytes
    pinned under the lock, up to ``SPAN_BATCHES`` batches per lock hold; the caller checks
    CRCs and decodes outside it.

    The cursor is an offset; the (segment, position) pair is only a shortcut, dropped when
    the segment was retired by compaction or retention (the new layout is found by offset).
    """
    segs = hooks.segs
    cursor = start
    seg: Optional[Segment] = None
    pos = 0
    while cursor < stop:
        chunk = []
        with hooks.lock:
            hooks.check_open()
            if hooks.refresh is not None and (seg is None or pos >= seg.size):
                hooks.refresh()
            if seg is None or seg.retired or pos >= seg.size:
                if cursor < segs.start_offset:
                    raise OffsetOutOfRangeError(
                        f"offset {cursor} was removed by retention while reading")
                loc = segs.locate(cursor)
                if loc is None:
                    if hooks.gaps_allowed():
                        return  # the rest of the range was compacted away
                    raise CorruptLogError(f"offset {cursor} should exist but no batch holds it",
                                          segs.active.path)
                i, pos, h = loc
                seg = segs.items[i]
            else:
                try:
                    h = seg.header_at(pos)
                except SegmentReplaced:  # (the file cache closed it; another file now)
                    seg = None
                    continue
            size = seg.size
            last = h.next_offset
            while True:
                if seg.use_pread:
                    chunk.append((seg.read_bytes(pos, h.length), 0, h, pos))
                else:
                    chunk.append((seg.mapped(pos + h.length), pos, h, pos))
                pos += h.length
                if len(chunk) >= SPAN_BATCHES or pos >= size or last >= stop:
                    break
                try:
                    h = seg.header_at(pos)
                except CorruptLogError:
                    break  # raised when the reader gets there, after the batches before it
                last = h.next_offset
        for buf, at, h, p in chunk:
            if h.base_offset != cursor:
                # Not where the previous batch ended (a compaction gap, a batch before the
                # cursor, or damage): an intact batch is judged by its offsets, a damaged
                # one is reported as such, at its own position.
                if not crc_ok(buf, at, h):
                    raise CorruptLogError("CRC32C mismatch", seg.path, p)
                hooks.gap(cursor, h.base_offset, seg, p)
            if h.next_offset <= cursor:
                continue
            cursor = h.next_offset
            yield buf, at, h, seg, p

def batches(hooks: ReadHooks, start: int, stop: int) -> Iterator[DecodedBatch]:
    """Decoded (CRC-checked, lazily parsed) batches covering ``[start, stop)``."""
    for buf, at, h, seg, pos in spans(hooks, start, stop):
        yield decode(buf, at, h, seg.path, pos, True, lazy=True)

def records(hooks: ReadHooks, start: int, stop: int,
            partition: Optional[int]) -> Iterator[List[Record]]:
    """Lists of the records in ``[start, stop)``, batch by batch. Plain version 2 batches are
    read (and checked) for the records in the range only (:func:`extract_range`); a
    one-record batch (one ``append``) is read like ``get`` reads it; other batches are decoded
    whole."""
    for buf, at, h, seg, pos in spans(hooks, start, stop):
        # A one-record batch (one ``append``), either version, is read like ``get`` reads it:
        # the range route's setup costs more than the record (2x on a log of single appends).
        if h.record_count == 1 and not h.attributes & WHOLE_BATCH_ATTRS:
            rec = extract_record(buf, h, h.base_offset, seg.path, pos, at, partition)
            if rec is None:  # cannot be: a dense one-record batch holds its base offset
                raise CorruptLogError("one-record batch without its record", seg.path, pos)
            if start <= rec.offset < stop:
                yield [rec]
            continue
        if h.version == FORMAT_VERSION and not h.attributes & WHOLE_BATCH_ATTRS:
            base = h.base_offset
            j = start - base if base < start else 0
            k = stop - base if h.last_offset >= stop else h.record_count
            if k - j > RECORDS_PER_LIST:
                # Lists of at most RECORDS_PER_LIST records: a replay that drops each record
                # once read then never holds more than the garbage collector's first threshold
                # (700 new objects) of them, so reading big batches triggers no collections.
                whole = j == 0 and k == h.record_count
                if whole and not crc_ok(buf, at, h):
                    raise CorruptLogError("CRC32C mismatch", seg.path, pos)
                for i in range(j, k, RECORDS_PER_LIST):
                    yield extract_range(buf, at, h, i, min(i + RECORDS_PER_LIST, k), seg.path,
                                        pos, partition, whole)
            elif j < k:
                yield extract_range(buf, at, h, j, k, seg.path, pos, partition)
            continue
        batch = decode(buf, at, h, seg.path, pos, True, lazy=True)
        j = batch.index_of(start) if h.base_offset < start else 0
        k = batch.index_of(stop) if h.last_offset >= stop else len(batch)
        if j < k:
            yield batch.records(j, k, partition)


def sort_request(offsets: Iterable[int]) -> Tuple[List[int], List[int], Optional[int]]:
    """``get_many``'s offsets in ascending order and, for each, its place in the request
    (numpy argsort: ~20x faster than sorting indexes in Python); or an offset beyond int64
    (third item), which no log can hold. TypeError for a non-integer."""
    wanted = offsets if isinstance(offsets, list) else list(offsets)
    if not all(type(o) is int for o in wanted):
        wanted = [check_offset("offset", o) for o in wanted]
    try:
        arr = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
    except OverflowError:
        return [], [], next(o for o in wanted if not -(1 << 63) <= o < 1 << 63)
    order = np.argsort(arr, kind="stable")
    return arr[order].tolist(), order.tolist(), None


def take(batches_of_records: Iterator[List[Record]], max_records: int,
         max_bytes: Optional[int]) -> List[Record]:
    """Up to ``max_records`` records from the lists ``batches_of_records`` yields, their key and
    value bytes summing to at most ``max_bytes``, except that the first record is always taken
    (Kafka's rule: a reader always progresses)."""
    out: List[Record] = []
    budget = max_bytes
    for recs in batches_of_records:
        if len(out) + len(recs) > max_records:
            recs = recs[: max_records - len(out)]
        if budget is not None:
            taken = 0
            for rec in recs:
                size = (0 if rec.value is None else len(rec.value)) + (
                    0 if rec.key is None else len(rec.key))
                # Take records while the total stays <= max_bytes and the budget is not yet
                # used up (so zero-size records after an exactly spent budget are not taken,
                # whatever the batching); the first record is always taken.
                if (out or taken) and (budget <= 0 or size > budget):
                    break
                budget -= size
                taken += 1
            if taken < len(recs):
                out.extend(recs[:taken])
                break
        out.extend(recs)
        if len(out) >= max_records or (budget is not None and budget <= 0):
            break
    return out


def first_offset_at(segs: SegmentList, ts: int, end: int) -> int:
    """(log lock held) The first offset below ``end`` whose record timestamp is >= ``ts``
    (``end`` if none): time index, then headers, then the batch's timestamp column."""
    try:
        return _first_offset_at(segs, ts, end)
    except SegmentReplaced:  # (a reader: the file cache closed it, another process swapped it)
        segs.relist(os.stat(segs.directory).st_mtime_ns)
        return _first_offset_at(segs, ts, end)


def _first_offset_at(segs: SegmentList, ts: int, end: int) -> int:
    for seg in segs.items:
        if seg.sealed:
            seg.time_index()  # loads max_timestamp
        if seg.max_timestamp < ts:
            continue
        seg.ensure_open()
        for pos, h in seg.iter_headers(seg.position_for_time(ts)):
            if h.max_timestamp < ts:
                # Skipping on the header's word: make sure that word is not damaged.
                if not crc_ok(seg.read_bytes(pos, h.length), 0, h):
                    raise CorruptLogError("CRC32C mismatch", seg.path, pos)
                continue
            batch = seg.batch_at(pos, h)  # CRC-checked: its header can be trusted now
            if h.base_offset >= end:
                return end
            hits = np.flatnonzero(batch.timestamps >= ts)
            if len(hits):
                return min(batch.offset_at(int(hits[0])), end)
    return end


def current_end(hooks: ReadHooks) -> int:
    """The end readers of the log see now (caught up with other processes' writes)."""
    with hooks.lock:
        hooks.check_open()
        return hooks.end()


def read_range(hooks: ReadHooks, offset: int, max_records: int, max_bytes: Optional[int],
               partition: Optional[int]) -> List[Record]:
    """``Log.read``: arguments checked, then up to ``max_records`` records from ``offset``."""
    offset = check_offset("offset", offset)
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
        raise ValueError(f"max_records must be an int >= 1, got {max_records!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or
                                  not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")
    with hooks.lock:
        hooks.check_open()
        end = hooks.end()
        check_range(hooks.segs, offset, end)
    return take(records(hooks, offset, end, partition), max_records, max_bytes)


def replay_bounds(hooks: ReadHooks, from_offset: int, to_offset: Optional[int]
                  ) -> Tuple[int, int]:
    """``Log.replay``'s range, checked now (not at the first ``next()``), its end fixed now."""
    from_offset = check_offset("from_offset", from_offset)
    with hooks.lock:
        hooks.check_open()
        end = hooks.end()
        check_range(hooks.segs, from_offset, end)
    if to_offset is None:
        return from_offset, end
    to_offset = check_offset("to_offset", to_offset)
    if to_offset < from_offset:
        raise ValueError(f"to_offset {to_offset} is below from_offset {from_offset}")
    return from_offset, min(to_offset, end)


def offset_at_time(hooks: ReadHooks, ts: int) -> int:
    """``Log.offset_for_time`` (``ts`` checked)."""
    with hooks.lock:
        hooks.check_open()
        return first_offset_at(hooks.segs, ts, hooks.end())


def get_many(hooks: ReadHooks, offsets: Iterable[int]) -> List[Record]:
    """``Log.get_many``: the records at ``offsets`` in the order given, every batch located and
    checked once; nothing returned unless every offset can be answered."""
    sorted_offs, order_list, huge = sort_request(offsets)
    with hooks.lock:
        hooks.check_open()
        end = hooks.end()
        if huge is not None:  # beyond int64: no log holds such an offset
            check_range(hooks.segs, huge, end)
        if not sorted_offs:
            return []
        check_get_range(hooks.segs, sorted_offs[0], end)
        check_get_range(hooks.segs, sorted_offs[-1], end)
        out: List[Any] = [None] * len(sorted_offs)
        collect_sorted(hooks.segs, sorted_offs, order_list, out, hooks.gap)
    return out
