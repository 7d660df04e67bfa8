"""A log's background threads: the periodic retention/compaction pass and the fsync_ms flusher.

Each is a daemon thread that runs a task every ``interval`` seconds until the log's stop event
is set (``close``); a task that raises one of ``stop_on`` ends its thread (the log was closed
or poisoned), any other exception is logged and the next round retries.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Type

if TYPE_CHECKING:
    from .segments import SegmentList

logger = logging.getLogger("logstore")


def start_periodic(name: str, interval: float, task: Callable[[], None],
                   stop: threading.Event,
                   stop_on: Tuple[Type[BaseException], ...]) -> threading.Thread:
    """Start a daemon thread running ``task()`` every ``interval`` seconds until ``stop``."""

    def loop() -> None:
        while not stop.wait(interval):
            try:
                task()
            except stop_on:
                return
            except Exception:  # keep the thread alive; the next round retries
                logger.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def join(thread: Optional[threading.Thread]) -> None:
    """Wait for a background thread (if any) that was told to stop, unless it is this one."""
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def write_buffer_out(segs: "SegmentList", lock: threading.Lock, pid: int) -> None:
    """(weakref.finalize of a log with a write buffer, at exit or when it is dropped unclosed)
    Write the buffered appends to the file, in the process that opened the log only."""
    if os.getpid() != pid or not lock.acquire(timeout=5):
        return
    try:
        if segs.items:
            segs.active.flush_pending()
    except Exception:  # (at exit or in a collector: nobody to raise to; recovery sees it)
        logger.warning("writing the buffered appends of %s at exit failed", segs.directory,
                       exc_info=True)
    finally:
        lock.release()
