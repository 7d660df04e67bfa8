"""A work queue's in-memory scheduling over its durable state.

The durable state (what is done, delivery counts, nack delays, leases: a
:class:`~logstore.views.queue_state.QueueState`) says what may be delivered; this module decides
what is handed out next and when: per partition, a heap of messages ready now (highest priority
first, then oldest), a heap of delayed ones (a delay at put, a nack's backoff), the deliveries in
flight with their deadlines (visibility timeouts), and the records read while scanning, kept
until they are delivered. Nothing here is durable: after a reopen it is rebuilt from the state
(:meth:`Scheduler.rebuild`).

Priorities (``x-priority`` header, 0 = lowest) are strict: a higher priority is always handed
out first (FIFO within a level, across partitions by publish order); delays and redeliveries
keep their priority. A queue with priorities looks at every published message before choosing
(a high priority message published after many low ones is found at once), so it keeps no
record bodies in memory (each delivered message is read again by offset). Expiry (``x-expires``,
a wall-clock time in ms) is checked when a message would be handed out: an expired one is
returned to the caller to dead-letter, never delivered.
"""

from __future__ import annotations

import heapq
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import AckError, OffsetOutOfRangeError, RecordRemovedError
from ..format.queue_events import DELIVERED, EXTENDED, NACKED
from ..record import Record
from ..storage.log import Log
from ..util import now_ms
from .queue_state import Event, QueueState

NOT_BEFORE_HEADER = "x-not-before"
PRIORITY_HEADER = "x-priority"
EXPIRES_HEADER = "x-expires"
SCAN_CHUNK = 1000  # records read per look at a partition


def due(wall_ms: int, now: float, wall_now: int) -> float:
    """A wall-clock time as a monotonic one (so a clock step back after the message was
    scheduled never stalls it)."""
    return now + (wall_ms - wall_now) / 1000.0


def _int_header(rec: Record, name: str) -> Optional[int]:
    raw = rec.headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class Schedule:
    """The scheduling of one partition."""

    def __init__(self, scan: int):
        self.scan = scan  # next offset of the log not yet looked at
        self.ready: List[Tuple[int, int]] = []  # heap (-priority, offset) of messages ready now
        self.delayed: List[Tuple[float, int]] = []  # heap (monotonic due time, offset)
        # offset -> due time of its current delay. A heap entry (delayed or ready) that does
        # not agree is stale: the message was nacked again, by this process or another, since.
        self.waiting: Dict[int, float] = {}
        self.inflight: Dict[int, Tuple[float, int]] = {}  # offset -> (deadline, count)
        self.deadlines: List[Tuple[float, int, int]] = []  # heap (deadline, offset, count)
        self.cache: Dict[int, Record] = {}  # records read while scanning, until delivered
        self.priority: Dict[int, int] = {}  # offset -> priority (only the non-zero ones)
        self.expires: Dict[int, int] = {}  # offset -> expiry (wall ms), of messages with one

    def make_ready(self, off: int) -> None:
        heapq.heappush(self.ready, (-self.priority.get(off, 0), off))

    def wait_until(self, off: int, when: float) -> None:
        """``off`` is delayed until ``when`` (monotonic), replacing any earlier delay."""
        self.waiting[off] = when
        heapq.heappush(self.delayed, (when, off))

    def forget(self, off: int) -> None:
        """``off`` is done: drop what is kept about it."""
        self.inflight.pop(off, None)
        self.waiting.pop(off, None)
        self.cache.pop(off, None)
        self.priority.pop(off, None)
        self.expires.pop(off, None)


