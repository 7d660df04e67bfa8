"""The tail of a log that several processes write (``Log.open(..., shared=True)``).

SQLite's way: the log stays single-writer at any instant, and the write lock is taken per write.
Two small files next to the segments hold what the writing processes share:

``.wlock`` (the write lock and the shared tail)
    ``flock(LOCK_EX)`` around every append, roll, retention or compaction swap, and around a
    writer's open and close. Its first page is mapped by every writer (``MAP_SHARED``) and holds
    the tail: the active segment's base offset, its size in bytes of whole batches, the next
    offset, an *epoch* bumped whenever the segment list changes (roll, retention, compaction),
    the offset every record below which is durable, a *writing* mark set while a batch is being
    written (a writer killed in the middle leaves it set: the next holder cuts the torn bytes, as
    crash recovery would), and a *failed* mark (a failed fsync poisons the log for every
    process: fsyncgate). Writers update the numbers only after the bytes are in the file, under
    the lock, behind a sequence counter (a seqlock) so that a process reading them without the
    lock sees a consistent snapshot.
``.slock`` (the sync lock)
    ``flock(LOCK_EX)`` around the fsync of the tail: the holder reads the tail, fdatasyncs the
    active segment and publishes the durable offset; a process whose records an fsync by another
    process already covered returns without syncing again. N durable writers in several
    processes thus share fsyncs, as threads of one process do (group commit).

The mapped page means nothing after a machine crash or when every writer is gone: the first
writer to open the log (the only holder of its lifetime lock, see ``lockfile``) runs crash
recovery and initialises the page from the recovered segments; later openers join it.

Thread-safety: the owning log serialises its threads (its own lock) before taking these locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

from ..errors import CorruptLogError, StorageError
from ..format.names import (
    CLEAN_LOCK_NAME, SEGMENT_SUFFIXES, SYNC_LOCK_NAME, WRITE_LOCK_NAME, segment_name,
)
from ..fs import FileSystem
from . import loader
from .lockfile import DirectoryLock
from .segment import Segment
from .segments import SegmentList, list_segments
from .tail import RecoveryReport

_MAGIC = 0x4C535457  # "WTSL"
_VERSION = 1
_PAGE = 4096
_HEAD = struct.Struct("<IIQ")  # magic, version, seq (odd while being updated)
_SEQ_AT = 8
_FIELDS = struct.Struct("<16q")
_FIELDS_AT = 16


class Tail(NamedTuple):
    """A consistent snapshot of the shared tail (see the module docstring)."""

    session: int  # a random number set by the writer that initialised the page
    epoch: int  # bumped whenever the segment list changes (roll, retention, compaction)
    active_base: int
    size: int  # bytes of whole batches in the active segment
    next_offset: int
    index_n: int  # valid entries in the active segment's (shared, preallocated) index files
    last_index_pos: int  # position of the last indexed batch
    max_timestamp: int  # of the active segment, -1 if empty
    first_timestamp: int  # of the active segment, -1 if empty
    durable_offset: int  # every record below it is on stable storage
    durable_base: int  # the segment durable_size is about
    durable_size: int  # bytes of that segment known fsynced (batches record it: recovery)
    writing_to: int  # != 0: a batch was being written up to there (maybe torn)
    failed: int  # != 0: an fsync failed in some process: every writer refuses writes
    spare1: int = 0
    spare2: int = 0


class SharedTail:
    """The shared state and locks of one log's writers (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._wfd = -1
        self._sfd = -1
        self._cfd = -1
        self._map: "mmap.mmap | None" = None
        # flock does not exclude threads sharing a descriptor: a thread lock for each file lock.
        self._wthread = threading.Lock()
        self._sthread = threading.Lock()
        self._cthread = threading.Lock()

    def open(self) -> "SharedTail":
        cloexec = getattr(os, "O_CLOEXEC", 0)
        self._wfd = os.open(os.path.join(self.directory, WRITE_LOCK_NAME),
                            os.O_RDWR | os.O_CREAT | cloexec, 0o644)
        try:
            self._sfd = os.open(os.path.join(self.directory, SYNC_LOCK_NAME),
                                os.O_RDWR | os.O_CREAT | cloexec, 0o644)
            self._cfd = os.open(os.path.join(self.directory, CLEAN_LOCK_NAME),
                                os.O_RDWR | os.O_CREAT | cloexec, 0o644)
            if os.fstat(self._wfd).st_size < _PAGE:
                os.ftruncate(self._wfd, _PAGE)  # (its content is set by the first opener)
            self._map = mmap.mmap(self._wfd, _PAGE, access=mmap.ACCESS_WRITE)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        for fd in (self._wfd, self._sfd, self._cfd):
            if fd >= 0:
                os.close(fd)
        self._wfd = self._sfd = self._cfd = -1

    # ------------------------------------------------------------------ locks
    # Each lock is a thread lock (threads of this process) then a flock (other processes).
    def lock_write(self) -> None:
        _take(self._wthread, self._wfd)

    def unlock_write(self) -> None:
        _release(self._wthread, self._wfd)

    def lock_sync(self) -> None:
        _take(self._sthread, self._sfd)

    def unlock_sync(self) -> None:
        _release(self._sthread, self._sfd)

    def lock_clean(self) -> None:
        _take(self._cthread, self._cfd)

    def unlock_clean(self) -> None:
        _release(self._cthread, self._cfd)

    # ------------------------------------------------------------------ the page
    def valid(self) -> bool:
        """Whether a writer of this format initialised the page."""
        magic, version, _seq = _HEAD.unpack_from(self._map, 0)
        return magic == _MAGIC and version == _VERSION

    def read(self) -> Tail:
        """A consistent snapshot (a seqlock: read again while a writer is updating it)."""
        m = self._map
        seq_of = _HEAD.unpack_from
        fields_of = _FIELDS.unpack_from
        while True:
            seq = seq_of(m, 0)[2]
            if seq & 1:
                continue
            fields = fields_of(m, _FIELDS_AT)
            if seq_of(m, 0)[2] == seq:
                return Tail(*fields)

    def write(self, tail: Tail) -> None:
        """(write lock held) Publish ``tail``: readers see the old one or the new one, whole."""
        m = self._map
        seq = _HEAD.unpack_from(m, 0)[2]
        _HEAD.pack_into(m, 0, _MAGIC, _VERSION, seq | 1)
        _FIELDS.pack_into(m, _FIELDS_AT, *tail)
        _HEAD.pack_into(m, 0, _MAGIC, _VERSION, (seq | 1) + 1)


