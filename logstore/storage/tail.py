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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional, Tuple

from ..errors import CorruptLogError
from ..format.damage import classify_damage

if TYPE_CHECKING:
    from .segment import Segment


class ScannedBatch(NamedTuple):
    """One whole, valid batch found by :meth:`Segment.scan`."""

    position: int
    length: int
    base_offset: int
    next_offset: int
    max_timestamp: int
    record_count: int


class ScanResult(NamedTuple):
    """Outcome of validating a segment batch by batch from some position."""

    batches: List[ScannedBatch]
    valid_end: int  # file position just after the last valid batch
    file_size: int
    error: Optional[CorruptLogError]  # first problem found, None if the whole range was valid

    @property
    def next_offset(self) -> Optional[int]:
        return self.batches[-1].next_offset if self.batches else None


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
        if self.zero_hole:
            lines.append("  the damage lies in bytes never fsynced (later batches say so): "
                         "unsynced data lost to a power failure; a torn tail")
        if self.indexes_rebuilt:
            lines.append("  indexes rebuilt")
        for name in self.removed_files:
            lines.append(f"  leftover file {name}")
        return "\n".join(lines)


def inspect_active(segment: "Segment") -> Tuple["ScanResult", RecoveryReport]:
    """Scan the active segment; return (ScanResult, RecoveryReport) without changing anything."""
    scan = segment.scan(0)
    report = RecoveryReport(
        segment=segment.path,
        clean=False,
        scanned_bytes=scan.file_size,
        valid_bytes=scan.valid_end,
        file_bytes=scan.file_size,
        batches=len(scan.batches),
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
    return scan, report
