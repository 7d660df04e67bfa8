"""Child process of the request-reply, metrics, circuit-breaker and asyncio crash tests: does
some work on a store, reports each step on stdout *after* the call returned, then dies (SIGKILL,
by itself or by the parent).

Usage: python messaging_child.py MODE ROOT [ARGS...]

MODES:
  rpc N K        a responder thread answers "rpc.echo" (value upper-cased); the main thread
                 sends N requests one at a time and prints "reply <i> <value>" for each; the
                 handler SIGKILLs the process while handling request K (before replying).
  breaker N      queue "jobs" gets N messages; a CircuitBreaker(failures=2) worker whose handler
                 fails for odd values prints "acked <value>" after each ack; prints "open" once
                 the breaker is open and then waits to be killed.
  aput N         asyncio: DurableAsyncQueue at ROOT, "await q.put(i)" for i < N, printing
                 "put <i>" after each; then "await get()" + task_done for the first N // 2,
                 printing "done <i>" once join() returned; then waits to be killed.
  apublish N     asyncio: AsyncStore, "await topic.publish(i)" on topic "events" printing
                 "published <i> <partition> <offset>"; then waits to be killed.
  metrics N A    queue "jobs": put N, get + ack A of them, get one more (in flight), print
                 "ready"; then waits to be killed.
"""

import asyncio
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wait_forever() -> None:
    while True:
        time.sleep(60)


def rpc(root: str, n: int, k: int) -> None:
    store = logstore.Store.open(root, fsync="always", retention_check_interval_s=0)

    def handler(req):
        if req.value == b"req-%d" % k:
            os.kill(os.getpid(), signal.SIGKILL)
        return req.value.upper()

    store.respond("rpc.echo", handler)
    for i in range(n):
        rec = store.request("rpc.echo", b"req-%d" % i, timeout=30)
        say(f"reply {i} {rec.value.decode()}")
    say("done")
    wait_forever()


def breaker(root: str, n: int) -> None:
    store = logstore.Store.open(root, fsync="always", retention_check_interval_s=0)
    q = store.queue("jobs", visibility_timeout=600)
    for i in range(n):
        q.put(b"%d" % i)
    cb = logstore.CircuitBreaker("jobs", failures=2, window_s=600, cooldown_s=600,
                                 store=store)
    seen = []

    def handle(msg):
        seen.append(msg.value.decode())
        if int(msg.value) % 2:
            raise RuntimeError("downstream is down")

    while cb.state != "open":
        if cb.process(q, handle, timeout=1.0):
            say(f"acked {seen[-1]}")
    say("open")
    wait_forever()


async def aput(root: str, n: int) -> None:
    q = logstore.DurableAsyncQueue(root, fsync="always")
    for i in range(n):
        await q.put(i)
        say(f"put {i}")
    for done in range(1, n // 2 + 1):
        item = await q.get()
        q.task_done()
        while q.unfinished_tasks > n - done:  # its done mark is being stored
            await asyncio.sleep(0.001)
        say(f"done {item}")
    say("ready")
    wait_forever()


async def apublish(root: str, n: int) -> None:
    astore = await logstore.AsyncStore.open(root, fsync="always",
                                            retention_check_interval_s=0)
    topic = astore.topic("events", partitions=2)
    for i in range(n):
        p, off = await topic.publish(b"e%d" % i)
        say(f"published {i} {p} {off}")
    say("done")
    wait_forever()


def metrics(root: str, n: int, acks: int) -> None:
    store = logstore.Store.open(root, fsync="always", retention_check_interval_s=0)
    q = store.queue("jobs")
    for i in range(n):
        q.put(b"%d" % i)
    for _ in range(acks):
        q.ack(q.get(timeout=5))
    assert q.get(timeout=5) is not None
    say("ready")
    wait_forever()


def main() -> None:
    mode, root, args = sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]
    if mode == "rpc":
        rpc(root, *args)
    elif mode == "breaker":
        breaker(root, *args)
    elif mode == "aput":
        asyncio.run(aput(root, *args))
    elif mode == "apublish":
        asyncio.run(apublish(root, *args))
    elif mode == "metrics":
        metrics(root, *args)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    threading.current_thread().name = "child-main"
    main()
