"""Wake-ups for asyncio waiters: the event-loop counterpart of ``Store.wait_for_data``.

A blocked thread waits on the store's condition variable, which every publish in this process
notifies. A coroutine must not block its event loop, and a thread per waiting coroutine is what
asyncio exists to avoid; so a waiting coroutine registers a future here instead, and every
publish (from any thread) resolves the registered futures with ``loop.call_soon_threadsafe``:
the waiting coroutines resume on their own loops, no thread waits for them.

The waiter registers *before* it looks for data, so a publish between its look and its wait
still wakes it. Appends made by other processes do not pass through here: waiters also wake up
after a short slice (as the blocking API re-checks the logs every 50 ms), see
:mod:`logstore.views.aio`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Dict, Tuple


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncWakeups:
    """Futures of coroutines waiting for new data, resolved by :meth:`fire`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: Dict[int, Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)  # a racy read is fine: a waiter also wakes up on its slice

    def __len__(self) -> int:
        return len(self._waiting)

    def register(self) -> "asyncio.Future[None]":
        """(In a coroutine) A future of the running loop, resolved by the next :meth:`fire`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._waiting[id(fut)] = (loop, fut)
        return fut

    def discard(self, fut: "asyncio.Future[None]") -> None:
        with self._lock:
            self._waiting.pop(id(fut), None)

    def fire(self) -> None:
        """Resolve every registered future (from any thread); each is resolved once."""
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for loop, fut in waiting:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:
                pass  # its loop is closed: nobody is waiting any more
