"""logstore: a durable, segmented, append-only log storage engine.

    import logstore
    with logstore.Log.open("data/orders") as log:
        off = log.append(b"hello", key=b"user-1")
        assert log.get(off).value == b"hello"

See README.md for the API, the durability guarantees and ``segments/FORMAT.md`` for the format.
"""

from . import errors as _errors
from .config import LogConfig
from .errors import (
    AckError,
    QueueFullError,
    ConfigError,
    ForkedProcessError,
    CorruptLogError,
    LogClosedError,
    LogLockedError,
    LogstoreError,
    MissingKeyError,
    NotALogError,
    NotAssignedError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    RecordRemovedError,
    RecordTooLargeError,
    StorageError,
    UnknownTopicError,
    UnsupportedFormatError,
    MirrorError,
    RemoteError,
    CircuitOpenError,
)
from .record import Record
from .storage.log import Log
from .version import __version__ as __version__
from .views.aio import AsyncStore
from .views.breaker import CircuitBreaker
from .views.durableasyncqueue import DurableAsyncQueue
from .views.durablequeue import DurableQueue, DurableSimpleQueue
from .views.prometheus import prometheus_text
from .views.rpc import Requester
from .views.store import Store, Topic


def __getattr__(name: str):
    # logstore.JetStreamMirror without importing nats-py at `import logstore` time.
    if name == "JetStreamMirror":
        from . import mirror  # deliberate lazy import: nats-py is optional

        return mirror.JetStreamMirror
    raise AttributeError(f"module 'logstore' has no attribute {name!r}")

__all__ = [
    "Log",
    "LogConfig",
    "Record",
    "Store",
    "Topic",
    "DurableQueue",
    "DurableSimpleQueue",
    "DurableAsyncQueue",
    "AsyncStore",
    "CircuitBreaker",
    "Requester",
    "prometheus_text",
    *_errors.__all__,  # every public exception, listed once in logstore.errors
]
