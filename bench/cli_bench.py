"""The command line's own speed: records/s of ``logstore replay`` and ``logstore consume``
writing a log to a file (raw and jsonl), as an operator runs them, with PYTHONUNBUFFERED=1 as
most containers set it.

Each row runs the installed command (``python -m logstore.cli``) in a fresh process on a log of
N records (100-byte values, 8-byte keys, 1,000 records a batch, one partition) and times the
whole run; ``records/s`` divides N by the wall time, ``excl. startup`` subtracts the time of
``logstore --version`` (the interpreter and imports: ~0.3-0.5 s here, which a command pays once
whatever it writes). The output file is checked against the log (record count, and for raw the
exact bytes).

    PYTHONPATH=. python bench/cli_bench.py                   # 1M records
    PYTHONPATH=. python bench/cli_bench.py --records 200000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import logstore  # noqa: E402
from bench._table import render  # noqa: E402

ROWS = [
    ("replay", "raw", ["replay", "{log}", "--format", "raw", "-o", "{out}"]),
    ("replay", "raw --newline", ["replay", "{log}", "--format", "raw", "--newline",
                                 "-o", "{out}"]),
    ("replay", "jsonl (base64)", ["replay", "{log}", "-o", "{out}"]),
    ("replay", "jsonl --values text", ["replay", "{log}", "--values", "text", "-o", "{out}"]),
    ("consume", "jsonl, no group", ["consume", "{log}", "--values", "text"]),
    ("consume --group", "jsonl, commits", ["consume", "{store}", "--topic", "t", "--group",
                                           "bench", "--values", "text"]),
    ("consume --group", "raw, commits", ["consume", "{store}", "--topic", "t", "--group",
                                         "bench-raw", "--format", "raw"]),
]


def build(path: str, store_root: str, n: int) -> None:
    rng = np.random.default_rng(7)
    pool = rng.integers(97, 123, size=(5000, 100), dtype=np.uint8)  # printable: text mode
    with logstore.Log.open(path, fsync="never") as log, \
            logstore.Store.open(store_root, fsync="never", dedup_window_s=0,
                                retention_check_interval_s=0) as store:
        part = store.topic("t", partitions=1).partitions[0]
        for i in range(0, n, 1000):
            values = [pool[j % 5000].tobytes() for j in range(i, i + 1000)]
            keys = [b"user-%03d" % (j % 997) for j in range(i, i + 1000)]
            log.append_batch(values, keys=keys)
            part.append_batch(values, keys=keys)


def timed(args: list, stdout_path: str) -> float:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(stdout_path, "wb") as f:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "logstore.cli", *args], stdout=f, check=True,
                       env=env)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cli-bench-")
    try:
        log, store = os.path.join(tmp, "log"), os.path.join(tmp, "store")
        build(log, store, a.records)
        startup = min(timed(["--version"], os.devnull) for _ in range(3))
        with logstore.Log.open(log, readonly=True) as ro:
            raw_want = b"".join(bytes(b.values_buffer[int(b.value_offsets[0]):])
                                for b in ro.replay_batches())
        rows, figures = [], []
        for command, fmt, template in ROWS:
            out = os.path.join(tmp, "out")
            args = [x.format(log=log, store=store, out=out) for x in template]
            stdout_path = out if "-o" not in args else os.devnull
            seconds = timed(args, stdout_path)
            with open(out, "rb") as f:
                data = f.read()
            if fmt == "raw" or fmt == "raw, commits":
                assert data == raw_want, "raw output differs from the log"
            elif "newline" in fmt:
                assert data.count(b"\n") == a.records
            else:
                assert data.count(b"\n") == a.records, (fmt, data.count(b"\n"))
            rate = a.records / seconds
            net = a.records / max(1e-9, seconds - startup)
            figures.append({"command": command, "format": fmt, "records": a.records,
                            "seconds": seconds, "records_per_s": rate,
                            "records_per_s_excl_startup": net, "bytes": len(data)})
            rows.append([command, fmt, f"{seconds:.2f}", f"{rate:,.0f}", f"{net:,.0f}",
                         f"{len(data) / 1e6 / seconds:.0f}"])
        print(f"{a.records:,} records of 100 B, PYTHONUNBUFFERED=1, startup "
              f"(logstore --version) {startup:.2f} s")
        print(render(["command", "output", "s", "records/s", "excl. startup", "MB/s"], rows,
                     left={0, 1}))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"startup_s": startup, "rows": figures}, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
