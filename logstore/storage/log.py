"""The public :class:`Log`: a directory of segments with one writer and any number of readers.

Theory of operation
-------------------
* Offsets are dense, start at 0 and are never reused. ``_next_offset`` is the next one to assign.
* Appends are encoded (columns, compression) *outside* the log's lock, then framed (base offset,
  CRC32C) and written with one ``pwrite`` at the end of the active segment *inside* it. A write
  that fails is cut back off the file: a partial batch is never visible.
* Durability (fsync policy) is tracked as ``_durable_offset``: everything below it is on stable
  storage. With ``fsync="always"`` an appender waits until its batch is below it. One thread at
  a time runs ``fdatasync`` for everybody who is waiting (group commit), so N concurrent durable
  appenders cost about one fsync per round, not N. A failed fsync poisons the log: every later
  write raises :class:`StorageError` until it is reopened (fsyncgate).
* Under ``fsync="always"`` readers in this process see only durable records (like Kafka's high
  watermark): nothing a reader saw can vanish in a crash. Under the other policies they see what
  was written.
* Segments roll when the next batch would pass ``segment_bytes`` or the active segment's first
  batch is ``segment_ms`` older than the new one. Rolling fsyncs the old segment and its indexes
  before creating the next file, so only the last segment can ever need recovery
  (see :mod:`logstore.storage.loader`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from itertools import chain
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..config import LogConfig
from ..errors import (
    ConfigError, CorruptLogError, ForkedProcessError, LogClosedError, LogLockedError,
    MissingKeyError, ReadOnlyError, RecordTooLargeError, StorageError,
)
from ..format.decode import DecodedBatch
from ..format.encode import (
    PreparedBatch, batch_sequences, check_batch_shape, check_timestamp, frame, frame_single,
    prepare_batch, prepare_from_buffer, prepare_one,
)
from ..format.header import CODEC_NONE, HEADER_SIZE, codec_id
from ..format.names import COMPACTION_COMMIT
from ..fs import DEFAULT_FS, FileSystem
from .. import process
from ..record import Record
from ..util import check_offset, now_ms, storage_errors
from . import background, cleaner, key_replay, lifecycle, loader, meta
from .sizing import index_capacity
from .lockfile import DirectoryLock
from .retention import delete_expired
from .segment import MAX_RELATIVE_OFFSET, Segment
from .reading import (
    GapRule, ReadHooks, batches, current_end, get_many,
    offset_at_time, read_range, record_at, records, replay_bounds,
)
from .segments import SegmentList
from .shared import ROLLING, SharedWriter, cleaning, swapping
from .sync import GroupCommit, sync_snapshot
from .tail import RecoveryReport

DEFAULT_MAX_RECORDS = 1000


class Log:
    """An append-only, segmented, crash-safe log of records in one directory.

    Open with :meth:`Log.open`. One writer per directory (a second gets
    :class:`~logstore.errors.LogLockedError`); any number of ``readonly=True`` openers, in any
    process, which see new records as they are appended. Thread-safe.
    """

    # ------------------------------------------------------------------ opening
    def __init__(self, directory: str, config: LogConfig, fs: FileSystem, readonly: bool,
                 shared: bool = False):
        self.path = directory
        self.config = config
        self.readonly = readonly
        self.shared = shared
        self._shared: Optional[SharedWriter] = None  # set by a shared writer's open
        self._follows = readonly or shared  # reads catch up with other processes' writes
        self._fs = fs
        # Reentrant: a transaction (see transaction()) reads and appends under it.
        self._lock = threading.RLock()
        self._txn: Optional[Any] = None  # the shared tail while a transaction holds it
        self._in_txn = False  # (only the thread holding the lock can see it True)
        self._sync = GroupCommit(directory, fs, self._sync_snapshot)
        self._closed = False
        self._segs = SegmentList(directory, fs, config.index_interval_bytes, not readonly,
                                 self._lock)
        self._next_offset = 0
        self._gaps = GapRule(directory, readonly)
        self._hooks = ReadHooks(self._lock, self._segs, self._check_open,
                                self._refresh_locked if readonly else None,
                                self._gaps.gaps_allowed, self._gaps.check,
                                self._caught_up_end_locked)
        self._dir_lock: Optional[DirectoryLock] = None
        self._always = config.fsync == "always" and not readonly
        self._threads = background.Threads(directory)
        self._cleaner_lock = threading.Lock()  # one retention/compaction pass at a time
        self._pid = os.getpid()
        self._forked = False
        self._exit_flush: Optional[weakref.finalize] = None
        self.meta: Dict[str, Any] = {}
        self.recovery_report: Optional[RecoveryReport] = None
        # A writer that found no other writer (it recovered the log): always, unless shared.
        self.first_writer = False
        self._apply_config(config)

    def _apply_config(self, config: LogConfig) -> None:
        """Take ``config`` (at open, and from ``configure``), with the copies of settings read on
        every append (attribute lookups on the hot path)."""
        self.config = config
        self._codec = codec_id(config.compression)
        self._gaps.allowed = config.compacted or bool(
            self.meta.get("settings", {}).get("compacted"))
        self._allow_keyless = not config.compacted
        self._max_record_bytes = config.max_record_bytes
        self._segment_bytes = config.segment_bytes
        self._segment_ms = config.segment_ms
        self._fsync_records = config.fsync_records
        self._index_capacity = index_capacity(config)
        self._segs.index_interval = config.index_interval_bytes

    @classmethod
    def open(
        cls,
        path: "str | os.PathLike[str]",
        *,
        readonly: bool = False,
        shared: bool = False,
        fs: Optional[FileSystem] = None,
        **options: Any,
    ) -> "Log":
        """Open (creating if needed, unless ``readonly``) the log in directory ``path``.

        ``options`` are the fields of :class:`~logstore.config.LogConfig` (``fsync``,
        ``fsync_records``, ``fsync_ms``, ``compression``, ``segment_bytes``, ``segment_ms``,
        ``index_interval_bytes``, ``max_record_bytes``...); unknown names raise
        :class:`~logstore.errors.ConfigError`. ``shared=True``: one of several writers, in any
        number of processes (see README, "Many processes"); without it the only writer.
        ``fs`` replaces the I/O layer (tests only).
        """
        directory = lifecycle.checked_path(path, readonly, shared, options)
        # The stored settings win; a passed one that differs is refused before anything changes.
        config = loader.settled_config(directory, options)
        log = cls(directory, config, fs or DEFAULT_FS, readonly, shared)
        try:
            if readonly:
                log._open_reader()
            else:
                log._open_writer(options)
        except (StorageError, LogLockedError):
            raise
        except OSError as e:
            raise StorageError(f"opening {directory} failed: {e}", e) from e
        process.register(log)
        if not readonly and config.write_buffer_bytes:
            # Buffered appends are written out at a normal exit, or when the object is dropped
            # unclosed, as a file object's buffer is (never in a forked child: pid checked).
            log._exit_flush = weakref.finalize(log, background.write_buffer_out, log._segs, log._lock,
                                               log._pid)
        return log

    def mark_forked(self) -> None:
        """(In a forked child, by :mod:`logstore.process`) Refuse every call from now on."""
        self._forked = True
        self._closed = True
        if self._exit_flush is not None:
            self._exit_flush.detach()

    @property
    def settings(self) -> Dict[str, Any]:
        """The shaping settings stored with this log (``logstore.config.SHAPING_SETTINGS``)."""
        return self.config.settings()

    def configure(self, **settings: Any) -> None:
        """Change shaping settings (``retention_ms=...``, ``cleanup_policy=...``, see
        ``logstore.config.SHAPING_SETTINGS``) durably (an atomic rewrite of ``logstore.meta``);
        they apply now and at every later open. Invalid names or values raise ConfigError and
        change nothing. Segment size and index interval apply to segments created from now on."""
        new = loader.configured(self.config, settings)
        with self._cleaner_lock, self._lock:
            self._check_writable()
            stored = dict(self.meta.get("settings", {}), **settings)
            with storage_errors(f"changing the settings of {self.path}"):
                meta.rewrite_meta(self.path, self._fs, dict(self.meta, settings=stored))
            self.meta["settings"] = stored
            self._apply_config(new)
            self._configure_active(self._segs.active)
        self._start_threads()

    def _open_writer(self, options: Dict[str, Any]) -> None:
        d = self.path
        loader.check_writer_directory(d)
        self._fs.makedirs(d)
        start = (lifecycle.start_shared_writer if self.shared else lifecycle.start_writer)(
            d, self._fs, self._segs, self.config, options)
        self.meta = start.meta
        self._apply_config(start.config)
        self.recovery_report = start.report
        self.first_writer = start.shared is None or start.shared.first
        self._dir_lock = start.lock
        self._shared = start.shared
        if start.shared is not None:
            shared: SharedWriter = start.shared
            self._sync.shared_sync = lambda: shared.sync(self._fs, self._next_offset)
        self._next_offset = start.next_offset
        self._sync.durable_offset = start.durable_offset
        self._configure_active(self._segs.active)
        self._start_threads()

    def _shared_enter_locked(self) -> Any:
        """(log lock held; shared writers) Take the write lock and catch up; returns the tail
        snapshot to give back to ``SharedWriter.leave``."""
        t = self._shared.enter()
        self._next_offset = t.next_offset
        if t.writing_to == ROLLING:  # a writer died in the middle of a roll: finish it
            try:
                self._roll_locked()
            except BaseException:
                self._shared.leave(t)
                raise
        return t

    def _start_threads(self) -> None:
        self._threads.start(self.config, self._cleanup_pass, self._flush_pass)

    def _cleanup_pass(self) -> None:
        if self.config.retention_ms is not None or self.config.retention_bytes is not None:
            self.enforce_retention()
        if self.config.compacted:
            self.compact()

    def _flush_pass(self) -> None:
        if self._sync.durable_offset < self._next_offset and self._sync.failed is None:
            self._sync.sync_to(self._next_offset)

    def _configure_active(self, seg: Segment) -> None:
        """Writer settings of a segment that becomes the active one."""
        seg.writer.apply_policy(self.config, seg.size, default_fs=type(self._fs) is FileSystem,
                                shared=self.shared)

    def _open_reader(self) -> None:
        self.meta = lifecycle.reader_meta(self.path)
        self._apply_config(self.config)  # (the "compacted" mark of the metadata)
        try:
            self._refresh_locked()
        except CorruptLogError:
            pass  # damage in the active segment: every read that gets there raises it

    # ------------------------------------------------------------------ read-only refresh
    def _refresh_locked(self) -> None:
        """Catch up with the writer(s): a reader follows the segments in the directory
        (retention, compaction, rolls) and the new whole, CRC-valid batches of the active one
        (``SegmentList.follow``); a shared writer adopts what the other writers published."""
        if self._txn is not None:
            return  # (in a transaction: caught up when it began, and no one else appends)
        if self._shared is not None:
            t = self._shared.follow()
            self._next_offset = t.next_offset
            if t.durable_offset > self._sync.durable_offset:
                self._sync.advance(t.durable_offset)
        else:
            self._next_offset = self._segs.follow()

    # ------------------------------------------------------------------ state
    def _check_open(self) -> None:
        if self._closed:
            self._refuse_closed()

    def _refuse_closed(self) -> None:
        if self._forked:
            raise ForkedProcessError(
                f"log {self.path} was opened in process {self._pid}; this is a forked child "
                f"(pid {os.getpid()}): open it again in this process")
        raise LogClosedError(f"log {self.path} is closed")

    def _check_writable(self) -> None:
        if self._closed:
            self._refuse_closed()
        if self.readonly:
            raise ReadOnlyError(f"log {self.path} was opened with readonly=True")
        if self._sync.failed is not None:
            raise StorageError(
                f"log {self.path} refuses writes after a failed fsync or write "
                f"({self._sync.failed}); close and reopen it to recover", self._sync.failed)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def start_offset(self) -> int:
        """The first offset still in the log."""
        with self._lock:
            self._check_open()
            if self._follows:  # (a reader, or a shared writer: another process's retention)
                self._refresh_locked()
            return self._segs.start_offset

    @property
    def end_offset(self) -> int:
        """The next offset to be assigned: every record below it is readable."""
        return current_end(self._hooks)

    def _visible_end(self) -> int:
        if self._always and not self._in_txn:
            return self._sync.durable_offset
        return self._next_offset

    def _caught_up_end_locked(self) -> int:
        if self._follows:
            self._refresh_locked()
        return self._visible_end()

    @property
    def durable_offset(self) -> int:
        """Every record below this offset is known to be on stable storage."""
        return self._sync.durable_offset

    # ------------------------------------------------------------------ writing
    def append(
        self,
        value: Optional[bytes],
        key: Optional[bytes] = None,
        headers: Optional[Dict[str, bytes]] = None,
        timestamp_ms: Optional[int] = None,
    ) -> int:
        """Append one record; return its offset. Durable on return under ``fsync="always"``."""
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(
            timestamp_ms)
        if key is None and self._allow_keyless is False:
            raise MissingKeyError("this log is compacted (cleanup_policy includes 'compact'): "
                                  "every record needs a key")
        if (headers is None and self._codec == CODEC_NONE and type(value) is bytes
                and (key is None or type(key) is bytes)):
            return self._append_one(value, key, ts, True)
        cfg = self.config
        prepared = prepare_one(value, key, headers, ts, self._codec,
                                     cfg.compression_level, cfg.max_record_bytes)
        return self.append_prepared(prepared).start

    def append_batch(
        self,
        values: Sequence[Optional[bytes]],
        *,
        keys: Optional[Sequence[Optional[bytes]]] = None,
        headers: Optional[Sequence[Optional[Dict[str, bytes]]]] = None,
        timestamps_ms: Optional[Sequence[int]] = None,
    ) -> range:
        """Append ``values`` (any iterable) as one batch, atomically (all or nothing); return
        their offsets."""
        values, keys, headers, timestamps_ms = batch_sequences(values, keys, headers, timestamps_ms)
        if check_batch_shape(values, keys=keys, headers=headers) == 0:
            if timestamps_ms is not None and len(timestamps_ms):
                raise ValueError(f"timestamps_ms has {len(timestamps_ms)} items for 0 values")
            with self._lock:
                self._check_writable()
                end = self._visible_end()
            return range(end, end)
        return self.append_prepared(self.prepare_batch(values, keys, headers, timestamps_ms))

    def prepare_batch(self, values: Sequence[Optional[bytes]],
                      keys: Optional[Sequence[Optional[bytes]]] = None,
                      headers: Optional[Sequence[Optional[Dict[str, bytes]]]] = None,
                      timestamps_ms: Optional[Sequence[int]] = None,
                      now: Optional[int] = None) -> PreparedBatch:
        """(Engine API, for views) Encode and check a batch for this log (its compression and
        limits) without writing it: :meth:`append_prepared` writes it. Raises what
        :meth:`append_batch` raises for bad input; nothing is written."""
        if not self._allow_keyless and (keys is None or any(k is None for k in keys)):
            i = 0 if keys is None else [k is None for k in keys].index(True)
            raise MissingKeyError(f"this log is compacted: every record needs a key (values[{i}] "
                                  f"has none); nothing was written")
        cfg = self.config
        return prepare_batch(values, keys, headers, timestamps_ms,
                             now_ms() if now is None else now, self._codec,
                             cfg.compression_level, cfg.max_record_bytes)

    def append_buffer(self, data: Any, lengths: Any, timestamp_ms: Optional[int] = None) -> range:
        """Bulk-load form of :meth:`append_batch`: values concatenated in one buffer + lengths.

        ``lengths`` is a 1-D integer array (numpy or list); all records get ``timestamp_ms``
        (default now) and no key or headers. One batch, atomic.
        """
        if not self._allow_keyless:
            raise MissingKeyError("this log is compacted: append_buffer writes records without "
                                  "keys; use append_batch with keys")
        ts = now_ms() if timestamp_ms is None else check_timestamp(timestamp_ms)
        cfg = self.config
        prepared = prepare_from_buffer(data, lengths, ts, self._codec,
                                             cfg.compression_level, cfg.max_record_bytes)
        return self.append_prepared(prepared)

    def _append_one(self, value: bytes, key: Optional[bytes], ts: int, wait: bool) -> int:
        """Hot path of ``append``: frame a one-record batch directly under the lock.

        Same bytes and bookkeeping as the general path (``_append_prepared``), with the roll
        check and the sync-policy check inlined: this is the per-record cost of the engine.
        """
        raw_len = 4 + len(value) if key is None else 8 + len(key) + len(value)
        if raw_len > self._max_record_bytes:
            raise RecordTooLargeError(
                f"record encodes to {raw_len} bytes, above max_record_bytes="
                f"{self._max_record_bytes}; nothing was written")
        if self._shared is not None:  # (one path for every batch of a shared log)
            return self.append_prepared(prepare_one(
                value, key, None, ts, self._codec, self.config.compression_level,
                self._max_record_bytes), wait).start
        framed = (HEADER_SIZE + raw_len + 7) & ~7
        with self._lock:
            if self._closed or self.readonly or self._sync.failed is not None:
                self._check_writable()
            base = self._next_offset
            active = self._segs.active
            # A cheap pre-check; _active_for_locked makes the actual roll decision.
            if (active.size + framed > self._segment_bytes or self._segment_ms is not None
                    or base - active.base_offset >= MAX_RELATIVE_OFFSET):
                active = self._active_for_locked(framed, ts, 0)
            active.append(frame_single(base, ts, value, key, active.synced_size),
                          base, base + 1, ts, ts)
            self._next_offset = nxt = base + 1
        if wait and (self._always or self._fsync_records is not None):
            self._sync_per_policy(nxt)
        return base

    def append_internal(self, value: bytes, wait: bool) -> int:
        """(Engine API, for views) Append a keyless, header-less record for the engine's own bookkeeping. ``wait=False``
        does not wait for the fsync policy (bookkeeping that may be lost in a power failure,
        e.g. queue delivery counts); the next sync covers it."""
        ts = time.time_ns() // 1_000_000
        if self._codec == CODEC_NONE:
            return self._append_one(value, None, ts, wait)
        prepared = prepare_one(value, None, None, ts, self._codec,
                                     self.config.compression_level, self.config.max_record_bytes)
        return self.append_prepared(prepared, wait).start

    def append_prepared(self, p: PreparedBatch, wait: bool = True) -> range:
        """(Engine API, for views) Write a batch from :meth:`prepare_batch` (or the format's
        ``prepare_*``); ``wait=False`` does not wait for the fsync policy."""
        with self._lock:
            self._check_writable()
            if self._shared is not None:
                nxt = self._append_shared_locked(p)
                base = nxt - p.last_offset_delta - 1
            else:
                base = self._next_offset
                active = self._active_for_locked(p.framed_length, p.max_timestamp,
                                                 p.last_offset_delta)
                data = frame(p, base, active.synced_size)
                nxt = base + p.last_offset_delta + 1
                active.append(data, base, nxt, p.max_timestamp, p.base_timestamp)
                self._next_offset = nxt
        if wait:
            self._sync_per_policy(nxt)
        return range(base, nxt)

    def _append_shared_locked(self, p: PreparedBatch) -> int:
        """(log lock held) Append one batch to a shared log under its write lock: catch up with
        the other writers, write at the tail, publish. Returns the next offset."""
        shared = self._shared
        inner = self._txn is not None  # in a transaction: the write lock is held already
        t = self._txn if inner else self._shared_enter_locked()
        try:
            base = self._next_offset
            active = self._active_for_locked(p.framed_length, p.max_timestamp, p.last_offset_delta)
            data = frame(p, base, active.synced_size)
            if active.base_offset == t.active_base:  # (after a roll the roll mark stays on)
                t = shared.writing(t, active.size + len(data))  # (a kill now: torn)
            nxt = base + p.last_offset_delta + 1
            active.append(data, base, nxt, p.max_timestamp, p.base_timestamp)
            self._next_offset = nxt
        finally:
            if inner:
                self._txn = t
            else:
                shared.leave(t)
        return nxt

    def _active_for_locked(self, length: int, max_ts: int, last_delta: int) -> Segment:
        """(lock held) The segment the next batch goes to, rolling first if the batch would pass
        segment_bytes, is segment_ms newer than the active segment's first batch, or would
        overflow the index's relative offsets. A batch alone in a segment always fits."""
        cfg = self.config
        active = self._segs.active
        if active.size and (
            active.size + length > cfg.segment_bytes
            or (cfg.segment_ms is not None
                and max_ts - (active.first_timestamp or 0) >= cfg.segment_ms)
            or self._next_offset + last_delta - active.base_offset >= MAX_RELATIVE_OFFSET
        ):
            self._roll_locked()
            active = self._segs.active
        return active

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """(Engine API, for views) Read, decide, append, with no other writer in between.

        Inside the block no other thread, and for a ``shared=True`` log no other process,
        appends; reads see every record appended so far by anyone (written, whether or not yet
        durable: what the block appends comes after them in the log, so it cannot outlive
        them); appends (``wait=False``) are part of the block. Yields the end offset. Waiting
        for durability belongs after the block (``await_policy``), so that other writers share
        the fsync. Not reentrant.
        """
        with self._lock:
            self._check_writable()
            if self._in_txn:
                raise RuntimeError(f"log {self.path}: transactions do not nest")
            if self._shared is not None:
                self._txn = self._shared_enter_locked()
            self._in_txn = True
            try:
                yield self._next_offset
            finally:
                self._in_txn = False
                t, self._txn = self._txn, None
                if t is not None:
                    self._shared.leave(t)

    def await_policy(self, next_offset: int) -> None:
        """(Engine API, for views) After ``append_internal(..., wait=False)``: return once the
        records below ``next_offset`` are as durable as an append's return promises under the
        fsync policy (group commit: threads waiting together share fsyncs)."""
        self._sync_per_policy(next_offset)

    def _sync_per_policy(self, nxt: int) -> None:
        """After an append up to ``nxt``: wait for durability as the fsync policy says."""
        if self._always:
            self._sync.sync_to(nxt)
        elif (self.config.fsync_records is not None
              and nxt - self._sync.durable_offset >= self.config.fsync_records):
            self._sync.sync_to(nxt)

    def _roll_locked(self) -> None:
        """Seal the active segment (durably) and start a new one at ``_next_offset``."""
        lifecycle.roll(self._segs, self._shared, self._next_offset, self._index_capacity,
                       self._configure_active, self._sync)

    def _sync_snapshot(self) -> Tuple[int, int, Callable[[], None]]:
        """(group commit's leader) What an fdatasync now covers (see ``sync_snapshot``)."""
        with self._lock:
            if self._closed:
                raise LogClosedError(f"log {self.path} is closed")
            return sync_snapshot(self._segs.active, self._next_offset, self._fs)

    def flush(self) -> None:
        """Make every record appended so far durable (whatever the fsync policy)."""
        if self.readonly:
            self._check_open()
            return
        with self._lock:
            self._check_writable()
            target = self._next_offset
        self._sync.sync_to(target)

    def close(self) -> None:
        """Flush, write the clean-shutdown marker and release the directory lock. Idempotent.

        Resources are always released. If the final write/fsync (or the marker) failed, it
        raises :class:`StorageError` afterwards: with ``fsync="never"``/``"every"`` the close is
        the durability point, so its failure must not pass silently. The next open recovers.
        """
        if self._closed:
            return
        self._threads.stop()
        problem: Optional[BaseException] = None
        if not self.readonly:
            if self._sync.failed is not None:
                problem = self._sync.failed
            else:
                try:
                    self.flush()
                except StorageError as e:
                    problem = e
        with self._lock:
            if self._closed:
                return
            self._closed = True
            process.unregister(self)
            if self._exit_flush is not None:
                self._exit_flush.detach()
            try:
                if not self.readonly:
                    problem = lifecycle.finish_writer(self._segs, self._shared,
                                                      self._next_offset, problem)
            finally:
                lifecycle.release(self._segs, self._dir_lock)
        if problem is not None:
            if problem is self._sync.failed:
                return  # already reported by the write/fsync that failed (the log was poisoned)
            if isinstance(problem, StorageError):
                raise problem
            raise StorageError(f"closing {self.path} failed: {problem}; the next open will "
                               f"recover the log", problem) from problem

    def abandon(self, release_files: bool = True) -> None:
        """Let go of the log as a killed process would (for crash tests): no flush, no
        clean-shutdown marker, no fsync; the directory lock is released (and the files, unless
        ``release_files`` is false: a simulated power cut took the descriptors already), and
        this object refuses every later call. What the kernel would keep after a SIGKILL (bytes
        already written) stays; a buffered append (``write_buffer_bytes``) is lost."""
        if self._closed:
            return
        self._threads.signal()
        if self._exit_flush is not None:
            self._exit_flush.detach()  # a killed process's buffer is lost
        process.unregister(self)
        with self._lock:
            self._closed = True
            lifecycle.release(self._segs, self._dir_lock, release_files)

    def __iter__(self) -> Iterator[Record]:
        """``for rec in log``: :meth:`replay` from ``start_offset`` to the current end."""
        return self.replay(self.start_offset)

    def __len__(self) -> int:
        """The number of records: ``end_offset - start_offset`` (offsets are dense). A
        compacted log has gaps: TypeError (counting would read it; use :meth:`replay`)."""
        with self._lock:
            self._check_open()
            end, start = self._caught_up_end_locked(), self._segs.start_offset
            if self._gaps.gaps_allowed():
                raise TypeError(f"len() of compacted log {self.path} is unknown without reading "
                                f"it (compaction leaves gaps): its offsets are [{start}, {end})")
        return end - start

    def __bool__(self) -> bool:
        return True  # (an empty log is still a log: `if log:` must not mean `if len(log):`)

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"<logstore.Log {self.path!r} {state} next_offset={self._next_offset}>"

    # ------------------------------------------------------------------ reading
    def get(self, offset: int) -> Record:
        """The record at ``offset``. Raises OffsetOutOfRangeError outside [start, end)."""
        if type(offset) is not int:
            offset = check_offset("offset", offset)
        with self._lock:
            if self._closed:
                self._check_open()
            segs = self._segs
            bases = segs.bases
            if self._follows and (offset >= self._next_offset or not bases or offset < bases[0]):
                # Only for offsets outside what this reader has seen (a stat per get would
                # cost ~20%): a segment it mapped stays readable after the writer drops it.
                self._refresh_locked()
            end = (self._sync.durable_offset if self._always and not self._in_txn
                   else self._next_offset)
            return record_at(segs, offset, end, self._gaps.check)

    def get_many(self, offsets: Iterable[int]) -> List[Record]:
        """The records at ``offsets``, in the order given (an offset may repeat).

        The same records as ``[log.get(o) for o in offsets]``, read in offset order: each stored
        batch that holds some of them is located and CRC-checked once for all of them, where
        :meth:`get` must check it again on every call. For many offsets that share batches
        (random access into a log written in batches) this is several times faster.

        Raises what :meth:`get` would raise for the first offending offset (in offset order),
        before returning anything: ``TypeError`` for a non-integer,
        :class:`OffsetOutOfRangeError` outside ``[start_offset, end_offset)``,
        :class:`RecordRemovedError` for an offset compaction removed, :class:`CorruptLogError`
        for a batch that fails its checks.
        """
        return get_many(self._hooks, offsets)

    def read(
        self,
        offset: int,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: Optional[int] = None,
    ) -> List[Record]:
        """Up to ``max_records`` records from ``offset`` on ([] at ``end_offset``).

        ``max_bytes`` bounds the sum of key and value sizes; the first record is always returned
        when one exists, even if it alone is larger (so a reader can always make progress).
        """
        return self.read_records(offset, max_records, max_bytes, None)

    def read_records(self, offset: int, max_records: int, max_bytes: Optional[int],
                     partition: Optional[int]) -> List[Record]:
        """(Engine API, for views) :meth:`read`, the records tagged with ``partition``."""
        return read_range(self._hooks, offset, max_records, max_bytes, partition)

    def replay(self, from_offset: int = 0, to_offset: Optional[int] = None) -> Iterator[Record]:
        """Iterate records in ``[from_offset, to_offset)``; ``to_offset`` defaults to the current end.

        Arguments are checked now, not at the first ``next()``; the end is fixed at this call.
        """
        start, stop = replay_bounds(self._hooks, from_offset, to_offset)
        # chain, not a generator with "yield from": no Python frame resumed per record.
        return chain.from_iterable(records(self._hooks, start, stop, None))

    def replay_batches(self, from_offset: int = 0, to_offset: Optional[int] = None
                       ) -> Iterator[DecodedBatch]:
        """Iterate stored batches overlapping ``[from_offset, to_offset)`` as decoded column views.

        Each item is a :class:`~logstore.DecodedBatch` with numpy ``offsets``,
        ``timestamps``, ``value_offsets``/``value_lengths`` and ``values_buffer`` (zero-copy over
        the mapped file when uncompressed). The first and last batch may extend beyond the
        range: filter with ``offsets``.
        """
        start, stop = replay_bounds(self._hooks, from_offset, to_offset)
        return batches(self._hooks, start, stop)

    def replay_key(self, key: bytes, from_offset: int = 0) -> List[Record]:
        """``[r for r in replay(from_offset) if r.key == key]``, read through the segments' key
        indexes instead of the whole log (see :mod:`logstore.storage.key_replay`)."""
        return key_replay.replay_key(self._hooks, key, from_offset)

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first offset whose record timestamp is >= ``timestamp_ms`` (``end_offset`` if none)."""
        return offset_at_time(self._hooks, check_timestamp(timestamp_ms))

    # ------------------------------------------------------------------ retention, compaction
    def enforce_retention(self, keep_from: Optional[int] = None,
                          protect_from: Optional[int] = None,
                          limits: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Delete the oldest sealed segments that ``retention_ms`` / ``retention_bytes`` (or
        ``keep_from``: every offset below it may go) allow, but never one holding an offset
        >= ``protect_from``. Never the active segment; only whole segments, oldest first.
        ``limits`` (``{"retention_ms": ..., "retention_bytes": ...}``) replaces the stored
        limits for this pass only. Returns ``{"segments_removed", "bytes_freed",
        "start_offset"}``.
        """
        config = self.config.replace(**limits) if limits else self.config
        with self._cleaner_lock, cleaning(self._shared), self._lock:
            self._check_writable()
            t = self._shared_enter_locked() if self._shared is not None else None
            try:
                removed = delete_expired(self._segs, config, keep_from, protect_from,
                                         self._shared.segments_changed if t else None)
                start = self._segs.start_offset
            finally:
                if t is not None:
                    self._shared.leave(t)
        return {"segments_removed": len(removed),
                "bytes_freed": sum(seg.size for seg in removed), "start_offset": start}

    def compact(self, now_ms: Optional[int] = None, *, dry_run: bool = False,
                force: bool = False, tunables: Optional[Dict[str, int]] = None
                ) -> Dict[str, Any]:
        """Run compaction now: keep the latest record per key in sealed segments (see
        :mod:`logstore.storage.cleaner`). Returns a report dict. Needs ``cleanup_policy`` with
        compact, unless ``force`` (operator tools). ``dry_run``: count what a pass would remove
        and change nothing (a read-only log too). ``tunables``: ``delete_retention_ms`` and/or
        ``compaction_buffer_bytes`` for this pass only (the stored settings are unchanged)."""
        cfg = cleaner.pass_config(self.config, tunables)
        if not (self.config.compacted or force or dry_run):
            raise ConfigError(f"log {self.path} has cleanup_policy={self.config.cleanup_policy!r};"
                              f" open it with cleanup_policy='compact' (or 'compact,delete')")
        with self._cleaner_lock, cleaning(self._shared):
            with self._lock:
                self._check_open() if dry_run and self.readonly else self._check_writable()
                if self._follows:
                    self._refresh_locked()  # (shared: the sealed segments as the others left them)
            try:
                with storage_errors(f"compaction of {self.path}"):
                    return cleaner.compact(
                        self._segs, cfg, self._mark_compacted, now_ms, dry_run,
                        lambda: swapping(self._lock, self._shared)).as_dict()
            except BaseException as e:
                if os.path.exists(os.path.join(self.path, COMPACTION_COMMIT)):
                    # Failed after its commit point: the files are half swapped. Nothing may
                    # change the log until a reopen completes the swap.
                    self._sync.fail(e)
                raise

    def _mark_compacted(self) -> None:
        """Record in the metadata that offsets may now have gaps (read-only openers need it).
        Called by the cleaner before its commit point, so a log with gaps is never without it."""
        self._gaps.allowed = True
        meta.mark_compacted(self.path, self._fs, self.meta)

    # ------------------------------------------------------------------ introspection
    def segments(self) -> List[Dict[str, Any]]:
        """Per segment: base offset, next offset, size in bytes, file name (for tools and stats)."""
        with self._lock:
            self._check_open()
            if self._follows:
                self._refresh_locked()
            return self._segs.describe()


__all__ = ["Log", "ConfigError"]
