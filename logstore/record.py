"""The record type handed back by ``get``, ``read`` and ``replay``."""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional


class Record(NamedTuple):
    """One stored record. Immutable; ``value is None`` marks a tombstone.

    ``headers`` is a dict ``str -> bytes`` (empty when the record has none). It is a fresh dict
    per record, so changing it cannot affect the log or other readers. ``partition`` is set by
    topic-level readers (consumer groups, subscriptions) and is None for a plain :class:`Log`.
    """

    offset: int
    timestamp_ms: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Dict[str, bytes]
    partition: Optional[int] = None


__all__ = ["Record"]
