"""Maintenance passes run on demand: ``compact`` and ``retention``.

Both open the log (or the store) for writing, so they fail with exit 3 while a writer has it
open; on a store they honour its work queues and groups (a queue's topic is never compacted;
retention keeps every message not yet done).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import click

from ..diagnostics.targets import (
    partition_of_store, require_log_dir, resolve_targets, store_path, store_queues,
)
from ..errors import MissingKeyError, NotALogError
from ..storage.log import Log
from ..views.store import Store
from .common import (
    open_store, operator, option_flag, parse_options, path_arg, quiet_option, store_options,
)
from .output import Out, dumps

Scope = Optional[Tuple[str, Optional[str], Optional[int]]]  # (store root, topic, partition)


def cleanup_scope(path: str, topic: Optional[str], partition: Optional[int], what: str) -> Scope:
    """None for a plain log directory; else (store root, topic, partition) to work on.

    A topic directory or a topic partition directory of a store is that topic (partition) of
    the store: the store's lock is taken and its queues and groups are honoured.
    """
    if partition is not None and topic is None:
        raise click.BadParameter("--partition needs --topic", param_hint="--partition")
    found = store_path(path)
    if found is not None:
        root, tdir = found
        if tdir is not None:
            if topic is not None and topic != tdir:
                raise NotALogError(f"{path} is the directory of topic {tdir!r}, not {topic!r}")
            topic = tdir
        resolve_targets(root, topic, partition)  # unknown topic/partition: usage error
        return root, topic, partition
    resolve_targets(path, topic, partition)  # --topic with a plain log: usage error
    require_log_dir(path, what)
    owner = partition_of_store(path)
    if owner is not None:
        return owner
    return None


# ------------------------------------------------------------------------------------ compact
def compact_line(label: str, r: Dict[str, Any]) -> str:
    if not r.get("passes"):
        return (f"{label}: nothing to compact (no sealed segment; compaction works on sealed "
                f"segments only)")
    return (f"{label}: {r['segments_cleaned']} sealed segment"
            f"{'s' if r['segments_cleaned'] != 1 else ''} in {r['passes']} pass"
            f"{'es' if r['passes'] != 1 else ''}, records {r['records_before']} -> "
            f"{r['records_after']}, bytes {r['bytes_before']} -> {r['bytes_after']}, "
            f"{r['tombstones_dropped']} tombstones dropped, {r['seconds']:.2f} s")


@click.command()
@path_arg
@click.option("--now-ms", type=click.IntRange(min=0), default=None,
              help="The time compaction takes as now (tombstones older than "
                   "delete_retention_ms before it are dropped); default: the clock.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@option_flag
@store_options()
@quiet_option
@operator
def compact(path: str, now_ms: Optional[int], as_json: bool, options: tuple,
            topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Run one compaction pass over PATH now and print what it did.

    Keeps the latest record of every key in the sealed segments (see README "Retention and
    compaction"). Opens the log (or store) for writing: exit 3 if a writer has it open.
    Options default to cleanup_policy=compact; -o NAME=VALUE passes Log.open options (e.g.
    -o delete_retention_ms=0 -o compaction_buffer_bytes=1048576).

    \b
    A store root: every topic partition, or --topic NAME [--partition P], and (without
    --topic) the committed-offsets log. A work queue's topic is never compacted (that would
    drop messages not yet acked): skipped, or a usage error when named with --topic. A topic
    holding keyless records cannot be compacted: skipped with the reason, or a usage error
    (exit 2) when named with --topic or given as PATH.
    """
    opts = parse_options(options)
    opts.setdefault("cleanup_policy", "compact")
    opts.setdefault("retention_check_interval_s", 0)
    scope = cleanup_scope(path, topic, partition, "compact")
    out = Out()
    if scope is None:
        with Log.open(path, **opts) as log:
            report = log.compact(now_ms)
        if as_json:
            out.line(dumps({"path": path, "logs": [{"label": path, "report": report}]}))
        else:
            out.line("compact " + compact_line(path, report))
        out.close()
        return
    root, topic, partition = scope
    store = open_store(root, opts)
    try:
        docs = _compact_store(store, root, topic, partition, now_ms)
    finally:
        store.close()
    if as_json:
        out.line(dumps({"path": path, "logs": docs}))
    else:
        out.line(f"compact {path}:")
        for d in docs:
            if "skipped" in d:
                out.line(f"  {d['label']}: skipped: {d['skipped']}")
            else:
                out.line("  " + compact_line(d["label"], d["report"]))
    out.close()


def _compact_store(store: Store, root: str, topic: Optional[str], partition: Optional[int],
                   now_ms: Optional[int]) -> List[Dict[str, Any]]:
    """Compact the store's topics in scope (and, for the whole store, its offsets log)."""
    explicit = topic is not None
    docs: List[Dict[str, Any]] = []
    queues = set(store_queues(root))
    names = [topic] if topic is not None else store.topics()
    for name in names:
        if name in queues:
            if explicit:
                raise click.BadParameter(
                    f"topic {name!r} is a work queue's topic: compacting it would drop "
                    f"messages not yet acked", param_hint="--topic")
            docs.append({"label": name, "topic": name, "skipped":
                         "a work queue's topic (compaction would drop unacked messages)"})
            continue
        for p, log in enumerate(store.topic(name).partitions):
            if partition is not None and p != partition:
                continue
            label = f"{name}/{p}"
            try:
                docs.append({"label": label, "topic": name, "partition": p,
                             "report": log.compact(now_ms)})
            except MissingKeyError as e:
                if explicit:
                    raise
                docs.append({"label": label, "topic": name, "partition": p,
                             "skipped": str(e)})
    if not explicit:
        docs.append({"label": "internal/offsets", "internal": True,
                     "report": store.offsets.log.compact(now_ms)})
    return docs


