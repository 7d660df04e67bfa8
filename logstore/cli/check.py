"""Commands that check and measure: ``verify`` (every byte, every index, the marker, leftover
files) and ``stats`` (figures from the batch headers; a store's groups, lag and queues).

Both are read-only: the work is :mod:`logstore.diagnostics`; this module prints it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import click

from ..diagnostics.report import LogReport
from ..diagnostics.store_stats import store_stats
from ..diagnostics.targets import Target, resolve_targets, store_path
from .common import (
    EXIT_CORRUPT, CommandExit, error, inspect_with_progress, operator, path_arg, quiet_option,
    store_options,
)
from .metrics import run_checks
from .output import Out, Progress, age, dumps, iso, num, seg_label, table, total_bytes


# ------------------------------------------------------------------------------------ verify
@click.command()
@path_arg
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@store_options()
@quiet_option
@operator
def verify(path: str, as_json: bool, topic: Optional[str], partition: Optional[int],
           quiet: bool) -> None:
    """Check PATH (a log directory or a .log segment file) without changing anything.

    A store root: every topic partition and the store's internal logs (committed offsets,
    work-queue events), or only --topic NAME [--partition P].

    Checks every batch (header, bounds, CRC32C, structure), offset continuity within and
    across segments, the offset and time indexes against the log, the clean-shutdown marker,
    and leftover *.tmp / *.cleaned / *.swap files (reported as warnings). Never takes the
    writer's lock and opens files read-only, so it can run while a writer appends.

    Each problem names the segment file and byte position and says whether `logstore recover
    --apply` repairs it (a torn tail of the active segment, indexes, a wrong marker) or whether
    data is damaged (sealed segments, damage followed by valid batches, missing offsets).

    Exit 0: no problem (warnings allowed); 1: problems found; 2: usage error.
    """
    targets = resolve_targets(path, topic, partition, internal=True)
    reports = [inspect_with_progress(t, True, quiet) for t in targets]
    out = Out()
    if as_json:
        out.line(dumps({"path": path, "ok": all(r.ok for r in reports),
                        "logs": [r.as_dict() for r in reports]}))
    elif len(targets) == 1 and not targets[0].expanded:
        print_verify(out, reports[0], quiet)
    else:
        for r in reports:
            print_verify(out, r, quiet, summary=False)
        _print_verify_summary(out, path, reports, quiet)
    out.close()
    if not all(r.ok for r in reports):
        raise CommandExit(EXIT_CORRUPT)


def print_problems(out: Out, r: LogReport, indent: str = "", repair: bool = True) -> None:
    """``PROBLEM [kind] file at byte N: reason`` (and ``-> repair``) for each problem."""
    for p in r.problems:
        at = f" at byte {p.position}" if p.position is not None else ""
        out.line(f"{indent}PROBLEM [{p.kind}] {seg_label(r, p.file)}{at}: {p.reason}")
        if repair:
            out.line(f"{indent}  -> {p.repair}")


def print_verify(out: Out, r: LogReport, quiet: bool, summary: bool = True) -> None:
    t = r.totals()
    if not quiet and not summary and r.problems and not r.segments:
        out.line(f"{r.label}: {'unreadable store metadata' if r.broken else 'missing'}")
    elif not quiet:
        rng = (f"offsets [{t['start_offset']}, {t['end_offset']})"
               if t["start_offset"] is not None else "no offsets")
        out.line(f"{r.label}: {t['segments']} segment{'s' if t['segments'] != 1 else ''}, "
                 f"{rng}, {t['records']} records in {t['batches']} batches, {t['bytes']} bytes")
        for s in r.segments:
            rng = (f"{s.first_offset}..{s.next_offset - 1}" if s.next_offset is not None
                   else "empty")
            kind = "active" if s.active else "sealed"
            extra = (f" (+{s.unwritten_bytes} preallocated)" if s.unwritten_bytes else "")
            out.line(f"  {s.name}  {kind}  offsets {rng}  {s.records} records  "
                     f"{s.batches} batches  {s.size} bytes{extra}  {s.status}")
    print_problems(out, r)
    if not quiet:
        for w in r.warnings:
            out.line(f"WARNING {w}")
    if not summary:
        return
    if r.ok:
        if not quiet:
            out.line("OK: no problems found")
        return
    repairable = sum(1 for p in r.problems if p.recoverable)
    damaged = len(r.problems) - repairable
    out.line(f"CORRUPT: {len(r.problems)} problem{'s' if len(r.problems) != 1 else ''} "
             f"({repairable} repairable by `logstore recover --apply`, {damaged} data damage)")


def _print_verify_summary(out: Out, path: str, reports: List[LogReport], quiet: bool) -> None:
    """The closing line of `verify` over the logs of a store."""
    n = len(reports)
    logs = f"{n} log{'s' if n != 1 else ''}"
    problems = [p for r in reports for p in r.problems]
    if not problems:
        if not quiet:
            out.line(f"OK: no problems found in {logs} of {path}")
        return
    repairable = sum(1 for p in problems if p.recoverable)
    bad = [r.label for r in reports if not r.ok]
    out.line(f"CORRUPT: {len(problems)} problem{'s' if len(problems) != 1 else ''} in "
             f"{', '.join(bad)} ({len(bad)} of {logs}; {repairable} repairable by "
             f"`logstore recover --apply`, {len(problems) - repairable} data damage)")


# ------------------------------------------------------------------------------------ stats
@click.command()
@path_arg
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--internal", "show_internal", is_flag=True,
              help="Store root: also list the internal logs and the internal groups (work-queue "
                   "checkpoints, redrive cursors).")
@click.option("--check", "checks", multiple=True, metavar="[NAME:]FIGURE>N",
              help="Store root: an alert threshold (repeatable), e.g. 'depth>1000', "
                   "'lag_s>60', 'jobs:dead_lettered>0'; prints one line per breach instead of "
                   "the stats and exits 1 if any (see `logstore metrics`).")
@store_options()
@quiet_option
@operator
def stats(path: str, as_json: bool, show_internal: bool, checks: Tuple[str, ...],
          topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Segments, offsets, sizes, record and batch counts, compression, time range of PATH.

    Reads only the 64-byte batch headers (fast; CRCs are not checked: use `logstore verify`).
    The compression ratio is raw_length / payload_length summed over the batch headers.
    Timestamps: the first record's and the largest, in UTC. Exit 1 if a header is unreadable.

    \b
    A store root (or --topic NAME [--partition P] of one):
      - per topic partition: segments, start and end offsets, records, bytes, time range;
      - consumer groups and durable subscriptions, per partition: committed offset, start
        and end offset, lag = end - max(committed, start) (records it can still read) and
        skipped = max(0, start - committed) (records retention deleted before it read them:
        it will never see them); a committed offset beyond the end is flagged;
      - work queues: messages not yet done (ready, in flight or delayed), delivered but not
        acked, delayed for a retry, dead-lettered (not yet redriven), age of the oldest;
      - with --internal: the internal logs and groups.
    Committed offsets and queue state are read read-only (beside a running writer they are
    as of its last durable write).

    With --check (a store): the figures of `logstore metrics` against each threshold
    ([NAME:]FIGURE OP NUMBER, OP one of > >= < <= == !=; NAME a topic, topic/partition,
    queue, group@topic or subscription@topic): one line per breach and exit 1, nothing and
    exit 0 when all hold.
    """
    if checks:
        run_checks(path, topic, checks, as_json)
        return
    if store_path(path) is not None:
        _store_stats_command(path, as_json, show_internal, topic, partition, quiet)
        return
    targets = resolve_targets(path, topic, partition)
    reports = [inspect_with_progress(t, False, quiet) for t in targets]
    out = Out()
    if as_json:
        out.line(dumps({"path": path, "logs": [r.as_dict() for r in reports]}))
    else:
        for r in reports:
            _print_stats(out, r)
    out.close()
    for r in reports:
        for p in r.problems:
            error(stats_problem(seg_label(r, p.file), p.position, p.reason, p.kind))
    if not all(r.ok for r in reports):
        raise CommandExit(EXIT_CORRUPT)


