"""A reader in its own process that follows a log (or a topic, as a consumer-group member) while
the test process writes, deletes (retention) and compacts it. For tests/test_readers_follow.py.

Usage: python follower_proc.py log PATH            (a read-only Log)
       python follower_proc.py group ROOT TOPIC    (group "g" in a read-only Store, partition 0)

Reads all the time (racing the writer). Every record must have value b"v%d" % offset; offsets
must increase. A Log reader whose position fell below start_offset (OffsetOutOfRangeError) jumps
to start_offset (a Log has no skip policy of its own); a group member must never raise (its
on_out_of_range default, "earliest", continues at the start and counts what it skipped).

Commands on stdin, one per line:  T <round> <end>   report once the reader has reached <end>.
Reports on stdout, one flushed line each:
    OK <round> <position> <records read> <jumps or skipped>
    STUCK <round> <position> <start_offset seen> <end_offset seen>   (not there after 5 s)
    BAD <description>                                               (wrong record: exits 1)
    ERR <exception class> <message>                                 (exits 1)
"""

import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402

ROUND_TIMEOUT_S = 5.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def commands(q: "queue.Queue") -> None:
    for line in sys.stdin:
        q.put(line.split())
    q.put(None)


def main() -> None:
    mode = sys.argv[1]
    cmds: "queue.Queue" = queue.Queue()
    threading.Thread(target=commands, args=(cmds,), daemon=True).start()
    store = log = consumer = None
    if mode == "log":
        log = logstore.Log.open(sys.argv[2], readonly=True)
    else:
        store = logstore.Store.open(sys.argv[2], readonly=True)
        consumer = store.consumer("g", sys.argv[3])
    pos = 0
    count = 0
    jumps = 0
    target = None
    deadline = 0.0
    try:
        while True:
            if target is None:
                try:
                    cmd = cmds.get(timeout=0.001)
                except queue.Empty:
                    cmd = False
                if cmd is None:
                    break
                if cmd:
                    target = (int(cmd[1]), int(cmd[2]))
                    deadline = time.monotonic() + ROUND_TIMEOUT_S
            if log is not None:
                try:
                    recs = log.read(pos, max_records=200)
                except logstore.OffsetOutOfRangeError:
                    start = log.start_offset
                    if start <= pos:
                        raise
                    pos = start
                    jumps += 1
                    continue
            else:
                recs = consumer.poll(200, timeout=0.01)
                if recs:
                    consumer.commit()
            for r in recs:
                if r.offset < pos:
                    say(f"BAD offset {r.offset} after position {pos}")
                    sys.exit(1)
                if r.value != b"v%d" % r.offset:
                    say(f"BAD offset {r.offset} has value {r.value!r}")
                    sys.exit(1)
                pos = r.offset + 1
                count += 1
            if target is not None:
                rnd, end = target
                if pos >= end:
                    if consumer is None:
                        skipped = jumps
                    else:  # (reported as NA where the consumer has no skip counter)
                        counter = getattr(consumer, "skipped", None)
                        skipped = "NA" if counter is None else sum(counter.values())
                    say(f"OK {rnd} {pos} {count} {skipped}")
                    target = None
                elif time.monotonic() > deadline:
                    src = log if log is not None else consumer.topic.partitions[0]
                    say(f"STUCK {rnd} {pos} {src.start_offset} {src.end_offset}")
                    target = None
            if not recs:
                time.sleep(0.002)
    except SystemExit:
        raise
    except BaseException as e:  # reported, and the test fails on it
        say(f"ERR {type(e).__name__} {e}".replace("\n", " "))
        sys.exit(1)
    finally:
        if consumer is not None:
            consumer.close()
        if store is not None:
            store.close()
        if log is not None:
            log.close()


if __name__ == "__main__":
    main()
