"""``store.metrics()``: figures of every topic, partition, consumer group, subscription and work
queue of a store, and their Prometheus text exposition.

Two kinds of figures:

* **from the logs**, the same in every process (the ``logstore metrics`` command opens the store
  read-only and computes them too): end offsets, records, ``rate_in`` (records whose timestamp
  is within the last :data:`RATE_WINDOW_S` seconds, per second, found with the time index), a
  group's committed offsets, ``lag`` (records) and ``lag_s`` (age of the oldest record not
  committed), a queue's ``depth``/``in_flight``/``delayed``/``total``/``dead_lettered`` and
  ``oldest_age_s`` (= ``lag_s``);
* **process-local** (:data:`PROCESS_LOCAL`): what only the process doing the work can count:
  puts, deliveries, acks, nacks, redeliveries and errors since the queue was opened in this
  process, ``rate_out`` (acks or polled records per second over the last minute),
  processing-time percentiles of acked messages (get to ack), a group's polled records, circuit
  breakers and request-reply counters. They are absent from a figure set computed in another
  process.

A queue open in this process (``store.queue(...)``) reports its exact in-memory figures
(``in_flight`` = deliveries not yet acked whose visibility timeout runs); a queue computed from
its event log (another process, or a queue not open here) cannot tell in-flight deliveries from
expired ones waiting for redelivery: there ``in_flight`` counts every delivered message not yet
done and not waiting for a nack's retry time, and ``depth`` the messages never delivered.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import AckError, LogstoreError
from ..format import queue_events
from ..format.names import QUEUE_EVENTS_TOPIC, QUEUE_GROUP, QUEUES_DIR, REDRIVE_GROUP
from ..storage.log import Log
from ..util import now_ms
from .consumer import SUBSCRIPTION_PREFIX
from .counters import RATE_WINDOW_S, Timings, WindowCounter
from .workqueue import Message, WorkQueue

#: Figures only the process doing the work has (absent when computed from the logs).
PROCESS_LOCAL = (
    "rate_out", "put_total", "delivered_total", "acked_total", "nacked_total",
    "redelivered_total", "ack_errors_total", "errors_total", "processing_s", "polled_total",
    "members_here", "breakers", "rpc",
)
_MAX_TRACKED = 1 << 16  # deliveries whose get time is remembered (an expired one is forgotten)


# ------------------------------------------------------------------------------ work queues
class QueueCounters:
    """What a work queue in this process did since it was opened."""

    def __init__(self) -> None:
        self.put = WindowCounter()
        self.acked = WindowCounter()
        self.delivered = 0
        self.redelivered = 0
        self.nacked = 0
        self.ack_errors = 0
        self.handler_errors = 0  # reported by helpers that run handlers (breakers, responders)
        self.processing = Timings()
        self.started: Dict[Tuple[int, int], Tuple[int, float]] = {}  # (p, off) -> (count, t)

    def on_get(self, msg: Message) -> None:
        self.delivered += 1
        if msg.delivery_count > 1:
            self.redelivered += 1
        started = self.started
        if len(started) >= _MAX_TRACKED:
            started.pop(next(iter(started)), None)  # the oldest: most likely an expired delivery
        started[(msg.partition, msg.offset)] = (msg.delivery_count, time.monotonic())

    def on_done(self, msg: Message, acked: bool) -> None:
        got = self.started.pop((msg.partition, msg.offset), None)
        if not acked:
            self.nacked += 1
            return
        now = time.monotonic()
        self.acked.add(1, now)
        if got is not None and got[0] == msg.delivery_count:
            self.processing.add(now - got[1])


class MeteredWorkQueue(WorkQueue):
    """A :class:`~logstore.views.workqueue.WorkQueue` that counts what it does (what
    ``store.queue`` returns). Same API; :attr:`counters` holds the figures."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.counters = QueueCounters()

    def put(self, *args: Any, **kwargs: Any) -> Any:
        msg_id = super().put(*args, **kwargs)
        if msg_id is not False:  # (False: refused by overflow="drop_newest")
            self.counters.put.add()
        return msg_id

    def get(self, *args: Any, **kwargs: Any) -> Optional[Message]:
        msg = super().get(*args, **kwargs)
        if msg is not None:
            self.counters.on_get(msg)
        return msg

    def get_many(self, *args: Any, **kwargs: Any) -> List[Message]:
        msgs = super().get_many(*args, **kwargs)
        for msg in msgs:
            self.counters.on_get(msg)
        return msgs

    def ack_many(self, msgs: Sequence[Message]) -> None:
        msgs = list(msgs)
        try:
            super().ack_many(msgs)
        except AckError:
            self.counters.ack_errors += 1
            raise
        for msg in msgs:
            self.counters.on_done(msg, True)

    def ack(self, msg: Message) -> None:
        try:
            super().ack(msg)
        except AckError:
            self.counters.ack_errors += 1
            raise
        self.counters.on_done(msg, True)

    def nack(self, msg: Message, *args: Any, **kwargs: Any) -> None:
        try:
            super().nack(msg, *args, **kwargs)
        except AckError:
            self.counters.ack_errors += 1
            raise
        self.counters.on_done(msg, False)


