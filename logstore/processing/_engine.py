"""The one place where processing meets the engine: only public ``logstore`` names.

Everything the processing layer uses of the storage and views layers is imported here, so that
a restructuring of the package only has to repoint this file. Used beyond the names imported:
``Store.root``, ``Store.readonly``, ``Store.config`` (a :class:`LogConfig`), ``Store.topic``
(with ``retention="interest"`` for repartition topics), ``Store.topics``, ``Store.consumer``
(``assignment``, ``position``, ``commit``, ``close``), ``Store.wait_for_data``;
``Topic.partitions`` (the partition :class:`Log` objects) and ``Topic.partition_count``;
``Log.open`` (changelogs, also read-only), ``Log.read``, ``Log.replay``, ``Log.replay_batches``
(of a batch: ``len``, ``index_of``, ``offset_at``, ``key``, ``value``, ``headers``,
``timestamps``, ``value_offsets``/``value_lengths``, ``key_offsets``/``key_lengths``,
``values_buffer``), ``Log.append_batch`` (keys, per-record headers, timestamps),
``Log.end_offset``, ``Log.start_offset``, ``Log.segments``, ``Log.compact``, ``Log.path``;
``logstore.fs.DEFAULT_FS`` (``write_file_atomic``, ``makedirs``); and ``crc32c(key) %
partitions``, the documented partitioning rule of ``Topic.publish`` (README, "Store").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from crc32c import crc32c  # the documented key -> partition rule

from logstore import (
    ConfigError,
    CorruptLogError,
    Log,
    LogClosedError,
    LogConfig,
    LogLockedError,
    LogstoreError,
    NotAssignedError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    Record,
    Store,
    Topic,
    UnknownTopicError,
)
from logstore.fs import DEFAULT_FS  # atomic file writes, directory creation

__all__ = [
    "DEFAULT_FS", "crc32c", "log_options", "ConfigError", "CorruptLogError", "Log",
    "LogClosedError", "LogConfig", "LogLockedError", "LogstoreError", "NotAssignedError",
    "OffsetOutOfRangeError", "ReadOnlyError", "Record", "Store", "Topic", "UnknownTopicError",
]


def log_options(store: "Store", **overrides: Any) -> Dict[str, Any]:
    """The store's log options (fsync policy, compression...) with ``overrides`` applied."""
    options = dataclasses.asdict(store.config)
    options.update(overrides)
    return options