class Scheduler:
    """Every partition's :class:`Schedule` over a queue's :class:`QueueState`. The caller holds
    the state's lock around every call."""

    def __init__(self, state: QueueState, partitions: Sequence[Log], visibility_timeout: float,
                 priorities: bool):
        self.state = state
        self.partitions = partitions
        self.visibility_timeout = visibility_timeout
        self.priorities = priorities  # look at everything before choosing; cache no bodies
        self.parts: List[Schedule] = []
        self.rr = 0
        self.rebuild()

    def rebuild(self) -> None:
        """Schedules from the durable state: messages from each low watermark on are looked at
        again; deliveries other processes hold (their leases) are in flight until their
        deadlines."""
        self.parts = [Schedule(part.low) for part in self.state.parts]
        now, wall = time.monotonic(), now_ms()
        for p, part in enumerate(self.state.parts):
            for off, until in part.leases.items():
                self.lease(p, off, part.counts.get(off, 1), due(until, now, wall))

    def lease(self, p: int, off: int, count: int, deadline: float) -> None:
        """``off`` is in flight (its ``count``-th delivery) until ``deadline`` (monotonic)."""
        sched = self.parts[p]
        sched.inflight[off] = (deadline, count)
        heapq.heappush(sched.deadlines, (deadline, off, count))

    def apply(self, news: Optional[List[Event]]) -> bool:
        """Take what other processes recorded: their deliveries and extensions are in flight
        until their lease deadline, their nacks delayed, their acks and dead-letterings gone
        (None: the state was folded again from a checkpoint; everything is rebuilt). Returns
        whether anything changed."""
        if news is None:
            self.rebuild()
            return True
        if not news:
            return False
        now, wall = time.monotonic(), now_ms()
        for kind, p, off, count, t in news:
            if p >= len(self.parts):
                continue
            sched = self.parts[p]
            if kind == DELIVERED or kind == EXTENDED:
                cur = sched.inflight.get(off)
                if kind == DELIVERED or (cur is not None and cur[1] == count):
                    until = due(t, now, wall) if t else now + self.visibility_timeout
                    self.lease(p, off, count, until)
            elif kind == NACKED:
                sched.inflight.pop(off, None)
                sched.wait_until(off, due(t, now, wall))
            else:  # acked or dead-lettered
                sched.forget(off)
        return True

    # ------------------------------------------------------------------ looking at messages
    def scan(self, p: int, now: float, wall: int, limit: int = SCAN_CHUNK) -> None:
        """Look at (up to ``limit``) new messages of partition ``p``: ready or delayed."""
        sched = self.parts[p]
        state = self.state
        part = state.parts[p]
        log = self.partitions[p]
        if sched.scan >= log.end_offset:
            return
        start = log.start_offset
        if part.low < start:  # deleted under the queue (not by the store's retention)
            lost = state.follow_start(p, start)
            if lost:
                state.warn_skipped(p, lost, start)
        if sched.scan < part.low:
            sched.scan = part.low
        for rec in log.read_records(sched.scan, limit, None, p):
            sched.scan = rec.offset + 1
            self._look(p, rec, now, wall)

    def take_in(self, p: int, rec: Record, now: float, wall: int) -> None:
        """A message this process just published: looked at from memory (not read back) if it
        is the next one of its partition to look at."""
        sched = self.parts[p]
        if sched.scan == rec.offset:
            sched.scan = rec.offset + 1
            self._look(p, rec, now, wall)

    def _look(self, p: int, rec: Record, now: float, wall: int) -> None:
        """Schedule a message seen for the first time: ready, or delayed until its time."""
        sched = self.parts[p]
        part = self.state.parts[p]
        off = rec.offset
        if off < part.low or off in part.done:
            return
        if rec.headers:
            prio = _int_header(rec, PRIORITY_HEADER)
            if prio:
                sched.priority[off] = prio
            expires = _int_header(rec, EXPIRES_HEADER)
            if expires is not None:
                sched.expires[off] = expires
        nb = part.not_before.get(off)
        if nb is None and rec.headers:
            nb = _int_header(rec, NOT_BEFORE_HEADER)
        if not self.priorities:
            sched.cache[off] = rec
        if off in sched.inflight:
            return  # (another process's delivery, learnt before the message was seen)
        if nb is not None and nb > wall:
            sched.wait_until(off, due(nb, now, wall))
        else:
            sched.make_ready(off)

    def scan_all(self, now: float, wall: int) -> None:
        for p in range(len(self.parts)):
            while self.parts[p].scan < self.partitions[p].end_offset:
                before = self.parts[p].scan
                self.scan(p, now, wall, 10_000)
                if self.parts[p].scan == before:
                    break

    def maintain(self, now: float, max_deliveries: int) -> List[Tuple[int, int, int]]:
        """Expire visibility timeouts, release due delayed messages. Returns the messages that
        ran out of deliveries ``(partition, offset, count)``, to dead-letter."""
        doomed = []
        for p, sched in enumerate(self.parts):
            part = self.state.parts[p]
            dl = sched.deadlines
            while dl and dl[0][0] <= now:
                _, off, count = heapq.heappop(dl)
                cur = sched.inflight.get(off)
                if cur is None or cur[1] != count or cur[0] > now:
                    continue  # acked, or extended (a newer deadline entry exists)
                del sched.inflight[off]
                if count >= max_deliveries:
                    doomed.append((p, off, count))
                else:
                    sched.make_ready(off)
            delayed = sched.delayed
            while delayed and delayed[0][0] <= now:
                when, off = heapq.heappop(delayed)
                if sched.waiting.get(off) != when:
                    continue  # an earlier delay of a message nacked again since
                del sched.waiting[off]
                if off >= part.low and off not in part.done and off not in sched.inflight:
                    part.not_before.pop(off, None)
                    sched.make_ready(off)
        return doomed

    # ------------------------------------------------------------------ handing out
    def take(self, now: float, wall: int) -> Optional[Tuple[int, Record, int, bool]]:
        """The next message to hand out ``(partition, record, delivery count, expired)``, now
        in flight for ``visibility_timeout`` (an expired one too: the caller dead-letters it),
        or None if none is ready."""
        n = len(self.parts)
        if self.priorities:
            self.scan_all(now, wall)
        while True:
            best = None
            for i in range(n):
                p = (self.rr + i) % n
                sched = self.parts[p]
                if not sched.ready and not self.priorities:
                    self.scan(p, now, wall)
                head = self._head(p)
                if head is not None and (best is None or head[0] < best[0][0]):
                    best = (head, p)  # (equal priorities: the first in round-robin order)
                if best is not None and not self.priorities:
                    break  # (no priorities: round-robin, the first partition with one)
            if best is None:
                return None
            (neg_prio, off), p = best
            sched = self.parts[p]
            heapq.heappop(sched.ready)
            rec = sched.cache.pop(off, None)
            if rec is None:
                # (By offset through get's route: one index lookup and the batch's own check;
                # a one-record read_records walks the index interval's headers, ~10x slower.)
                try:
                    rec = self.partitions[p].get(off)._replace(partition=p)
                except (OffsetOutOfRangeError, RecordRemovedError):
                    continue  # removed meanwhile (compaction never touches a queue's topic)
            count = self.state.parts[p].counts.get(off, 0) + 1
            self.lease(p, off, count, now + self.visibility_timeout)
            self.rr = p + 1
            expires = sched.expires.get(off)
            return p, rec, count, expires is not None and expires <= wall

    def _head(self, p: int) -> Optional[Tuple[int, int]]:
        """The partition's best ready entry ``(-priority, offset)`` still deliverable (stale
        heap entries dropped), not popped. An entry made ready before another process took the
        message and nacked it with a delay is stale too: it waits for its delay (``waiting``)."""
        sched = self.parts[p]
        part = self.state.parts[p]
        ready = sched.ready
        while ready:
            off = ready[0][1]
            if (off < part.low or off in part.done or off in sched.inflight
                    or off in sched.waiting):
                heapq.heappop(ready)
                continue
            return ready[0]
        return None

    def release(self, p: int, off: int, count: int) -> None:
        """Undo a hand-out that was not recorded: ready again."""
        sched = self.parts[p]
        if sched.inflight.get(off, (0, None))[1] == count:
            del sched.inflight[off]
            sched.make_ready(off)

    def claim(self, label: str, p: int, off: int, count: int) -> Tuple[float, int]:
        """Take the current delivery ``count`` of ``off`` out of flight to settle it; returns
        its ``(deadline, count)`` (to put it back if recording fails). AckError if it is not
        the current delivery (done, expired, taken over by another getter)."""
        sched = self.parts[p]
        cur = sched.inflight.get(off)
        if cur is None or cur[1] != count:
            if not self.state.unsettled(p, off):
                raise AckError(f"message {label} is already done (acked or dead-lettered)")
            raise AckError(f"message {label} (delivery {count}) expired: its visibility "
                           f"timeout passed and it is or will be delivered again")
        if cur[0] <= time.monotonic():
            raise AckError(f"message {label} (delivery {count}) expired: its visibility "
                           f"timeout passed and it is or will be delivered again")
        return sched.inflight.pop(off)

    def delay(self, p: int, off: int, seconds: float) -> None:
        self.parts[p].wait_until(off, time.monotonic() + seconds)

    def wait_time(self, now: float, left: Optional[float]) -> float:
        """How long a getter may sleep before something becomes due (at most 50 ms: messages
        published by other paths than put() are noticed)."""
        waits = [0.05]
        if left is not None:
            waits.append(left)
        for sched in self.parts:
            if sched.deadlines:
                waits.append(sched.deadlines[0][0] - now)
            if sched.delayed:
                waits.append(sched.delayed[0][0] - now)
        return max(0.0, min(waits))

    # ------------------------------------------------------------------ counting
    def total(self) -> int:
        """Messages not yet done (ready, delayed, in flight, or not yet looked at)."""
        total = 0
        for p, part in enumerate(self.state.parts):
            total += max(0, self.partitions[p].end_offset - part.low - len(part.done))
        return total

    def in_flight(self) -> int:
        return sum(len(sched.inflight) for sched in self.parts)

    def delayed_count(self) -> int:
        return sum(sum(1 for o in sched.waiting if self.state.unsettled(p, o)
                       and o not in sched.inflight)
                   for p, sched in enumerate(self.parts))

    def oldest_waiting(self) -> Optional[Tuple[int, int]]:
        """``(partition, offset)`` of the oldest message not done and not in flight (by
        publish time across partitions), or None."""
        best: Optional[Tuple[int, int, int]] = None
        for p, sched in enumerate(self.parts):
            part = self.state.parts[p]
            off, end = part.low, min(sched.scan, self.partitions[p].end_offset)
            while off < end and (off in part.done or off in sched.inflight):
                off += 1
            if off >= end:
                continue
            ts = self.partitions[p].get(off).timestamp_ms
            if best is None or ts < best[0]:
                best = (ts, p, off)
        return None if best is None else (best[1], best[2])
