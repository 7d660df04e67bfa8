"""Administration of a store: consumer groups (list, describe, reset offsets, delete), topics
(delete), work queues (purge, the messages not yet done): what ``kafka-consumer-groups``,
``kafka-topics`` and a queue console do, as functions over a :class:`~logstore.Store`. The
``logstore groups``, ``topics`` and ``queue`` commands call them.

Groups: a group (or a subscription, group id ``__sub__<name>``) is *active* while it has a live
member in any process (a member file whose ``flock`` is held, see :mod:`.leases`). Its offsets
are reset, and it is deleted, only while it is inactive (Kafka's rule): with every partition's
lease taken, so no member can start reading meanwhile. A reset appends one commit to each lease
log (durable under the store's fsync policy): the next member resumes there.

Deleting a topic removes, in this order, its groups and subscriptions (``internal/groups/<topic>``),
its entries in the offsets log, its queue's event log, and its directory; each directory is
first renamed into ``internal/.trash`` (one atomic, durable step) and then removed. A crash in
between leaves the topic partly deleted (its groups or queue state gone, the topic still there):
delete it again. The topic's directory goes last: while it exists, nothing of it is missing
that a reader needs to read it.

Purging a queue is one checkpoint record in its event log: every message published so far is
done (the low watermark of each partition moves to the partition's end). It is atomic (before
the record is durable nothing is purged, after it everything is), acks nothing one by one, and
lets retention delete the purged messages like acked ones.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .. import process
from ..errors import (
    ConfigError, LogLockedError, OffsetOutOfRangeError, UnknownTopicError,
)
from ..format.names import (
    GROUPS_DIR, INTERNAL_DIR, MEMBERS_DIR, QUEUE_EVENTS_TOPIC, QUEUE_GROUP, QUEUES_DIR,
    queue_events_dir, topic_dir,
)
from ..storage.log import Log
from ..util import now_ms
from . import leases
from .consumer import SUBSCRIPTION_PREFIX
from .metrics import folded_state, group_figures, queue_names
from .workqueue import NOT_BEFORE_HEADER

TRASH_DIR = os.path.join(INTERNAL_DIR, ".trash")  # directories being deleted
RESET_MODES = ("earliest", "latest", "time", "offset", "shift")


class GroupInfo(NamedTuple):
    """A consumer group (or subscription) of one topic."""

    group: str  # the group id (a subscription's is ``__sub__<name>``)
    topic: str
    members: List[str]  # live members' ids (any process)
    commits: Dict[int, int]  # partition -> committed next offset

    @property
    def kind(self) -> str:
        return "subscription" if self.group.startswith(SUBSCRIPTION_PREFIX) else "group"

    @property
    def name(self) -> str:
        """The group id, or the subscription's name."""
        return self.group[len(SUBSCRIPTION_PREFIX):] if self.kind == "subscription" \
            else self.group


def _internal(group: str) -> bool:
    return group.startswith("__") and not group.startswith(SUBSCRIPTION_PREFIX)


def _members(store: Any, group: str, topic: str) -> List[str]:
    return leases.live_members(os.path.join(leases.group_path(store.root, topic, group),
                                            MEMBERS_DIR))


def list_groups(store: Any, topic: Optional[str] = None) -> List[GroupInfo]:
    """Every consumer group and subscription (of ``topic``), with its live members and commits
    as stored now (internal cursors of queues, redrive and mirrors are left out)."""
    out = []
    for group, by_topic in sorted(store.groups().items()):
        if _internal(group):
            continue
        for t, commits in sorted(by_topic.items()):
            if topic is None or t == topic:
                out.append(GroupInfo(group, t, _members(store, group, t), dict(commits)))
    seen = {(g.group, g.topic) for g in out}
    for t, group, _path in leases.list_groups(store.root):  # groups with no commit yet
        if (group, t) not in seen and not _internal(group) and (topic is None or t == topic):
            out.append(GroupInfo(group, t, _members(store, group, t), {}))
    return sorted(out, key=lambda g: (g.group, g.topic))


