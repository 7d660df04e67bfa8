"""Judging the active segment's tail after a crash: a torn tail to cut, or corruption.

Only the active segment can be damaged by a crash (every segment is fsynced before the next one
is created). A scan stops at the first invalid batch; what follows decides what it was:

* nothing valid after it (or only zero bytes): a torn tail (or the never-written preallocated
  tail), cut off by recovery;
* a CRC-valid batch after it: corruption, never silently cut, unless every valid batch after the
  damage says (its ``synced_before`` field) that the damaged bytes were never fsynced when it was
  written: then they were never acknowledged, and a power loss with out-of-order write-back can
  leave exactly that ("zero hole"): a torn tail after all.

Read-only: :func:`inspect_active` changes nothing; :meth:`Segment.recover` applies its verdict.

A read-only opener in another process judges the same tail while the writer may be appending
to it (:func:`whole_batches`, :func:`reader_stop_problem`): where its catch-up stops is "not
written yet" unless the bytes say otherwise (see :func:`reader_stop_problem`).

The *durable floor* of the active segment is what the log promised to keep: the size a
clean-shutdown marker naming the segment records (``close()`` fsynced that much), and the
``synced_before`` of its batches. Bytes below it that are missing or damaged are data damage,
never a torn tail: recovery refuses to cut them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from ..format.damage import classify_damage, find_valid_batch
from ..format.header import HEADER_SIZE, BatchHeader, crc_ok, header_problem, parse_header

if TYPE_CHECKING:
    from .segment import ScanResult, Segment


class _MappedBytes:
    """A mapping of a segment file as format.damage's byte source."""

    def __init__(self, mapping: Any):
        self._mapping = mapping

    def read(self, pos: int, n: int) -> bytes:
        return self._mapping[pos : pos + n]


@dataclass
class RecoveryReport:
    """What recovery found (and did, unless it was a dry run) for the active segment."""

    segment: str
    clean: bool
    scanned_bytes: int = 0
    valid_bytes: int = 0
    file_bytes: int = 0
    batches: int = 0
    truncated_bytes: int = 0
    problem: Optional[str] = None
    problem_position: Optional[int] = None
    data_after_problem: bool = False
    zero_hole: bool = False
    unwritten_tail: bool = False  # the tail is all zero bytes: preallocated, never written
    durable_floor: int = 0  # bytes the clean-shutdown marker says were durable (0: no marker)
    below_floor: bool = False  # valid data ends below durable_floor: data damage, never cut
    indexes_rebuilt: bool = False
    removed_files: List[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.clean:
            return f"{self.segment}: clean shutdown, nothing to recover"
        lines = [f"{self.segment}: scanned {self.scanned_bytes} bytes, {self.batches} valid batches"]
        if self.problem:
            lines.append(f"  first invalid batch at byte {self.problem_position}: {self.problem}")
        if self.truncated_bytes:
            what = ("preallocated, never written tail" if self.unwritten_tail else "torn tail")
            lines.append(f"  {what}: {self.truncated_bytes} bytes after byte {self.valid_bytes}")
        if self.data_after_problem:
            lines.append("  valid batches follow the damage: corruption, not a torn tail")
        if self.below_floor:
            lines.append(f"  {floor_text(self.durable_floor, self.valid_bytes, self.file_bytes)}")
        if self.zero_hole:
            lines.append("  the damage lies in bytes never fsynced (later batches say so): "
                         "unsynced data lost to a power failure; a torn tail")
        if self.indexes_rebuilt:
            lines.append("  indexes rebuilt")
        for name in self.removed_files:
            lines.append(f"  leftover file {name}")
        return "\n".join(lines)


def floor_text(floor: int, valid_end: int, file_size: int) -> str:
    """Why data ending at ``valid_end`` below the durable floor ``floor`` is data damage."""
    have = (f"the file has only {file_size} bytes" if file_size < floor else
            f"its valid data ends at byte {valid_end}")
    return (f"the clean-shutdown marker says this segment held {floor} durable bytes, but "
            f"{have}: durable data was lost or damaged (data damage, not a torn tail)")


def inspect_active(segment: "Segment", durable_floor: int = 0,
                   durable_end: Optional[int] = None) -> Tuple["ScanResult", RecoveryReport]:
    """Scan the active segment; return (ScanResult, RecoveryReport) without changing anything.
    ``durable_floor``/``durable_end``: the size and end offset a clean-shutdown marker naming
    this segment records (0/None: no such marker)."""
    scan = segment.scan(0)
    report = RecoveryReport(
        segment=segment.path,
        clean=False,
        scanned_bytes=scan.file_size,
        valid_bytes=scan.valid_end,
        file_bytes=scan.file_size,
        batches=len(scan.batches),
        durable_floor=durable_floor,
        below_floor=scan.valid_end < durable_floor,
    )
    if scan.error is not None:
        report.problem = scan.error.reason
        report.problem_position = scan.error.position
        nxt = scan.next_offset if scan.batches else segment.base_offset
        # (format.damage: one copy of the rule, shared with `logstore verify`)
        found = classify_damage(_MappedBytes(segment.scan_view(scan.file_size)),
                                scan.valid_end, scan.file_size, nxt)
        # Valid data after the damage is corruption, unless every valid batch after it was
        # written while the damaged bytes were not yet known durable (their synced_before says
        # so): never fsynced, never acknowledged; out-of-order write-back at a power loss
        # leaves exactly this, a torn tail ("zero hole").
        report.data_after_problem = found.resume is not None and not found.zero_hole
        report.zero_hole = found.zero_hole
    elif scan.file_size > scan.valid_end:
        report.unwritten_tail = True  # zero bytes only (Segment.scan): preallocated space
    report.truncated_bytes = scan.file_size - scan.valid_end
    end = scan.next_offset if scan.batches else segment.base_offset
    if durable_end is not None and end < durable_end:
        report.below_floor = True  # (the marker's end offset: the data it describes is gone)
        report.durable_floor = max(durable_floor, scan.valid_end + 1)
    return scan, report


def refusal(report: RecoveryReport, directory: str) -> Optional[str]:
    """Why recovery must not cut the active segment as ``report`` found it (data damage:
    valid batches written after the damaged bytes were durable, or durable bytes missing or
    damaged below the durable floor), or None when cutting is a torn tail's repair."""
    if report.below_floor:
        what = floor_text(report.durable_floor, report.valid_bytes, report.file_bytes)
    elif report.data_after_problem:
        what = (f"{report.problem}; valid batches follow it, so this is corruption inside the "
                f"active segment, not a torn tail")
    else:
        return None
    lost = max(report.file_bytes, report.durable_floor) - report.valid_bytes
    return (f"{what}. Nothing was changed. Restore the segment from a copy, or run `logstore "
            f"recover --apply --force {directory}` to cut it at byte {report.valid_bytes}, "
            f"accepting the loss of the {lost} bytes after it (durable data)")


# ------------------------------------------------------------------ a reader beside the writer
class _FdBytes:
    """An open file descriptor as format.damage's byte source (pread)."""

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, pos: int, n: int) -> bytes:
        return os.pread(self.fd, n, pos)


