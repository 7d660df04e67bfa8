"""A store: named topics of N partitions (each an ordinary :class:`Log`), committed offsets, and
the views over them (consumer groups, work queues, pub/sub subscriptions).

Directory layout (see README "Store")::

    <root>/store.meta                  {"format": "logstore-store", "version": 1, "id": ...}
    <root>/.lock                       the store's single-writer lock
    <root>/topics/<name>/topic.json    {"partitions": N}
    <root>/topics/<name>/<p>/          partition p: a log directory
    <root>/internal/offsets/           internal committed offsets (work queues, mirror; an
                                       internal log); consumer groups of stores before version 2
    <root>/internal/groups/<topic>/<group>/  a consumer group's (or subscription's) members and,
                                       per partition, a lease log of its commits (see leases.py)
    <root>/internal/queues/<name>/     a work queue's ack/delivery events (an internal log)

Every view reads the topic's own logs: nothing is copied into per-consumer storage.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


from ..config import SHAPING_SETTINGS, LogConfig
from ..errors import (
    ConfigError,
    ForkedProcessError,
    LogClosedError,
    LogLockedError,
    NotALogError,
    ReadOnlyError,
    StorageError,
    UnknownTopicError,
    UnsupportedFormatError,
)
from . import leases, topic_files
from .. import process
from ..fs import DEFAULT_FS, FileSystem
from ..storage.lifecycle import checked_path
from ..storage.loader import configured
from ..storage.lockfile import DirectoryLock
from ..storage.meta import read_meta
from ..storage.log import Log
from .consumer import SUBSCRIPTION_PREFIX, Consumer, Subscription
from .metrics import MeteredWorkQueue, collect
from .names import validate_name
from .offsets import OffsetStore
from .queue_state import QueueState
from .rpc import Requester, Responder
from .topic import Topic
from .wakeup import AsyncWakeups
from ..format.names import (
    CREATION_LOCK_NAME, INTERNAL_DIR, LOCK_FILES, OFFSETS_LOG, QUEUE_GROUP, STORE_META, TMP,
    TOPICS_DIR, queue_events_dir, topic_dir,
)
from ..record import Record

logger = logging.getLogger("logstore")
STORE_FORMAT = "logstore-store"
# 2: consumer groups and subscriptions commit into per-partition lease logs (internal/groups);
#    version 1 stores are upgraded when opened for writing (their commits are read as a fallback).
STORE_VERSION = 2
MAX_PARTITIONS = 4096




def _only_creation_leftovers(root: str) -> bool:
    """Whether ``root`` (no store.meta) holds only what an interrupted creation leaves: the lock
    file, store.meta.tmp (its atomic write cut short) and, from versions that created them
    before store.meta, empty topics/ and internal/ directories."""
    for name in os.listdir(root):
        if name in LOCK_FILES or name in (CREATION_LOCK_NAME, STORE_META + TMP):
            continue
        path = os.path.join(root, name)
        if name in (TOPICS_DIR, INTERNAL_DIR) and os.path.isdir(path) and not os.listdir(path):
            continue
        return False
    return True


class Store:
    """Topics, committed offsets and views in one directory. Open with :meth:`Store.open`.

    One process opens a store for writing (a second gets ``LogLockedError``); other processes may
    open it with ``readonly=True`` to read topics and committed offsets, and to be members of
    consumer groups and subscriptions (which commit into their partitions' lease logs).
    """

    def __init__(self, root: str, config: LogConfig, fs: FileSystem, readonly: bool,
                 dedup_window_s: float, log_options: Dict[str, Any], shared: bool = False):
        self.root = root
        self.config = config
        self.readonly = readonly
        self.shared = shared
        self.dedup_window_s = dedup_window_s
        self.fs = fs  # the I/O seam every log of the store uses
        # Options that shape what a log keeps are defaults for the logs (topics) created by
        # this store from now on; the others (fsync, buffers...) apply to every log it opens.
        self._shaping = {k: v for k, v in log_options.items() if k in SHAPING_SETTINGS}
        self._process_options = {k: v for k, v in log_options.items()
                                 if k not in SHAPING_SETTINGS}
        self._lock = threading.RLock()
        self._data = threading.Condition(threading.Lock())  # notified on every publish
        self._waiters = 0
        self.async_wakeups = AsyncWakeups()  # asyncio waiters (views/aio), fired like _data
        self._attached: List[Any] = []  # helpers in store.metrics(), closed first (attach)
        self._requester: Optional[Requester] = None
        self._topics: Dict[str, Topic] = {}
        self._queues: Dict[str, Any] = {}
        self._queue_states: Dict[str, QueueState] = {}
        self._repairs: List[str] = []
        self._groups: Dict[Tuple[str, str], Any] = {}
        self._closed = False
        self._forked = False
        self._pid = os.getpid()
        self._dir_lock: Optional[DirectoryLock] = None
        self._cleaner: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.offsets: OffsetStore
        self.meta: Dict[str, Any] = {}

    @classmethod
    def open(cls, root: "str | os.PathLike[str]", *, readonly: bool = False,
             shared: bool = False, dedup_window_s: float = 120.0,
             fs: Optional[FileSystem] = None, **log_options: Any) -> "Store":
        """Open (creating unless ``readonly``) the store at ``root``.

        ``shared=True``: one of several writing processes (every one opens it with
        ``shared=True``; see README "Many processes"); without it the only writer.
        ``log_options`` (``fsync``, ``compression``, ``segment_bytes``...) apply to every
        partition and internal log; see :class:`~logstore.config.LogConfig`.
        """
        root = checked_path(root, readonly, shared, log_options, "store")
        config = LogConfig.from_options(log_options)
        if not isinstance(dedup_window_s, (int, float)) or dedup_window_s < 0:
            raise ConfigError(f"dedup_window_s must be a number >= 0 (got {dedup_window_s!r})")
        store = cls(root, config, fs or DEFAULT_FS, readonly, float(dedup_window_s), log_options,
                    shared)
        store._open()
        process.register(store)
        return store

    def _open(self) -> None:
        root = self.root
        meta_path = os.path.join(root, STORE_META)
        if os.path.exists(root) and not os.path.isdir(root):
            raise NotALogError(f"{root} exists and is not a directory")
        meta = self._read_meta(meta_path)
        if meta is None:
            if self.readonly:
                raise NotALogError(f"{root} is not a logstore store (no {STORE_META})")
            if os.path.isdir(root) and not _only_creation_leftovers(root):
                raise NotALogError(f"{root} is not empty and has no {STORE_META}: not a store")
        if not self.readonly:
            self.fs.makedirs(root)
            self._dir_lock = DirectoryLock(root)
            if self.shared:
                self._dir_lock.acquire_shared()
            else:
                self._dir_lock.acquire()
        try:
            with topic_files.creation_lock(root, self.shared):
                meta = self._create_or_upgrade(meta_path, self._read_meta(meta_path))
            self.meta = meta
            if not self.readonly:
                leases.remove_trash(root)
            offsets_log = self.open_internal_log(os.path.join(root, OFFSETS_LOG), True)
            try:
                self.offsets = OffsetStore(offsets_log)
            except BaseException:
                offsets_log.close()
                raise
            interval = self.config.retention_check_interval_s
            if not self.readonly and interval > 0:
                self._cleaner = threading.Thread(target=self._cleanup_loop, daemon=True,
                                                 name=f"logstore-store-cleaner:{root}")
                self._cleaner.start()
        except BaseException:
            if self._dir_lock is not None:
                self._dir_lock.release()
            raise

    def _create_or_upgrade(self, meta_path: str, meta: Optional[Dict[str, Any]]
                           ) -> Dict[str, Any]:
        """(writer lock, and for a shared store its creation lock, held) ``store.meta``,
        written for a new store (first: a crash before it leaves nothing but what
        ``_only_creation_leftovers`` accepts, so the next open creates the store again) or
        upgraded from an older version."""
        if meta is None:
            if self.readonly:
                raise NotALogError(f"{self.root} is not a logstore store (no {STORE_META})")
            meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "id": uuid.uuid4().hex}
            self.fs.write_file_atomic(meta_path, json.dumps(meta).encode())
            self.fs.makedirs(os.path.join(self.root, TOPICS_DIR))
            self.fs.makedirs(os.path.join(self.root, INTERNAL_DIR))
        elif not self.readonly and int(meta.get("version", 1)) < STORE_VERSION:
            meta = dict(meta, version=STORE_VERSION)
            self.fs.write_file_atomic(meta_path, json.dumps(meta).encode())
        return meta

    @staticmethod
    def _read_meta(path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise NotALogError(f"{path} is not a logstore store metadata file") from None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise NotALogError(f"{path} is not a logstore store metadata file")
        if int(meta.get("version", 0)) > STORE_VERSION:
            raise UnsupportedFormatError(
                f"{os.path.dirname(path)} uses store format {meta['version']}; this logstore "
                f"supports up to {STORE_VERSION}")
        return meta

    @property
    def id(self) -> str:
        """The store's permanent id (a uuid in ``store.meta``; mirrors embed it in message ids)."""
        return self.meta["id"]

    @property
    def repairs(self) -> List[str]:
        """What this store object found inconsistent between its logs and repaired (a position
        kept in one log beyond the end of the log it points into, after a power loss), one
        line each; every one is also logged as a warning on the ``logstore`` logger."""
        return list(self._repairs)

    def repaired(self, line: str) -> None:
        """(For views) Record a repair: logged as a warning and listed in :attr:`repairs`."""
        logger.warning("%s", line)
        self._repairs.append(line)

    def _open_log(self, path: str, settings: Dict[str, Any], **fixed: Any) -> Log:
        """Open a log of the store with this process's options. ``settings`` (then ``fixed``)
        are its shaping settings if it is created now, or has none stored yet (a log from
        before they were stored); otherwise its stored ones apply."""
        options = dict(self._process_options)
        options["retention_check_interval_s"] = 0  # the store runs one cleanup thread for all
        found = read_meta(path) if os.path.isdir(path) else None
        if found is None or not set(found.get("settings", {})) & set(SHAPING_SETTINGS):
            options.update(self._shaping)
            options.update(settings)
            options.update(fixed)
        return Log.open(path, readonly=self.readonly, shared=self.shared, fs=self.fs, **options)

    def open_internal_log(self, path: str, compacted: bool) -> Log:
        # Internal logs never inherit user retention limits: losing commits or acks is not an
        # option. The offsets log is compacted (latest commit per key); event logs are trimmed
        # below their last checkpoint.
        return self._open_log(path, {}, retention_ms=None, retention_bytes=None,
                              cleanup_policy="compact" if compacted else "delete")

    def open_lease_log(self, path: str) -> Log:
        """Open a consumer group's lease log for writing (the lease), even in a read-only store:
        the lease holder is its only writer. Raises LogLockedError while another holds it."""
        options = dict(self._process_options, retention_check_interval_s=0)
        found = read_meta(path) if os.path.isdir(path) else None
        if found is None or not set(found.get("settings", {})) & set(SHAPING_SETTINGS):
            options.update(self._shaping)
            options.update(retention_ms=None, retention_bytes=None, cleanup_policy="delete",
                           segment_bytes=leases.LEASE_SEGMENT_BYTES)
        return Log.open(path, fs=self.fs, **options)

    def group_commits(self, group: str, topic: str) -> Dict[int, int]:
        """Committed offsets of one group on one topic, as stored (lease logs over the
        offsets log of stores before version 2)."""
        out = self.offsets.group_offsets(group, topic)
        path = leases.group_path(self.root, topic, group)
        if os.path.isdir(path):
            out.update(leases.read_group_commits(path, self.fs))
        return out

    def check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise ForkedProcessError(
                    f"store {self.root} was opened in process {self._pid}; this is a forked "
                    f"child (pid {os.getpid()}): open it again in this process")
            raise LogClosedError(f"store {self.root} is closed")

    def mark_forked(self) -> None:
        """(In a forked child, by :mod:`logstore.process`) Refuse every call from now on."""
        self._forked = True
        self._closed = True

    def check_writable(self) -> None:
        self.check_open()
        if self.readonly:
            raise ReadOnlyError(f"store {self.root} was opened with readonly=True")

    # ------------------------------------------------------------------ topics
    def topic(self, name: str, partitions: Optional[int] = None,
              retention: Optional[str] = None, **settings: Any) -> Topic:
        """Open topic ``name``, creating it (with ``partitions``, default 1) if it is new.

        ``retention="interest"`` (fixed at creation, default ``"limits"``): segments every
        consumer group and subscription of the topic has committed past are deleted, on top of
        its ``retention_ms``/``retention_bytes`` limits. ``settings``: the topic's shaping
        settings (``cleanup_policy``, ``retention_ms``, ``compression``, ``segment_bytes``...,
        ``logstore.config.SHAPING_SETTINGS``), stored at creation over the store's defaults;
        for an existing topic a value different from the stored one raises ConfigError (use
        ``topic.configure``).
        """
        validate_name("topic", name)
        if settings:
            configured(self.config, settings)  # names and values checked before anything
        if retention not in (None, "limits", "interest"):
            raise ConfigError(f"retention must be 'limits' or 'interest' (got {retention!r})")
        if partitions is not None and (isinstance(partitions, bool) or not isinstance(
                partitions, int) or not 1 <= partitions <= MAX_PARTITIONS):
            raise ConfigError(f"partitions must be an int in [1, {MAX_PARTITIONS}], "
                              f"got {partitions!r}")
        with self._lock:
            self.check_open()
            topic = self._topics.get(name)
            if topic is None:
                topic = self._open_topic(name, partitions, retention, settings)
                self._topics[name] = topic
            elif partitions is not None and partitions != topic.partition_count:
                raise ConfigError(f"topic {name!r} has {topic.partition_count} partitions, "
                                  f"not {partitions} (the count cannot change)")
            else:
                current = topic.settings
                for k, v in settings.items():
                    if current.get(k) != v:
                        raise ConfigError(f"topic {name!r} stores {k}={current.get(k)!r}, not "
                                          f"{v!r}; change it with topic.configure({k}=...)")
            return topic

    def _open_topic(self, name: str, partitions: Optional[int], retention: Optional[str],
                    settings: Dict[str, Any]) -> Topic:
        # A new topic's settings: the store's defaults, the ones given here; stored whole
        # (with the defaults of this version) so that they never change by themselves.
        defaults = self.config.replace(**{**self._shaping, **settings}).settings()
        tdir = topic_dir(self.root, name)
        with topic_files.creation_lock(self.root, self.shared):
            existing, policy, stored = topic_files.prepare_topic(
                self.root, name, partitions, retention, settings, defaults, self.readonly,
                self.fs, lambda path, st: self._open_log(path, st).close())
        logs: List[Log] = []
        try:
            for p in range(existing):
                logs.append(self._open_log(os.path.join(tdir, str(p)), {**stored, **settings}))
            topic = Topic(self, name, logs)
            topic.retention = policy
            if not self.readonly:
                # Positions other logs keep into this topic are checked now, before anything
                # is published: afterwards a stale one could not be told from a valid one.
                if os.path.isdir(queue_events_dir(self.root, name)):
                    self._load_queue_state(name, logs)
                self._check_group_commits(name, logs)
        except BaseException:
            state = self._queue_states.pop(name, None)
            if state is not None:
                state.events.close()
            for log in logs:
                log.close()
            raise
        return topic

    def rewrite_topic_meta(self, name: str, changes: Dict[str, Any]) -> None:
        """(For topics) Update fields of a topic's ``topic.json``, atomically."""
        with topic_files.creation_lock(self.root, self.shared):
            tmeta = topic_files.read_topic_meta(self.root, name) or {}
            tmeta.update(changes)
            topic_files.write_topic_meta(self.fs, self.root, name, tmeta)

    def _load_queue_state(self, name: str, partitions: List[Log]) -> QueueState:
        events = self.open_internal_log(queue_events_dir(self.root, name), False)
        try:
            state = QueueState(name, events, self.offsets)
            with state.lock:
                repairs = state.load(partitions)
        except BaseException:
            events.close()
            raise
        self._repairs.extend(repairs)
        self._queue_states[name] = state
        return state

    def queue_state(self, name: str) -> QueueState:
        """(For views) The durable state of work queue ``name`` (its topic opened, the state
        loaded and checked against it on first use)."""
        with self._lock:
            self.check_writable()
            topic = self.topic(name)
            state = self._queue_states.get(name)
            if state is None:
                state = self._load_queue_state(name, topic.partitions)
            return state

    def _check_group_commits(self, topic: str, partitions: List[Log]) -> None:
        """Cut back every group's commit beyond the end of the partition it points into (the
        topic lost an unsynced tail that the lease log kept); a partition whose lease another
        process holds is checked by that member when it takes it."""
        for t, group, path in leases.list_groups(self.root):
            if t != topic:
                continue
            for p in leases.lease_partitions(path):
                if p >= len(partitions):
                    continue
                end = partitions[p].end_offset
                if (leases.read_commit(os.path.join(path, str(p)), self.fs) or 0) <= end:
                    continue
                log = leases.try_lease(self.open_lease_log, os.path.join(path, str(p)))
                if log is None:
                    continue
                try:
                    last = leases.last_commit(log)
                    if last is not None and last > end:
                        leases.append_commit(log, end)
                        self.repaired(f"group {group!r} topic {topic!r} partition {p}: commit "
                                      f"{last} beyond the end {end}: cut back to {end}")
                finally:
                    log.close()

    def topics(self) -> List[str]:
        """Names of every topic in the store."""
        tdir = os.path.join(self.root, TOPICS_DIR)
        if not os.path.isdir(tdir):
            return []
        return sorted(n for n in os.listdir(tdir)
                      if os.path.exists(os.path.join(tdir, n, "topic.json")))

    def get_topic(self, name: str) -> Topic:
        """An existing topic; :class:`UnknownTopicError` if there is none."""
        validate_name("topic", name)
        if name not in self._topics and name not in self.topics():
            raise UnknownTopicError(f"no topic {name!r} in {self.root}")
        return self.topic(name)

    def publish(self, topic: str, value: Optional[bytes], key: Optional[bytes] = None,
                headers: Optional[Dict[str, bytes]] = None, **kw: Any) -> Tuple[int, int]:
        """Shortcut for ``store.topic(topic).publish(...)``."""
        return self.topic(topic).publish(value, key, headers, **kw)

    # ------------------------------------------------------------------ notifications
    def notify_published(self, topic: Topic, partition: int, offset: int, ts: int,
                   key: Optional[bytes], value: Optional[bytes],
                   headers: Optional[Dict[str, bytes]]) -> None:
        if self._waiters:
            with self._data:
                self._data.notify_all()
        if self.async_wakeups:
            self.async_wakeups.fire()
        if topic.listeners:
            rec = Record(offset, ts, None if key is None else bytes(key),
                         None if value is None else bytes(value), dict(headers or {}), partition)
            for callback in list(topic.listeners):
                try:
                    callback(rec)
                except Exception:  # an ephemeral subscriber must not break publishers
                    logger.exception("subscriber callback failed")

    def wait_for_data(self, timeout: float) -> None:
        """Block until something is published (in this process) or ``timeout`` passes."""
        if timeout <= 0:
            return
        with self._data:
            self._waiters += 1
            try:
                self._data.wait(timeout)
            finally:
                self._waiters -= 1

    # ------------------------------------------------------------------ views
    def join_group(self, group_id: str, topic: str, create: Callable[[], Any],
                   member: Any) -> Any:
        """(For views) The in-process state shared by the members of ``group_id`` on ``topic``
        (made by ``create`` if there is none yet, or the last one was closed), with ``member``
        joined to it, under the store's lock."""
        with self._lock:
            self.check_open()
            state = self._groups.get((group_id, topic))
            if state is None or state.closed:
                state = self._groups[(group_id, topic)] = create()
            state.join(member)
            return state

    def consumer(self, group_id: str, topic: str, start: str = "earliest",
                 on_out_of_range: str = "earliest") -> Consumer:
        """A member of consumer group ``group_id`` on ``topic`` (Kafka-style stream view).
        ``on_out_of_range``: when retention removed records the group had not read,
        ``"earliest"`` continues at the start offset (counted in ``consumer.skipped``, logged
        as a warning), ``"error"`` raises OffsetOutOfRangeError at every poll until a seek."""
        return Consumer(self, group_id, self.topic(topic), start,
                        on_out_of_range=on_out_of_range)

    def subscribe(self, topic: str, name: str, start: str = "latest",
                  on_out_of_range: str = "earliest") -> Subscription:
        """A durable subscription: it receives every message published after it was created
        (``start="latest"``, the default) or all retained ones (``"earliest"``);
        ``on_out_of_range`` as for :meth:`consumer`."""
        return Subscription(self, name, self.topic(topic), start, on_out_of_range)

    def unsubscribe(self, topic: str, name: str) -> None:
        """Remove a durable subscription and its committed position. Its members in this process
        are closed; :class:`LogLockedError` if a member in another process still holds it."""
        validate_name("subscription", name)
        self.check_writable()
        group = SUBSCRIPTION_PREFIX + name
        with self._lock:
            state = self._groups.pop((group, topic), None)
            if state is not None:
                state.close()
            path = leases.group_path(self.root, topic, group)
            if os.path.isdir(path):
                self._remove_group_dir(path, f"subscription {name!r} of {topic!r}")
            self.offsets.delete_group(group, topic)

    def _remove_group_dir(self, path: str, what: str) -> None:
        held: List[Log] = []
        try:
            # Take every lease first: nobody may be reading or committing while it goes.
            if leases.live_members(os.path.join(path, leases.MEMBERS_DIR)):
                raise LogLockedError(f"{what} has a live member in another process")
            for p in leases.lease_partitions(path):
                log = leases.try_lease(self.open_lease_log, os.path.join(path, str(p)))
                if log is None:
                    raise LogLockedError(f"{what}: partition {p} is leased by another process")
                held.append(log)
            trash = leases.retire_group_dir(self.fs, path)  # still holding every lease
        except BaseException:
            for log in held:
                log.close()
            raise
        for log in held:
            try:
                log.close()
            except StorageError:
                pass  # its files were just renamed away with the directory: nothing to keep
        leases.remove_trash_dir(trash)

    def subscriptions(self, topic: str) -> List[str]:
        """Names of the durable subscriptions of ``topic``."""
        # Directory names only: no lease log is opened (plus stores before version 2).
        names = {g for t, g, _path in leases.list_groups(self.root) if t == topic}
        names.update(g for (g, t, _p), _o in self.offsets.items() if t == topic)
        return sorted(g[len(SUBSCRIPTION_PREFIX):] for g in names
                      if g.startswith(SUBSCRIPTION_PREFIX))

    def groups(self) -> Dict[str, Dict[str, Dict[int, int]]]:
        """Committed offsets: ``{group: {topic: {partition: next offset}}}``: consumer groups,
        subscriptions (``__sub__<name>``) and internal groups, read from their logs now."""
        out: Dict[str, Dict[str, Dict[int, int]]] = {}
        for (g, t, p), o in self.offsets.items():
            out.setdefault(g, {}).setdefault(t, {})[p] = o
        for t, g, path in leases.list_groups(self.root):
            out.setdefault(g, {}).setdefault(t, {}).update(
                leases.read_group_commits(path, self.fs))
        return out

    def on(self, topic: str, callback: Callable[[Record], None]) -> Callable[[], None]:
        """Register an ephemeral (not durable) subscriber called with each Record published in this
        process, in the publisher's thread. Returns a function that removes it."""
        t = self.topic(topic)
        t.listeners.append(callback)

        def remove() -> None:
            if callback in t.listeners:
                t.listeners.remove(callback)

        return remove

    def queue(self, name: str, *, visibility_timeout: float = 30.0, max_deliveries: int = 5,
              dead_letter: Optional[str] = None, max_depth: Optional[int] = None,
              overflow: str = "reject", partitions: Optional[int] = None,
              backoff: Tuple[float, float] = (1.0, 60.0), max_priority: Optional[int] = None,
              message_ttl: Optional[float] = None):
        """A work queue over topic ``name`` (SQS-like: get, ack, redelivery, dead letters;
        priorities up to ``max_priority``, expiry after ``message_ttl`` seconds, overflow
        policies for ``max_depth``: see README "Work queues")."""
        validate_name("queue", name)
        with self._lock:
            self.check_writable()
            q = self._queues.get(name)
            if q is None or q.closed:
                q = MeteredWorkQueue(self, name, visibility_timeout=visibility_timeout,
                              max_deliveries=max_deliveries,
                              dead_letter=dead_letter if dead_letter is not None else f"{name}.dlq",
                              max_depth=max_depth, overflow=overflow, partitions=partitions,
                              backoff=backoff, max_priority=max_priority,
                              message_ttl=message_ttl)
                self._queues[name] = q
            return q

    # ------------------------------------------------------------------ metrics, request-reply
    def attach(self, helper: Any) -> None:
        """(For views) Include ``helper.metrics()`` in :meth:`metrics`, ``helper.close()`` first
        at :meth:`close` (breakers, requesters, responders), until :meth:`detach`."""
        with self._lock:
            self._attached.append(helper)

    def detach(self, helper: Any) -> None:
        with self._lock:
            self._attached = [h for h in self._attached if h is not helper]

    def metrics(self, topics: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Figures of every topic, group, subscription, queue (or of ``topics``) and helper:
        see :mod:`logstore.views.metrics`."""
        self.check_open()
        with self._lock:
            views = list(self._queues.values()), list(self._groups.values()), self._attached[:]
        return collect(self, *views, topics)

    def requester(self) -> Requester:
        """The store's default :class:`~logstore.views.rpc.Requester` (one reply inbox)."""
        with self._lock:
            self.check_writable()
            if self._requester is None or self._requester not in self._attached:
                self._requester = Requester(self)
            return self._requester

    def request(self, topic: str, payload: Optional[bytes], timeout: float = 5.0,
                headers: Optional[Dict[str, bytes]] = None) -> Record:
        """Request-reply: send ``payload`` to the responders of ``topic``, return the reply
        (TimeoutError after ``timeout`` s). See :mod:`logstore.views.rpc`."""
        return self.requester().request(topic, payload, timeout, headers)

    def responder(self, topic: str, **queue_options: Any) -> Responder:
        """Answer requests of ``topic`` (``get`` + ``reply``; options: :meth:`queue`'s)."""
        return Responder(self, topic, **queue_options)

    def respond(self, topic: str, handler: Callable[..., Optional[bytes]], threads: int = 1,
                **queue_options: Any) -> Responder:
        """Answer requests of ``topic`` with ``handler(request)`` in ``threads`` threads."""
        return Responder(self, topic, **queue_options).start(handler, threads)

    # ------------------------------------------------------------------ retention
    def enforce_retention(self, limits: Optional[Dict[str, Any]] = None,
                          topics: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """One retention pass over every topic and internal log. Returns what was removed.

        Per partition: the store's ``retention_ms``/``retention_bytes``; for an ``"interest"``
        topic, everything all its groups and subscriptions committed past; for a queue's topic,
        never a message that is not yet acked (below the queue's low watermark only), whether or
        not the queue is open. Queue event logs are trimmed below their last durable checkpoint;
        the offsets log is compacted. ``limits`` (``retention_ms``/``retention_bytes``) replace
        the topics' stored limits for this pass only (never for queue topics and internal
        logs). ``topics``: only these topics (default: every topic on disk).
        """
        self.check_writable()
        names = self.topics() if topics is None else list(topics)
        chosen = [self.topic(name) for name in names]  # (opening loads their queue states)
        report: Dict[str, Any] = {}
        with self._lock:
            states = {n: st for n, st in self._queue_states.items() if n in names}
        # Reading every group's commits opens their lease logs: only when a topic needs them.
        groups = self.groups() if any(t.retention == "interest" for t in chosen) else {}
        for topic in chosen:
            committed: Dict[int, List[int]] = {}
            for g, by_topic in groups.items():
                if topic.name in by_topic and not g.startswith(QUEUE_GROUP):
                    for p, off in by_topic[topic.name].items():
                        committed.setdefault(p, []).append(off)
            state = states.get(topic.name)
            if state is not None:
                # Every applied event durable first: an ack in memory that a crash could still
                # undo must not let its message go.
                state.events.flush()
                with state.lock:
                    lows = state.low_watermarks()
            for p, log in enumerate(topic.partitions):
                keep_from: Optional[int] = None
                if topic.retention == "interest" and committed.get(p):
                    keep_from = min(committed[p])
                if state is not None:
                    # A queue's acked prefix may go; time/size limits never delete unacked ones.
                    low = lows.get(p, 0)
                    r = log.enforce_retention(low, protect_from=low)
                else:
                    r = log.enforce_retention(keep_from, limits=limits)
                if r["segments_removed"]:
                    report[f"{topic.name}/{p}"] = r
        for name, state in states.items():
            r = state.trim()
            if r and r["segments_removed"]:
                report[f"queue-events/{name}"] = r
        if len(self.offsets.log.segments()) > 1:
            report["offsets"] = self.offsets.log.compact()
        return report

    def _cleanup_loop(self) -> None:
        interval = self.config.retention_check_interval_s
        while not self._stop.wait(interval):
            try:
                self.enforce_retention()
            except (LogClosedError, ReadOnlyError):
                return
            except Exception:
                logger.exception("store cleanup of %s failed", self.root)

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        for t in list(self._topics.values()):
            for log in t.partitions:
                log.flush()
        self.offsets.log.flush()

    def close(self) -> None:
        """Close every view, topic and internal log, and release the store lock. Idempotent.
        Everything is released even if closing one of them fails; the first error is raised
        afterwards."""
        self._stop.set()
        if self._cleaner is not None and self._cleaner is not threading.current_thread():
            self._cleaner.join()
        if self._forked:
            return  # a forked child's copy: the parent's locks and logs are not its to release
        for helper in reversed(list(self._attached) if not self._closed else []):
            try:  # (outside the lock: a responder thread may be using the store meanwhile)
                helper.close()
            except Exception:
                logger.exception("closing %r failed", helper)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            process.unregister(self)
            closers: List[Callable[[], None]] = [q.close for q in list(self._queues.values())]
            closers += [state.close for state in list(self._groups.values())]
            closers += [state.events.close for state in self._queue_states.values()]
            closers += [log.close for t in self._topics.values() for log in t.partitions]
            if getattr(self, "offsets", None) is not None:
                closers.append(self.offsets.log.close)
            first: Optional[BaseException] = None
            try:
                for close in closers:
                    try:
                        close()
                    except BaseException as e:  # release the rest, report the first
                        if first is None:
                            first = e
            finally:
                with self._data:
                    self._data.notify_all()
                self.async_wakeups.fire()
                if self._dir_lock is not None:
                    self._dir_lock.release()
            if first is not None:
                raise first

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<logstore.Store {self.root!r}{' closed' if self._closed else ''}>"

