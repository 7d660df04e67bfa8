"""Child process of tests/test_queue_crash.py: drives a work queue (or a DurableQueue) up to a
checkpoint boundary, reports what it finished, then waits to be SIGKILLed by the parent.

Usage: python queue_crash_worker.py ROOT MODE N CHECKPOINT_EVERY FSYNC

MODE:
  ack   store.queue("jobs"): put N, then get + ack N            (event 2N: the last ack)
  nack  put N, get + ack N-1, get the last one, nack(delay=3600) (event 2N: the nack)
  dlq   max_deliveries=1: put N, get + ack N-1, get the last one, nack() -> dead-lettered
                                                                 (event 2N: the dead-lettering)
  dq    DurableQueue: put N, then get + task_done N              (event 2N: the last ack)
  dsq   DurableSimpleQueue: put N, then get N (each get marks its item done)

Every message/item is done (acked, nacked, dead-lettered) when the line naming it is printed:
a line is written and flushed only after the call returned. With CHECKPOINT_EVERY = 2N the
queue's periodic checkpoint falls exactly on the last event (0: keep the engine's interval).
Prints "done" and sleeps until killed.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import logstore  # noqa: E402
from storefaults import set_checkpoint_every  # noqa: E402


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    root, mode, n, every, fsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5]
    if every:
        set_checkpoint_every(every)
    opts = dict(fsync=fsync, retention_check_interval_s=0)
    if mode in ("ack", "nack", "dlq"):
        store = logstore.Store.open(root, **opts)
        q = store.queue("jobs", max_deliveries=1 if mode == "dlq" else 5)
        for i in range(n):
            q.put(b"m%d" % i)
        for i in range(n - 1 if mode != "ack" else n):
            msg = q.get(timeout=5)
            msg.ack()
            say(f"acked {msg.value.decode()}")
        if mode == "nack":
            msg = q.get(timeout=5)
            msg.nack(delay=3600)
            say(f"nacked {msg.value.decode()}")
        elif mode == "dlq":
            msg = q.get(timeout=5)
            msg.nack()  # delivery 1 of max_deliveries=1: dead-lettered now
            say(f"dead {msg.value.decode()}")
    elif mode == "dq":
        q = logstore.DurableQueue(root, **opts)
        for i in range(n):
            q.put(f"m{i}")
        for i in range(n):
            item = q.get(timeout=5)
            q.task_done()
            say(f"acked {item}")
    elif mode == "dsq":
        q = logstore.DurableSimpleQueue(root, **opts)
        for i in range(n):
            q.put(f"m{i}")
        for i in range(n):
            item = q.get(timeout=5)
            say(f"acked {item}")
    else:
        raise SystemExit(f"unknown mode {mode}")
    say("done")
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