# ------------------------------------------------------------------------------ from the logs
def _rate_in(log: Log, now: int) -> float:
    """Records whose timestamp is within the last window, per second (the time index finds the
    first one: no scan)."""
    end = log.end_offset
    return max(0, end - log.offset_for_time(now - RATE_WINDOW_S * 1000)) / RATE_WINDOW_S


def _age_s(log: Log, offset: int, now: int) -> float:
    """Age of the record at ``offset`` (the oldest one not yet consumed); 0 if there is none."""
    offset = max(offset, log.start_offset)
    if offset >= log.end_offset:
        return 0.0
    try:
        return max(0.0, (now - log.get(offset).timestamp_ms) / 1000.0)
    except LogstoreError:  # removed meanwhile (retention, compaction): the next one is younger
        return 0.0


def topic_figures(topic: Any, now: int) -> Dict[str, Any]:
    parts: Dict[int, Dict[str, Any]] = {}
    for p, log in enumerate(topic.partitions):
        start, end = log.start_offset, log.end_offset
        parts[p] = {"start_offset": start, "end_offset": end, "records": end - start,
                    "rate_in": _rate_in(log, now)}
    return {"partitions": parts,
            "records": sum(x["records"] for x in parts.values()),
            "end_offset": sum(x["end_offset"] for x in parts.values()),
            "rate_in": sum(x["rate_in"] for x in parts.values())}


def group_figures(topic: Any, commits: Dict[int, int], now: int) -> Dict[str, Any]:
    parts: Dict[int, Dict[str, Any]] = {}
    for p, committed in sorted(commits.items()):
        if p >= topic.partition_count:
            continue
        log = topic.partitions[p]
        end = log.end_offset
        parts[p] = {"committed": committed, "end_offset": end,
                    "lag": max(0, end - max(committed, log.start_offset)),
                    "lag_s": _age_s(log, committed, now)}
    return {"partitions": parts, "lag": sum(x["lag"] for x in parts.values()),
            "lag_s": max((x["lag_s"] for x in parts.values()), default=0.0)}


def queue_figures_from_state(parts: Sequence[Any], topic: Any, now: int) -> Dict[str, Any]:
    """A queue's figures from its durable per-partition state (``PartitionState``: what the
    event log folds into), without a ``WorkQueue``: see the module docstring."""
    total = in_flight = delayed = 0
    oldest = 0.0
    for p, part in enumerate(parts):
        if p >= topic.partition_count:
            break
        log = topic.partitions[p]
        end = log.end_offset
        not_done = max(0, end - part.low - sum(1 for o in part.done if part.low <= o < end))
        pending = [o for o in part.counts if part.low <= o < end and o not in part.done]
        waiting = sum(1 for o in pending if part.not_before.get(o, 0) > now)
        total += not_done
        delayed += waiting
        in_flight += len(pending) - waiting
        if not_done:
            oldest = max(oldest, _age_s(log, part.low, now))
    return {"depth": max(0, total - in_flight - delayed), "in_flight": in_flight,
            "delayed": delayed, "total": total, "oldest_age_s": oldest}


def _dead_letters(store: Any, name: str, dlq: Optional[str]) -> Tuple[Optional[str], int]:
    """The dead-letter topic of queue ``name`` and how many of its messages are not redriven."""
    redrive = {t: o for (g, t, p), o in store.offsets.items() if g == REDRIVE_GROUP + name}
    if dlq is None:
        dlq = next(iter(redrive), None) or f"{name}.dlq"
    if dlq not in store.topics():
        return None, 0
    log = store.topic(dlq).partitions[0]
    return dlq, max(0, log.end_offset - max(redrive.get(dlq, 0), log.start_offset))


def _folded_state(store: Any, name: str, topic: Any) -> List[Any]:
    """(A read-only store) A queue's state folded from its event log, read-only, exactly as a
    ``WorkQueue`` folds it when it opens."""
    checkpoint = store.offsets.get(QUEUE_GROUP + name, QUEUE_EVENTS_TOPIC, 0)
    with Log.open(os.path.join(store.root, QUEUES_DIR, name), readonly=True) as events:
        start = min(queue_events.replay_start(checkpoint, events.start_offset),
                    events.end_offset)
        parts, _ = queue_events.fold(((r.offset, r.value) for r in events.replay(start)),
                                     [log.start_offset for log in topic.partitions],
                                     where=events.path)
    return parts


def queue_names(root: str) -> List[str]:
    """Every work queue of the store at ``root`` (those with an event log)."""
    qdir = os.path.join(root, QUEUES_DIR)
    return sorted(os.listdir(qdir)) if os.path.isdir(qdir) else []


