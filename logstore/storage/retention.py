"""Retention: which sealed segments a pass may delete.

Retention deletes whole sealed segments, oldest first, never the active one, and stops at the
first segment it must keep (so the log stays a contiguous range of offsets). A segment may go
when its largest record timestamp is older than ``retention_ms``, when the log is bigger than
``retention_bytes``, or when every offset in it is below ``keep_from`` (consumed: interest
retention, work queues); never when it holds an offset at or above ``protect_from``.

Time retention uses each segment's largest timestamp (as Kafka does): a segment holding a record
with a far-future timestamp is kept until that time, and so is every later segment.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from ..config import LogConfig
from ..util import now_ms, storage_errors
from .segment import Segment
from .segments import SegmentList


def segments_to_delete(sealed: Sequence[Segment], active_size: int, config: LogConfig,
                       now_ms: int, keep_from: Optional[int] = None,
                       protect_from: Optional[int] = None) -> List[Segment]:
    """The oldest of ``sealed`` that a retention pass at ``now_ms`` deletes (see the module
    docstring). Opens the segments it looks at (their sizes and time indexes)."""
    for seg in sealed:
        seg.ensure_open()
    total = sum(seg.size for seg in sealed) + active_size
    victims: List[Segment] = []
    for seg in sealed:
        expired = False
        if config.retention_ms is not None:
            seg.time_index()  # loads the segment's max timestamp
            expired = seg.max_timestamp < now_ms - config.retention_ms
        too_big = config.retention_bytes is not None and total > config.retention_bytes
        consumed = keep_from is not None and seg.next_offset <= keep_from
        protected = protect_from is not None and seg.next_offset > protect_from
        if protected or not (expired or too_big or consumed):
            break
        victims.append(seg)
        total -= seg.size
    return victims


def delete_expired(segs: SegmentList, config: LogConfig, keep_from: Optional[int],
                   protect_from: Optional[int],
                   announce: Optional[Callable[[], None]] = None) -> List[Segment]:
    """(log lock held) Delete what :func:`segments_to_delete` allows now; returns the deleted
    segments. ``announce`` (a shared log's) is called before the first file is touched and
    after the last: a pass killed half-way has already told the other writers to list the
    directory again."""
    removed = segments_to_delete(segs.items[:-1], segs.active.size, config, now_ms(),
                                 keep_from, protect_from)
    if removed:
        if announce is not None:
            announce()
        with storage_errors(f"deleting segments of {segs.directory}"):
            segs.delete(removed)
        if announce is not None:
            announce()
    return removed