def stats_problem(where_: str, position: Optional[int], reason: str, kind: str) -> str:
    """The stderr line of a problem ``stats`` met (details: ``logstore verify``)."""
    at = f" at byte {position}" if position is not None else ""
    what = {"index": "bad index", "marker": "bad clean-shutdown marker"}.get(kind,
                                                                            "corrupt data")
    return f"{what} in {where_}{at}: {reason} (run `logstore verify` for details)"


def _print_stats(out: Out, r: LogReport) -> None:
    def row(name: str, d: Dict[str, Any], base: Any, status: str) -> List[str]:
        ratio = d["compression_ratio"]
        return [name, "-" if base is None else str(base),
                "-" if d.get("end") is None else str(d["end"]),
                str(d["records"]), str(d["batches"]), str(d["bytes"]), str(d["payload_bytes"]),
                str(d["raw_bytes"]), "-" if ratio is None else f"{ratio:.2f}",
                iso(d["first_timestamp"]), iso(d["max_timestamp"]), status]

    rows = [["segment", "base", "end", "records", "batches", "bytes", "payload", "raw",
             "ratio", "first timestamp", "max timestamp", "status"]]
    for s in r.segments:
        d = s.as_dict()
        d["bytes"] = s.size
        d["end"] = s.next_offset if s.next_offset is not None else s.base_offset
        rows.append(row(s.name, d, s.base_offset, s.status))
    t = r.totals()
    t["end"] = t["end_offset"]
    rows.append(row("total", t, t["start_offset"], "ok" if r.ok else "problems"))
    out.line(f"log {r.label}")
    table(out, rows, left=(0, 9, 10, 11))
    codecs = ", ".join(f"{k}: {v}" for k, v in t["codecs"].items())
    out.line(f"batches by codec: {codecs or '-'}")