def open_queue_figures(q: MeteredWorkQueue, now: int) -> Dict[str, Any]:
    """Figures of a queue open in this process: its exact ``stats()`` and its counters."""
    st = q.stats()
    c = q.counters
    fig: Dict[str, Any] = {
        "depth": st["depth"], "in_flight": st["in_flight"], "delayed": st["delayed"],
        "total": st["total"], "oldest_age_s": st["oldest_age_s"], "skipped": st["skipped"],
        "put_total": c.put.total, "delivered_total": c.delivered,
        "acked_total": c.acked.total, "nacked_total": c.nacked,
        "redelivered_total": c.redelivered, "ack_errors_total": c.ack_errors,
        "errors_total": c.nacked + c.ack_errors + c.handler_errors,
        "rate_out": c.acked.rate(), "processing_s": c.processing.summary(),
    }
    fig["dead_letter_topic"], fig["dead_lettered"] = _dead_letters(
        q.store, q.name, None if q.dead_letter is None else q.dead_letter.name)
    return fig


def _queue_figures(store: Any, name: str, q: Optional[MeteredWorkQueue], now: int
                   ) -> Dict[str, Any]:
    if q is not None:
        return open_queue_figures(q, now)
    topic = store.topic(name)
    if store.readonly:
        fig = queue_figures_from_state(_folded_state(store, name, topic), topic, now)
    else:
        state = store.queue_state(name)
        with state.lock:
            fig = queue_figures_from_state(state.parts, topic, now)
    fig["dead_letter_topic"], fig["dead_lettered"] = _dead_letters(store, name, None)
    return fig


# ------------------------------------------------------------------------------ the whole store
def collect(store: Any, queues: Iterable[Any], groups: Iterable[Any],
            attached: Iterable[Any], topics: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Every figure of ``store`` (see the module docstring); ``queues``, ``groups`` and
    ``attached`` are its open queues, group states and helpers (breakers, requesters,
    responders) in this process. ``topics``: only these topics, their groups and queues."""
    now = now_ms()
    names = store.topics() if topics is None else list(topics)
    out: Dict[str, Any] = {"time_ms": now, "store": store.root, "readonly": store.readonly,
                           "topics": {}, "groups": {}, "subscriptions": {}, "queues": {}}
    for name in names:
        out["topics"][name] = topic_figures(store.topic(name), now)
    local = {(g.group, g.topic.name): g for g in groups if not g.closed}
    for group, by_topic in sorted(store.groups().items()):
        if group.startswith("__") and not group.startswith(SUBSCRIPTION_PREFIX):
            continue  # internal cursors (queue checkpoints, redrive, mirror): not consumers
        for tname, commits in sorted(by_topic.items()):
            if tname not in names:
                continue
            fig = group_figures(store.topic(tname), commits, now)
            st = local.get((group, tname))
            if st is not None:
                fig.update(polled_total=st.polled.total, rate_out=st.polled.rate(),
                           errors_total=st.errors, members_here=len(st.members))
            if group.startswith(SUBSCRIPTION_PREFIX):
                out["subscriptions"].setdefault(tname, {})[group[len(SUBSCRIPTION_PREFIX):]] = fig
            else:
                out["groups"].setdefault(group, {})[tname] = fig
    open_queues = {q.name: q for q in queues if not q.closed}
    for name in queue_names(store.root):
        if name not in names:
            continue
        try:
            fig = _queue_figures(store, name, open_queues.get(name), now)
        except LogstoreError as e:  # one damaged queue must not hide every other figure
            out["queues"][name] = {"error": str(e)}
            continue
        fig["lag"] = fig["total"]
        fig["lag_s"] = fig["oldest_age_s"]
        fig["rate_in"] = out["topics"][name]["rate_in"]
        out["queues"][name] = fig
    for helper in attached:
        section, key, fig = helper.metrics()
        out.setdefault(section, {})[key] = fig
    return out


def entities(metrics: Dict[str, Any]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """The figure sets of ``metrics`` as ``(kind, name, figures)``: ``("topic", "orders", ...)``,
    ``("partition", "orders/2", ...)``, ``("group", "billing@orders", ...)``,
    ``("subscription", "audit@orders", ...)``, ``("queue", "jobs", ...)``, and the sections
    helpers add (``("breaker", name, ...)``, ``("requester", ...)``, ``("responder", ...)``)."""
    rows: List[Tuple[str, str, Dict[str, Any]]] = []
    for name, t in metrics.get("topics", {}).items():
        rows.append(("topic", name, t))
        for p, fig in t["partitions"].items():
            rows.append(("partition", f"{name}/{p}", fig))
    for kind, section in (("group", "groups"), ("subscription", "subscriptions")):
        for outer, by_inner in metrics.get(section, {}).items():
            for inner, fig in by_inner.items():
                name = f"{outer}@{inner}" if kind == "group" else f"{inner}@{outer}"
                rows.append((kind, name, fig))
    for name, fig in metrics.get("queues", {}).items():
        rows.append(("queue", name, fig))
    for section in ("breakers", "requesters", "responders"):
        for name, fig in metrics.get(section, {}).items():
            rows.append((section[:-1], name, fig))
    return rows
