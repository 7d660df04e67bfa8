"""The I/O seam: every write, fsync, truncate, rename and directory sync the engine performs.

Durability in logstore is made only of the calls below (``pwrite`` + ``fdatasync`` on segment
files, ``fsync`` of directories after creating, renaming or deleting entries). Reads use mmap or
``os.pread`` directly: they cannot lose data. Tests substitute a subclass of :class:`FileSystem`
to count calls, inject ``ENOSPC``/``EIO``, or simulate a power loss that keeps only what was
made durable.
"""

from __future__ import annotations

import fcntl
import os
import sys

TMP_SUFFIX = ".tmp"  # write_file_atomic's temporary file (logstore.format.names.TMP)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class FileSystem:
    """Thin, overridable wrapper over the few system calls that change files."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | _O_BINARY | _O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def pwrite(self, fd: int, data, offset: int) -> None:
        """Write all of ``data`` at ``offset``; short writes are retried, errors raised."""
        done = os.pwrite(fd, data, offset)
        if done == len(data) and type(data) is bytes:
            return
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        total = len(view)
        while done < total:
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:  # pragma: no cover - the kernel reports errors as exceptions
                raise OSError(28, "short write")
            done += n

    def fdatasync(self, fd: int) -> None:
        if sys.platform == "darwin":  # pragma: no cover - fsync on macOS does not reach the disk
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        elif hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover
            os.fsync(fd)

    def fsync(self, fd: int) -> None:
        if sys.platform == "darwin":  # pragma: no cover
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        else:
            os.fsync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Ask the kernel to start writing ``[offset, offset+length)`` to disk, without waiting.

        A hint with no durability meaning (nothing is promised until ``fdatasync``): it spreads
        the disk writes of a segment over the time it is filled, so the fdatasync that seals it
        finds few dirty pages left (RocksDB's ``bytes_per_sync``). Linux ``sync_file_range``
        with ``SYNC_FILE_RANGE_WRITE``; a no-op where that call is missing.
        """
        if _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (created, renamed, deleted files) durable."""
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    # Composite operations: built only from the primitives above so that a test double that
    # overrides the primitives sees (and can fail or drop) every step.

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

        Writes ``path + ".tmp"``, fsyncs it, renames it over ``path`` and fsyncs the directory.
        """
        tmp = path + TMP_SUFFIX
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.replace(tmp, path)
        self.fsync_dir(os.path.dirname(os.path.abspath(path)))

    def makedirs(self, path: str) -> None:
        """Create ``path`` and missing parents, fsyncing each parent so the new entries last."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != path:
            self.makedirs(parent)
        try:
            self.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return
        self.fsync_dir(parent)


#: The file system used unless a test passes another one.
DEFAULT_FS = FileSystem()
