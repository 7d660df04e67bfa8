"""Small helpers every layer uses: the clock, argument checks, OSError wrapping."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import numpy as np

from .errors import StorageError


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (record timestamps, retention)."""
    return time.time_ns() // 1_000_000


def check_offset(name: str, value: Any) -> int:
    """``value`` as an int offset argument; ``TypeError`` for anything that is not an integer
    (``bool`` included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :class:`StorageError` ("<what> failed:
    ..."), once, in one place (Kafka's ``maybeHandleIOException``). A ``StorageError`` (itself an
    ``OSError``) passes through untouched."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"{what} failed: {e}", e) from e
