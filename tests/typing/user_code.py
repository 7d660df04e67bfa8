"""A user's program, type-checked with ``mypy --strict`` by tests/test_typing.py: every
``reveal_type`` line carries the type mypy must reveal (``# -> TYPE``, a substring of mypy's
note), and the file must have no other error than the deliberate ones marked ``# error:``."""

import asyncio

import logstore
from logstore import CircuitBreaker, DurableQueue, Log, Record, Store

log = Log.open("data/orders", fsync="always", segment_bytes=1 << 20, compression="zstd")
reveal_type(log)  # -> logstore.storage.log.Log
reveal_type(log.get(0))  # -> fallback=logstore.record.Record
reveal_type(log.get(0).value)  # -> bytes | None
reveal_type(log.get(0).headers)  # -> dict[str, bytes]
reveal_type(log.append(b"x", key=b"k", headers={"h": b"v"}))  # -> int
reveal_type(log.append_batch([b"a", None], keys=[b"k", None]))  # -> range
reveal_type(log.get_many([1, 2]))  # -> list[tuple[int, int, bytes | None
reveal_type(log.read(0, max_records=10))  # -> list[tuple[int, int, bytes | None
reveal_type(log.replay(0, 10))  # -> typing.Iterator[tuple[int, int, bytes | None
reveal_type(log.end_offset)  # -> int
reveal_type(log.offset_for_time(1_700_000_000_000))  # -> int
reveal_type(log.settings)  # -> dict[str, Any]
for batch in log.replay_batches():
    reveal_type(batch.offsets)  # -> numpy.ndarray
    reveal_type(batch.values_buffer)  # -> memoryview
    reveal_type(batch.records())  # -> list[tuple[int, int, bytes | None
rec: Record = log.get(0)
log.close()
Log.open("x", fsnyc="always")  # error: Unexpected keyword argument "fsnyc"
Log.open("x", fsync="sometimes")  # error: Argument "fsync" to "open" of "Log" has incompatible type

store = Store.open("data/shop", fsync="never", retention_ms=86_400_000)
reveal_type(store)  # -> logstore.views.store.Store
orders = store.topic("orders", partitions=4)
reveal_type(orders)  # -> logstore.views.topic.Topic
reveal_type(orders.publish(b"x", key=b"k"))  # -> tuple[int, int]
reveal_type(orders.publish_batch([b"a", b"b"]))  # -> list[tuple[int, int]]
group = store.consumer("billing", "orders")
reveal_type(group)  # -> logstore.views.consumer.Consumer
reveal_type(group.poll(100, timeout=1.0))  # -> list[tuple[int, int, bytes | None
reveal_type(group.lag())  # -> dict[int, int]
group.commit()
sub = store.subscribe("orders", "audit")
reveal_type(sub)  # -> logstore.views.consumer.Subscription
q = store.queue("jobs", visibility_timeout=30)
reveal_type(q)  # -> WorkQueue
msg = q.get(timeout=5)
reveal_type(msg)  # -> logstore.views.workqueue.Message | None
if msg is not None:
    reveal_type(msg.value)  # -> bytes | None
    q.ack(msg)
reveal_type(q.stats())  # -> dict[str, Any]
reveal_type(store.groups())  # -> dict[str, dict[str, dict[int, int]]]
reveal_type(store.metrics())  # -> dict[str, Any]
Store.open("x", segment_bytes="big")  # error: Argument "segment_bytes" to "open" of "Store"
store.close()

dq = DurableQueue("data/q", maxsize=10)
reveal_type(dq)  # -> logstore.views.durablequeue.DurableQueue
dq.put({"job": 1})
dq.task_done()
breaker = CircuitBreaker("payments", failures=5)
reveal_type(breaker.state)  # -> str


async def main() -> None:
    astore = await logstore.AsyncStore.open("data/shop")
    reveal_type(astore)  # -> logstore.views.aio.AsyncStore
    await astore.close()


asyncio.run(main())
