"""Sparse offset index and time index of one segment (see ``segments/FORMAT.md``, "Indexes").

Both are arrays of fixed-width little-endian entries. The active segment's files are preallocated
and memory-mapped (``np.memmap``) for writing, then trimmed to their used length when the segment
is sealed or the log is closed. Lookups are ``np.searchsorted`` over the mapped array.

Indexes are *hints*: every lookup result is checked against the log before it is trusted, and a
missing or inconsistent index is rebuilt from the log. They are never the only copy of anything.
"""

from __future__ import annotations

import bisect
import os
import sys
from typing import List, Optional, Tuple

import numpy as np

from ..fs import FileSystem

# Offset index entry: one int64 = (relative_offset << 32) | position, i.e. bytes
# [position: u32 LE][relative offset: u32 LE, < 2**31]. Entries sorted by relative offset are then sorted
# as integers too, so one searchsorted on a contiguous array finds an offset.
if sys.byteorder != "little":  # pragma: no cover - the entries are read as native int64
    raise ImportError("logstore's index files are little-endian: big-endian hosts are not supported")
OFFSET_ENTRY = np.dtype("<i8")  # relative offsets are < 2**31, so the sign bit is never set
TIME_ENTRY = np.dtype([("ts", "<i8"), ("rel", "<i4")])  # 12 bytes, packed


class _MappedArray:
    """A numpy array of entries: a preallocated writable memmap, a read-only memmap, or RAM."""

    dtype: np.dtype

    def __init__(self, path: Optional[str], arr: np.ndarray, n: int, writable: bool):
        self.path = path
        self._map = arr if isinstance(arr, np.memmap) else None  # kept for flush()
        # Searches go through a plain ndarray view: slicing an np.memmap costs microseconds.
        self._arr = arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr
        self.n = n
        self.writable = writable
        self._ints: Optional[memoryview] = None  # OffsetIndex: Python-int view of _arr

    def _drop_view(self) -> None:
        """Release the int view before ``_arr`` is replaced or its file is resized: a live
        export would keep the old mapping alive (and a shrunk file under it)."""
        if self._ints is not None:
            self._ints.release()
            self._ints = None

    @classmethod
    def create(cls, path: str, capacity: int, fs: FileSystem, existing: Optional[np.ndarray] = None):
        """Create (or re-extend) ``path`` to ``capacity`` entries and map it for writing."""
        existing_n = 0 if existing is None else len(existing)
        capacity = max(capacity, existing_n + 2)
        fd = fs.open(path, os.O_RDWR | os.O_CREAT)
        try:
            if existing is None:
                fs.truncate(fd, 0)  # drop stale entries: a fresh index starts all zero
            fs.truncate(fd, capacity * cls.dtype.itemsize)
        finally:
            fs.close(fd)
        arr = np.memmap(path, dtype=cls.dtype, mode="r+", shape=(capacity,))
        if existing_n:
            arr[:existing_n] = existing
        return cls(path, arr, existing_n, True)

    @classmethod
    def map_shared(cls, path: str, n: int):
        """Map the preallocated index file of an active segment that other processes write too
        (``Log.open(shared=True)``): entries are appended into the shared mapping under the log's
        write lock; ``n`` (how many are valid) comes from the shared tail."""
        size = os.path.getsize(path) // cls.dtype.itemsize
        arr = np.memmap(path, dtype=cls.dtype, mode="r+", shape=(max(size, n),))
        return cls(path, arr, n, True)

    def set_count(self, n: int) -> None:
        """(shared active index) Another writer appended entries: ``n`` are valid now (the file
        is remapped if it grew past this mapping)."""
        if n > len(self._arr) and self.path is not None:
            self._drop_view()
            self._map = None
            size = os.path.getsize(self.path) // self.dtype.itemsize
            arr = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(max(size, n),))
            self._map = arr
            self._arr = arr.view(np.ndarray)
        self.n = n

    @classmethod
    def load(cls, path: str) -> Optional[np.ndarray]:
        """Read a (trimmed) index file into memory; None if missing or of an impossible size."""
        try:
            size = os.path.getsize(path)
        except OSError:
            return None
        if size % cls.dtype.itemsize:
            return None
        if size == 0:
            return np.empty(0, dtype=cls.dtype)
        try:
            return np.fromfile(path, dtype=cls.dtype)
        except OSError:  # removed meanwhile (retention, compaction): rebuilt from the log
            return None

    @classmethod
    def map_readonly(cls, path: str) -> Optional["_MappedArray"]:
        try:
            size = os.path.getsize(path)
        except OSError:
            return None
        if size % cls.dtype.itemsize:
            return None
        n = size // cls.dtype.itemsize
        try:
            arr = np.memmap(path, dtype=cls.dtype, mode="r", shape=(n,)) if n else \
                np.empty(0, cls.dtype)
        except (OSError, ValueError):  # removed or shrunk meanwhile: rebuilt from the log
            return None
        return cls(path, arr, n, False)

    @classmethod
    def in_memory(cls, entries: Optional[np.ndarray] = None):
        arr = np.empty(16, dtype=cls.dtype) if entries is None else np.array(entries, dtype=cls.dtype)
        return cls(None, arr, 0 if entries is None else len(arr), False)

    def _push(self, entry) -> None:
        if self.n == len(self._arr):
            self._drop_view()
            if self.writable:
                self._grow_file()
            else:
                bigger = np.empty(max(16, 2 * len(self._arr)), dtype=self.dtype)
                bigger[: self.n] = self._arr[: self.n]
                self._arr = bigger
        self._arr[self.n] = entry
        self.n += 1

    def _grow_file(self) -> None:
        self._drop_view()
        keep = np.array(self._arr[: self.n])
        self._map.flush()
        # Unmap before resizing the file; the entries stay usable from the copy whatever
        # happens next (an interrupt, an I/O error).
        self._arr, self._map = keep, None
        arr = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(2 * len(keep) + 16,))
        arr[: len(keep)] = keep
        self._map = arr
        self._arr = arr.view(np.ndarray)

    @property
    def entries(self) -> np.ndarray:
        return self._arr[: self.n]

    def seal(self, fs: FileSystem) -> None:
        """Trim the file to the used entries and make it durable. The index becomes read-only."""
        if not self.writable:
            return
        self._drop_view()
        used = np.array(self._arr[: self.n])
        self._map.flush()
        # Unmap before shrinking the file (never truncate under a live mapping); the entries
        # stay usable from the copy whatever happens next (an interrupt, an I/O error).
        self._arr, self._map = used, None
        self.writable = False
        fd = fs.open(self.path, os.O_RDWR)
        try:
            fs.truncate(fd, self.n * self.dtype.itemsize)
            fs.fsync(fd)
        finally:
            fs.close(fd)

    def write_file(self, path: str, fs: FileSystem) -> None:
        """Atomically write the used entries to ``path`` (rebuilds)."""
        fs.write_file_atomic(path, self.entries.tobytes())


