"""Request-reply: an image "resize" service and its clients on one store.

    python examples/rpc_resize.py [--dir DIR] [--json]

A responder (two threads) answers topic ``rpc.resize``: each request is a JSON
``{"image": ..., "width": ...}`` and the reply the new size. Four client threads send 100
requests each with ``store.request(...)`` and check every reply belongs to their request;
coroutines do the same with ``AsyncStore.request``. Then the failure cases: a handler error
arrives as ``RemoteError``, and a request whose reply comes too late raises ``TimeoutError``
and its reply, when it comes, is discarded and counted (``late_replies_total`` in
``store.metrics()``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402

slow = threading.Event()


def resize(req: logstore.views.rpc.Request) -> bytes:
    job = json.loads(req.value)
    if job["width"] <= 0:
        raise ValueError(f"bad width {job['width']}")
    if slow.is_set():
        time.sleep(0.3)  # a hiccup longer than the caller waits
    height = job["height"] * job["width"] // job["orig_width"]
    return json.dumps({"image": job["image"], "size": [job["width"], height]}).encode()


def client(store: logstore.Store, c: int, out: dict) -> None:
    for i in range(100):
        job = {"image": f"img-{c}-{i}", "width": 100 + i, "orig_width": 400, "height": 300}
        reply = json.loads(store.request("rpc.resize", json.dumps(job).encode(),
                                         timeout=30).value)
        out[job["image"]] = reply["image"] == job["image"] and \
            reply["size"] == [100 + i, 300 * (100 + i) // 400]


async def async_clients(store: logstore.Store) -> int:
    astore = logstore.AsyncStore(store)
    jobs = [{"image": f"aimg-{i}", "width": 50, "orig_width": 100, "height": 80}
            for i in range(50)]
    replies = await asyncio.gather(*[astore.request("rpc.resize", json.dumps(j).encode(),
                                                    timeout=30) for j in jobs])
    return sum(json.loads(r.value) == {"image": j["image"], "size": [50, 40]}
               for r, j in zip(replies, jobs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="logstore-rpc-")
    with logstore.Store.open(root, fsync="never") as store:
        store.respond("rpc.resize", resize, threads=2)
        results: dict = {}
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(store, c, results)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        print(f"{len(results)} requests from 4 threads in {took:.2f} s "
              f"({len(results) / took:,.0f} round trips/s)")
        async_ok = asyncio.run(async_clients(store))
        print(f"{async_ok} of 50 concurrent coroutine requests answered correctly")

        try:
            store.request("rpc.resize", json.dumps({"image": "x", "width": 0, "orig_width": 1,
                                                    "height": 1}).encode(), timeout=30)
            remote = "no error"
        except logstore.RemoteError as e:
            remote = str(e)
        print(f"handler error -> RemoteError: {remote}")

        slow.set()
        try:
            store.request("rpc.resize", json.dumps({"image": "late", "width": 1,
                                                    "orig_width": 1, "height": 1}).encode(),
                          timeout=0.1)
            timed_out = False
        except TimeoutError as e:
            timed_out = True
            print(f"slow handler -> TimeoutError: {e}")
        deadline = time.monotonic() + 30
        while store.metrics()["requesters"]["rpc.inbox.0"]["late_replies_total"] < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        slow.clear()
        figures = store.metrics()
        req = figures["requesters"]["rpc.inbox.0"]
        print(f"requester: {req['requests_total']} requests, {req['replies_total']} replies, "
              f"{req['timeouts_total']} timeout, {req['late_replies_total']} late reply "
              f"discarded; queue rpc.resize: {figures['queues']['rpc.resize']['total']} left")
    ok = (len(results) == 400 and all(results.values()) and async_ok == 50
          and remote.startswith("ValueError: bad width") and timed_out
          and req["late_replies_total"] == 1 and req["timeouts_total"] == 1
          and figures["queues"]["rpc.resize"]["total"] == 0)
    print("OK" if ok else "MISMATCH")
    if args.json:
        print(json.dumps({"requests": req["requests_total"], "late": req["late_replies_total"],
                          "dir": root}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
