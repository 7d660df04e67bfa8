"""Request-reply benchmark: logstore's ``store.request`` / ``store.respond`` against the classic
Redis request-reply over lists (``LPUSH`` the request, the responder ``BRPOP``s it and ``LPUSH``es
the reply onto the requester's own reply list, the requester ``BRPOP``s that list).

Usage::

    python bench/rpc_bench.py [--requests N] [--quick] [--json out.json]

Rows (100-byte requests; every reply is checked: it must be the request's bytes reversed and
carry the request's correlation id; nothing may be left in the request queue):

  R1  sequential round trips: one requester thread, one responder thread, no fsync
      (logstore ``fsync="never"``; Redis ``appendfsync no``).
  R2  4 requester threads, 2 responder threads, no fsync.
  R3  R1 durable: logstore ``fsync="always"`` (the request, the reply and the ack each on
      stable storage before the call returns); Redis ``appendfsync always``.
  R4  (logstore only) 64 concurrent coroutines awaiting ``AsyncStore.request``, no fsync.

Round trips/s = requests / wall time of the timed phase (after 50 warm-up requests). Each row
runs in a fresh interpreter (this script re-invoked with ``--worker``). The Redis rows start a
private redis-server (``bench/_redis.py``: 127.0.0.1, a free port, AOF on) and stop it by PID;
without ``redis-server`` or redis-py they are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import _table  # noqa: E402
from _redis import RedisServer, stop_leftover_server  # noqa: E402

WARMUP = 50
PAYLOAD = 100


def payload(i: int) -> bytes:
    head = b"%08d" % i
    return head + bytes((i + j) % 251 for j in range(PAYLOAD - len(head)))


def expect(value: bytes) -> bytes:
    return value[::-1]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


def split(n: int, k: int) -> List[range]:
    step = (n + k - 1) // k
    return [range(i, min(n, i + step)) for i in range(0, n, step)]


def run_threads(n: int, requesters: int, one: Callable[[int], None]) -> float:
    errors: List[BaseException] = []

    def loop(r: range) -> None:
        try:
            for i in r:
                one(i)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(r,)) for r in split(n, requesters)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return took


# --------------------------------------------------------------------------- logstore
def logstore_row(spec: dict) -> dict:
    import logstore

    store = logstore.Store.open(spec["dir"], fsync=spec["fsync"], retention_check_interval_s=0)
    try:
        store.respond("rpc.bench", lambda req: expect(req.value), threads=spec["responders"])
        for i in range(WARMUP):
            check(store.request("rpc.bench", payload(i), timeout=60).value == expect(payload(i)),
                  "warm-up reply")
        n = spec["requests"]
        if spec.get("coroutines"):
            took = asyncio.run(_logstore_async(store, n, spec["coroutines"]))
        else:
            def one(i: int) -> None:
                rec = store.request("rpc.bench", payload(i), timeout=60)
                check(rec.value == expect(payload(i)), f"reply to request {i}")

            took = run_threads(n, spec["requesters"], one)
        m = store.metrics()
        req = m["requesters"]["rpc.inbox.0"]
        check(req["replies_total"] == n + WARMUP and req["timeouts_total"] == 0
              and req["late_replies_total"] == 0, f"requester figures {req}")
        deadline = time.monotonic() + 60
        while store.queue("rpc.bench").stats()["total"] and time.monotonic() < deadline:
            time.sleep(0.01)  # the last acks
        check(store.queue("rpc.bench").stats()["total"] == 0, "requests left in the queue")
    finally:
        store.close()
    return {"took_s": took}


async def _logstore_async(store: Any, n: int, width: int) -> float:
    import logstore

    astore = logstore.AsyncStore(store)
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with sem:
            rec = await astore.request("rpc.bench", payload(i), timeout=60)
            check(rec.value == expect(payload(i)), f"reply to request {i}")

    t0 = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- redis
def redis_row(spec: dict) -> dict:
    server = RedisServer(os.path.join(spec["dir"], "redis"), spec["appendfsync"]).start()
    stop = threading.Event()
    try:
        def responder() -> None:
            r = server.client()
            while not stop.is_set():
                got = r.brpop("rpc:bench", timeout=1)
                if got is None:
                    continue
                msg = json.loads(got[1])
                reply = json.dumps({"cid": msg["cid"], "value": expect(
                    bytes.fromhex(msg["value"])).hex()})
                r.lpush(msg["reply_to"], reply)

        workers = [threading.Thread(target=responder) for _ in range(spec["responders"])]
        for w in workers:
            w.start()
        local = threading.local()

        def one(i: int) -> None:
            r = getattr(local, "r", None)
            if r is None:
                r = local.r = server.client()
                local.inbox = f"rpc:inbox:{uuid.uuid4().hex}"  # one reply list per requester
            cid = uuid.uuid4().hex
            r.lpush("rpc:bench", json.dumps({"cid": cid, "reply_to": local.inbox,
                                             "value": payload(i).hex()}))
            got = r.brpop(local.inbox, timeout=60)
            check(got is not None, f"no reply to request {i}")
            reply = json.loads(got[1])
            check(reply["cid"] == cid and bytes.fromhex(reply["value"]) == expect(payload(i)),
                  f"reply to request {i}")

        for i in range(WARMUP):
            one(i)
        took = run_threads(spec["requests"], spec["requesters"], one)
        check(server.client().llen("rpc:bench") == 0, "requests left in the list")
        stop.set()
        for w in workers:
            w.join()
    finally:
        stop.set()
        server.stop()
    return {"took_s": took}


# --------------------------------------------------------------------------- plan
def build_plan(n: int, durable: int, redis_ok: bool) -> List[dict]:
    rows = []
    for wl, fs, rfs, count, req, resp in (("R1", "never", "no", n, 1, 1),
                                          ("R2", "never", "no", n, 4, 2),
                                          ("R3", "always", "always", durable, 1, 1)):
        rows.append({"workload": wl, "store": "logstore", "fsync": fs, "requests": count,
                     "requesters": req, "responders": resp})
        if redis_ok:
            rows.append({"workload": wl, "store": "redis", "appendfsync": rfs,
                         "requests": count, "requesters": req, "responders": resp})
    rows.append({"workload": "R4", "store": "logstore", "fsync": "never", "requests": n,
                 "requesters": 0, "responders": 2, "coroutines": 64})
    return rows


def run_worker(spec: dict) -> None:
    fn = logstore_row if spec["store"] == "logstore" else redis_row
    out = fn(spec)
    print(json.dumps(out))


def run_row(spec: dict, root: str, index: int) -> dict:
    d = os.path.join(root, f"row{index}")
    os.makedirs(d, exist_ok=True)
    spec = dict(spec, dir=d)
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                               json.dumps(spec)], capture_output=True, text=True, timeout=1800)
    finally:
        stop_leftover_server(os.path.join(d, "redis"))
        shutil.rmtree(d, ignore_errors=True)
    if proc.returncode != 0:
        return dict(spec, error=(proc.stderr.strip().splitlines() or ["?"])[-1])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(spec, **out, rate=spec["requests"] / out["took_s"])


LABELS = {"R1": "sequential round trips (1 requester, 1 responder), no fsync",
          "R2": "4 requester threads, 2 responders, no fsync",
          "R3": "sequential, durable (fsync always / appendfsync always)",
          "R4": "64 concurrent coroutines (AsyncStore.request), no fsync"}


def format_table(results: List[dict]) -> str:
    lines = []
    for wl in ("R1", "R2", "R3", "R4"):
        rows = {r["store"]: r for r in results if r["workload"] == wl}
        if not rows:
            continue
        ls, rd = rows.get("logstore"), rows.get("redis")

        def cell(r: Optional[dict]) -> str:
            if r is None:
                return "-"
            if "error" in r:
                return "error: " + r["error"][:40]
            return f"{r['rate']:,.0f}/s"

        ratio = "-"
        if ls and rd and "rate" in ls and "rate" in rd:
            ratio = f"{ls['rate'] / rd['rate']:.2f}x"
        lines.append([wl, LABELS[wl], str((ls or rd)["requests"]), cell(ls), cell(rd), ratio])
    return _table.render(["", "workload", "requests", "logstore", "Redis lists", "logstore/Redis"],
                         lines, left={0, 1})


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--durable", type=int, default=500, help="requests of R3")
    ap.add_argument("--quick", action="store_true", help="1,000 requests, 200 durable")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    n, durable = (1000, 200) if args.quick else (args.requests, args.durable)
    try:
        import redis  # noqa: F401
        redis_ok = shutil.which("redis-server") is not None
        note = "" if redis_ok else "redis-server not found: Redis rows skipped"
    except ImportError:
        redis_ok, note = False, "redis-py not installed: Redis rows skipped"
    root = tempfile.mkdtemp(prefix="rpc-bench-")
    results = []
    try:
        for i, spec in enumerate(build_plan(n, durable, redis_ok)):
            print(f"[{i + 1}] {spec['workload']} {spec['store']} ...", file=sys.stderr, flush=True)
            results.append(run_row(spec, root, i))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(results))
    if note:
        print(note)
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
