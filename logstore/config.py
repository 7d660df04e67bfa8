"""Log configuration: one dataclass, documented defaults, self-validating.

Every option of :meth:`logstore.Log.open` lives here. Unknown names and invalid values raise
:class:`~logstore.errors.ConfigError` with the list of valid choices, before anything touches disk.
Durations are seconds (float) except record timestamps and options whose names end in ``_ms``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import ConfigError

FSYNC_POLICIES = ("always", "every", "never")
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
COMPRESSIONS = ("none", "zstd")

MIN_SEGMENT_BYTES = 1024
# Index entries store file positions as int32, and a batch only starts below segment_bytes.
MAX_SEGMENT_BYTES = 2**31 - 1
# A batch must be decodable in memory; the format allows up to this many bytes per batch.
MAX_BATCH_BYTES = 1 << 30

KiB = 1024
MiB = 1024 * KiB

#: The settings that shape what a log keeps and how it is laid out on disk. They are stored with
#: the log at creation (``logstore.meta``, "settings") and apply on every later open; the other
#: options (fsync policy, write buffer, background pass interval, compaction memory) belong to
#: the process that opens the log.
SHAPING_SETTINGS = (
    "cleanup_policy", "retention_ms", "retention_bytes", "delete_retention_ms", "compression",
    "compression_level", "segment_bytes", "segment_ms", "index_interval_bytes",
    "max_record_bytes",
)


@dataclass(frozen=True)
class LogConfig:
    """Settings of one log. All fields have safe defaults; see README "Configuration".

    fsync:
        ``"always"`` (default): ``append``/``append_batch`` return only after the batch, and any
        new segment's directory entry, are on stable storage. Concurrent appenders share fsyncs
        (group commit). ``"every"``: fsync after ``fsync_records`` records and/or every
        ``fsync_ms`` milliseconds (a background thread). ``"never"``: the OS decides; ``flush()``
        and ``close()`` still fsync, and a segment is fsynced once when it is sealed.
    compression:
        ``"none"`` or ``"zstd"`` (each batch's records section compressed as a whole).
    segment_bytes / segment_ms:
        Roll to a new segment when the active one would exceed ``segment_bytes`` or when its
        first batch is older than ``segment_ms``. A batch bigger than ``segment_bytes`` is
        written alone into a fresh segment.
    index_interval_bytes:
        One sparse offset-index (and time-index) entry per this many bytes of log.
    max_record_bytes:
        Largest encoded batch (uncompressed) accepted by ``append``/``append_batch``.
    write_buffer_bytes:
        0 (default): every append is written to the file before it returns, so a *process*
        crash never loses an acknowledged append under any policy. N > 0 (only with
        ``fsync="never"``/``"every"``): collect small batches in memory and write them N bytes
        at a time (faster single appends); a process crash can then lose up to N bytes of
        appends not yet written, and other processes see them only once written.
    retention_ms / retention_bytes:
        Delete whole sealed segments whose largest timestamp is older than this / while the log
        is larger than this (never the active segment). None (default) = unlimited.
    cleanup_policy:
        ``"delete"`` (retention only), ``"compact"`` (keep the latest record per key in sealed
        segments; every record needs a key) or ``"compact,delete"`` (both).
    delete_retention_ms:
        A tombstone (value None) is removed by compaction once this long past its timestamp.
    retention_check_interval_s:
        Seconds between background retention/compaction passes (a daemon thread, started only
        when a retention limit or compaction is configured); 0 disables the thread.
    compaction_buffer_bytes:
        Memory budget of one compaction pass's key map (24 bytes per record); a log with more
        records is compacted in several passes.
    """

    fsync: str = "always"
    fsync_records: int | None = None
    fsync_ms: int | None = None
    compression: str = "none"
    compression_level: int = 3
    segment_bytes: int = 64 * MiB
    segment_ms: int | None = None
    index_interval_bytes: int = 4 * KiB
    max_record_bytes: int = 8 * MiB
    write_buffer_bytes: int = 0
    retention_ms: int | None = None
    retention_bytes: int | None = None
    cleanup_policy: str = "delete"
    delete_retention_ms: int = 24 * 3600 * 1000
    retention_check_interval_s: float = 60.0
    compaction_buffer_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        _check_choice("fsync", self.fsync, FSYNC_POLICIES)
        _check_int("fsync_records", self.fsync_records, minimum=1, optional=True)
        _check_int("fsync_ms", self.fsync_ms, minimum=1, optional=True)
        if self.fsync == "every":
            if self.fsync_records is None and self.fsync_ms is None:
                raise ConfigError(
                    "fsync='every' needs fsync_records=N and/or fsync_ms=M "
                    "(valid fsync policies: 'always', 'every', 'never')"
                )
        elif self.fsync_records is not None or self.fsync_ms is not None:
            raise ConfigError(
                f"fsync_records/fsync_ms only apply with fsync='every' (got fsync={self.fsync!r})"
            )
        _check_choice("compression", self.compression, COMPRESSIONS)
        _check_int("compression_level", self.compression_level, minimum=-7, maximum=22)
        _check_int("segment_bytes", self.segment_bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
        _check_int("segment_ms", self.segment_ms, minimum=1, optional=True)
        _check_int("index_interval_bytes", self.index_interval_bytes, 1, MAX_SEGMENT_BYTES)
        _check_int("max_record_bytes", self.max_record_bytes, 128, MAX_BATCH_BYTES)
        _check_int("write_buffer_bytes", self.write_buffer_bytes, 0, 64 * MiB)
        _check_int("retention_ms", self.retention_ms, minimum=0, optional=True)
        _check_int("retention_bytes", self.retention_bytes, minimum=0, optional=True)
        _check_choice("cleanup_policy", self.cleanup_policy, CLEANUP_POLICIES)
        _check_int("delete_retention_ms", self.delete_retention_ms, minimum=0)
        interval = self.retention_check_interval_s
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ConfigError(f"retention_check_interval_s must be a number of seconds >= 0 "
                              f"(got {interval!r})")
        _check_int("compaction_buffer_bytes", self.compaction_buffer_bytes, 1024, 1 << 40)
        if self.write_buffer_bytes and self.fsync == "always":
            raise ConfigError(
                "write_buffer_bytes needs fsync='never' or 'every': with fsync='always' every "
                "append is written and synced before it returns")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base: "LogConfig | None" = None) -> "LogConfig":
        """Build a config from keyword options, rejecting unknown names with the valid list."""
        valid = cls.option_names()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(valid)}"
            )
        if base is None:
            return cls(**options)
        return dataclasses.replace(base, **options)

    def settings(self) -> dict[str, Any]:
        """The shaping settings (:data:`SHAPING_SETTINGS`) of this config."""
        return {name: getattr(self, name) for name in SHAPING_SETTINGS}

    def with_stored(self, stored: Mapping[str, Any], passed: Mapping[str, Any],
                    where: str) -> "LogConfig":
        """This config (built from the options ``passed`` at open) with the shaping settings
        ``stored`` with the log applied. A passed shaping setting that differs from the stored
        one is a :class:`ConfigError` naming both and ``configure``."""
        for name, value in stored.items():
            if name in passed and passed[name] != value:
                raise ConfigError(
                    f"{where} stores {name}={value!r}; it was opened with {name}="
                    f"{passed[name]!r}. Open it without {name} (the stored value applies) or "
                    f"change it deliberately with configure({name}=...) (`logstore config`)")
        return self.replace(**{k: v for k, v in stored.items() if k in SHAPING_SETTINGS})

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def has_cleanup(self) -> bool:
        return (self.retention_ms is not None or self.retention_bytes is not None
                or self.compacted)

    def replace(self, **options: Any) -> "LogConfig":
        return self.from_options(options, base=self)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))} (got {value!r})"
        )


def _check_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise ConfigError(f"{name} must be {kind} (got {value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum} (got {value})")
