"""The writers' lifetime lock on ``<log>/.lock`` (``flock``).

A writer opened without ``shared=True`` holds ``LOCK_EX`` for its lifetime: the only writer.
Writers of a shared log (``Log.open(..., shared=True)``) each hold ``LOCK_SH``; they serialise
their writes with the per-write lock of ``logstore.storage.shared``. So the two modes exclude
each other, and the error names which one holds the log. flock locks belong to an open file
description, so a second open of the same directory in the *same* process is refused too, and
the kernel releases the lock when the holder dies (even by SIGKILL), so a crash never leaves a
stale lock behind. Not for network file systems.

Which shared writer is the first (it recovers the log and initialises the shared tail) and
which the last (it writes the clean-shutdown marker) is told by a second lock, on
``.writers``, taken only by shared writers while they hold the shared write lock
(``.wlock``): ``LOCK_EX`` succeeding means nobody else is there.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import LogLockedError
from ..format.names import LOCK_NAME, WRITERS_NAME



class DirectoryLock:
    """An exclusive lock on a log directory, held until :meth:`release`."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None
        self._writers_fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        """Become the only writer (LogLockedError naming the holder otherwise)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            shared = _try(fd, fcntl.LOCK_SH)  # taken: only shared writers hold it
            if shared:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._locked_error(shared) from None
        # Record the holder for operators (informational only; the flock is the lock).
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def acquire_shared(self) -> bool:
        """Become one of the writers of a shared log (the caller holds the shared write lock).
        Returns True if no other writer holds it (this one recovers the log and initialises the
        shared tail), False if it joins others. LogLockedError if a writer opened without
        ``shared=True`` holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if not _try(fd, fcntl.LOCK_SH):
                raise self._locked_error(False)
            wfd = os.open(os.path.join(os.path.dirname(self.path), WRITERS_NAME),
                          os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except BaseException:
            os.close(fd)
            raise
        first = _try(wfd, fcntl.LOCK_EX)
        if first:
            fcntl.flock(wfd, fcntl.LOCK_SH)  # (only shared writers, under .wlock, take it)
        else:
            fcntl.flock(wfd, fcntl.LOCK_SH)
        self._fd, self._writers_fd = fd, wfd
        return first

    def last_writer(self) -> bool:
        """(a shared writer closing, holding the shared write lock) Whether no other shared
        writer holds the log."""
        if self._writers_fd is None:
            return True
        return _try(self._writers_fd, fcntl.LOCK_EX)

    def _locked_error(self, shared_holders: bool) -> LogLockedError:
        where = os.path.dirname(self.path)
        pid = ""
        try:
            with open(self.path, "rb") as f:
                pid = f.read(32).decode("ascii", "replace").strip()
        except OSError:
            pass
        if shared_holders:
            return LogLockedError(
                f"{where} is open for writing by processes that opened it with shared=True; "
                f"open it with shared=True to write beside them, or readonly=True to read")
        return LogLockedError(
            f"{where} is already open for writing by another writer (pid {pid or '?'}, opened "
            f"without shared=True: the only writer); open it with readonly=True to read")

    def release(self) -> None:
        if self._writers_fd is not None:
            wfd, self._writers_fd = self._writers_fd, None
            os.close(wfd)  # (closing the descriptor releases its flock)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _try(fd: int, kind: int) -> bool:
    """``flock(fd, kind | LOCK_NB)``: True if taken, False if another holder prevents it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