class OffsetIndex(_MappedArray):
    """relative offset -> file position of the batch starting there, every N bytes of log."""

    dtype = OFFSET_ENTRY

    def append(self, rel: int, position: int) -> None:
        self._push((rel << 32) | position)

    def lookup(self, rel: int) -> Tuple[int, int]:
        """(relative offset, position) of the last entry with offset <= ``rel``, else (0, 0)."""
        n = self.n
        if not n:
            return 0, 0
        ints = self._ints
        if ints is None:
            ints = self._ints = memoryview(self._arr).cast("B").cast("q")
        # bisect over a memoryview of the entries (Python ints, no copy): ~0.7 us against
        # ~1.6 us for ndarray.searchsorted plus int() of the entry. Entries are little-endian
        # int64; the machine is little-endian (checked at import).
        i = bisect.bisect_left(ints, (rel + 1) << 32, 0, n) - 1
        if i < 0:
            return 0, 0
        e = ints[i]
        return e >> 32, e & 0xFFFFFFFF

    def pairs(self) -> List[Tuple[int, int]]:
        return [(int(e) >> 32, int(e) & 0xFFFFFFFF) for e in self.entries]

    def valid_prefix(self, next_rel: int, size: int) -> int:
        """Number of leading entries that are plausible for a segment of ``size`` bytes."""
        e = self.entries.astype(np.int64)
        rel = e >> 32
        pos = e & 0xFFFFFFFF
        ok = (rel > 0) & (rel < next_rel) & (pos > 0) & (pos < size)
        if len(e) > 1:
            ok[1:] &= (np.diff(rel) > 0) & (np.diff(pos) > 0)
        bad = np.flatnonzero(~ok)
        return int(bad[0]) if len(bad) else len(e)


class TimeIndex(_MappedArray):
    """Entries (T, rel): every record with relative offset < rel has a timestamp <= T.

    T never decreases. The last entry of a sealed segment is (segment max timestamp, next rel),
    so a segment's max timestamp is known without reading the log.
    """

    dtype = TIME_ENTRY

    def append(self, max_ts: int, rel: int) -> None:
        self._push((max_ts, rel))

    def start_for(self, ts: int) -> int:
        """A relative offset such that every record before it has a timestamp < ``ts``."""
        n = self.n
        if not n:
            return 0
        i = int(np.searchsorted(self._arr["ts"][:n], ts, side="left")) - 1
        return int(self._arr["rel"][i]) if i >= 0 else 0

    def last(self) -> Optional[Tuple[int, int]]:
        if not self.n:
            return None
        e = self._arr[self.n - 1]
        return int(e["ts"]), int(e["rel"])

    def valid_prefix(self, next_rel: int) -> int:
        e = self.entries
        ts = e["ts"].astype(np.int64)
        rel = e["rel"].astype(np.int64)
        ok = (rel > 0) & (rel <= next_rel) & (ts >= 0)
        if len(e) > 1:
            ok[1:] &= (np.diff(rel) > 0) & (np.diff(ts) >= 0)
        bad = np.flatnonzero(~ok)
        return int(bad[0]) if len(bad) else len(e)
