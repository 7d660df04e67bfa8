"""Walking the batches of a log's segments, read-only: what ``dump`` prints and ``verify`` checks.

:func:`scan` yields events per segment: :class:`SegmentStart`, a :class:`BatchEvent` per valid
batch, an :class:`ErrorEvent` for invalid data (classified as a torn tail or damage by the
shared rules of :mod:`logstore.format.damage`), :class:`SegmentEnd`. A batch is valid iff the
engine's ``Segment.scan`` would accept it: header, bounds, CRC32C (of a version 2 batch with a
chunk table: its header CRC, every table entry and the zero padding too), structure, offsets not
going back, offsets within reach of the segment's base.

Beside a running writer: an incomplete batch at the end of the active segment (while a writer
holds the lock, or while the file keeps growing) is re-read for a short while before it is
called torn, as it is usually a write in progress; never-written preallocated space at the end
of the active segment is where its data ends, not damage.

Two rules of the engine apply here too. The *durable floor* (``storage.tail``): a clean-shutdown
marker naming the active segment says how many of its bytes ``close()`` made durable; missing,
zeroed or invalid bytes below that size are data damage, never a torn tail or preallocated
space. And offsets are dense unless the log was compacted: a :class:`GapEvent` reports offsets
missing inside a segment or between two (a segment missing from the middle).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from ..errors import CorruptLogError, NotALogError
from ..format import damage
from ..format import decode as batch_decode
from ..format.decode import DecodedBatch
from ..format.header import BatchHeader, HEADER_SIZE, header_problem, parse_header
from ..format.index_entries import first_entry_above, unpack_offset_entry
from ..format.names import INDEX_SUFFIX, META_NAME
from ..storage import meta
from ..storage.index import OFFSET_ENTRY
from ..storage.segment import MAX_RELATIVE_OFFSET
from ..storage.sparse import zeros_between
from .reader import Reader, read_entries
from .targets import SegmentFile, Target, segment_files, writer_pid

Progress = Optional[Callable[[int], None]]


# ---------------------------------------------------------------------------------- one segment
@dataclass
class Item:
    """One step of a segment walk: a valid batch (``error`` None) or the first invalid one."""

    pos: int
    header: Optional[BatchHeader]  # None if the header itself is unusable
    batch: Optional[DecodedBatch]  # decoded (CRC-checked) batch when walking with decode=True
    error: Optional[CorruptLogError]


def read_one(r: Reader, seg: SegmentFile, pos: int, expect: Optional[int], decode: bool) -> Item:
    """The batch at ``pos`` (``expect``: the offset it must reach, if known)."""
    end = r.size
    path = r.path
    if end - pos < HEADER_SIZE:
        return Item(pos, None, None, CorruptLogError("truncated batch header", path, pos))
    buf, i = r.view(pos, HEADER_SIZE)
    if len(buf) - i < HEADER_SIZE:
        return Item(pos, None, None, CorruptLogError("truncated batch header", path, pos))
    h = parse_header(buf, i)
    problem = header_problem(h)
    if problem:
        return Item(pos, None, None, CorruptLogError(problem, path, pos))
    if pos + h.length > end:
        return Item(pos, h, None, CorruptLogError("truncated batch (torn write)", path, pos))
    batch = None
    if decode:
        buf, i = r.view(pos, h.length)
        if len(buf) - i < h.length:
            return Item(pos, h, None, CorruptLogError("truncated batch (torn write)", path, pos))
        try:
            batch = batch_decode.decode(buf, i, h, path, pos, True, deep=True)
        except CorruptLogError as e:
            return Item(pos, h, None, e)
    if expect is not None and h.base_offset < expect:
        return Item(pos, h, None, CorruptLogError(
            f"batch base offset {h.base_offset} goes back (expected >= {expect})", path, pos))
    if seg.base_offset is not None and h.next_offset - 1 - seg.base_offset > MAX_RELATIVE_OFFSET:
        return Item(pos, h, None, CorruptLogError(
            "batch offsets too far from the segment base", path, pos))
    return Item(pos, h, batch, None)


def walk(r: Reader, seg: SegmentFile, pos: int = 0, expect: Optional[int] = None,
         decode: bool = True, settle: float = 0.0, writer_running: bool = False,
         floor: int = 0) -> Iterator[Item]:
    """Yield consecutive batches from ``pos``; the last item is the first invalid batch, if any.

    ``decode`` checks CRC32C and structure (else only headers and bounds: ``stats``).
    ``settle`` > 0 (active segment): an invalid batch is re-read for up to that many seconds if
    a writer is running or the file has grown since it was opened: it may be being written.
    ``floor``: the active segment's durable floor (zero bytes below it are not preallocation).
    """
    while pos < r.size:
        item = read_one(r, seg, pos, expect, decode)
        if item.error is not None and seg.active and pos >= floor \
                and zeros_between(r.fd, pos, r.size):
            # Never-written, preallocated space of the active segment: the data ends here
            # (FORMAT.md, "Preallocated tail"). Recovery trims it; it is not damage.
            r.unwritten = r.size - pos
            r.size = pos
            return
        if item.error is not None and settle > 0 and (
                writer_running or r.refresh() != r.opened_size):
            deadline = time.monotonic() + settle
            while item.error is not None and time.monotonic() < deadline:
                time.sleep(0.05)
                r.refresh()
                item = read_one(r, seg, pos, expect, decode)
        yield item
        if item.error is not None:
            return
        pos += item.header.length
        expect = item.header.next_offset


# ---------------------------------------------------------------------------------- events
@dataclass
class SegmentStart:
    seg: SegmentFile
    size: int  # bytes in the file when it was opened


@dataclass
class BatchEvent:
    seg: SegmentFile
    pos: int
    header: BatchHeader
    batch: Optional[DecodedBatch]


@dataclass
class ErrorEvent:
    """Invalid data at ``pos``. ``torn_tail``: crash recovery would truncate it (the active
    segment, and no valid batch follows); otherwise the data is damaged. ``resume``: position of
    the next valid batch (None: none follows)."""

    seg: SegmentFile
    pos: int
    error: CorruptLogError
    header: Optional[BatchHeader]
    torn_tail: bool
    resume: Optional[int]
    size: int  # file size when the error was classified
    zero_hole: bool = False  # torn tail although valid batches follow: a zero-filled sector
    durable_floor: int = 0  # > pos: a clean-shutdown marker says these bytes were durable


@dataclass
class GapEvent:
    """Offsets ``expected``..``found - 1`` are missing in a log that is not compacted: the batch
    at ``pos`` starts at ``found``, or (``at_end``) the segment's data ends at ``pos`` with
    next offset ``expected`` while the next segment starts at ``found``."""

    seg: SegmentFile
    pos: int
    expected: int
    found: int
    at_end: bool

    @property
    def reason(self) -> str:
        missing = f"offsets {self.expected}..{self.found - 1} are missing"
        if self.at_end:
            return (f"{missing}: {self.seg.name} ends at offset {self.expected - 1} and the next "
                    f"segment starts at {self.found} (a segment missing from the middle, or "
                    f"this one lost its last batches)")
        return f"{missing} (the batch at this position starts at offset {self.found})"


@dataclass
class SegmentEnd:
    seg: SegmentFile
    size: int  # bytes of data (an active segment's preallocated zero tail excluded)
    unwritten: int = 0  # that zero tail's length
    next_offset: Optional[int] = None  # the offset after its last batch walked (None: none)


# ---------------------------------------------------------------------------------- the walk
def index_start(seg: SegmentFile, r: Reader, offset: int) -> int:
    """A position from which walking finds ``offset``: the sparse index hint, checked."""
    if seg.base_offset is None:
        return 0
    entries = read_entries(seg.sibling(INDEX_SUFFIX), OFFSET_ENTRY)
    if entries is None or not len(entries):
        return 0
    rel = offset - seg.base_offset
    i = int(np.searchsorted(entries, first_entry_above(rel))) - 1
    while i >= 0:
        erel, pos = unpack_offset_entry(int(entries[i]))
        # (The active segment's file ends in zero entries, so the search may land anywhere:
        # only an entry at or below the target, naming the batch found there, is used.)
        if erel <= rel and 0 < pos and pos + HEADER_SIZE <= r.size:
            buf, j = r.view(pos, HEADER_SIZE)
            if len(buf) - j >= HEADER_SIZE:
                h = parse_header(buf, j)
                if header_problem(h) is None and h.base_offset == seg.base_offset + erel:
                    return pos
        i -= 1  # an index is only a hint: a wrong entry just means walking from further back
    return 0


def scan(target: Target, *, decode: bool = True, continue_on_error: bool = False,
         from_offset: Optional[int] = None, progress: Progress = None,
         settle: Optional[float] = None) -> Iterator[Any]:
    """Walk every segment of ``target`` in order, yielding events.

    :class:`SegmentStart`, then :class:`BatchEvent` per valid batch, :class:`ErrorEvent` for
    invalid data, :class:`SegmentEnd`. After an error the walk stops (``continue_on_error``
    False: nothing more is yielded) or resumes at the next valid batch of the segment.
    ``from_offset`` skips segments and batches wholly below it. ``settle`` (default: 1 s when a
    writer holds the lock, else 0.2 s) is how long an incomplete tail of the active segment is
    watched for a write in progress while the file keeps changing.
    """
    segs = segment_files(target)
    compacted, marker = log_facts(target)
    if from_offset is not None:
        segs = [s for i, s in enumerate(segs) if i + 1 == len(segs)
                or segs[i + 1].base_offset is None or segs[i + 1].base_offset > from_offset]
    running = writer_pid(target.log_dir) is not None
    for seg in segs:
        try:
            r = Reader(seg.path)
        except FileNotFoundError:
            # Removed since listing (retention, or a reader racing a rename): nothing to check.
            continue
        with r:
            wait = 0.0
            if seg.active:
                wait = settle if settle is not None else (1.0 if running else 0.2)
            floor = (marker["size"] if marker is not None and seg.active and seg.in_log
                     and marker["segment"] == seg.base_offset else 0)
            # The active segment is always CRC-checked: whether its tail is torn or damaged
            # depends on it (stats must not call a damaged active segment fine).
            stopped = yield from _scan_segment(seg, r, decode or seg.active, continue_on_error,
                                               from_offset, progress, wait, running,
                                               _Rules(floor, not compacted))
            if stopped:
                return


@dataclass(frozen=True)
class _Rules:
    floor: int  # the segment's durable floor (a clean-shutdown marker's size), 0: none
    dense: bool  # offsets must be dense (the log is not compacted): report gaps


def log_facts(target: Target) -> Tuple[bool, Optional[Dict[str, int]]]:
    """(compacted, clean-shutdown marker) of the target's log; a segment file outside a log
    has neither. A compacted log (settings.compacted in logstore.meta) may have offset gaps."""
    if target.segment is not None and not os.path.exists(os.path.join(target.log_dir,
                                                                       META_NAME)):
        return False, None
    try:
        found = meta.read_meta(target.log_dir)
    except NotALogError:
        found = None
    compacted = bool(found and (found.get("settings") or {}).get("compacted"))
    return compacted, meta.read_clean_shutdown(target.log_dir)


def _scan_segment(seg: SegmentFile, r: Reader, decode: bool, continue_on_error: bool,
                  from_offset: Optional[int], progress: Progress, wait: float, running: bool,
                  rules: _Rules) -> Iterator[Any]:
    """The events of one segment; returns True if the scan stops at an error."""
    yield SegmentStart(seg, r.size)
    pos = 0
    expect = seg.base_offset
    if from_offset is not None and seg.base_offset is not None and from_offset > seg.base_offset:
        pos = index_start(seg, r, from_offset)
        if pos:
            expect = None
            if progress:
                progress(pos)
    last_next = expect  # offset the next batch must reach (recovery's min_offset)
    first_error = True
    damaged = False
    while True:
        error_item = None
        for item in walk(r, seg, pos, expect, decode, wait, running, rules.floor):
            if item.error is not None:
                error_item = item
                break
            h = item.header
            if rules.dense and last_next is not None and h.base_offset > last_next \
                    and not damaged:
                yield GapEvent(seg, item.pos, last_next, h.base_offset, False)
                if not continue_on_error:
                    return True
                damaged = True
            last_next = h.next_offset
            if progress:
                progress(h.length)
            if from_offset is None or h.next_offset > from_offset:
                yield BatchEvent(seg, item.pos, h, item.batch)
        if error_item is None:
            if seg.active and rules.floor > r.size and not damaged:
                # Whole batches up to the end of a file shorter than close() left it.
                error_item = Item(r.size, None, None, CorruptLogError(
                    f"the segment ends at byte {r.size}", r.path, r.size))
            else:
                break
        ev = _classify(seg, r, error_item, last_next, first_error, rules.floor)
        first_error = False
        damaged = True
        yield ev
        if not continue_on_error:
            return True
        if ev.resume is None:
            if progress:
                progress(max(0, r.size - ev.pos))
            break
        if progress:
            progress(ev.resume - ev.pos)
        pos, expect = ev.resume, None
    if rules.dense and not damaged and seg.end_offset is not None and last_next is not None \
            and last_next < seg.end_offset:
        yield GapEvent(seg, r.size, last_next, seg.end_offset, True)
        if not continue_on_error:
            return True
    yield SegmentEnd(seg, r.size, r.unwritten, last_next)
    return False


def _classify(seg: SegmentFile, r: Reader, item: Item, min_offset: Optional[int],
              first_error: bool, floor: int) -> ErrorEvent:
    """The error event of invalid data: only the first damage of the active segment can be a
    torn tail (format.damage), and only above its durable floor; anything else is damage,
    resuming at the next valid batch."""
    epos = item.pos
    if seg.active and first_error:
        d = damage.classify_damage(r, epos, r.size, min_offset)
        torn = d.torn_tail and epos >= floor
        return ErrorEvent(seg, epos, item.error, item.header, torn, d.resume, r.size,
                          d.zero_hole and torn, floor)
    resume = damage.find_valid_batch(r, epos + 1, r.size, min_offset)
    return ErrorEvent(seg, epos, item.error, item.header, False, resume, r.size, False)
