"""Durable drop-in replacements for :class:`queue.Queue` and :class:`queue.SimpleQueue`.

    from logstore import DurableQueue

    with DurableQueue("data/jobs", maxsize=1000) as q:     # creates the directory if needed
        q.put({"job": 1})
        item = q.get()
        ...                                               # do the work
        q.task_done()                                     # now it is durably done

The items live in a :class:`~logstore.Store` at ``path`` (one topic plus one work queue, see
:mod:`logstore.workqueue`), so they survive the process: an item that was put is delivered after
a crash or a restart until it is *done*, and an item that is done is never delivered again.

When is an item done?

* :class:`DurableQueue`: when :meth:`~DurableQueue.task_done` is called for it. ``task_done()``
  takes no argument, so it marks done **the oldest not-yet-done item got by the calling thread**
  or, if that thread holds none, **the oldest not-yet-done item got by any thread** ("oldest" =
  earliest put). With the usual worker loop (``get`` ... ``task_done`` in the same thread) that is
  exactly the item the worker just processed. Items that were got but not done when the process
  died (or when :meth:`close` was called) are delivered again, in their original order, after
  the queue is reopened (at-least-once). Like the stdlib, ``task_done()`` may also be called for
  an item that has not been got yet (no item is held by anyone): the next item handed out by
  ``get`` is then marked done as it is handed out (this "credit" is not durable: after a crash
  that item is delivered again).
* :class:`DurableSimpleQueue` (no ``task_done``): when :meth:`~DurableSimpleQueue.get` returns it
  (the item is marked done, durably, just before ``get`` returns: at-most-once past that point;
  a crash *inside* ``get`` redelivers it).

``put`` returns, and ``task_done`` / ``DurableSimpleQueue.get`` mark the item done, under the
store's ``fsync`` policy: with ``fsync="always"`` (default) each is on stable storage when the
call returns (survives power loss); with ``"never"`` it survives a process crash (kill -9) but not
an OS crash. ``DurableQueue.get`` also records the delivery (same policy).

Semantics follow CPython's ``queue.Queue`` exactly (``Full`` / ``Empty`` from the stdlib
:mod:`queue` module, ``ValueError`` for a negative ``timeout`` -- for ``put`` only when the queue
is bounded, as in CPython -- and for too many ``task_done()`` calls, a writable ``maxsize`` whose
shrinking applies to the next ``put``, 0 or negative = unbounded). ``qsize()`` counts items put and
not yet got (items got and not yet done count in ``unfinished_tasks`` and hold up ``join()``).
``maxsize`` is not stored: pass it at every open (reopening with fewer slots than stored items
makes the queue full until it drains).

Differences from the stdlib: :meth:`close` (and ``with``); any use of a closed queue raises
:class:`~logstore.LogClosedError`, and threads blocked in ``get``/``put``/``join`` wake up with
that error when the queue is closed. Storage errors (:class:`~logstore.StorageError`) leave the
queue consistent: a failed ``put`` stored nothing, a failed ``get`` leaves the item at the head of
the queue, a failed ``task_done`` puts the item back at the head of the queue (not done: it is
delivered again, and ``unfinished_tasks`` still counts it).
``DurableSimpleQueue`` is not reentrant (do not ``put`` from ``__del__`` or signal handlers).

One process at a time: the directory is locked (``flock``) while open; a second open, in this or
another process, raises :class:`~logstore.LogLockedError`. The lock is released by the kernel if
the holder dies.

Serializers: items are pickled by default (:data:`PICKLE`), so any picklable object can be put.
**Never open a queue whose files could have been written by someone you do not trust with the
pickle serializer**: unpickling runs arbitrary code. :data:`JSON` (UTF-8 JSON; tuples come back
as lists) and :data:`BYTES` (bytes-like in, ``bytes`` out, no encoding) are safe alternatives;
any object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj`` works. An item whose encoding
fails is not stored (the error propagates from ``put``); an item whose decoding fails stays at the
head of the queue and the error propagates from ``get``.

Disk space: the files are append-only; the store's cleanup thread (every
``retention_check_interval_s``, 60 s by default, a store option) deletes each whole segment
(``segment_bytes``, 64 MiB by default) whose items are all done, and trims the delivery/ack
records below the last checkpoint. Items not yet done are never deleted, whatever the store's
``retention_ms`` / ``retention_bytes``.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import pickle
import threading
from collections import deque
from queue import Empty, Full
from time import monotonic as _time
from typing import Any, Deque, Dict, Optional, Tuple

from .. import process
from ..errors import AckError, ForkedProcessError, LogClosedError, LogstoreError
from .store import Store

__all__ = ["DurableQueue", "DurableSimpleQueue", "PICKLE", "JSON", "BYTES", "Empty", "Full"]

def _owned(method: Any) -> Any:
    """Refuse the call in a forked child before any lock is taken (a thread of the parent may
    have held one at the fork)."""
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._forked:
            self._check_closed()
        return method(self, *args, **kwargs)
    return call


#: Name of the topic / work queue inside the store that holds the items.
QUEUE_NAME = "items"
# Items got and not done must never be redelivered while the process lives: a visibility timeout
# of ten years and a delivery limit nobody reaches (the event log stores counts as u32).
_FOREVER_S = 10 * 365 * 24 * 3600.0
_MAX_DELIVERIES = 2 ** 31 - 1
_POLL_S = 0.5  # only while fetching a reserved item (normally immediate): notices close()


# --------------------------------------------------------------------------- serializers
class PickleSerializer:
    """``pickle`` at ``pickle.DEFAULT_PROTOCOL`` (readable by every supported Python).

    Unpickling runs arbitrary code: use it only for queues whose files you trust."""

    def __init__(self, protocol: int = pickle.DEFAULT_PROTOCOL):
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)

    def __repr__(self) -> str:
        return f"<logstore.durablequeue.PickleSerializer protocol={self.protocol}>"


class JSONSerializer:
    """Compact UTF-8 JSON. Only JSON types round-trip (tuples come back as lists, dict keys as
    strings)."""

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(bytes(data).decode("utf-8"))

    def __repr__(self) -> str:
        return "<logstore.durablequeue.JSON>"


class BytesSerializer:
    """Pass-through: items must be bytes-like (``bytes``, ``bytearray``, ``memoryview``) and come
    back as ``bytes``."""

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise TypeError(f"the BYTES serializer takes bytes-like items, got "
                            f"{type(obj).__name__}" + (" (encode it first)"
                                                       if isinstance(obj, str) else ""))
        return bytes(obj)

    def loads(self, data: bytes) -> bytes:
        return bytes(data)

    def __repr__(self) -> str:
        return "<logstore.durablequeue.BYTES>"


#: The default serializer: any picklable object. Never use it with untrusted files.
PICKLE = PickleSerializer()
#: JSON-serializable items (dict, list, str, int, float, bool, None).
JSON = JSONSerializer()
#: bytes-like items stored as they are.
BYTES = BytesSerializer()


def _check_serializer(serializer: Any) -> Any:
    if not (callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))):
        raise TypeError(f"serializer must have dumps(obj) -> bytes and loads(bytes) -> obj, "
                        f"got {serializer!r}")
    return serializer


# --------------------------------------------------------------------------- shared machinery
class _DurableBase:
    """Store + work queue, the reservation protocol, closing. Not public."""

    _kind = "durable queue"

    def __init__(self, path: Any, serializer: Any, fsync: Any, store_options: Dict[str, Any]):
        self._serializer = _check_serializer(serializer)
        options = dict(store_options)
        options.setdefault("dedup_window_s", 0)  # we never publish with msg_id: skip the scan
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self._idle = threading.Condition(self.mutex)  # close() waits for in-progress I/O
        self._closed = True  # until fully opened
        self._forked = False
        self._store = Store.open(path, fsync=fsync, **options)
        try:
            self._wq = self._store.queue(
                QUEUE_NAME, visibility_timeout=_FOREVER_S, max_deliveries=_MAX_DELIVERIES,
                dead_letter=None, partitions=1)
            # Everything not done is ready again after an open (in-flight items were released).
            self._qsize = len(self._wq)
        except BaseException:
            self._store.close()
            raise
        self.path = self._store.root
        self._active = 0  # operations doing I/O outside the mutex
        self._closed = False
        self._forked = False
        self._pid = os.getpid()
        process.register(self)

    def mark_forked(self) -> None:
        """(In a forked child, by :mod:`logstore.process`) Refuse every call from now on (no
        lock is taken: a thread of the parent may have held one at the fork)."""
        self._forked = True
        self._closed = True

    # ------------------------------------------------------------------ helpers
    def _check_closed(self) -> None:
        if self._closed:
            if getattr(self, "_forked", False):
                raise ForkedProcessError(
                    f"{self._kind} {self.path} was opened in process {self._pid}; this is a "
                    f"forked child (pid {os.getpid()}): open it again in this process")
            raise LogClosedError(f"{self._kind} {getattr(self, 'path', '?')} is closed")

    def _dumps(self, item: Any) -> bytes:
        data = self._serializer.dumps(item)
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"serializer.dumps() must return bytes, got "
                                f"{type(data).__name__}")
            data = bytes(data)
        return data

    def _leave(self) -> None:
        """End of an I/O section (call with the mutex held)."""
        self._active -= 1
        if self._closed and not self._active:
            self._idle.notify_all()

    def _reserve_get(self, block: bool, timeout: Optional[float]) -> Optional[float]:
        """Wait (stdlib rules) for an item and reserve it. Returns the deadline, if any."""
        with self.not_empty:
            self._check_closed()
            endtime = None
            if not block:
                if not self._qsize:
                    raise Empty
                endtime = _time()
            elif timeout is None:
                while not self._qsize:
                    self.not_empty.wait()
                    self._check_closed()
            elif timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            else:
                endtime = _time() + timeout
                while not self._qsize:
                    remaining = endtime - _time()
                    if remaining <= 0.0:
                        raise Empty
                    self.not_empty.wait(remaining)
                    self._check_closed()
            self._qsize -= 1
            self._active += 1
            self._reserved()
            return endtime

    def _reserved(self) -> None:
        """Hook: an item left the queue (mutex held)."""

    def _get_item(self, block: bool, timeout: Optional[float]) -> Any:
        """Reserve an item, fetch and decode it, call ``self._finish(msg)``; on any failure put
        the item back at the head of the queue."""
        endtime = self._reserve_get(block, timeout)
        msg = None
        try:
            while True:  # the reserved item is visible in the work queue: normally one pass
                wait = _POLL_S if endtime is None else max(0.0, min(_POLL_S, endtime - _time()))
                msg = self._wq.get(timeout=wait)
                if msg is not None:
                    break
                self._check_closed()
                if endtime is not None and _time() >= endtime:
                    raise Empty
            item = self._serializer.loads(msg.value)
            msg.value = msg.headers = None  # kept until done: only what ack() needs
            self._finish(msg)
            return item
        except BaseException:
            if msg is not None:
                # Back to the head of the queue (lowest offset first). If the nack fails, or a
                # failed ack already undid the claim, the work queue has made it ready anyway.
                try:
                    self._wq.nack(msg, delay=0)
                except (AckError, LogstoreError):
                    pass
            with self.mutex:
                self._qsize += 1
                self.not_empty.notify()
            raise
        finally:
            with self.mutex:
                self._leave()

    def _finish(self, msg: Any) -> None:
        raise NotImplementedError

    def _wake_all(self) -> None:
        self.not_empty.notify_all()

    # ------------------------------------------------------------------ stdlib API (shared)
    @_owned
    def qsize(self) -> int:
        """Items put and not yet got."""
        with self.mutex:
            self._check_closed()
            return self._qsize

    def empty(self) -> bool:
        """True if no item is waiting to be got (as racy as the stdlib's)."""
        return not self.qsize()

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(False)

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every blocked ``get``/``put``/``join`` (they raise LogClosedError), wait for
        operations already doing I/O, and close the store (releasing the directory lock).
        Items got and not done are delivered again at the next open. Idempotent."""
        if getattr(self, "_forked", False):
            return  # a forked child's copy: nothing of the parent's is its to release
        with self.mutex:
            if self._closed:
                return
            self._closed = True
            self._wake_all()
            while self._active:
                self._idle.wait()
        process.unregister(self)
        self._store.close()

    def __enter__(self):
        self._check_closed()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"qsize={self._qsize}"
        return f"<logstore.{type(self).__name__} {getattr(self, 'path', '?')!r} {state}>"


# --------------------------------------------------------------------------- queue.Queue
class DurableQueue(_DurableBase):
    """A ``queue.Queue`` whose items are stored in the directory ``path``.

    ``DurableQueue(path, maxsize=0, serializer=PICKLE, fsync="always", **store_options)``:
    ``store_options`` go to :meth:`logstore.Store.open` (``compression``, ``segment_bytes``,
    ``max_record_bytes``, ``fsync_ms``...). See the module docstring for when an item is done.
    """

    _kind = "DurableQueue"

    def __init__(self, path: Any, maxsize: int = 0, serializer: Any = PICKLE,
                 fsync: str = "always", **store_options: Any):
        self._maxsize = operator.index(maxsize)
        super().__init__(path, serializer, fsync, store_options)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self._putting = 0  # puts holding a slot, writing
        self._unfinished = self._qsize
        self._acking = 0  # task_done() acks being written
        self._credits = 0  # task_done() calls made while no item was held
        # Items got and not done, per getting thread, each deque in put (offset) order.
        self._held: Dict[threading.Thread, Deque[Tuple[int, Any]]] = {}

    # ------------------------------------------------------------------ attributes
    @property
    def maxsize(self) -> int:
        """Upper bound on ``qsize()``; 0 or negative = unbounded. Writable: a smaller value
        applies from the next ``put``; a larger one wakes blocked ``put`` calls."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        value = operator.index(value)
        with self.mutex:
            self._maxsize = value
            self.not_full.notify_all()

    @property
    def unfinished_tasks(self) -> int:
        """Items put (or stored at open) and not yet marked done by ``task_done()``."""
        return self._unfinished

    # ------------------------------------------------------------------ queue.Queue API
    @_owned
    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Store ``item`` at the tail. Bounded queue: ``block=False`` raises ``queue.Full`` at
        once when full; otherwise wait (at most ``timeout`` seconds, then ``queue.Full``).
        Returns once the item is stored under the fsync policy."""
        data = self._dumps(item)
        with self.not_full:
            self._check_closed()
            if self._maxsize > 0:
                if not block:
                    if self._qsize + self._putting >= self._maxsize:
                        raise Full
                elif timeout is None:
                    while self._qsize + self._putting >= self._maxsize:
                        self.not_full.wait()
                        self._check_closed()
                elif timeout < 0:
                    raise ValueError("'timeout' must be a non-negative number")
                else:
                    endtime = _time() + timeout
                    while self._qsize + self._putting >= self._maxsize:
                        remaining = endtime - _time()
                        if remaining <= 0.0:
                            raise Full
                        self.not_full.wait(remaining)
                        self._check_closed()
            self._putting += 1
            self._active += 1
        stored = False
        try:
            self._wq.put(data)
            stored = True
        finally:
            with self.mutex:
                self._putting -= 1
                if stored:
                    self._qsize += 1
                    self._unfinished += 1
                    self.not_empty.notify()
                else:
                    self.not_full.notify()
                self._leave()

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, False)

    @_owned
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the item at the head. ``block=False`` raises ``queue.Empty`` at once
        when empty; otherwise wait (at most ``timeout`` seconds, then ``queue.Empty``). The item
        is delivered again after a crash or reopen until ``task_done()`` is called for it."""
        return self._get_item(block, timeout)

    def _reserved(self) -> None:
        self.not_full.notify()

    def _finish(self, msg: Any) -> None:
        with self.mutex:
            if not self._credits:
                self._hold(threading.current_thread(), msg)
                return
            self._credits -= 1  # task_done() already called for this item: done now
        try:
            self._wq.ack(msg)
        except BaseException:
            with self.mutex:
                self._credits += 1
            raise

    def _hold(self, owner: threading.Thread, msg: Any) -> None:
        dq = self._held.get(owner)
        if dq is None:
            dq = self._held[owner] = deque()
        off = msg.offset
        if not dq or dq[-1][0] < off:
            dq.append((off, msg))
            return
        i = 0
        while dq[i][0] < off:
            i += 1
        dq.insert(i, (off, msg))

    def _pick(self) -> Optional[Tuple[threading.Thread, Any]]:
        """The item task_done() marks: the calling thread's oldest, else the oldest held."""
        owner = threading.current_thread()
        dq = self._held.get(owner)
        if not dq:
            if not self._held:
                return None
            owner = min(self._held, key=lambda t: self._held[t][0][0])
            dq = self._held[owner]
        _, msg = dq.popleft()
        if not dq:
            del self._held[owner]
        return owner, msg

    def _done_one(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self.all_tasks_done.notify_all()

    @_owned
    def task_done(self) -> None:
        """Mark one item done, durably: the oldest item got by this thread and not yet done, or
        if this thread holds none, the oldest one got by any thread. ``ValueError`` if called
        more times than items were put. Returns after the mark is stored (fsync policy)."""
        with self.mutex:
            self._check_closed()
            if self._unfinished - self._acking <= 0:
                raise ValueError("task_done() called too many times")
            picked = self._pick()
            if picked is None:  # nothing held: the next item got is done as it is handed out
                self._credits += 1
                self._done_one()
                return
            self._acking += 1
            self._active += 1
        _, msg = picked
        acked = False
        try:
            self._wq.ack(msg)
            acked = True
        finally:
            with self.mutex:
                self._acking -= 1
                if acked:
                    self._done_one()
                else:  # the work queue made it ready again: it is back at the head, not done
                    self._qsize += 1
                    self.not_empty.notify()
                self._leave()

    @_owned
    def join(self) -> None:
        """Block until every item put (or stored at open) has been marked done."""
        with self.all_tasks_done:
            self._check_closed()
            while self._unfinished > 0:
                self.all_tasks_done.wait()
                self._check_closed()

    def full(self) -> bool:
        """True if ``qsize() >= maxsize > 0`` (as racy as the stdlib's)."""
        with self.mutex:
            self._check_closed()
            return 0 < self._maxsize <= self._qsize

    def _wake_all(self) -> None:
        self.not_empty.notify_all()
        self.not_full.notify_all()
        self.all_tasks_done.notify_all()


# --------------------------------------------------------------------------- queue.SimpleQueue
class DurableSimpleQueue(_DurableBase):
    """A ``queue.SimpleQueue`` (unbounded, no ``task_done``/``join``) stored in ``path``.

    An item is done when ``get`` returns it: it is marked done, under the fsync policy, just
    before ``get`` returns, so it is never delivered again, even if the process dies a moment
    later. A crash while ``get`` is running delivers it again at the next open.
    """

    _kind = "DurableSimpleQueue"

    def __init__(self, path: Any, serializer: Any = PICKLE, fsync: str = "always",
                 **store_options: Any):
        super().__init__(path, serializer, fsync, store_options)

    @_owned
    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Store ``item`` at the tail. Never blocks; ``block`` and ``timeout`` are ignored (they
        exist for compatibility with ``queue.Queue.put``, as in the stdlib)."""
        data = self._dumps(item)
        with self.mutex:
            self._check_closed()
            self._active += 1
        stored = False
        try:
            self._wq.put(data)
            stored = True
        finally:
            with self.mutex:
                if stored:
                    self._qsize += 1
                    self.not_empty.notify()
                self._leave()

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, False)

    @_owned
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the item at the head, marking it done (durably) before returning.
        ``block=False`` raises ``queue.Empty`` at once when empty; otherwise wait (at most
        ``timeout`` seconds, then ``queue.Empty``)."""
        return self._get_item(block, timeout)

    def _finish(self, msg: Any) -> None:
        self._wq.ack(msg)