# ------------------------------------------------------------------------------------ retention
def retention_line(label: str, before: int, r: Dict[str, Any]) -> str:
    if not r["segments_removed"]:
        return f"{label}: nothing to delete (start offset {r['start_offset']})"
    n = r["segments_removed"]
    return (f"{label}: deleted {n} segment{'s' if n != 1 else ''} ({r['bytes_freed']} bytes), "
            f"start offset {before} -> {r['start_offset']}")


@click.command()
@path_arg
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@option_flag
@store_options(partition=False)
@quiet_option
@operator
def retention(path: str, as_json: bool, options: tuple, topic: Optional[str],
              quiet: bool) -> None:
    """Run one retention pass over PATH now and print what it deleted.

    Deletes whole sealed segments, oldest first, never the active one, by the limits given as
    options: -o retention_ms=N (older than N ms) and/or -o retention_bytes=N (keep at most N
    bytes per log). Opens the log (or store) for writing: exit 3 if a writer has it open.

    \b
    A store root (or --topic NAME): one pass of Store.enforce_retention over every topic (or
    topic NAME): the limits above; for a topic created with retention="interest", what every
    group and subscription has committed past; for a work queue's topic, only segments
    whose messages are all done (never an unacked one, whatever the limits: its queue is
    opened for that). Queue event logs are trimmed below their checkpoint and the
    committed-offsets log is compacted. A partition directory of a store is refused: run it
    on the store root with --topic.
    """
    opts = parse_options(options)
    opts.setdefault("retention_check_interval_s", 0)
    # Limits given here are for this pass only (the logs' stored ones are not changed: use
    # `logstore config` for that).
    pass_limits = {k: opts.pop(k) for k in ("retention_ms", "retention_bytes") if k in opts}
    limits = any(v is not None for v in pass_limits.values())
    if store_path(path) is None:
        owner = partition_of_store(path)
        if owner is not None:
            raise NotALogError(
                f"{path} is partition {owner[2]} of topic {owner[1]!r} of the store "
                f"{owner[0]}: run `logstore retention {owner[0]} --topic {owner[1]}` so that "
                f"the store's queues and groups are honoured")
    scope = cleanup_scope(path, topic, None, "retention")
    out = Out()
    if scope is None:
        _retention_log(out, path, opts, pass_limits, as_json, not limits and not quiet)
    else:
        root, topic, _ = scope
        store = open_store(root, opts)
        try:
            docs = _retention_store(store, root, topic, pass_limits)
        finally:
            store.close()
        if as_json:
            out.line(dumps({"path": path, "logs": docs}))
        else:
            _print_store_retention(out, path, docs, not limits and not quiet)
    out.close()


def _retention_log(out: Out, path: str, opts: Dict[str, Any], limits: Dict[str, Any],
                   as_json: bool, note: bool) -> None:
    """One retention pass over a plain log (``note``: say that no limit was given)."""
    with Log.open(path, **opts) as log:
        before = log.start_offset
        report = log.enforce_retention(limits=limits)
        note = note and log.config.retention_ms is None and log.config.retention_bytes is None
    if as_json:
        out.line(dumps({"path": path, "logs": [{"label": path, "start_offset_before": before,
                                                "report": report}]}))
        return
    out.line("retention " + retention_line(path, before, report))
    if note:
        out.line("note: no retention_ms or retention_bytes given (-o retention_ms=N): "
                 "a plain log has no other limit")


def _retention_store(store: Store, root: str, topic: Optional[str],
                     limits: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One pass of Store.enforce_retention; a report per partition and internal log."""
    names = [topic] if topic is not None else store.topics()
    topics = [store.topic(n) for n in names]
    for q in store_queues(root):
        if q in names:
            # Open the queue (without creating a dead-letter topic) so that its topic keeps
            # every message not yet done; checkpoint so that its event log can be trimmed.
            store.queue(q, dead_letter="").checkpoint()
    before = {f"{t.name}/{p}": log.start_offset for t in topics
              for p, log in enumerate(t.partitions)}
    report = store.enforce_retention(limits, topics=names)
    docs: List[Dict[str, Any]] = []
    for t in topics:
        for p, log in enumerate(t.partitions):
            label = f"{t.name}/{p}"
            r = report.get(label) or {"segments_removed": 0, "bytes_freed": 0,
                                      "start_offset": log.start_offset}
            docs.append({"label": label, "topic": t.name, "partition": p,
                         "start_offset_before": before[label], "report": r})
    for label, r in sorted(report.items()):
        if label.startswith("queue-events/"):
            docs.append({"label": "internal/queues/" + label.split("/", 1)[1],
                         "internal": True, "report": r})
        elif label == "offsets":
            docs.append({"label": "internal/offsets", "internal": True, "compaction": r})
    return docs


def _print_store_retention(out: Out, path: str, docs: List[Dict[str, Any]], note: bool) -> None:
    out.line(f"retention {path}:")
    for d in docs:
        if "compaction" in d:
            out.line("  " + compact_line(d["label"] + " compacted", d["compaction"]))
        elif "start_offset_before" in d:
            out.line("  " + retention_line(d["label"], d["start_offset_before"], d["report"]))
        else:
            r = d["report"]
            out.line(f"  {d['label']}: trimmed {r['segments_removed']} event segment"
                     f"{'s' if r['segments_removed'] != 1 else ''} below its checkpoint")
    if note:
        out.line("note: no retention_ms or retention_bytes given (-o retention_ms=N): only "
                 "what is already consumed (interest topics, acked queue messages) is due")
