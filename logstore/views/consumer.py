"""Stream views over a topic: consumer groups (Kafka-style) and durable pub/sub subscriptions.

A group's members split the topic's partitions: partition p goes to member ``p % members``,
members ordered by joining time, in one process or across several (see :mod:`logstore.leases`).
A process reads and commits a partition only while it holds the partition's **lease** for the
group (the lock of the partition's lease log, where its commits go); members re-split when one
joins, leaves or dies. Nothing is copied: a poll reads the partition logs directly, through a
read-only store in any process but the writer's.

Positions ("next offset to read") are shared by the members of a group in one process, so a
partition moving between them keeps its position. A partition moving to another process
continues from its last commit: what was polled and not committed is delivered again
(at-least-once).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Dict, List, Mapping, Optional

from . import leases
from ..errors import (
    ConfigError,
    LogClosedError,
    LogstoreError,
    NotAssignedError,
    OffsetOutOfRangeError,
    UnknownTopicError,
)
from ..storage.log import Log
from ..record import Record
from .counters import WindowCounter
from .names import validate_name

logger = logging.getLogger("logstore")

SUBSCRIPTION_PREFIX = "__sub__"
_POLL_SLICE = 0.05  # also re-check the logs this often while blocked (appends by other paths)
#: How often a polling member looks at the group's membership and leases (seconds): the longest
#: a partition waits, after a member joins or dies, before its new owner can take it.
REBALANCE_INTERVAL_S = 0.2


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
    """One (group, topic) in this process: its members here, the leases they hold, positions."""

    def __init__(self, store, group: str, topic, start: str):
        self.store = store
        self.group = group
        self.topic = topic
        self.start = start
        self.lock = threading.RLock()
        self.members: List["Consumer"] = []
        self.closed = False
        self.dir = leases.ensure_group_dir(store.fs, store.root, topic.name, group)
        self.members_dir = os.path.join(self.dir, leases.MEMBERS_DIR)
        self.leases: Dict[int, Log] = {}
        self.positions: Dict[int, int] = {}  # of leased partitions
        self.committed: Dict[int, int] = {}  # of leased partitions
        self.assigned: Dict["Consumer", List[int]] = {}
        self._next_check = 0.0
        self.polled = WindowCounter()  # for store.metrics(): records polled here, errors
        self.errors = 0

    # ------------------------------------------------------------------ membership
    def join(self, member: "Consumer") -> None:
        with self.lock:
            member._member = leases.Member(self.members_dir)
            self.members.append(member)
            try:
                self.rebalance(force=True)
            except BaseException:
                # A member that failed to join must not stay in the group: the others would
                # leave its share of the partitions unread.
                self.members.remove(member)
                member._member.leave()
                self.assigned.pop(member, None)
                try:
                    self.rebalance(force=True)  # give its share back to the others
                except Exception:
                    pass  # the next poll's rebalance retries; the join's error is the news
                raise

    def leave(self, member: "Consumer") -> None:
        with self.lock:
            if member in self.members:
                self.members.remove(member)
                member._member.leave()
            self.rebalance(force=True)

    def rebalance(self, force: bool = False) -> None:
        """Release the leases no member here should hold, take the free ones they should."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        with self.lock:
            self._next_check = now + REBALANCE_INTERVAL_S
            if self.closed:
                return
            ours = {m._member.id: m for m in self.members}
            live = sorted(set(leases.live_members(self.members_dir)) | set(ours))
            n = self.topic.partition_count
            wanted = {m: leases.assignment(live, mid, n) for mid, m in ours.items()}
            keep = set(itertools.chain.from_iterable(wanted.values()))
            for p in sorted(set(self.leases) - keep):
                self._release(p)
            for p in sorted(keep - set(self.leases)):
                self._acquire(p)
            self.assigned = {m: [p for p in ps if p in self.leases] for m, ps in wanted.items()}

    def _acquire(self, p: int) -> None:
        log = leases.try_lease(self.store.open_lease_log, os.path.join(self.dir, str(p)))
        if log is None:
            return  # another process still holds it; try again at the next rebalance
        try:
            pos = leases.last_commit(log)
            if pos is None:
                # A new group (or one from before leases: its commit is in the offsets log).
                pos = self.store.offsets.get(self.group, self.topic.name, p)
                part = self.topic.partitions[p]
                if pos is None and leases.was_started(self.dir, p):
                    # Its lease log was lost (deleted or damaged away): starting at "latest"
                    # would skip what was published since its last commit. Start over from
                    # the earliest record instead (duplicates, never a gap), and say so.
                    pos = part.start_offset
                    self.store.repaired(
                        f"group {self.group!r} topic {self.topic.name!r} partition {p}: its "
                        f"lease log (and commits) is missing: starting again from the "
                        f"earliest offset {pos}")
                elif pos is None:
                    pos = part.start_offset if self.start == "earliest" else part.end_offset
                leases.mark_started(self.store.fs, self.dir, p)
                # Durable at once: a "latest" group created before a crash must not skip what
                # was published between its creation and its first commit.
                leases.append_commit(log, pos)
            end = self.topic.partitions[p].end_offset
            if pos > end:
                # The topic lost an unsynced tail the commit's log kept (power loss): records
                # published from now on would be skipped. Cut back, say so, durably.
                self.store.repaired(f"group {self.group!r} topic {self.topic.name!r} partition "
                                    f"{p}: commit {pos} beyond the end {end}: cut back to {end}")
                pos = end
                leases.append_commit(log, pos)
        except BaseException:
            log.close()
            raise
        self.leases[p] = log
        self.positions[p] = self.committed[p] = pos

    def _release(self, p: int) -> None:
        log = self.leases.pop(p)
        self.positions.pop(p, None)
        self.committed.pop(p, None)
        log.close()

    def commit(self, offsets: Mapping[int, int]) -> None:
        with self.lock:
            missing = sorted(p for p in offsets if p not in self.leases)
            if missing:
                raise NotAssignedError(
                    f"group {self.group!r} does not hold partition(s) {missing} of "
                    f"{self.topic.name!r} here: another member reads them now (nothing "
                    f"committed)")
            for p, off in sorted(offsets.items()):
                leases.append_commit(self.leases[p], off)
                self.committed[p] = off

    def close(self) -> None:
        """Release every lease and member file (store close / unsubscribe)."""
        with self.lock:
            self.closed = True
            for m in self.members:
                m._member.leave()
            self.members = []
            self.assigned = {}
            for p in list(self.leases):
                self._release(p)


