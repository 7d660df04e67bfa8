"""What ``logstore stats`` reports for a store, read-only: topics, groups, queues, internal logs.

:func:`store_stats` gathers every topic partition's figures from its batch headers
(:func:`.report.inspect_log` with ``verify=False``), the committed offsets and lag of consumer
groups and durable subscriptions (a ``readonly=True`` store open), and each work queue's depth:
:func:`queue_state` replays the queue's event log from its last checkpoint with the shared
fold of :mod:`logstore.format.queue_events`, exactly as the ``WorkQueue`` does when it opens.
Nothing is written and no lock is taken, so it is safe beside the writing process (committed
offsets and queue state are then as of its last durable write).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import LogstoreError
from ..format import queue_events
from ..format.names import QUEUE_EVENTS_TOPIC, QUEUE_GROUP, REDRIVE_GROUP, queue_events_dir
from ..storage.log import Log
from ..processing.status import describe
from ..views import leases
from ..views.consumer import SUBSCRIPTION_PREFIX
from ..views.store import Store
from .report import LogReport, inspect_log
from .scan import Progress
from .targets import (
    Target, broken_topics, group_dirs, is_store_root, resolve_targets, store_queues, store_topics,
)

Bounds = Dict[int, Tuple[int, int]]  # partition -> (start offset, end offset)


def group_kind(group: str) -> str:
    """``"group"`` (a user consumer group), ``"subscription"`` or ``"internal"``."""
    if group.startswith(SUBSCRIPTION_PREFIX):
        return "subscription"
    if group.startswith("__"):
        return "internal"
    return "group"


# ---------------------------------------------------------------------------------- queues
def queue_state(events_dir: str, checkpoint: Optional[int], bounds: List[Tuple[int, int]],
                now_ms: Optional[int] = None) -> Dict[str, Any]:
    """A work queue's state rebuilt read-only, exactly as the ``WorkQueue`` rebuilds it.

    ``events_dir``: the queue's event log (``internal/queues/<name>``); ``checkpoint``: the
    committed offset of its last checkpoint (``store.offsets`` entry ``("__queue__<name>",
    "__events__", 0)``, or None); ``bounds``: ``(start_offset, end_offset)`` of each partition
    of the queue's topic. The event log is replayed from the checkpoint (read-only open: nothing
    is written, no lock is taken, safe beside the writing process).

    Per partition: ``low`` (every offset below is done), ``done_above`` (done offsets at or above
    ``low``), ``not_done`` = ``end_offset - low - done_above`` (what ``len(queue)`` counts: ready,
    in flight, delayed or not yet looked at), ``unacked`` (delivered at least once and not done:
    in flight, or waiting for redelivery), ``delayed`` (nacked with a retry time still in the
    future; messages put with ``delay=`` are counted in ``not_done`` only).
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    with Log.open(events_dir, readonly=True) as events:
        start = min(queue_events.replay_start(checkpoint, events.start_offset), events.end_offset)
        parts, replayed = queue_events.fold(
            ((rec.offset, rec.value) for rec in events.replay(start)),
            [s for s, _ in bounds], where=events_dir)
    out = []
    for p, (part, (start_off, end_off)) in enumerate(zip(parts, bounds)):
        done_above = sum(1 for o in part.done if part.low <= o < end_off)
        pending = {o for o in part.counts if part.low <= o < end_off and o not in part.done}
        delayed = sum(1 for o, nb in part.not_before.items() if o in pending and nb > now)
        out.append({"partition": p, "start_offset": start_off, "end_offset": end_off,
                    "low": part.low, "done_above": done_above,
                    "not_done": max(0, end_off - part.low - done_above),
                    "unacked": len(pending), "delayed": delayed})
    return {
        "checkpoint_offset": checkpoint,
        "events_replayed": replayed,
        "not_done": sum(x["not_done"] for x in out),
        "unacked": sum(x["unacked"] for x in out),
        "delayed": sum(x["delayed"] for x in out),
        "partitions": out,
    }


