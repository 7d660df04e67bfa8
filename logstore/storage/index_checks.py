"""Plausibility checks of a sealed segment's stored indexes before they are trusted.

A sealed segment's ``.index``/``.timeindex`` were written by a writer that may have crashed or
been a different version; retention and ``offset_for_time`` trust the time index, reads trust
the offset index. These checks (cheap: a sample of entries, one index interval of headers) run
on the first use of a segment; a failure makes the segment rebuild its indexes from the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import CorruptLogError
from ..format.header import HEADER_SIZE, header_problem, parse_header
from .index import OffsetIndex, TimeIndex

if TYPE_CHECKING:  # (segment imports this module)
    from .segment import Segment


def time_index_agrees(seg: "Segment", oi: OffsetIndex, ti: TimeIndex) -> bool:
    """Check the time index against the log: entry i+1 promises that every record before
    it is <= its timestamp, so it must be >= the max timestamp (from its header) of the batch
    that entry i points at. One header read per entry, on first use of the segment."""
    entries = ti.entries
    n = len(entries)
    if n < 2:
        return True
    rels = entries["rel"].tolist()
    tss = entries["ts"].tolist()
    mm = seg.mapped(seg.size) if seg.size and not seg.use_pread else None
    # A sample of entries spread over the segment (all of them for small indexes): this runs
    # on the first use of a segment and must stay cheap (a 64 MiB segment has ~16k entries).
    # A systematically wrong index (zeroed, stale, shifted) fails on any sampled entry.
    if n - 1 <= 64:
        sample = range(n - 1)
    else:
        sample = sorted(set(np.linspace(0, n - 2, 64).astype(int).tolist()))
    for i in sample:
        rel, pos = oi.lookup(rels[i])
        if rel != rels[i] or pos + HEADER_SIZE > seg.size:
            return False
        h = parse_header(mm, pos) if mm is not None else \
            parse_header(seg.read_bytes(pos, HEADER_SIZE), 0)
        if header_problem(h) or h.base_offset != seg.base_offset + rel \
                or tss[i + 1] < h.max_timestamp:
            return False
    return True

def final_time_entry_ok(seg: "Segment", oi: OffsetIndex, ti: TimeIndex) -> bool:
    """The last entry of a sealed segment's time index is its largest timestamp, which
    retention and ``offset_for_time`` trust: it must equal the largest ``max_timestamp``
    of the batches, read from their headers after the previous entry's batch (about one
    index interval of batches; the entries before it are checked by the sample)."""
    entries = ti.entries
    n = len(entries)
    pos, best = 0, 0
    if n >= 2:
        rel_prev = int(entries["rel"][n - 2])
        rel, pos = oi.lookup(rel_prev)
        if rel != rel_prev:
            return False
        best = int(entries["ts"][n - 2])
    try:
        for _pos, h in seg.iter_headers(pos):
            best = max(best, h.max_timestamp)
    except CorruptLogError:
        return False  # the rebuild reports the damage where it is
    return int(entries["ts"][n - 1]) == best