class Consumer:
    """A member of a consumer group on one topic. Create with ``store.consumer(group, topic)``."""

    def __init__(self, store, group_id: str, topic, start: str = "earliest",
                 _internal: bool = False, on_out_of_range: str = "earliest"):
        if not _internal:
            validate_group(group_id)
        _check_start(start)
        if on_out_of_range not in ("earliest", "error"):
            raise ConfigError(f"on_out_of_range must be 'earliest' or 'error' (got "
                              f"{on_out_of_range!r})")
        self.on_out_of_range = on_out_of_range
        self._skipped: Dict[int, int] = {}
        self.store = store
        self.group_id = group_id
        self.topic = topic
        self._closed = False
        self._rr = itertools.count()
        self._state = store.join_group(
            group_id, topic.name, lambda: _GroupState(store, group_id, topic, start), self)

    # ------------------------------------------------------------------ membership
    def assignment(self) -> List[int]:
        """The partitions this member reads now: ``p % members == its index`` among the
        group's live members (in every process), once it holds their leases."""
        st = self._state
        st.rebalance()
        with st.lock:
            return list(st.assigned.get(self, ()))

    def _check(self) -> None:
        if self._closed or self._state.closed:
            raise LogClosedError(f"consumer {self.group_id!r} on {self.topic.name!r} is closed")
        self.store.check_open()

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
            try:
                out = self._poll_once(max_records)
            except LogstoreError:
                self._state.errors += 1
                raise
            if out:
                self._state.polled.add(len(out))
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
                pos = st.positions.get(p)
                lease = st.leases.get(p)
            if pos is None:
                continue  # released since assignment() (a rebalance in another thread)
            end = log.end_offset  # (first: a read-only log catches up with the writer here)
            if pos < log.start_offset:
                pos = self._below_start(p, pos, log.start_offset, lease)
            if pos >= end:
                continue
            try:
                recs = log.read_records(pos, max_records - len(out), None, p)
            except OffsetOutOfRangeError:
                if log.start_offset <= pos:
                    raise
                continue  # retention passed us while reading: the next poll says so
            if recs:
                with st.lock:
                    if st.leases.get(p) is not lease:
                        continue  # the lease moved meanwhile: its new holder delivers these
                    st.positions[p] = recs[-1].offset + 1
                out.extend(recs)
            if len(out) >= max_records:
                break
        return out

    def _below_start(self, p: int, pos: int, start: int, lease: Optional[Log]) -> int:
        """Retention removed records this member had not read: ``on_out_of_range="error"``
        raises; ``"earliest"`` continues at ``start``, counts them in :attr:`skipped` and logs a
        warning (Kafka's ``auto.offset.reset``)."""
        what = (f"group {self.group_id!r} topic {self.topic.name!r} partition {p}: position "
                f"{pos} is below the start offset {start} (retention removed offsets "
                f"{pos}..{start - 1} before they were read)")
        if self.on_out_of_range == "error":
            raise OffsetOutOfRangeError(f"{what}; seek() to continue")
        logger.warning("%s: continuing at %d, %d records skipped", what, start, start - pos)
        st = self._state
        with st.lock:
            if st.leases.get(p) is lease and st.positions.get(p) == pos:
                st.positions[p] = start
                self._skipped[p] = self._skipped.get(p, 0) + start - pos
        return start

    @property
    def skipped(self) -> Dict[int, int]:
        """``{partition: records skipped}``: records retention removed before this member read
        them (it continued at the start offset, ``on_out_of_range="earliest"``)."""
        return dict(self._skipped)

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
        """The next offset this process reads from ``partition`` (one it holds the lease of)."""
        self._check_partition(partition)
        with self._state.lock:
            pos = self._state.positions.get(partition)
        if pos is None:
            raise self._not_assigned(partition)
        return pos

    def committed(self) -> Dict[int, int]:
        """``{partition: committed next offset}`` of the group, for every partition that has one
        (including partitions other members, in any process, hold)."""
        out = self.store.group_commits(self.group_id, self.topic.name)
        with self._state.lock:
            out.update(self._state.committed)
        return out

    def _check_partition(self, partition: object) -> int:
        if isinstance(partition, bool) or not isinstance(partition, int) or not (
                0 <= partition < self.topic.partition_count):
            raise UnknownTopicError(f"topic {self.topic.name!r} has no partition {partition!r}")
        return partition

    def _not_assigned(self, partition: int) -> NotAssignedError:
        return NotAssignedError(
            f"partition {partition} of {self.topic.name!r} is not leased to group "
            f"{self.group_id!r} in this process: another member reads it now")

    def _set_position(self, partition: int, offset: int) -> None:
        with self._state.lock:
            if partition not in self._state.positions:
                raise self._not_assigned(partition)
            self._state.positions[partition] = offset

    def commit(self, offsets: Optional[Mapping[int, int]] = None) -> None:
        """Durably commit positions. Default: the position after the last polled record of each
        assigned partition. ``offsets`` = ``{partition: next offset to read}`` (Kafka's meaning);
        a partition whose lease another member holds raises :class:`NotAssignedError` and
        nothing is committed. Works in a read-only store too: commits go to the lease logs."""
        self._check()
        if offsets is None:
            parts = self.assignment()
            with self._state.lock:
                todo = {p: self._state.positions[p] for p in parts
                        if p in self._state.positions}
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
        self._state.commit(todo)

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
        self._set_position(partition, offset)

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Move every assigned partition to its first record with timestamp >= ``timestamp_ms``."""
        self._check()
        for p in self.assignment():
            self._set_position(p, self.topic.partitions[p].offset_for_time(timestamp_ms))

    def seek_to_beginning(self) -> None:
        """Move every assigned partition to its first retained record (``start_offset``)."""
        for p in self.assignment():
            self.seek(p, self.topic.partitions[p].start_offset)

    def seek_to_end(self) -> None:
        """Move every assigned partition to its end: only records published later are read."""
        for p in self.assignment():
            self.seek(p, self.topic.partitions[p].end_offset)

    def lag(self) -> Dict[int, int]:
        """``{partition: records between this member's position and the end}`` (assigned ones)."""
        self._check()
        out = {}
        for p in self.assignment():
            log = self.topic.partitions[p]
            with self._state.lock:
                pos = self._state.positions.get(p)
            if pos is not None:
                end = log.end_offset  # (first: a read-only log catches up here)
                out[p] = max(0, end - max(pos, log.start_offset))
        return out

    def close(self) -> None:
        """Leave the group: its partitions go to the remaining members (here at once, in other
        processes at their next poll). Does not commit."""
        if self._closed:
            return
        self._closed = True
        self._state.leave(self)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<logstore.Consumer group={self.group_id!r} topic={self.topic.name!r}>"


class Subscription(Consumer):
    """A durable pub/sub subscription: its own position, receives every message (see
    ``Store.subscribe``). Positions persist across reopen; ``store.unsubscribe`` removes it."""

    def __init__(self, store, name: str, topic, start: str = "latest",
                 on_out_of_range: str = "earliest"):
        validate_name("subscription", name)
        self.name = name
        super().__init__(store, SUBSCRIPTION_PREFIX + name, topic, start, _internal=True,
                         on_out_of_range=on_out_of_range)

    def __repr__(self) -> str:
        return f"<logstore.Subscription {self.name!r} topic={self.topic.name!r}>"
