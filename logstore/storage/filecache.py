"""A process-wide bound on the files logstore's segments keep open (RocksDB's ``max_open_files``).

Every segment a log reads or writes holds descriptors: a mapping of its file (Python's ``mmap``
keeps a descriptor of its own), mappings of its two index files, the writer's descriptor of the
active segment (and, under ``fsync="never"``, its write mapping), a reader's descriptor of the
active segment: up to 4 per open partition. A store of thousands of partitions would hold
thousands of them, and past the process's ``RLIMIT_NOFILE`` every open fails with ``EMFILE``.
So segments register here what they hold whenever they open something (:meth:`FileCache.note`),
and once the total passes :func:`max_open_files` the least recently opened ones let go of what
they can reopen on demand (``Segment.close_idle``):

* a sealed segment drops its mappings (data and indexes): nothing is lost, they are mapped
  again from the files at the next read (a file another process replaced or removed meanwhile
  is noticed by its inode: the segment is retired and readers find the offset again in the
  directory as it is now). Dropping a mapping needs no lock: readers take the mapping into a
  local variable first, and a memoryview a reader still holds keeps it (and its descriptor)
  alive until it is released. Files are never truncated under a mapping, so no SIGBUS.
* an active segment (under its log's lock, taken without waiting: a log in use is skipped and
  tried again later) drops its read mapping and write mapping, keeps its index entries in
  memory (written to the index files when it is sealed or the log is closed:
  ``index._MappedArray.detach``; after a crash the active segment's indexes are rebuilt
  anyway), and closes its descriptor, reopened at the next append, sync or read. The writer
  first writes its buffer and fsyncs what it wrote and did not sync yet (``fsync="never"`` and
  ``"every"``): a write-back error would otherwise be reported to the closed descriptor only
  (fsyncgate). A failure poisons the log as a failed fsync does (its next append or sync
  raises :class:`~logstore.errors.StorageError`, and so does its close). A shared log's active
  segment (several writing processes) keeps its files.

Lock files are not here: the writer of a store holds the store's lock, which covers its logs
(``storage.storelock``), so a partition needs no descriptor of its own while idle.

The limit is :func:`set_max_open_files` (or the ``LOGSTORE_MAX_OPEN_FILES`` environment
variable), by default half the process's soft ``RLIMIT_NOFILE`` (the other half for the
application, sockets, lock files, and the mappings readers still hold). It bounds what segments
keep open between uses, not a single operation's needs (a busy log's files stay open).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, List, Optional, Tuple

from ..errors import ConfigError, OffsetOutOfRangeError

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux/macOS
    resource = None  # type: ignore[assignment]

MIN_OPEN_FILES = 16


class SegmentReplaced(OffsetOutOfRangeError):
    """(internal) A segment's file, reopened by path after the file cache closed it, is another
    file now (compaction or retention in another process): the segment is retired and readers
    find the offset again in the directory as it is now."""

_limit: Optional[int] = None


def default_max_open_files() -> int:
    """``LOGSTORE_MAX_OPEN_FILES`` if set, else half the soft ``RLIMIT_NOFILE`` (at least
    :data:`MIN_OPEN_FILES`)."""
    env = os.environ.get("LOGSTORE_MAX_OPEN_FILES")
    if env:
        try:
            return max(MIN_OPEN_FILES, int(env))
        except ValueError:
            raise ConfigError(f"LOGSTORE_MAX_OPEN_FILES={env!r}: not an integer") from None
    soft = 1024
    if resource is not None:
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft_limit != resource.RLIM_INFINITY:
            soft = soft_limit
        else:
            soft = 1 << 20
    return max(MIN_OPEN_FILES, soft // 2)


def max_open_files() -> int:
    """How many descriptors the segments of this process may keep open between uses: the
    value given to :func:`set_max_open_files`, else ``LOGSTORE_MAX_OPEN_FILES``, else half the
    soft ``RLIMIT_NOFILE`` (see the module docstring)."""
    global _limit
    if _limit is None:
        _limit = default_max_open_files()
    return _limit


def set_max_open_files(n: Optional[int]) -> None:
    """Set the process-wide bound on the files segments keep open between uses (``None``: back
    to the default, :func:`max_open_files`). Past it the least recently opened segments close
    their files, reopened on demand (see the module docstring); lowering it takes effect as
    segments next open a file. :class:`~logstore.errors.ConfigError` (a ValueError) below
    :data:`MIN_OPEN_FILES`."""
    global _limit
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < MIN_OPEN_FILES):
        raise ConfigError(f"max_open_files must be an int >= {MIN_OPEN_FILES} (got {n!r})")
    _limit = n


class FileCache:
    """Segments and the descriptors they hold, least recently noted first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(segment) -> (weak reference, descriptors held, owner's lock)
        self._entries: "OrderedDict[int, Tuple[Any, int, Any]]" = OrderedDict()
        self._total = 0
        self.evictions = 0  # segments that let go of their files (for tests and stats)

    @property
    def open_files(self) -> int:
        """Descriptors held by the registered segments, as last noted."""
        return self._total

    def note(self, seg: Any, files: int, lock: Any) -> None:
        """``seg`` (whose log's lock is ``lock``) holds ``files`` descriptors now and was just
        used; let others go if the total passes the limit."""
        key = id(seg)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= old[1]
            if files > 0:
                self._entries[key] = (weakref.ref(seg), files, lock)
                self._total += files
            over = self._total - max_open_files()
            victims = self._pick(over, key) if over > 0 else []
        for victim, vlock in victims:
            self._close_idle(victim, vlock)

    def forget(self, seg: Any) -> None:
        """``seg`` closed its files."""
        with self._lock:
            old = self._entries.pop(id(seg), None)
            if old is not None:
                self._total -= old[1]

    def _pick(self, over: int, spare: int) -> List[Tuple[Any, Any]]:
        """(cache lock held) Least recently used segments holding at least ``over``
        descriptors (not ``spare``); entries of segments gone are dropped."""
        out: List[Tuple[Any, Any]] = []
        for key, (ref, files, lock) in list(self._entries.items()):
            if over <= 0:
                break
            if key == spare:
                continue
            seg = ref()
            if seg is None:  # dropped without closing (its mappings went with it)
                del self._entries[key]
                self._total -= files
                over -= files
                continue
            out.append((seg, lock))
            over -= files
        return out

    def _close_idle(self, seg: Any, lock: Any) -> None:
        """Let ``seg`` go of its files: a sealed one without its log's lock (it only drops
        mappings), an active one under it, taken without waiting (busy: skipped). What it
        still holds goes to the recently used end: the next victims are others."""
        files: Optional[int] = None
        if seg.sealed:
            files = seg.close_idle()
        elif lock is not None and lock.acquire(blocking=False):
            try:
                files = seg.close_idle()
            finally:
                lock.release()
        with self._lock:
            key = id(seg)
            old = self._entries.pop(key, None)
            if old is None:  # closed (forgotten) meanwhile
                return
            self._total -= old[1]
            if files is None:
                files = old[1]
            else:
                self.evictions += 1
            if files:
                self._entries[key] = (old[0], files, lock)
                self._total += files


    def after_fork(self) -> None:
        """(a forked child) Start empty: the parent's segments are the parent's (the child
        opens its logs again), and the lock may have been held by a thread the fork left
        behind."""
        self._lock = threading.Lock()
        self._entries = OrderedDict()
        self._total = 0


#: The cache of this process (every log and store of it shares the limit).
FILE_CACHE = FileCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=FILE_CACHE.after_fork)
