"""Crash recovery, in one place.

What can be damaged by a crash, and why only that:

* A segment is fsynced (data, then its trimmed indexes) when it is sealed, *before* the next
  segment's file is created and the directory fsynced. So every segment but the last is whole.
* The last (active) segment may end in a torn batch, or in batches that were written but never
  fsynced (fsync="never"/"every"), possibly with a zero-filled hole where the file system lost
  pages. Its preallocated indexes may hold stale or zero entries.
* ``close()`` writes ``clean-shutdown`` naming the active segment, its size and end offset. If it
  is present and matches, nothing is scanned: open is O(1) in the size of the log.

Without a valid marker, the active segment is scanned from its start (it is at most
``segment_bytes`` long): every batch's header, bounds, CRC32C, structure and offsets are checked.
The file is cut after the last valid batch only if *nothing valid follows*, i.e. the damage is a
torn tail. If a valid batch follows the damage, the problem is corruption in the middle of the
data, not a crash artefact: open refuses with :class:`CorruptLogError` rather than silently drop
the records after it; ``logstore recover --apply`` (or :func:`recover`) truncates on request.
Recovery is idempotent: a crash during recovery just means it runs again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from . import codec
from .codec import ALIGN, HEADER_SIZE, MAGIC
from .errors import CorruptLogError
from .segment import Segment, ScanResult, parse_segment_name


def marker_matches_segment(path: str, marker: dict) -> bool:
    """O(1) check of a clean-shutdown marker against the active segment it describes: the batch
    it names as last must be whole, CRC-valid, end exactly at the recorded size and end offset."""
    size, last, end = marker["size"], marker["last_batch"], marker["end_offset"]
    if size == 0:
        return last == -1 and end == int(os.path.basename(path).split(".")[0])
    if not 0 <= last <= size - codec.HEADER_SIZE:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(last)
            raw = f.read(size - last)
    except OSError:
        return False
    if len(raw) < codec.HEADER_SIZE:
        return False
    h = codec.parse_header(raw, 0)
    return (codec.header_problem(h) is None and last + h.length == size
            and h.next_offset == end and codec.crc_ok(raw, 0, h))


def list_segments(directory: str) -> List[int]:
    """Base offsets of the segment files in ``directory``, ascending."""
    bases = []
    for name in os.listdir(directory):
        base = parse_segment_name(name)
        if base is not None:
            bases.append(base)
    bases.sort()
    return bases


DELETED = ".deleted"


def finish_interrupted_cleanups(directory: str, fs) -> List[str]:
    """Complete or undo what a crash interrupted; return what was done (for reports).

    * ``*.tmp`` (interrupted atomic writes) and ``*.cleaned`` are deleted.
    * ``*.swap``: if ``compaction.commit`` exists the pass was committed and they are renamed
      over their ``.log`` (the log is as after that pass); otherwise they are deleted (as before).
    * ``*.deleted`` (retention) and index files without their ``.log`` are deleted.
    """
    from .cleaner import CLEANED, COMMIT, SWAP, finish_swap

    done = []
    committed = os.path.exists(os.path.join(directory, COMMIT))
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".tmp") or name.endswith(CLEANED) or name.endswith(DELETED):
            fs.unlink(path)
            done.append(f"removed {name}")
        elif name.endswith(SWAP):
            if committed:
                finish_swap(fs, path)
                done.append(f"completed compaction swap {name}")
            else:
                fs.unlink(path)
                done.append(f"removed uncommitted {name}")
    if committed:
        fs.fsync_dir(directory)
        fs.unlink(os.path.join(directory, COMMIT))
        done.append(f"removed {COMMIT}")
    for name in os.listdir(directory):
        stem, dot, ext = name.partition(".")
        if ext in ("index", "timeindex") and parse_segment_name(stem + ".log") is not None \
                and not os.path.exists(os.path.join(directory, stem + ".log")):
            fs.unlink(os.path.join(directory, name))
            done.append(f"removed orphan {name}")
    if done:
        fs.fsync_dir(directory)
    return done


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


def valid_batch_after(segment: Segment, start: int, end: int, min_offset: int) -> Optional[int]:
    """Position of a CRC-valid batch at or after ``start`` (8-aligned), or None.

    Used to tell a torn tail (nothing valid after the damage) from mid-file corruption.
    """
    if end - start < HEADER_SIZE:
        return None
    buf = segment._scan_map(end)
    # A batch starts with its (non-zero) magic, in written data: search the data ranges only
    # (a preallocated tail is a hole: faulting it in through the mapping costs milliseconds).
    # The batch itself is checked in full, wherever it ends.
    for lo, hi in segment._data_ranges(start, end):
        pos = max(lo, start)
        pos += -pos % ALIGN
        while True:
            pos = buf.find(MAGIC, pos, hi)
            if pos < 0:
                break
            if pos % ALIGN == 0 and pos + HEADER_SIZE <= end:
                h = codec.parse_header(buf, pos)
                if (codec.header_problem(h) is None and pos + h.length <= end
                        and h.base_offset >= min_offset and codec.crc_ok(buf, pos, h)):
                    return pos
            pos += 1
    return None


def synced_before_of_later_batches(segment: Segment, first: int, end: int) -> int:
    """The largest ``synced_before`` among the CRC-valid batches from ``first`` on.

    If it exceeds the position of some damage, that damage lies in bytes an fsync had already
    made durable before a later batch was written: real corruption, never truncated.
    """
    buf = segment._scan_map(end)
    best = 0
    pos: Optional[int] = first
    while pos is not None:
        h = codec.parse_header(buf, pos)
        best = max(best, h.synced_before)
        pos = valid_batch_after(segment, pos + h.length, end, h.next_offset)
    return best


def inspect_active(segment: Segment) -> tuple:
    """Scan the active segment; return (ScanResult, RecoveryReport) without changing anything."""
    scan: ScanResult = segment.scan(0)
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
        after = valid_batch_after(segment, scan.valid_end + 1, scan.file_size, nxt)
        report.data_after_problem = after is not None
        if after is not None and synced_before_of_later_batches(
                segment, after, scan.file_size) <= scan.valid_end:
            # Every valid batch after the damage was written while the damaged bytes were not
            # yet known durable (its synced_before field says so), and no later batch vouches
            # for them: they were never fsynced, so never acknowledged under any policy. A power
            # loss with out-of-order write-back can leave exactly this: a torn tail.
            report.data_after_problem = False
            report.zero_hole = True
    elif scan.file_size > scan.valid_end:
        report.unwritten_tail = True  # zero bytes only (Segment.scan): preallocated space
    report.truncated_bytes = scan.file_size - scan.valid_end
    return scan, report


def recover_active(segment: Segment, index_capacity: int, force_truncate: bool = False):
    """Recover the (writable) active segment after an unclean shutdown. Returns the report.

    Raises :class:`CorruptLogError` if valid data follows the damage and ``force_truncate`` is
    not set.
    """
    segment.fd = segment.fs.open(segment.path, os.O_RDWR)
    scan, report = inspect_active(segment)
    if report.data_after_problem and not force_truncate:
        raise CorruptLogError(
            f"{report.problem}; valid batches follow it, so this is corruption inside the "
            f"active segment, not a torn tail. Nothing was changed. Run `logstore recover "
            f"--apply {os.path.dirname(segment.path)}` to cut the segment at this point "
            f"(dropping {report.truncated_bytes} bytes), or restore it from a copy",
            segment.path, report.problem_position)
    segment._map = None  # never truncate under our own mapping
    if report.truncated_bytes:
        segment.truncate_to(scan.valid_end)
    else:
        # What survived a process crash may still sit unsynced in the page cache: make it
        # durable before the log calls it durable (and lets readers see it).
        segment.sync()
    segment.size = segment.allocated = scan.valid_end
    segment.next_offset = scan.next_offset if scan.batches else segment.base_offset
    segment.sealed = False
    if scan.batches:
        segment.first_timestamp = segment.header_at(0).base_timestamp
    segment.rebuild_indexes(scan, index_capacity)
    report.indexes_rebuilt = True
    return report
