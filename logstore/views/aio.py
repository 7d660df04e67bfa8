"""asyncio front ends of a store: ``await q.get()``, ``await g.poll()``, ``async for rec in g``,
``await topic.publish(...)``, ``await store.request(...)``, without blocking the event loop.

    astore = logstore.AsyncStore(logstore.Store.open("data/shop"))     # or await AsyncStore.open()
    orders = astore.topic("orders", partitions=4)
    await orders.publish(b'{"id": 1}', key=b"user-7")
    async for rec in astore.consumer("billing", "orders"):
        ...
    q = astore.queue("jobs")
    msg = await q.get(timeout=5)
    await q.ack(msg)

How it stays off the loop: every call that touches the disk (a publish and its fsync, an ack, a
commit, one non-blocking ``get``/``poll`` attempt) runs in an executor (the loop's default one,
or ``executor=``), a short job each; the loop only awaits. A coroutine **waiting** for data holds
no thread: it registers a future with the store (:class:`~logstore.views.wakeup.AsyncWakeups`)
before it looks, and every publish in this process (any thread, any loop) resolves it with
``loop.call_soon_threadsafe``, so it tries again at once. Data that does not come through a
publish of this process (another process's appends, a nack's retry time, a visibility timeout)
is noticed within :data:`ASYNC_SLICE_S` (50 ms), the slice the blocking API re-checks with.

Opening views (``topic()``, ``queue()``, ``consumer()``, ``subscribe()``) is synchronous, like
creating an ``asyncio.Queue``: it opens logs once (do it at startup, or ``await
astore.run(store.topic, ...)``). The objects are not bound to one loop: coroutines of several
loops and threads may share them, as they may share the blocking objects.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from ..errors import LogClosedError
from ..record import Record
from .store import Store

T = TypeVar("T")
#: A waiting coroutine re-checks this often for data that no publish of this process announced.
ASYNC_SLICE_S = 0.05


class _Async:
    """Running blocking calls in the executor; waiting for data without a thread."""

    store: Store
    executor: Optional[Executor]

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the executor, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor,
                                          functools.partial(fn, *args, **kwargs))

    async def until(self, attempt: Callable[[], T], timeout: Optional[float]) -> T:
        """Call ``attempt()`` (non-blocking, in the executor) until it returns something true,
        waiting between tries for a publish (or a slice); its last result after ``timeout``."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        wakeups = self.store.async_wakeups
        while True:
            fut = wakeups.register()  # before looking: a publish meanwhile still wakes us
            try:
                result = await self.run(attempt)
                if result:
                    return result
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return result
                try:
                    await asyncio.wait_for(fut, ASYNC_SLICE_S if left is None
                                           else min(left, ASYNC_SLICE_S))
                except asyncio.TimeoutError:
                    pass
            finally:
                wakeups.discard(fut)


class AsyncTopic(_Async):
    """``await topic.publish(...)``; the blocking :class:`~logstore.Topic` is :attr:`topic`."""

    def __init__(self, topic: Any, executor: Optional[Executor] = None):
        self.topic = topic
        self.store = topic.store
        self.name = topic.name
        self.executor = executor

    async def publish(self, value: Optional[bytes], key: Optional[bytes] = None,
                      headers: Optional[Dict[str, bytes]] = None, **kw: Any) -> Tuple[int, int]:
        """:meth:`Topic.publish <logstore.Topic.publish>`, awaited (returns once durable under
        the fsync policy)."""
        return await self.run(self.topic.publish, value, key, headers, **kw)

    async def publish_batch(self, values: Sequence[Optional[bytes]], **kw: Any
                            ) -> List[Tuple[int, int]]:
        return await self.run(self.topic.publish_batch, values, **kw)

    def __repr__(self) -> str:
        return f"<logstore.AsyncTopic {self.name!r}>"


class AsyncConsumer(_Async):
    """A consumer group member or subscription for coroutines: ``await poll()``, ``async for``.
    The blocking one is :attr:`consumer`."""

    def __init__(self, consumer: Any, executor: Optional[Executor] = None):
        self.consumer = consumer
        self.store = consumer.store
        self.executor = executor

    async def poll(self, max_records: int = 500, timeout: float = 0.0) -> List[Record]:
        """Up to ``max_records`` records; waits up to ``timeout`` seconds (without a thread)
        when there are none; [] on timeout."""
        consumer = self.consumer
        return await self.until(lambda: consumer.poll(max_records, 0.0), timeout)

    async def __aiter__(self) -> AsyncIterator[Record]:
        """Every record, waiting for new ones, until the consumer (or store) is closed."""
        while True:
            try:
                batch = await self.poll(500, timeout=1.0)
            except LogClosedError:
                return
            for rec in batch:
                yield rec

    async def commit(self, offsets: Optional[Dict[int, int]] = None) -> None:
        await self.run(self.consumer.commit, offsets)

    async def lag(self) -> Dict[int, int]:
        return await self.run(self.consumer.lag)

    async def seek(self, partition: int, offset: int) -> None:
        await self.run(self.consumer.seek, partition, offset)

    async def close(self) -> None:
        await self.run(self.consumer.close)

    def __repr__(self) -> str:
        return f"<logstore.AsyncConsumer {self.consumer!r}>"


