"""How a writer starts, rolls and stops: the directory lock, the metadata, recovery, a roll to
a new segment, the clean close.

Two ways to write a log: the only writer (an exclusive directory lock; the single-process
fast path) or one of several writers in any number of processes (``shared=True``: a shared
lock, the shared tail of :mod:`logstore.storage.shared`). Both start the same way (metadata
created or read, the stored settings settled, recovery of the last segment) and end the same
way (a clean-shutdown marker, written by the last writer only when nothing failed).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

from ..config import LogConfig
from ..errors import ConfigError, NotALogError, StorageError
from ..format.names import META_NAME
from ..fs import FileSystem
from . import loader, meta
from .lockfile import DirectoryLock
from .segment import Segment
from .segments import SegmentList
from .shared import SharedTail, SharedWriter
from .sizing import index_capacity
from .sync import GroupCommit
from .tail import RecoveryReport


class WriterStart(NamedTuple):
    """What opening a writer found and holds."""

    meta: Dict[str, Any]
    config: LogConfig  # the stored settings with the caller's options (checked under the lock)
    report: Optional[RecoveryReport]
    lock: DirectoryLock
    shared: Optional[SharedWriter]  # None: the only writer
    next_offset: int
    durable_offset: int


def checked_path(path: Any, readonly: bool, shared: bool, options: Mapping[str, Any],
                 what: str = "log") -> str:
    """The absolute directory of a ``Log.open``/``Store.open`` (checked before anything is
    created): a ``str`` or ``os.PathLike[str]`` naming something (TypeError for bytes or other
    types, ConfigError for an empty path), and options that go together."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        raise TypeError(f"the {what} path must be a str or os.PathLike[str], not "
                        f"{type(path).__name__} (decode it first: os.fsdecode(path))")
    try:
        raw = os.fspath(path)
    except TypeError:
        raise TypeError(f"the {what} path must be a str or os.PathLike[str], not "
                        f"{type(path).__name__}") from None
    if not isinstance(raw, str):
        raise TypeError(f"the {what} path must be a str or os.PathLike[str]: "
                        f"{type(path).__name__} gave {type(raw).__name__}")
    if not raw:
        raise ConfigError(f"the {what} path is empty (use \".\" for the current directory)")
    if shared and readonly:
        raise ConfigError("shared=True is for writers; a readonly=True open needs no lock")
    if shared and options.get("write_buffer_bytes"):
        raise ConfigError("write_buffer_bytes is not available with shared=True: every append "
                          "must be in the file before another process appends")
    return os.path.abspath(raw)


def reader_meta(path: str) -> Dict[str, Any]:
    """The metadata of the log a read-only opener opens (NotALogError if there is none: a
    read-only open never creates a log)."""
    if not os.path.isdir(path):
        raise NotALogError(f"{path} does not exist or is not a directory (read-only opens "
                           f"never create a log)")
    found = meta.read_meta(path)
    if found is None:
        raise NotALogError(f"{path} has no {META_NAME}: not a logstore log")
    return found


def _settle(path: str, fs: FileSystem, segs: SegmentList, config: LogConfig,
            options: Mapping[str, Any]) -> tuple[Dict[str, Any], LogConfig]:
    """(lock held) The metadata (created for a new log) and the settled configuration: the
    settings may have changed since the caller first read them, without the lock."""
    found = loader.meta_for_writer(path, fs, config)
    settled = loader.settled_config(path, options, found)
    loader.store_missing_settings(path, fs, found, settled)
    segs.index_interval = settled.index_interval_bytes
    return found, settled


def _close_all(segs: SegmentList) -> None:
    for seg in segs.items:
        seg.close()


def start_writer(path: str, fs: FileSystem, segs: SegmentList, config: LogConfig,
                 options: Mapping[str, Any]) -> WriterStart:
    """Take the directory lock (LOCK_EX), settle the settings and recover the log in ``segs``.
    Everything taken is released if anything fails."""
    lock = DirectoryLock(path).acquire()
    try:
        found, settled = _settle(path, fs, segs, config, options)
        report = loader.open_for_writing(segs, index_capacity(settled))
    except BaseException:
        _close_all(segs)
        lock.release()
        raise
    nxt = segs.active.next_offset
    return WriterStart(found, settled, report, lock, None, nxt, nxt)


