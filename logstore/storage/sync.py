"""Group commit: durable appends from many threads share ``fdatasync`` calls.

Appenders write under the log's lock, then call :meth:`GroupCommit.sync_to` with the offset they
need durable. One thread at a time (the leader) runs ``fdatasync`` for everybody; the others park
until an fsync covers their records. Parked threads wait on a lock of their own rather than on a
shared Condition: the leader wakes exactly the threads its fsync covered, and they return without
re-taking the sync lock (a Condition would wake each twice, once for its own lock and once for
the shared one: with 4 durable threads that doubled the time between fsyncs). Before syncing, a
leader waits briefly for the threads the last fsync released to append again (the gather), so
that one fsync covers them all: N concurrent durable appenders cost about one fsync per round.

A failed fsync poisons the log (:attr:`GroupCommit.failed`): after it the kernel may have dropped
the unsynced pages, so nothing written since the last good fsync may be called durable
("fsyncgate"); every later write and wait raises :class:`StorageError` until the log is reopened.

Thread-safety: all state is guarded by :attr:`GroupCommit.lock` (the "sync lock"), never held
while the log's lock is taken by the same thread in the other order (the snapshot takes the log
lock with the sync lock released).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from ..errors import StorageError
from ..fs import FileSystem

if TYPE_CHECKING:
    from .segment import Segment

# What the leader syncs: (offset every record below which the fsync covers, a dup()ed fd of the
# file to fdatasync, a callback run after a successful fdatasync). Taken under the log's lock.
Snapshot = Callable[[], Tuple[int, int, Callable[[], None]]]


class GroupCommit:
    """The durable offset of one log and the threads waiting for it (see the module docstring)."""

    def __init__(self, path: str, fs: FileSystem, snapshot: Snapshot):
        self._path = path
        self._fs = fs
        self._snapshot = snapshot
        self.lock = threading.Lock()
        self._waiters: List[Tuple[int, Any]] = []  # (target offset, parked lock)
        self._syncing = False
        self._returning = 0  # threads the last fsync released, not yet back in sync_to
        self._gather_waker: Any = None  # the next leader parks here while gathering
        self.last_fsync_s = 0.0
        self.failed: Optional[BaseException] = None
        self.durable_offset = 0  # every record below it is on stable storage
        # A shared log (several processes) fsyncs through this instead of the snapshot: it
        # returns the offset now durable (maybe covered by another process's fsync).
        self.shared_sync: Optional[Callable[[], int]] = None

    @property
    def waiting(self) -> int:
        """Threads parked until an fsync covers their records (tests and diagnostics)."""
        return len(self._waiters)

    def fail(self, e: BaseException) -> None:
        """Poison the log with ``e`` (the first failure is kept)."""
        if self.failed is None:
            self.failed = e

    def advance(self, offset: int) -> None:
        """Everything below ``offset`` became durable by other means (a roll's seal fsync):
        publish it and release the waiters it covers."""
        with self.lock:
            if offset > self.durable_offset:
                self.durable_offset = offset
            self.wake_locked(wake_all=False)

    def sync_to(self, target: int) -> None:
        """Return once every offset below ``target`` is durable (group commit).

        One thread at a time (the leader) runs ``fdatasync``; the others park until an fsync
        covers their records. Before syncing, a leader waits briefly for the threads the last
        fsync released to append again (the gather), so that one fsync covers them all.
        """
        lock = self.lock
        returning = True
        while True:
            with lock:
                if returning and self._returning:
                    self._returning -= 1
                    if self._returning == 0 and self._gather_waker is not None:
                        self._gather_waker.release()  # everybody is back: sync now
                        self._gather_waker = None
                returning = False
                while True:
                    if self.durable_offset >= target:
                        return
                    if self.failed is not None:
                        raise StorageError(
                            f"fsync of {self._path} failed earlier ({self.failed}); records "
                            f"from offset {self.durable_offset} on may not be durable. Reopen "
                            f"the log to recover", self.failed)
                    if self._syncing:
                        break
                    self._syncing = True
                    if self._returning:
                        try:
                            self._gather_locked()
                        except BaseException:  # (an interrupt while waiting) hand over
                            self._syncing = False
                            self.wake_locked(wake_all=True)
                            raise
                    self._lead_locked()
                parked = threading.Lock()
                parked.acquire()
                self._waiters.append((target, parked))
            # Parked outside the sync lock until a leader releases this thread: its fsync
            # covered ``target`` (return without re-taking the lock), it failed, or this thread
            # is to lead the next one.
            try:
                parked.acquire()
            except BaseException:  # (an interrupt while parked) leave, and pass on the lead
                with lock:
                    self._waiters = [w for w in self._waiters if w[1] is not parked]
                    if self._waiters and not self._syncing:
                        self._waiters.pop(0)[1].release()
                raise
            if self.durable_offset >= target:
                return

    def _lead_locked(self) -> None:
        """(sync lock held, ``_syncing`` set by the caller) fdatasync everything written so
        far, outside the sync lock; then publish the new durable offset and wake the threads it
        covers. Leaves ``_syncing`` clear and the sync lock held, whatever happens."""
        lock = self.lock
        lock.release()
        error: Optional[BaseException] = None
        synced = False
        upto = 0
        try:
            # A failed *write* of a write buffer raises StorageError from the snapshot: the
            # buffer is kept and retried later, and the log is not poisoned (nothing was
            # reported durable). Only fsync failures poison it.
            started = time.monotonic()
            if self.shared_sync is not None:
                try:
                    upto = self.shared_sync()
                    synced = True
                except OSError as e:  # (a StorageError too: another process's fsync failed)
                    error = e
            else:
                upto, fd, after_sync = self._snapshot()
                try:
                    self._fs.fdatasync(fd)
                    synced = True
                except StorageError:
                    raise
                except OSError as e:
                    error = e
                finally:
                    self._fs.close(fd)
                if synced:
                    after_sync()
            if synced:
                self.last_fsync_s = time.monotonic() - started
        finally:
            lock.acquire()
            self._syncing = False
            if error is not None:
                self.fail(error)
            elif synced and upto > self.durable_offset:
                self.durable_offset = upto
            # Unless it synced, every parked thread wakes: to see the error, or to lead.
            self._returning = self.wake_locked(wake_all=not synced) + 1

    def wake_locked(self, wake_all: bool) -> int:
        """(sync lock held) Release the parked threads the durable offset now covers (every
        one with ``wake_all``), and one more to lead the next fsync if some still wait and
        nobody is syncing. Return how many were released as covered."""
        waiters = self._waiters
        if not waiters:
            return 0
        durable = self.durable_offset
        still: List[Tuple[int, Any]] = []
        released = 0
        for target, parked in waiters:
            if wake_all or target <= durable:
                parked.release()
                released += 1
            else:
                still.append((target, parked))
        if still and not self._syncing:
            still.pop(0)[1].release()  # it takes the lead
        self._waiters = still
        return released

    def _gather_locked(self) -> None:
        """(sync lock held, about to fsync) Wait up to half an fsync for the threads the last
        fsync released to append again, so that this fsync covers their records too."""
        waker = threading.Lock()
        waker.acquire()
        self._gather_waker = waker
        self.lock.release()
        try:
            waker.acquire(timeout=min(self.last_fsync_s / 2, 0.002))
        finally:
            self.lock.acquire()
            self._gather_waker = None
            self._returning = 0


def sync_snapshot(seg: "Segment", next_offset: int, fs: FileSystem
                  ) -> Tuple[int, int, Callable[[], None]]:
    """(log lock held) What an fdatasync of the active segment ``seg`` now covers: the next
    offset, a dup()ed fd of the segment (the log may roll meanwhile), and what to record once
    it succeeded (batches written later record how much of the file is durable: recovery)."""
    seg.flush_pending()
    pos = seg.size
    fd = fs.dup(seg.fd)

    def synced() -> None:
        if pos > seg.synced_size:
            seg.synced_size = pos

    return next_offset, fd, synced