class AsyncWorkQueue(_Async):
    """A work queue for coroutines: ``await get()``, ``await ack(msg)``. The blocking one is
    :attr:`queue`."""

    def __init__(self, queue: Any, executor: Optional[Executor] = None):
        self.queue = queue
        self.store = queue.store
        self.name = queue.name
        self.executor = executor

    async def put(self, value: Optional[bytes], key: Optional[bytes] = None,
                  headers: Optional[Dict[str, bytes]] = None, delay: float = 0) -> str:
        """Enqueue (returns once stored); with ``max_depth`` and ``overflow="block"`` this waits
        in the executor (a thread) while the queue is full."""
        return await self.run(self.queue.put, value, key, headers, delay)

    async def get(self, timeout: Optional[float] = None) -> Optional[Any]:
        """The next ready message (a :class:`~logstore.views.workqueue.Message`), waiting
        without a thread; None after ``timeout`` seconds."""
        queue = self.queue
        return await self.until(lambda: queue.get(timeout=0), timeout)

    async def ack(self, msg: Any) -> None:
        await self.run(self.queue.ack, msg)

    async def nack(self, msg: Any, delay: Optional[float] = None) -> None:
        await self.run(self.queue.nack, msg, delay)

    async def extend(self, msg: Any, seconds: float) -> None:
        await self.run(self.queue.extend, msg, seconds)

    async def stats(self) -> Dict[str, Any]:
        return await self.run(self.queue.stats)

    async def redrive(self, max_messages: Optional[int] = None) -> int:
        return await self.run(self.queue.redrive, max_messages)

    def __repr__(self) -> str:
        return f"<logstore.AsyncWorkQueue {self.name!r}>"


class AsyncStore(_Async):
    """A :class:`~logstore.Store` for coroutines (the blocking one is :attr:`store`)."""

    def __init__(self, store: Store, executor: Optional[Executor] = None):
        self.store = store
        self.executor = executor

    @classmethod
    async def open(cls, root: Any, *, executor: Optional[Executor] = None,
                   **options: Any) -> "AsyncStore":
        """``Store.open(root, **options)`` in the executor (recovery may read a segment)."""
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(executor, functools.partial(Store.open, root,
                                                                       **options))
        return cls(store, executor)

    def topic(self, name: str, partitions: Optional[int] = None, **kw: Any) -> AsyncTopic:
        return AsyncTopic(self.store.topic(name, partitions, **kw), self.executor)

    def consumer(self, group_id: str, topic: str, **kw: Any) -> AsyncConsumer:
        return AsyncConsumer(self.store.consumer(group_id, topic, **kw), self.executor)

    def subscribe(self, topic: str, name: str, **kw: Any) -> AsyncConsumer:
        return AsyncConsumer(self.store.subscribe(topic, name, **kw), self.executor)

    def queue(self, name: str, **kw: Any) -> AsyncWorkQueue:
        return AsyncWorkQueue(self.store.queue(name, **kw), self.executor)

    async def publish(self, topic: str, value: Optional[bytes], key: Optional[bytes] = None,
                      headers: Optional[Dict[str, bytes]] = None, **kw: Any) -> Tuple[int, int]:
        return await self.run(self.store.publish, topic, value, key, headers, **kw)

    async def request(self, topic: str, payload: Optional[bytes], timeout: float = 5.0,
                      headers: Optional[Dict[str, bytes]] = None) -> Record:
        """Request-reply (see :meth:`Store.request <logstore.Store.request>`): the reply is
        awaited on a future the requester's inbox resolves, no thread waits."""
        requester = await self.run(self.store.requester)
        return await requester.request_async(topic, payload, timeout, headers)

    async def metrics(self) -> Dict[str, Any]:
        return await self.run(self.store.metrics)

    async def close(self) -> None:
        await self.run(self.store.close)

    async def __aenter__(self) -> "AsyncStore":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<logstore.AsyncStore {self.store.root!r}>"
