"""Writing the active segment's file: where a framed batch's bytes go, and how they get there.

:class:`ActiveFile` owns the writer's file descriptor of the active segment and the ways bytes
reach it: one ``pwrite`` per batch; or, under ``fsync="never"``, a copy into a shared *write
mapping* of space reserved with ``posix_fallocate`` (no system call per append; see FORMAT.md,
"Preallocated tail"); or an in-memory write buffer (``write_buffer_bytes``) written in large
pieces. It also extends the file ahead of the data for the syncing policies (sparse
``ftruncate``: an ``fdatasync`` then need not commit a new file size), hints the kernel to start
writeback, cuts a failed partial write back off, trims the preallocated tail at seal and close,
and fsyncs.

A write mapping is never exported (only written by slice assignment), so it can be closed at
once; the bytes are in the page cache as soon as the copy ends, exactly as after ``pwrite``.

Thread-safety: none; the owning :class:`~logstore.storage.segment.Segment` is used under the
log's lock.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any, Optional

from ..config import LogConfig
from ..errors import StorageError
from ..fs import FileSystem

WRITEBACK_BYTES = 1 << 20  # start kernel writeback every this many bytes (non-syncing policies)
PREALLOCATE_BYTES = 4 << 20  # how far ahead of the data a syncing writer extends the file
# Framed batches up to this size are copied into the write mapping, larger ones are written with
# pwrite (measured here, fsync="never": a 170 B batch 2.1 us mapped vs 3.3 us pwrite, 1 KiB
# 3.9 vs 4.6 us, 4 KiB 15 vs 14 us, 10 KiB 26 vs 21 us, 100 KiB 160 vs 64 us).
MAP_WRITE_MAX_BYTES = 2048


class ActiveFile:
    """The writable file of an active segment (see the module docstring)."""

    def __init__(self, fd: int, fs: FileSystem, path: str, allocated: int):
        self.fd = fd
        self.fs = fs
        self.path = path
        # The plain FileSystem's pwrite is os.pwrite plus a short-write loop: appends call
        # os.pwrite directly and fall back to fs.pwrite for short writes. A test double (a
        # subclass) always goes through fs.pwrite.
        self._os_pwrite = os.pwrite if type(fs) is FileSystem else None
        self.allocated = allocated  # the file's length as this writer made it (>= written data)
        self.pending = bytearray()  # write buffer (buffer_limit > 0 only)
        self.buffer_limit = 0
        # Start kernel writeback of every this-many newly written bytes (0: never); see
        # FileSystem.start_writeback. Set by the log for policies that do not fsync each append.
        self.writeback_bytes = 0
        self.writeback_from = 0
        # Preallocation (syncing policies): extend the file this many bytes ahead of the data,
        # up to preallocate_limit. 0: off.
        self.preallocate = 0
        self.preallocate_limit = 0
        # Write mapping (fsync="never"): covers [0, _wmap_len), all of it reserved on disk.
        # map_writes is cleared for good if the file system cannot reserve space.
        self.map_writes = False
        self.map_write_limit = 0
        self._wmap: Optional[mmap.mmap] = None
        self._wmap_len = 0

    def apply_policy(self, config: LogConfig, size: int, default_fs: bool,
                     shared: bool = False) -> None:
        """Set how this file is written from the log's settings (``size``: its data now;
        ``default_fs``: the real file system, not a test double of the seam; ``shared``: other
        processes write the file too: plain pwrites at the tail, no space reserved ahead)."""
        always = config.fsync == "always"
        self.buffer_limit = config.write_buffer_bytes
        # Without an fsync per append, dirty pages pile up until the seal's fdatasync: start
        # their writeback as the segment fills, so sealing does not stall the writer for long.
        self.writeback_bytes = 0 if always else WRITEBACK_BYTES
        self.writeback_from = size
        # Policies that fdatasync while the segment fills: extend the file ahead of the data, so
        # that those fdatasyncs need not also commit a new file size (~20% faster here).
        syncs = always or config.fsync_records is not None or config.fsync_ms is not None
        self.preallocate = PREALLOCATE_BYTES if syncs and not shared else 0
        self.preallocate_limit = config.segment_bytes
        # No fsync policy at all: copy batches into a write mapping instead of one pwrite system
        # call each. Not through a test double of the file system (its pwrite is the seam
        # fault-injection tests use), not with a write buffer (that already writes in large
        # pieces).
        self.map_writes = (config.fsync == "never" and not config.write_buffer_bytes
                           and default_fs and not shared and hasattr(os, "posix_fallocate"))
        self.map_write_limit = config.segment_bytes

    # ------------------------------------------------------------------ writing
    def write(self, data: Any, pos: int) -> None:
        """Put a framed batch at ``pos`` (the end of the data). On failure the file is cut back
        to ``pos`` and :class:`StorageError` raised: a partial batch is never left behind."""
        length = len(data)
        if self.buffer_limit:
            if len(self.pending) + length > self.buffer_limit:
                self.flush(pos)
            if length < self.buffer_limit:
                self.pending += data
                return
        end = pos + length
        if length <= MAP_WRITE_MAX_BYTES and (
                end <= self._wmap_len or (self.map_writes and self._map_ahead(pos, end))):
            self._wmap[pos:end] = data  # a memcpy into the page cache: no system call
            return
        if end > self.allocated:
            self.extend(end)
        os_pwrite = self._os_pwrite
        try:
            # (A short write is redone whole: the write is positional, so that is idempotent.)
            if os_pwrite is None or os_pwrite(self.fd, data, pos) != length:
                self.fs.pwrite(self.fd, data, pos)
        except OSError as e:
            self._cut_back(pos, e)
            raise StorageError(
                f"write to {self.path} failed: {e}; nothing was appended", e) from e

    def flush(self, size: int) -> None:
        """Write the write buffer (it ends the data at ``size``) to the file; not an fsync. On
        failure the buffer is kept and :class:`StorageError` raised."""
        if not self.pending:
            return
        start = size - len(self.pending)
        if size > self.allocated:
            self.extend(size)
        try:
            self.fs.pwrite(self.fd, self.pending, start)
        except OSError as e:
            self._cut_back(start, e)
            raise StorageError(
                f"writing buffered records to {self.path} failed: {e}; they stay buffered "
                f"and are retried by the next flush", e) from e
        self.pending = bytearray()

    def _map_ahead(self, pos: int, end: int) -> bool:
        """Reserve and map the file up to at least ``end`` for :meth:`write`'s copy.

        Reserves ahead of the data, doubling with the file up to 4 MiB at a time (a small log
        reserves little), capped at the segment size. False: write this batch with pwrite
        (the reservation failed; the pwrite path reports a real problem, e.g. ENOSPC, as
        every write failure is reported).
        """
        step = min(max(self.allocated, 64 << 10), 4 << 20)
        target = max(end, min(end + step, self.map_write_limit))
        start = min(self.allocated, pos)
        try:
            if target > start:
                os.posix_fallocate(self.fd, start, target - start)
            wmap = mmap.mmap(self.fd, target, access=mmap.ACCESS_WRITE)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                self.map_writes = False  # this file system cannot reserve: pwrite from now on
            self.allocated = max(self.allocated, os.fstat(self.fd).st_size)
            return False
        self.drop_write_map()
        self._wmap, self._wmap_len = wmap, target
        self.allocated = max(self.allocated, target)
        return True

    @property
    def mapped_bytes(self) -> int:
        """How much of the file the write mapping covers now (0: none)."""
        return self._wmap_len

    def drop_write_map(self) -> None:
        """Close the write mapping (before any truncation: never cut a file under it)."""
        if self._wmap is not None:
            wmap, self._wmap, self._wmap_len = self._wmap, None, 0
            wmap.close()  # never exported (only written by slice assignment)

    def extend(self, end: int) -> None:
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

    def _cut_back(self, pos: int, cause: OSError) -> None:
        self.drop_write_map()
        try:
            self.fs.truncate(self.fd, pos)
            self.allocated = pos
        except OSError as e:
            raise StorageError(
                f"write to {self.path} failed ({cause}) and the partial batch could not be "
                f"removed ({e}); reopen the log to recover", e) from e

    # ------------------------------------------------------------------ housekeeping
    def start_writeback(self, size: int) -> None:
        """Hint the kernel to write out what was written since the last hint (no waiting)."""
        written = size - len(self.pending)
        if written > self.writeback_from:
            try:
                self.fs.start_writeback(self.fd, self.writeback_from,
                                        written - self.writeback_from)
            except OSError:
                return  # only a hint: the fdatasync that matters reports real errors
            self.writeback_from = written

    def trim(self, size: int) -> bool:
        """Cut the preallocated bytes past the data (``size``); True if there were any. Not
        durable until the caller's :meth:`sync`."""
        self.flush(size)
        self.drop_write_map()
        cut = self.allocated > size
        if cut:
            self.fs.truncate(self.fd, size)
        self.allocated = size
        return cut

    def truncate(self, size: int) -> None:
        """Cut the file at ``size`` (recovery of a torn tail) and make that durable."""
        self.drop_write_map()
        self.fs.truncate(self.fd, size)
        self.fs.fdatasync(self.fd)
        self.allocated = size

    def sync(self, size: int) -> None:
        """Write the buffer and ``fdatasync`` the file."""
        self.flush(size)
        self.fs.fdatasync(self.fd)

    def close(self) -> None:
        """Drop the write mapping and close the descriptor."""
        self.drop_write_map()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            self.fs.close(fd)
