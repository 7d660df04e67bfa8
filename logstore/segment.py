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

A writer under ``fsync="never"`` writes batches through a shared *write* mapping of the active
segment instead of ``pwrite`` (``map_writes``): a copy into the page cache, no system call per
append (~0.2 us instead of ~1 us for a 170-byte batch here). The bytes are in the page cache as
soon as the copy ends, exactly as after ``pwrite``: other processes' ``pread`` sees them, a
process crash keeps them, ``fdatasync`` writes them out. The mapping only ever covers space
reserved with ``posix_fallocate`` (real blocks, not a sparse hole), so a full disk is an
``ENOSPC`` from the reservation, before anything is copied, never a SIGBUS at the copy. The
reserved space past the data reads as zeros, the "preallocated tail" of FORMAT.md, and is cut
at seal and close like the sparse preallocation of the syncing policies. Only batches of up to
``MAP_WRITE_MAX_BYTES`` take that route: every fresh page of the mapping costs a write fault
(the file system maps the reserved block then), ~2-4 us here, which is more than a ``pwrite``
of a large batch saves; larger batches are written with ``pwrite`` into the same reserved space.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from . import codec
from .codec import HEADER_SIZE, BatchHeader, DecodedBatch
from .errors import CorruptLogError, OffsetOutOfRangeError, StorageError
from .fs import FileSystem
from .index import OffsetIndex, TimeIndex

# Framed batches up to this size are copied into the write mapping, larger ones are written with
# pwrite (measured here, fsync="never": a 170 B batch 2.1 us mapped vs 3.3 us pwrite, 1 KiB
# 3.9 vs 4.6 us, 4 KiB 15 vs 14 us, 10 KiB 26 vs 21 us, 100 KiB 160 vs 64 us).
MAP_WRITE_MAX_BYTES = 2048

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
NAME_DIGITS = 20
MAX_RELATIVE_OFFSET = 2**31 - 1  # index entries store offsets relative to the segment base


def segment_name(base_offset: int, suffix: str = LOG_SUFFIX) -> str:
    return f"{base_offset:0{NAME_DIGITS}d}{suffix}"


def parse_segment_name(name: str) -> Optional[int]:
    """Base offset of a ``NNNN....log`` file name, or None for any other name."""
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == LOG_SUFFIX and len(stem) == NAME_DIGITS and stem.isdigit():
        return int(stem)
    return None


_SEEK_DATA: Optional[int] = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: Optional[int] = getattr(os, "SEEK_HOLE", None)