def _queue_stats(store: Store, root: str, name: str, groups: Dict[str, Any],
                 bounds: Dict[str, Bounds], now: int, topic_names: List[str]) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"queue": name}
    if name not in topic_names:
        entry["error"] = f"the queue's topic {name!r} does not exist"
        return entry
    tb = bounds.get(name, {})
    parts = store.topic(name).partitions
    checkpoint = groups.get(QUEUE_GROUP + name, {}).get(QUEUE_EVENTS_TOPIC, {}).get(0)
    state = queue_state(queue_events_dir(root, name), checkpoint,
                        [tb.get(p, (0, 0)) for p in range(len(parts))], now)
    oldest = None
    for row in state["partitions"]:
        if row["not_done"] and row["low"] < row["end_offset"]:
            try:
                ts = parts[row["partition"]].get(row["low"]).timestamp_ms
            except LogstoreError:
                continue
            oldest = ts if oldest is None else min(oldest, ts)
    redrive = groups.get(REDRIVE_GROUP + name, {})
    dlq = next(iter(redrive), None)
    if dlq is None and f"{name}.dlq" in topic_names:
        dlq = f"{name}.dlq"
    dead = None
    if dlq is not None and dlq in bounds and 0 in bounds[dlq]:
        start, end = bounds[dlq][0]
        pos = redrive.get(dlq, {}).get(0) or 0
        dead = max(0, end - max(pos, start))
    entry.update({
        "partitions": len(parts),
        "not_done": state["not_done"], "unacked": state["unacked"],
        "delayed": state["delayed"],
        "dead_letter_topic": dlq, "dead_lettered": dead,
        "oldest_age_s": None if oldest is None else max(0.0, (now - oldest) / 1000.0),
        "checkpoint_offset": checkpoint, "events_replayed": state["events_replayed"],
        "partition_state": state["partitions"],
    })
    return entry


# ---------------------------------------------------------------------------------- the store
def store_stats(path: "str | os.PathLike[str]", topic: Optional[str] = None,
                partition: Optional[int] = None, progress: Optional[Callable[[Target], Progress]]
                = None, now_ms: Optional[int] = None) -> Dict[str, Any]:
    """What ``logstore stats`` prints for a store root: every topic partition (segments,
    offsets, sizes, records, from the batch headers), consumer groups and subscriptions with
    their committed offsets and lag, work queues with their depth, and the internal logs and
    groups. Read-only throughout: the store is opened with ``readonly=True`` (committed offsets
    from ``store.offsets``), queue state comes from :func:`queue_state`.

    ``topic``/``partition`` narrow everything to one topic (partition). ``progress(target)``
    returns the progress callback for the header scan of one log (or None).
    """
    given = os.fspath(path)
    targets = resolve_targets(given, topic, partition, internal=True)
    root = next((t.store_root for t in targets if t.store_root), None)
    if root is None:
        p = os.path.abspath(given)
        root = p if is_store_root(p) else os.path.dirname(os.path.dirname(p))  # a topic dir
    if topic is None and not is_store_root(os.path.abspath(given)):
        topic = targets[0].topic if targets else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    reports: Dict[str, LogReport] = {}
    for t in targets:
        reports[t.label] = inspect_log(t, verify=False,
                                       progress=progress(t) if progress else None)
    result: Dict[str, Any] = {"path": given, "store": root, "topic": topic,
                              "partition": partition, "topics": [], "groups": [],
                              "subscriptions": [], "queues": [], "processors": [],
                              "internal": {"groups": [], "logs": []}, "problems": []}
    for rep in reports.values():
        for pr in rep.problems:
            result["problems"].append({"label": rep.label, "file": pr.file, "kind": pr.kind,
                                       "position": pr.position, "reason": pr.reason})
    store = Store.open(root, readonly=True, dedup_window_s=0)
    try:
        result["id"] = store.id
        topic_names = store.topics()
        bounds = _topic_bounds(store, root, topic, partition, reports, result)
        result["topics"].sort(key=lambda t: t["topic"])
        groups = committed_offsets(store, root)
        _group_stats(groups, topic, partition, bounds, topic_names, result)
        for q in store_queues(root):
            if topic is not None and q != topic:
                continue
            try:
                result["queues"].append(_queue_stats(store, root, q, groups, bounds, now,
                                                     topic_names))
            except LogstoreError as e:  # e.g. a missing partition or event log
                result["queues"].append({"queue": q, "error": str(e)})
        result["processors"] = _processor_stats(store, topic, result["problems"])
    finally:
        store.close()
    for t in targets:
        if t.internal:
            tot = reports[t.label].totals()
            result["internal"]["logs"].append({
                "log": t.label, "segments": tot["segments"], "start_offset": tot["start_offset"],
                "end_offset": tot["end_offset"], "records": tot["records"],
                "bytes": tot["bytes"], "status": "ok" if reports[t.label].ok else "problems"})
    return result


