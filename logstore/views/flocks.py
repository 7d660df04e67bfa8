"""Named cross-process locks of a shared store: an ``flock`` on a small file, taken by one
thread of a process at a time.

A store opened by several processes (``Store.open(..., shared=True)``) serialises a few
read-decide-write steps that span more than one log with these: creating a topic or a queue
(``<root>/.tlock``), publishing with a ``msg_id`` (``<topic>/.dlock``: the dedup window is
checked against what every process published), redriving dead letters (``<queue events>/.rlock``).
Appends to one log need none of them (each log has its own write lock). The kernel releases an
flock when its holder dies, so a killed process never leaves one held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from typing import Dict, Iterator

# Threads of one process take a lock in turn before its flock (an flock belongs to an open
# file, and every call opens the file again).
_threads: Dict[str, threading.Lock] = {}
_threads_guard = threading.Lock()


@contextlib.contextmanager
def held(path: str) -> Iterator[None]:
    """Hold the lock named by ``path`` (created if missing) against every other thread and
    process."""
    with _threads_guard:
        lock = _threads.setdefault(path, threading.Lock())
    with lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (releases the flock)
