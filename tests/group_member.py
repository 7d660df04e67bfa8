"""A consumer group member in its own process, for the cross-process group tests.

Usage: python group_member.py ROOT GROUP TOPIC PAUSE_S [STOP_FILE]

Opens the store read-only (the test process is the writer) and polls group GROUP on TOPIC, 20
records at a time, sleeping PAUSE_S after each poll, committing after each poll that got
records. Reports on stdout, one flushed line each:

    A [p, ...]          its assignment, whenever it changes
    R [[p, off], ...]   the records of one poll
    C {"p": off, ...}   positions just committed (the commit has returned: durable)

Exits (closing the consumer and store: "BYE") when STOP_FILE exists.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    root, group, topic, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    stop = sys.argv[5] if len(sys.argv) > 5 else None
    store = logstore.Store.open(root, readonly=True)
    consumer = store.consumer(group, topic)
    last = None
    while stop is None or not os.path.exists(stop):
        recs = consumer.poll(20, timeout=0.05)
        now = consumer.assignment()
        if now != last:
            say(f"A {json.dumps(now)}")
            last = now
        if recs:
            say("R " + json.dumps([[r.partition, r.offset] for r in recs]))
            # Only partitions still leased here (poll may have rebalanced after reading).
            positions = {p: consumer.position(p) for p in {r.partition for r in recs}
                         if p in now}
            consumer.commit(positions)
            say("C " + json.dumps(positions))
        time.sleep(pause)
    consumer.close()
    store.close()
    say("BYE")


if __name__ == "__main__":
    main()
