"""Checking a sealed segment's key index file (``<base>.keyindex``) against the segment.

A key index is a hint (``segments/FORMAT.md``, "Key index"): ``replay_key`` checks every entry
it uses against the batch it names and rebuilds a file that disagrees, so a bad one never costs
a record. ``verify`` still says so, as a warning (not a data problem), and ``recover --apply``
deletes it (the next ``replay_key`` of the segment builds it again).
"""

from __future__ import annotations

import os
from typing import Optional

from ..format.names import KEYINDEX_SUFFIX
from ..storage.key_index import check_key_index_file
from .targets import SegmentFile


def key_index_problem(seg: SegmentFile, compacted: bool) -> Optional[str]:
    """Why the key index file beside ``seg`` disagrees with it, or None (none there, or it
    agrees entry for entry). Only for an undamaged segment of a log directory. Read-only."""
    path = seg.sibling(KEYINDEX_SUFFIX)
    if not seg.in_log or seg.base_offset is None or not os.path.exists(path):
        return None
    if seg.active or seg.end_offset is None:
        return "only sealed segments have one (a reader ignores it; it is checked when the " \
               "segment is sealed)"
    try:
        return check_key_index_file(path, seg.path, seg.base_offset, seg.end_offset, compacted)
    except OSError as e:
        return f"unreadable: {e}"


def key_index_warning(seg: SegmentFile, why: str) -> str:
    """The ``verify`` warning for a key index that disagrees with its segment."""
    name = os.path.basename(seg.sibling(KEYINDEX_SUFFIX))
    return (f"{name} disagrees with its segment ({why}): a hint, checked before use and "
            f"rebuilt by replay_key, no data is affected; `logstore recover --apply` deletes it")
