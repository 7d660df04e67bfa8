"""Stream views over a topic: consumer groups (Kafka-style) and durable pub/sub subscriptions.

A group's state is one position per partition ("next offset to read"), shared by the group's
members in this process; committed positions live in the store's offset log. Members split the
partitions (partition p goes to member ``p % members``), and the split is recomputed when a member
joins or closes. Nothing is copied: a poll reads the partition logs directly.

Across processes: a store has one writer process; consumers in other processes can open it
read-only and read topics, but commits (and so groups) belong to the writing process.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError, LogClosedError, OffsetOutOfRangeError, UnknownTopicError
from .record import Record

SUBSCRIPTION_PREFIX = "__sub__"
_POLL_SLICE = 0.05  # also re-check the logs this often while blocked (appends by other paths)


def _group_state_key(group: str, topic: str) -> Tuple[str, str]:
    return group, topic


def validate_group(group_id: object) -> str:
    if not isinstance(group_id, str):
        raise TypeError(f"group id must be a str, got {type(group_id).__name__}")
    if not group_id or len(group_id) > 200 or "\0" in group_id or group_id.startswith("__"):
        raise ConfigError(f"invalid group id {group_id!r}: 1-200 characters, no NUL, not "
                          f"starting with '__' (reserved)")
    return group_id


def _check_start(start: object) -> str:
    if start not in ("earliest", "latest"):
        raise ConfigError(f"start must be 'earliest' or 'latest' (got {start!r})")
    return start  # type: ignore[return-value]


class _GroupState:
    """Positions and members of one (group, topic) in this process."""

    def __init__(self, store, group: str, topic, start: str):
        self.group = group
        self.topic = topic
        self.lock = threading.Lock()
        self.members: List["Consumer"] = []
        self.closed = False
        committed = store.offsets.group_offsets(group, topic.name)
        self.positions: Dict[int, int] = {}
        initial: Dict[int, int] = {}
        for p, log in enumerate(topic.partitions):
            if p in committed:
                self.positions[p] = committed[p]
            else:
                pos = log.start_offset if start == "earliest" else log.end_offset
                self.positions[p] = initial[p] = pos
        if initial and not store.readonly:
            # Make the starting point durable now: a "latest" group or subscription created
            # before a crash must not skip what was published between creation and first commit.
            store.offsets.commit(group, topic.name, initial)


class Consumer:
    """A member of a consumer group on one topic. Create with ``store.consumer(group, topic)``."""

    def __init__(self, store, group_id: str, topic, start: str = "earliest",
                 _internal: bool = False):
        if not _internal:
            validate_group(group_id)
        _check_start(start)
        self.store = store
        self.group_id = group_id
        self.topic = topic
        self._closed = False
        self._rr = itertools.count()
        key = _group_state_key(group_id, topic.name)
        with store._lock:
            store._check_open()
            state = store._groups.get(key)
            if state is None or state.closed:
                state = store._groups[key] = _GroupState(store, group_id, topic, start)
            with state.lock:
                state.members.append(self)
        self._state = state

    # ------------------------------------------------------------------ membership
    def assignment(self) -> List[int]:
        """The partitions this member reads (``p % members == my index``)."""
        st = self._state
        with st.lock:
            if self not in st.members:
                return []
            i = st.members.index(self)
            n = len(st.members)
        return [p for p in range(self.topic.partition_count) if p % n == i]

    def _check(self) -> None:
        if self._closed or self._state.closed:
            raise LogClosedError(f"consumer {self.group_id!r} on {self.topic.name!r} is closed")
        self.store._check_open()

    # ------------------------------------------------------------------ reading
    def poll(self, max_records: int = 500, timeout: float = 0.0) -> List[Record]:
        """Up to ``max_records`` records from the assigned partitions (each with ``partition``).

        Waits up to ``timeout`` seconds for data when there is none; returns [] on timeout.
        """
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be an int >= 1, got {max_records!r}")
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            out = self._poll_once(max_records)
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            self.store.wait_for_data(min(left, _POLL_SLICE))

    def _poll_once(self, max_records: int) -> List[Record]:
        parts = self.assignment()
        if not parts:
            return []
        k = next(self._rr) % len(parts)
        parts = parts[k:] + parts[:k]  # rotate so no partition starves another
        out: List[Record] = []
        st = self._state
        for p in parts:
            log = self.topic.partitions[p]
            with st.lock:
                pos = st.positions[p]
            start = log.start_offset
            if pos < start:
                pos = start  # retention removed what we had not read: continue at the start
            if pos >= log.end_offset:
                continue
            recs = log._read(pos, max_records - len(out), None, p)
            if recs:
                with st.lock:
                    st.positions[p] = recs[-1].offset + 1
                out.extend(recs)
            if len(out) >= max_records:
                break
        return out

    def __iter__(self):
        """Yield records forever, blocking for new ones (stop by closing the consumer)."""
        while not self._closed:
            try:
                batch = self.poll(500, timeout=1.0)
            except LogClosedError:
                return
            yield from batch

    # ------------------------------------------------------------------ positions
    def position(self, partition: int) -> int:
        self._check_partition(partition)
        with self._state.lock:
            return self._state.positions[partition]

    def committed(self) -> Dict[int, int]:
        return self.store.offsets.group_offsets(self.group_id, self.topic.name)

    def _check_partition(self, partition: object) -> int:
        if isinstance(partition, bool) or not isinstance(partition, int) or not (
                0 <= partition < self.topic.partition_count):
            raise UnknownTopicError(f"topic {self.topic.name!r} has no partition {partition!r}")
        return partition

    def commit(self, offsets: Optional[Mapping[int, int]] = None) -> None:
        """Durably commit positions. Default: the position after the last polled record of each
        assigned partition. ``offsets`` = ``{partition: next offset to read}`` (Kafka's meaning)."""
        self._check()
        self.store._check_writable()
        if offsets is None:
            parts = self.assignment()
            with self._state.lock:
                todo = {p: self._state.positions[p] for p in parts}
        else:
            todo = {}
            for p, off in dict(offsets).items():
                self._check_partition(p)
                log = self.topic.partitions[p]
                if isinstance(off, bool) or not isinstance(off, int):
                    raise TypeError(f"offset must be an int, got {type(off).__name__}")
                end = log.end_offset
                if not 0 <= off <= end:
                    raise OffsetOutOfRangeError(
                        f"cannot commit offset {off} for {self.topic.name!r} partition {p}: "
                        f"outside [0, {end}] (end_offset)")
                todo[p] = off
        self.store.offsets.commit(self.group_id, self.topic.name, todo)

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (in [start_offset, end_offset])."""
        self._check()
        self._check_partition(partition)
        log = self.topic.partitions[partition]
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if not log.start_offset <= offset <= log.end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} outside [{log.start_offset}, {log.end_offset}] of "
                f"{self.topic.name!r} partition {partition}")
        with self._state.lock:
            self._state.positions[partition] = offset

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Move every assigned partition to its first record with timestamp >= ``timestamp_ms``."""
        self._check()
        for p in self.assignment():
            off = self.topic.partitions[p].offset_for_time(timestamp_ms)
            with self._state.lock:
                self._state.positions[p] = off

    def seek_to_beginning(self) -> None:
        for p in self.assignment():
            self.seek(p, self.topic.partitions[p].start_offset)

    def seek_to_end(self) -> None:
        for p in self.assignment():
            self.seek(p, self.topic.partitions[p].end_offset)

    def lag(self) -> Dict[int, int]:
        """``{partition: records between this member's position and the end}`` (assigned ones)."""
        self._check()
        out = {}
        for p in self.assignment():
            log = self.topic.partitions[p]
            with self._state.lock:
                pos = self._state.positions[p]
            out[p] = max(0, log.end_offset - max(pos, log.start_offset))
        return out

    def close(self) -> None:
        """Leave the group (its partitions go to the remaining members). Does not commit."""
        if self._closed:
            return
        self._closed = True
        with self._state.lock:
            if self in self._state.members:
                self._state.members.remove(self)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<logstore.Consumer group={self.group_id!r} topic={self.topic.name!r}>"


class Subscription(Consumer):
    """A durable pub/sub subscription: its own position, receives every message (see
    ``Store.subscribe``). Positions persist across reopen; ``store.unsubscribe`` removes it."""

    def __init__(self, store, name: str, topic, start: str = "latest"):
        from .store import validate_name

        validate_name("subscription", name)
        self.name = name
        super().__init__(store, SUBSCRIPTION_PREFIX + name, topic, start, _internal=True)

    def __repr__(self) -> str:
        return f"<logstore.Subscription {self.name!r} topic={self.topic.name!r}>"
