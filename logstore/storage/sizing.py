"""Sizes the engine derives from a log's configuration, computed in one place.

``Log`` preallocates the active segment's index files for as many entries as a full segment
can need (``segments/FORMAT.md``, "Offset index": ``segment_bytes / index_interval_bytes + 2``),
capped so that a tiny index interval cannot make an index file huge. Anything else that opens
an active segment for writing (``logstore.storage.repair``) must use the same figure.
"""

from __future__ import annotations

from ..config import LogConfig

MAX_INDEX_CAPACITY = 1 << 22  # entries: 32 MiB of offset index, 48 MiB of time index


def index_capacity(config: LogConfig) -> int:
    """Entries to preallocate in each index file of an active segment."""
    return min(MAX_INDEX_CAPACITY, config.segment_bytes // config.index_interval_bytes + 2)
