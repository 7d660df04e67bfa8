"""Replay helpers for the event-sourcing pattern: rebuild state from ``replay(from_offset)`` and
compare it with what the application had acknowledged.

An event-sourced application appends an event, and only once ``append``/``publish`` returned
does it tell its caller "done" (acknowledges). After a crash it rebuilds its state by replaying
the events. What must hold, whatever the crash:

* every acknowledged event is in the log, in the order it was acknowledged, unchanged;
* after the last acknowledged event there may be a few more: appended, but the crash came
  before the acknowledgement (in flight). Nothing else.

:func:`rebuild` replays, folds the events into a state and checks exactly that when given the
acknowledged events, raising :class:`RecoveryMismatch` (an ``AssertionError``) that says which
acknowledged event is missing or different and at which offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, List, Optional, Sequence, TypeVar, Union

import logstore
from logstore import Record

__all__ = ["RecoveryMismatch", "Rebuilt", "events", "rebuild"]

S = TypeVar("S")
E = TypeVar("E")

Source = Union["logstore.Log", "logstore.Topic", Iterable[Record]]


class RecoveryMismatch(AssertionError):
    """The recovered events do not match the acknowledged ones (see :func:`rebuild`)."""


@dataclass
class Rebuilt(Generic[S, E]):
    """What :func:`rebuild` found.

    ``state``: every recovered event folded in. ``acked_state``: the events up to and including
    the last acknowledged one folded in (the state the application had acknowledged; equal to
    ``state`` when nothing was in flight); None when no ``acked`` list was given.
    ``events``/``offsets``: the recovered events in log order and their offsets.
    ``acknowledged``: how many of them (a prefix) are the acknowledged ones.
    ``unacknowledged``: the events after them (appended, never acknowledged: in flight).
    """

    state: S
    acked_state: Optional[S]
    events: List[E] = field(default_factory=list)
    offsets: List[int] = field(default_factory=list)
    acknowledged: int = 0
    unacknowledged: List[E] = field(default_factory=list)


def _records(source: Source, *, key: Optional[bytes], partition: Optional[int],
             from_offset: int) -> Iterable[Record]:
    if isinstance(source, logstore.Log):
        return source.replay(from_offset)
    if isinstance(source, logstore.Topic):
        n = source.partition_count
        if partition is None:
            if key is not None:
                partition = source.partition_of(key)
            elif n == 1:
                partition = 0
            else:
                raise ValueError(
                    f"topic {source.name!r} has {n} partitions and there is no order across "
                    f"partitions: pass partition= (or key=, the aggregate's key)")
        if not 0 <= partition < n:
            raise ValueError(f"topic {source.name!r} has no partition {partition}")
        return source.partitions[partition].replay(from_offset)
    if from_offset:
        return (r for r in source if r.offset >= from_offset)
    return source


def events(source: Source, decode: Optional[Callable[[Record], E]] = None, *,
           key: Optional[bytes] = None, partition: Optional[int] = None,
           from_offset: int = 0) -> List[Any]:
    """The events of ``source`` from ``from_offset`` on, decoded: a ``Log``, a ``Topic`` (one
    partition: ``partition``, or the one ``key`` maps to, or the only one) or any iterable of
    records. ``key``: only records with this key (one aggregate). ``decode(record)`` turns a
    record into an event (default: its value)."""
    dec = decode if decode is not None else _value
    return [dec(r) for r in _records(source, key=key, partition=partition,
                                     from_offset=from_offset)
            if key is None or r.key == key]


def _value(r: Record) -> Any:
    return r.value


def rebuild(source: Source, apply: Callable[[S, E], S], initial: S, *,
            decode: Optional[Callable[[Record], E]] = None,
            acked: Optional[Sequence[E]] = None, max_unacknowledged: Optional[int] = 1,
            key: Optional[bytes] = None, partition: Optional[int] = None,
            from_offset: int = 0) -> Rebuilt[S, E]:
    """Rebuild state from the log: ``state = apply(state, event)`` for every recovered event,
    starting from ``initial`` (a snapshot's state when ``from_offset`` is the offset after it).

    ``source``, ``decode``, ``key``, ``partition``, ``from_offset``: as for :func:`events`.

    With ``acked`` (the events the application acknowledged, in order, e.g. what a
    :func:`~logstore.testing.sweep.sweep` or crash runner check receives): check that the
    recovered events start with exactly these (compared with ``==``) and that at most
    ``max_unacknowledged`` events follow them (None: any number; 1 suits one writer that
    acknowledges each append before the next; use the number of concurrent writers otherwise).
    A violation raises :class:`RecoveryMismatch` naming the first acknowledged event that is
    missing or different.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
    dec = decode if decode is not None else _value
    out: Rebuilt[S, E] = Rebuilt(initial, None)
    state = initial
    n_acked = len(acked) if acked is not None else 0
    if n_acked == 0 and acked is not None:
        out.acked_state = initial
    for rec in _records(source, key=key, partition=partition, from_offset=from_offset):
        if key is not None and rec.key != key:
            continue
        ev = dec(rec)
        i = len(out.events)
        if acked is not None and i < n_acked and ev != acked[i]:
            raise RecoveryMismatch(
                f"acknowledged event #{i} is not what was recovered at offset {rec.offset}: "
                f"acknowledged {acked[i]!r:.200}, recovered {ev!r:.200} (an acknowledged event "
                f"was lost or changed, or events were acknowledged out of order)")
        out.events.append(ev)
        out.offsets.append(rec.offset)
        state = apply(state, ev)
        if i + 1 == n_acked:
            out.acked_state = state
    out.state = state
    if acked is not None:
        got = len(out.events)
        if got < n_acked:
            where = (f"the last recovered one is at offset {out.offsets[-1]}" if out.offsets
                     else "nothing was recovered")
            raise RecoveryMismatch(
                f"{n_acked - got} acknowledged event(s) lost: {n_acked} were acknowledged, "
                f"{got} recovered ({where}); the first lost one is #{got}: "
                f"{acked[got]!r:.200}")
        out.acknowledged = n_acked
        out.unacknowledged = out.events[n_acked:]
        if max_unacknowledged is not None and len(out.unacknowledged) > max_unacknowledged:
            raise RecoveryMismatch(
                f"{len(out.unacknowledged)} events recovered after the last acknowledged one "
                f"(at most {max_unacknowledged} can have been in flight): "
                f"{out.unacknowledged[:5]!r:.300} (at offsets "
                f"{out.offsets[n_acked:n_acked + 5]})")
    return out
