"""The durable state of one work queue, kept with its event log.

A work queue's messages live in its topic; what happened to them lives in the queue's event log
(``internal/queues/<name>``, records of :mod:`logstore.format.queue_events`). :class:`QueueState`
folds that log into per-partition state (low watermark, done offsets, delivery counts, nack
delays), appends new events and checkpoints, and checks the state against the topic it points
into. The store keeps one for every queue whose topic it opens, whether or not a ``WorkQueue``
object is open, so that retention never deletes an unacked message; a ``WorkQueue`` schedules
deliveries on top of it.

Crash consistency:

* An event is appended and applied to the in-memory state under :attr:`QueueState.lock`, and a
  checkpoint is appended under the same lock, so a checkpoint always follows every event it
  includes in the log. Whatever prefix of the event log survives a crash, folding it gives the
  state as of its last record.
* The caller waits for an event's durability (:meth:`QueueState.await_durable`) after releasing
  the lock: acks from several threads share fsyncs.
* Reopening folds from the last checkpoint record that is still in the log (the offset committed
  in the store's offsets log is only a hint, checked against the event log), so a checkpoint
  lost with an unsynced tail never hides the acks before it.
* In a store shared by several processes (``Store.open(..., shared=True)``) each process keeps
  its own copy of the state and brings it up to date inside a write transaction of the event
  log (:meth:`QueueState.transaction`: no other process appends meanwhile) before it decides
  anything: the events the others appended since it last looked are folded in, then its own
  are appended. A process that opens the event log while no other process has it open (after
  a crash, or alone) drops the leases of the deliveries in flight: they are ready again at once.
* Positions are checked against the topic when the state is loaded, before anything is
  published: a low watermark or done offsets beyond the topic's end (the topic lost an unsynced
  tail that the event log kept) are cut back, logged, listed in ``store.repairs`` and
  checkpointed at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..format.names import QUEUE_EVENTS_TOPIC, QUEUE_GROUP
from ..format.queue_events import (
    DEAD_LETTERED, DONE_KINDS, PartitionState, apply_event, encode_checkpoint, encode_event, fold,
    is_checkpoint,
)
from ..storage.log import Log
from .offsets import OffsetStore

logger = logging.getLogger("logstore")
Event = Tuple[bytes, int, int, int, int]  # kind, partition, offset, count, t (ms)


class QueueState:
    """A queue's durable state and its event log. Thread-safety: every method but
    :meth:`await_durable`, :meth:`commit_hint` and :meth:`trim` expects :attr:`lock` held."""

    def __init__(self, name: str, events: Log, offsets: OffsetStore):
        self.name = name
        self.events = events
        self.offsets = offsets
        self.lock = threading.Lock()
        self.parts: List[PartitionState] = []
        self.since_checkpoint = 0
        self.checkpoint_offset: Optional[int] = None  # the last checkpoint this object wrote
        self.folded = 0  # the next event not yet in the state
        self.shared = events.shared

    # ------------------------------------------------------------------ several processes
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Optional[List[Event]]]:
        """(lock held) Decide and record with no other process appending events meanwhile;
        yields the events they appended since this state last looked (already folded into
        :attr:`parts`: the caller updates its own bookkeeping from them). Only a shared store
        needs it (the only writer's state is always current): there it yields []."""
        if not self.shared:
            yield []
            return
        with self.events.transaction() as end:
            yield self.catch_up(end)

    def catch_up(self, end: int) -> Optional[List[Event]]:
        """(lock and the event log's transaction held) Fold in the events in ``[folded,
        end)``; returns them (checkpoints, equal to the state they follow, are left out), or
        None if the state had to be folded again from a checkpoint (another process trimmed
        the events this one had not seen yet: its checkpoint includes them)."""
        news: List[Event] = []
        if end <= self.folded:
            return news
        if self.folded < self.events.start_offset:
            start = self._last_checkpoint(self.events.start_offset, end)
            replay = ((r.offset, r.value) for r in self.events.replay(
                self.events.start_offset if start is None else start, end))
            self.parts, _ = fold(replay, [0] * len(self.parts), where=self.events.path)
            self.folded = end
            self.since_checkpoint = 0
            return None
        where = self.events.path
        for rec in self.events.replay(self.folded, end):
            if rec.value is None:
                continue
            if is_checkpoint(rec.value):
                self.since_checkpoint = 0
                continue
            news.append(apply_event(self.parts, rec.value, rec.offset, where))
            self.since_checkpoint += 1
        self.folded = end
        return news

    # ------------------------------------------------------------------ loading
    def load(self, topic: Sequence[Log]) -> List[str]:
        """Fold the event log into state for the partitions ``topic``; check it against them.
        Returns what had to be repaired (also logged); a repaired state is checkpointed."""
        events = self.events
        start, repairs = self._replay_start()
        end = events.end_offset
        replay = ((rec.offset, rec.value) for rec in events.replay(start, end))
        self.parts, _ = fold(replay, [log.start_offset for log in topic], where=events.path)
        self.folded = end
        if not events.shared or events.first_writer:
            # Nobody else has the queue open: what was in flight is ready again at once.
            for part in self.parts:
                part.leases.clear()
        repairs += self.check_against(topic)
        if repairs and not events.readonly:
            with self.transaction():
                off = self.checkpoint()
            events.flush()
            self.commit_hint(off)
        return repairs

    def _replay_start(self) -> Tuple[int, List[str]]:
        """The last checkpoint record still in the event log: the committed hint when it names
        one, else found by reading the log (from its start: trimming keeps it short). Also
        what was wrong with the hint (it points past the event log's end, or at no
        checkpoint: the event log lost an unsynced tail that the offsets log kept)."""
        events = self.events
        start, end = events.start_offset, events.end_offset
        hint = self.offsets.get(QUEUE_GROUP + self.name, QUEUE_EVENTS_TOPIC, 0)
        if hint is not None and start <= hint < end:
            rec = events.get(hint)
            if rec.value is not None and is_checkpoint(rec.value):
                later = self._last_checkpoint(hint + 1, end)
                return (hint if later is None else later), []
        found = self._last_checkpoint(start, end)
        repairs = []
        if hint is not None and hint >= start:
            line = (f"queue {self.name!r}: its committed checkpoint {hint} is not a checkpoint "
                    f"of its event log [{start}, {end}) (the log lost a tail the offsets log "
                    f"kept): folded from " + ("its start" if found is None else str(found)))
            logger.warning("%s", line)
            repairs.append(line)
        return (start if found is None else found), repairs

    def _last_checkpoint(self, start: int, end: int) -> Optional[int]:
        last = None
        for rec in self.events.replay(start, end):
            if rec.value is not None and is_checkpoint(rec.value):
                last = rec.offset
        return last

    def check_against(self, topic: Sequence[Log]) -> List[str]:
        """Cut back positions beyond the end of the partitions they point into (after a power
        loss each log keeps its own durable prefix: the topic may have lost a tail that the
        event log kept). Returns one line per repair, each also logged as a warning."""
        repairs = []
        for p, (part, log) in enumerate(zip(self.parts, topic)):
            end = log.end_offset
            what = []
            if part.low > end:
                what.append(f"low watermark {part.low}")
                part.low = end
            beyond = [o for o in part.done if o >= end]
            beyond += [o for o in part.counts if o >= end]
            beyond += [o for o in part.not_before if o >= end]
            if beyond:
                what.append(f"state of offsets {min(beyond)}..{max(beyond)}")
                part.done = {o for o in part.done if o < end}
                part.counts = {o: c for o, c in part.counts.items() if o < end}
                part.not_before = {o: t for o, t in part.not_before.items() if o < end}
            self.follow_start(p, log.start_offset)
            if part.skipped:
                self.warn_skipped(p, part.skipped, log.start_offset)
            if what:
                line = (f"queue {self.name!r} partition {p}: {' and '.join(what)} beyond the "
                        f"topic's end {end} (the topic lost records the queue's event log "
                        f"kept): cut back to {end}")
                logger.warning("%s", line)
                repairs.append(line)
        return repairs

    def follow_start(self, p: int, start: int) -> int:
        """The topic's partition ``p`` starts at ``start`` now: messages below it that were not
        done are gone (deleted behind the queue's back: the store's retention never does).
        Returns how many (counted in the partition's ``skipped``)."""
        part = self.parts[p]
        lost = part.skip_to(start)
        part.counts = {o: c for o, c in part.counts.items() if o >= start}
        part.not_before = {o: t for o, t in part.not_before.items() if o >= start}
        return lost

    def warn_skipped(self, p: int, lost: int, start: int) -> None:
        logger.warning("queue %r partition %d: %d messages not yet done were removed from its "
                       "topic (below its start offset %d) before delivery; continuing at %d",
                       self.name, p, lost, start, start)

    @property
    def skipped(self) -> int:
        """Messages not yet done that were removed from the topic under the queue."""
        return sum(part.skipped for part in self.parts)

    # ------------------------------------------------------------------ changing
    def record(self, kind: bytes, p: int, off: int, count: int, t: int = 0) -> int:
        """Append an event (not waiting for its fsync) and apply it; return the offset after
        it, for :meth:`await_durable`."""
        nxt = self.events.append_internal(encode_event(kind, p, off, count, t), False) + 1
        self.folded = nxt
        self._note(kind, p, off, count, t)
        return nxt

    def record_many(self, events: Sequence[Event]) -> int:
        """:meth:`record` for several events, appended as one batch (all or none)."""
        log = self.events
        nxt = log.append_prepared(log.prepare_batch([encode_event(*e) for e in events]),
                                  wait=False).stop
        self.folded = nxt
        for e in events:
            self._note(*e)
        return nxt

    def _note(self, kind: bytes, p: int, off: int, count: int, t: int) -> None:
        part = self.parts[p]
        if kind in DONE_KINDS:
            if kind == DEAD_LETTERED and 0 <= t < len(part.dropped) and part.unsettled(off):
                part.dropped[t] += 1
            part.mark_done(off)
        else:
            part.note_delivery(kind, off, count, t)
        self.since_checkpoint += 1

    def checkpoint(self) -> int:
        """Append the whole state as one checkpoint record (not waiting for its fsync); return
        its offset. Later opens fold from it."""
        off = self.events.append_internal(encode_checkpoint(self.parts), False)
        self.folded = off + 1
        self.since_checkpoint = 0
        self.checkpoint_offset = off
        return off

    def await_durable(self, next_offset: int) -> None:
        """(lock not held) Wait until the events below ``next_offset`` are as durable as the
        fsync policy makes an append's return."""
        self.events.await_policy(next_offset)

    def commit_hint(self, offset: int) -> None:
        """(lock not held) Remember ``offset`` as the checkpoint to fold from (a hint)."""
        self.offsets.commit(QUEUE_GROUP + self.name, QUEUE_EVENTS_TOPIC, {0: offset})

    def trim(self) -> Optional[Dict[str, int]]:
        """(lock not held) Delete event-log segments wholly before the last checkpoint this
        object wrote, once it is durable (never before: a crash would leave acks without it)."""
        off = self.checkpoint_offset
        if off is None or self.events.closed:
            return None
        self.events.flush()
        return self.events.enforce_retention(off)

    def low_watermarks(self) -> Dict[int, int]:
        """``{partition: first offset not yet done}``."""
        return {p: part.low for p, part in enumerate(self.parts)}

    def unsettled(self, p: int, off: int) -> bool:
        """Whether message ``off`` of partition ``p`` still needs delivering (not done)."""
        part = self.parts[p]
        return off >= part.low and off not in part.done
