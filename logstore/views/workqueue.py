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

Several processes (a store opened with ``shared=True`` by each): every decision (a delivery, an
ack, a nack, an extension, a dead-lettering) is taken inside a write transaction of the event log
after folding in what the other processes recorded (``QueueState.transaction``), so a message is
handed to one getter at a time across processes, and an ack of a delivery another process has
since taken over (its lease expired) is refused. Deliveries carry their lease deadline (wall
clock), so every process knows until when another holds a message; a worker process killed
while holding messages has them delivered again when their visibility timeout passes (or at
once when the queue is next opened by a process that finds no other one sharing it).

Durability: ``ack``/``nack``/dead-lettering return after their event is durable under the store's
fsync policy (an event is applied to the in-memory state as it is appended, so a checkpoint
taken by another thread always includes it; the caller then waits for the fsync outside the
lock, so acks from several threads share fsyncs). Delivery events are written before ``get``
returns (so they survive a process crash) but ``get`` does not wait for their fsync: after a
power failure a delivery count may be one lower, which costs at most an extra redelivery.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from typing import Any, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import AckError, ConfigError, LogClosedError, QueueFullError
from ..format.names import REDRIVE_GROUP, REDRIVE_LOCK_NAME
from ..format.queue_events import (
    ACKED, DEAD_LETTER_REASONS, DEAD_LETTERED, DELIVERED, DONE_KINDS, EXTENDED, NACKED,
)
from ..record import Record
from ..util import now_ms
from . import flocks
from .queue_schedule import (
    EXPIRES_HEADER, NOT_BEFORE_HEADER, PRIORITY_HEADER, Scheduler,
)
from .queue_state import Event, QueueState

CHECKPOINT_EVERY = 20_000  # events between checkpoints (bounds replay at open)
OVERFLOW_POLICIES = ("reject", "block", "drop_newest", "drop_oldest")
MAX_DELIVERIES, EXPIRED, OVERFLOW = DEAD_LETTER_REASONS  # x-dead-letter-reason values
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


_NO_NEWS: ContextManager[Optional[List[Event]]] = contextlib.nullcontext([])


