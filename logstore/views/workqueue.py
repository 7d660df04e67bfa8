"""Work queue (SQS/RabbitMQ semantics) as a view over a topic.

Messages live only in the topic's partition logs. The queue adds an internal *event log*
(``internal/queues/<name>``) of small fixed-size records:

    G partition offset count          delivered (the count-th delivery)
    A partition offset count          acknowledged: done
    D partition offset count          dead-lettered (copied to the dead-letter topic): done
    N partition offset count t        nacked: not before t (ms)
    C json                            checkpoint: every partition's state, see below

In memory, per partition: the *low watermark* (every offset below it is done), the done offsets
above it, delivery counts, and what is ready / in flight / delayed. Reopening replays the events
after the last checkpoint (its offset is committed in the store's offset log), so everything in
flight when the process died is ready again: at-least-once, and an acked message is never
delivered again. Delivery counts are in the log too, so a poison message that kills its consumer
still reaches the dead-letter topic after ``max_deliveries``.

Durability: ``ack``/``nack``/dead-lettering return after their event is durable under the store's
fsync policy. Delivery events are written before ``get`` returns (so they survive a process
crash) but ``get`` does not wait for their fsync: after a power failure a delivery count may be
one lower, which costs at most an extra redelivery.
"""

from __future__ import annotations

import heapq
import json
import random
import struct
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import AckError, ConfigError, LogClosedError, QueueFullError
from ..format.names import QUEUE_EVENTS_TOPIC, QUEUE_GROUP, REDRIVE_GROUP, queue_events_dir
from ..record import Record
from ..util import now_ms

_EVENT = struct.Struct("<cIqIq")  # kind, partition, offset, count, time (ms)
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


class _Partition:
    """In-memory state of one partition of the queue."""

    def __init__(self, low: int):
        self.low = low  # every offset below is done
        self.scan = low  # next offset of the log not yet looked at
        self.done: Set[int] = set()  # done offsets >= low
        self.counts: Dict[int, int] = {}  # deliveries so far (not done)
        self.ready: List[int] = []  # heap of offsets ready now
        self.delayed: List[Tuple[int, int]] = []  # heap (not_before_ms, offset)
        self.not_before: Dict[int, int] = {}
        self.inflight: Dict[int, Tuple[float, int]] = {}  # offset -> (deadline, count)
        self.deadlines: List[Tuple[float, int, int]] = []  # heap (deadline, offset, count)
        self.cache: Dict[int, Record] = {}  # records read while scanning, until delivered

    def mark_done(self, off: int) -> None:
        if off < self.low:
            return
        self.counts.pop(off, None)
        if self.not_before:
            self.not_before.pop(off, None)
        self.cache.pop(off, None)
        if off != self.low:
            self.done.add(off)
            return
        # The usual case, acks in order: advance the watermark without touching the set.
        low = off + 1
        done = self.done
        while low in done:
            done.discard(low)
            low += 1
        self.low = low

    def snapshot(self) -> Dict[str, Any]:
        return {"low": self.low, "done": sorted(self.done),
                "counts": {str(k): v for k, v in self.counts.items()},
                "not_before": {str(k): v for k, v in self.not_before.items()}}


