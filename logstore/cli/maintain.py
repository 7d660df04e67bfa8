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
    topic_cleanup_policy,
)
from ..errors import ConfigError, MissingKeyError, NotALogError
from ..storage import meta
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
def compacts(policy: str) -> bool:
    """Whether a cleanup policy includes compaction."""
    return "compact" in [p.strip() for p in policy.split(",")]


def refusal(what: str, policy: str, dry_run_cmd: str) -> ConfigError:
    """The usage error (exit 2) for compacting a log or topic whose policy does not say so."""
    return ConfigError(
        f"{what} has cleanup_policy={policy!r} (as stored): compaction keeps only the latest "
        f"record of each key and deletes the others, so it runs only where the policy includes "
        f"compact. `{dry_run_cmd} --dry-run` shows what a pass would remove; --force compacts "
        f"anyway")


def compact_line(label: str, r: Dict[str, Any]) -> str:
    if r.get("dry_run"):
        return (f"{label}: would remove {r['records_removed']} of {r['records_before']} records "
                f"({r['tombstones_dropped']} tombstones, {r['payload_bytes_removed']} key and "
                f"value bytes) from {r['segments_cleaned']} sealed segment"
                f"{'s' if r['segments_cleaned'] != 1 else ''} of {r['bytes_before']} bytes; "
                f"nothing changed")
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
@click.option("--dry-run", is_flag=True,
              help="Print, per log, what a pass would remove; change nothing (takes no lock).")
@click.option("--force", is_flag=True,
              help="Also compact logs and topics whose stored cleanup_policy does not include "
                   "compact.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@option_flag
@store_options()
@quiet_option
@operator
def compact(path: str, now_ms: Optional[int], dry_run: bool, force: bool, as_json: bool,
            options: tuple, topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Run one compaction pass over PATH now and print what it did.

    Keeps the latest record of every key in the sealed segments (see README "Retention and
    compaction"). Only logs and topics whose stored cleanup_policy includes compact are
    compacted: a plain log (or a topic named with --topic) with another policy is refused
    (exit 2); --force compacts it anyway; --dry-run prints what a pass would remove and
    changes nothing. Opens the log (or store) for writing: exit 3 if a writer has it open
    (not with --dry-run). -o delete_retention_ms=N and -o compaction_buffer_bytes=N
    apply to this pass only (the stored settings are unchanged); other -o NAME=VALUE are
    Log.open options.

    \b
    A store root: every topic partition whose topic's stored cleanup_policy includes compact
    (the others are listed as skipped), or --topic NAME [--partition P], and (without
    --topic) the committed-offsets log. A work queue's topic is never compacted (that would
    drop messages not yet acked): skipped, or a usage error when named with --topic. A topic
    holding keyless records cannot be compacted: skipped with the reason, or a usage error
    (exit 2) when named with --topic or given as PATH.
    """
    opts = parse_options(options)
    opts.setdefault("retention_check_interval_s", 0)
    # This pass's tunables, not settings to store (a log keeps its stored ones).
    tunables = {k: opts.pop(k) for k in ("delete_retention_ms", "compaction_buffer_bytes")
                if k in opts}
    scope = cleanup_scope(path, topic, partition, "compact")
    out = Out()
    if scope is None:
        policy = meta.stored_cleanup_policy(meta.stored_settings(path))
        if not (compacts(policy) or force or dry_run):
            raise refusal(f"log {path}", policy, f"logstore compact {path}")
        with Log.open(path, readonly=dry_run, **opts) as log:
            report = log.compact(now_ms, dry_run=dry_run, force=True, tunables=tunables)
        if as_json:
            out.line(dumps({"path": path, "dry_run": dry_run,
                            "logs": [{"label": path, "report": report}]}))
        else:
            out.line("compact " + compact_line(path, report))
        out.close()
        return
    root, topic, partition = scope
    store = (Store.open(root, readonly=True, dedup_window_s=0) if dry_run
             else open_store(root, opts))
    try:
        docs = _compact_store(store, root, topic, partition, now_ms, dry_run, force, tunables)
    finally:
        store.close()
    if as_json:
        out.line(dumps({"path": path, "dry_run": dry_run, "logs": docs}))
    else:
        out.line(f"compact {'--dry-run ' if dry_run else ''}{path}:")
        for d in docs:
            if "skipped" in d:
                out.line(f"  {d['label']}: skipped: {d['skipped']}")
            else:
                out.line("  " + compact_line(d["label"], d["report"]))
    out.close()


def _compact_store(store: Store, root: str, topic: Optional[str], partition: Optional[int],
                   now_ms: Optional[int], dry_run: bool, force: bool,
                   tunables: Dict[str, int]) -> List[Dict[str, Any]]:
    """Compact (or count, ``dry_run``) the store's topics in scope whose stored policy says so
    (all with ``force``), and, for the whole store, its offsets log."""
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
        logs = store.topic(name).partitions
        policy = topic_cleanup_policy(root, name, len(logs))
        if not (compacts(policy) or force or (dry_run and explicit)):
            if explicit:
                raise refusal(f"topic {name!r}", policy,
                              f"logstore compact {root} --topic {name}")
            docs += [{"label": f"{name}/{p}", "topic": name, "partition": p,
                      "cleanup_policy": policy, "skipped": f"cleanup_policy={policy!r} does not "
                      f"include compact (--force compacts it anyway)"}
                     for p in range(len(logs)) if partition is None or p == partition]
            continue
        for p, log in enumerate(logs):
            if partition is not None and p != partition:
                continue
            label = f"{name}/{p}"
            try:
                docs.append({"label": label, "topic": name, "partition": p,
                             "report": log.compact(now_ms, dry_run=dry_run, force=True,
                                                   tunables=tunables)})
            except MissingKeyError as e:
                if explicit:
                    raise
                docs.append({"label": label, "topic": name, "partition": p,
                             "skipped": str(e)})
    if not explicit:
        docs.append({"label": "internal/offsets", "internal": True,
                     "report": store.offsets.log.compact(now_ms, dry_run=dry_run,
                                                         tunables=tunables)})
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