def describe_group(store: Any, group: str, topic: str) -> Dict[str, Any]:
    """A group on a topic: ``members`` (live ids), per partition ``committed`` (None: no commit
    yet), ``start_offset``, ``end_offset``, ``lag`` (records after the commit the group can still
    read) and ``lag_s`` (age of the oldest of them), and the totals."""
    t = store.get_topic(topic)
    commits = store.group_commits(group, topic)
    if not commits and not os.path.isdir(leases.group_path(store.root, topic, group)):
        raise UnknownTopicError(f"no group {group!r} on topic {topic!r}")
    now = now_ms()
    figures = group_figures(t, commits, now)["partitions"]
    parts: Dict[int, Dict[str, Any]] = {}
    for p, log in enumerate(t.partitions):
        start, end = log.start_offset, log.end_offset
        fig = figures.get(p)
        parts[p] = {"committed": commits.get(p), "start_offset": start, "end_offset": end,
                    "lag": None if fig is None else fig["lag"],
                    "lag_s": None if fig is None else fig["lag_s"]}
    lags = [x["lag"] for x in parts.values() if x["lag"] is not None]
    ages = [x["lag_s"] for x in parts.values() if x["lag_s"] is not None]
    return {"group": group, "topic": topic, "members": _members(store, group, topic),
            "partitions": parts, "lag": sum(lags), "lag_s": max(ages, default=0.0)}


# ---------------------------------------------------------------------------------- offsets
def plan_reset(store: Any, group: str, topic: str, mode: str, value: Optional[int] = None,
               partitions: Optional[Sequence[int]] = None) -> Dict[int, Tuple[Optional[int], int]]:
    """``{partition: (committed now or None, new committed offset)}`` of a reset of ``group`` on
    ``topic`` (every partition, or ``partitions``), changing nothing. ``mode``: ``"earliest"``,
    ``"latest"``, ``"time"`` (``value``: ms; the first offset at or after it), ``"offset"``
    (``value``) or ``"shift"`` (``value`` added to the commit, or to the start offset where
    there is none). The new offset is kept within ``[start_offset, end_offset]`` (Kafka's
    rule)."""
    if mode not in RESET_MODES:
        raise ConfigError(f"reset mode must be one of {', '.join(RESET_MODES)} (got {mode!r})")
    if mode in ("time", "offset", "shift") and value is None:
        raise ConfigError(f"reset mode {mode!r} needs a value")
    t = store.get_topic(topic)
    chosen = range(t.partition_count) if partitions is None else list(partitions)
    for p in chosen:
        if not 0 <= p < t.partition_count:
            raise UnknownTopicError(f"topic {topic!r} has no partition {p}")
    commits = store.group_commits(group, topic)
    plan: Dict[int, Tuple[Optional[int], int]] = {}
    for p in chosen:
        log = t.partitions[p]
        start, end = log.start_offset, log.end_offset
        cur = commits.get(p)
        if mode == "earliest":
            new = start
        elif mode == "latest":
            new = end
        elif mode == "time":
            new = log.offset_for_time(int(value))  # type: ignore[arg-type]
        elif mode == "offset":
            new = int(value)  # type: ignore[arg-type]
        else:
            new = (start if cur is None else cur) + int(value)  # type: ignore[arg-type]
        plan[p] = (cur, min(max(new, start), end))
    return plan


def _take_leases(store: Any, path: str, parts: Sequence[int], what: str) -> List[Log]:
    """Every lease of ``parts`` of the group directory ``path`` (LogLockedError if the group has
    a live member or a partition's lease is held)."""
    live = leases.live_members(os.path.join(path, MEMBERS_DIR))
    if live:
        raise LogLockedError(f"{what} is active ({len(live)} live member"
                             f"{'s' if len(live) != 1 else ''}): its offsets are changed only "
                             f"while no member runs (stop them first)")
    held: List[Log] = []
    try:
        for p in parts:
            log = leases.try_lease(store.open_lease_log, os.path.join(path, str(p)))
            if log is None:
                raise LogLockedError(f"{what}: partition {p} is leased by another process")
            held.append(log)
    except BaseException:
        for log in held:
            log.close()
        raise
    return held


