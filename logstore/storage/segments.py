"""The ordered segments of one log directory (Kafka's ``LogSegments``).

A :class:`SegmentList` is shared by a :class:`~logstore.storage.log.Log` and its cleaner: the log
appends to its last (active) segment and rolls; retention deletes the oldest sealed ones; the
cleaner swaps cleaned files in for sealed ones. Every change of the list goes through a method
here, under the log's lock, so that readers (which locate batches by offset, under the same lock)
always see a consistent list: ``items`` and ``bases`` are replaced, never half-updated.

Thread-safety: every method expects the caller to hold :attr:`lock` (the log's lock), except
:meth:`sealed_snapshot` and :meth:`current`, which take it.
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import List, Optional, Sequence, Tuple

from ..format.header import BatchHeader
from ..format.names import (
    CLEANED, DELETED, INDEX_SUFFIX, LOG_SUFFIX, SWAP, TIMEINDEX_SUFFIX, parse_segment_name,
    segment_name,
)
from ..fs import FileSystem
from .segment import Segment


def list_segments(directory: str) -> List[int]:
    """Base offsets of the segment files in ``directory``, ascending."""
    bases = []
    for name in os.listdir(directory):
        base = parse_segment_name(name)
        if base is not None:
            bases.append(base)
    bases.sort()
    return bases


def finish_swap(fs: FileSystem, swap_path: str) -> None:
    """Rename ``<base>.log.swap`` over ``<base>.log`` and drop its stale index files (they are
    rebuilt on first use of the new file)."""
    log_path = swap_path[: -len(SWAP)]
    fs.replace(swap_path, log_path)
    stem = log_path[: -len(LOG_SUFFIX)]
    for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
        try:
            fs.unlink(stem + suffix)
        except FileNotFoundError:
            pass


class SegmentList:
    """Segments ordered by base offset; the last one is the active segment (if any)."""

    def __init__(self, directory: str, fs: FileSystem, index_interval: int, writable: bool,
                 lock: threading.Lock):
        self.directory = directory
        self.fs = fs
        self.index_interval = index_interval
        self.writable = writable
        self.lock = lock
        self.items: List[Segment] = []
        self.bases: List[int] = []

    # ------------------------------------------------------------------ building
    def open_sealed(self, bases: Sequence[int]) -> None:
        """Append sealed segments for ``bases`` (each one's end is the next one's base; the last
        base is not opened: it is the caller's active segment)."""
        for base, nxt in zip(bases, bases[1:]):
            self.items.append(Segment.open_sealed(self.directory, base, nxt, self.fs,
                                                  self.index_interval, self.writable))
            self.bases.append(base)

    def add(self, seg: Segment) -> None:
        """Append ``seg`` as the new active segment (a roll, or the last one at open)."""
        self.items.append(seg)
        self.bases.append(seg.base_offset)

    def new_segment(self, base_offset: int) -> Segment:
        """A Segment object (files not opened) for ``base_offset`` in this directory."""
        return Segment(self.directory, base_offset, self.fs, self.index_interval, self.writable)

    # ------------------------------------------------------------------ queries
    @property
    def active(self) -> Segment:
        return self.items[-1]

    @property
    def start_offset(self) -> int:
        return self.bases[0] if self.bases else 0

    def locate(self, offset: int) -> Optional[Tuple[int, int, BatchHeader]]:
        """(segment index, position, header) of the first batch reaching ``offset``, or None."""
        i = bisect.bisect_right(self.bases, offset) - 1
        if i < 0:
            i = 0
        items = self.items
        while i < len(items):
            found = items[i].find(offset)
            if found is not None:
                return i, found[0], found[1]
            i += 1
        return None

    def sealed_snapshot(self) -> List[Segment]:
        """The sealed segments now (takes the lock)."""
        with self.lock:
            return list(self.items[:-1])

    def current(self, segments: Sequence[Segment]) -> List[Segment]:
        """``segments`` with each replaced by the object now in the list for its base offset
        (the cleaner swapped some in); takes the lock."""
        with self.lock:
            by_base = {s.base_offset: s for s in self.items}
        return [by_base.get(s.base_offset, s) for s in segments]

    # ------------------------------------------------------------------ changes
    def delete(self, victims: Sequence[Segment]) -> None:
        """Take segments out of the list, then rename their files ``.deleted`` and unlink them.

        Renaming the ``.log`` first makes the removal atomic for a crash: at open, a missing
        ``.log`` means the segment is gone, and leftover ``.deleted``/index files are swept.
        Raises ``OSError`` (the caller wraps it) with the list already updated.
        """
        fs = self.fs
        gone = {id(v) for v in victims}
        self.items = [seg for seg in self.items if id(seg) not in gone]
        self.bases = [seg.base_offset for seg in self.items]
        for seg in victims:
            seg.retired = True
            for path in (seg.path, seg.index_path, seg.timeindex_path):
                try:
                    fs.replace(path, path + DELETED)
                except FileNotFoundError:
                    pass
        fs.fsync_dir(self.directory)
        for seg in victims:
            for path in (seg.path, seg.index_path, seg.timeindex_path):
                try:
                    fs.unlink(path + DELETED)
                except FileNotFoundError:
                    pass
            for path in (seg.path + SWAP, seg.path + CLEANED):
                try:  # an unfinished compaction's copy must not bring the segment back
                    fs.unlink(path)
                except FileNotFoundError:
                    pass

    def swap_in(self, old: Sequence[Segment], swaps: Sequence[str]) -> None:
        """Rename each ``.swap`` file over its original and put a fresh sealed Segment object in
        place of each of ``old`` (Kafka's ``replaceSegments``); readers of the old objects
        relocate by offset. The caller has made the swap committed and fsyncs the directory."""
        for seg, swap in zip(old, swaps):
            finish_swap(self.fs, swap)
            new = Segment.open_sealed(self.directory, seg.base_offset, seg.next_offset, self.fs,
                                      self.index_interval, self.writable)
            for s in self.items:
                if s.base_offset == seg.base_offset:
                    s.retired = True
            # (by base offset: the list may hold another object for the segment by now)
            self.items = [new if s.base_offset == seg.base_offset else s for s in self.items]
            seg.retired = True

    # ------------------------------------------------------------------ following a writer
    def follow(self) -> int:
        """(read-only lists) Catch up with the writer in another process or object: forget
        segments its retention deleted, walk new whole, CRC-valid batches of the active segment
        and follow its rolls. Returns the next offset this list can read up to."""
        if not self.items:
            bases = list_segments(self.directory)
            if not bases:
                return 0
            self.open_sealed(bases)
            active = self.new_segment(bases[-1])
            active.open_reader_active()
            self.add(active)
        if len(self.items) > 1 and not os.path.exists(self.items[0].path):
            # The writer's retention removed old segments: forget them.
            on_disk = set(list_segments(self.directory))
            keep = [seg for seg in self.items[:-1] if seg.base_offset in on_disk]
            for seg in self.items[:-1]:
                if seg.base_offset not in on_disk:
                    seg.retired = True
            self.items = keep + [self.items[-1]]
            self.bases = [seg.base_offset for seg in self.items]
        while True:
            active = self.items[-1]
            active.catch_up()
            successor = os.path.join(self.directory, segment_name(active.next_offset))
            if active.next_offset == active.base_offset or not os.path.exists(successor):
                break
            # The writer sealed this segment (it fsyncs it before creating the next one).
            active.catch_up()
            active.become_sealed_reader()
            nxt = self.new_segment(active.next_offset)
            nxt.open_reader_active()
            self.add(nxt)
        return self.items[-1].next_offset
