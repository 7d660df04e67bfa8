"""Validating a segment batch by batch (recovery, index rebuilds, ``recover``): :func:`scan`.

Split from :mod:`~logstore.storage.segment` so that the segment stays a segment's state and
its read and write paths; the scan reads the segment through its public face (``mapped``,
``fd``, ``file_size``) and changes nothing.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, List, NamedTuple, Optional

from ..errors import CorruptLogError
from ..format.decode import scan_batch
from ..format.header import HEADER_SIZE
from .sparse import zeros_between, zeros_in_mapping

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
MAX_RELATIVE_OFFSET = 2**31 - 1  # index entries store offsets relative to the segment base


class ScannedBatch(NamedTuple):
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


def scan(seg: Any, start: int = 0, strict: bool = False, end: Optional[int] = None,
         prev_next: Optional[int] = None) -> ScanResult:
    """Validate batches of segment ``seg`` from ``start`` up to the file's end (or ``end``).

    Stops at the first invalid batch (bad header, short, CRC, structure, offsets going back)
    and returns what was valid before it. ``strict`` raises that error instead. Zero bytes
    from there to the end of an unsealed segment are its preallocated, never-written space:
    the data ends there and that is no error (``valid_end`` < ``file_size`` all the same).
    """
    frozen = seg.sealed and seg.fd is None and not seg.use_pread
    fd = seg.fd if seg.use_pread else None
    if fd is not None:
        file_size = os.fstat(fd).st_size
    elif frozen:
        seg.ensure_open()  # scan exactly the file this object mapped
        file_size = seg.size
    else:
        file_size = seg.file_size()
    end = file_size if end is None else min(end, file_size)
    batches: List[ScannedBatch] = []
    pos = start
    expect = seg.base_offset if prev_next is None else prev_next
    error: Optional[CorruptLogError] = None
    path = seg.path
    if end > 0 and fd is None:
        buf: Any = seg.mapped(file_size) if frozen else scan_view(seg, end)
    else:
        buf = None
    while pos < end:
        try:
            if buf is not None:
                h = scan_batch(buf, pos, pos, end, expect, path)
            else:  # (a reader's active segment: pread, never a mapping)
                raw = os.pread(fd, min(HEADER_SIZE, end - pos), pos)  # type: ignore[arg-type]
                h = scan_batch(raw, 0, pos, end, expect, path,
                               lambda n: os.pread(fd, n, pos))  # type: ignore[arg-type]
            if h.next_offset - 1 - seg.base_offset > MAX_RELATIVE_OFFSET:
                raise CorruptLogError("batch offsets too far from the segment base", path, pos)
        except CorruptLogError as e:
            error = e
            break
        batches.append(ScannedBatch(pos, h.length, h.base_offset, h.next_offset,
                                    h.max_timestamp, h.record_count))
        expect = h.next_offset
        pos += h.length
    if error is not None and not seg.sealed and _zeros(seg, fd, pos, end, buf):
        error = None
    if error is not None and strict:
        raise error
    return ScanResult(batches, pos, file_size, error)


def _zeros(seg: Any, fd: Optional[int], pos: int, end: int, buf: Any) -> bool:
    """Whether bytes ``[pos, end)`` are all zero (``buf``: a mapping of the file, or None:
    read with ``fd``), reading only the file's data ranges (:mod:`~logstore.storage.sparse`)."""
    if buf is None:
        return zeros_between(fd, pos, end)
    own = seg.fd
    use = own if own is not None else os.open(seg.path, os.O_RDONLY | _CLOEXEC)
    try:
        return zeros_in_mapping(use, buf, pos, end)
    finally:
        if use != own:
            os.close(use)


def scan_view(seg: Any, end: int) -> mmap.mmap:
    """A fresh read-only mapping of the first ``end`` bytes of ``seg``'s file (scans, damage
    rules), through the segment's descriptor if it has one."""
    own = seg.fd
    use = own if own is not None else os.open(seg.path, os.O_RDONLY | _CLOEXEC)
    try:
        return mmap.mmap(use, end, access=mmap.ACCESS_READ)
    finally:
        if use != own:
            os.close(use)