def reset_offsets(store: Any, group: str, topic: str,
                  plan: Dict[int, Tuple[Optional[int], int]]) -> None:
    """Commit the new offsets of :func:`plan_reset`'s ``plan`` (a group that does not exist yet
    is created with them). LogLockedError (nothing changed) while the group has a live member.
    Each partition's commit is durable under the store's fsync policy when this returns (one
    lease log each: not atomic together)."""
    t = store.get_topic(topic)
    for p, (_, new) in plan.items():
        log = t.partitions[p]
        if not log.start_offset <= new <= log.end_offset:
            raise OffsetOutOfRangeError(f"offset {new} is outside [{log.start_offset}, "
                                        f"{log.end_offset}] of {topic!r} partition {p}")
    path = leases.ensure_group_dir(store.fs, store.root, topic, group)
    held = _take_leases(store, path, sorted(plan), f"group {group!r} on topic {topic!r}")
    try:
        for log, p in zip(held, sorted(plan)):
            leases.mark_started(store.fs, path, p)
            leases.append_commit(log, plan[p][1])
            log.flush()
    finally:
        for log in held:
            log.close()


def delete_group(store: Any, group: str, topic: str) -> None:
    """Delete ``group``'s (or subscription's) commits and directory on ``topic``.
    LogLockedError (nothing changed) while it has a live member; UnknownTopicError if there is
    no such group."""
    path = leases.group_path(store.root, topic, group)
    old = store.offsets.group_offsets(group, topic)  # (stores before version 2)
    if not os.path.isdir(path) and not old:
        raise UnknownTopicError(f"no group {group!r} on topic {topic!r}")
    if old:
        store.check_writable()  # (the offsets log is the writer's)
    if os.path.isdir(path):
        held = _take_leases(store, path, leases.lease_partitions(path),
                            f"group {group!r} on topic {topic!r}")
        try:
            trash = leases.retire_group_dir(store.fs, path)  # still holding every lease
        finally:
            for log in held:
                try:
                    log.close()
                except OSError:
                    pass  # its files were just renamed away with the directory
        leases.remove_trash_dir(trash)
    if old:
        store.offsets.delete_group(group, topic)


# ---------------------------------------------------------------------------------- topics
def _open_here(paths: Sequence[str]) -> List[str]:
    """Logs open for writing in this process under any of ``paths`` (read-only openers are
    readers like those of other processes)."""
    out = []
    for obj in process.registered():
        where = getattr(obj, "path", None)
        if isinstance(obj, Log) and not obj.closed and not obj.readonly and any(
                where == p or where.startswith(p + os.sep) for p in paths):
            out.append(where)
    return out


def _to_trash(store: Any, path: str) -> Optional[str]:
    """Rename ``path`` into the store's trash (atomic, durable); its new path, or None if it
    did not exist."""
    if not os.path.exists(path):
        return None
    trash = os.path.join(store.root, TRASH_DIR)
    store.fs.makedirs(trash)
    dst = os.path.join(trash, uuid.uuid4().hex)
    store.fs.replace(path, dst)
    store.fs.fsync_dir(os.path.dirname(path))
    return dst


def empty_trash(store: Any) -> None:
    """Remove what deletions left in the trash (finished, or interrupted by a crash)."""
    trash = os.path.join(store.root, TRASH_DIR)
    if os.path.isdir(trash):
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)


def delete_topic(store: Any, name: str, force: bool = False) -> Dict[str, Any]:
    """Delete topic ``name`` with its groups, subscriptions, queue state and offsets entries
    (see the module docstring). The store must be open for writing and must not have the
    topic open (open a fresh one: ``logstore topics --delete`` does). Refused
    (LogLockedError, nothing changed) while a group or subscription of it has a live member,
    unless ``force``. Returns what was removed."""
    store.check_writable()
    if name not in store.topics():
        raise UnknownTopicError(f"no topic {name!r} in {store.root}")
    tdir = topic_dir(store.root, name)
    qdir = queue_events_dir(store.root, name)
    gdir = os.path.join(store.root, GROUPS_DIR, name)
    busy = _open_here([tdir, qdir])  # (lease logs: the live-member check below)
    if busy:
        raise LogLockedError(f"topic {name!r} is open in this process ({busy[0]}): delete it "
                             f"from a store that has not opened it")
    groups = list_groups(store, name)
    live = [g for g in groups if g.members]
    if live and not force:
        names = ", ".join(f"{g.kind} {g.name!r} ({len(g.members)} live)" for g in live)
        raise LogLockedError(f"topic {name!r} has active consumers: {names}; stop them, or "
                             f"force the deletion")
    empty_trash(store)
    removed: Dict[str, Any] = {"topic": name, "groups": [g.group for g in groups],
                               "queue": os.path.isdir(qdir), "offsets_entries": 0}
    trashed = [_to_trash(store, gdir)]
    # Its groups' commits from stores before version 2, cursors into it (redrive, mirrors)
    # and its queue's checkpoint hint; a queue's redrive cursor belongs to its dead-letter
    # topic and stays.
    stale = [(g, t, p) for (g, t, p), _o in store.offsets.items()
             if t == name or (g == QUEUE_GROUP + name and t == QUEUE_EVENTS_TOPIC)]
    by_group: Dict[Tuple[str, str], Dict[int, Optional[int]]] = {}
    for g, t, p in stale:
        by_group.setdefault((g, t), {})[p] = None
    for (g, t), parts in sorted(by_group.items()):
        store.offsets.commit(g, t, parts)
    removed["offsets_entries"] = len(stale)
    trashed.append(_to_trash(store, qdir))
    trashed.append(_to_trash(store, tdir))  # the commit point: the topic is gone
    for path in trashed:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------- queues
