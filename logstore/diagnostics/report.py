"""What is in a log and what is wrong with it: :func:`inspect_log` and its :class:`LogReport`.

``verify`` (``verify=True``: CRCs, structure, offset continuity, indexes, the clean-shutdown
marker, leftover files) and ``stats`` (``verify=False``: batch headers only) print a report;
``recover`` plans from one. Each problem names its file and byte position and says whether
``logstore recover --apply`` repairs it without dropping a valid batch (a torn tail of the
active segment, an index, a stale marker) or whether data is damaged.

The checks mirror the engine: a batch is valid iff the engine's segment scan accepts it
(:mod:`.scan`), and damage in the active segment is a torn tail iff crash recovery would
truncate it rather than refuse to open the log (:mod:`logstore.format.damage`). Never changes
anything (see :mod:`.reader`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import CorruptLogError, NotALogError, UnsupportedFormatError
from ..format.header import ATTR_HEADERS
from ..format.names import (
    CLEAN_SHUTDOWN_NAME, CLEANED, COMPACTION_COMMIT, DELETED, GROUP_META, INDEX_SUFFIX,
    KEYINDEX_SUFFIX, LOG_SUFFIX, META_NAME, SWAP, TIMEINDEX_SUFFIX, TMP, TOPIC_META,
    parse_segment_name,
)
from ..storage import meta
from .indexes import BatchTable, IndexFiles, check_indexes, read_index_files
from .key_indexes import key_index_problem, key_index_warning
from .scan import (
    BatchEvent, ErrorEvent, GapEvent, Progress, SegmentEnd, SegmentStart, log_facts, scan,
)
from .targets import Target, writer_pid

RECOVER_HINT = "`logstore recover --apply`"
INDEX_REPAIR = ("indexes are hints rebuilt from the log: readers rebuild a bad one in memory, "
                f"{RECOVER_HINT} rewrites it; no data is affected")
BAD_INDEX_ENTRIES_SHOWN = 5  # per segment; the rest are counted in one more problem


# ---------------------------------------------------------------------------------- reports
@dataclass
class Problem:
    """Something wrong with a log, where it is, and what would fix it."""

    kind: str  # "torn_tail", "damaged", "index", "marker"
    file: str
    position: Optional[int]
    reason: str
    repair: str
    recoverable: bool  # `logstore recover --apply` fixes it without dropping any valid batch
    details: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        d = {"kind": self.kind, "file": self.file, "position": self.position,
             "reason": self.reason, "recoverable": self.recoverable, "repair": self.repair}
        d.update(self.details)
        return d


@dataclass
class SegmentReport:
    name: str
    path: str
    base_offset: Optional[int]
    active: bool
    size: int = 0
    first_offset: Optional[int] = None
    next_offset: Optional[int] = None
    records: int = 0
    batches: int = 0
    payload_bytes: int = 0
    raw_bytes: int = 0
    first_timestamp: Optional[int] = None
    max_timestamp: Optional[int] = None
    codecs: Dict[str, int] = field(default_factory=dict)
    valid_end: int = 0  # end of the last valid batch before the first invalid byte
    records_after_damage: int = 0  # records in valid batches found after the first damage
    status: str = "ok"  # "ok", "torn tail", "damaged", "bad index"
    index_entries: int = 0
    unwritten_bytes: int = 0  # active segment: preallocated zero bytes after the data

    def as_dict(self) -> Dict[str, Any]:
        return {
            "segment": self.name, "base_offset": self.base_offset, "active": self.active,
            "size": self.size, "first_offset": self.first_offset, "next_offset": self.next_offset,
            "records": self.records, "batches": self.batches,
            "payload_bytes": self.payload_bytes, "raw_bytes": self.raw_bytes,
            "compression_ratio": ratio(self.raw_bytes, self.payload_bytes),
            "first_timestamp": self.first_timestamp, "max_timestamp": self.max_timestamp,
            "codecs": dict(sorted(self.codecs.items())), "valid_end": self.valid_end,
            "records_after_damage": self.records_after_damage, "status": self.status,
            "unwritten_bytes": self.unwritten_bytes,
        }


def ratio(raw: int, stored: int) -> Optional[float]:
    return round(raw / stored, 3) if stored else None


@dataclass
class LogReport:
    label: str
    log_dir: str
    segment_only: bool
    segments: List[SegmentReport] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    writer_pid: Optional[int] = None
    checked: str = "full"  # "full" (verify) or "headers" (stats: no CRC check)
    compacted: bool = False  # the log has been compacted: offset gaps are expected
    dir_label: Optional[str] = None  # the log directory as typed (store logs: under the root)
    topic: Optional[str] = None  # a topic partition of a store: its topic and partition
    partition: Optional[int] = None
    internal: bool = False  # an internal log of a store
    broken: bool = False  # the store's file describing this log is unreadable (Target.broken)
    key_index_problems: List[str] = field(default_factory=list)  # key index files that disagree

    @property
    def files_label(self) -> str:
        return self.dir_label or self.label

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, path: str, pos: Optional[int], reason: str, repair: str,
                recoverable: bool, **details: Any) -> None:
        self.problems.append(Problem(kind, path, pos, reason, repair, recoverable, details))

    def totals(self) -> Dict[str, Any]:
        segs = self.segments
        firsts = [s.first_timestamp for s in segs if s.first_timestamp is not None]
        maxes = [s.max_timestamp for s in segs if s.max_timestamp is not None]
        codecs: Dict[str, int] = {}
        for s in segs:
            for k, v in s.codecs.items():
                codecs[k] = codecs.get(k, 0) + v
        nexts = [s.next_offset for s in segs if s.next_offset is not None]
        bases = [s.base_offset if s.base_offset is not None else s.first_offset
                 for s in segs]
        bases = [b for b in bases if b is not None]
        payload = sum(s.payload_bytes for s in segs)
        raw = sum(s.raw_bytes for s in segs)
        return {
            "segments": len(segs),
            "start_offset": bases[0] if bases else None,
            "end_offset": nexts[-1] if nexts else (bases[-1] if bases else None),
            "records": sum(s.records for s in segs),
            "batches": sum(s.batches for s in segs),
            "bytes": sum(s.size for s in segs),
            "payload_bytes": payload,
            "raw_bytes": raw,
            "compression_ratio": ratio(raw, payload),
            "first_timestamp": firsts[0] if firsts else None,
            "max_timestamp": max(maxes) if maxes else None,
            "codecs": dict(sorted(codecs.items())),
        }

    def as_dict(self) -> Dict[str, Any]:
        where: Dict[str, Any] = {}
        if self.topic is not None:
            where = {"topic": self.topic, "partition": self.partition}
        elif self.internal:
            where = {"internal": True}
        return {
            "label": self.label, **where, "log_dir": self.log_dir,
            "segment": self.segments[0].name if self.segment_only and self.segments else None,
            "ok": self.ok, "checked": self.checked, "writer_pid": self.writer_pid,
            "compacted": self.compacted,
            "totals": self.totals(),
            "segments": [s.as_dict() for s in self.segments],
            "problems": [p.as_dict() for p in self.problems],
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------------- inspecting
def inspect_log(target: Target, *, verify: bool = True, progress: Progress = None,
                settle: Optional[float] = None) -> LogReport:
    """Scan every segment of ``target`` and report what is there and what is wrong.

    ``verify``: check CRCs, structure, offset continuity, indexes, the clean-shutdown marker and
    leftover files (``logstore verify``); else read batch headers only (``logstore stats``).
    Never changes anything.
    """
    report = LogReport(target.label, target.log_dir, target.segment is not None,
                       checked="full" if verify else "headers", dir_label=target.dir_label,
                       topic=target.topic, partition=target.partition,
                       internal=target.internal)
    if target.broken is not None:
        report.broken = True
        name = GROUP_META if target.internal else TOPIC_META
        report.problem("damaged", os.path.join(target.log_dir, name), None, target.broken,
                       "the store's metadata of this log is damaged: restore the file from a "
                       "copy (the store's other logs are not affected)", False)
        return report
    if target.expanded and (not os.path.isdir(target.log_dir)
                            or not os.path.exists(os.path.join(target.log_dir, META_NAME))):
        # A store's topic.json promises this partition (or the store an internal log).
        report.problem("damaged", target.log_dir, None,
                       f"{target.label}: the log directory is missing or has no {META_NAME}",
                       "data damaged: restore the directory from a copy", False)
        return report
    _check_meta(target, report)
    report.writer_pid = writer_pid(target.log_dir)
    report.compacted = log_facts(target)[0]
    walker = _SegmentChecks(report, verify)
    for ev in scan(target, decode=verify, continue_on_error=True, progress=progress,
                   settle=settle):
        walker.on_event(ev)
    _check_log(target, report, verify, walker.missing_indexes)
    return report


class _SegmentChecks:
    """The per-segment phase of :func:`inspect_log`: folds scan events into segment reports
    and problems (batches, damage, continuity between segments, indexes)."""

    def __init__(self, report: LogReport, verify: bool):
        self.report = report
        self.verify = verify
        self.compacted = report.compacted
        self.current: Optional[SegmentReport] = None
        self.prev: Optional[SegmentReport] = None
        self.table = BatchTable()
        self.files: Optional[IndexFiles] = None
        self.expect: Optional[int] = None
        self.damaged = False
        self.valid_next: Optional[int] = None  # next offset after the undamaged prefix
        self.gap_at_end = False  # offsets are missing after this segment's data
        self.missing_indexes: List[str] = []

    def on_event(self, ev: Any) -> None:
        if isinstance(ev, SegmentStart):
            self.on_start(ev)
        elif isinstance(ev, BatchEvent):
            self.on_batch(ev)
        elif isinstance(ev, ErrorEvent):
            self.on_error(ev)
        elif isinstance(ev, GapEvent):
            self.on_gap(ev)
        elif isinstance(ev, SegmentEnd):
            self.on_end(ev)

    def on_start(self, ev: SegmentStart) -> None:
        seg = ev.seg
        self.current = SegmentReport(seg.name, seg.path, seg.base_offset, seg.active, ev.size)
        self.report.segments.append(self.current)
        self.table = BatchTable()
        # The active segment's indexes are read before its data (a writer writes a batch before
        # its index entry).
        files = read_index_files(seg) if self.verify and seg.base_offset is not None else None
        if files is not None and not seg.in_log and (
                files.offset_raw is None or files.time_raw is None):
            self.report.warnings.append(f"{seg.name} is not inside a log directory and has no "
                                        f"index files: indexes not checked")
            files = None
        self.files = files
        self.expect = self.valid_next = seg.base_offset
        self.damaged = self.gap_at_end = False

    def on_gap(self, ev: GapEvent) -> None:
        """Offsets missing in a log that is not compacted (scan.GapEvent): data damage."""
        self.report.problem(
            "damaged", ev.seg.path, ev.pos, ev.reason,
            "data damaged: offsets of a log must be dense; restore the missing segment (or "
            "batches) from a copy", False, missing_from=ev.expected, missing_to=ev.found - 1)
        if ev.at_end:
            self.gap_at_end = True  # (its indexes end where its data ends: not their fault)
        else:
            self.damaged = True

    def on_batch(self, ev: BatchEvent) -> None:
        h, s = ev.header, self.current
        self.expect = h.next_offset
        if s.first_offset is None:
            s.first_offset = h.base_offset
            s.first_timestamp = h.base_timestamp
        s.next_offset = h.next_offset
        s.records += h.record_count
        s.batches += 1
        s.payload_bytes += h.payload_length
        s.raw_bytes += h.raw_length
        s.max_timestamp = h.max_timestamp if s.max_timestamp is None \
            else max(s.max_timestamp, h.max_timestamp)
        s.codecs[h.codec] = s.codecs.get(h.codec, 0) + 1
        if not self.damaged:
            s.valid_end = ev.pos + h.length
            self.valid_next = h.next_offset
            self.table.add(ev.pos, h)
        else:
            s.records_after_damage += h.record_count
        if self.verify and ev.batch is not None and h.attributes & ATTR_HEADERS:
            try:
                ev.batch.records()
            except CorruptLogError as e:
                self.report.problem(
                    "damaged", ev.seg.path, ev.pos, e.reason,
                    "the batch's CRC is valid but its record headers are malformed (written by "
                    "a faulty writer): restore from a copy", False)
                self.damaged = True

    def on_error(self, ev: ErrorEvent) -> None:
        s, seg = self.current, ev.seg
        lost = ev.size - ev.pos
        if ev.durable_floor > ev.pos and not self.damaged:
            s.status = "damaged"
            self.report.problem(
                "damaged", seg.path, ev.pos, ev.error.reason,
                f"data damaged: the clean-shutdown marker says close() made "
                f"{ev.durable_floor} bytes of this segment durable, so this is lost or "
                f"damaged durable data, not a torn tail or preallocated space; a writer "
                f"refuses to open the log and `logstore recover --apply` refuses to cut it. "
                f"Restore the segment from a copy (`recover --apply --force` cuts it here, "
                f"accepting the loss)", False, durable_floor=ev.durable_floor,
                next_valid=ev.resume)
        elif ev.torn_tail:
            s.status = "torn tail"
            why = ("a zero-filled sector follows: unsynced data lost to a power failure"
                   if ev.zero_hole else "nothing valid follows")
            self.report.problem(
                "torn_tail", seg.path, ev.pos, ev.error.reason,
                f"torn tail of the active segment ({why}): crash recovery truncates the last "
                f"{lost} bytes. {RECOVER_HINT} does it now (so does opening the log for "
                f"writing)", True, truncate_bytes=lost)
        elif seg.active and not self.damaged:
            s.status = "damaged"
            self.report.problem(
                "damaged", seg.path, ev.pos, ev.error.reason,
                f"data damaged: a valid batch follows at byte {ev.resume}, so this is not a torn "
                f"tail and a writer refuses to open the log. {RECOVER_HINT} cuts the segment "
                f"here, dropping {lost} bytes including valid batches; or restore the segment "
                f"from a copy", False, next_valid=ev.resume, drop_bytes=lost)
        else:
            s.status = "damaged"
            where = "active" if seg.active else "sealed"
            tail = (f"; valid batches resume at byte {ev.resume}" if ev.resume is not None
                    else "; nothing valid follows up to the end of the file")
            self.report.problem(
                "damaged", seg.path, ev.pos, ev.error.reason,
                f"data damaged in a {where} segment: `logstore recover` cannot repair it; "
                f"restore the segment from a copy" + tail, False, next_valid=ev.resume)
        self.damaged = True
        self.expect = None

    def on_end(self, ev: SegmentEnd) -> None:
        s, seg = self.current, ev.seg
        s.size = ev.size
        s.unwritten_bytes = ev.unwritten
        if self.damaged and s.status == "ok":
            s.status = "damaged"
        if not self.damaged:
            s.valid_end = s.valid_end if s.batches else 0
        if self.verify:
            self._check_continuity(s)
            if not seg.active and s.batches == 0 and s.status == "ok" and not self.compacted \
                    and not self.gap_at_end:
                self.report.problem("damaged", seg.path, 0, "sealed segment holds no batch",
                                    "data damaged: restore the segment from a copy", False)
                s.status = "damaged"
            if self.files is not None and s.status in ("ok", "torn tail") \
                    and not self.gap_at_end:
                self._check_indexes(s, ev)
            why = key_index_problem(seg, self.compacted) if s.status in ("ok", "bad index") \
                and not self.gap_at_end else None
            if why is not None:
                self.report.warnings.append(key_index_warning(seg, why))
                self.report.key_index_problems.append(seg.sibling(KEYINDEX_SUFFIX))
        self.prev = s

    def _check_continuity(self, s: SegmentReport) -> None:
        """A segment must not start below where the previous one ends (offsets missing between
        segments are the scan's GapEvent)."""
        prev = self.prev
        if self.report.segment_only or prev is None or s.base_offset is None \
                or prev.next_offset is None or prev.status != "ok":
            return
        if prev.next_offset > s.base_offset:
            self.report.problem(
                "damaged", s.path, 0,
                f"this segment starts at offset {s.base_offset} but {prev.name} already "
                f"reaches offset {prev.next_offset - 1}",
                "data damaged: segments must continue each other's offsets; restore the "
                "segment from a copy", False)

    def _check_indexes(self, s: SegmentReport, ev: SegmentEnd) -> None:
        files = self.files
        entries, file_problems, _, notes = check_indexes(ev.seg, files, self.table,
                                                         s.valid_end, self.valid_next)
        self.missing_indexes.extend(n.split()[0] for n in notes)
        s.index_entries = sum(1 for e in entries if e.kind == "offset")
        bad = [e for e in entries if not e.ok]
        for why in file_problems:
            self.report.problem("index", s.path, None, why, INDEX_REPAIR, True)
        for e in bad[:BAD_INDEX_ENTRIES_SHOWN]:
            if e.kind == "offset":
                what = f"entry {e.number} (offset {e.offset} -> log byte {e.position})"
            else:
                what = f"entry {e.number} (timestamp {e.timestamp} -> offset {e.offset})"
            ipath, at = files.location(e)
            self.report.problem("index", ipath, at, f"{what}: {e.status}", INDEX_REPAIR, True)
        if len(bad) > BAD_INDEX_ENTRIES_SHOWN:
            self.report.problem("index", s.path, None,
                                f"{len(bad) - BAD_INDEX_ENTRIES_SHOWN} more bad index entries",
                                INDEX_REPAIR, True)
        if (file_problems or bad) and s.status == "ok":
            s.status = "bad index"


def _check_meta(target: Target, report: LogReport) -> None:
    """A log's ``logstore.meta`` must parse: a writer or reader refuses a log whose file is
    damaged (NotALogError), so verify must not call such a log OK. Its segments are still
    scanned (their records are intact, and restoring the file makes them readable)."""
    path = os.path.join(target.log_dir, META_NAME)
    if not os.path.exists(path):
        return
    try:
        meta.read_meta(target.log_dir)
    except (NotALogError, UnsupportedFormatError) as e:
        report.problem("damaged", path, None, f"{META_NAME} is unreadable: {e}",
                       "the log cannot be opened until the file is restored from a copy "
                       "(its segments are intact: `logstore dump` reads them)", False)


def _check_log(target: Target, report: LogReport, verify: bool,
               missing_indexes: List[str]) -> None:
    """The log-level phase of :func:`inspect_log`: missing indexes, the clean-shutdown marker,
    leftover files, a running writer."""
    if missing_indexes:
        n = len(missing_indexes)
        shown = ", ".join(missing_indexes[:4]) + (", ..." if n > 4 else "")
        report.warnings.append(
            f"{n} index file{'s are' if n > 1 else ' is'} missing ({shown}): readers rebuild "
            f"them from the log (compaction removes stale ones on purpose)")
    if not verify:
        return
    if not report.segment_only:
        _check_marker(report)
        for name, what, fate in leftover_files(target.log_dir):
            report.warnings.append(f"leftover {name}: {what}, not part of the log (a writer's "
                                   f"open finds it {fate})")
    if report.writer_pid is not None:
        report.warnings.append(
            f"a writer (pid {report.writer_pid}) has the log open: the active segment was "
            f"checked up to the bytes written when it was read")


def _check_marker(report: LogReport) -> None:
    """The clean-shutdown marker must describe the active segment (a writer trusts it, and
    holds the log to it: see the durable floor in ``logstore.storage.tail``)."""
    marker = meta.read_clean_shutdown(report.log_dir)
    if marker is None:
        return
    name = CLEAN_SHUTDOWN_NAME
    path = os.path.join(report.log_dir, name)
    if not report.segments:
        report.problem("damaged", path, None, meta.missing_last_segment(marker, []) or "",
                       "data damaged: restore the segments from a copy", False)
        return
    last = report.segments[-1]
    end = last.next_offset if last.next_offset is not None else last.base_offset
    if last.base_offset is not None and marker["segment"] > last.base_offset:
        report.problem(
            "damaged", path, None,
            f"{name} says the log ends in segment {marker['segment']} at offset "
            f"{marker['end_offset']}, but the last segment there is {last.name} (ending at "
            f"offset {end}): the last segment is missing, offsets {end}.."
            f"{marker['end_offset'] - 1} are lost",
            "data damaged: restore the missing segment from a copy; a writer refuses to open "
            "the log (it would assign those offsets again)", False)
        return
    if marker["segment"] != last.base_offset:
        report.warnings.append(
            f"{name} names segment {marker['segment']} but the active segment is "
            f"{last.base_offset}: it is stale and a writer ignores it")
        return
    if last.status == "damaged":
        return  # below the marker's size: reported as data damage already
    if marker["size"] != last.size:
        report.warnings.append(
            f"{name} says {marker['size']} bytes but the active segment has {last.size}: a "
            f"writer scans the segment instead of trusting it")
    max_ts = last.max_timestamp if last.max_timestamp is not None else -1
    if marker["end_offset"] > end:
        report.problem(
            "damaged", path, None,
            f"{name} says the log ended at offset {marker['end_offset']}, but the active "
            f"segment's data ends at offset {end}: durable records are missing",
            "data damaged: restore the segment from a copy; a writer refuses to open the log",
            False)
    elif last.status == "torn tail":
        report.problem("marker", path, None,
                       f"{name} describes a segment with a torn tail",
                       f"{RECOVER_HINT} removes the marker first", True)
    elif marker["end_offset"] != end or marker["max_timestamp"] != max_ts:
        report.problem("marker", path, None,
                       f"{name} says end offset {marker['end_offset']}, max timestamp "
                       f"{marker['max_timestamp']}; the active segment has {end}, {max_ts} (a "
                       f"writer would trust the marker)",
                       f"{RECOVER_HINT} removes the marker and rescans the active segment", True)


def leftover_files(log_dir: str) -> List[Tuple[str, str, str]]:
    """Files that are not part of the log: (name, what it is, what a writer's open does with it).

    Mirrors ``logstore.storage.loader.finish_interrupted_cleanups``, which a writer's open runs.
    """
    names = sorted(os.listdir(log_dir))
    logs = {n[: -len(LOG_SUFFIX)] for n in names if n.endswith(LOG_SUFFIX)}
    committed = COMPACTION_COMMIT in names
    out = []
    for n in names:
        if n.endswith(TMP):
            out.append((n, "an interrupted atomic write", "deleted"))
        elif n.endswith(CLEANED):
            out.append((n, "an unfinished compaction output", "deleted"))
        elif n.endswith(DELETED):
            out.append((n, "a segment being deleted by retention", "deleted"))
        elif n.endswith(SWAP):
            if committed:
                out.append((n, "a committed compaction swap", "renamed over its .log"))
            else:
                out.append((n, "an uncommitted compaction swap", "deleted"))
        elif n == COMPACTION_COMMIT:
            out.append((n, "the commit point of an interrupted compaction",
                        "removed once its swaps are completed"))
        elif n.endswith((INDEX_SUFFIX, TIMEINDEX_SUFFIX, KEYINDEX_SUFFIX)) \
                and n.rsplit(".", 1)[0] not in logs \
                and parse_segment_name(n.split(".", 1)[0] + LOG_SUFFIX) is not None:
            out.append((n, "an index file whose segment does not exist", "deleted"))
    return out