def _processor_stats(store: Store, topic: Optional[str],
                     problems: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every stream processor that has run in the store (narrowed to those reading ``topic``),
    from its tasks' last commits: lag, late records, state size (``processing.describe``). A
    processor whose metadata or changelog cannot be read is listed with its error, not
    dropped."""
    try:
        found = describe(store)
    except LogstoreError as e:  # (a damaged processor file: a problem, not a silent gap)
        problems.append({"label": "processors", "file": getattr(e, "path", None),
                         "kind": "processor", "position": None, "reason": str(e)})
        return [{"processor": "?", "error": str(e)}]
    if topic is not None:
        found = [d for d in found if any(s["input"] == topic for s in d["stages"])]
    return found


def _topic_bounds(store: Store, root: str, topic: Optional[str], partition: Optional[int],
                  reports: Dict[str, LogReport], result: Dict[str, Any]) -> Dict[str, Bounds]:
    """Every topic's partition bounds (from the store); the rows of the topics in scope go to
    ``result["topics"]``."""
    bounds: Dict[str, Bounds] = {}
    for name, problem in broken_topics(root):
        if topic is None or name == topic:
            result["topics"].append({
                "topic": name, "partitions": None, "error": problem, "partition_stats": [],
                "queue": False, "retention": None,
                "totals": {"segments": 0, "records": 0, "batches": 0, "bytes": 0,
                           "first_timestamp": None, "max_timestamp": None, "status": "damaged"}})
    for name, n in store_topics(root):
        try:
            logs = store.topic(name).partitions
            bounds[name] = {p: (log.start_offset, log.end_offset) for p, log in enumerate(logs)}
            retention = store.topic(name).retention
        except LogstoreError:
            bounds[name] = {}
            retention = None
        if topic is not None and name != topic:
            continue
        rows = [_partition_row(name, p, reports.get(f"{name}/{p}"), bounds[name])
                for p in range(n) if partition is None or p == partition]
        firsts = [r["first_timestamp"] for r in rows if r["first_timestamp"] is not None]
        maxes = [r["max_timestamp"] for r in rows if r["max_timestamp"] is not None]
        result["topics"].append({
            "topic": name, "partitions": n, "retention": retention,
            "queue": name in store_queues(root),
            "partition_stats": rows,
            "totals": {
                "segments": sum(r["segments"] for r in rows),
                "records": sum(r["records"] for r in rows),
                "batches": sum(r["batches"] for r in rows),
                "bytes": sum(r["bytes"] for r in rows),
                "first_timestamp": min(firsts) if firsts else None,
                "max_timestamp": max(maxes) if maxes else None,
                "status": "ok" if all(r["status"] == "ok" for r in rows) else "problems",
            },
        })
    return bounds


def _partition_row(name: str, p: int, rep: Optional[LogReport], bounds: Bounds
                   ) -> Dict[str, Any]:
    tot = rep.totals() if rep is not None else {}
    start, end = bounds.get(p, (tot.get("start_offset"), tot.get("end_offset")))
    return {"partition": p, "label": f"{name}/{p}",
            "segments": tot.get("segments", 0),
            "start_offset": start, "end_offset": end,
            "records": tot.get("records", 0), "batches": tot.get("batches", 0),
            "bytes": tot.get("bytes", 0),
            "payload_bytes": tot.get("payload_bytes", 0),
            "raw_bytes": tot.get("raw_bytes", 0),
            "first_timestamp": tot.get("first_timestamp"),
            "max_timestamp": tot.get("max_timestamp"),
            "status": "ok" if rep is not None and rep.ok else "problems"}


def committed_offsets(store: Store, root: str) -> Dict[str, Dict[str, Dict[int, int]]]:
    """``store.groups()`` (``{group: {topic: {partition: committed}}}``), but a group whose
    ``group.json`` is unreadable is left out (``verify``/``stats`` report it as damaged through
    its target) instead of failing the whole listing."""
    out: Dict[str, Dict[str, Dict[int, int]]] = {}
    for (g, t, p), o in store.offsets.items():
        out.setdefault(g, {}).setdefault(t, {})[p] = o
    for t, g, path, problem in group_dirs(root):
        if problem is None and g is not None:
            out.setdefault(g, {}).setdefault(t, {}).update(
                leases.read_group_commits(path, store.fs))
    return out


def _group_stats(groups: Dict[str, Dict[str, Dict[int, int]]], topic: Optional[str],
                 partition: Optional[int], bounds: Dict[str, Bounds], topic_names: List[str],
                 result: Dict[str, Any]) -> None:
    """Committed offsets and lag of every group, subscription and internal group in scope."""
    for group, by_topic in sorted(groups.items()):
        kind = group_kind(group)
        for tname, offsets in sorted(by_topic.items()):
            if topic is not None and tname != topic and group not in (
                    QUEUE_GROUP + topic, REDRIVE_GROUP + topic):
                continue
            rows = _lag_rows(offsets, bounds.get(tname, {}),
                             partition if tname == topic else None)
            if not rows:
                continue
            lags = [r["lag"] for r in rows if r["lag"] is not None]
            skipped = [r["skipped"] for r in rows if r["skipped"] is not None]
            entry: Dict[str, Any] = {"topic": tname, "partitions": rows,
                                     "lag": sum(lags) if lags else None,
                                     "skipped": sum(skipped) if skipped else None}
            if kind == "subscription":
                entry = {"subscription": group[len(SUBSCRIPTION_PREFIX):], **entry}
                result["subscriptions"].append(entry)
            elif kind == "group":
                result["groups"].append({"group": group, **entry})
            else:
                if tname not in topic_names:
                    for r in rows:
                        r["lag"] = r["skipped"] = None
                    entry["lag"] = entry["skipped"] = None
                result["internal"]["groups"].append({"group": group, **entry})


def lag_row(p: int, committed: int, start: Optional[int], end: Optional[int]
            ) -> Dict[str, Any]:
    """One partition of a group: ``lag`` = end - max(committed, start), the records it can
    still read; ``skipped`` = max(0, start - committed), the records retention deleted before
    the group read them (it will never see them); ``committed_beyond_end``: the committed
    position is past the partition's end (the partition lost records, e.g. restored from an
    older copy: the group would wait there for offsets that were already assigned once)."""
    row: Dict[str, Any] = {"partition": p, "committed": committed, "start": start,
                           "end_offset": end, "lag": None, "skipped": None}
    if start is not None and end is not None:
        row["lag"] = max(0, end - max(committed, start))
        row["skipped"] = max(0, start - committed)
        if committed > end:
            row["committed_beyond_end"] = True
    return row


def _lag_rows(offsets: Dict[int, int], bounds: Bounds,
              partition: Optional[int]) -> List[Dict[str, Any]]:
    rows = []
    for p in sorted(offsets):
        if partition is not None and p != partition:
            continue
        start, end = bounds.get(p, (None, None))
        rows.append(lag_row(p, offsets[p], start, end))
    return rows
