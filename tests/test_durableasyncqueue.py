"""DurableAsyncQueue: CPython's Lib/test/test_asyncio/test_queues.py (3.11) behaviours, ported,
plus durability (restart, join, SIGKILL), cancellation during I/O, closing, locking.

The ported tests run against ``asyncio.Queue`` *and* the durable one (fixture ``make``), so a
difference in semantics fails on one side only. CPython's tests that inspect private attributes
(``_getters``, ``_putters``, ``_format``, repr) are ported as the behaviour they protect. Where
CPython relies on ``await asyncio.sleep(0)`` being enough for a put or get to finish (true for an
in-memory queue, not for one that writes to disk in its I/O thread), the port waits for the
condition instead (:func:`eventually`); where it checks that something has *not* happened yet,
that is guaranteed by the queue's state (full, empty), not by timing.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import time
from types import GenericAlias

import pytest

from logstore import DurableAsyncQueue, DurableQueue, LogClosedError, LogLockedError
from logstore.durablequeue import JSON

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "messaging_child.py")


class _Factory:
    def __init__(self, kind, tmp_path):
        self.kind, self.tmp_path, self.made = kind, tmp_path, []

    def __call__(self, maxsize=0):
        if self.kind == "stdlib":
            return asyncio.Queue(maxsize)
        q = DurableAsyncQueue(str(self.tmp_path / f"q{len(self.made)}"), maxsize, fsync="never")
        self.made.append(q)
        return q

    def close(self):
        for q in self.made:
            q.close()


@pytest.fixture(params=["stdlib", "durable"])
def make(request, tmp_path):
    f = _Factory(request.param, tmp_path)
    yield f
    f.close()


async def eventually(cond, what="condition", timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------- QueueBasicTests
def test_generic_alias():
    q = DurableAsyncQueue[int]
    assert q.__args__ == (int,) and isinstance(q, GenericAlias)


@pytest.mark.asyncio
async def test_empty(make):
    q = make()
    assert q.empty()
    await q.put(1)
    assert not q.empty()
    assert 1 == await q.get()
    assert q.empty()


@pytest.mark.asyncio
async def test_full(make):
    q = make()
    assert not q.full()
    q = make(maxsize=1)
    await q.put(1)
    assert q.full()


@pytest.mark.asyncio
async def test_order(make):
    q = make()
    for i in [1, 3, 2]:
        await q.put(i)
    assert [await q.get() for _ in range(3)] == [1, 3, 2]


@pytest.mark.asyncio
async def test_maxsize(make):
    q = make(maxsize=2)
    assert 2 == q.maxsize
    have_been_put = []

    async def putter():
        for i in range(3):
            await q.put(i)
            have_been_put.append(i)
        return True

    t = asyncio.create_task(putter())
    await eventually(lambda: have_been_put == [0, 1])
    await asyncio.sleep(0.01)
    assert have_been_put == [0, 1]  # the putter is blocked: the queue is full
    assert 0 == await q.get()
    await eventually(lambda: have_been_put == [0, 1, 2])
    assert 1 == await q.get()
    assert 2 == await q.get()
    assert await t


# --------------------------------------------------------------------------- QueueGetTests
@pytest.mark.asyncio
async def test_blocking_get(make):
    q = make()
    q.put_nowait(1)
    assert 1 == await q.get()


@pytest.mark.asyncio
async def test_blocking_get_wait(make):
    loop = asyncio.get_running_loop()
    q = make()
    started = asyncio.Event()
    finished = False

    async def queue_get():
        nonlocal finished
        started.set()
        res = await q.get()
        finished = True
        return res

    task = asyncio.create_task(queue_get())
    await started.wait()
    assert not finished
    loop.call_later(0.01, q.put_nowait, 1)
    assert 1 == await task
    assert finished


def test_nonblocking_get(make):
    q = make()
    q.put_nowait(1)
    assert 1 == q.get_nowait()


def test_nonblocking_get_exception(make):
    q = make()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


@pytest.mark.asyncio
async def test_get_cancelled_race(make):
    q = make()
    t1 = asyncio.create_task(q.get())
    t2 = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    t1.cancel()
    await asyncio.sleep(0)
    assert t1.done()
    await q.put("a")
    await asyncio.sleep(0)
    assert "a" == await t2


@pytest.mark.asyncio
async def test_get_with_waiting_putters(make):
    q = make(maxsize=1)
    asyncio.create_task(q.put("a"))
    asyncio.create_task(q.put("b"))
    assert await q.get() == "a"
    assert await q.get() == "b"


@pytest.mark.asyncio
async def test_why_are_getters_waiting(make):
    async def consumer(queue, num_expected):
        for _ in range(num_expected):
            await queue.get()

    async def producer(queue, num_items):
        for i in range(num_items):
            await queue.put(i)

    q = make(1)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(producer(q, 5))
        tg.create_task(consumer(q, 5))


@pytest.mark.asyncio
async def test_cancelled_getters_are_forgotten(make):
    q = make(maxsize=5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.1)
    q.put_nowait("x")  # no ghost getter takes it
    assert q.qsize() == 1 and await q.get() == "x"


# --------------------------------------------------------------------------- QueuePutTests
@pytest.mark.asyncio
async def test_blocking_put(make):
    q = make()
    await q.put(1)
    assert 1 == await q.get()


@pytest.mark.asyncio
async def test_blocking_put_wait(make):
    q = make(maxsize=1)
    started = asyncio.Event()
    finished = False

    async def queue_put():
        nonlocal finished
        started.set()
        await q.put(1)
        await q.put(2)
        finished = True

    async def get_later():
        await eventually(lambda: q.qsize() == 1)
        q.get_nowait()

    getter = asyncio.create_task(get_later())
    task = asyncio.create_task(queue_put())
    await started.wait()
    assert not finished
    await task
    await getter
    assert finished


def test_nonblocking_put(make):
    q = make()
    q.put_nowait(1)
    assert 1 == q.get_nowait()


@pytest.mark.asyncio
async def test_get_cancel_drop_one_pending_reader(make):
    q = make()
    reader = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(1)
    q.put_nowait(2)
    reader.cancel()
    try:
        await reader
    except asyncio.CancelledError:
        reader = asyncio.create_task(q.get())
        await reader
    assert reader.result() == 1  # 2 would mean 1 was dropped


@pytest.mark.asyncio
async def test_get_cancel_drop_many_pending_readers(make):
    q = make()
    async with asyncio.TaskGroup() as tg:
        reader1 = tg.create_task(q.get())
        reader2 = tg.create_task(q.get())
        reader3 = tg.create_task(q.get())
        await asyncio.sleep(0)
        q.put_nowait(1)
        q.put_nowait(2)
        reader1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader1
        await reader3
    assert {reader2.result(), reader3.result()} == {1, 2}


@pytest.mark.asyncio
async def test_put_cancel_drop(make):
    q = make(1)
    q.put_nowait(1)
    writer = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    assert q.get_nowait() == 1
    writer.cancel()
    try:
        await writer
    except asyncio.CancelledError:
        writer = asyncio.create_task(q.put(2))
        await writer
    assert q.get_nowait() == 2
    assert q.qsize() == 0


def test_nonblocking_put_exception(make):
    q = make(maxsize=1)
    q.put_nowait(1)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(2)


@pytest.mark.asyncio
async def test_float_maxsize(make):
    q = make(maxsize=1.3)
    q.put_nowait(1)
    q.put_nowait(2)
    assert q.full()
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(3)
    q = make(maxsize=1.3)
    await q.put(1)
    await q.put(2)
    assert q.full()


@pytest.mark.asyncio
async def test_put_cancelled(make):
    q = make()

    async def queue_put():
        await q.put(1)
        return True

    t = asyncio.create_task(queue_put())
    assert 1 == await q.get()
    assert t.done() and t.result()


@pytest.mark.asyncio
async def test_put_cancelled_race(make):
    q = make(maxsize=1)
    put_a = asyncio.create_task(q.put("a"))
    put_b = asyncio.create_task(q.put("b"))
    put_c = asyncio.create_task(q.put("X"))
    await eventually(put_a.done)
    assert not put_b.done()  # the queue is full
    put_c.cancel()
    await asyncio.sleep(0)
    assert put_c.done()
    assert q.get_nowait() == "a"
    await eventually(lambda: q.qsize() == 1)
    assert q.get_nowait() == "b"
    await put_b


@pytest.mark.asyncio
async def test_put_with_waiting_getters(make):
    q = make()
    t = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    await q.put("a")
    assert await t == "a"


@pytest.mark.asyncio
async def test_why_are_putters_waiting(make):
    queue = make(2)

    async def putter(item):
        await queue.put(item)

    async def getter():
        await eventually(lambda: queue.qsize() == 2)
        for _ in range(queue.qsize()):
            queue.get_nowait()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(getter())
        for i in range(4):
            tg.create_task(putter(i))


@pytest.mark.asyncio
async def test_cancelled_putters_are_forgotten(make):
    queue = make(maxsize=1)
    queue.put_nowait(1)
    put_task = asyncio.create_task(queue.put(1))
    await asyncio.sleep(0)
    put_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put_task
    assert queue.get_nowait() == 1
    queue.put_nowait(2)  # the cancelled putter holds no slot
    assert queue.full() and queue.get_nowait() == 2


@pytest.mark.asyncio
async def test_cancelled_put_silence_value_error_exception(make):
    queue = make(1)
    queue.put_nowait(1)
    put_task = asyncio.create_task(queue.put(1))
    await asyncio.sleep(0)
    queue.get_nowait()
    put_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put_task


# --------------------------------------------------------------------------- join
def test_task_done_underflow(make):
    q = make()
    with pytest.raises(ValueError):
        q.task_done()


@pytest.mark.asyncio
async def test_task_done(make):
    q = make()
    for i in range(100):
        q.put_nowait(i)
    accumulator = 0
    running = True

    async def worker():
        nonlocal accumulator
        while running:
            item = await q.get()
            accumulator += item
            q.task_done()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(worker()) for _ in range(2)]
        await q.join()
        assert sum(range(100)) == accumulator
        running = False
        for _ in range(len(tasks)):
            q.put_nowait(0)


@pytest.mark.asyncio
async def test_join_empty_queue(make):
    q = make()
    await q.join()
    await q.join()


# --------------------------------------------------------------------------- durability
@pytest.mark.asyncio
async def test_items_not_done_come_back_in_order_after_reopen(tmp_path):
    path = str(tmp_path / "q")
    async with DurableAsyncQueue(path) as q:
        for i in range(6):
            await q.put({"job": i})
        assert await q.get() == {"job": 0}
        q.task_done()
        assert await q.get() == {"job": 1}  # got, not done
        await eventually(lambda: q.unfinished_tasks == 5, "the done mark")
    async with DurableAsyncQueue(path) as q:
        assert q.qsize() == 5 and q.unfinished_tasks == 5
        assert [await q.get() for _ in range(5)] == [{"job": i} for i in range(1, 6)]


@pytest.mark.asyncio
async def test_join_returns_only_when_done_marks_are_stored(tmp_path):
    path = str(tmp_path / "q")
    q = DurableAsyncQueue(path, fsync="always")
    for i in range(20):
        await q.put(i)
    for _ in range(20):
        await q.get()
        q.task_done()
    await q.join()
    assert q.unfinished_tasks == 0
    q.close()
    with DurableQueue(path) as again:  # the same layout: the sync sibling sees none left
        assert again.qsize() == 0


@pytest.mark.asyncio
async def test_task_done_ahead_of_get_is_a_credit(tmp_path):
    async with DurableAsyncQueue(str(tmp_path / "q")) as q:
        q.put_nowait("a")
        q.task_done()  # nothing held yet: the next item got is done as it is handed out
        await q.join()
        assert await q.get() == "a"
    async with DurableAsyncQueue(str(tmp_path / "q")) as q:
        assert q.qsize() == 0


class SlowLoads:
    def __init__(self):
        self.calls = 0

    def dumps(self, obj):
        return pickle.dumps(obj)

    def loads(self, data):
        self.calls += 1
        time.sleep(0.2)  # (in the I/O thread) a window for the cancellation below
        return pickle.loads(data)


@pytest.mark.asyncio
async def test_get_cancelled_during_io_gives_the_item_back(tmp_path):
    ser = SlowLoads()
    async with DurableAsyncQueue(str(tmp_path / "q"), serializer=ser) as q:
        await q.put("only")
        task = asyncio.create_task(q.get())
        await eventually(lambda: ser.calls == 1, "the fetch to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(q.get(), 30) == "only"  # back at the head
        q.task_done()
        await q.join()
        assert q.qsize() == 0


@pytest.mark.asyncio
async def test_close_wakes_waiters(tmp_path):
    q = DurableAsyncQueue(str(tmp_path / "q"), maxsize=1)
    q.put_nowait(1)
    getter_q = DurableAsyncQueue(str(tmp_path / "q2"))
    putter = asyncio.create_task(q.put(2))
    getter = asyncio.create_task(getter_q.get())
    joiner = asyncio.create_task(q.join())
    await asyncio.sleep(0.01)
    await q.aclose()
    getter_q.close()
    for t in (putter, getter, joiner):
        with pytest.raises(LogClosedError):
            await asyncio.wait_for(t, 30)
    with pytest.raises(LogClosedError):
        q.put_nowait(3)
    with pytest.raises(LogClosedError):
        await q.get()


def test_one_process_at_a_time(tmp_path):
    q = DurableAsyncQueue(str(tmp_path / "q"))
    try:
        with pytest.raises(LogLockedError):
            DurableAsyncQueue(str(tmp_path / "q"))
        with pytest.raises(LogLockedError):
            DurableQueue(str(tmp_path / "q"))
    finally:
        q.close()


@pytest.mark.asyncio
async def test_unserializable_item_is_not_stored(tmp_path):
    async with DurableAsyncQueue(str(tmp_path / "q"), serializer=JSON) as q:
        with pytest.raises(TypeError):
            await q.put(object())
        with pytest.raises(TypeError):
            q.put_nowait({1, 2})
        assert q.qsize() == 0 and q.unfinished_tasks == 0
        await q.put([1, "a"])
        assert await q.get() == [1, "a"]


def test_sigkill_keeps_every_put_and_every_done_mark(tmp_path):
    path = str(tmp_path / "q")
    n = 30
    proc = subprocess.Popen([sys.executable, CHILD, "aput", path, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        while True:
            line = proc.stdout.readline().decode().strip()
            if not line:
                pytest.fail(f"child ended: {proc.wait()} {proc.stderr.read().decode()}")
            if line == "ready":
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert lines[:n] == [f"put {i}" for i in range(n)]
    done = [int(x.split()[1]) for x in lines[n:]]
    assert done == list(range(n // 2))

    async def check():
        async with DurableAsyncQueue(path) as q:
            assert q.qsize() == n - len(done)
            assert [await q.get() for _ in range(q.qsize())] == list(range(len(done), n))

    asyncio.run(check())
