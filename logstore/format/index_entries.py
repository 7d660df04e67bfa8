"""Index entries as values: the layout of one offset-index entry (``segments/FORMAT.md``,
"Offset index").

An offset-index entry is one little-endian int64 ``relative_offset << 32 | position``, so that
entries sorted by offset are sorted integers. The numpy dtypes of both index files stay with the
index itself (``logstore.storage.index``: ``OFFSET_ENTRY``, ``TIME_ENTRY``); these are the pure
conversions between an entry and its two fields. No I/O.
"""

from __future__ import annotations

from typing import Tuple

POSITION_MASK = 0xFFFFFFFF


def pack_offset_entry(rel: int, position: int) -> int:
    """The int64 entry for a batch at byte ``position`` starting at relative offset ``rel``."""
    return (rel << 32) | position


def unpack_offset_entry(entry: int) -> Tuple[int, int]:
    """``(relative offset, position)`` of an offset-index entry."""
    return entry >> 32, entry & POSITION_MASK


def first_entry_above(rel: int) -> int:
    """The smallest entry value with a relative offset above ``rel``: entries below it name
    offsets <= ``rel`` (a ``searchsorted`` bound)."""
    return (rel + 1) << 32
