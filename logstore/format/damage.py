"""The torn-tail vs corruption rules: one copy, for crash recovery and for ``verify``.

When the scan of a segment stops at an invalid batch, two questions decide what that damage is
(``segments/FORMAT.md``, "Durability protocol", open after a crash):

1. Does a CRC-valid batch follow it? :func:`find_valid_batch` looks for the first batch at an
   8-aligned position at or after a start, with a valid header, inside the data, with a base
   offset at or above the one the log expects, and a valid CRC32C.
2. If one does, had the damaged bytes been made durable before those later batches were
   written? Every batch records in its header (``synced_before``) how many bytes of its segment
   were known durable when it was written; :func:`max_synced_before` takes the largest over the
   valid batches from the first one after the damage on. If it does not exceed the damage's
   position, nothing durable was damaged: the bytes were never fsynced, so never acknowledged
   under any policy (a power loss with out-of-order write-back leaves exactly this).

:func:`classify_damage` puts both together for the first damage of an active segment: a *torn
tail* (recovery truncates it) when nothing valid follows, or only batches written while the
damaged bytes were unsynced (a *zero hole*); otherwise *corruption* (a writer refuses to open the
log). Damage in a sealed segment is always corruption: sealed segments were fsynced whole.

These are pure functions over a byte source: anything with ``read(pos, n) -> bytes`` returning
the bytes ``[pos, pos+n)`` of the file (fewer at its end). Recovery reads through an mmap, the
read-only diagnostics through ``os.pread``; the rules are the same. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from .header import ALIGN, HEADER_SIZE, MAGIC, crc_ok, header_problem, parse_header

SEARCH_CHUNK = 4 << 20  # bytes read at a time while searching for the next batch


class ByteSource(Protocol):
    """Read access to one segment file."""

    def read(self, pos: int, n: int) -> bytes:
        """Bytes ``[pos, pos+n)`` of the file (fewer, or none, past its end)."""
        ...


@dataclass(frozen=True)
class Damage:
    """What the first damage of an active segment is (see the module docstring).

    ``resume``: position of the next valid batch after the damage, None if there is none.
    ``torn_tail``: crash recovery truncates the segment at the damage. ``zero_hole``: a torn
    tail although valid batches follow (they were written while the damaged bytes were unsynced).
    """

    resume: Optional[int]
    torn_tail: bool
    zero_hole: bool


def find_valid_batch(src: ByteSource, start: int, end: int,
                     min_offset: Optional[int] = None) -> Optional[int]:
    """Position of the first CRC-valid batch at an 8-aligned position in ``[start, end)``
    that ends by ``end`` and (if given) has a base offset >= ``min_offset``; None if none.
    """
    pos = start + (-start % ALIGN)
    while pos + HEADER_SIZE <= end:
        data = src.read(pos, min(SEARCH_CHUNK, end - pos))
        if not data:
            return None
        i = data.find(MAGIC)
        while i >= 0:
            p = pos + i
            if p % ALIGN == 0 and p + HEADER_SIZE <= end \
                    and _valid_batch_at(src, data, i, p, end, min_offset):
                return p
            i = data.find(MAGIC, i + 1)
        if len(data) < SEARCH_CHUNK:
            return None
        pos += len(data) - (len(MAGIC) - 1)  # overlap: a magic may straddle the chunk border
    return None


def _valid_batch_at(src: ByteSource, data: bytes, i: int, p: int, end: int,
                    min_offset: Optional[int]) -> bool:
    """Whether a whole, CRC-valid batch starts at ``p`` (= ``data[i]``), ending by ``end``."""
    raw = data[i : i + HEADER_SIZE]
    if len(raw) < HEADER_SIZE:  # the header straddles the chunk border
        raw = src.read(p, HEADER_SIZE)
    h = parse_header(raw, 0)
    if header_problem(h) is not None or p + h.length > end:
        return False
    if min_offset is not None and h.base_offset < min_offset:
        return False
    body = src.read(p, h.length)
    return len(body) == h.length and crc_ok(body, 0, h)


def max_synced_before(src: ByteSource, first: int, end: int) -> int:
    """The largest ``synced_before`` among the valid batches from ``first`` (a valid batch) on,
    each found after the previous one by :func:`find_valid_batch`."""
    best = 0
    pos: Optional[int] = first
    while pos is not None:
        h = parse_header(src.read(pos, HEADER_SIZE), 0)
        best = max(best, h.synced_before)
        pos = find_valid_batch(src, pos + h.length, end, h.next_offset)
    return best


def is_unsynced(src: ByteSource, damage_pos: int, resume: int, end: int) -> bool:
    """Whether damage at ``damage_pos``, followed by the valid batch at ``resume``, lies in
    bytes that no later valid batch records as durable (so recovery may truncate it)."""
    return max_synced_before(src, resume, end) <= damage_pos


def classify_damage(src: ByteSource, damage_pos: int, end: int,
                    min_offset: Optional[int]) -> Damage:
    """Classify the first damage of an active segment at ``damage_pos`` (data up to ``end``;
    ``min_offset``: the offset the next batch must reach). See the module docstring."""
    resume = find_valid_batch(src, damage_pos + 1, end, min_offset)
    if resume is None:
        return Damage(None, True, False)
    hole = is_unsynced(src, damage_pos, resume, end)
    return Damage(resume, hole, hole)
