"""The lock of a store covers the logs the store writes: its topic partitions, its offsets log
and its queues' event logs hold no lock file descriptor of their own.

A store of 10,000 partitions cannot hold 10,000 ``flock``-ed ``.lock`` descriptors (one per
partition, as a plain log's writer holds) under a 1,024-descriptor limit. Kafka locks a log
*directory* (``.lock`` of ``log.dirs``), not each partition; so does a store: its writer holds
``<root>/.lock``, and every log of the store it opens for writing is covered by it. This module
keeps, per process, which store roots are locked and which of their logs are open for writing:

* :func:`covering_root` says whether a directory is such a log (``<root>/topics/<t>/<p>``,
  ``<root>/internal/offsets``, ``<root>/internal/queues/<q>`` of a directory with
  ``store.meta``); group lease logs, processing changelogs and request inboxes are not: their
  lock is their purpose (any process may take them) and they keep their own.
* A ``DirectoryLock`` of such a log :func:`enter`-s here instead of locking the log's own
  ``.lock``: if this process holds the store's lock, the log is registered (a second writer of
  the same log in this process: ``LogLockedError``, as a second ``flock`` would be); if not (a
  log of a store opened directly with ``Log.open``), the store's lock is taken for as long as
  such logs are open, so that neither a store writer nor another direct writer, in any
  process, can write it meanwhile (``LogLockedError`` if one does).
* Every ``DirectoryLock`` taken on a directory reports it (:func:`root_locked`), so logs of a
  store whose root this process has locked know they are covered.

Shared writers (``shared=True``) keep their own per-log locks (their coordination needs them)
and take the store's lock in shared mode, so an exclusive store writer and shared writers of
its logs exclude each other. Diagnostics find a store log's writer from the store's lock
(``diagnostics.targets.writer_pid``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Callable, Dict, Optional

from ..errors import LogLockedError
from ..format.names import INTERNAL_DIR, LOCK_NAME, STORE_META, TOPICS_DIR

EXCLUSIVE = "exclusive"
SHARED = "shared"


class _Root:
    """A store root locked by this process: by a ``DirectoryLock`` of the root itself
    (``holders``) or, for logs opened directly, by this module (``fd``)."""

    def __init__(self, mode: str, fd: Optional[int] = None):
        self.mode = mode
        self.fd = fd
        self.holders = 0
        self.logs: Dict[str, int] = {}  # covered log directory -> writers open in this process


_roots: Dict[str, _Root] = {}
_mutex = threading.Lock()


def covering_root(directory: str) -> Optional[str]:
    """The store root whose lock covers the log ``directory``, or None (see the module
    docstring)."""
    d = os.path.abspath(directory)
    parent, name = os.path.split(d)
    grand, pname = os.path.split(parent)
    root: Optional[str] = None
    if name.isdigit() and os.path.basename(grand) == TOPICS_DIR:
        root = os.path.dirname(grand)
    elif name == "offsets" and pname == INTERNAL_DIR:
        root = grand
    elif pname == "queues" and os.path.basename(grand) == INTERNAL_DIR:
        root = os.path.dirname(grand)
    if root is not None and os.path.isfile(os.path.join(root, STORE_META)):
        return root
    return None


def root_locked(directory: str, mode: str) -> None:
    """A ``DirectoryLock`` of ``directory`` was taken in this process (it may be a store's)."""
    key = os.path.abspath(directory)
    with _mutex:
        r = _roots.get(key)
        if r is None:
            r = _roots[key] = _Root(mode)
        r.holders += 1


def root_released(directory: str) -> None:
    """A ``DirectoryLock`` of ``directory`` taken in this process was released."""
    key = os.path.abspath(directory)
    with _mutex:
        r = _roots.get(key)
        if r is None:
            return
        r.holders -= 1
        if r.holders <= 0 and not r.logs:
            del _roots[key]


def enter(directory: str, root: str, mode: str) -> Callable[[], None]:
    """Register log ``directory`` of the store ``root`` as open for writing in ``mode``
    (taking the store's lock if this process does not hold it); returns the function that
    unregisters it. ``LogLockedError`` if another writer has the store or the log open."""
    d = os.path.abspath(directory)
    key = os.path.abspath(root)
    with _mutex:
        r = _roots.get(key)
        if r is None:
            r = _Root(mode, _take(key, mode, d))
            _roots[key] = r
        elif r.mode != mode:
            raise LogLockedError(
                f"{d} is a log of the store {key}, which this process has open "
                f"{'with' if r.mode == SHARED else 'without'} shared=True; open the log the "
                f"same way, or readonly=True to read")
        elif mode == EXCLUSIVE and r.logs.get(d):
            raise LogLockedError(f"{d} is already open for writing by another writer in this "
                                 f"process (pid {os.getpid()}); open it with readonly=True to "
                                 f"read")
        r.logs[d] = r.logs.get(d, 0) + 1
    done = []

    def release() -> None:
        if done:
            return
        done.append(True)
        with _mutex:
            entry = _roots.get(key)
            if entry is None:
                return
            n = entry.logs.get(d, 0) - 1
            if n > 0:
                entry.logs[d] = n
            else:
                entry.logs.pop(d, None)
            if not entry.logs and entry.holders <= 0:
                del _roots[key]
                if entry.fd is not None:
                    os.close(entry.fd)  # (closing the descriptor releases its flock)

    return release


def _take(root: str, mode: str, log_dir: str) -> int:
    """Lock ``root``'s ``.lock`` for logs of it opened without the store."""
    fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT
                 | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise LogLockedError(
            f"{log_dir} is a log of the store {root}, which another writer has open "
            f"(the store's lock covers its logs); open it with readonly=True to read, or "
            f"write through the store") from None
    return fd


def holder_lock(directory: str) -> Optional[str]:
    """The ``.lock`` file whose ``flock`` stands for the writer of log ``directory``: the store
    root's for a log of a store, else its own."""
    root = covering_root(directory)
    return os.path.join(root if root is not None else directory, LOCK_NAME)
