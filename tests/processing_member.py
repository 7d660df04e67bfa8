"""A processor in its own process over a read-only store (tests/test_processing.py): a
state-only pipeline (per-key count and sum, no outputs), run until SIGTERM.

Usage: python processing_member.py ROOT [shared]

``shared``: the store is opened with ``shared=True`` and the pipeline also writes every record
to the topic ``copy`` (outputs from several processes at once).

Prints, one flushed line each: ``T [p, ...]`` whenever the set of partitions it holds changes,
and at the end ``S <json>``: its final stats (tasks with restored_entries, records_in).
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402
from logstore import processing as lp  # noqa: E402


def count(value, state):
    state.set("n", state.get("n", 0) + 1)
    state.set("sum", state.get("sum", 0) + int(value))
    return value


def main() -> None:
    shared = sys.argv[2:] == ["shared"]
    if shared:
        store = logstore.Store.open(sys.argv[1], shared=True, fsync="never")
    else:
        store = logstore.Store.open(sys.argv[1], readonly=True)
    app = lp.Processor(store, "counter", commit_interval_s=0.02)
    stream = app.stream("events").map(count, stateful=True, name="counts")
    if shared:
        stream.to("copy")
    stop = threading.Event()

    def monitor() -> None:
        last = None
        while not stop.is_set():
            held = sorted(t["partition"] for t in app.stats()["tasks"])
            if held != last:
                print("T " + json.dumps(held), flush=True)
                last = held
            time.sleep(0.02)

    threading.Thread(target=monitor, daemon=True).start()
    stats = app.run()  # until SIGTERM
    stop.set()
    print("S " + json.dumps(stats), flush=True)
    store.close()


if __name__ == "__main__":
    main()
