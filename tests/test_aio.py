"""asyncio front ends (logstore.views.aio): publish, poll, async for, queue get/ack, request;
waiting without threads and without blocking the loop; close, restart and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio

import logstore
from logstore import AsyncStore, LogClosedError

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "messaging_child.py")


@pytest_asyncio.fixture
async def astore(tmp_path):
    a = await AsyncStore.open(tmp_path / "s", fsync="never", retention_check_interval_s=0)
    yield a
    await a.close()


async def eventually(cond, what, timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_publish_poll_and_async_for(astore):
    orders = astore.topic("orders", partitions=3)
    sent = [await orders.publish(b"o%d" % i, key=b"k%d" % (i % 5)) for i in range(30)]
    assert sorted(sent) == sorted(set(sent))
    g = astore.consumer("billing", "orders")
    first = await g.poll(10, timeout=5)
    assert 1 <= len(first) <= 10
    seen = [r.value for r in first]
    async for rec in g:
        seen.append(rec.value)
        if len(seen) == 30:
            break
    assert sorted(seen) == sorted(b"o%d" % i for i in range(30))
    await g.commit()
    assert await g.lag() == {0: 0, 1: 0, 2: 0}
    assert await g.poll(10, timeout=0.05) == []
    assert astore.store.metrics()["groups"]["billing"]["orders"]["lag"] == 0


@pytest.mark.asyncio
async def test_waiting_getters_hold_no_thread_and_the_loop_keeps_running(tmp_path):
    executor = ThreadPoolExecutor(2)
    astore = AsyncStore(logstore.Store.open(tmp_path / "s", fsync="never",
                                            retention_check_interval_s=0), executor)
    try:
        q = astore.queue("jobs")
        await q.stats()  # (the executor's threads exist from here on)
        before = threading.active_count()
        getters = [asyncio.create_task(q.get()) for _ in range(50)]
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        await eventually(lambda: ticks >= 50, "the loop to keep running while 50 getters wait")
        assert threading.active_count() <= before + 1  # at most the executor's second thread
        assert not any(g.done() for g in getters)
        # Puts from another thread wake them (the store's publish fires their futures).
        putter = threading.Thread(target=lambda: [astore.store.queue("jobs").put(b"%d" % i)
                                                  for i in range(50)])
        putter.start()
        msgs = await asyncio.wait_for(asyncio.gather(*getters), 60)
        putter.join()
        assert sorted(m.value for m in msgs) == sorted(b"%d" % i for i in range(50))
        for m in msgs:
            await q.ack(m)
        tick.cancel()
        assert (await q.stats())["total"] == 0
        assert len(astore.store.async_wakeups) == 0  # nobody left registered
    finally:
        await astore.close()
        executor.shutdown()


@pytest.mark.asyncio
async def test_get_timeout_returns_none_and_ack_nack(astore):
    q = astore.queue("jobs", backoff=(0, 0))
    assert await q.get(timeout=0.05) is None
    await q.put(b"a")
    msg = await q.get(timeout=5)
    await q.nack(msg, delay=0)
    again = await q.get(timeout=5)  # a nack's retry is noticed within a slice
    assert again.value == b"a" and again.delivery_count == 2
    await q.extend(again, 30)
    await q.ack(again)
    assert (await q.stats())["total"] == 0
    with pytest.raises(ValueError):
        await q.get(timeout=-1)


@pytest.mark.asyncio
async def test_request_reply_async(astore):
    astore.store.respond("rpc.upper", lambda req: req.value.upper())
    replies = await asyncio.gather(*[astore.request("rpc.upper", b"x%d" % i, timeout=30)
                                     for i in range(20)])
    assert [r.value for r in replies] == [b"X%d" % i for i in range(20)]
    with pytest.raises(TimeoutError):
        await astore.request("rpc.nobody", b"?", timeout=0.05)
    figures = (await astore.metrics())["requesters"]["rpc.inbox.0"]
    assert figures["replies_total"] == 20 and figures["timeouts_total"] == 1
    with pytest.raises(logstore.RemoteError):
        astore.store.respond("rpc.err", lambda req: 1 / 0)
        await astore.request("rpc.err", b"", timeout=30)


@pytest.mark.asyncio
async def test_cancelled_request_stops_waiting(astore):
    task = asyncio.create_task(astore.request("rpc.nobody", b"?", timeout=60))
    requester = await astore.run(astore.store.requester)
    await eventually(lambda: requester.pending() == 1, "the request to be pending")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert requester.pending() == 0


@pytest.mark.asyncio
async def test_closing_the_store_wakes_waiters(tmp_path):
    astore = await AsyncStore.open(tmp_path / "s", fsync="never")
    q = astore.queue("jobs")
    g = astore.consumer("g", "jobs")
    waiting = [asyncio.create_task(q.get()), asyncio.create_task(g.poll(10, timeout=60))]
    await asyncio.sleep(0.05)
    await astore.close()
    for t in waiting:
        with pytest.raises(LogClosedError):
            await asyncio.wait_for(t, 30)


@pytest.mark.asyncio
async def test_async_for_ends_when_the_consumer_closes(astore):
    await astore.publish("t", b"one")
    g = astore.consumer("g", "t")
    got = []

    async def read():
        async for rec in g:
            got.append(rec.value)

    reader = asyncio.create_task(read())
    await eventually(lambda: got == [b"one"], "the record")
    await g.close()
    await asyncio.wait_for(reader, 30)


@pytest.mark.asyncio
async def test_put_survives_a_restart(tmp_path):
    root = tmp_path / "s"
    async with await AsyncStore.open(root, fsync="always") as a:
        q = a.queue("jobs")
        for i in range(5):
            await q.put(b"%d" % i)
        m = await q.get(timeout=5)
        await q.ack(m)
    with logstore.Store.open(root) as s:
        q = s.queue("jobs")
        assert [q.get(timeout=5).value for _ in range(4)] == [b"1", b"2", b"3", b"4"]


def test_sigkill_after_awaited_publishes(tmp_path):
    root = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, CHILD, "apublish", root, "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        while True:
            line = proc.stdout.readline().decode().strip()
            if not line:
                pytest.fail(f"child ended: {proc.wait()} {proc.stderr.read().decode()}")
            if line == "done":
                break
            lines.append(line.split())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert len(lines) == 40
    with logstore.Store.open(root, readonly=True) as s:
        parts = s.topic("events").partitions
        for _, i, p, off in lines:
            assert parts[int(p)].get(int(off)).value == b"e%s" % i.encode()