ROLLING = -1  # writing_to while a writer rolls to a new segment
MAX_GATHER_S = 0.002  # the longest a shared fsync waits for other writers' appends


class SharedWriter:
    """One process's writer of a shared log: the segment list kept in step with the shared tail
    (the log's own lock held by the caller around every call).

    ``enter()`` takes the write lock and brings this process's view up to date: the batches
    others appended (adopted in O(1): their index entries are in the shared index mappings), a
    segment list others changed (an epoch change: rolls, retention, compaction are re-read from
    the directory), a torn batch a killed writer left (cut, as crash recovery would). ``leave()``
    publishes what this process appended and releases the lock.
    """

    def __init__(self, segs: SegmentList, tail: SharedTail, lock: DirectoryLock):
        self.segs = segs
        self.tail = tail
        self.lock = lock
        self.epoch = -1
        self.session = 0
        self.gather_s = 0.0  # half this process's last fdatasync (see sync)
        self.first = False  # (after open) no other writer had the log open: this one recovered

    # ------------------------------------------------------------------ opening
    def open(self, index_capacity: int) -> Optional[RecoveryReport]:
        """(shared write lock held by the caller) Join the log's writers: the first one
        recovers it and initialises the tail, the others adopt the tail."""
        first = self.lock.acquire_shared()
        self.first = first or not self.tail.valid()
        if self.first:
            report = loader.open_for_writing(self.segs, index_capacity)
            active = self.segs.active
            size, nxt, index_n, last_pos, max_ts, first_ts = active.shared_state()
            self.session = int.from_bytes(os.urandom(8), "little") >> 1
            self.epoch = 1
            self.tail.write(Tail(self.session, self.epoch, active.base_offset, size, nxt,
                                 index_n, last_pos, max_ts, first_ts, nxt, active.base_offset,
                                 size, 0, 0))
            return report
        t = self.tail.read()
        self.session = t.session
        self._resync(t)
        return None

    def _resync(self, t: Tail) -> None:
        """The segment list changed (or this writer just joined): read it again from the
        directory; the active segment is opened as the tail says."""
        segs = self.segs
        old = {seg.base_offset: seg for seg in segs.items}
        for seg in segs.items:
            seg.retired = True  # readers holding one relocate by offset
            seg.close()
        segs.items, segs.bases = [], []
        bases = [b for b in list_segments(segs.directory) if b <= t.active_base]
        if not bases or bases[-1] != t.active_base:
            raise CorruptLogError(f"the shared tail names segment {t.active_base}, which is "
                                  f"not in {segs.directory}", segs.directory)
        segs.open_sealed(bases)
        active = segs.new_segment(t.active_base)
        active.open_shared_active(_state(t))
        segs.add(active)
        del old
        self.epoch = t.epoch

    # ------------------------------------------------------------------ writing
    def enter(self, writing: bool = True) -> Tail:
        """Take the write lock and catch up with the other writers; returns the tail.
        ``writing``: refuse (StorageError) if an fsync failed in another process, and tell the
        active segment how much of it is durable (the next batch records it)."""
        tail = self.tail
        tail.lock_write()
        try:
            t = tail.read()
            if t.epoch != self.epoch:
                self._resync(t)
            else:
                self.segs.active.adopt(*_state(t))
            if t.writing_to > 0:
                # A writer died in the middle of a batch. What it wrote whole is kept (as crash
                # recovery keeps whole batches); a torn rest is cut off. Never acknowledged.
                active = self.segs.active
                active.catch_up()
                if os.fstat(active.fd).st_size > active.size:
                    active.truncate_to(active.size)
                size, nxt, index_n, last_pos, max_ts, first_ts = active.shared_state()
                t = t._replace(size=size, next_offset=nxt, index_n=index_n,
                               last_index_pos=last_pos, max_timestamp=max_ts,
                               first_timestamp=first_ts, writing_to=0)
                tail.write(t)
            if writing:
                if t.failed:
                    raise StorageError(f"an fsync of {self.segs.directory} failed in another "
                                       f"process: the log refuses writes until reopened")
                self.segs.active.synced_size = (t.durable_size if t.durable_base == t.active_base
                                                else 0)
            return t
        except BaseException:
            tail.unlock_write()
            raise

    def follow(self) -> Tail:
        """Catch up with the other writers without the write lock when the segment list did
        not change (the tail's numbers are a consistent snapshot), with it when it did."""
        t = self.tail.read()
        if t.epoch == self.epoch and t.writing_to != ROLLING:
            self.segs.active.adopt(*_state(t))
            return t
        t = self.enter(writing=False)
        self.leave(t)
        return t

    def rolling(self, next_offset: int) -> None:
        """(lock held) This writer is about to roll to a segment at ``next_offset``: say so (a
        writer killed in the middle leaves the mark, and the next one finishes the roll) and
        remove the files a writer killed in the middle of the same roll may have left."""
        t = self.tail.read()
        self.tail.write(t._replace(writing_to=ROLLING))
        fs = self.segs.fs
        for suffix in SEGMENT_SUFFIXES:
            try:
                fs.unlink(os.path.join(self.segs.directory, segment_name(next_offset, suffix)))
            except FileNotFoundError:
                pass

    def writing(self, t: Tail, end: int) -> Tail:
        """(lock held) A batch is about to be written up to byte ``end`` of the active segment."""
        t = t._replace(writing_to=end)
        self.tail.write(t)
        return t

    def leave(self, t: Tail) -> None:
        """(lock held) Publish this process's appends (if any) and release the write lock. A
        roll mark left by a killed writer stays until a writer finishes that roll."""
        try:
            active = self.segs.active
            rolled = active.base_offset != t.active_base
            if rolled:
                self.epoch += 1  # this process rolled: the others must re-read the list
            writing = t.writing_to if t.writing_to == ROLLING and not rolled else 0
            size, nxt, index_n, last_pos, max_ts, first_ts = active.shared_state()
            if (size, nxt, active.base_offset, self.epoch, writing) != (
                    t.size, t.next_offset, t.active_base, t.epoch, t.writing_to):
                self.tail.write(t._replace(
                    epoch=self.epoch, active_base=active.base_offset, size=size,
                    next_offset=nxt, index_n=index_n, last_index_pos=last_pos,
                    max_timestamp=max_ts, first_timestamp=first_ts, writing_to=writing,
                    durable_offset=max(t.durable_offset, self._durable_after_roll(t, active)),
                    durable_base=active.base_offset if rolled else t.durable_base,
                    durable_size=0 if rolled else t.durable_size))
        finally:
            self.tail.unlock_write()

    @staticmethod
    def _durable_after_roll(t: Tail, active: Segment) -> int:
        # A roll fsyncs the sealed segment first: everything before the new one is durable.
        return active.base_offset if active.base_offset != t.active_base else t.durable_offset

    def segments_changed(self) -> None:
        """(lock held) Retention or compaction changed the segment list: bump the epoch."""
        self.epoch += 1
        t = self.tail.read()
        self.tail.write(t._replace(epoch=self.epoch))

    def fail(self) -> None:
        """(an fsync failed here) Poison the log for every writer (fsyncgate)."""
        self.tail.lock_write()
        try:
            self.tail.write(self.tail.read()._replace(failed=1))
        finally:
            self.tail.unlock_write()

    # ------------------------------------------------------------------ durability
    def sync(self, fs: FileSystem, wanted: int) -> int:
        """Make every record below ``wanted`` durable, sharing fsyncs with the other processes:
        under the sync lock, return at once if another process's fsync already covered them;
        else fdatasync the tail's active segment and publish the new durable offset."""
        tail = self.tail
        tail.lock_sync()
        try:
            t = tail.read()
            if t.failed:
                raise StorageError(f"an fsync of {self.segs.directory} failed in another "
                                   f"process: the log refuses writes until reopened")
            if t.durable_offset >= wanted:
                return t.durable_offset  # covered by another process's fsync
            if t.next_offset > wanted and self.gather_s:
                # Other writers are appending too. Those the last fsync released are about to
                # append again: wait a moment (at most half an fsync) so this one covers them
                # as well, the cross-process form of group commit's gather. A lone writer
                # never waits (nothing beyond its own records).
                time.sleep(self.gather_s)
                t = tail.read()
            path = os.path.join(self.segs.directory, segment_name(t.active_base))
            try:
                fd = fs.open(path, os.O_RDONLY)
                try:
                    began = time.monotonic()
                    fs.fdatasync(fd)
                    self.gather_s = min((time.monotonic() - began) / 2, MAX_GATHER_S)
                finally:
                    fs.close(fd)
            except StorageError:
                raise
            except OSError:
                self.fail()  # fsyncgate: for every process
                raise
            tail.lock_write()
            try:
                now = tail.read()
                if t.next_offset > now.durable_offset:
                    same = now.active_base == t.active_base
                    now = now._replace(durable_offset=t.next_offset,
                                       durable_base=t.active_base,
                                       durable_size=t.size if same else now.durable_size)
                    tail.write(now)
                return now.durable_offset
            finally:
                tail.unlock_write()
        finally:
            tail.unlock_sync()

    def durable_offset(self) -> int:
        return self.tail.read().durable_offset

    def synced_size(self) -> int:
        """Bytes of the active segment known durable (batches record it, for recovery)."""
        t = self.tail.read()
        return t.durable_size if t.durable_base == t.active_base else 0

    # ------------------------------------------------------------------ closing
    def close(self, clean: Callable[[Segment, int], None], sync: Callable[[], None]) -> None:
        """Leave the log: the last writer closes it cleanly (``clean``: the clean-shutdown
        marker), the others make their own appends durable (``sync``) and go."""
        tail = self.tail
        tail.lock_write()
        try:
            t = tail.read()
            if t.epoch != self.epoch:
                self._resync(t)
            else:
                self.segs.active.adopt(*_state(t))
            if self.lock.last_writer() and not t.writing_to and not t.failed:
                clean(self.segs.active, t.next_offset)
                tail.write(t._replace(session=0))  # the next opener recovers from the files
            else:
                sync()
        finally:
            tail.unlock_write()
            tail.close()


