"""Cross-process single-writer lock: ``flock(LOCK_EX | LOCK_NB)`` on ``<log>/.lock``.

flock locks belong to an open file description, so a second ``Log.open`` of the same directory
in the *same* process is refused too, and the kernel releases the lock when the holder dies
(even by SIGKILL), so a crash never leaves a stale lock behind. Not for network file systems.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import LogLockedError
from ..format.names import LOCK_NAME



class DirectoryLock:
    """An exclusive lock on a log directory, held until :meth:`release`."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogLockedError(
                    f"{os.path.dirname(self.path)} is already open for writing by another "
                    f"Log (in this or another process); open it with readonly=True to read"
                ) from None
            raise
        # Record the holder for operators (informational only; the flock is the lock).
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
