"""``DurableAsyncQueue``: an :class:`asyncio.Queue` whose items live on disk.

    from logstore import DurableAsyncQueue

    async with DurableAsyncQueue("data/jobs", maxsize=1000) as q:
        await q.put({"job": 1})           # returns once stored (fsync="always")
        item = await q.get()
        ...                               # do the work
        q.task_done()                     # durably done once join() returns

The asyncio sibling of :class:`~logstore.DurableQueue` (the same directory layout: one work
queue in a :class:`~logstore.Store`, so a directory written by one can be opened by the other),
with the contract of :class:`asyncio.Queue` (CPython 3.11): ``put``/``get``/``join`` coroutines,
``put_nowait``/``get_nowait``/``task_done``, ``qsize``/``empty``/``full``/``maxsize``
(0 or negative = unbounded), ``asyncio.QueueFull``/``asyncio.QueueEmpty``, ``ValueError`` for
too many ``task_done()`` calls, FIFO among waiting getters and among waiting putters, and
cancellation that never loses an item (a ``get`` cancelled after it took an item gives it back
to the head of the queue; the scheduling code is CPython's, adapted).

Disk I/O and the loop: ``await put()`` and ``await get()`` do their I/O in the queue's own I/O
thread (one, so operations reach the disk in the order they were made) and await it: the event
loop keeps running during an fsync. ``put_nowait()`` and ``get_nowait()`` cannot await (they are
plain functions in the stdlib contract): they do their I/O in the calling thread, blocking the
loop for one write (and, for ``put_nowait`` under ``fsync="always"``, one fsync): prefer the
coroutines. ``task_done()`` returns at once and its done mark is written by the I/O thread: an
item counts as done, for ``join()`` and for ``unfinished_tasks``, once that mark is stored, so
**``await q.join()`` returns only when every item is durably done**. If the mark cannot be
stored (a disk error) the item goes back to the head of the queue (it is delivered again), the
error is logged on the ``logstore`` logger and counted in :attr:`DurableAsyncQueue.errors`.

When is an item done, and what survives a crash: as for ``DurableQueue`` (an item got and not
done when the process dies, or at close, is delivered again after reopening, in order;
``task_done()`` marks the oldest item got by the calling *task* that is not done, else the oldest
one got by any task). A ``put`` cancelled while its item is being written still stores it.

Not thread-safe (like :class:`asyncio.Queue`): use it from one event loop. ``close()`` (or
``await aclose()``, or ``async with``) wakes every waiting coroutine with LogClosedError.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from types import GenericAlias
from typing import Any, Deque, Dict, Optional, Tuple

from .. import process
from ..errors import AckError, ForkedProcessError, LogClosedError, LogstoreError
from .durablequeue import PICKLE, QUEUE_NAME, encode_item
from .store import Store

__all__ = ["DurableAsyncQueue"]
logger = logging.getLogger("logstore")

_FOREVER_S = 10 * 365 * 24 * 3600.0  # as DurableQueue: got items are never redelivered in-process
_MAX_DELIVERIES = 2 ** 31 - 1
_FETCH_SLICE_S = 0.5  # while fetching a reserved item (normally immediate): notices close()


def _wakeup_next(waiters: Deque["asyncio.Future[None]"]) -> None:
    """Wake up the first waiter that is not done (CPython's asyncio.Queue)."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            break


class DurableAsyncQueue:
    """``DurableAsyncQueue(path, maxsize=0, serializer=PICKLE, fsync="always",
    **store_options)``: see the module docstring. Opening reads the store (synchronously, once)."""

    __class_getitem__ = classmethod(GenericAlias)  # DurableAsyncQueue[int], like asyncio.Queue

    def __init__(self, path: Any, maxsize: int = 0, serializer: Any = PICKLE,
                 fsync: str = "always", **store_options: Any):
        if not (callable(getattr(serializer, "dumps", None))
                and callable(getattr(serializer, "loads", None))):
            raise TypeError(f"serializer must have dumps(obj) -> bytes and loads(bytes) -> obj, "
                            f"got {serializer!r}")
        self._maxsize = maxsize
        self._serializer = serializer
        self._closed = True  # until opened
        self._forked = False
        options = dict(store_options)
        options.setdefault("dedup_window_s", 0)
        self._store = Store.open(path, fsync=fsync, **options)
        try:
            self._wq = self._store.queue(QUEUE_NAME, visibility_timeout=_FOREVER_S,
                                         max_deliveries=_MAX_DELIVERIES, dead_letter=None,
                                         partitions=1)
            self._qsize = len(self._wq)  # not done: ready again after an open
        except BaseException:
            self._store.close()
            raise
        self.path = self._store.root
        self._getters: Deque["asyncio.Future[None]"] = deque()
        self._putters: Deque["asyncio.Future[None]"] = deque()
        self._putting = 0  # puts holding a slot while their item is written
        self._unfinished = self._qsize
        self._acking = 0  # done marks being written
        self._credits = 0  # task_done() calls made while no item was held
        self._finished = asyncio.Event()
        if not self._unfinished:
            self._finished.set()
        self._held: Dict[Any, Deque[Tuple[int, Any]]] = {}  # task -> [(offset, msg)] in order
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"logstore-aqueue:{self.path}")
        self.errors = 0
        self._closed = False
        self._pid = os.getpid()
        process.register(self)

    def mark_forked(self) -> None:
        """(In a forked child, by :mod:`logstore.process`) Refuse every call from now on."""
        self._forked = True
        self._closed = True

    # ------------------------------------------------------------------ helpers
    def _check_closed(self) -> None:
        if self._closed:
            if self._forked:
                raise ForkedProcessError(
                    f"DurableAsyncQueue {self.path} was opened in process {self._pid}; this is "
                    f"a forked child (pid {os.getpid()}): open it again in this process")
            raise LogClosedError(f"DurableAsyncQueue {getattr(self, 'path', '?')} is closed")

    def _dumps(self, item: Any) -> bytes:
        return encode_item(self._serializer, item)

    def _no_slot(self) -> bool:
        return 0 < self._maxsize <= self._qsize + self._putting

    async def _io_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ------------------------------------------------------------------ asyncio.Queue API
    @property
    def maxsize(self) -> int:
        """Number of items allowed in the queue (0 or negative: unbounded)."""
        return self._maxsize

    @property
    def unfinished_tasks(self) -> int:
        """Items put (or stored at open) whose done mark is not stored yet."""
        return self._unfinished

    def qsize(self) -> int:
        """Items put and not yet got."""
        self._check_closed()
        return self._qsize

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        """True if there are ``maxsize`` items in the queue (never for ``maxsize`` <= 0)."""
        self._check_closed()
        return 0 < self._maxsize <= self._qsize

    async def put(self, item: Any) -> None:
        """Put ``item`` at the tail, waiting for a free slot first; returns once it is stored
        (its write runs in the queue's I/O thread)."""
        data = self._dumps(item)
        self._check_closed()
        loop = asyncio.get_running_loop()
        while self._no_slot():
            putter = loop.create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                try:
                    self._putters.remove(putter)
                except ValueError:
                    pass
                if not self._closed and not self._no_slot() and not putter.cancelled():
                    _wakeup_next(self._putters)
                raise
            self._check_closed()
        self._putting += 1
        fut = loop.run_in_executor(self._io, self._wq.put, data)
        fut.add_done_callback(self._stored)  # runs first, even if this put is cancelled
        await asyncio.shield(fut)

    def _stored(self, fut: "asyncio.Future[Any]") -> None:
        self._putting -= 1
        if not fut.cancelled() and fut.exception() is None:
            self._added()
        elif not self._closed:
            _wakeup_next(self._putters)

    def _added(self) -> None:
        self._qsize += 1
        self._unfinished += 1
        self._finished.clear()
        _wakeup_next(self._getters)

    def put_nowait(self, item: Any) -> None:
        """Put ``item`` without waiting: ``asyncio.QueueFull`` if no slot is free. Writes in the
        calling thread (see the module docstring)."""
        self._check_closed()
        if self._no_slot():
            raise asyncio.QueueFull
        self._wq.put(self._dumps(item))
        self._added()

    async def get(self) -> Any:
        """Remove and return the item at the head, waiting for one; it is delivered again after
        a crash or reopen until ``task_done()`` marks it (durably)."""
        self._check_closed()
        loop = asyncio.get_running_loop()
        while not self._qsize:
            getter = loop.create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                if not self._closed and self._qsize and not getter.cancelled():
                    _wakeup_next(self._getters)
                raise
            self._check_closed()
        self._reserve()
        owner = asyncio.current_task()
        fut = loop.run_in_executor(self._io, self._fetch)
        try:
            item, msg = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._give_back)  # cancelled: the item goes back to the head
            raise
        except BaseException:
            self._unreserve()
            raise
        self._hold(owner, msg)
        return item

    def get_nowait(self) -> Any:
        """The item at the head, or ``asyncio.QueueEmpty``. Reads in the calling thread."""
        self._check_closed()
        if not self._qsize:
            raise asyncio.QueueEmpty
        self._reserve()
        try:
            item, msg = self._fetch()
        except BaseException:
            self._unreserve()
            raise
        self._hold(asyncio.current_task() if _in_loop() else None, msg)
        return item

    def _reserve(self) -> None:
        self._qsize -= 1
        _wakeup_next(self._putters)

    def _unreserve(self) -> None:
        if not self._closed:
            self._qsize += 1
            _wakeup_next(self._getters)

    def _fetch(self) -> Tuple[Any, Any]:
        """(I/O thread, or get_nowait's) The reserved item's message, decoded; a failure puts it
        back at the head of the work queue."""
        while True:
            msg = self._wq.get(timeout=_FETCH_SLICE_S)
            if msg is not None:
                break
            self._check_closed()
        try:
            item = self._serializer.loads(msg.value)
        except BaseException:
            self._nack_quietly(msg)
            raise
        msg.value = msg.headers = None  # kept until done: only what ack() needs
        return item, msg

    def _nack_quietly(self, msg: Any) -> None:
        try:
            self._wq.nack(msg, delay=0)
        except (AckError, LogstoreError):
            pass  # a failed ack already made it ready again, or the store is closing

    def _give_back(self, fut: "asyncio.Future[Any]") -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._unreserve()
            return
        _item, msg = fut.result()
        try:
            self._io.submit(self._nack_quietly, msg)
        except RuntimeError:
            return  # closing: the item is delivered again at the next open anyway
        self._unreserve()

    def _hold(self, owner: Any, msg: Any) -> None:
        """(In the loop) ``msg`` was handed out to ``owner``: held until task_done(), or done
        at once if task_done() was called ahead for it (a credit)."""
        if self._credits:
            self._credits -= 1
            if _in_loop():
                fut = asyncio.get_running_loop().run_in_executor(self._io, self._wq.ack, msg)
                fut.add_done_callback(self._credit_acked)
            else:
                self._wq.ack(msg)
            return
        dq = self._held.setdefault(owner, deque())
        off = msg.offset
        if not dq or dq[-1][0] < off:
            dq.append((off, msg))
        else:
            i = 0
            while dq[i][0] < off:
                i += 1
            dq.insert(i, (off, msg))

    def _pick(self) -> Optional[Any]:
        owner = asyncio.current_task() if _in_loop() else None
        dq = self._held.get(owner)
        if not dq:
            if not self._held:
                return None
            owner = min(self._held, key=lambda t: self._held[t][0][0])
            dq = self._held[owner]
        _, msg = dq.popleft()
        if not dq:
            del self._held[owner]
        return msg

    def task_done(self) -> None:
        """Mark one item done: the oldest got by the calling task and not done, else the oldest
        got by any task. ``ValueError`` if called more times than items were put. Its done mark
        is stored by the I/O thread: ``join()`` waits for it."""
        self._check_closed()
        if self._unfinished - self._acking <= 0:
            raise ValueError("task_done() called too many times")
        msg = self._pick()
        if msg is None:  # nothing held: the next item got is done as it is handed out
            self._credits += 1
            self._done_one()
            return
        self._acking += 1
        fut = asyncio.get_running_loop().run_in_executor(self._io, self._wq.ack, msg)
        fut.add_done_callback(self._acked)

    def _acked(self, fut: "asyncio.Future[Any]") -> None:
        self._acking -= 1
        err = None if fut.cancelled() else fut.exception()
        if err is None and not fut.cancelled():
            self._done_one()
            return
        self.errors += 1
        logger.error("DurableAsyncQueue %s: a done mark could not be stored (%s); the item "
                     "is back at the head of the queue", self.path, err)
        self._unreserve()

    def _credit_acked(self, fut: "asyncio.Future[Any]") -> None:
        err = None if fut.cancelled() else fut.exception()
        if err is None and not fut.cancelled():
            return
        self.errors += 1
        logger.error("DurableAsyncQueue %s: a done mark could not be stored (%s); the item "
                     "is back at the head of the queue", self.path, err)
        if not self._closed:
            self._added()  # not done after all: counted again

    def _done_one(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._finished.set()

    async def join(self) -> None:
        """Wait until every item put (or stored at open) is durably done."""
        self._check_closed()
        while self._unfinished > 0:
            await self._finished.wait()
            self._check_closed()

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every waiting coroutine (LogClosedError), wait for the I/O thread's pending
        operations, close the store. Items got and not done are delivered again at the next
        open. Idempotent."""
        if self._forked or self._closed:
            return
        self._closed = True
        for waiter in list(self._getters) + list(self._putters):
            if not waiter.done():
                waiter.set_exception(LogClosedError(f"DurableAsyncQueue {self.path} was closed"))
        self._getters.clear()
        self._putters.clear()
        self._finished.set()  # join() wakes and raises LogClosedError
        self._io.shutdown(wait=True)
        process.unregister(self)
        self._store.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop while pending I/O finishes."""
        if self._forked or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._check_closed()
        # Refuse new work and wake the waiters in the loop, then drain the I/O thread off it.
        self._closed = True
        waiters = list(self._getters) + list(self._putters)
        self._getters.clear()
        self._putters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(LogClosedError(f"DurableAsyncQueue {self.path} was closed"))
        self._finished.set()
        await loop.run_in_executor(None, self._io.shutdown, True)
        process.unregister(self)
        await loop.run_in_executor(None, self._store.close)

    async def __aenter__(self) -> "DurableAsyncQueue":
        self._check_closed()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"maxsize={self._maxsize} qsize={self._qsize}"
        return f"<logstore.DurableAsyncQueue {getattr(self, 'path', '?')!r} {state}>"


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