@contextlib.contextmanager
def cleaning(shared: Optional[SharedWriter]) -> Iterator[None]:
    """One retention or compaction pass at a time across the writers of a shared log (nothing
    to take for the only writer: its own cleaner lock suffices)."""
    if shared is None:
        yield
        return
    shared.tail.lock_clean()
    try:
        yield
    finally:
        shared.tail.unlock_clean()


@contextlib.contextmanager
def swapping(lock: threading.Lock, shared: Optional[SharedWriter]) -> Iterator[None]:
    """What a cleaner holds while it swaps segments: the log's lock and, for a shared log, the
    write lock, with the other writers told afterwards that the segment list changed."""
    with lock:
        if shared is None:
            yield
            return
        t = shared.enter()
        try:
            # Bumped first too: a cleaner killed half-way (a segment renamed away, the write lock
            # released by its death) leaves the new epoch, so the others list the directory again.
            shared.segments_changed()
            yield
            shared.segments_changed()
        finally:
            shared.leave(t)


def _state(t: Tail) -> Tuple[int, int, int, int, int, int]:
    return (t.size, t.next_offset, t.index_n, t.last_index_pos, t.max_timestamp,
            t.first_timestamp)


def _take(thread_lock: threading.Lock, fd: int) -> None:
    """Take ``thread_lock``, then the flock of ``fd`` (the thread lock released if that fails)."""
    thread_lock.acquire()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        thread_lock.release()
        raise


def _release(thread_lock: threading.Lock, fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        thread_lock.release()
