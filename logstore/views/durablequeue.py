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

One process at a time, unless every process opens it with ``shared=True``: the directory is
locked (``flock``) while open; a second open, in this or another process, raises
:class:`~logstore.LogLockedError`. The lock is released by the kernel if the holder dies.

``shared=True`` (every process): producers and consumers in several processes share the queue
(a producer process and a pool of worker processes, each opening the queue itself). Each item is
handed to one ``get`` at a time across processes; ``qsize()``/``empty()``/``full()`` count the
items of every process (read from the queue's state, as racy as the stdlib's); ``maxsize`` is
checked against that count. Items got and not yet done are leased for ``lease_s`` seconds and
the lease is renewed by a thread of the holding process while it lives: an item got by a process
that dies is delivered again ``lease_s`` seconds later at most (at once if the queue is reopened
by a process that finds no other one sharing it). ``task_done()`` marks done an item got in the
calling process (ValueError if it holds none: there is no credit for items not yet got), and
``join()`` waits until every item put *by this process* is done, by whichever process;
``unfinished_tasks`` counts those.

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
import logging
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

logger = logging.getLogger("logstore")

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
_SHARED_POLL_S = 0.05  # (shared) how often a blocked get/put/join looks at the other processes


# --------------------------------------------------------------------------- serializers

