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

import itertools
import json
import logging
import os
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


from ..config import LogConfig
from ..format.encode import check_batch_shape
from ..errors import (
    ConfigError,
    LogClosedError,
    LogLockedError,
    MissingKeyError,
    NotALogError,
    ReadOnlyError,
    StorageError,
    UnknownTopicError,
    UnsupportedFormatError,
)
from . import leases
from ..fs import DEFAULT_FS, FileSystem
from ..storage.lockfile import DirectoryLock
from ..storage.log import Log
from .consumer import SUBSCRIPTION_PREFIX, Consumer, Subscription
from .names import partition_for_key, validate_name
from .offsets import OffsetStore
from .queue_state import QueueState
from .workqueue import WorkQueue
from ..format.names import (
    INTERNAL_DIR, LOCK_NAME, OFFSETS_LOG, QUEUE_GROUP, STORE_META, TMP, TOPIC_META, TOPICS_DIR,
    queue_events_dir, topic_dir,
)
from ..record import Record
from ..util import now_ms

logger = logging.getLogger("logstore")
STORE_FORMAT = "logstore-store"
# 2: consumer groups and subscriptions commit into per-partition lease logs (internal/groups);
#    version 1 stores are upgraded when opened for writing (their commits are read as a fallback).
STORE_VERSION = 2
MSG_ID_HEADER = "x-msg-id"
# Publish time (ms, the store's clock) of a message with msg_id whose timestamp_ms was given:
# the dedup window counts from when a message was published, whatever its own timestamp.
MSG_ID_TIME_HEADER = "x-msg-id-ms"
MAX_PARTITIONS = 4096




def _only_creation_leftovers(root: str) -> bool:
    """Whether ``root`` (no store.meta) holds only what an interrupted creation leaves: the lock
    file, store.meta.tmp (its atomic write cut short) and, from versions that created them
    before store.meta, empty topics/ and internal/ directories."""
    for name in os.listdir(root):
        if name in (LOCK_NAME, STORE_META + TMP):
            continue
        path = os.path.join(root, name)
        if name in (TOPICS_DIR, INTERNAL_DIR) and os.path.isdir(path) and not os.listdir(path):
            continue
        return False
    return True


