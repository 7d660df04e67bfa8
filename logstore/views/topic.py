"""A topic: named partitions of a store, and publishing to them.

``publish`` places a keyed message by ``partition_for_key`` (per-key order is kept) and
round-robins unkeyed ones; ``msg_id`` deduplicates retries within the store's
``dedup_window_s``, counted from when a message was published (the store's clock), whatever
its ``timestamp_ms``. ``publish_batch`` writes one batch per partition. A topic's shaping
settings (retention, cleanup policy, compression, segment size...) are stored in its
``topic.json`` and in each partition's ``logstore.meta``; ``configure`` changes them.

Thread-safety: publishing from several threads is safe (each partition log serialises its
writes; the dedup window has its own lock). In a store shared by several processes a publish
with ``msg_id`` holds the topic's dedup lock (``flocks``) and first reads what the other
processes published since it last looked, so a retry is deduplicated whichever process made
the first attempt.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from typing import (
    TYPE_CHECKING, Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple,
)

from ..errors import MissingKeyError, UnknownTopicError
from ..format.encode import as_sequence, check_batch_shape
from ..format.names import DEDUP_LOCK_NAME, topic_dir
from ..record import Record
from ..storage.loader import configured
from ..storage.log import Log
from ..util import now_ms
from . import flocks
from .names import partition_for_key

if TYPE_CHECKING:
    from .store import Store

MSG_ID_HEADER = "x-msg-id"
# Publish time (ms, the store's clock) of a message with msg_id whose timestamp_ms was given:
# the dedup window counts from when a message was published, whatever its own timestamp.
MSG_ID_TIME_HEADER = "x-msg-id-ms"


def _msg_id_of(rec: Record) -> Tuple[int, Optional[str]]:
    """(publish time in ms, msg id or None) of a published message."""
    headers = rec.headers
    published = rec.timestamp_ms
    raw = headers.get(MSG_ID_TIME_HEADER)
    if raw is not None:
        try:
            published = int(raw)
        except ValueError:
            pass
    mid = headers.get(MSG_ID_HEADER)
    return published, None if mid is None else mid.decode("utf-8", "replace")


class Topic:
    """A named set of partitions. ``publish`` appends to one of them."""

    def __init__(self, store: "Store", name: str, logs: List[Log]):
        self.store = store
        self.name = name
        self.partitions = logs
        self._rr = itertools.count()
        self._dedup_lock = threading.Lock()
        self._dedup: Dict[str, Tuple[int, int, int]] = {}  # msg_id -> (partition, offset, ts)
        self._dedup_seen = [log.end_offset for log in logs]  # (shared) read up to here
        self.listeners: List[Callable[[Record], None]] = []
        self.retention = "limits"
        if store.dedup_window_s > 0:
            self._load_dedup()

    @property
    def settings(self) -> Dict[str, Any]:
        """The shaping settings of the topic's partitions (``logstore.config.SHAPING_SETTINGS``),
        as stored with them."""
        return self.partitions[0].settings

    def configure(self, **settings: Any) -> None:
        """Change the topic's shaping settings durably (every partition's metadata, then
        ``topic.json``); they apply now and at every later open. ConfigError for an unknown
        setting or a bad value (nothing changed)."""
        self.store.check_writable()
        configured(self.partitions[0].config, settings)  # validate before changing anything
        for log in self.partitions:
            log.configure(**settings)
        self.store.rewrite_topic_meta(self.name, {"settings": self.settings})

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
                    published, mid = _msg_id_of(rec)
                    newest = max(newest, published)
                    if mid is not None and published >= since:
                        found.append((published, mid, p, rec.offset))
                if newest < since:
                    break
        for published, mid, p, off in sorted(found):
            self._dedup[mid] = (p, off, published)

    def _dedup_catch_up(self) -> None:
        """(dedup lock held, shared store) Take the msg ids the other processes published since
        this topic last looked into the window."""
        since = now_ms() - int(self.store.dedup_window_s * 1000)
        found = []
        for p, log in enumerate(self.partitions):
            # Under the partition's write lock: a publisher killed inside its append (after the
            # write, before it told the others) left a whole record that the next holder of the
            # lock adopts; its msg id must be seen, or the retry would store it twice.
            with log.transaction():
                end = log.end_offset
                start = max(self._dedup_seen[p], log.start_offset)
                if start < end:
                    for rec in log.replay(start, end):
                        published, mid = _msg_id_of(rec)
                        if mid is not None and published >= since:
                            found.append((published, mid, p, rec.offset))
            self._dedup_seen[p] = end
        for published, mid, p, off in sorted(found):
            self._dedup.pop(mid, None)
            self._dedup[mid] = (p, off, published)

    def _shared_dedup(self) -> ContextManager[None]:
        """The topic's dedup lock across processes (a shared store), else nothing."""
        if not self.store.shared:
            return contextlib.nullcontext()
        return flocks.held(os.path.join(topic_dir(self.store.root, self.name), DEDUP_LOCK_NAME))

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
            with self._dedup_lock, self._shared_dedup():
                if self.store.shared:
                    self._dedup_catch_up()
                published = now_ms()
                self._expire_dedup(published)
                seen = self._dedup.get(msg_id)
                if seen is None:
                    offset = self._publish_new_id(log, msg_id, value, key, headers, ts,
                                                  timestamp_ms, published, partition)
            if seen is not None:
                # The first publish may not be durable yet (another thread waiting for its
                # fsync, or a process killed before it): the retry's return promises what an
                # append's return does under the fsync policy.
                self.partitions[seen[0]].await_policy(seen[1] + 1)
                return seen[0], seen[1]
        else:
            offset = log.append(value, key=key, headers=headers, timestamp_ms=ts)
        self.store.notify_published(self, partition, offset, ts, key, value, headers)
        return partition, offset

    def _publish_new_id(self, log: Log, msg_id: str, value: Optional[bytes],
                        key: Optional[bytes], headers: Optional[Dict[str, bytes]], ts: int,
                        timestamp_ms: Optional[int], published: int, partition: int) -> int:
        """(dedup locks held) Append a message whose msg id is not in the window."""
        headers = dict(headers or {})
        headers[MSG_ID_HEADER] = msg_id.encode("utf-8")
        if timestamp_ms is not None:
            headers[MSG_ID_TIME_HEADER] = str(published).encode()
        offset = log.append(value, key=key, headers=headers, timestamp_ms=ts)
        if self._dedup_seen[partition] == offset:
            self._dedup_seen[partition] = offset + 1
        self._dedup.pop(msg_id, None)
        self._dedup[msg_id] = (partition, offset, published)
        return offset

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
        values, keys = as_sequence(values), as_sequence(keys, "keys")
        headers = as_sequence(headers, "headers")
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

    def replay_key(self, key: bytes, from_offset: int = 0,
                   partition: Optional[int] = None) -> List[Record]:
        """Every message published with ``key`` (an aggregate's events), in offset order, from
        ``from_offset`` of its partition on, each with ``.partition`` set; read through the
        partition's per-segment key indexes, not a scan of the partition (see
        ``Log.replay_key``).

        The partition is the one ``publish`` puts the key in (``partition_for_key``); a message
        published with an explicit ``partition=`` elsewhere is found only by passing that
        ``partition``. Raises what ``Log.replay`` raises (``OffsetOutOfRangeError`` for an
        offset outside the partition, ``CorruptLogError`` for damage met on the way).
        """
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes-like, got {type(key).__name__}"
                            + (" (encode it first)" if isinstance(key, str) else ""))
        if partition is None:
            partition = partition_for_key(bytes(key), len(self.partitions))
        elif not isinstance(partition, int) or not 0 <= partition < len(self.partitions):
            raise UnknownTopicError(f"topic {self.name!r} has no partition {partition!r}")
        return [rec._replace(partition=partition)
                for rec in self.partitions[partition].replay_key(key, from_offset)]

    def end_offsets(self) -> Dict[int, int]:
        return {p: log.end_offset for p, log in enumerate(self.partitions)}

    def start_offsets(self) -> Dict[int, int]:
        return {p: log.start_offset for p, log in enumerate(self.partitions)}

    def __repr__(self) -> str:
        return f"<logstore.Topic {self.name!r} partitions={len(self.partitions)}>"
