"""The ordered segments of one log directory (Kafka's ``LogSegments``).

A :class:`SegmentList` is shared by a :class:`~logstore.storage.log.Log` and its cleaner: the log
appends to its last (active) segment and rolls; retention deletes the oldest sealed ones; the
cleaner swaps cleaned files in for sealed ones. Every change of the list goes through a method
here, under the log's lock, so that readers (which locate batches by offset, under the same lock)
always see a consistent list: ``items`` and ``bases`` are replaced, never half-updated.

Thread-safety: every method expects the caller to hold :attr:`lock` (the log's lock), except
:meth:`sealed_snapshot` and :meth:`current`, which take it.

A read-only opener's list follows the writer (another process, or another object) with
:meth:`SegmentList.follow`: in O(1) while the directory does not change (one ``stat`` of it,
then new batches of the active segment), and by listing the directory when it did (a roll,
retention, a compaction swap, a clean close).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import CorruptLogError, NotALogError, OffsetOutOfRangeError
from ..format.header import BatchHeader
from ..format.names import (
    CLEANED, DELETED, INDEX_SUFFIX, KEYINDEX_SUFFIX, LOG_SUFFIX, SWAP, TIMEINDEX_SUFFIX,
    parse_segment_name,
)
from ..fs import FileSystem
from . import meta
from .segment import Segment

# A directory's mtime changes with every entry created, renamed or removed in it, but in steps of
# the kernel's coarse clock (or of the file system's timestamp granularity, up to 2 s): a change
# in the same step as the last listing would keep the mtime. So an mtime is trusted to announce
# the next change only once it is older than this.
MTIME_TRUST_NS = 2_000_000_000


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
    for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, KEYINDEX_SUFFIX):
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
        self.dir_mtime: Optional[int] = None  # (readers) the directory as last listed
        self.durable_floor = 0  # (readers) the clean-shutdown marker's size for the active one

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
        """(segment index, position, header) of the first batch reaching ``offset``, or None.

        A read-only list whose sealed segment file is gone when first opened (retention since
        the last :meth:`follow`) follows the writer and looks again, once.
        """
        try:
            return self._locate(offset)
        except OffsetOutOfRangeError:
            if self.writable:
                raise
        self.follow()
        if offset < self.start_offset:
            raise OffsetOutOfRangeError(f"offset {offset} was removed by retention (the log "
                                        f"starts at {self.start_offset} now)")
        return self._locate(offset)

    def _locate(self, offset: int) -> Optional[Tuple[int, int, BatchHeader]]:
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

    def describe(self) -> List[Dict[str, object]]:
        """Per segment: base offset, next offset, size in bytes, path, sealed (opens them)."""
        out: List[Dict[str, object]] = []
        for seg in self.items:
            seg.ensure_open()
            out.append({"base_offset": seg.base_offset, "next_offset": seg.next_offset,
                        "size": seg.size, "path": seg.path, "sealed": seg.sealed})
        return out

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
            for path in (seg.path, seg.index_path, seg.timeindex_path,
                         seg.path[: -len(LOG_SUFFIX)] + KEYINDEX_SUFFIX):
                try:
                    fs.replace(path, path + DELETED)
                except FileNotFoundError:
                    pass
        fs.fsync_dir(self.directory)
        for seg in victims:
            for path in (seg.path, seg.index_path, seg.timeindex_path,
                         seg.path[: -len(LOG_SUFFIX)] + KEYINDEX_SUFFIX):
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
        """(read-only lists) Catch up with the writer in another process or object; return the
        next offset this list can read up to.

        While the directory is unchanged since it was last listed (its mtime; see
        :data:`MTIME_TRUST_NS`) only the active segment is read on from where it stopped.
        Otherwise the directory is listed and the list rebuilt from it (:meth:`relist`).
        Raises :class:`~logstore.errors.CorruptLogError` where the active segment's tail is
        damage rather than data not written yet (``Segment.catch_up``).
        """
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            raise NotALogError(f"the log directory {self.directory} no longer exists") from None
        if mtime != self.dir_mtime or not self.items:
            self.relist(mtime)
            if not self.items:
                return 0
        active = self.items[-1]
        active.catch_up(self.durable_floor)
        return active.next_offset

    def relist(self, mtime: int) -> None:
        """(read-only lists) Rebuild the list from the directory listing: segments gone
        (retention) or replaced by another file (compaction: another inode) are marked retired
        (readers relocate by offset) and dropped; a sealed segment is opened lazily, on first
        use; the reader's active segment becomes a sealed one once the writer rolled past it
        (it is complete then: the writer fsyncs it before creating the next file); the last
        one is read as the active segment. Also reads the clean-shutdown marker."""
        listed: Dict[int, int] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                base = parse_segment_name(entry.name)
                if base is not None:
                    listed[base] = entry.inode()
        old = {seg.base_offset: seg for seg in self.items}
        bases = sorted(listed)
        items: List[Segment] = []
        for i, base in enumerate(bases):
            seg = old.pop(base, None)
            last = i == len(bases) - 1
            if seg is not None and ((seg.inode is not None and seg.inode != listed[base])
                                    or (last and seg.sealed)):
                seg.retired = True  # another file now (or, oddly, last and sealed): reopen
                seg = None
            if seg is None:
                seg = Segment.open_sealed(self.directory, base, bases[i + 1] if not last
                                          else base, self.fs, self.index_interval,
                                          self.writable)
                if last:
                    seg.sealed = False
                    seg.open_reader_active()
            elif not last and not seg.sealed:
                seg.become_sealed_reader()  # the writer rolled past it: complete and final
                seg.next_offset = bases[i + 1]
            items.append(seg)
        for seg in old.values():
            seg.retired = True  # deleted by retention
        self.items, self.bases = items, bases
        marker = meta.read_clean_shutdown(self.directory)
        self.durable_floor = (marker["size"] if marker is not None and bases
                              and marker["segment"] == bases[-1] else 0)
        # Trust the mtime only once it is old enough that a later change must differ from it.
        self.dir_mtime = mtime if time.time_ns() - mtime > MTIME_TRUST_NS else None
        missing = meta.missing_last_segment(marker, bases)
        if missing is not None:
            self.dir_mtime = None  # (look again next time: raise until it is restored)
            raise CorruptLogError(missing, self.directory)