def _queue_topic(store: Any, name: str) -> Any:
    if name not in queue_names(store.root):
        raise UnknownTopicError(f"no work queue {name!r} in {store.root} (a queue has an event "
                                f"log in {QUEUES_DIR})")
    return store.get_topic(name)


def purge_queue(store: Any, name: str) -> int:
    """Mark every message of queue ``name`` published so far done, in one checkpoint (see the
    module docstring); returns how many were not done. Needs the store open for writing."""
    store.check_writable()
    topic = _queue_topic(store, name)
    state = store.queue_state(name)
    purged = 0
    with state.lock:
        for part, log in zip(state.parts, topic.partitions):
            end = log.end_offset
            if part.low >= end:
                continue
            purged += end - part.low - sum(1 for o in part.done if part.low <= o < end)
            part.low = end
            part.done = {o for o in part.done if o > end}
            part.counts = {o: c for o, c in part.counts.items() if o >= end}
            part.not_before = {o: t for o, t in part.not_before.items() if o >= end}
        off = state.checkpoint()
    state.events.flush()  # durable now, whatever the fsync policy
    state.commit_hint(off)
    return purged


def pending_messages(store: Any, name: str, limit: int = 10) -> List[Dict[str, Any]]:
    """The first ``limit`` messages of queue ``name`` not yet done (oldest first, by
    timestamp): ``partition``, ``offset``, ``id``, ``state`` (``ready``, ``in_flight`` or
    ``delayed``), ``deliveries``, ``not_before_ms`` and the ``record``. Read-only from a
    read-only store (the state folded from the event log: there, a message delivered and not
    acked counts as in flight even when its visibility timeout has passed)."""
    topic = _queue_topic(store, name)
    if store.readonly:
        parts = folded_state(store, name, topic)
    else:
        state = store.queue_state(name)
        with state.lock:
            parts = [(p.low, set(p.done), dict(p.counts), dict(p.not_before))
                     for p in state.parts]
    now = now_ms()
    found: List[Dict[str, Any]] = []
    for p, part in enumerate(parts):
        low, done, counts, not_before = (part if isinstance(part, tuple) else
                                         (part.low, part.done, part.counts, part.not_before))
        log = topic.partitions[p]
        pos = max(low, log.start_offset)
        taken = 0
        while taken < limit and pos < log.end_offset:
            recs = log.read(pos, max_records=max(100, limit))
            if not recs:
                break
            for rec in recs:
                pos = rec.offset + 1
                if rec.offset in done:
                    continue
                nb = not_before.get(rec.offset)
                if nb is None and NOT_BEFORE_HEADER in rec.headers:
                    try:
                        nb = int(rec.headers[NOT_BEFORE_HEADER])
                    except ValueError:
                        nb = None
                count = counts.get(rec.offset, 0)
                if nb is not None and nb > now:
                    st = "delayed"
                elif count and rec.offset not in not_before:
                    st = "in_flight"
                else:
                    st = "ready"
                found.append({"partition": p, "offset": rec.offset,
                              "id": f"{p}:{rec.offset}", "state": st, "deliveries": count,
                              "not_before_ms": nb, "record": rec})
                taken += 1
                if taken >= limit:
                    break
    found.sort(key=lambda m: (m["record"].timestamp_ms, m["partition"], m["offset"]))
    return found[:limit]