def _store_stats_command(path: str, as_json: bool, show_internal: bool, topic: Optional[str],
                         partition: Optional[int], quiet: bool) -> None:
    bars: List[Progress] = []

    def progress(target: Target) -> Any:
        bar = Progress(total_bytes(target), f"stats {target.label}", quiet or as_json)
        bars.append(bar)
        return bar

    try:
        doc = store_stats(path, topic, partition, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    out = Out()
    if as_json:
        out.line(dumps(doc))
    else:
        print_store_stats(out, doc, show_internal)
    out.close()
    for p in doc["problems"]:
        error(stats_problem(f"{p['label']} ({p['file']})", p["position"], p["reason"],
                            p.get("kind", "damaged")))
    if doc["problems"]:
        raise CommandExit(EXIT_CORRUPT)


def print_store_stats(out: Any, doc: Dict[str, Any], show_internal: bool = False) -> None:
    """The text form of :func:`logstore.diagnostics.store_stats.store_stats` (``logstore
    stats STORE``). ``out`` has a ``line(text)`` method."""
    scope = ""
    if doc.get("topic") is not None:
        scope = f", topic {doc['topic']}" + (f" partition {doc['partition']}"
                                              if doc.get("partition") is not None else "")
    out.line(f"store {doc['path']} (id {doc.get('id', '?')}{scope})")
    _print_topics(out, doc["topics"])
    _print_lags(out, "consumer groups", doc["groups"], "group", "group")
    _print_lags(out, "durable subscriptions", doc["subscriptions"], "subscription",
                "subscription")
    _print_queues(out, doc["queues"])
    _print_processors(out, doc.get("processors", []))
    if show_internal:
        logs = doc["internal"]["logs"]
        if logs:
            out.line("")
            out.line("internal logs:")
            rows = [["log", "segments", "start", "end", "records", "bytes", "status"]]
            for lg in logs:
                rows.append([lg["log"], str(lg["segments"]), num(lg["start_offset"]),
                             num(lg["end_offset"]), str(lg["records"]), str(lg["bytes"]),
                             lg["status"]])
            table(out, rows, left=(0, 6), indent="  ")
        _print_lags(out, "internal groups (work-queue checkpoints and redrive cursors)",
                    doc["internal"]["groups"], "group", "group")


def _print_processors(out: Any, processors: List[Dict[str, Any]]) -> None:
    """Stream processors: per stage and input partition, lag, late records, state size."""
    if not processors:
        return
    out.line("")
    out.line("stream processors:")
    rows = [["processor/stage/partition", "position", "end", "lag", "late", "state entries",
             "state bytes", "records in", "records out"]]
    for d in processors:
        if d.get("error"):
            rows.append([d["processor"], "-", "-", "-", "-", "-", "-", "-", "damaged"])
            continue
        rows.append([d["processor"], "", "", num(d["lag"]), num(d["late"]),
                     num(d["state_entries"]), num(d["state_bytes"]), num(d["records_in"]),
                     num(d["records_out"])])
        for s in d["stages"]:
            for r in s["partitions"]:
                pos = "-" if r["position"] is None else num(r["position"])
                rows.append([f"  {s['stage']}:{s['input']}/{r['partition']}", pos,
                             num(r["end_offset"]), num(r["lag"]), num(r["late"]),
                             num(r["state_entries"]), num(r["state_bytes"]),
                             num(r["records_in"]), num(r["records_out"])])
    table(out, rows, left=(0,), indent="  ")


def _print_topics(out: Any, topics: List[Dict[str, Any]]) -> None:
    rows = [["topic/partition", "segments", "start", "end", "records", "bytes",
             "first timestamp", "max timestamp", "status"]]
    for t in topics:
        if t.get("error"):
            rows.append([t["topic"], "-", "-", "-", "-", "-", "-", "-", "damaged"])
        for r in t["partition_stats"]:
            rows.append([r["label"], str(r["segments"]), num(r["start_offset"]),
                         num(r["end_offset"]), str(r["records"]), str(r["bytes"]),
                         iso(r["first_timestamp"]), iso(r["max_timestamp"]), r["status"]])
        if len(t["partition_stats"]) > 1:
            tot = t["totals"]
            kind = " (queue)" if t["queue"] else ""
            rows.append([f"{t['topic']} total{kind}", str(tot["segments"]), "", "",
                         str(tot["records"]), str(tot["bytes"]), iso(tot["first_timestamp"]),
                         iso(tot["max_timestamp"]), tot["status"]])
    out.line("")
    if len(rows) > 1:
        table(out, rows, left=(0, 6, 7, 8))
    else:
        out.line("no topics")


def _print_lags(out: Any, title: str, entries: List[Dict[str, Any]], name_key: str,
                head: str) -> None:
    out.line("")
    if not entries:
        out.line(f"{title}: none")
        return
    out.line(f"{title}:")
    rows = [[head, "topic", "partition", "committed", "start", "end", "lag", "skipped", ""]]
    beyond = False
    for e in entries:
        for r in e["partitions"]:
            note = ""
            if r.get("committed_beyond_end"):
                note, beyond = "committed > end (!)", True
            rows.append([e[name_key], e["topic"], str(r["partition"]), str(r["committed"]),
                         num(r.get("start")), num(r["end_offset"]), num(r["lag"]),
                         num(r.get("skipped")), note])
        if len(e["partitions"]) > 1:
            rows.append([e[name_key], e["topic"], "total", "", "", "", num(e["lag"]),
                         num(e.get("skipped")), ""])
    table(out, rows, left=(0, 1, 8), indent="  ")
    out.line("  (lag = end - max(committed, start): records it can still read; skipped = "
             "max(0, start - committed): records retention deleted before it read them)")
    if beyond:
        out.line("  (!) committed > end: the partition has fewer records than the group "
                 "committed (restored from an older copy?); new records at offsets below the "
                 "committed position would not be delivered")


def _print_queues(out: Any, queues: List[Dict[str, Any]]) -> None:
    out.line("")
    if not queues:
        out.line("work queues: none")
        return
    out.line("work queues:")
    rows = [["queue", "partitions", "not done", "unacked", "retry delayed", "dead-lettered",
             "oldest not done"]]
    notes = []
    for q in queues:
        if "error" in q:
            notes.append(f"  {q['queue']}: {q['error']}")
            continue
        dead = "-" if q["dead_letter_topic"] is None else \
            f"{q['dead_lettered']} ({q['dead_letter_topic']})"
        rows.append([q["queue"], str(q["partitions"]), str(q["not_done"]), str(q["unacked"]),
                     str(q["delayed"]), dead, age(q["oldest_age_s"])])
    if len(rows) > 1:
        table(out, rows, left=(0, 5), indent="  ")
    for n in notes:
        out.line(n)
