"""The work-queue event log: its records, its checkpoint, and how replaying them folds into state.

A work queue keeps an internal log (``internal/queues/<name>``) of small records (this module
is their only specification):

    G partition offset count t        delivered (the count-th delivery), leased until t (ms;
                                      0 in logs of versions before leases)
    X partition offset count t        the count-th delivery's lease extended until t (ms)
    A partition offset count          acknowledged: done
    D partition offset count r        dead-lettered (copied to the dead-letter topic): done;
                                      r: why (0 max_deliveries, 1 expired, 2 overflow)
    N partition offset count t        nacked: not before t (ms)
    C json                            checkpoint: every partition's state

Event records are :data:`EVENT` (``<cIqIq``: kind, partition, offset, count, time in ms). A
checkpoint is ``b"C"`` followed by the JSON ``{"partitions": [{"low": L, "done": [...],
"counts": {"offset": n}, "not_before": {"offset": ms}, "leases": {"offset": ms}, "dropped": [n, n, n]}, ...]}``
(``leases``: deliveries not yet acked or nacked and their lease deadlines; ``dropped``: how
many messages were dead-lettered, by reason; both absent in checkpoints of older versions); its offset is committed in the
store's offsets log (group ``__queue__<name>``, topic ``__events__``, partition 0), so a reopen
replays from the last checkpoint: :func:`fold`.

Per partition the state is a *low watermark* (every offset below it is done), the done offsets
at or above it, delivery counts of messages not done, the not-before times of nacked ones and
the leases of deliveries in flight: :class:`PartitionState`. Leases matter to the processes
sharing a queue (a delivery another live process holds is not handed out again before its
deadline); a process that opens the queue alone (after a crash, or with no other process
sharing it) drops them: what was in flight is ready again at once. The ``WorkQueue`` adds its in-memory scheduling on top (ready heaps,
in-flight deadlines) and ``logstore stats`` reads the same state read-only. Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import CorruptLogError

EVENT = struct.Struct("<cIqIq")  # kind, partition, offset, count, time (ms)

DELIVERED = b"G"
ACKED = b"A"
DEAD_LETTERED = b"D"
NACKED = b"N"
EXTENDED = b"X"
CHECKPOINT = b"C"  # first byte of a checkpoint record (the rest is JSON)
DONE_KINDS = (ACKED, DEAD_LETTERED)
EVENT_KINDS = (DELIVERED, ACKED, DEAD_LETTERED, NACKED, EXTENDED)
# Why a message was dead-lettered: the ``t`` of its D event (and the x-dead-letter-reason header).
DEAD_LETTER_REASONS = ("max_deliveries", "expired", "overflow")


class PartitionState:
    """The durable state of one partition of a queue (what a checkpoint holds)."""

    def __init__(self, low: int):
        self.low = low  # every offset below is done
        self.done: Set[int] = set()  # done offsets >= low
        self.counts: Dict[int, int] = {}  # deliveries so far (not done)
        self.not_before: Dict[int, int] = {}  # nacked: not deliverable before this time (ms)
        self.leases: Dict[int, int] = {}  # delivered, not acked/nacked: leased until (ms)
        self.dropped = [0] * len(DEAD_LETTER_REASONS)  # dead-lettered so far, by reason
        self.skipped = 0  # messages not done that retention removed (skip_to), since loading

    def unsettled(self, off: int) -> bool:
        """Whether ``off`` is not done yet."""
        return off >= self.low and off not in self.done

    def mark_done(self, off: int) -> None:
        """Record ``off`` as done (acked or dead-lettered), advancing the watermark."""
        if off < self.low:
            return
        self.counts.pop(off, None)
        if self.not_before:
            self.not_before.pop(off, None)
        if self.leases:
            self.leases.pop(off, None)
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

    def note_delivery(self, kind: bytes, off: int, count: int, t: int) -> None:
        """Apply a delivery (``G``, leased until ``t``), a lease extension (``X``, until ``t``)
        or a nack (``N``, not before ``t``) of ``off``."""
        if off < self.low or off in self.done:
            return
        if kind == EXTENDED:
            if self.counts.get(off) == count:
                self.leases[off] = t
            return
        self.counts[off] = max(self.counts.get(off, 0), count)
        if kind == NACKED:
            self.not_before[off] = t
            self.leases.pop(off, None)
        elif t:
            self.leases[off] = t

    def skip_to(self, start_offset: int) -> int:
        """Retention removed the messages below ``start_offset``: nothing left to deliver.
        Returns how many of them were not done (also added to :attr:`skipped`)."""
        lost = 0
        if self.leases:
            self.leases = {o: t for o, t in self.leases.items() if o >= start_offset}
        if self.low < start_offset:
            lost = start_offset - self.low - sum(1 for o in self.done if o < start_offset)
            self.skipped += lost
            self.done = {o for o in self.done if o >= start_offset}
            self.low = start_offset
            while self.low in self.done:
                self.done.discard(self.low)
                self.low += 1
        return lost

    def snapshot(self) -> Dict[str, Any]:
        """This partition in a checkpoint's JSON."""
        return {"low": self.low, "done": sorted(self.done),
                "counts": {str(k): v for k, v in self.counts.items()},
                "not_before": {str(k): v for k, v in self.not_before.items()},
                "leases": {str(k): v for k, v in self.leases.items()},
                "dropped": self.dropped}

    def restore(self, snap: Dict[str, Any]) -> None:
        """Take the state of a checkpoint's JSON for this partition (``low`` set by the caller)."""
        self.done = set(snap["done"])
        self.counts = {int(k): c for k, c in snap["counts"].items()}
        self.not_before = {int(k): t for k, t in snap["not_before"].items()}
        self.leases = {int(k): t for k, t in snap.get("leases", {}).items()}
        dropped = [int(n) for n in snap.get("dropped", [])][:len(DEAD_LETTER_REASONS)]
        self.dropped = dropped + [0] * (len(DEAD_LETTER_REASONS) - len(dropped))


