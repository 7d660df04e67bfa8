"""A topic: named partitions of a store, and publishing to them.

``publish`` places a keyed message by ``partition_for_key`` (per-key order is kept) and
round-robins unkeyed ones; ``msg_id`` deduplicates retries within the store's
``dedup_window_s``, counted from when a message was published (the store's clock), whatever
its ``timestamp_ms``. ``publish_batch`` writes one batch per partition. A topic's shaping
settings (retention, cleanup policy, compression, segment size...) are stored in its
``topic.json`` and in each partition's ``logstore.meta``; ``configure`` changes them.

Thread-safety: publishing from several threads is safe (each partition log serialises its
writes; the dedup window has its own lock).
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import MissingKeyError, UnknownTopicError
from ..format.encode import check_batch_shape
from ..record import Record
from ..storage.loader import configured
from ..storage.log import Log
from ..util import now_ms
from .names import partition_for_key

if TYPE_CHECKING:
    from .store import Store

MSG_ID_HEADER = "x-msg-id"
# Publish time (ms, the store's clock) of a message with msg_id whose timestamp_ms was given:
# the dedup window counts from when a message was published, whatever its own timestamp.
MSG_ID_TIME_HEADER = "x-msg-id-ms"


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