def data_ranges(fd: int, start: int, end: int) -> List[Tuple[int, int]]:
    """The parts of ``[start, end)`` of the file that may hold data, in order.

    Holes (space never written, e.g. the preallocated tail of an active segment, made by
    ``ftruncate``) read as zeros and need not be read to be checked for zeros or searched for a
    batch: the file system names them with ``lseek(SEEK_DATA/SEEK_HOLE)`` (ext4, xfs, btrfs and
    tmpfs count written but not yet allocated pages in the page cache as data). Where those
    calls are not supported, the whole range. The file offset of ``fd`` moves (the engine only
    uses positional I/O).
    """
    if start >= end:
        return []
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return [(start, end)]
    out: List[Tuple[int, int]] = []
    pos = start
    try:
        while pos < end:
            try:
                lo = os.lseek(fd, pos, _SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but holes from pos to the end of the file
                    break
                raise
            if lo >= end:
                break
            hi = min(os.lseek(fd, lo, _SEEK_HOLE), end)
            if hi <= lo:  # pragma: no cover - a file system answering nonsense: read it all
                return [(start, end)]
            out.append((lo, hi))
            pos = hi
    except OSError:
        return [(start, end)]
    return out


def zeros_between(fd: int, pos: int, end: int) -> bool:
    """Whether bytes ``[pos, end)`` of the file are all zero (an active segment's preallocated,
    never-written tail; see FORMAT.md). Reads the data ranges (:func:`data_ranges`) with pread,
    4 MiB at a time."""
    for lo, hi in data_ranges(fd, pos, end):
        while lo < hi:
            data = os.pread(fd, min(1 << 22, hi - lo), lo)
            if not data or data != bytes(len(data)):
                return False
            lo += len(data)
    return True


# Batches quick_locate leaves to the general path: compressed, with offset deltas, unknown flags.
_NOT_QUICK = codec.CODEC_MASK | codec.ATTR_OFFSET_DELTAS | ~codec.KNOWN_ATTRS


class ScannedBatch(NamedTuple):
    position: int
    length: int
    base_offset: int
    next_offset: int
    max_timestamp: int
    record_count: int


class ScanResult(NamedTuple):
    """Outcome of validating a segment batch by batch from some position."""

    batches: List[ScannedBatch]
    valid_end: int  # file position just after the last valid batch
    file_size: int
    error: Optional[CorruptLogError]  # first problem found, None if the whole range was valid

    @property
    def next_offset(self) -> Optional[int]:
        return self.batches[-1].next_offset if self.batches else None


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
        # The plain FileSystem's pwrite is os.pwrite plus a short-write loop: appends call
        # os.pwrite directly and fall back to fs.pwrite for short writes. A test
        # double (a subclass) always goes through fs.pwrite.
        self._os_pwrite = os.pwrite if type(fs) is FileSystem else None
        self.index_interval = index_interval
        self.writable = writable
        self.path = os.path.join(directory, segment_name(base_offset))
        self.index_path = os.path.join(directory, segment_name(base_offset, INDEX_SUFFIX))
        self.timeindex_path = os.path.join(directory, segment_name(base_offset, TIMEINDEX_SUFFIX))
        self.fd: Optional[int] = None  # writer fd (read/write) or reader fd (pread mode)
        self.size = 0  # bytes of whole, valid batches (including any not yet written: pending)
        self.pending = bytearray()  # write buffer (write_buffer_bytes > 0 only)
        # Bytes of this segment known to be on stable storage; every batch written records the
        # value current at its writing (header field synced_before), which lets recovery tell
        # damage in never-synced bytes (a torn tail) from damage in synced ones (corruption).
        self.synced_size = 0
        self.buffer_limit = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.first_timestamp: Optional[int] = None
        self.sealed = False
        self.retired = False  # replaced (compaction) or deleted (retention): readers relocate
        self.use_pread = False
        self._map: Optional[mmap.mmap] = None
        self._map_len = 0
        self._offset_index: Optional[OffsetIndex] = None
        self._time_index: Optional[TimeIndex] = None
        self._last_index_pos = 0
        self._index_checked = False
        # Start kernel writeback of every this-many newly written bytes (0: never); see
        # FileSystem.start_writeback. Set by the log for policies that do not fsync each append.
        self.writeback_bytes = 0
        self._writeback_from = 0
        # Preallocation (writer, syncing policies): the file is extended this many bytes ahead
        # of the data, up to preallocate_limit, so that the fdatasync after an append does not
        # also have to commit a new file size (see FORMAT.md, "Preallocated tail"). 0: off.
        self.preallocate = 0
        self.preallocate_limit = 0
        self.allocated = 0  # the file's length as this writer made it (>= written data)
        # Write mapping (fsync="never" writers, see the module docstring): covers [0, _wmap_len),
        # all of it reserved on disk. map_writes is cleared for good if the file system cannot
        # reserve space (no posix_fallocate support).
        self.map_writes = False
        self.map_write_limit = 0
        self._wmap: Optional[mmap.mmap] = None
        self._wmap_len = 0

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def create(cls, directory: str, base_offset: int, fs: FileSystem, index_interval: int,
               index_capacity: int) -> "Segment":
        """Create a new, empty active segment (the caller fsyncs the directory)."""
        seg = cls(directory, base_offset, fs, index_interval, writable=True)
        seg.fd = fs.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
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

    def _ensure_size(self) -> None:
        """First use of a sealed segment: open it, take its size and map it in one step.

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
                size = os.fstat(fd).st_size
                if size:
                    self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                    self._map_len = size
            finally:
                os.close(fd)
            self.size = size

    def open_active(self, size: int, next_offset: int, max_timestamp: int,
                    index_capacity: int, trust_indexes: bool) -> None:
        """Open this (writable) segment as the active one, ``size`` bytes valid."""
        self.fd = self.fs.open(self.path, os.O_RDWR)
        self.size = size
        self.allocated = os.fstat(self.fd).st_size
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
            ok = ok and self._time_index_agrees(oi, ti)
        if ok:
            self._offset_index = OffsetIndex.create(self.index_path, index_capacity, self.fs,
                                                    off_entries)
            self._time_index = TimeIndex.create(self.timeindex_path, index_capacity, self.fs,
                                                time_entries)
            self._last_index_pos = self._offset_index.lookup(rel_end)[1]
            self._index_checked = True
        else:
            self.rebuild_indexes(self.scan(0), index_capacity)

    def open_reader_active(self) -> None:
        """Read-only view of the active segment: pread, in-memory index built while walking."""
        self.use_pread = True
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = 0
        self.next_offset = self.base_offset
        self._offset_index = OffsetIndex.in_memory()
        self._time_index = TimeIndex.in_memory()
        self._index_checked = True

    def close(self) -> None:
        self._map = None
        self._drop_write_map()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            if self.use_pread:
                os.close(fd)
            else:
                self.fs.close(fd)

    # ------------------------------------------------------------------ raw access
    def file_size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        return os.path.getsize(self.path)

    def _mapped(self, end: int) -> mmap.mmap:
        """A mapping covering at least ``[0, end)`` (``end`` <= valid size)."""
        if self._map is None or self._map_len < end:
            self._ensure_size()
            written = self.size - len(self.pending)
            if end > written:
                self.flush_pending()  # readers must see buffered appends: put them in the file
                written = self.size
            length = max(end, written)
            if self.fd is not None:
                self._map = mmap.mmap(self.fd, length, access=mmap.ACCESS_READ)
            else:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    self._map = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
                finally:
                    os.close(fd)
            self._map_len = length
        return self._map

    def read_bytes(self, pos: int, n: int):
        """Bytes ``[pos, pos+n)``: a zero-copy memoryview of the mapping, or pread bytes."""
        if self.use_pread:
            data = os.pread(self.fd, n, pos)
            if len(data) < n:
                raise CorruptLogError("segment is shorter than expected", self.path, pos)
            return data
        return memoryview(self._mapped(pos + n))[pos : pos + n]

    def header_at(self, pos: int) -> BatchHeader:
        """The validated header of the batch at ``pos`` (CRC not checked)."""
        if pos + HEADER_SIZE > self.size:
            raise CorruptLogError("batch header runs past the end of the segment", self.path, pos)
        if self.use_pread:
            h = codec.parse_header(self.read_bytes(pos, HEADER_SIZE), 0)
        else:
            h = codec.parse_header(self._mapped(pos + HEADER_SIZE), pos)
        codec.check_header(h, self.path, pos)
        if pos + h.length > self.size:
            raise CorruptLogError("batch runs past the end of the segment", self.path, pos)
        return h

    def batch_at(self, pos: int, h: Optional[BatchHeader] = None,
                 lazy: bool = False) -> DecodedBatch:
        """Decode (CRC-checked) the batch at ``pos``; ``h`` must come from :meth:`header_at`.
        ``lazy``: parse its columns at first use (see :class:`DecodedBatch`)."""
        if h is None:
            h = self.header_at(pos)  # validates the header and its bounds
        return codec.decode(self.read_bytes(pos, h.length), 0, h, self.path, pos, True, lazy)

    # ------------------------------------------------------------------ indexes
    def offset_index(self) -> OffsetIndex:
        if self._offset_index is None:
            self._load_indexes()
        return self._offset_index

    def time_index(self) -> TimeIndex:
        if self._time_index is None:
            self._load_indexes()
        return self._time_index

    def _load_indexes(self) -> None:
        """Load a sealed segment's indexes; rebuild them if missing or implausible."""
        self._ensure_size()
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
            good = self._time_index_agrees(oi, ti)
        if good:
            self._offset_index, self._time_index = oi, ti
            self.max_timestamp = ti.last()[0]
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
            self.max_timestamp = codec.MAX_TIMESTAMP

    def _time_index_agrees(self, oi: OffsetIndex, ti: TimeIndex) -> bool:
        """Check the time index against the log: entry i+1 promises that every record before
        it is <= its timestamp, so it must be >= the max timestamp (from its header) of the batch
        that entry i points at. One header read per entry, on first use of the segment."""
        entries = ti.entries
        n = len(entries)
        if n < 2:
            return True
        rels = entries["rel"].tolist()
        tss = entries["ts"].tolist()
        mm = self._mapped(self.size) if self.size and not self.use_pread else None
        # A sample of entries spread over the segment (all of them for small indexes): this runs
        # on the first use of a segment and must stay cheap (a 64 MiB segment has ~16k entries).
        # A systematically wrong index (zeroed, stale, shifted) fails on any sampled entry.
        if n - 1 <= 64:
            sample = range(n - 1)
        else:
            sample = sorted(set(np.linspace(0, n - 2, 64).astype(int).tolist()))
        for i in sample:
            rel, pos = oi.lookup(rels[i])
            if rel != rels[i] or pos + HEADER_SIZE > self.size:
                return False
            h = codec.parse_header(mm, pos) if mm is not None else \
                codec.parse_header(self.read_bytes(pos, HEADER_SIZE), 0)
            if codec.header_problem(h) or h.base_offset != self.base_offset + rel \
                    or tss[i + 1] < h.max_timestamp:
                return False
        return True

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
            self._note_batch(b.position, b.base_offset, b.max_timestamp)
        if self.sealed:
            # A damaged segment's later timestamps are unknown: promise nothing about them.
            final_ts = max(self.max_timestamp, 0) if scan.error is None else codec.MAX_TIMESTAMP
            self._time_index.append(final_ts, self.next_offset - self.base_offset)
            if self.writable and persist:  # save the rebuilt hints atomically; readers never write
                try:
                    self._offset_index.write_file(self.index_path, self.fs)
                    self._time_index.write_file(self.timeindex_path, self.fs)
                except OSError:
                    pass  # a hint we could not save is rebuilt again next time
        self._index_checked = True

    def _note_batch(self, pos: int, base_offset: int, max_ts: int) -> None:
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
        self._ensure_size()
        index = self.offset_index()
        rel_hint, pos = index.lookup(offset - self.base_offset)
        if pos:
            # Spot-check the hint: the entry must point at the start of the batch it names.
            ok = pos + HEADER_SIZE <= self.size
            if ok and not self.use_pread:
                magic, length, base, _ = codec.WALK.unpack_from(self._mapped(pos + HEADER_SIZE), pos)
                ok = magic == codec.MAGIC and base == self.base_offset + rel_hint
            elif ok:
                try:
                    ok = self.header_at(pos).base_offset == self.base_offset + rel_hint
                except CorruptLogError:
                    ok = False
            if not ok:
                self._index_broken()  # the hint is wrong: rebuild it from the log
                pos = 0
        return self.walk_to(offset, pos)

    def quick_locate(self, offset: int) -> Optional[Tuple[Any, int, tuple, int]]:
        """``get``'s common route to the batch holding ``offset``: ``(buf, at, header,
        position)``, its bytes being ``buf[at : at + header[2]]`` (the mapping, or bytes read
        with pread) and ``header`` the plain tuple of its fields, or None: "ask :meth:`find`".

        The common route is a loaded index whose hint checks out and intact, dense,
        uncompressed batches from the hint to the target: one index search, four header fields
        per batch stepped over (from the mapping, or one pread each for a reader's active
        segment), then the target's full header check. Its CRC is the caller's to check
        (:func:`codec.extract_record` does, or :func:`codec.check_crc` once for several
        records). Anything else (write buffer, a hint that does not match, a gap, compression,
        any odd header) returns None, and the caller takes the general path, which handles and
        reports every case. Both give the same batch for the same bytes.
        """
        oi = self._offset_index
        size = self.size
        if oi is None or self.pending or size <= 0 or offset >= self.next_offset:
            return None
        if self.use_pread:
            mm = None
            fd = self.fd
        else:
            mm = self._map if self._map_len >= size else self._mapped(size)
        base_offset = self.base_offset
        rel, pos = oi.lookup(offset - base_offset)
        expect = base_offset + rel
        step = codec.STEP.unpack_from
        magic_int = codec.MAGIC_INT
        limit = size - HEADER_SIZE
        while pos <= limit:
            # Batches before the target are stepped over on four fields (about half of a full
            # check: a get walks ~12 one-record batches from its index entry); a damaged one
            # breaks the base-offset chain or the length checks, and the target batch gets the
            # full header check and its CRC below.
            if mm is None:
                raw = os.pread(fd, HEADER_SIZE, pos)
                if len(raw) < HEADER_SIZE:
                    return None
                magic, length, base, last_delta = step(raw, 0)
            else:
                raw = mm
                magic, length, base, last_delta = step(mm, pos)
            if (magic != magic_int or base != expect or length < HEADER_SIZE or length & 7
                    or pos + length > size):
                return None  # odd or a gap: the general path decides and reports
            expect = base + last_delta + 1
            if expect > offset:
                h = codec.HEADER.unpack_from(raw, 0 if mm is None else pos)
                if (length > codec.MAX_BATCH_LENGTH or h[9] != h[8] - 1 or h[8] < 1
                        or h[4] & _NOT_QUICK or h[3] != codec.FORMAT_VERSION
                        or not length - codec.ALIGN < HEADER_SIZE + h[10] <= length
                        or h[6] < 0 or h[7] < 0):
                    # (codec.header_problem's checks, on the plain tuple) odd or compressed:
                    return None  # the general path decides and reports
                if mm is None:
                    data = os.pread(fd, length, pos)
                    if len(data) < length:
                        return None
                    return data, 0, h, pos
                return mm, pos, h, pos
            pos += length
        return None

    def walk_to(self, offset: int, pos: int) -> Optional[Tuple[int, BatchHeader]]:
        """Walk batch headers from ``pos`` to the batch reaching ``offset``.

        Reads only the four fields it needs per step; anything odd falls back to the fully
        validating :meth:`header_at`, which raises the precise error. With a write buffer, the
        written part is walked first: the buffer is written out only if the target is in it (so
        reads of older records keep working while the disk is full).
        """
        if self.pending:
            written = self.size - len(self.pending)
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
        mm = self._mapped(size)
        walk = codec.WALK.unpack_from
        magic_ok = codec.MAGIC
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
        if not codec.crc_ok(self._mapped(pos + h.length), pos, h):
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
        """Validate batches from ``start`` up to the file's end (or ``end``).

        Stops at the first invalid batch (bad header, short, CRC, structure, offsets going back)
        and returns what was valid before it. ``strict`` raises that error instead. Zero bytes
        from there to the end of an unsealed segment are its preallocated, never-written space:
        the data ends there and that is no error (``valid_end`` < ``file_size`` all the same).
        """
        frozen = self.sealed and self.fd is None and not self.use_pread
        if self.use_pread:
            file_size = os.fstat(self.fd).st_size
        elif frozen:
            self._ensure_size()  # scan exactly the file this object mapped
            file_size = self.size
        else:
            file_size = self.file_size()
        end = file_size if end is None else min(end, file_size)
        batches: List[ScannedBatch] = []
        pos = start
        expect = self.base_offset if prev_next is None else prev_next
        error: Optional[CorruptLogError] = None
        if end > 0 and not self.use_pread:
            buf = self._map if frozen else self._scan_map(end)
        else:
            buf = None
        while pos < end:
            try:
                if end - pos < HEADER_SIZE:
                    raise CorruptLogError("truncated batch header", self.path, pos)
                raw = buf if buf is not None else os.pread(self.fd, HEADER_SIZE, pos)
                h = codec.parse_header(raw, pos if buf is not None else 0)
                codec.check_header(h, self.path, pos)
                if pos + h.length > end:
                    raise CorruptLogError("truncated batch (torn write)", self.path, pos)
                data = buf if buf is not None else os.pread(self.fd, h.length, pos)
                codec.decode(data, pos if buf is not None else 0, h, self.path, pos)
                if h.base_offset < expect:
                    raise CorruptLogError(
                        f"batch base offset {h.base_offset} goes back (expected >= {expect})",
                        self.path, pos)
                if h.next_offset - 1 - self.base_offset > MAX_RELATIVE_OFFSET:
                    raise CorruptLogError("batch offsets too far from the segment base",
                                          self.path, pos)
            except CorruptLogError as e:
                error = e
                break
            batches.append(ScannedBatch(pos, h.length, h.base_offset, h.next_offset,
                                        h.max_timestamp, h.record_count))
            expect = h.next_offset
            pos += h.length
        if error is not None and not self.sealed and self._zeros(pos, end, buf):
            error = None
        if error is not None and strict:
            raise error
        return ScanResult(batches, pos, file_size, error)

    def _zeros(self, pos: int, end: int, buf) -> bool:
        """Whether bytes ``[pos, end)`` are all zero (``buf``: a mapping of the file, or None).
        Only the data ranges are read (:func:`data_ranges`): a 4 MiB preallocated tail is a
        hole, and faulting it in through the mapping costs milliseconds."""
        if buf is None:
            return zeros_between(self.fd, pos, end)
        for lo, hi in self._data_ranges(pos, end):
            if np.frombuffer(buf, dtype=np.uint8, count=hi - lo, offset=lo).any():
                return False
        return True

    def _data_ranges(self, pos: int, end: int) -> List[Tuple[int, int]]:
        """:func:`data_ranges` of this segment's file (opened for the call if not open)."""
        if self.fd is not None:
            return data_ranges(self.fd, pos, end)
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return [(pos, end)] if pos < end else []
        try:
            return data_ranges(fd, pos, end)
        finally:
            os.close(fd)

    def _scan_map(self, end: int):
        fd = self.fd if self.fd is not None else os.open(self.path, os.O_RDONLY)
        try:
            return mmap.mmap(fd, end, access=mmap.ACCESS_READ)
        finally:
            if fd != self.fd:
                os.close(fd)

    # ------------------------------------------------------------------ writing
    def append(self, data, base_offset: int, next_offset: int, max_ts: int, first_ts: int) -> None:
        """Write a framed batch at the end. On failure the file is cut back and StorageError raised.

        With a write buffer (``buffer_limit`` > 0) small batches are collected in memory and
        written together; the buffer is written before it would overflow, before any read that
        needs it, and by :meth:`sync`.
        """
        pos = self.size
        length = len(data)
        buffered = False
        if self.buffer_limit:
            if len(self.pending) + length > self.buffer_limit:
                self.flush_pending()
            buffered = length < self.buffer_limit
            if buffered:
                self.pending += data
        if not buffered:
            end = pos + length
            if length <= MAP_WRITE_MAX_BYTES and (
                    end <= self._wmap_len or (self.map_writes and self._map_ahead(end))):
                self._wmap[pos:end] = data  # a memcpy into the page cache: no system call
            else:
                self._pwrite_batch(data, pos, length)
        self.size = pos + length
        self.next_offset = next_offset
        if self.first_timestamp is None:
            self.first_timestamp = first_ts
        # Index entries and writeback hints are due only every index_interval bytes (or for a
        # new maximum timestamp): skip the call otherwise, this runs once per append.
        if pos - self._last_index_pos >= self.index_interval or max_ts > self.max_timestamp:
            self._note_batch(pos, base_offset, max_ts)
            if self.writeback_bytes and pos - self._writeback_from >= self.writeback_bytes:
                self._start_writeback()

    def _pwrite_batch(self, data, pos: int, length: int) -> None:
        if pos + length > self.allocated:
            self._extend(pos + length)
        os_pwrite = self._os_pwrite
        try:
            # (A short write is redone whole: the write is positional, so that is idempotent.)
            if os_pwrite is None or os_pwrite(self.fd, data, pos) != length:
                self.fs.pwrite(self.fd, data, pos)
        except OSError as e:
            self._cut_back(pos, e)
            raise StorageError(
                f"write to {self.path} failed: {e}; nothing was appended", e) from e

    def _map_ahead(self, end: int) -> bool:
        """Reserve and map the file up to at least ``end`` for :meth:`append`'s copy.

        Reserves ahead of the data, doubling with the file up to 4 MiB at a time (a small log
        reserves little), capped at the segment size. False: write this batch with pwrite
        (the reservation failed; the pwrite path reports a real problem, e.g. ENOSPC, as
        every write failure is reported).
        """
        step = min(max(self.allocated, 64 << 10), 4 << 20)
        target = max(end, min(end + step, self.map_write_limit))
        start = min(self.allocated, self.size)
        try:
            if target > start:
                os.posix_fallocate(self.fd, start, target - start)
            wmap = mmap.mmap(self.fd, target, access=mmap.ACCESS_WRITE)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                self.map_writes = False  # this file system cannot reserve: pwrite from now on
            self.allocated = max(self.allocated, os.fstat(self.fd).st_size)
            return False
        self._drop_write_map()
        self._wmap, self._wmap_len = wmap, target
        self.allocated = max(self.allocated, target)
        return True

    def _drop_write_map(self) -> None:
        if self._wmap is not None:
            wmap, self._wmap, self._wmap_len = self._wmap, None, 0
            wmap.close()  # never exported (only written by slice assignment)

    def _extend(self, end: int) -> None:
        """The file is about to grow to ``end``: preallocate ahead of it if configured."""
        if self.preallocate:
            target = max(end, min(end + self.preallocate, self.preallocate_limit))
            if target > end:
                try:
                    self.fs.truncate(self.fd, target)  # sparse: no zeros written
                except OSError:
                    # Only an optimisation (EFBIG under a file size limit, say): stop trying;
                    # the write itself reports any real problem.
                    self.preallocate = 0
                else:
                    self.allocated = target
                    return
        self.allocated = end

    def trim(self) -> bool:
        """Cut the preallocated bytes past the data (seal and close: sealed and cleanly closed
        segments end exactly at their last batch); True if there were any. Not durable until the
        caller's :meth:`sync`."""
        self.flush_pending()
        self._drop_write_map()
        cut = self.allocated > self.size
        if cut:
            self.fs.truncate(self.fd, self.size)
        self.allocated = self.size
        return cut

    def _start_writeback(self) -> None:
        """Hint the kernel to write out what was written since the last hint (no waiting)."""
        written = self.size - len(self.pending)
        if written > self._writeback_from:
            try:
                self.fs.start_writeback(self.fd, self._writeback_from,
                                        written - self._writeback_from)
            except OSError:
                return  # only a hint: the fdatasync that matters reports real errors
            self._writeback_from = written

    def flush_pending(self) -> None:
        """Write the write buffer to the file (not fsync). On failure the buffer is kept."""
        if not self.pending:
            return
        start = self.size - len(self.pending)
        if self.size > self.allocated:
            self._extend(self.size)
        try:
            self.fs.pwrite(self.fd, self.pending, start)
        except OSError as e:
            self._cut_back(start, e)
            raise StorageError(
                f"writing buffered records to {self.path} failed: {e}; they stay buffered "
                f"and are retried by the next flush", e) from e
        self.pending = bytearray()

    def _cut_back(self, pos: int, cause: OSError) -> None:
        self._drop_write_map()
        try:
            self.fs.truncate(self.fd, pos)
            self.allocated = pos
        except OSError as e:
            raise StorageError(
                f"write to {self.path} failed ({cause}) and the partial batch could not be "
                f"removed ({e}); reopen the log to recover", e) from e

    def truncate_to(self, size: int) -> None:
        """Cut the file at ``size`` (recovery of a torn tail) and make that durable."""
        self._drop_write_map()
        self.fs.truncate(self.fd, size)
        self.fs.fdatasync(self.fd)
        self.synced_size = size
        self.allocated = size

    def sync(self) -> None:
        self.flush_pending()
        self.fs.fdatasync(self.fd)
        self.synced_size = self.size

    def seal(self) -> None:
        """Make the segment read-only: final time-index entry, trim and fsync indexes."""
        self._time_index.append(max(self.max_timestamp, 0), self.next_offset - self.base_offset)
        self._offset_index.seal(self.fs)
        self._time_index.seal(self.fs)
        self.sealed = True

    def close_active(self) -> None:
        """Clean close of the active segment: trim indexes (no final entry), keep it unsealed."""
        if self._offset_index is not None:
            self._offset_index.seal(self.fs)
        if self._time_index is not None:
            self._time_index.seal(self.fs)
        self.close()
