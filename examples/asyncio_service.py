"""logstore inside an asyncio web service: handlers that await the store, never block the loop.

    python examples/asyncio_service.py [--dir DIR] [--json]

A tiny HTTP server (``asyncio.start_server``; a FastAPI or aiohttp handler looks the same) takes
``POST /orders``: the handler awaits ``topic.publish`` (durable before it answers 201) and
``await store.request(...)`` to a pricing responder, and hands a receipt job to a
``DurableAsyncQueue``. Background tasks consume: ``async for rec in consumer`` counts the
orders, and two workers ``await jobs.get()`` / ``task_done()``. 40 concurrent clients post 5
orders each; a ticker coroutine shows that the loop kept running throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402


def price(req: "logstore.views.rpc.Request") -> bytes:
    order = json.loads(req.value)
    return json.dumps({"total": order["qty"] * 250}).encode()


async def main_async(root: str) -> dict:
    store = await logstore.AsyncStore.open(os.path.join(root, "store"), fsync="always")
    store.store.respond("rpc.price", price, threads=2)
    orders = store.topic("orders", partitions=4)
    jobs = logstore.DurableAsyncQueue(os.path.join(root, "receipts"), maxsize=100)
    receipts: list = []
    counted: list = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(
            b"content-length:")][0].split(b":")[1])
        body = json.loads(await reader.readexactly(length))
        quote = json.loads((await store.request("rpc.price", json.dumps(body).encode(),
                                                timeout=30)).value)
        order = dict(body, total=quote["total"])
        p, off = await orders.publish(json.dumps(order).encode(), key=body["user"].encode())
        await jobs.put({"order": order["id"], "total": order["total"]})
        answer = json.dumps({"partition": p, "offset": off, "total": order["total"]}).encode()
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    async def post(port: int, order: dict) -> dict:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(order).encode()
        writer.write(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        data = await reader.read()
        writer.close()
        status, _, rest = data.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 201"), status
        return json.loads(rest)

    async def count_orders() -> None:
        async for rec in store.consumer("dashboard", "orders"):
            counted.append(json.loads(rec.value)["id"])

    async def receipt_worker() -> None:
        while True:
            job = await jobs.get()
            receipts.append(job["order"])
            jobs.task_done()

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    background = [asyncio.create_task(count_orders()), asyncio.create_task(ticker())]
    background += [asyncio.create_task(receipt_worker()) for _ in range(2)]

    async def client(c: int) -> list:
        return [await post(port, {"id": f"o-{c}-{i}", "user": f"user-{c % 7}", "qty": i + 1})
                for i in range(5)]

    answers = [a for batch in await asyncio.gather(*[client(c) for c in range(40)])
               for a in batch]
    await jobs.join()  # every receipt job durably done
    while len(counted) < 200:
        await asyncio.sleep(0.01)
    for t in background:
        t.cancel()
    server.close()
    await server.wait_closed()
    await jobs.aclose()
    figures = await store.metrics()
    await store.close()
    return {"answers": answers, "receipts": receipts, "counted": counted, "ticks": ticks,
            "figures": figures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="logstore-asyncio-")
    r = asyncio.run(main_async(root))
    ids = sorted(f"o-{c}-{i}" for c in range(40) for i in range(5))
    totals = sorted(a["total"] for a in r["answers"])
    print(f"{len(r['answers'])} orders answered 201 (each durable and priced by the "
          f"responder), {len(r['receipts'])} receipts done, {len(r['counted'])} orders "
          f"counted by the dashboard consumer; the loop ticked {r['ticks']} times meanwhile")
    print(f"requester: {r['figures']['requesters']['rpc.inbox.0']['replies_total']} replies")
    ok = (sorted(r["receipts"]) == ids and sorted(r["counted"]) == ids
          and totals == sorted(250 * (i + 1) for _ in range(40) for i in range(5))
          and r["ticks"] > 0)
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"orders": len(r["answers"]), "dir": root}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