def encode_event(kind: bytes, partition: int, offset: int, count: int, t: int = 0) -> bytes:
    """One event record."""
    return EVENT.pack(kind, partition, offset, count, t)


def decode_event(value: bytes) -> Tuple[bytes, int, int, int, int]:
    """``(kind, partition, offset, count, t)`` of an event record (``struct.error`` if it is
    not one)."""
    return EVENT.unpack(value)


def encode_checkpoint(parts: Sequence[PartitionState]) -> bytes:
    """A checkpoint record of every partition's state."""
    return CHECKPOINT + json.dumps({"partitions": [p.snapshot() for p in parts]}).encode()


def is_checkpoint(value: bytes) -> bool:
    return value[:1] == CHECKPOINT


def decode_checkpoint(value: bytes) -> List[Dict[str, Any]]:
    """The per-partition snapshots of a checkpoint record (``ValueError``/``KeyError`` if it
    is not one)."""
    return json.loads(value[1:])["partitions"]


def replay_start(checkpoint: Optional[int], start_offset: int) -> int:
    """Where replaying the event log starts: its last committed checkpoint, unless retention
    removed that (or there is none): then the log's start."""
    if checkpoint is None or checkpoint < start_offset:
        return start_offset
    return checkpoint


def fold(events: Iterable[Tuple[int, Optional[bytes]]], starts: Sequence[int], *,
         where: Optional[str] = None,
         new: Callable[[int], PartitionState] = PartitionState) -> Tuple[List[Any], int]:
    """Replay event records into per-partition state.

    ``events``: ``(offset, value)`` of the event log's records from :func:`replay_start` on
    (a ``None`` value is skipped); ``starts``: each partition's start offset now (messages
    below it were removed by retention). A checkpoint replaces the state of every partition it
    names; events of a partition the queue does not have (beyond ``len(starts)``) are ignored.
    ``new(low)`` makes a partition's state (a subclass of :class:`PartitionState`).

    Returns ``(states, records replayed)``. Raises :class:`CorruptLogError` (``where``: the
    event log's path) for a record that is neither an event nor a checkpoint.
    """
    parts = [new(s) for s in starts]
    replayed = 0
    for offset, value in events:
        replayed += 1
        if value is None:
            continue
        if is_checkpoint(value):
            _apply_checkpoint(parts, value, offset, where, new)
            continue
        apply_event(parts, value, offset, where)
    for part, start in zip(parts, starts):
        part.skip_to(start)
    return parts, replayed


def apply_event(parts: Sequence[PartitionState], value: bytes, offset: int,
                where: Optional[str]) -> Tuple[bytes, int, int, int, int]:
    """Apply one event record (not a checkpoint) to ``parts``; returns it decoded. Events of a
    partition beyond ``parts`` are ignored; CorruptLogError for a record that is no event."""
    try:
        kind, p, off, count, t = decode_event(value)
    except struct.error:
        raise CorruptLogError(f"bad queue event at offset {offset}", where) from None
    if kind not in EVENT_KINDS:
        raise CorruptLogError(f"unknown queue event kind {kind!r} at offset {offset} (written "
                              f"by a newer version?)", where)
    if p < len(parts):
        if kind in DONE_KINDS:
            if kind == DEAD_LETTERED and 0 <= t < len(DEAD_LETTER_REASONS) and \
                    parts[p].unsettled(off):
                parts[p].dropped[t] += 1
            parts[p].mark_done(off)
        else:
            parts[p].note_delivery(kind, off, count, t)
    return kind, p, off, count, t


def _apply_checkpoint(parts: List[Any], value: bytes, offset: int, where: Optional[str],
                      new: Callable[[int], PartitionState]) -> None:
    try:
        snaps = decode_checkpoint(value)
        for p, snap in enumerate(snaps):
            if p < len(parts):
                part = new(int(snap["low"]))
                part.restore(snap)
                parts[p] = part
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptLogError(f"bad queue checkpoint at offset {offset}", where) from None
