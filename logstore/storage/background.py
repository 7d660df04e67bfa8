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

from ..errors import LogClosedError, StorageError

if TYPE_CHECKING:
    from ..config import LogConfig
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


class Threads:
    """A log's background threads, started when its settings ask for them (at open and after
    ``configure``), stopped at close. A pass that finds the log closed or poisoned
    (LogClosedError, StorageError) ends its thread."""

    def __init__(self, path: str):
        self.path = path
        self.stop_event = threading.Event()
        self.cleaner: Optional[threading.Thread] = None
        self.flusher: Optional[threading.Thread] = None

    def start(self, cfg: "LogConfig", cleanup: Callable[[], None],
              flush: Callable[[], None]) -> None:
        """The retention/compaction pass and the fsync_ms flusher, when configured and not yet
        running."""
        ends = (LogClosedError, StorageError)
        if self.cleaner is None and cfg.has_cleanup and cfg.retention_check_interval_s > 0:
            self.cleaner = start_periodic(f"logstore-cleaner:{self.path}",
                                          cfg.retention_check_interval_s, cleanup,
                                          self.stop_event, ends)
        if self.flusher is None and cfg.fsync == "every" and cfg.fsync_ms:
            self.flusher = start_periodic(f"logstore-flusher:{self.path}", cfg.fsync_ms / 1000.0,
                                          flush, self.stop_event, ends)

    def signal(self) -> None:
        """Tell the threads to stop (without waiting)."""
        self.stop_event.set()

    def stop(self) -> None:
        """Stop the threads and wait for them (unless called from one of them)."""
        self.stop_event.set()
        join(self.flusher)
        join(self.cleaner)


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
