"""The one place where processing meets the layers below it (storage, views).

Everything the processing layer uses of the storage and views layers is imported here, so that
a change of those layers only has to repoint this file. Used beyond the names imported:
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
import os
from typing import Any, Dict

from crc32c import crc32c  # the documented key -> partition rule

from ..config import SHAPING_SETTINGS, LogConfig
from ..errors import (
    ConfigError,
    CorruptLogError,
    LogClosedError,
    LogLockedError,
    LogstoreError,
    NotAssignedError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    UnknownTopicError,
)
from ..format.names import META_NAME
from ..fs import DEFAULT_FS  # atomic file writes, directory creation
from ..record import Record
from ..storage.log import Log
from ..storage.meta import read_meta
from ..views.names import validate_name
from ..views.store import Store
from ..views.topic import Topic

__all__ = [
    "DEFAULT_FS", "crc32c", "log_options", "validate_name", "ConfigError", "CorruptLogError",
    "Log", "LogClosedError", "LogConfig", "LogLockedError", "LogstoreError", "NotAssignedError",
    "OffsetOutOfRangeError", "ReadOnlyError", "Record", "Store", "Topic", "UnknownTopicError",
]


def log_options(store: "Store", path: str, **overrides: Any) -> Dict[str, Any]:
    """Options to open the processing log at ``path``: the store's per-process options (fsync
    policy...), with ``overrides``; the store's and the overrides' shaping settings only when
    the log is created (afterwards its stored settings apply, whatever the store's options)."""
    options = dataclasses.asdict(store.config)
    found = read_meta(path) if os.path.exists(os.path.join(path, META_NAME)) else None
    if found is not None and set(found.get("settings", {})) & set(SHAPING_SETTINGS):
        options = {k: v for k, v in options.items() if k not in SHAPING_SETTINGS}
        overrides = {k: v for k, v in overrides.items() if k not in SHAPING_SETTINGS}
    options.update(overrides)
    return options