def encode_item(serializer: Any, item: Any) -> bytes:
    """``serializer.dumps(item)`` as bytes; TypeError if it returned something else."""
    data = serializer.dumps(item)
    if type(data) is not bytes:
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"serializer.dumps() must return bytes, got {type(data).__name__}")
        data = bytes(data)
    return data

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

    def __init__(self, path: Any, serializer: Any, fsync: Any, store_options: Dict[str, Any],
                 shared: bool = False, lease_s: float = 30.0):
        self._serializer = _check_serializer(serializer)
        if not isinstance(lease_s, (int, float)) or isinstance(lease_s, bool) or lease_s <= 0:
            raise ValueError(f"lease_s must be a number of seconds > 0, got {lease_s!r}")
        options = dict(store_options)
        options.setdefault("dedup_window_s", 0)  # we never publish with msg_id: skip the scan
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self._idle = threading.Condition(self.mutex)  # close() waits for in-progress I/O
        self._closed = True  # until fully opened
        self._forked = False
        self._shared = shared
        self._lease_s = float(lease_s)
        self._reserving = 0  # (shared) gets that reserved an item and are fetching it
        self._store = Store.open(path, fsync=fsync, shared=shared, **options)
        try:
            self._wq = self._store.queue(
                QUEUE_NAME, visibility_timeout=self._lease_s if shared else _FOREVER_S,
                max_deliveries=_MAX_DELIVERIES, dead_letter=None, partitions=1)
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
        return encode_item(self._serializer, item)

    def _available(self) -> int:
        """(mutex held) Items put and not yet got: this object's count, or (shared) the
        queue's, across processes, less the gets of this process fetching one."""
        if not self._shared:
            return self._qsize
        return max(0, self._wq.pending() - self._reserving)

    def _wait(self, cond: threading.Condition, remaining: Optional[float]) -> None:
        """(mutex held) Wait for a wake-up; a shared queue also looks again every 50 ms (the
        other processes' puts and gets wake nobody here)."""
        if self._shared:
            remaining = _SHARED_POLL_S if remaining is None else min(remaining, _SHARED_POLL_S)
        cond.wait(remaining)

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
                if not self._available():
                    raise Empty
                endtime = _time()
            elif timeout is None:
                while not self._available():
                    self._wait(self.not_empty, None)
                    self._check_closed()
            elif timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            else:
                endtime = _time() + timeout
                while not self._available():
                    remaining = endtime - _time()
                    if remaining <= 0.0:
                        raise Empty
                    self._wait(self.not_empty, remaining)
                    self._check_closed()
            if self._shared:
                self._reserving += 1
            else:
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
                if not self._shared:
                    self._qsize += 1
                self.not_empty.notify()
            raise
        finally:
            with self.mutex:
                if self._shared:
                    self._reserving -= 1
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
            return self._available()

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
        self._stop_renewing()
        process.unregister(self)
        self._store.close()

    def _stop_renewing(self) -> None:
        """Hook: stop background work before the store closes."""

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

    ``DurableQueue(path, maxsize=0, serializer=PICKLE, fsync="always", shared=False,
    lease_s=30.0, **store_options)``: ``store_options`` go to :meth:`logstore.Store.open`
    (``compression``, ``segment_bytes``, ``max_record_bytes``, ``fsync_ms``...). ``shared``:
    one of several processes using the queue (see the module docstring). See the module
    docstring for when an item is done.
    """

    _kind = "DurableQueue"

    def __init__(self, path: Any, maxsize: int = 0, serializer: Any = PICKLE,
                 fsync: str = "always", *, shared: bool = False, lease_s: float = 30.0,
                 **store_options: Any):
        self._maxsize = operator.index(maxsize)
        super().__init__(path, serializer, fsync, store_options, shared, lease_s)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self._putting = 0  # puts holding a slot, writing
        self._unfinished = 0 if shared else self._qsize
        self._acking = 0  # task_done() acks being written
        self._credits = 0  # task_done() calls made while no item was held
        # Items got and not done, per getting thread, each deque in put (offset) order.
        self._held: Dict[threading.Thread, Deque[Tuple[int, Any]]] = {}
        self._mine: Deque[str] = deque()  # (shared) ids of items put here, not known done
        self._renewer: Optional[threading.Thread] = None
        self._renew_stop = threading.Event()
        if shared:
            self._renewer = threading.Thread(target=self._renew_leases, daemon=True,
                                             name=f"logstore-durablequeue-leases:{self.path}")
            self._renewer.start()

    def _renew_leases(self) -> None:
        """(shared) Keep the leases of the items this process holds while it lives: a dead
        process's items come back after ``lease_s``."""
        while not self._renew_stop.wait(self._lease_s / 3):
            with self.mutex:
                held = [msg for dq in self._held.values() for _, msg in dq]
            for msg in held:
                try:
                    self._wq.extend(msg, self._lease_s)
                except AckError:
                    pass  # done meanwhile, or expired: task_done() will say so
                except LogstoreError:
                    if self._renew_stop.is_set():
                        return
                    logger.warning("renewing the lease of item %s of %s failed", msg.id,
                                   self.path, exc_info=True)

    def _stop_renewing(self) -> None:
        self._renew_stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()

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
        """Items put (or stored at open) and not yet marked done by ``task_done()``; with
        ``shared=True``, items put by this process and not yet done by any process."""
        if self._shared:
            with self.mutex:
                self._check_closed()
                return self._unfinished_shared()
        return self._unfinished

    def _unfinished_shared(self) -> int:
        """(mutex held) Forget the items of this process that are done; count the rest."""
        if self._mine:
            self._mine = deque(self._wq.not_done(self._mine))
        return len(self._mine)

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
                    if self._available() + self._putting >= self._maxsize:
                        raise Full
                elif timeout is None:
                    while self._available() + self._putting >= self._maxsize:
                        self._wait(self.not_full, None)
                        self._check_closed()
                elif timeout < 0:
                    raise ValueError("'timeout' must be a non-negative number")
                else:
                    endtime = _time() + timeout
                    while self._available() + self._putting >= self._maxsize:
                        remaining = endtime - _time()
                        if remaining <= 0.0:
                            raise Full
                        self._wait(self.not_full, remaining)
                        self._check_closed()
            self._putting += 1
            self._active += 1
        stored = None
        try:
            stored = self._wq.put(data)
        finally:
            with self.mutex:
                self._putting -= 1
                if stored is not None:
                    if self._shared:
                        self._mine.append(stored)
                    else:
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
        if not self._shared:  # (shared: join() counts this process's puts not yet done)
            self._unfinished -= 1
        if self._unfinished <= 0:
            self.all_tasks_done.notify_all()

    @_owned
    def task_done(self) -> None:
        """Mark one item done, durably: the oldest item got by this thread and not yet done, or
        if this thread holds none, the oldest one got by any thread. ``ValueError`` if called
        more times than items were put (``shared=True``: if this process holds no item got and
        not yet done). Returns after the mark is stored (fsync policy)."""
        with self.mutex:
            self._check_closed()
            if self._shared and not self._held:
                raise ValueError("task_done() called too many times: with shared=True it marks "
                                 "an item got in this process, and none is waiting for it")
            if self._unfinished - self._acking <= 0 and not self._shared:
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
                    if not self._shared:
                        self._qsize += 1
                    self.not_empty.notify()
                self._leave()

    @_owned
    def join(self) -> None:
        """Block until every item put (or stored at open) has been marked done."""
        with self.all_tasks_done:
            self._check_closed()
            if self._shared:
                while self._unfinished_shared() > 0:
                    self._wait(self.all_tasks_done, None)
                    self._check_closed()
                return
            while self._unfinished > 0:
                self.all_tasks_done.wait()
                self._check_closed()

    def full(self) -> bool:
        """True if ``qsize() >= maxsize > 0`` (as racy as the stdlib's)."""
        with self.mutex:
            self._check_closed()
            return 0 < self._maxsize <= self._available()

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

    def __init__(self, path: Any, serializer: Any = PICKLE, fsync: str = "always", *,
                 shared: bool = False, **store_options: Any):
        super().__init__(path, serializer, fsync, store_options, shared)

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
                    if not self._shared:
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