class WorkQueue:
    """A work queue over topic ``name``. Create with ``store.queue(name, ...)``.

    Thread-safety: every method may be called from any thread; the state is guarded by the
    queue state's lock (``self._mutex``).
    """

    def __init__(self, store, name: str, *, visibility_timeout: float, max_deliveries: int,
                 dead_letter: Optional[str], max_depth: Optional[int], overflow: str,
                 partitions: Optional[int], backoff: Tuple[float, float],
                 max_priority: Optional[int] = None, message_ttl: Optional[float] = None):
        if not isinstance(visibility_timeout, (int, float)) or visibility_timeout <= 0:
            raise ConfigError(f"visibility_timeout must be > 0 seconds (got {visibility_timeout!r})")
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or \
                max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be an int >= 1 (got {max_deliveries!r})")
        if max_depth is not None and (isinstance(max_depth, bool) or
                                      not isinstance(max_depth, int) or max_depth < 1):
            raise ConfigError(f"max_depth must be None or an int >= 1 (got {max_depth!r})")
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}"
                              f" (got {overflow!r})")
        if max_priority is not None and (isinstance(max_priority, bool) or not isinstance(
                max_priority, int) or not 1 <= max_priority <= 255):
            raise ConfigError(f"max_priority must be None or an int in [1, 255] "
                              f"(got {max_priority!r})")
        if message_ttl is not None and (isinstance(message_ttl, bool) or not isinstance(
                message_ttl, (int, float)) or message_ttl <= 0):
            raise ConfigError(f"message_ttl must be None or seconds > 0 (got {message_ttl!r})")
        base, cap = backoff
        if not 0 <= base <= cap:
            raise ConfigError("backoff must be (base_seconds, cap_seconds) with 0 <= base <= cap")
        self.store = store
        self.name = name
        self.visibility_timeout = float(visibility_timeout)
        self.max_deliveries = max_deliveries
        self.max_depth = max_depth
        self.overflow = overflow
        self.max_priority = max_priority
        self.message_ttl = message_ttl
        self.refused = 0  # puts refused by overflow="drop_newest" (this object's count)
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
        self._shared = self._state.shared
        with self._mutex:
            self._sched = Scheduler(self._state, self.topic.partitions, self.visibility_timeout,
                                    max_priority is not None)
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

    # ------------------------------------------------------------------ several processes
    def _apply(self, news: Optional[List[Event]]) -> None:
        """(mutex held, in the state's transaction) Take what other processes recorded into the
        schedule (see ``Scheduler.apply``)."""
        if self._sched.apply(news):
            self._wake()

    def _transaction(self) -> ContextManager[Optional[List[Event]]]:
        """(mutex held) The state's transaction in a shared store; nothing to take otherwise
        (a reusable no-op: the single-process path stays as cheap as it was)."""
        return self._state.transaction() if self._shared else _NO_NEWS

    def _catch_up(self) -> None:
        """(mutex held) Fold in what other processes recorded (a shared store only)."""
        if self._shared:
            with self._state.transaction() as news:
                self._apply(news)

    # ------------------------------------------------------------------ durable changes
    def _record(self, kind: bytes, p: int, off: int, count: int, t: int = 0) -> int:
        """(mutex held) Append and apply an event; checkpoint when due. Returns the offset the
        caller waits for (outside the mutex) to make the event durable."""
        state = self._state
        nxt = state.record(kind, p, off, count, t)
        if kind in DONE_KINDS:
            self._sched.parts[p].forget(off)
        return self._maybe_checkpoint(nxt)

    def _record_many(self, events: List[Event]) -> int:
        """(mutex held) :meth:`_record` for several events in one write."""
        nxt = self._state.record_many(events)
        for kind, p, off, _count, _t in events:
            if kind in DONE_KINDS:
                self._sched.parts[p].forget(off)
        return self._maybe_checkpoint(nxt)

    def _maybe_checkpoint(self, nxt: int) -> int:
        state = self._state
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
            with self._transaction() as news:
                self._apply(news)
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

    # ------------------------------------------------------------------ producing
    def put(self, value: Optional[bytes], key: Optional[bytes] = None,
            headers: Optional[Dict[str, bytes]] = None, delay: float = 0,
            timeout: Optional[float] = None, *, priority: int = 0,
            ttl: Optional[float] = None) -> Any:
        """Enqueue a message (deliverable after ``delay`` seconds); return its id
        (``"<partition>:<offset>"``).

        ``priority`` (queues created with ``max_priority``): 0..max_priority, higher first.
        ``ttl`` (default: the queue's ``message_ttl``): seconds after which the message is never
        delivered but dead-lettered with reason ``expired``. With ``max_depth`` reached:
        ``overflow="reject"`` raises :class:`QueueFullError`; ``"block"`` waits (up to
        ``timeout`` seconds, then QueueFullError); ``"drop_newest"`` stores nothing and returns
        False (counted: ``stats()["refused"]``); ``"drop_oldest"`` dead-letters the oldest
        message not in flight with reason ``overflow`` to make room.
        """
        if self.closed or self.store.closed:
            self._check()
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        if priority:
            if isinstance(priority, bool) or not isinstance(priority, int) or not (
                    0 <= priority <= (self.max_priority or 0)):
                raise ValueError(f"priority must be an int in [0, {self.max_priority or 0}] "
                                 f"(queue {self.name!r} has max_priority="
                                 f"{self.max_priority}), got {priority!r}")
        if ttl is None:
            ttl = self.message_ttl
        elif isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ValueError(f"ttl must be None or seconds > 0, got {ttl!r}")
        if self.max_depth is not None and not self._make_room(timeout):
            self.refused += 1
            return False
        ts = now_ms()
        extra: Dict[str, bytes] = {}
        if delay:
            extra[NOT_BEFORE_HEADER] = str(ts + int(delay * 1000)).encode()
        if priority:
            extra[PRIORITY_HEADER] = str(priority).encode()
        if ttl is not None:
            extra[EXPIRES_HEADER] = str(ts + int(ttl * 1000)).encode()
        if extra:
            headers = {**(headers or {}), **extra}
        p, off = self.topic.publish(value, key, headers, timestamp_ms=ts)
        with self._mutex:
            # Our own put, next in line: queued from memory instead of read back.
            self._sched.take_in(p, Record(off, ts, None if key is None else bytes(key),
                                          None if value is None else bytes(value),
                                          dict(headers or {}), p), time.monotonic(), ts)
            self._wake()
        return f"{p}:{off}"

    def _make_room(self, timeout: Optional[float]) -> bool:
        """(max_depth set) Wait or make room as the overflow policy says; False: refuse the
        put (drop_newest)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            self._catch_up()
            while self._sched.total() >= self.max_depth:
                if self.overflow == "reject":
                    raise QueueFullError(f"queue {self.name!r} holds max_depth="
                                         f"{self.max_depth} messages")
                if self.overflow == "drop_newest":
                    return False
                if self.overflow == "drop_oldest":
                    with self._transaction() as news:
                        self._apply(news)
                        if self._sched.total() < self.max_depth:
                            break
                        self._sched.scan_all(time.monotonic(), now_ms())
                        oldest = self._sched.oldest_waiting()
                        if oldest is None:
                            raise QueueFullError(
                                f"queue {self.name!r} holds max_depth={self.max_depth} "
                                f"messages, all in flight: none to drop")
                        p, off = oldest
                        count = self._state.parts[p].counts.get(off, 0)
                        nxt = self._dead_letter_locked(p, off, count, "overflow")
                    if nxt is not None:
                        self._state.await_durable(nxt)
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFullError(f"queue {self.name!r} stayed full for {timeout} s")
                self._sleep(0.05 if left is None else min(left, 0.05))
                self._check()
                self._catch_up()
        return True

    # ------------------------------------------------------------------ consuming
    def get(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next ready message, handed to this caller only, invisible to others for
        ``visibility_timeout`` seconds. Blocks; with ``timeout`` returns None when none came."""
        got = self._deliver(1, timeout)
        return got[0] if got else None

    def get_many(self, max_messages: int, timeout: Optional[float] = None) -> List[Message]:
        """Up to ``max_messages`` ready messages at once (their deliveries are one write to the
        event log, and in a shared store one transaction): as :meth:`get` gives them, each
        invisible to others for ``visibility_timeout`` seconds, to be acked (:meth:`ack_many`)
        or nacked one by one. Blocks until at least one is ready; with ``timeout`` returns []
        when none came."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or \
                max_messages < 1:
            raise ValueError(f"max_messages must be an int >= 1, got {max_messages!r}")
        return self._deliver(max_messages, timeout)

    def _deliver(self, n: int, timeout: Optional[float]) -> List[Message]:
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        lease_ms = int(self.visibility_timeout * 1000)
        while True:
            doomed: List[Tuple[int, int, int, str]] = []
            with self._mutex:
                if self.closed or self.store.closed:
                    self._check()
                with self._transaction() as news:
                    self._apply(news)
                    now = time.monotonic()
                    wall = now_ms()
                    doomed = self._maintain(now)
                    taken: List[Tuple[int, Record, int]] = []
                    while not doomed and len(taken) < n:
                        got = self._sched.take(now, wall)
                        if got is None:
                            break
                        p, rec, count, expired = got
                        if expired or count > self.max_deliveries:
                            # Expired, or counted deliveries (e.g. before a crash) exhausted:
                            # never handed out (dead-lettered now, or by the next call).
                            if taken:
                                self._release_locked(p, rec.offset, count)
                            else:
                                doomed.append((p, rec.offset, count if expired else count - 1,
                                               EXPIRED if expired else MAX_DELIVERIES))
                            break
                        taken.append((p, rec, count))
                    if taken:
                        # Delivery counts only bound redeliveries: written now (they survive
                        # a process crash) but not waited on for fsync; the next ack's covers
                        # them. The lease deadline tells other processes until when.
                        until = wall + lease_ms
                        try:
                            if len(taken) == 1:
                                p, rec, count = taken[0]
                                self._record(DELIVERED, p, rec.offset, count, until)
                            else:
                                self._record_many([(DELIVERED, p, rec.offset, count, until)
                                                   for p, rec, count in taken])
                        except BaseException:
                            for p, rec, count in taken:
                                self._release_locked(p, rec.offset, count)
                            raise
                        return [Message(rec, p, count, self) for p, rec, count in taken]
                    if doomed and self._shared:
                        # Inside the transaction: one process dead-letters each message.
                        for p, off, count, reason in doomed:
                            self._dead_letter_locked(p, off, count, reason)
                        continue
                if not doomed:
                    left = None if deadline is None else deadline - now
                    if left is not None and left <= 0:
                        return []
                    self._sleep(self._sched.wait_time(now, left))
                    continue
            for p, off, count, reason in doomed:
                self._dead_letter(p, off, count, reason)

    def _maintain(self, now: float) -> List[Tuple[int, int, int, str]]:
        """(mutex held) Expire leases, release due delays; the messages out of deliveries, to
        dead-letter ``(partition, offset, count, reason)``."""
        return [(p, off, count, MAX_DELIVERIES)
                for p, off, count in self._sched.maintain(now, self.max_deliveries)]

    def _release_locked(self, p: int, off: int, count: int) -> None:
        self._sched.release(p, off, count)
        self._wake()

    def _claim(self, msg: Message) -> Tuple[float, int]:
        """(mutex held) Validate that ``msg`` is this queue's current delivery and take it out
        of flight; returns its ``(deadline, count)``."""
        if not isinstance(msg, Message) or msg.queue is not self:
            raise AckError(f"not a message of queue {self.name!r}: {msg!r}")
        return self._sched.claim(msg.id, msg.partition, msg.offset, msg.delivery_count)

    def ack(self, msg: Message) -> None:
        """Mark ``msg`` done, durably: it is never delivered again. AckError if unknown,
        already acked or expired (state unchanged)."""
        with self._mutex:
            if self.closed or self.store.closed:
                self._check()
            with self._transaction() as news:
                self._apply(news)
                self._claim(msg)
                try:
                    nxt = self._record(ACKED, msg.partition, msg.offset, msg.delivery_count)
                except BaseException:
                    self._undo_claim_locked(msg)
                    raise
            self._wake()
        self._settle(nxt)

    def ack_many(self, msgs: Sequence[Message]) -> None:
        """Ack several messages with one write (and one fsync wait): all of them, or none
        (AckError naming the first that is unknown, already done or expired, or repeated; no
        state changed)."""
        msgs = list(msgs)
        if not msgs:
            return
        ids = [(m.partition, m.offset) if isinstance(m, Message) else None for m in msgs]
        if len(set(ids)) != len(ids):
            raise AckError("ack_many: a message appears twice; nothing was acked")
        with self._mutex:
            if self.closed or self.store.closed:
                self._check()
            with self._transaction() as news:
                self._apply(news)
                claimed: List[Tuple[Message, Tuple[float, int]]] = []
                try:
                    for msg in msgs:
                        claimed.append((msg, self._claim(msg)))
                    nxt = self._record_many([(ACKED, m.partition, m.offset, m.delivery_count, 0)
                                             for m in msgs])
                except BaseException:
                    for msg, (until, count) in claimed:  # back in flight, as they were
                        self._sched.lease(msg.partition, msg.offset, count, until)
                    raise
            self._wake()
        self._settle(nxt)

    def _undo_claim_locked(self, msg: Message) -> None:
        """(mutex held) Recording an ack/nack failed: the message is ready again (nothing was
        stored; it is delivered again, at least once)."""
        self._sched.parts[msg.partition].make_ready(msg.offset)
        self._wake()

    def nack(self, msg: Message, delay: Optional[float] = None) -> None:
        """Give ``msg`` back for redelivery after ``delay`` seconds (default: exponential backoff
        ``base * 2**(deliveries-1)`` capped, with full jitter). After ``max_deliveries`` it goes
        to the dead-letter topic instead."""
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"delay must be None or seconds >= 0, got {delay!r}")
        with self._mutex:
            self._check()
            dead = False
            settle: Optional[int] = None
            with self._transaction() as news:
                self._apply(news)
                self._claim(msg)
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
                    self._sched.delay(msg.partition, msg.offset, delay)
                    self._wake()
                    settle = nxt
                elif self._shared:  # (inside the transaction: one process dead-letters it)
                    settle = self._dead_letter_locked(msg.partition, msg.offset,
                                                      msg.delivery_count, MAX_DELIVERIES)
                else:
                    dead = True
        if dead:
            self._dead_letter(msg.partition, msg.offset, msg.delivery_count, MAX_DELIVERIES)
        elif settle is not None:
            self._settle(settle)

    def extend(self, msg: Message, seconds: float) -> None:
        """Keep ``msg`` invisible to others for ``seconds`` from now (AckError if expired)."""
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        with self._mutex:
            self._check()
            with self._transaction() as news:
                self._apply(news)
                self._claim(msg)
                if self._shared:  # the other processes learn the new deadline
                    self._record(EXTENDED, msg.partition, msg.offset, msg.delivery_count,
                                 now_ms() + int(seconds * 1000))
                self._sched.lease(msg.partition, msg.offset, msg.delivery_count,
                                  time.monotonic() + seconds)

    def _publish_dead_letter(self, p: int, off: int, count: int, reason: str) -> None:
        """Copy message ``off`` of partition ``p`` to the dead-letter topic (if there is one)."""
        rec = self.topic.partitions[p].get(off)
        if self.dead_letter is not None:
            headers = dict(rec.headers)
            headers.pop(NOT_BEFORE_HEADER, None)
            headers[DLQ_REASON] = reason.encode()
            headers[DLQ_COUNT] = str(count).encode()
            headers[DLQ_SOURCE] = f"{self.name}:{p}:{off}".encode()
            self.dead_letter.publish(rec.value, rec.key, headers)

    def _dead_letter_locked(self, p: int, off: int, count: int, reason: str) -> Optional[int]:
        """(mutex and, shared, the state's transaction held) Dead-letter a message that is
        still unsettled: copy it, record D. Returns the offset to settle (None if it was
        done meanwhile)."""
        if not self._state.unsettled(p, off):
            return None
        self._publish_dead_letter(p, off, count, reason)
        nxt = self._record(DEAD_LETTERED, p, off, count, DEAD_LETTER_REASONS.index(reason))
        self._wake()
        return nxt

    def _dead_letter(self, p: int, off: int, count: int, reason: str) -> None:
        self._publish_dead_letter(p, off, count, reason)
        with self._mutex:
            if not self._state.unsettled(p, off):
                return  # dead-lettered meanwhile by another thread: one D event only
            nxt = self._record(DEAD_LETTERED, p, off, count, DEAD_LETTER_REASONS.index(reason))
            self._wake()
        self._settle(nxt)

    # ------------------------------------------------------------------ dead letters
    def redrive(self, max_messages: Optional[int] = None) -> int:
        """Move dead-lettered messages back into this queue (fresh delivery count). Returns how
        many were moved. The dead-letter topic keeps its copy; a cursor remembers what moved."""
        self._check()
        if self.dead_letter is None:
            return 0
        if not self._shared:
            return self._redrive(max_messages)
        # One redrive at a time across processes: the cursor is read, moved past and committed
        # by one of them (the others would move the same messages again).
        with flocks.held(os.path.join(self._state.events.path, REDRIVE_LOCK_NAME)):
            return self._redrive(max_messages)

    def _redrive(self, max_messages: Optional[int]) -> int:
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
        """``depth`` (ready now), ``in_flight``, ``delayed``, ``dead_lettered`` (in the
        dead-letter topic, not redriven), ``oldest_age_s`` (age of the oldest message not yet
        done), ``total`` (not yet done), ``skipped``; ``expired`` and ``overflow`` (messages
        dead-lettered for those reasons, ever: durable counts), ``refused`` (puts refused by
        ``overflow="drop_newest"``, by this object)."""
        with self._mutex:
            self._check()
            with self._transaction() as news:
                self._apply(news)
                now = time.monotonic()
                wall = now_ms()
                doomed = self._maintain(now)
                if doomed and self._shared:
                    for p, off, count, reason in doomed:
                        self._dead_letter_locked(p, off, count, reason)
                    doomed = []
            sched = self._sched
            sched.scan_all(now, wall)
            in_flight = sched.in_flight()
            delayed = sched.delayed_count()
            total = sched.total()
            lows = [(p, part.low) for p, part in enumerate(self._state.parts)
                    if part.low < self.topic.partitions[p].end_offset]
            dropped = [sum(part.dropped[i] for part in self._state.parts)
                       for i in range(len(DEAD_LETTER_REASONS))]
        for p, off, count, reason in doomed:
            self._dead_letter(p, off, count, reason)
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
            "expired": dropped[DEAD_LETTER_REASONS.index(EXPIRED)],
            "overflow": dropped[DEAD_LETTER_REASONS.index(OVERFLOW)],
            "refused": self.refused,
        }

    def pending(self) -> int:
        """Messages not yet done and not in flight (ready, delayed, or not yet looked at),
        across every process of a shared store."""
        with self._mutex:
            self._check()
            self._catch_up()
            return max(0, self._sched.total() - self._sched.in_flight())

    def not_done(self, message_ids: Iterable[str]) -> List[str]:
        """Those of ``message_ids`` (``"<partition>:<offset>"``, as :meth:`put` returns them)
        that are not done yet (acked or dead-lettered, by any process)."""
        parsed = []
        for mid in message_ids:
            try:
                p, off = (int(x) for x in mid.split(":"))
                self._sched.parts[p]
            except (ValueError, IndexError, AttributeError):
                raise ValueError(f"not a message id of queue {self.name!r}: {mid!r}") from None
            parsed.append((mid, p, off))
        with self._mutex:
            self._check()
            self._catch_up()
            return [mid for mid, p, off in parsed if self._state.unsettled(p, off)]

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
            self._catch_up()
            return self._sched.total()

    def __enter__(self) -> "WorkQueue":
        self._check()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<logstore.WorkQueue {self.name!r}>"
