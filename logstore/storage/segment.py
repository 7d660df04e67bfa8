"""One segment: a ``.log`` file of batches plus its ``.index`` and ``.timeindex``.

A segment knows how to append framed batches at its end (writer), find the batch holding an
offset (sparse index + short forward walk of 64-byte headers), decode batches, and scan itself
batch by batch with full validation (recovery, verify, dump).

Reads go through an ``mmap`` of the file, remapped lazily as the segment grows. The one exception
is a read-only opener's view of the *active* segment, which uses ``os.pread``: the writer process
may truncate a torn tail there during its own recovery, and touching a mapped page past the new
end of file would kill the reader with SIGBUS. Mappings are never closed explicitly: readers may
still hold memoryviews into them; dropping the reference lets the kernel unmap when the last user
is done (and on Linux an unlinked file stays readable while mapped).

Writing the active segment's file (pwrite, the write mapping of ``fsync="never"``, the write
buffer, preallocation, writeback hints) is :class:`~logstore.storage.active_file.ActiveFile`'s
job: a segment being written holds one as :attr:`Segment.writer`.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Callable, Iterator, Optional, Tuple

from ..errors import CorruptLogError, OffsetOutOfRangeError
from ..format.decode import DecodedBatch, decode
from ..format.extract import extract_record, find_batch, find_record
from ..format.header import (
    HEADER_SIZE, MAGIC, MAX_TIMESTAMP, WALK, BatchHeader, check_header, crc_ok,
    parse_header,
)
from ..fs import FileSystem
from ..record import Record
from ..format.names import INDEX_SUFFIX, TIMEINDEX_SUFFIX, segment_name
from .active_file import ActiveFile
from .tail import (
    RecoveryReport, inspect_active, reader_stop_problem, refusal, whole_batches,
)
from .index import OffsetIndex, TimeIndex
from . import scanning
from .scanning import MAX_RELATIVE_OFFSET, ScannedBatch, ScanResult  # noqa: F401 (re-exported)
from .index_checks import final_time_entry_ok, time_index_agrees
from .filecache import FILE_CACHE, SegmentReplaced


class Segment:
    """A segment file and its indexes. Not thread-safe: the owning Log serialises access."""

    def __init__(
        self,
        directory: str,
        base_offset: int,
        fs: FileSystem,
        index_interval: int,
        writable: bool,
    ):
        self.directory = directory
        self.base_offset = base_offset
        self.fs = fs
        self.index_interval = index_interval
        self.writable = writable
        self.path = os.path.join(directory, segment_name(base_offset))
        self.index_path = os.path.join(directory, segment_name(base_offset, INDEX_SUFFIX))
        self.timeindex_path = os.path.join(directory, segment_name(base_offset, TIMEINDEX_SUFFIX))
        self._fd: Optional[int] = None  # a reader's pread descriptor (the writer's: .writer)
        self.fd_evicted = False  # the file cache closed _fd: reopened at the next read
        self.owner_lock: Any = None  # the log's lock (set by its SegmentList; file cache)
        # The log's poisoning of a failed fsync (set by its SegmentList): the file cache's
        # fsync before it closes an active segment's descriptor reports there.
        self.sync_failed: Optional[Callable[[BaseException], None]] = None
        self.size = 0  # bytes of whole, valid batches (including any not yet written: pending)
        self.writer: Optional[ActiveFile] = None  # the active segment's writer (writable logs)
        # Bytes of this segment known to be on stable storage; every batch written records the
        # value current at its writing (header field synced_before), which lets recovery tell
        # damage in never-synced bytes (a torn tail) from damage in synced ones (corruption).
        self.synced_size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.first_timestamp: Optional[int] = None
        self.sealed = False
        self.retired = False  # replaced (compaction) or deleted (retention): readers relocate
        self.inode: Optional[int] = None  # (readers) the file opened: another one replaced it
        self.stop_checked: Optional[Tuple[int, int]] = None  # (reader) catch_up's last verdict
        self.use_pread = False
        self._map: Optional[mmap.mmap] = None
        self._offset_index: Optional[OffsetIndex] = None
        self._time_index: Optional[TimeIndex] = None
        self._last_index_pos = 0
        self._index_checked = False

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def create(cls, directory: str, base_offset: int, fs: FileSystem, index_interval: int,
               index_capacity: int) -> "Segment":
        """Create a new, empty active segment (the caller fsyncs the directory)."""
        seg = cls(directory, base_offset, fs, index_interval, writable=True)
        seg.writer = seg.new_writer(fs.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL))
        seg._offset_index = OffsetIndex.create(seg.index_path, index_capacity, fs)
        seg._time_index = TimeIndex.create(seg.timeindex_path, index_capacity, fs)
        seg._index_checked = True
        return seg

    @classmethod
    def open_sealed(cls, directory: str, base_offset: int, next_offset: int, fs: FileSystem,
                    index_interval: int, writable: bool) -> "Segment":
        """A sealed segment: files are opened lazily, on first read."""
        seg = cls(directory, base_offset, fs, index_interval, writable)
        seg.sealed = True
        seg.next_offset = next_offset
        seg.size = -1  # unknown until first use
        return seg

    def ensure_open(self) -> None:
        """(Sealed segments; a no-op otherwise) First use of a sealed segment: open it, take its size and map it in one step.

        Doing both on one file descriptor means a segment swapped by compaction (same name, new
        file) is seen either entirely old or entirely new by this object, never mixed.
        """
        if self.size < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise OffsetOutOfRangeError(
                    f"segment {self.path} no longer exists (removed by retention)") from None
            try:
                st = os.fstat(fd)
                size, self.inode = st.st_size, st.st_ino
                if size:
                    self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            self.size = size
            self.note_files()

    # ------------------------------------------------------------------ the file cache
    @property
    def fd(self) -> Optional[int]:
        """The descriptor reads use: the writer's (reopened on demand), a reader's pread one
        (reopened once the file cache closed it), or None (a sealed segment: mapped by path)."""
        w = self.writer
        if w is not None:
            return w.fd
        if self._fd is None and self.fd_evicted:
            fd = self._reopen()
            self._fd, self.fd_evicted = fd, False
            self.note_files()
        return self._fd

    @fd.setter
    def fd(self, fd: Optional[int]) -> None:
        self._fd, self.fd_evicted = fd, False

    def _reopen(self) -> int:
        """A read-only descriptor of the file this object knew (reopened by path after the
        file cache closed it), or SegmentReplaced (retired: compaction or retention replaced
        or removed it meanwhile; readers find the offset again by the directory)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self.retired = True
            raise SegmentReplaced(f"segment {self.path} was removed since it was opened") \
                from None
        if self.inode is not None and os.fstat(fd).st_ino != self.inode:
            os.close(fd)
            self.retired = True
            raise SegmentReplaced(f"segment {self.path} was replaced since it was opened")
        return fd

    def open_files(self) -> int:
        """Descriptors this segment holds (each mapping keeps one of its own)."""
        n = (self._fd is not None) + (self._map is not None)
        n += self.writer.open_files if self.writer is not None else 0
        return n + sum(1 for i in (self._offset_index, self._time_index)
                       if i is not None and i.mapped)

    def note_files(self) -> None:
        """Tell the file cache what this segment holds now (it may close others')."""
        FILE_CACHE.note(self, self.open_files(), self.owner_lock)

    def new_writer(self, fd: int) -> ActiveFile:
        """The writer of this (active) segment on ``fd``; its reopens are told to the cache."""
        st = os.fstat(fd)
        self.inode = st.st_ino  # (a reopen by path checks it is still this file)
        w = ActiveFile(fd, self.fs, self.path, st.st_size)
        w.on_open = self.note_files
        return w

    def close_idle(self) -> int:
        """(the file cache: a sealed segment without its log's lock, an active one under it)
        Let go of what is reopened on demand (see ``filecache``); the descriptors still held."""
        self._map = None  # (readers take it into a local first: a view keeps it alive)
        if self.sealed:
            if self._offset_index is not None and self._offset_index.mapped:
                self._offset_index = None
            if self._time_index is not None and self._time_index.mapped:
                self._time_index = None
            return self.open_files()
        for index in (self._offset_index, self._time_index):
            if index is not None:
                index.detach()  # entries kept in memory (not a shared log's)
        w = self.writer
        if w is not None:
            if w.release_idle(self.size, self.synced_size < self.size, self.sync_failed):
                self.synced_size = self.size  # (true: later batches record it)
        elif self.use_pread and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            self.fd_evicted = True
        return self.open_files()

    def open_active(self, size: int, next_offset: int, max_timestamp: int,
                    index_capacity: int, trust_indexes: bool) -> None:
        """Open this (writable) segment as the active one, ``size`` bytes valid."""
        fd = self.fs.open(self.path, os.O_RDWR)
        self.size = size
        self.writer = self.new_writer(fd)
        self.synced_size = size  # a clean close fsynced everything
        self.next_offset = next_offset
        self.max_timestamp = max_timestamp
        self.sealed = False
        if size:
            h = self.header_at(0)
            self.first_timestamp = h.base_timestamp
        off_entries = OffsetIndex.load(self.index_path) if trust_indexes else None
        time_entries = TimeIndex.load(self.timeindex_path) if trust_indexes else None
        rel_end = next_offset - self.base_offset
        ok = off_entries is not None and time_entries is not None
        if ok:
            oi = OffsetIndex.in_memory(off_entries)
            ti = TimeIndex.in_memory(time_entries)
            ok = oi.valid_prefix(rel_end, size) == oi.n and ti.valid_prefix(rel_end) == ti.n
            ok = ok and time_index_agrees(self, oi, ti)
        if ok:
            self._offset_index = OffsetIndex.create(self.index_path, index_capacity, self.fs,
                                                    off_entries)
            self._time_index = TimeIndex.create(self.timeindex_path, index_capacity, self.fs,
                                                time_entries)
            self._last_index_pos = self._offset_index.lookup(rel_end)[1]
            self._index_checked = True
        else:
            self.rebuild_indexes(self.scan(0), index_capacity)
        self.note_files()

    def recover(self, index_capacity: int, force_truncate: bool = False,
                durable_floor: int = 0, durable_end: Optional[int] = None) -> RecoveryReport:
        """Recover this (writable) active segment after an unclean shutdown: scan it, cut a torn
        or never-written tail, make the rest durable, rebuild the indexes (Kafka's
        ``LogSegment.recover``). Returns the report.

        Raises :class:`CorruptLogError` (changing nothing) for data damage (``tail.refusal``:
        valid data follows the damage, or data ends below ``durable_floor``/``durable_end``,
        a clean-shutdown marker's size and end offset) unless ``force_truncate`` is set.
        """
        self.writer = self.new_writer(self.fs.open(self.path, os.O_RDWR))
        scan, report = inspect_active(self, durable_floor, durable_end)
        refused = refusal(report, self.directory)
        if refused is not None and not force_truncate:
            raise CorruptLogError(refused, self.path, report.valid_bytes)
        self.size = scan.valid_end
        if report.truncated_bytes:
            self.truncate_to(scan.valid_end)
        else:
            # What survived a process crash may still sit unsynced in the page cache: make it
            # durable before the log calls it durable (and lets readers see it).
            self.sync()
        self.writer.allocated = scan.valid_end
        self.next_offset = scan.next_offset if scan.batches else self.base_offset
        self.sealed = False
        if scan.batches:
            self.first_timestamp = self.header_at(0).base_timestamp
        self.rebuild_indexes(scan, index_capacity)
        report.indexes_rebuilt = True
        self.note_files()
        return report

    # ------------------------------------------------------------------ shared logs
    def shared_state(self) -> Tuple[int, int, int, int, int, int]:
        """(active segment of a shared log) What other writers adopt after this one appended:
        ``(size, next_offset, index entries, last indexed position, max timestamp, first
        timestamp or -1)``."""
        first = -1 if self.first_timestamp is None else self.first_timestamp
        return (self.size, self.next_offset, self._offset_index.n, self._last_index_pos,
                self.max_timestamp, first)

    def adopt(self, size: int, next_offset: int, index_n: int, last_index_pos: int,
              max_ts: int, first_ts: int) -> None:
        """(active segment of a shared log) Take what other writers appended: the batches are
        in the file and their index entries in the shared index mappings already."""
        self.size = size
        self.next_offset = next_offset
        self._offset_index.set_count(index_n)
        self._time_index.set_count(index_n)
        self._last_index_pos = last_index_pos
        self.max_timestamp = max_ts
        self.first_timestamp = None if first_ts < 0 else first_ts

    def open_shared_active(self, state: Tuple[int, int, int, int, int, int]) -> None:
        """Open this segment as the active one of a shared log that other writers are writing
        (no recovery: the tail they share says how far its batches go)."""
        self.writer = self.new_writer(self.fs.open(self.path, os.O_RDWR))
        self._offset_index = OffsetIndex.map_shared(self.index_path, state[2])
        self._time_index = TimeIndex.map_shared(self.timeindex_path, state[2])
        self._index_checked = True
        self.sealed = False
        self.adopt(*state)
        self.note_files()

    def rebuild_sealed_indexes(self) -> None:
        """Rebuild and save this sealed segment's indexes from a strict scan (``logstore
        recover``); :class:`CorruptLogError` if the segment itself is damaged."""
        self.ensure_open()
        self.rebuild_indexes(self.scan(0, strict=True), None)

    def open_reader_active(self) -> None:
        """Read-only view of the active segment: pread, in-memory index built while walking."""
        self.use_pread = True
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.inode = os.fstat(self._fd).st_ino  # type: ignore[arg-type]
        self.note_files()
        self.size = 0
        self.next_offset = self.base_offset
        self._offset_index = OffsetIndex.in_memory()
        self._time_index = TimeIndex.in_memory()
        self._index_checked = True

    def catch_up(self, durable_floor: int = 0) -> None:
        """(A reader's active segment) Take in the whole, CRC-valid batches another writer
        appended since the last call; stop at anything not (yet) whole and valid: a batch being
        written, the writer's preallocated tail, or a torn tail it will cut. Raises
        :class:`CorruptLogError` where the stop is damage (``tail.reader_stop_problem``;
        ``durable_floor``: the size a clean-shutdown marker gives this segment)."""
        file_size = os.fstat(self.fd).st_size
        pos, raw = whole_batches(self.fd, self.size, file_size, self._take_batch)
        self.size = pos
        if pos < durable_floor or (raw is not None and self.stop_checked != (pos, file_size)):
            problem = reader_stop_problem(self.fd, pos, file_size, self.next_offset,
                                          durable_floor, raw)
            if problem is not None:
                raise CorruptLogError(problem, self.path, pos)
            self.stop_checked = (pos, file_size)

    def _take_batch(self, pos: int, h: BatchHeader) -> None:
        self.note_batch(pos, h.base_offset, h.max_timestamp)
        self.next_offset = h.next_offset
        if self.first_timestamp is None:
            self.first_timestamp = h.base_timestamp

    def become_sealed_reader(self) -> None:
        """(A reader's active segment) The writer sealed this segment: read it as a sealed one
        from now on (mapped on next use, indexes from its files)."""
        self.close()
        self.use_pread = False
        self.sealed = True
        self.size = -1
        self._offset_index = self._time_index = None

    def close_mappings(self) -> None:
        """Drop this segment's mappings without touching its descriptor (a simulated crash has
        taken the file descriptors away already)."""
        self._map = None
        if self.writer is not None:
            self.writer.drop_write_map()

    def close(self) -> None:
        """Close the file and drop the mappings (readers holding views keep them alive)."""
        self._offset_index = self._time_index = None  # unmap index files too
        self._map = None
        FILE_CACHE.forget(self)
        w, self.writer = self.writer, None
        if w is not None:
            w.close()
        self.fd_evicted = False
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self.use_pread:
                os.close(fd)
            else:
                self.fs.close(fd)

    # ------------------------------------------------------------------ raw access
    def file_size(self) -> int:
        fd = self.fd
        if fd is not None:
            return os.fstat(fd).st_size
        return os.path.getsize(self.path)

    def mapped(self, end: int) -> mmap.mmap:
        """A mapping covering at least ``[0, end)`` (``end`` <= valid size). Into a local
        first: the file cache may drop ``_map`` meanwhile (a view of it keeps it alive)."""
        m = self._map
        if m is None or len(m) < end:
            self.ensure_open()
            written = self.size - len(self.pending) if self.writer is not None else self.size
            if end > written:
                self.flush_pending()  # readers must see buffered appends: put them in the file
                written = self.size
            length = max(end, written)
            own = self.fd
            if own is not None:
                m = mmap.mmap(own, length, access=mmap.ACCESS_READ)
            else:
                fd = self._reopen()
                try:
                    m = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
                finally:
                    os.close(fd)
            self._map = m
            self.note_files()
        return m

    def read_bytes(self, pos: int, n: int):
        """Bytes ``[pos, pos+n)``: a zero-copy memoryview of the mapping, or pread bytes."""
        if self.use_pread:
            data = os.pread(self.fd, n, pos)  # type: ignore[arg-type]
            if len(data) < n:
                raise CorruptLogError("segment is shorter than expected", self.path, pos)
            return data
        return memoryview(self.mapped(pos + n))[pos : pos + n]

    def header_at(self, pos: int) -> BatchHeader:
        """The validated header of the batch at ``pos`` (CRC not checked)."""
        if pos + HEADER_SIZE > self.size:
            raise CorruptLogError("batch header runs past the end of the segment", self.path, pos)
        if self.use_pread:
            h = parse_header(self.read_bytes(pos, HEADER_SIZE), 0)
        else:
            h = parse_header(self.mapped(pos + HEADER_SIZE), pos)
        check_header(h, self.path, pos)
        if pos + h.length > self.size:
            raise CorruptLogError("batch runs past the end of the segment", self.path, pos)
        return h

    def release_pages(self) -> None:
        """Drop this segment's mapped pages from the process's RSS (they stay in the page cache):
        for a pass that has read the whole segment once (compaction)."""
        mapping = self._map
        if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def batch_at(self, pos: int, h: Optional[BatchHeader] = None,
                 lazy: bool = False) -> DecodedBatch:
        """Decode (CRC-checked) the batch at ``pos``; ``h`` must come from :meth:`header_at`.
        ``lazy``: parse its columns at first use (see :class:`DecodedBatch`)."""
        if h is None:
            h = self.header_at(pos)  # validates the header and its bounds
        return decode(self.read_bytes(pos, h.length), 0, h, self.path, pos, True, lazy)

    # ------------------------------------------------------------------ indexes
    def offset_index(self) -> OffsetIndex:
        index = self._offset_index  # (into a local: the file cache may drop it meanwhile)
        while index is None:
            self._load_indexes()
            index = self._offset_index
        return index

    def time_index(self) -> TimeIndex:
        index = self._time_index
        while index is None:
            self._load_indexes()
            index = self._time_index
        return index

    def _load_indexes(self) -> None:
        """Load a sealed segment's indexes; rebuild them if missing or implausible."""
        self.ensure_open()
        rel_end = self.next_offset - self.base_offset
        oi = OffsetIndex.map_readonly(self.index_path)
        ti = TimeIndex.map_readonly(self.timeindex_path)
        good = (
            oi is not None
            and ti is not None
            and oi.valid_prefix(rel_end, self.size) == oi.n
            and ti.valid_prefix(rel_end) == ti.n
            and ti.n > 0
            and ti.last()[1] == rel_end
        )
        if good:
            good = time_index_agrees(self, oi, ti) and final_time_entry_ok(self, oi, ti)
        if good:
            self._offset_index, self._time_index = oi, ti
            self.max_timestamp = ti.last()[0]
            self.note_files()
            return
        self._rebuild_sealed()

    def _rebuild_sealed(self) -> None:
        """Rebuild a sealed segment's indexes from its valid batches. If the segment is damaged,
        only the part before the damage is indexed (so it stays readable), the damaged index is
        not saved, and the segment's max timestamp is taken as unknown (never skipped by time:
        reading into the damage raises CorruptLogError)."""
        scan = self.scan(0)
        self.rebuild_indexes(scan, None, persist=scan.error is None)
        if scan.error is not None:
            self.max_timestamp = MAX_TIMESTAMP

    def rebuild_indexes(self, scan: ScanResult, capacity: Optional[int],
                        persist: bool = True) -> None:
        """Recreate both indexes from a scan. Writers persist them; read-only opens keep them in RAM.

        ``capacity`` given: this is the active segment, indexes are preallocated for appends.
        """
        if capacity is not None:
            self._offset_index = OffsetIndex.create(self.index_path, capacity, self.fs)
            self._time_index = TimeIndex.create(self.timeindex_path, capacity, self.fs)
        else:
            self._offset_index = OffsetIndex.in_memory()
            self._time_index = TimeIndex.in_memory()
        self._last_index_pos = 0
        self.max_timestamp = -1
        for b in scan.batches:
            self.note_batch(b.position, b.base_offset, b.max_timestamp)
        if self.sealed:
            # A damaged segment's later timestamps are unknown: promise nothing about them.
            final_ts = max(self.max_timestamp, 0) if scan.error is None else MAX_TIMESTAMP
            self._time_index.append(final_ts, self.next_offset - self.base_offset)
            if self.writable and persist:  # save the rebuilt hints atomically; readers never write
                try:
                    self._offset_index.write_file(self.index_path, self.fs)
                    self._time_index.write_file(self.timeindex_path, self.fs)
                except OSError:
                    pass  # a hint we could not save is rebuilt again next time
        self._index_checked = True

    def note_batch(self, pos: int, base_offset: int, max_ts: int) -> None:
        """Add index entries for a batch written/found at ``pos`` (same rule on write and rebuild)."""
        if pos - self._last_index_pos >= self.index_interval:
            rel = base_offset - self.base_offset
            self._offset_index.append(rel, pos)
            self._time_index.append(self.max_timestamp, rel)
            self._last_index_pos = pos
        if max_ts > self.max_timestamp:
            self.max_timestamp = max_ts

    # ------------------------------------------------------------------ lookup
    def find(self, offset: int) -> Optional[Tuple[int, BatchHeader]]:
        """(position, header) of the first batch whose offsets reach ``offset``, or None."""
        self.ensure_open()
        index = self.offset_index()
        rel_hint, pos = index.lookup(offset - self.base_offset)
        if pos:
            # Spot-check the hint: the entry must point at the start of the batch it names.
            ok = pos + HEADER_SIZE <= self.size
            if ok and not self.use_pread:
                magic, length, base, _ = WALK.unpack_from(self.mapped(pos + HEADER_SIZE), pos)
                ok = magic == MAGIC and base == self.base_offset + rel_hint
            elif ok:
                try:
                    ok = self.header_at(pos).base_offset == self.base_offset + rel_hint
                except CorruptLogError:
                    ok = False
            if not ok:
                self._index_broken()  # the hint is wrong: rebuild it from the log
                pos = 0
        return self.walk_to(offset, pos)

    def quick_get(self, offset: int) -> Optional[Record]:
        """``get``'s common route: the record at ``offset``, or None ("take the general
        route": :meth:`find`, which handles and reports every case). A loaded index whose hint
        checks out, then :func:`~logstore.format.extract.find_record` over the mapping (a
        reader's pread-only active segment: :meth:`quick_locate`)."""
        oi = self._offset_index
        size = self.size
        if oi is None or size <= 0 or offset >= self.next_offset:
            return None
        if self.use_pread or self.writer is not None and self.writer.pending:
            found = self.quick_locate(offset)
            return None if found is None else extract_record(found[0], found[2], offset,
                                                              self.path, found[3], found[1])
        mm = self._map  # (into a local: the file cache may drop it)
        if mm is None or len(mm) < size:
            mm = self.mapped(size)
        rel, pos = oi.lookup(offset - self.base_offset)
        return find_record(mm, pos, size, self.base_offset + rel, offset, self.path)

    def quick_locate(self, offset: int) -> Optional[Tuple[Any, int, tuple, int]]:
        """``get``'s common route to the batch holding ``offset``: ``(buf, at, header,
        position)``, its bytes being ``buf[at : at + header[2]]`` (the mapping, or bytes read
        with pread) and ``header`` the plain tuple of its fields, or None: "ask :meth:`find`".

        The common route is a loaded index whose hint checks out and intact, dense,
        uncompressed batches from the hint to the target (:func:`find_batch`: four header
        fields per batch stepped over, in the mapping, or in one pread of an index interval
        for a reader's active segment), then the target's full header check. Checking its
        bytes is the caller's job (:func:`extract_record`, :func:`extract_records`). Anything
        else (write buffer, a hint that does not match, a gap, compression, any odd header)
        returns None, and the caller takes the general path, which handles and reports every
        case. Both give the same batch for the same bytes.
        """
        oi = self._offset_index
        size = self.size
        writer = self.writer
        if oi is None or size <= 0 or offset >= self.next_offset or (
                writer is not None and writer.pending):
            return None
        rel, pos = oi.lookup(offset - self.base_offset)
        expect = self.base_offset + rel
        if not self.use_pread:
            mm = self._map  # (into a local: the file cache may drop it)
            if mm is None or len(mm) < size:
                mm = self.mapped(size)
            found = find_batch(mm, pos, size, expect, offset)
            return None if found is None else (mm, found[0], found[1], found[0])
        # Every batch between two index entries starts within an index interval of the first.
        fd = self.fd
        raw = os.pread(fd, min(size, pos + self.index_interval + HEADER_SIZE) - pos, pos)
        found = find_batch(raw, 0, size - pos, expect, offset)
        if found is None:
            return None
        at, h = found
        data = os.pread(fd, h[2], pos + at)
        return (data, 0, h, pos + at) if len(data) == h[2] else None

    def walk_to(self, offset: int, pos: int) -> Optional[Tuple[int, BatchHeader]]:
        """Walk batch headers from ``pos`` to the batch reaching ``offset``.

        Reads only the four fields it needs per step; anything odd falls back to the fully
        validating :meth:`header_at`, which raises the precise error. With a write buffer, the
        written part is walked first: the buffer is written out only if the target is in it (so
        reads of older records keep working while the disk is full).
        """
        if self.writer is not None and self.writer.pending:
            written = self.size - len(self.writer.pending)
            if pos < written:
                found = self._walk(offset, pos, written)
                if found is not None:
                    return found
                pos = written
            self.flush_pending()
        return self._walk(offset, pos, self.size)

    def _walk(self, offset: int, pos: int, size: int) -> Optional[Tuple[int, BatchHeader]]:
        if self.use_pread:
            while pos < size:
                h = self.header_at(pos)
                if h.next_offset > offset:
                    return pos, h
                pos += h.length
            return None
        if pos + HEADER_SIZE > size:
            return None if pos >= size else (pos, self.header_at(pos))  # (the latter raises)
        mm = self.mapped(size)
        walk = WALK.unpack_from
        magic_ok = MAGIC
        # Tight loop: only magic, length and offsets are read. The batch finally chosen is fully
        # validated (header_at, then its CRC when decoded). When a header on the way looks odd
        # (bad magic or length, offsets not continuing the previous batch) the batches around it
        # are CRC-checked so that damage is reported at the batch that is really damaged.
        limit = size - HEADER_SIZE
        prev_pos = -1
        expect = -1
        while True:
            magic, length, base, last_delta = walk(mm, pos)
            odd = magic != magic_ok or length < HEADER_SIZE or length & 7 or pos + length > size
            if odd or (expect >= 0 and base != expect):
                self._check_walked(prev_pos)
                if odd:
                    return pos, self.header_at(pos)  # raises the precise error
                if base < expect:
                    self._check_walked(pos)
                    raise CorruptLogError(f"batch base offset {base} goes back (expected "
                                          f">= {expect})", self.path, pos)
                self._check_walked(pos)  # a gap: fine only if this batch is intact
            if base + last_delta >= offset:
                return pos, self.header_at(pos)
            prev_pos, expect = pos, base + last_delta + 1
            pos += length
            if pos > limit:
                if pos >= size:
                    return None
                self._check_walked(prev_pos)
                return pos, self.header_at(pos)  # a truncated header: raises

    def _check_walked(self, pos: int) -> None:
        """Raise CorruptLogError if the batch at ``pos`` (if any) fails its CRC."""
        if pos < 0:
            return
        h = self.header_at(pos)
        if not crc_ok(self.mapped(pos + h.length), pos, h):
            raise CorruptLogError("CRC32C mismatch", self.path, pos)

    def _index_broken(self) -> None:
        if self.sealed and not self.use_pread:
            self._rebuild_sealed()
            return
        scan = self.scan(0)
        capacity = None if (self.sealed or not self.writable) else max(
            16, self._offset_index.n * 2 + 16)
        if self.use_pread:
            capacity = None
        self.rebuild_indexes(scan, capacity)

    def position_for_time(self, ts: int) -> int:
        """A position from which scanning finds the first record with timestamp >= ``ts``."""
        rel = self.time_index().start_for(ts)
        if rel <= 0:
            return 0
        found = self.find(self.base_offset + rel)
        return found[0] if found else self.size

    def iter_headers(self, pos: int, end: Optional[int] = None) -> Iterator[Tuple[int, BatchHeader]]:
        end = self.size if end is None else end
        while pos < end:
            h = self.header_at(pos)
            yield pos, h
            pos += h.length

    # ------------------------------------------------------------------ scanning
    def scan(self, start: int = 0, strict: bool = False, end: Optional[int] = None,
             prev_next: Optional[int] = None) -> ScanResult:
        """Validate batches from ``start`` up to the file's end (or ``end``): see
        :func:`~logstore.storage.scanning.scan`."""
        return scanning.scan(self, start, strict, end, prev_next)

    def scan_view(self, end: int) -> mmap.mmap:
        """A fresh read-only mapping of the file's first ``end`` bytes (scans, damage rules)."""
        return scanning.scan_view(self, end)

    # ------------------------------------------------------------------ writing
    def append(self, data, base_offset: int, next_offset: int, max_ts: int, first_ts: int) -> None:
        """Write a framed batch at the end (through :attr:`writer`, see
        :mod:`~logstore.storage.active_file`). On failure the file is cut back and StorageError
        raised; this segment's state is unchanged."""
        pos = self.size
        self.writer.write(data, pos)
        self.size = pos + len(data)
        self.next_offset = next_offset
        if self.first_timestamp is None:
            self.first_timestamp = first_ts
        # Index entries and writeback hints are due only every index_interval bytes (or for a
        # new maximum timestamp): skip the call otherwise, this runs once per append.
        if pos - self._last_index_pos >= self.index_interval or max_ts > self.max_timestamp:
            self.note_batch(pos, base_offset, max_ts)
            writer = self.writer
            if writer.writeback_bytes and pos - writer.writeback_from >= writer.writeback_bytes:
                writer.start_writeback(self.size)

    @property
    def pending(self) -> bytes:
        """Bytes appended but still in the write buffer (not yet in the file)."""
        return self.writer.pending if self.writer is not None else b""

    def flush_pending(self) -> None:
        """Write the write buffer to the file (not fsync). On failure the buffer is kept."""
        if self.writer is not None:
            self.writer.flush(self.size)

    def trim(self) -> bool:
        """Cut the preallocated bytes past the data (seal and close: sealed and cleanly closed
        segments end exactly at their last batch); True if there were any. Not durable until the
        caller's :meth:`sync`."""
        return self.writer.trim(self.size)

    def truncate_to(self, size: int) -> None:
        """Cut the file at ``size`` (recovery of a torn tail) and make that durable."""
        self._map = None  # never truncate under our own mapping
        self.writer.truncate(size)
        self.synced_size = size

    def sync(self) -> None:
        self.writer.sync(self.size)
        self.synced_size = self.size

    def seal(self) -> None:
        """Make the segment read-only: final time-index entry, trim and fsync indexes."""
        self._time_index.append(max(self.max_timestamp, 0), self.next_offset - self.base_offset)
        self._offset_index.seal(self.fs)
        self._time_index.seal(self.fs)
        self.sealed = True
        w, self.writer = self.writer, None  # read-only from now on: mapped by path
        w.close()
        self.note_files()

    def close_active(self) -> None:
        """Clean close of the active segment: trim indexes (no final entry), keep it unsealed."""
        if self._offset_index is not None:
            self._offset_index.seal(self.fs)
        if self._time_index is not None:
            self._time_index.seal(self.fs)
        self.close()