class WorkQueue:
    """A work queue over topic ``name``. Create with ``store.queue(name, ...)``."""

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
        # Held through the plain lock (a C-level context manager); the condition shares it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._sleepers = 0  # threads in self._cond.wait(): notify only when someone waits
        self._events = store.open_internal_log(
            queue_events_dir(store.root, name), False)
        self._checkpoint_offset: Optional[int] = None
        self._since_checkpoint = 0
        self._parts = [_Partition(0) for _ in self.topic.partitions]
        self._rr = 0
        self._load()

    # ------------------------------------------------------------------ state from the log
    def _load(self) -> None:
        start = self.store.offsets.get(QUEUE_GROUP + self.name, QUEUE_EVENTS_TOPIC, 0)
        if start is None or start < self._events.start_offset:
            start = self._events.start_offset
        for p, log in enumerate(self.topic.partitions):
            self._parts[p] = _Partition(log.start_offset)
        for rec in self._events.replay(start):
            v = rec.value
            if v is None:
                continue
            if v[:1] == b"C":
                snap = json.loads(v[1:])
                for p, st in enumerate(snap["partitions"]):
                    part = _Partition(int(st["low"]))
                    part.done = set(st["done"])
                    part.counts = {int(k): c for k, c in st["counts"].items()}
                    part.not_before = {int(k): t for k, t in st["not_before"].items()}
                    self._parts[p] = part
                continue
            kind, p, off, count, t = _EVENT.unpack(v)
            part = self._parts[p]
            if kind in (b"A", b"D"):
                part.mark_done(off)
            elif off >= part.low and off not in part.done:
                part.counts[off] = max(part.counts.get(off, 0), count)
                if kind == b"N":
                    part.not_before[off] = t
        for p, log in enumerate(self.topic.partitions):
            part = self._parts[p]
            if part.low < log.start_offset:  # retention removed them: nothing left to deliver
                part.done = {o for o in part.done if o >= log.start_offset}
                part.low = log.start_offset
                while part.low in part.done:
                    part.done.discard(part.low)
                    part.low += 1
            part.scan = part.low

    def _event(self, kind: bytes, p: int, off: int, count: int, t: int = 0) -> None:
        # Delivery counts (G) only bound redeliveries: written at once (they survive a process
        # crash) but not waited on for fsync; the next ack's fsync covers them.
        self._events.append_internal(_EVENT.pack(kind, p, off, count, t), kind != b"G")
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write the whole state as one event and commit its offset, so reopen replays from it."""
        with self._mutex:
            snap = {"partitions": [part.snapshot() for part in self._parts]}
            self._since_checkpoint = 0
            off = self._events.append(b"C" + json.dumps(snap).encode())
        self.store.offsets.commit(QUEUE_GROUP + self.name, QUEUE_EVENTS_TOPIC, {0: off})
        self._checkpoint_offset = off

    def trim_events(self) -> Optional[Dict[str, Any]]:
        """Delete event-log segments wholly before the last committed checkpoint."""
        if self._checkpoint_offset is None or self.closed:
            return None
        return self._events.enforce_retention(self._checkpoint_offset)

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

    def _scan(self, p: int, now_ms: int, limit: int = 1000) -> None:
        """Look at new messages of partition p: make them ready or delayed."""
        part = self._parts[p]
        log = self.topic.partitions[p]
        if part.scan >= log.end_offset:
            return
        for rec in log.read_records(part.scan, limit, None, p):
            off = rec.offset
            part.scan = off + 1
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
            part.cache[off] = rec
            if nb is not None and nb > now_ms:
                part.not_before[off] = nb
                heapq.heappush(part.delayed, (nb, off))
            else:
                heapq.heappush(part.ready, off)

    def _maintain(self, now: float, now_ms: int) -> List[Tuple[int, int, int]]:
        """Expire visibility timeouts, release due delayed messages. Returns messages that ran
        out of deliveries (partition, offset, count) to dead-letter (outside the lock)."""
        doomed = []
        for p, part in enumerate(self._parts):
            dl = part.deadlines
            while dl and dl[0][0] <= now:
                _, off, count = heapq.heappop(dl)
                cur = part.inflight.get(off)
                if cur is None or cur[1] != count or cur[0] > now:
                    continue  # acked, or extended (a newer deadline entry exists)
                del part.inflight[off]
                if count >= self.max_deliveries:
                    doomed.append((p, off, count))
                else:
                    heapq.heappush(part.ready, off)
            delayed = part.delayed
            while delayed and delayed[0][0] <= now_ms:
                _, off = heapq.heappop(delayed)
                if off >= part.low and off not in part.done and off not in part.inflight:
                    part.not_before.pop(off, None)
                    heapq.heappush(part.ready, off)
        return doomed

    def _depth_total(self) -> int:
        """Messages not yet done (ready, delayed, in flight, or not yet scanned)."""
        total = 0
        for p, part in enumerate(self._parts):
            total += self.topic.partitions[p].end_offset - part.low - len(part.done)
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
        if delay:
            headers = dict(headers or {})
            not_before = now_ms() + int(delay * 1000)
            headers[NOT_BEFORE_HEADER] = str(not_before).encode()
        ts = time.time_ns() // 1_000_000
        p, off = self.topic.publish(value, key, headers, timestamp_ms=ts)
        with self._mutex:
            part = self._parts[p]
            if part.scan == off:
                # Our own put, next in line: queue it from memory instead of reading it back.
                part.scan = off + 1
                part.cache[off] = Record(off, ts, None if key is None else bytes(key),
                                         None if value is None else bytes(value),
                                         dict(headers or {}), p)
                if not_before is not None:
                    part.not_before[off] = not_before
                    heapq.heappush(part.delayed, (not_before, off))
                else:
                    heapq.heappush(part.ready, off)
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
                now_ms = time.time_ns() // 1_000_000
                doomed = self._maintain(now, now_ms)
                got = None if doomed else self._take(now, now_ms)
                if got is None and not doomed:
                    left = None if deadline is None else deadline - now
                    if left is not None and left <= 0:
                        return None
                    self._sleep(self._wait_time(now, now_ms, left))
                    continue
            for p, off, count in doomed:
                self._dead_letter(p, off, count, "max_deliveries")
            if got is None:
                continue
            p, rec, count = got
            if count > self.max_deliveries:
                # Counted deliveries (e.g. before a crash) exhausted: never hand it out again.
                self._dead_letter(p, rec.offset, count - 1, "max_deliveries")
                continue
            try:
                self._event(b"G", p, rec.offset, count)
            except BaseException:
                self._release(p, rec.offset, count)
                raise
            return Message(rec, p, count, self)

    def _take(self, now: float, now_ms: int):
        n = len(self._parts)
        for i in range(n):
            p = (self._rr + i) % n
            part = self._parts[p]
            if not part.ready:
                self._scan(p, now_ms)
            while part.ready:
                off = heapq.heappop(part.ready)
                if off < part.low or off in part.done or off in part.inflight:
                    continue
                rec = part.cache.pop(off, None)
                if rec is None:
                    rec = self.topic.partitions[p].read_records(off, 1, None, p)[0]
                count = part.counts.get(off, 0) + 1
                part.counts[off] = count
                deadline = now + self.visibility_timeout
                part.inflight[off] = (deadline, count)
                heapq.heappush(part.deadlines, (deadline, off, count))
                self._rr = p + 1
                return p, rec, count
        return None

    def _wait_time(self, now: float, now_ms: int, left: Optional[float]) -> float:
        waits = [0.05]  # also notice messages published by other paths than put()
        if left is not None:
            waits.append(left)
        for part in self._parts:
            if part.deadlines:
                waits.append(part.deadlines[0][0] - now)
            if part.delayed:
                waits.append((part.delayed[0][0] - now_ms) / 1000.0)
        return max(0.0, min(waits))

    def _release(self, p: int, off: int, count: int) -> None:
        with self._mutex:
            part = self._parts[p]
            if part.inflight.get(off, (0, None))[1] == count:
                del part.inflight[off]
                heapq.heappush(part.ready, off)
            self._wake()

    def _claim(self, msg: Message) -> _Partition:
        """Validate that ``msg`` is this queue's current delivery and take it out of flight."""
        if not isinstance(msg, Message) or msg.queue is not self:
            raise AckError(f"not a message of queue {self.name!r}: {msg!r}")
        part = self._parts[msg.partition]
        cur = part.inflight.get(msg.offset)
        if cur is None or cur[1] != msg.delivery_count:
            if msg.offset < part.low or msg.offset in part.done:
                raise AckError(f"message {msg.id} is already done (acked or dead-lettered)")
            raise AckError(f"message {msg.id} (delivery {msg.delivery_count}) expired: its "
                           f"visibility timeout passed and it is or will be delivered again")
        if cur[0] <= time.monotonic():
            raise AckError(f"message {msg.id} (delivery {msg.delivery_count}) expired: its "
                           f"visibility timeout passed and it is or will be delivered again")
        del part.inflight[msg.offset]
        return part

    def ack(self, msg: Message) -> None:
        """Mark ``msg`` done, durably: it is never delivered again. AckError if unknown,
        already acked or expired (state unchanged)."""
        with self._mutex:
            if self.closed or self.store.closed:
                self._check()
            part = self._claim(msg)
        try:
            self._event(b"A", msg.partition, msg.offset, msg.delivery_count)
        except BaseException:
            self._undo_claim(msg)
            raise
        with self._mutex:
            part.mark_done(msg.offset)
            self._wake()

    def _undo_claim(self, msg: Message) -> None:
        with self._mutex:
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
            part = self._claim(msg)
        if msg.delivery_count >= self.max_deliveries:
            self._dead_letter(msg.partition, msg.offset, msg.delivery_count, "max_deliveries")
            return
        if delay is None:
            base, cap = self.backoff
            delay = random.uniform(0, min(cap, base * 2 ** (msg.delivery_count - 1)))
        not_before = now_ms() + int(delay * 1000)
        try:
            self._event(b"N", msg.partition, msg.offset, msg.delivery_count, not_before)
        except BaseException:
            self._undo_claim(msg)
            raise
        with self._mutex:
            part.not_before[msg.offset] = not_before
            heapq.heappush(part.delayed, (not_before, msg.offset))
            self._wake()

    def extend(self, msg: Message, seconds: float) -> None:
        """Keep ``msg`` invisible to others for ``seconds`` from now (AckError if expired)."""
        if not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        with self._mutex:
            self._check()
            part = self._claim(msg)
            deadline = time.monotonic() + seconds
            part.inflight[msg.offset] = (deadline, msg.delivery_count)
            heapq.heappush(part.deadlines, (deadline, msg.offset, msg.delivery_count))

    def _dead_letter(self, p: int, off: int, count: int, reason: str) -> None:
        rec = self.topic.partitions[p].read_records(off, 1, None, p)[0]
        if self.dead_letter is not None:
            headers = dict(rec.headers)
            headers.pop(NOT_BEFORE_HEADER, None)
            headers[DLQ_REASON] = reason.encode()
            headers[DLQ_COUNT] = str(count).encode()
            headers[DLQ_SOURCE] = f"{self.name}:{p}:{off}".encode()
            self.dead_letter.publish(rec.value, rec.key, headers)
        self._event(b"D", p, off, count)
        with self._mutex:
            part = self._parts[p]
            part.inflight.pop(off, None)
            part.mark_done(off)
            self._wake()

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
            now = now_ms()
            doomed = self._maintain(time.monotonic(), now)
            for p in range(len(self._parts)):
                while self._parts[p].scan < self.topic.partitions[p].end_offset:
                    self._scan(p, now, 10_000)
            in_flight = sum(len(pt.inflight) for pt in self._parts)
            delayed = sum(len({o for _, o in pt.delayed if o not in pt.done and o >= pt.low})
                          for pt in self._parts)
            total = self._depth_total()
            lows = [(p, pt.low) for p, pt in enumerate(self._parts)
                    if pt.low < self.topic.partitions[p].end_offset]
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
            "oldest_age_s": 0.0 if oldest is None else max(0.0, (now - oldest) / 1000.0),
            "total": total,
        }

    def low_watermarks(self) -> Dict[int, int]:
        """``{partition: first offset not yet done}`` (drives queue retention)."""
        with self._mutex:
            return {p: pt.low for p, pt in enumerate(self._parts)}

    def close(self) -> None:
        """Checkpoint the state and close the event log. In-flight messages become ready again
        at the next open."""
        if self.closed:
            return
        try:
            if not self.store.readonly and not self._events.closed:
                self.checkpoint()
        finally:
            self.closed = True
            with self._mutex:
                self._wake()
            self._events.close()

    def __len__(self) -> int:
        with self._mutex:
            return self._depth_total()

    def __repr__(self) -> str:
        return f"<logstore.WorkQueue {self.name!r}>"
