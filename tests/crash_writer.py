"""Writer process for the crash tests: appends forever and reports each acknowledged record.

Usage: python crash_writer.py DIR SEED THREADS [options as key=value]

Every record's value is self-describing (``<tid>:<seq>:`` repeated), so after a crash the test
can tell a valid record from garbage even for records that were never acknowledged. For each
append that returned, one line ``<offset> <sha1 of value>`` is printed and flushed.
"""

import hashlib
import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logstore  # noqa: E402


def value_for(tid: int, seq: int, rng: random.Random) -> bytes:
    unit = f"{tid}:{seq}:".encode()
    return unit * rng.randint(1, 60)


def main() -> None:
    directory, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    options = {}
    for arg in sys.argv[4:]:
        k, v = arg.split("=", 1)
        options[k] = int(v) if v.isdigit() else v
    log = logstore.Log.open(directory, **options)
    out_lock = threading.Lock()

    def work(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        seq = 0
        while True:
            if rng.random() < 0.3:
                n = rng.randint(1, 20)
                values = []
                for _ in range(n):
                    values.append(value_for(tid, seq, rng))
                    seq += 1
                offs = log.append_batch(values, keys=[v[:4] for v in values])
                pairs = zip(offs, values)
            else:
                v = value_for(tid, seq, rng)
                seq += 1
                pairs = [(log.append(v, headers={"t": b"%d" % tid}), v)]
            lines = "".join(f"{o} {hashlib.sha1(v).hexdigest()}\n" for o, v in pairs)
            with out_lock:
                sys.stdout.write(lines)
                sys.stdout.flush()

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