def start_shared_writer(path: str, fs: FileSystem, segs: SegmentList, config: LogConfig,
                        options: Mapping[str, Any]) -> WriterStart:
    """Join the writers of a shared log under its write lock (the first one recovers it).
    Everything taken is released if anything fails."""
    tail = SharedTail(path).open()
    tail.lock_write()
    lock = DirectoryLock(path)
    try:
        found, settled = _settle(path, fs, segs, config, options)
        shared = SharedWriter(segs, tail, lock)
        report = shared.open(index_capacity(settled))
        t = tail.read()
    except BaseException:
        _close_all(segs)
        lock.release()
        tail.unlock_write()
        tail.close()
        raise
    tail.unlock_write()
    return WriterStart(found, settled, report, lock, shared, t.next_offset, t.durable_offset)


def _no_clean_close(active: Segment, next_offset: int) -> None:
    """(a shared log's last writer after a failure) No clean-shutdown marker: the next open
    recovers the log."""


def finish_writer(segs: SegmentList, shared: Optional[SharedWriter], next_offset: int,
                  problem: Optional[BaseException]) -> Optional[BaseException]:
    """(log lock held, everything appended already flushed unless ``problem``) End a writer:
    the clean-shutdown marker when nothing failed (for a shared log, by its last writer only:
    the others make their own appends durable, their close being their durability point).
    Returns the problem to report (the given one, or what failed now)."""
    active = segs.active
    if active.pending and problem is None:
        problem = StorageError(f"{len(active.pending)} buffered bytes of {segs.directory} "
                               f"could not be written")
    if shared is not None:
        try:
            shared.close(loader.close_cleanly if problem is None else _no_clean_close,
                         lambda: segs.active.sync())
        except OSError as e:
            problem = problem or e
    elif problem is None:
        try:
            loader.close_cleanly(active, next_offset)
        except OSError as e:
            problem = e
    return problem


def roll(segs: SegmentList, shared: Optional[SharedWriter], next_offset: int, capacity: int,
         configure: Callable[[Segment], None], sync: GroupCommit) -> None:
    """(log lock held) Seal the active segment durably (trimmed, fsynced, indexes sealed), then
    create the next one at ``next_offset`` and fsync the directory: only the last segment can
    ever need recovery. ``configure`` sets up the new active segment's writer.

    Whatever stops a roll (an I/O error, or an interrupt such as ^C between two of its steps)
    leaves the log between two states: ``sync`` is poisoned, so writes are refused until a
    reopen recovers it. The cause is raised as it is (KeyboardInterrupt stays one); an OSError
    becomes a StorageError.
    """
    old = segs.active
    try:
        if shared is not None:
            shared.rolling(next_offset)  # (a kill from here on: the next writer finishes it)
        old.trim()
        old.sync()
        old.seal()
        new = Segment.create(segs.directory, next_offset, segs.fs, segs.index_interval, capacity)
    except BaseException as e:
        sync.fail(e)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(f"rolling to a new segment failed: {e}", e) from e
        raise
    configure(new)
    segs.add(new)
    try:
        segs.fs.fsync_dir(segs.directory)
    except BaseException as e:
        sync.fail(e)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(f"fsync of directory {segs.directory} failed: {e}", e) from e
        raise
    sync.advance(next_offset)


def release(segs: SegmentList, lock: Optional[DirectoryLock], release_files: bool = True) -> None:
    """(log lock held) Let go of the segments' files (or only their mappings: a simulated power
    cut took the descriptors already) and of the directory lock. Never raises OSError."""
    for seg in segs.items:
        try:
            if release_files:
                seg.close()
            else:
                seg.close_mappings()
        except OSError:
            pass
    if lock is not None:
        lock.release()