class Topic:
    """A named set of partitions. ``publish`` appends to one of them."""

    def __init__(self, store: "Store", name: str, logs: List[Log]):
        self.store = store
        self.name = name
        self.partitions = logs
        self._rr = itertools.count()
        self._dedup_lock = threading.Lock()
        self._dedup: Dict[str, Tuple[int, int, int]] = {}  # msg_id -> (partition, offset, ts)
        self.listeners: List[Callable[[Record], None]] = []
        self.retention = "limits"
        if store.dedup_window_s > 0:
            self._load_dedup()

    @property
    def partition_count(self) -> int:
        return len(self.partitions)

    def _load_dedup(self) -> None:
        """Rebuild the msg-id window from the messages published within it (survives reopen):
        each partition is read back from its newest segment until a whole segment was published
        before the window (publish times grow with offsets; record timestamps need not)."""
        since = max(0, now_ms() - int(self.store.dedup_window_s * 1000))
        found = []
        for p, log in enumerate(self.partitions):
            for seg in reversed(log.segments()):
                newest = -1
                for rec in log.replay(max(seg["base_offset"], log.start_offset),
                                      seg["next_offset"]):
                    headers = rec.headers
                    published = rec.timestamp_ms
                    raw = headers.get(MSG_ID_TIME_HEADER)
                    if raw is not None:
                        try:
                            published = int(raw)
                        except ValueError:
                            pass
                    newest = max(newest, published)
                    mid = headers.get(MSG_ID_HEADER)
                    if mid is not None and published >= since:
                        found.append((published, mid.decode("utf-8", "replace"), p, rec.offset))
                if newest < since:
                    break
        for published, mid, p, off in sorted(found):
            self._dedup[mid] = (p, off, published)

    def _expire_dedup(self, now: int) -> None:
        # Entries are in publish order (insertion order of the dict): expire from the oldest.
        horizon = now - int(self.store.dedup_window_s * 1000)
        while self._dedup:
            mid, (_, _, published) = next(iter(self._dedup.items()))
            if published >= horizon:
                break
            del self._dedup[mid]

    def partition_of(self, key: Optional[bytes]) -> int:
        n = len(self.partitions)
        if key is None:
            return next(self._rr) % n
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes-like or None, got {type(key).__name__}"
                            + (" (encode it first)" if isinstance(key, str) else ""))
        return partition_for_key(bytes(key), n)

    def publish(
        self,
        value: Optional[bytes],
        key: Optional[bytes] = None,
        headers: Optional[Dict[str, bytes]] = None,
        *,
        msg_id: Optional[str] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> Tuple[int, int]:
        """Append one message; return ``(partition, offset)``.

        Keyed messages go to ``partition_for_key(key, N)`` (per-key order is preserved);
        unkeyed ones round-robin. There is no order across partitions. With ``msg_id``, a second
        publish of the same id within ``dedup_window_s`` returns the first one's position and
        appends nothing.
        """
        self.store.check_writable()
        if partition is None:
            partition = self.partition_of(key)
        elif not isinstance(partition, int) or not 0 <= partition < len(self.partitions):
            raise UnknownTopicError(f"topic {self.name!r} has no partition {partition!r}")
        ts = now_ms() if timestamp_ms is None else timestamp_ms
        log = self.partitions[partition]
        if msg_id is not None:
            if not isinstance(msg_id, str) or not msg_id:
                raise TypeError("msg_id must be a non-empty str")
            with self._dedup_lock:
                published = now_ms()
                self._expire_dedup(published)
                seen = self._dedup.get(msg_id)
                if seen is not None:
                    return seen[0], seen[1]
                headers = dict(headers or {})
                headers[MSG_ID_HEADER] = msg_id.encode("utf-8")
                if timestamp_ms is not None:
                    headers[MSG_ID_TIME_HEADER] = str(published).encode()
                offset = log.append(value, key=key, headers=headers, timestamp_ms=ts)
                self._dedup.pop(msg_id, None)
                self._dedup[msg_id] = (partition, offset, published)
        else:
            offset = log.append(value, key=key, headers=headers, timestamp_ms=ts)
        self.store.notify_published(self, partition, offset, ts, key, value, headers)
        return partition, offset

    def publish_batch(
        self,
        values: Sequence[Optional[bytes]],
        *,
        keys: Optional[Sequence[Optional[bytes]]] = None,
        headers: Optional[Sequence[Optional[Dict[str, bytes]]]] = None,
    ) -> List[Tuple[int, int]]:
        """Publish many messages with one write per partition; return their ``(partition,
        offset)`` in input order.

        Keyed messages go where :meth:`publish` would send them, in input order (per-key order
        is kept); the unkeyed messages of one call all go to the next partition in round-robin
        order (one batch instead of N small ones, like Kafka's sticky partitioner). Every
        message is encoded and checked before anything is written, so bad input (a ``str``
        value, a missing key on a compacted topic, mismatched lengths) writes nothing. Each
        partition's share is one atomic batch; the call is not atomic across partitions (a disk
        error on the second partition leaves the first one's batch written). No ``msg_id``
        deduplication here: use :meth:`publish` for that.
        """
        self.store.check_writable()
        n = check_batch_shape(values, keys=keys, headers=headers)
        if n == 0:
            return []
        count = len(self.partitions)
        unkeyed = next(self._rr) % count
        groups: Dict[int, List[int]] = {}
        for i in range(n):
            key = None if keys is None else keys[i]
            groups.setdefault(unkeyed if key is None else self.partition_of(key), []).append(i)
        ts = now_ms()
        prepared = []
        for p, idx in groups.items():
            log = self.partitions[p]
            ks = None if keys is None else [keys[i] for i in idx]
            if log.config.compacted and (ks is None or any(k is None for k in ks)):
                raise MissingKeyError(f"topic {self.name!r} is compacted: every message needs a "
                                      f"key; nothing was published")
            prepared.append((p, idx, log.prepare_batch(
                [values[i] for i in idx], ks,
                None if headers is None else [headers[i] for i in idx], None, ts)))
        out: List[Tuple[int, int]] = [(0, 0)] * n
        for p, idx, batch in prepared:
            offsets = self.partitions[p].append_prepared(batch)
            for i, off in zip(idx, offsets):
                out[i] = (p, off)
        if self.listeners:
            for i, (p, off) in enumerate(out):
                self.store.notify_published(self, p, off, ts, None if keys is None else keys[i],
                                      values[i], None if headers is None else headers[i])
        else:
            self.store.notify_published(self, out[-1][0], out[-1][1], ts, None, None, None)
        return out

    def end_offsets(self) -> Dict[int, int]:
        return {p: log.end_offset for p, log in enumerate(self.partitions)}

    def start_offsets(self) -> Dict[int, int]:
        return {p: log.start_offset for p, log in enumerate(self.partitions)}

    def __repr__(self) -> str:
        return f"<logstore.Topic {self.name!r} partitions={len(self.partitions)}>"


class Store:
    """Topics, committed offsets and views in one directory. Open with :meth:`Store.open`.

    One process opens a store for writing (a second gets ``LogLockedError``); other processes may
    open it with ``readonly=True`` to read topics and committed offsets, and to be members of
    consumer groups and subscriptions (which commit into their partitions' lease logs).
    """

    def __init__(self, root: str, config: LogConfig, fs: FileSystem, readonly: bool,
                 dedup_window_s: float, log_options: Dict[str, Any]):
        self.root = root
        self.config = config
        self.readonly = readonly
        self.dedup_window_s = dedup_window_s
        self.fs = fs  # the I/O seam every log of the store uses
        self._log_options = log_options
        self._lock = threading.RLock()
        self._data = threading.Condition(threading.Lock())  # notified on every publish
        self._waiters = 0
        self._topics: Dict[str, Topic] = {}
        self._queues: Dict[str, Any] = {}
        self._queue_states: Dict[str, QueueState] = {}
        self._repairs: List[str] = []
        self._groups: Dict[Tuple[str, str], Any] = {}
        self._closed = False
        self._dir_lock: Optional[DirectoryLock] = None
        self._cleaner: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.offsets: OffsetStore
        self.meta: Dict[str, Any] = {}

    @classmethod
    def open(cls, root: "str | os.PathLike[str]", *, readonly: bool = False,
             dedup_window_s: float = 120.0, fs: Optional[FileSystem] = None,
             **log_options: Any) -> "Store":
        """Open (creating unless ``readonly``) the store at ``root``.

        ``log_options`` (``fsync``, ``compression``, ``segment_bytes``...) apply to every
        partition and internal log; see :class:`~logstore.config.LogConfig`.
        """
        config = LogConfig.from_options(log_options)
        if not isinstance(dedup_window_s, (int, float)) or dedup_window_s < 0:
            raise ConfigError(f"dedup_window_s must be a number >= 0 (got {dedup_window_s!r})")
        root = os.path.abspath(os.fspath(root))
        store = cls(root, config, fs or DEFAULT_FS, readonly, float(dedup_window_s), log_options)
        store._open()
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
            self._dir_lock = DirectoryLock(root).acquire()
        try:
            if meta is None:
                meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "id": uuid.uuid4().hex}
                # store.meta first: a crash before it leaves nothing but what
                # _only_creation_leftovers accepts, so the next open creates the store again.
                self.fs.write_file_atomic(meta_path, json.dumps(meta).encode())
                self.fs.makedirs(os.path.join(root, TOPICS_DIR))
                self.fs.makedirs(os.path.join(root, INTERNAL_DIR))
            elif not self.readonly and int(meta.get("version", 1)) < STORE_VERSION:
                meta = dict(meta, version=STORE_VERSION)
                self.fs.write_file_atomic(meta_path, json.dumps(meta).encode())
            if not self.readonly:
                leases.remove_trash(root)
            self.meta = meta
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

    def _open_log(self, path: str, **extra: Any) -> Log:
        options = dict(self._log_options)
        options["retention_check_interval_s"] = 0  # the store runs one cleanup thread for all
        options.update(extra)
        return Log.open(path, readonly=self.readonly, fs=self.fs, **options)

    def open_internal_log(self, path: str, compacted: bool) -> Log:
        # Internal logs never inherit user retention limits: losing commits or acks is not an
        # option. The offsets log is compacted (latest commit per key); event logs are trimmed
        # below their last checkpoint.
        return self._open_log(path, retention_ms=None, retention_bytes=None,
                              cleanup_policy="compact" if compacted else "delete")

    def open_lease_log(self, path: str) -> Log:
        """Open a consumer group's lease log for writing (the lease), even in a read-only store:
        the lease holder is its only writer. Raises LogLockedError while another holds it."""
        options = dict(self._log_options)
        options.update(retention_check_interval_s=0, retention_ms=None, retention_bytes=None,
                       cleanup_policy="delete", segment_bytes=leases.LEASE_SEGMENT_BYTES)
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
            raise LogClosedError(f"store {self.root} is closed")

    def check_writable(self) -> None:
        self.check_open()
        if self.readonly:
            raise ReadOnlyError(f"store {self.root} was opened with readonly=True")

    # ------------------------------------------------------------------ topics
    def topic(self, name: str, partitions: Optional[int] = None,
              retention: Optional[str] = None) -> Topic:
        """Open topic ``name``, creating it (with ``partitions``, default 1) if it is new.

        ``retention="interest"`` (fixed at creation, default ``"limits"``): segments every
        consumer group and subscription of the topic has committed past are deleted, on top of
        the store's ``retention_ms``/``retention_bytes`` limits.
        """
        validate_name("topic", name)
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
                topic = self._open_topic(name, partitions, retention)
                self._topics[name] = topic
            elif partitions is not None and partitions != topic.partition_count:
                raise ConfigError(f"topic {name!r} has {topic.partition_count} partitions, "
                                  f"not {partitions} (the count cannot change)")
            return topic

    def _open_topic(self, name: str, partitions: Optional[int],
                    retention: Optional[str] = None) -> Topic:
        tdir = topic_dir(self.root, name)
        meta_path = os.path.join(tdir, TOPIC_META)
        try:
            with open(meta_path, "rb") as f:
                tmeta = json.loads(f.read())
            existing = int(tmeta["partitions"])
            policy = tmeta.get("retention", "limits")
        except FileNotFoundError:
            existing = None
        except (ValueError, KeyError, TypeError, OSError):
            raise NotALogError(f"{meta_path} is not a topic metadata file") from None
        if existing is None:
            if self.readonly:
                raise UnknownTopicError(f"no topic {name!r} in {self.root}")
            existing = partitions or 1
            policy = retention or "limits"
            self.fs.makedirs(tdir)
            for p in range(existing):
                self._open_log(os.path.join(tdir, str(p))).close()
            self.fs.write_file_atomic(meta_path, json.dumps(
                {"partitions": existing, "retention": policy}).encode())
        elif retention is not None and retention != policy:
            raise ConfigError(f"topic {name!r} has retention={policy!r}, not {retention!r}")
        elif partitions is not None and partitions != existing:
            raise ConfigError(f"topic {name!r} has {existing} partitions, not {partitions} "
                              f"(the count cannot change)")
        logs: List[Log] = []
        try:
            for p in range(existing):
                logs.append(self._open_log(os.path.join(tdir, str(p))))
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

    def consumer(self, group_id: str, topic: str, start: str = "earliest") -> Consumer:
        """A member of consumer group ``group_id`` on ``topic`` (Kafka-style stream view)."""
        return Consumer(self, group_id, self.topic(topic), start)

    def subscribe(self, topic: str, name: str, start: str = "latest") -> Subscription:
        """A durable subscription: it receives every message published after it was created
        (``start="latest"``, the default) or all retained ones (``"earliest"``)."""
        return Subscription(self, name, self.topic(topic), start)

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
              backoff: Tuple[float, float] = (1.0, 60.0)):
        """A work queue over topic ``name`` (SQS-like: get, ack, redelivery, dead letters)."""
        validate_name("queue", name)
        with self._lock:
            self.check_writable()
            q = self._queues.get(name)
            if q is None or q.closed:
                q = WorkQueue(self, name, visibility_timeout=visibility_timeout,
                              max_deliveries=max_deliveries,
                              dead_letter=dead_letter if dead_letter is not None else f"{name}.dlq",
                              max_depth=max_depth, overflow=overflow, partitions=partitions,
                              backoff=backoff)
                self._queues[name] = q
            return q

    # ------------------------------------------------------------------ retention
    def enforce_retention(self) -> Dict[str, Any]:
        """One retention pass over every topic and internal log. Returns what was removed.

        Per partition: the store's ``retention_ms``/``retention_bytes``; for an ``"interest"``
        topic, everything all its groups and subscriptions committed past; for a queue's topic,
        never a message that is not yet acked (below the queue's low watermark only), whether or
        not the queue is open. Queue event logs are trimmed below their last durable checkpoint;
        the offsets log is compacted.
        """
        self.check_writable()
        for name in self.topics():
            self.topic(name)  # every topic on disk (opening checks it and loads queue states)
        report: Dict[str, Any] = {}
        with self._lock:
            topics = list(self._topics.values())
            states = dict(self._queue_states)
        # Reading every group's commits opens their lease logs: only when a topic needs them.
        groups = self.groups() if any(t.retention == "interest" for t in topics) else {}
        for topic in topics:
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
                    r = log.enforce_retention(keep_from)
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
        with self._lock:
            if self._closed:
                return
            self._closed = True
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

