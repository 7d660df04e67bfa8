"""Committed consumer offsets, stored as an internal log (like Kafka's ``__consumer_offsets``).

Every commit appends records ``key = group \\0 topic \\0 partition``, ``value = int64 next offset``
(``None`` deletes the entry, e.g. on ``unsubscribe``), in one atomic batch, durable under the
store's fsync policy before ``commit`` returns. The latest record per key wins; on open the log is
replayed into a dict. The log is compacted like any other (latest value per key), so it stays
small; until compaction runs, replay cost grows with the number of commits.

In a store shared by several processes every process keeps its dict and folds in the records
the others appended before it reads (a cheap check of the log's end) and, inside a write
transaction of the log, before it commits.
"""

from __future__ import annotations

import struct
import threading
from typing import Dict, Iterator, Mapping, Optional, Tuple

from ..errors import CorruptLogError
from ..storage.log import Log

_OFFSET = struct.Struct("<q")
Key = Tuple[str, str, int]


def _encode_key(group: str, topic: str, partition: int) -> bytes:
    return f"{group}\0{topic}\0{partition}".encode("utf-8")


def _decode_key(raw: bytes) -> Key:
    group, topic, partition = raw.decode("utf-8").split("\0")
    return group, topic, int(partition)


class OffsetStore:
    """(group, topic, partition) -> committed next offset, durable and crash-safe."""

    def __init__(self, log: Log):
        self.log = log
        self._lock = threading.Lock()
        self._offsets: Dict[Key, int] = {}
        self._folded = 0  # the next record of the log not yet in _offsets
        self._fold(log.end_offset)

    def _fold(self, end: int) -> None:
        """(lock held, or at construction) Apply the records in ``[_folded, end)``."""
        log = self.log
        start = max(self._folded, log.start_offset)
        if start >= end:
            return
        for rec in log.replay(start, end):
            try:
                key = _decode_key(rec.key)
                if rec.value is None:
                    self._offsets.pop(key, None)
                else:
                    self._offsets[key] = _OFFSET.unpack(rec.value)[0]
            except (ValueError, struct.error, AttributeError):
                raise CorruptLogError(f"bad offsets record at offset {rec.offset}",
                                      log.path) from None
        self._folded = end

    def _current(self) -> Dict[Key, int]:
        """The offsets, with what other processes committed folded in (a shared store)."""
        if self.log.shared:
            with self._lock:
                end = self.log.end_offset
                if end > self._folded:
                    self._fold(end)
        return self._offsets

    def get(self, group: str, topic: str, partition: int) -> Optional[int]:
        return self._current().get((group, topic, partition))

    def group_offsets(self, group: str, topic: str) -> Dict[int, int]:
        return {p: o for (g, t, p), o in self._current().items() if g == group and t == topic}

    def items(self) -> Iterator[Tuple[Key, int]]:
        return iter(list(self._current().items()))

    def commit(self, group: str, topic: str, offsets: Mapping[int, Optional[int]]) -> None:
        """Durably store ``offsets`` ({partition: next offset, or None to delete}) atomically."""
        if not offsets:
            return
        items = sorted(offsets.items())
        keys = [_encode_key(group, topic, p) for p, _ in items]
        values = [None if o is None else _OFFSET.pack(o) for _, o in items]
        log = self.log
        prepared = log.prepare_batch(values, keys)
        with self._lock, log.transaction() as end:
            # Under both locks so that the log order equals the in-memory order of updates
            # (other processes' commits before it folded in first).
            self._fold(end)
            nxt = log.append_prepared(prepared, wait=False).stop
            self._folded = nxt
            for p, o in items:
                if o is None:
                    self._offsets.pop((group, topic, p), None)
                else:
                    self._offsets[(group, topic, p)] = o
        log.await_policy(nxt)

    def delete_group(self, group: str, topic: str) -> None:
        parts = self.group_offsets(group, topic)
        self.commit(group, topic, {p: None for p in parts})
