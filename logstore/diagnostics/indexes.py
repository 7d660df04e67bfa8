"""Checking a segment's offset and time index against the batches actually found in its data.

Indexes are hints (``segments/FORMAT.md``, "Indexes are hints"): a wrong entry never loses
data, readers rebuild a bad index in memory and ``recover --apply`` rewrites it. ``verify``
still reports one, entry by entry, and ``dump --index`` prints them with their checks
(:func:`index_report`). Both index kinds are checked by one routine (:func:`check_indexes`);
what differs per kind (entry layout, ordering rule, what an entry promises) is in
:class:`OffsetIndexRules` and :class:`TimeIndexRules`. Entry layouts and dtypes are the
engine's own (``logstore.storage.index``, ``logstore.format.index_entries``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..format.header import BatchHeader
from ..format.index_entries import unpack_offset_entry
from ..format.names import INDEX_SUFFIX, TIMEINDEX_SUFFIX
from ..storage.index import OFFSET_ENTRY, TIME_ENTRY
from .reader import Reader, read_entries
from .scan import walk
from .targets import SegmentFile, Target, segment_files

Pair = Tuple[int, int]


@dataclass
class IndexEntry:
    """One index entry and whether it is right about the log."""

    kind: str  # "offset" or "time"
    number: int  # entry number in its file
    offset: int  # absolute offset (segment base + relative offset)
    position: Optional[int] = None  # offset index: byte position of the batch
    timestamp: Optional[int] = None  # time index: max timestamp of the records before `offset`
    status: str = "ok"  # "ok", "unchecked" (past the scanned end of the active segment) or why not

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchecked")


@dataclass
class IndexFiles:
    """The two index files of a segment as found on disk (read before the segment's data)."""

    offset_path: str
    time_path: str
    offset_raw: Optional[np.ndarray]
    time_raw: Optional[np.ndarray]
    offset_size: int
    time_size: int

    def location(self, e: IndexEntry) -> Tuple[str, int]:
        """(index file, byte position) of entry ``e``."""
        if e.kind == "offset":
            return self.offset_path, e.number * OFFSET_ENTRY.itemsize
        return self.time_path, e.number * TIME_ENTRY.itemsize


def read_index_files(seg: SegmentFile) -> IndexFiles:
    op, tp = seg.sibling(INDEX_SUFFIX), seg.sibling(TIMEINDEX_SUFFIX)
    o = read_entries(op, OFFSET_ENTRY)
    t = read_entries(tp, TIME_ENTRY)
    osz = os.path.getsize(op) if o is not None else -1
    tsz = os.path.getsize(tp) if t is not None else -1
    return IndexFiles(op, tp, o, t, osz, tsz)


class BatchTable:
    """Compact per-segment table of valid batches (positions, offsets, max timestamps)."""

    def __init__(self) -> None:
        self._pos: List[int] = []
        self._base: List[int] = []
        self._next: List[int] = []
        self._max: List[int] = []

    def add(self, pos: int, h: BatchHeader) -> None:
        self._pos.append(pos)
        self._base.append(h.base_offset)
        self._next.append(h.next_offset)
        self._max.append(h.max_timestamp)

    def arrays(self):
        pos = np.array(self._pos, dtype=np.int64)
        base = np.array(self._base, dtype=np.int64)
        nxt = np.array(self._next, dtype=np.int64)
        mx = np.array(self._max, dtype=np.int64)
        return pos, base, nxt, mx

    def __len__(self) -> int:
        return len(self._pos)


class SegmentFacts:
    """What the scan found in a segment's undamaged data, as index entries are checked against."""

    def __init__(self, seg: SegmentFile, table: BatchTable, scanned_end: int, scanned_next: int):
        assert seg.base_offset is not None
        self.base = seg.base_offset
        self.active = seg.active
        self.scanned_end = scanned_end
        self.scanned_next = scanned_next
        # A sealed segment ends at the next segment's base, past its last batch when
        # compaction removed its last records.
        self.seg_end = scanned_next
        if not seg.active and seg.end_offset is not None and seg.end_offset >= scanned_next:
            self.seg_end = seg.end_offset
        self.rel_end = self.seg_end - self.base
        self.pos, self.bases, _, max_a = table.arrays()
        # prefix[i] = largest timestamp of the batches before batch i (-1 if none)
        self.prefix = (np.concatenate(([-1], np.maximum.accumulate(max_a))) if len(max_a)
                       else np.array([-1]))
        self.seg_max = int(self.prefix[-1])


class OffsetIndexRules:
    """Offset index: entries (relative offset, byte position), both strictly increasing."""

    kind = "offset"
    dtype = OFFSET_ENTRY
    first = (0, 0)  # position 0 is implicit: the first stored entry is above it

    @staticmethod
    def pairs(raw: np.ndarray) -> List[Pair]:
        return [unpack_offset_entry(int(v)) for v in raw]

    @staticmethod
    def entry(f: SegmentFacts, n: int, pair: Pair) -> IndexEntry:
        rel, pos = pair
        return IndexEntry("offset", n, f.base + rel, position=pos)

    @staticmethod
    def status(f: SegmentFacts, pair: Pair, prev: Pair) -> str:
        rel, pos = pair
        if rel <= prev[0] or pos <= prev[1]:
            return ("entry at position 0 (position 0 is implicit, never stored)"
                    if pos == 0 else "entries are not strictly increasing")
        if f.active and pos >= f.scanned_end:
            return "unchecked"
        i = int(np.searchsorted(f.pos, pos))
        if i >= len(f.pos) or int(f.pos[i]) != pos:
            return f"no batch starts at byte {pos}"
        if int(f.bases[i]) != f.base + rel:
            return (f"the batch at byte {pos} starts at offset {int(f.bases[i])}, "
                    f"not {f.base + rel}")
        return "ok"


class TimeIndexRules:
    """Time index: entries (max timestamp before, relative offset); offsets increase,
    timestamps never decrease."""

    kind = "time"
    dtype = TIME_ENTRY
    first = (-1, 0)

    @staticmethod
    def pairs(raw: np.ndarray) -> List[Pair]:
        return [(int(t), int(r)) for t, r in zip(raw["ts"], raw["rel"])]

    @staticmethod
    def entry(f: SegmentFacts, n: int, pair: Pair) -> IndexEntry:
        ts, rel = pair
        return IndexEntry("time", n, f.base + rel, timestamp=ts)

    @staticmethod
    def status(f: SegmentFacts, pair: Pair, prev: Pair) -> str:
        ts, rel = pair
        if rel <= prev[1] or ts < prev[0] or ts < 0:
            return ("relative offsets must increase and timestamps must not decrease"
                    if rel > 0 else "relative offset must be > 0")
        if f.active and rel > f.rel_end:
            return "unchecked"
        off = f.base + rel
        if off in (f.scanned_next, f.seg_end):
            need: Optional[int] = f.seg_max
        else:
            i = int(np.searchsorted(f.bases, off))
            need = int(f.prefix[i]) if i < len(f.bases) and int(f.bases[i]) == off else None
        if need is None:
            return f"offset {off} is not the start of a batch"
        if ts < need:
            return f"says records before offset {off} have timestamps <= {ts}, but one has {need}"
        return "ok"


def _check_kind(rules, f: SegmentFacts, path: str, raw: Optional[np.ndarray], size: int,
                problems: List[str], notes: List[str]) -> Tuple[List[IndexEntry], List[Pair], int]:
    """Check one index file: (entries, their pairs, preallocated empty entries skipped)."""
    name = os.path.basename(path)
    if raw is None:
        notes.append(f"{name} is missing (readers rebuild it from the log)")
        return [], [], 0
    if size % rules.dtype.itemsize:
        problems.append(f"{name} has {size} bytes, not a multiple of {rules.dtype.itemsize}")
    pairs = rules.pairs(raw)
    skipped = 0
    if f.active:  # preallocated, zero-filled tail of the active segment's index
        while pairs and pairs[-1] == (0, 0):
            pairs.pop()
            skipped += 1
    entries = []
    prev = rules.first
    for n, pair in enumerate(pairs):
        e = rules.entry(f, n, pair)
        e.status = rules.status(f, pair, prev)
        prev = (max(prev[0], pair[0]), max(prev[1], pair[1]))
        entries.append(e)
    return entries, pairs, skipped


def check_indexes(seg: SegmentFile, files: IndexFiles, table: BatchTable, scanned_end: int,
                  scanned_next: int
                  ) -> Tuple[List[IndexEntry], List[str], Dict[str, int], List[str]]:
    """Check the segment's offset and time index against the batches actually found.

    Returns (entries, file-level problems, number of preallocated empty entries skipped per
    kind, notes). A missing index file is a note, not a problem: readers rebuild it from the
    log (and compaction deletes stale ones on purpose). Only meaningful for a segment whose data
    is undamaged up to ``scanned_end``. A sealed segment ends at ``seg.end_offset`` (the next
    segment's base), which is past its last batch when compaction removed its last records.
    """
    f = SegmentFacts(seg, table, scanned_end, scanned_next)
    notes: List[str] = []
    problems: List[str] = []
    offsets, _, skipped_o = _check_kind(OffsetIndexRules, f, files.offset_path,
                                        files.offset_raw, files.offset_size, problems, notes)
    times, time_pairs, skipped_t = _check_kind(TimeIndexRules, f, files.time_path,
                                               files.time_raw, files.time_size, problems, notes)
    if files.time_raw is not None and not seg.active:
        # A sealed segment's time index ends with (its max timestamp, its end offset).
        want = (max(f.seg_max, 0), f.rel_end)
        last = time_pairs[-1] if time_pairs else None
        if last != want:
            problems.append(
                f"{os.path.basename(files.time_path)} of a sealed segment must end with "
                f"(max timestamp {want[0]}, offset {f.seg_end}); found "
                + ("no entry" if last is None else f"({last[0]}, offset {f.base + last[1]})"))
    return offsets + times, problems, {"offset": skipped_o, "time": skipped_t}, notes


def index_report(target: Target) -> Iterator[Tuple[SegmentFile, List[IndexEntry], List[str],
                                                    Dict[str, int], List[str]]]:
    """Per segment: every index entry with its check, file problems, preallocated entries
    skipped, notes.

    Batches are located by walking headers (no CRC check): what ``dump --index`` prints.
    """
    for seg in segment_files(target):
        if seg.base_offset is None:
            continue
        files = read_index_files(seg)
        table = BatchTable()
        end, nxt = 0, seg.base_offset
        with Reader(seg.path) as r:
            for item in walk(r, seg, 0, seg.base_offset, decode=False):
                if item.error is not None:
                    break
                table.add(item.pos, item.header)
                end, nxt = item.pos + item.header.length, item.header.next_offset
        yield (seg,) + check_indexes(seg, files, table, end, nxt)
