"""Every public exception of logstore, in one place.

All of them derive from :class:`LogstoreError`, so ``except logstore.LogstoreError`` catches
anything the engine raises on purpose. Argument-type mistakes raise the built-in ``TypeError`` /
``ValueError`` (Python convention); everything about the log itself raises one of these.
"""

from __future__ import annotations


class LogstoreError(Exception):
    """Base class of every error logstore raises on purpose."""


class ConfigError(LogstoreError, ValueError):
    """An unknown option, or an option with an invalid value. The message lists the valid ones."""


class LogLockedError(LogstoreError):
    """Another writer (in this or another process) holds the log's lock."""


class LogClosedError(LogstoreError):
    """The log, store or view was closed; open it again to use it."""


class ReadOnlyError(LogstoreError):
    """A write was attempted on a log opened with ``readonly=True``."""


class NotALogError(LogstoreError):
    """The path is missing (for a read-only open) or is a non-empty directory that is not a log."""


class UnsupportedFormatError(LogstoreError):
    """The log (or a batch in it) was written by a newer, unknown format version."""


class OffsetOutOfRangeError(LogstoreError, IndexError):
    """The offset is below ``start_offset`` or at/after ``end_offset``."""


class RecordRemovedError(OffsetOutOfRangeError):
    """The offset lies inside the log but its record was removed by compaction."""


class RecordTooLargeError(LogstoreError, ValueError):
    """A record or batch is larger than ``max_record_bytes``. Nothing was written."""


class CorruptLogError(LogstoreError):
    """Stored bytes failed validation (CRC, bounds, structure).

    ``path`` and ``position`` name the file and byte position of the first invalid byte found;
    ``reason`` says what was wrong. Corrupt data is never returned as records.
    """

    def __init__(self, reason: str, path: str | None = None, position: int | None = None):
        self.reason = reason
        self.path = path
        self.position = position
        where = ""
        if path is not None:
            where = f" in {path}"
            if position is not None:
                where += f" at byte {position}"
        super().__init__(f"corrupt log data{where}: {reason}")


class StorageError(LogstoreError, OSError):
    """A write or fsync to the underlying file system failed.

    After a failed *write* the partial batch has been removed and the log stays usable (the
    append that failed wrote nothing). After a failed *fsync* the log refuses every further write
    with this error until it is closed and reopened: the kernel may already have dropped the
    unsynced pages, so nothing written since the last good fsync can be called durable
    ("fsyncgate").
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        errno_ = getattr(cause, "errno", None)
        super().__init__(errno_, message) if errno_ is not None else super().__init__(message)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        return self.message




class AckError(LogstoreError):
    """ack/nack/extend of a message that is unknown, already acked, or whose delivery expired.

    The queue's state is unchanged; an expired message will be (or was) delivered again.
    """


class QueueFullError(LogstoreError):
    """``put`` on a queue at ``max_depth`` with ``overflow="reject"`` (or a blocking put timed out)."""


class UnknownTopicError(LogstoreError, KeyError):
    """No such topic (read-only store, ``get_topic``) or no such partition in a topic."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class MissingKeyError(LogstoreError, ValueError):
    """A record without a key in a compacted log (``cleanup_policy`` includes ``"compact"``)."""


class NotAssignedError(LogstoreError):
    """A commit for a partition whose lease this consumer group member does not hold: another
    member (in this or another process) reads it now. Nothing was committed."""


class ForkedProcessError(LogstoreError, RuntimeError):
    """An object opened in one process was used in a forked child (``os.fork``, a
    ``multiprocessing`` worker started by fork). Logs, stores and queues belong to the process
    that opened them: open them again in the child."""


class MirrorError(LogstoreError):
    """The mirror cannot go on (e.g. a record larger than the server's max_payload, or
    ``run_once`` could not reach the cluster). ``status()['last_error']`` has the same text."""


class RemoteError(LogstoreError):
    """Request-reply: the responder's handler raised. The message is the error reply's
    ``x-rpc-error`` header (``"<type>: <message>"``); ``reply`` is the reply record."""

    def __init__(self, message: str, reply: object = None):
        super().__init__(message)
        self.reply = reply


class CircuitOpenError(LogstoreError):
    """A circuit breaker refused the call: it is open (or half-open with its probe running)."""


__all__ = [
    "LogstoreError",
    "ConfigError",
    "LogLockedError",
    "LogClosedError",
    "ReadOnlyError",
    "NotALogError",
    "UnsupportedFormatError",
    "OffsetOutOfRangeError",
    "RecordRemovedError",
    "RecordTooLargeError",
    "CorruptLogError",
    "StorageError",
    "AckError",
    "QueueFullError",
    "UnknownTopicError",
    "MissingKeyError",
    "NotAssignedError",
    "ForkedProcessError",
    "MirrorError",
    "RemoteError",
    "CircuitOpenError",
]
