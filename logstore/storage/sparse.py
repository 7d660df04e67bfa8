"""Zero ranges of a file: where an active segment's preallocated (never written) tail is.

An active segment may end in zero bytes the writer reserved ahead of its data (FORMAT.md,
"Preallocated tail"). Checking that a tail is all zeros by reading it costs milliseconds for a
4 MiB tail (through a mapping, every page is faulted in). The file system knows which parts of
a file were never written: ``lseek(SEEK_DATA/SEEK_HOLE)`` names them (holes read as zeros), so
only the data ranges are read. This trusts the file system to report holes honestly (as ``cp``,
``tar`` and ``rsync`` do; ext4, xfs, btrfs and tmpfs count written pages still in the page
cache as data); where the calls are not supported, everything is read.
"""

from __future__ import annotations

import errno
import os
from typing import Any, List, Optional, Tuple

import numpy as np

_SEEK_DATA: Optional[int] = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: Optional[int] = getattr(os, "SEEK_HOLE", None)


def data_ranges(fd: int, start: int, end: int) -> List[Tuple[int, int]]:
    """The parts of ``[start, end)`` of the file that may hold data, in order (the whole range
    where the file system cannot tell). Moves the file offset of ``fd`` (the engine only uses
    positional I/O)."""
    if start >= end:
        return []
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return [(start, end)]
    out: List[Tuple[int, int]] = []
    pos = start
    try:
        while pos < end:
            try:
                lo = os.lseek(fd, pos, _SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but holes from pos to the end of the file
                    break
                raise
            if lo >= end:
                break
            hi = min(os.lseek(fd, lo, _SEEK_HOLE), end)
            if hi <= lo:  # pragma: no cover - a file system answering nonsense: read it all
                return [(start, end)]
            out.append((lo, hi))
            pos = hi
    except OSError:
        return [(start, end)]
    return out


def zeros_between(fd: int, pos: int, end: int) -> bool:
    """Whether bytes ``[pos, end)`` of the file are all zero: its data ranges read with pread,
    4 MiB at a time."""
    for lo, hi in data_ranges(fd, pos, end):
        while lo < hi:
            data = os.pread(fd, min(1 << 22, hi - lo), lo)
            if not data or data.count(0) != len(data):
                return False
            lo += len(data)
    return True


def zeros_in_mapping(fd: int, mapping: Any, pos: int, end: int) -> bool:
    """Whether bytes ``[pos, end)`` of the file mapped as ``mapping`` (through ``fd``) are all
    zero, reading only its data ranges through the mapping."""
    for lo, hi in data_ranges(fd, pos, end):
        if np.frombuffer(mapping, dtype=np.uint8, count=hi - lo, offset=lo).any():
            return False
    return True
