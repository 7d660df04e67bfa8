"""Work queue (SQS/RabbitMQ semantics) as a view over a topic.

Messages live only in the topic's partition logs. What happened to them (deliveries, acks,
nacks, dead-letterings, checkpoints) lives in the queue's event log, whose format is
:mod:`logstore.format.queue_events` and whose durable state the store keeps in a
:class:`~logstore.views.queue_state.QueueState` (so retention protects unacked messages whether
or not a ``WorkQueue`` object is open). This module schedules deliveries on top of that state:
what is ready, delayed or in flight, visibility timeouts, backoff, dead letters.

After a crash or reopen everything that was in flight is ready again (at-least-once); an acked
message is never delivered again. Delivery counts are in the log too, so a poison message that
kills its consumer still reaches the dead-letter topic after ``max_deliveries``.

Durability: ``ack``/``nack``/dead-lettering return after their event is durable under the store's
fsync policy (an event is applied to the in-memory state as it is appended, so a checkpoint
taken by another thread always includes it; the caller then waits for the fsync outside the
lock, so acks from several threads share fsyncs). Delivery events are written before ``get``
returns (so they survive a process crash) but ``get`` does not wait for their fsync: after a
power failure a delivery count may be one lower, which costs at most an extra redelivery.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import AckError, ConfigError, LogClosedError, QueueFullError
from ..format.names import REDRIVE_GROUP
from ..format.queue_events import ACKED, DEAD_LETTERED, DELIVERED, DONE_KINDS, NACKED
from ..record import Record
from ..util import now_ms
from .queue_state import QueueState

CHECKPOINT_EVERY = 20_000  # events between checkpoints (bounds replay at open)
NOT_BEFORE_HEADER = "x-not-before"
DLQ_REASON = "x-dead-letter-reason"
DLQ_COUNT = "x-delivery-count"
DLQ_SOURCE = "x-dead-letter-source"  # "<queue>:<partition>:<offset>"


class Message:
    """A message handed out by :meth:`WorkQueue.get`. Ack it, nack it, or let it expire."""

    __slots__ = ("value", "key", "headers", "offset", "partition", "delivery_count",
                 "timestamp_ms", "queue")

    def __init__(self, rec: Record, partition: int, count: int, queue: "WorkQueue"):
        self.value = rec.value
        self.key = rec.key
        self.headers = rec.headers
        self.offset = rec.offset
        self.partition = partition
        self.delivery_count = count
        self.timestamp_ms = rec.timestamp_ms
        self.queue = queue

    @property
    def id(self) -> str:
        """``"<partition>:<offset>"``: stable across deliveries of the same message."""
        return f"{self.partition}:{self.offset}"

    def ack(self) -> None:
        self.queue.ack(self)

    def nack(self, delay: Optional[float] = None) -> None:
        self.queue.nack(self, delay)

    def __repr__(self) -> str:
        return (f"<Message {self.id} delivery={self.delivery_count} "
                f"value={self.value[:40] if self.value else self.value!r}>")


class _Schedule:
    """In-memory scheduling of one partition (the durable state is the QueueState's)."""

    def __init__(self, scan: int):
        self.scan = scan  # next offset of the log not yet looked at
        self.ready: List[int] = []  # heap of offsets ready now
        self.delayed: List[Tuple[float, int]] = []  # heap (monotonic due time, offset)
        self.inflight: Dict[int, Tuple[float, int]] = {}  # offset -> (deadline, count)
        self.deadlines: List[Tuple[float, int, int]] = []  # heap (deadline, offset, count)
        self.cache: Dict[int, Record] = {}  # records read while scanning, until delivered


def _due(not_before_ms: int, now: float, now_ms: int) -> float:
    """A wall-clock not-before time as a monotonic due time (so a clock step back after the
    message was scheduled never stalls it)."""
    return now + (not_before_ms - now_ms) / 1000.0


class WorkQueue:
    """A work queue over topic ``name``. Create with ``store.queue(name, ...)``.

    Thread-safety: every method may be called from any thread; the state is guarded by the
    queue state's lock (``self._mutex``).
    """

    def __init__(self, store, name: str, *, visibility_timeout: float, max_deliveries: int,
                 dead_letter: Optional[str], max_depth: Optional[int], overflow: str,
                 partitions: Optional[int], backoff: Tuple[float, float]):
        if not isinstance(visibility_timeout, (int, float)) or visibility_timeout <= 0:
            raise ConfigError(f"visibility_timeout must be > 0 seconds (got {visibility_timeout!r})")
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or \
                max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be an int >= 1 (got {max_deliveries!r})")
        if max_depth is not None and (isinstance(max_depth, bool) or
                                      not isinstance(max_depth, int) or max_depth < 1):
            raise ConfigError(f"max_depth must be None or an int >= 1 (got {max_depth!r})")
        if overflow not in ("reject", "block"):
            raise ConfigError(f"overflow must be 'reject' or 'block' (got {overflow!r})")
        base, cap = backoff
        if not 0 <= base <= cap:
            raise ConfigError("backoff must be (base_seconds, cap_seconds) with 0 <= base <= cap")
        self.store = store
        self.name = name
        self.visibility_timeout = float(visibility_timeout)
        self.max_deliveries = max_deliveries
        self.max_depth = max_depth
        self.overflow = overflow
        self.backoff = (float(base), float(cap))
        self.topic = store.topic(name, partitions)
        self.dead_letter = store.topic(dead_letter, 1) if dead_letter else None
        self.closed = False
        # The durable state (event log, done offsets, delivery counts) is the store's: it
        # outlives this object (retention reads it) and is shared by every WorkQueue object of
        # the queue in this store. Its lock is this queue's mutex.
        self._state: QueueState = store.queue_state(name)
        self._mutex = self._state.lock
        self._cond = threading.Condition(self._mutex)
        self._sleepers = 0  # threads in self._cond.wait(): notify only when someone waits
        self._parts = [_Schedule(part.low) for part in self._state.parts]
        self._rr = 0
        if self.dead_letter is not None:
            self._check_redrive_cursor()

    def _check_redrive_cursor(self) -> None:
        """A redrive cursor beyond the dead-letter topic's end (it lost an unsynced tail) is cut
        back to the end, with a warning and a note in ``store.repairs``."""
        dl = self.dead_letter.partitions[0]
        group = REDRIVE_GROUP + self.name
        pos = self.store.offsets.get(group, self.dead_letter.name, 0)
        end = dl.end_offset
        if pos is not None and pos > end:
            self.store.repaired(f"queue {self.name!r}: redrive cursor {pos} beyond the end {end} "
                                f"of {self.dead_letter.name!r}: cut back to {end}")
            if not self.store.readonly:
                self.store.offsets.commit(group, self.dead_letter.name, {0: end})

    # ------------------------------------------------------------------ durable changes
    def _record(self, kind: bytes, p: int, off: int, count: int, t: int = 0) -> int:
        """(mutex held) Append and apply an event; checkpoint when due. Returns the offset the
        caller waits for (outside the mutex) to make the event durable."""
        state = self._state
        nxt = state.record(kind, p, off, count, t)
        if kind in DONE_KINDS:
            sched = self._parts[p]
            sched.cache.pop(off, None)
            sched.inflight.pop(off, None)
        if state.since_checkpoint >= CHECKPOINT_EVERY:
            nxt = state.checkpoint() + 1
            self._pending_hint = nxt - 1
        return nxt

    def _settle(self, nxt: int) -> None:
        """(mutex not held) Wait for the events below ``nxt`` to be durable; then commit the
        hint of a checkpoint taken meanwhile."""
        self._state.await_durable(nxt)
        hint = self._pending_hint
        if hint is not None:
            self._pending_hint = None
            self._state.commit_hint(hint)

    _pending_hint: Optional[int] = None

    def checkpoint(self) -> None:
        """Write the whole state as one event, so a reopen folds from it."""
        with self._mutex:
            off = self._state.checkpoint()
        self._state.await_durable(off + 1)
        self._state.commit_hint(off)

    def trim_events(self) -> Optional[Dict[str, Any]]:
        """Delete event-log segments wholly before the last durable checkpoint."""
        if self.closed:
            return None
        return self._state.trim()

    # ------------------------------------------------------------------ bookkeeping
    def _sleep(self, seconds: float) -> None:
        """(self._cond held) Wait for a wake-up or ``seconds``."""
        self._sleepers += 1
        try:
            self._cond.wait(seconds)
        finally:
            self._sleepers -= 1

    def _wake(self) -> None:
        """(self._cond held) Wake every waiting getter/putter, if there is one."""
        if self._sleepers:
            self._cond.notify_all()

    def _check(self) -> None:
        if self.closed:
            raise LogClosedError(f"queue {self.name!r} is closed")
        self.store.check_open()

    def _scan(self, p: int, now: float, now_ms: int, limit: int = 1000) -> None:
        """Look at new messages of partition p: make them ready or delayed."""
        sched = self._parts[p]
        part = self._state.parts[p]
        log = self.topic.partitions[p]
        if sched.scan >= log.end_offset:
            return
        start = log.start_offset
        if part.low < start:  # deleted under the queue (not by the store's retention)
            lost = self._state.follow_start(p, start)
            if lost:
                self._state.warn_skipped(p, lost, start)
        if sched.scan < part.low:
            sched.scan = part.low
        for rec in log.read_records(sched.scan, limit, None, p):
            off = rec.offset
            sched.scan = off + 1
            if off < part.low or off in part.done:
                continue
            nb = part.not_before.get(off)
            if nb is None:
                raw = rec.headers.get(NOT_BEFORE_HEADER)
                if raw is not None:
                    try:
                        nb = int(raw)
                    except ValueError:
                        nb = None
            sched.cache[off] = rec
            if nb is not None and nb > now_ms:
                heapq.heappush(sched.delayed, (_due(nb, now, now_ms), off))
            else:
                heapq.heappush(sched.ready, off)

    def _maintain(self, now: float) -> List[Tuple[int, int, int]]:
        """Expire visibility timeouts, release due delayed messages. Returns messages that ran
        out of deliveries (partition, offset, count) to dead-letter (outside the lock)."""
        doomed = []
        for p, sched in enumerate(self._parts):
            part = self._state.parts[p]
            dl = sched.deadlines
            while dl and dl[0][0] <= now:
                _, off, count = heapq.heappop(dl)
                cur = sched.inflight.get(off)
                if cur is None or cur[1] != count or cur[0] > now:
                    continue  # acked, or extended (a newer deadline entry exists)
                del sched.inflight[off]
                if count >= self.max_deliveries:
                    doomed.append((p, off, count))
                else:
                    heapq.heappush(sched.ready, off)
            delayed = sched.delayed
            while delayed and delayed[0][0] <= now:
                _, off = heapq.heappop(delayed)
                if off >= part.low and off not in part.done and off not in sched.inflight:
                    part.not_before.pop(off, None)
                    heapq.heappush(sched.ready, off)
        return doomed

    def _depth_total(self) -> int:
        """Messages not yet done (ready, delayed, in flight, or not yet scanned)."""
        total = 0
        for p, part in enumerate(self._state.parts):
            total += max(0, self.topic.partitions[p].end_offset - part.low - len(part.done))
        return total

    # ------------------------------------------------------------------ producing
    def put(self, value: Optional[bytes], key: Optional[bytes] = None,
            headers: Optional[Dict[str, bytes]] = None, delay: float = 0,
            timeout: Optional[float] = None) -> str:
        """Enqueue a message (deliverable after ``delay`` seconds); return its id.

        With ``max_depth`` reached: ``overflow="reject"`` raises :class:`QueueFullError`;
        ``"block"`` waits (up to ``timeout`` seconds, then QueueFullError).
        """
        if self.closed or self.store.closed:
            self._check()
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        if self.max_depth is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._mutex:
                while self._depth_total() >= self.max_depth:
                    if self.overflow == "reject":
                        raise QueueFullError(f"queue {self.name!r} holds max_depth="
                                             f"{self.max_depth} messages")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise QueueFullError(f"queue {self.name!r} stayed full for {timeout} s")
                    self._sleep(0.05 if left is None else min(left, 0.05))
                    self._check()
        not_before = None
        ts = now_ms()
        if delay:
            headers = dict(headers or {})
            not_before = ts + int(delay * 1000)
            headers[NOT_BEFORE_HEADER] = str(not_before).encode()
        p, off = self.topic.publish(value, key, headers, timestamp_ms=ts)
        with self._mutex:
            sched = self._parts[p]
            if sched.scan == off:
                # Our own put, next in line: queue it from memory instead of reading it back.
                sched.scan = off + 1
                sched.cache[off] = Record(off, ts, None if key is None else bytes(key),
                                          None if value is None else bytes(value),
                                          dict(headers or {}), p)
                if not_before is not None:
                    heapq.heappush(sched.delayed, (time.monotonic() + delay, off))
                else:
                    heapq.heappush(sched.ready, off)
            self._wake()
        return f"{p}:{off}"

    # ------------------------------------------------------------------ consuming
    def get(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next ready message, handed to this caller only, invisible to others for
        ``visibility_timeout`` seconds. Blocks; with ``timeout`` returns None when none came."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doomed: List[Tuple[int, int, int]] = []
            with self._mutex:
                if self.closed or self.store.closed:
                    self._check()
                now = time.monotonic()
                doomed = self._maintain(now)
                got = None if doomed else self._take(now, now_ms())
                if got is None and not doomed:
                    left = None if deadline is None else deadline - now
                    if left is not None and left <= 0:
                        return None
                    self._sleep(self._wait_time(now, left))
                    continue
                if got is not None and got[2] <= self.max_deliveries:
                    p, rec, count = got
                    # Delivery counts only bound redeliveries: written now (they survive a
                    # process crash) but not waited on for fsync; the next ack's covers them.
                    try:
                        self._record(DELIVERED, p, rec.offset, count)
                    except BaseException:
                        self._release_locked(p, rec.offset, count)
                        raise
                    return Message(rec, p, count, self)
            for p, off, count in doomed:
                self._dead_letter(p, off, count, "max_deliveries")
            if got is not None:
                # Counted deliveries (e.g. before a crash) exhausted: never hand it out again.
                p, rec, count = got
                self._dead_letter(p, rec.offset, count - 1, "max_deliveries")

    def _take(self, now: float, now_ms: int):
        n = len(self._parts)
        for i in range(n):
            p = (self._rr + i) % n
            sched = self._parts[p]
            part = self._state.parts[p]
            if not sched.ready:
                self._scan(p, now, now_ms)
            while sched.ready:
                off = heapq.heappop(sched.ready)
                if off < part.low or off in part.done or off in sched.inflight:
                    continue
                rec = sched.cache.pop(off, None)
                if rec is None:
                    rec = self.topic.partitions[p].read_records(off, 1, None, p)[0]
                count = part.counts.get(off, 0) + 1
                deadline = now + self.visibility_timeout
                sched.inflight[off] = (deadline, count)
                heapq.heappush(sched.deadlines, (deadline, off, count))
                self._rr = p + 1
                return p, rec, count
        return None

    def _wait_time(self, now: float, left: Optional[float]) -> float:
        waits = [0.05]  # also notice messages published by other paths than put()
        if left is not None:
            waits.append(left)
        for sched in self._parts:
            if sched.deadlines:
                waits.append(sched.deadlines[0][0] - now)
            if sched.delayed:
                waits.append(sched.delayed[0][0] - now)
        return max(0.0, min(waits))

    def _release_locked(self, p: int, off: int, count: int) -> None:
        sched = self._parts[p]
        if sched.inflight.get(off, (0, None))[1] == count:
            del sched.inflight[off]
            heapq.heappush(sched.ready, off)
        self._wake()

    def _claim(self, msg: Message) -> _Schedule:
        """(mutex held) Validate that ``msg`` is this queue's current delivery and take it out
        of flight."""
        if not isinstance(msg, Message) or msg.queue is not self:
            raise AckError(f"not a message of queue {self.name!r}: {msg!r}")
        sched = self._parts[msg.partition]
        cur = sched.inflight.get(msg.offset)
        if cur is None or cur[1] != msg.delivery_count:
            if not self._state.unsettled(msg.partition, msg.offset):
                raise AckError(f"message {msg.id} is already done (acked or dead-lettered)")
            raise AckError(f"message {msg.id} (delivery {msg.delivery_count}) expired: its "
                           f"visibility timeout passed and it is or will be delivered again")
        if cur[0] <= time.monotonic():
            raise AckError(f"message {msg.id} (delivery {msg.delivery_count}) expired: its "
                           f"visibility timeout passed and it is or will be delivered again")
        del sched.inflight[msg.offset]
        return sched

    def ack(self, msg: Message) -> None:
        """Mark ``msg`` done, durably: it is never delivered again. AckError if unknown,
        already acked or expired (state unchanged)."""
        with self._mutex:
            if self.closed or self.store.closed:
                self._check()
            self._claim(msg)
            try:
                nxt = self._record(ACKED, msg.partition, msg.offset, msg.delivery_count)
            except BaseException:
                self._undo_claim_locked(msg)
                raise
            self._wake()
        self._settle(nxt)

    def _undo_claim_locked(self, msg: Message) -> None:
        heapq.heappush(self._parts[msg.partition].ready, msg.offset)
        self._wake()

    def nack(self, msg: Message, delay: Optional[float] = None) -> None:
        """Give ``msg`` back for redelivery after ``delay`` seconds (default: exponential backoff
        ``base * 2**(deliveries-1)`` capped, with full jitter). After ``max_deliveries`` it goes
        to the dead-letter topic instead."""
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"delay must be None or seconds >= 0, got {delay!r}")
        with self._mutex:
            self._check()
            sched = self._claim(msg)
            if msg.delivery_count < self.max_deliveries:
                if delay is None:
                    base, cap = self.backoff
                    delay = random.uniform(0, min(cap, base * 2 ** (msg.delivery_count - 1)))
                not_before = now_ms() + int(delay * 1000)
                try:
                    nxt = self._record(NACKED, msg.partition, msg.offset, msg.delivery_count,
                                       not_before)
                except BaseException:
                    self._undo_claim_locked(msg)
                    raise
                heapq.heappush(sched.delayed, (time.monotonic() + delay, msg.offset))
                self._wake()
                nxt_or_none: Optional[int] = nxt
            else:
                nxt_or_none = None
        if nxt_or_none is None:
            self._dead_letter(msg.partition, msg.offset, msg.delivery_count, "max_deliveries")
        else:
            self._settle(nxt_or_none)

    def extend(self, msg: Message, seconds: float) -> None:
        """Keep ``msg`` invisible to others for ``seconds`` from now (AckError if expired)."""
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        with self._mutex:
            self._check()
            sched = self._claim(msg)
            deadline = time.monotonic() + seconds
            sched.inflight[msg.offset] = (deadline, msg.delivery_count)
            heapq.heappush(sched.deadlines, (deadline, msg.offset, msg.delivery_count))

    def _dead_letter(self, p: int, off: int, count: int, reason: str) -> None:
        rec = self.topic.partitions[p].read_records(off, 1, None, p)[0]
        if self.dead_letter is not None:
            headers = dict(rec.headers)
            headers.pop(NOT_BEFORE_HEADER, None)
            headers[DLQ_REASON] = reason.encode()
            headers[DLQ_COUNT] = str(count).encode()
            headers[DLQ_SOURCE] = f"{self.name}:{p}:{off}".encode()
            self.dead_letter.publish(rec.value, rec.key, headers)
        with self._mutex:
            if not self._state.unsettled(p, off):
                return  # dead-lettered meanwhile by another thread: one D event only
            nxt = self._record(DEAD_LETTERED, p, off, count)
            self._wake()
        self._settle(nxt)

    # ------------------------------------------------------------------ dead letters
    def redrive(self, max_messages: Optional[int] = None) -> int:
        """Move dead-lettered messages back into this queue (fresh delivery count). Returns how
        many were moved. The dead-letter topic keeps its copy; a cursor remembers what moved."""
        self._check()
        if self.dead_letter is None:
            return 0
        group = REDRIVE_GROUP + self.name
        dl = self.dead_letter.partitions[0]
        pos = self.store.offsets.get(group, self.dead_letter.name, 0)
        pos = dl.start_offset if pos is None else max(pos, dl.start_offset)
        moved = 0
        while max_messages is None or moved < max_messages:
            n = 500 if max_messages is None else min(500, max_messages - moved)
            recs = dl.read(pos, n) if pos < dl.end_offset else []
            if not recs:
                break
            for rec in recs:
                headers = {k: v for k, v in rec.headers.items()
                           if k not in (DLQ_REASON, DLQ_COUNT, DLQ_SOURCE)}
                self.put(rec.value, rec.key, headers)
                moved += 1
                pos = rec.offset + 1
            self.store.offsets.commit(group, self.dead_letter.name, {0: pos})
        return moved

    def dead_lettered(self) -> int:
        """Messages in the dead-letter topic not yet redriven."""
        if self.dead_letter is None:
            return 0
        dl = self.dead_letter.partitions[0]
        pos = self.store.offsets.get(REDRIVE_GROUP + self.name, self.dead_letter.name, 0) or 0
        return max(0, dl.end_offset - max(pos, dl.start_offset))

    # ------------------------------------------------------------------ introspection
    def stats(self) -> Dict[str, Any]:
        """``depth`` (ready now), ``in_flight``, ``delayed``, ``dead_lettered``, ``oldest_age_s``
        (age of the oldest message not yet done), ``total`` (not yet done)."""
        with self._mutex:
            self._check()
            now = time.monotonic()
            wall = now_ms()
            doomed = self._maintain(now)
            for p in range(len(self._parts)):
                while self._parts[p].scan < self.topic.partitions[p].end_offset:
                    self._scan(p, now, wall, 10_000)
            in_flight = sum(len(sched.inflight) for sched in self._parts)
            delayed = sum(len({o for _, o in sched.delayed if self._state.unsettled(p, o)})
                          for p, sched in enumerate(self._parts))
            total = self._depth_total()
            lows = [(p, part.low) for p, part in enumerate(self._state.parts)
                    if part.low < self.topic.partitions[p].end_offset]
        for p, off, count in doomed:
            self._dead_letter(p, off, count, "max_deliveries")
        oldest = None
        for p, low in lows:
            ts = self.topic.partitions[p].get(low).timestamp_ms
            oldest = ts if oldest is None else min(oldest, ts)
        return {
            "depth": max(0, total - in_flight - delayed),
            "in_flight": in_flight,
            "delayed": delayed,
            "dead_lettered": self.dead_lettered(),
            "oldest_age_s": 0.0 if oldest is None else max(0.0, (wall - oldest) / 1000.0),
            "total": total,
            "skipped": self._state.skipped,
        }

    def low_watermarks(self) -> Dict[int, int]:
        """``{partition: first offset not yet done}`` (drives queue retention)."""
        with self._mutex:
            return self._state.low_watermarks()

    def close(self) -> None:
        """Checkpoint the state. In-flight messages become ready again at the next open (of
        this store or another); the state stays with the store (retention reads it)."""
        if self.closed:
            return
        try:
            if not self.store.readonly and not self._state.events.closed:
                self.checkpoint()
        finally:
            self.closed = True
            with self._mutex:
                self._wake()

    def __len__(self) -> int:
        with self._mutex:
            return self._depth_total()

    def __repr__(self) -> str:
        return f"<logstore.WorkQueue {self.name!r}>"