def whole_batches(fd: int, pos: int, file_size: int,
                  on_batch: Callable[[int, BatchHeader], None]) -> Tuple[int, Optional[bytes]]:
    """Call ``on_batch(position, header)`` for each whole, CRC-valid batch from ``pos`` on (a
    reader catching up with a writer in another process, by pread); return the stop position
    and the header bytes there (None when fewer than a header's bytes are there)."""
    raw: Optional[bytes] = None
    while pos + HEADER_SIZE <= file_size:
        raw = os.pread(fd, HEADER_SIZE, pos)
        if len(raw) < HEADER_SIZE:
            return pos, None  # the writer cut its preallocated tail since the fstat
        h = parse_header(raw, 0)
        if header_problem(h) or pos + h.length > file_size:
            break
        data = os.pread(fd, h.length, pos)
        if len(data) < h.length or not crc_ok(data, 0, h):
            break
        on_batch(pos, h)
        pos += h.length
        raw = None
    return pos, raw


def _valid_at(src: _FdBytes, pos: int, end: int, min_offset: int) -> bool:
    """Whether a whole, CRC-valid batch reaching ``min_offset`` or beyond starts at ``pos``."""
    raw = src.read(pos, HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        return False
    h = parse_header(raw, 0)
    if header_problem(h) or pos + h.length > end or h.next_offset <= min_offset:
        return False
    data = src.read(pos, h.length)
    return len(data) == h.length and crc_ok(data, 0, h)


def reader_stop_problem(fd: int, pos: int, file_size: int, next_offset: int, floor: int,
                        raw: Optional[bytes]) -> Optional[str]:
    """Why a reader's catch-up stopping at ``pos`` is data damage, or None ("not written yet").

    ``raw``: the header bytes at ``pos`` (None if not there); ``floor``: the durable floor a
    clean-shutdown marker gives (0 if none). Damage, then:

    * valid data ends below the floor (the writer closed cleanly with more bytes);
    * bytes that are not zero and not a valid batch, followed by a whole, CRC-valid batch
      continuing the offsets, and still invalid when read again after it was seen: a writer
      appends batch after batch, so once a later batch is whole an earlier one being written
      is whole too.

    Zero bytes are never damage here: a writer's preallocated space, or a crashed writer's
    unsynced hole that its recovery cuts (FORMAT.md). Costs one header read in the common
    cases (zero bytes, a batch being written), a search of the rest of the file for garbage
    bytes (callers remember a verdict of None for the same position and file size).
    """
    if floor > pos:
        return floor_text(floor, pos, file_size)
    if raw is None or raw.count(0) == len(raw):
        return None
    src = _FdBytes(fd)
    h = parse_header(raw, 0)
    why = header_problem(h)
    if why is None:
        follow: Optional[int] = pos + h.length  # after a damaged body: the next header
        if pos + h.length > file_size or not _valid_at(src, follow, file_size, h.next_offset):
            return None  # being written (or a torn tail a writer's recovery cuts)
        why = "CRC32C mismatch"
    else:
        follow = find_valid_batch(src, pos + 1, file_size, next_offset)
        if follow is None:
            return None
    if _valid_at(src, pos, file_size, next_offset):
        return None  # it was being written: whole now
    return (f"{why}; a valid batch follows at byte {follow}: damage inside the active "
            f"segment, not a batch being written")
