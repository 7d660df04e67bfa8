"""DurableQueue benchmark: put + get + task_done against persist-queue, in one run.

Usage::

    python bench/durablequeue_bench.py [--items N] [--durable-items M] [--quick] [--json out.json]

Every row runs the same single-threaded workload in a fresh interpreter (this script re-invoked
with ``--worker ROW``): put N items (100-byte ``bytes``, pickled by every queue), then N times
get + mark done (``task_done()``; ``ack(id=...)`` for SQLiteAckQueue). Opening and closing the
queue are not timed. Rows are grouped by durability so that each peer is compared with the
logstore row that promises the same thing:

  process crash   each operation is handed to the OS before it returns; survives kill -9, not
                  power loss. logstore ``fsync="never"``; persist-queue ``Queue`` (file chunks,
                  ``autosave=False``: a get is persisted by ``task_done``, info file replaced by
                  rename, no fsync); ``SQLiteAckQueue`` with ``PRAGMA synchronous=OFF``.
  power loss      each operation is on stable storage before it returns. logstore
                  ``fsync="always"`` (put, delivery record, ack: 3 fdatasyncs per item);
                  ``SQLiteAckQueue`` as shipped (WAL, ``synchronous`` as reported in the table,
                  FULL = WAL fsync per commit; put, get and ack are one commit each).

Note on ``SQLiteAckQueue``: acked rows stay in its table until ``clear_acked_data()`` is called,
and each ``get`` walks past them (``WHERE id > 0 AND status < unack ORDER BY id``), so its
get rate falls as N grows; it is measured as shipped, without calling ``clear_acked_data``.
logstore's rates do not depend on N (reads start at the queue's low watermark).

``persist-queue`` is optional: ``pip install persist-queue``; its rows are skipped with a note
when it is missing. Durable rows use fewer items (``--durable-items``): each costs a few fsyncs.
"vs logstore" is the peer's items/s divided by the logstore row of the same durability (above 1
means the peer is faster). One run per row: expect +-10-20% noise on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # benchmark the checkout this script lives in

import _table  # noqa: E402 (bench/, next to this script)

VALUE_SIZE = 100
DEFAULT_ITEMS = 20_000
DEFAULT_DURABLE_ITEMS = 2_000
QUICK_ITEMS = 5_000
QUICK_DURABLE_ITEMS = 500

# name, durability class, needs persist-queue
ROWS = [
    ("logstore DurableQueue fsync=never", "process crash", False),
    ("persist-queue Queue (file)", "process crash", True),
    ("persist-queue SQLiteAckQueue sync=OFF", "process crash", True),
    ("logstore DurableQueue fsync=always", "power loss", False),
    ("persist-queue SQLiteAckQueue (default)", "power loss", True),
]
BASELINE = {"process crash": ROWS[0][0], "power loss": ROWS[3][0]}


def values(n: int) -> List[bytes]:
    return [i.to_bytes(4, "little") * (VALUE_SIZE // 4) for i in range(n)]


# --------------------------------------------------------------------------- workers
def run_logstore(path: str, items: List[bytes], fsync: str) -> Dict[str, Any]:
    from logstore.durablequeue import DurableQueue

    q = DurableQueue(path, fsync=fsync)
    t0 = time.perf_counter()
    for v in items:
        q.put(v)
    t1 = time.perf_counter()
    for v in items:
        got = q.get()
        q.task_done()
    t2 = time.perf_counter()
    assert got == items[-1] and q.qsize() == 0
    q.close()
    return {"put_s": t1 - t0, "get_done_s": t2 - t1, "note": f"fsync={fsync}"}


def run_pq_file(path: str, items: List[bytes]) -> Dict[str, Any]:
    import persistqueue

    q = persistqueue.Queue(path, tempdir=path)  # tempdir on the same file system: atomic rename
    t0 = time.perf_counter()
    for v in items:
        q.put(v)
    t1 = time.perf_counter()
    for v in items:
        got = q.get()
        q.task_done()
    t2 = time.perf_counter()
    assert got == items[-1] and q.qsize() == 0
    del q
    return {"put_s": t1 - t0, "get_done_s": t2 - t1, "note": "autosave=False"}


def run_pq_sqlite_ack(path: str, items: List[bytes], synchronous: Optional[str]) -> Dict[str, Any]:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(path)
    if synchronous is not None:
        for conn in {id(q._getter): q._getter, id(q._putter): q._putter}.values():
            conn.execute(f"PRAGMA synchronous={synchronous}")
    level = q._getter.execute("PRAGMA synchronous").fetchone()[0]
    mode = q._getter.execute("PRAGMA journal_mode").fetchone()[0]
    t0 = time.perf_counter()
    for v in items:
        q.put(v)
    t1 = time.perf_counter()
    for v in items:
        got = q.get(raw=True)
        q.ack(id=got["pqid"])
    t2 = time.perf_counter()
    assert got["data"] == items[-1] and q.qsize() == 0
    q.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {"put_s": t1 - t0, "get_done_s": t2 - t1,
            "note": f"journal={mode} synchronous={names.get(level, level)}"}


def worker(row: str, path: str, n: int) -> Dict[str, Any]:
    items = values(n)
    if row == ROWS[0][0]:
        res = run_logstore(path, items, "never")
    elif row == ROWS[1][0]:
        res = run_pq_file(path, items)
    elif row == ROWS[2][0]:
        res = run_pq_sqlite_ack(path, items, "OFF")
    elif row == ROWS[3][0]:
        res = run_logstore(path, items, "always")
    elif row == ROWS[4][0]:
        res = run_pq_sqlite_ack(path, items, None)
    else:
        raise SystemExit(f"unknown row {row!r}")
    res["items"] = n
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


# --------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=None,
                    help=f"items per process-crash row (default {DEFAULT_ITEMS})")
    ap.add_argument("--durable-items", type=int, default=None,
                    help=f"items per power-loss row (default {DEFAULT_DURABLE_ITEMS})")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_ITEMS} / {QUICK_DURABLE_ITEMS} items")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.path, args.n)))
        return

    items = args.items or (QUICK_ITEMS if args.quick else DEFAULT_ITEMS)
    durable_items = args.durable_items or (QUICK_DURABLE_ITEMS if args.quick
                                           else DEFAULT_DURABLE_ITEMS)
    have_pq = importlib.util.find_spec("persistqueue") is not None
    pq_version = None
    if have_pq:
        from importlib.metadata import version

        pq_version = version("persist-queue")
    tmp = tempfile.mkdtemp(prefix="dq-bench-")
    results: Dict[str, Dict[str, Any]] = {}
    try:
        for i, (row, durability, needs_pq) in enumerate(ROWS):
            if needs_pq and not have_pq:
                results[row] = {"skipped": "persist-queue not installed "
                                           "(pip install persist-queue)"}
                continue
            n = items if durability == "process crash" else durable_items
            path = os.path.join(tmp, f"row{i}")
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", row, "--path", path,
                 "--n", str(n)], capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                results[row] = {"skipped": "failed: " + out.stderr.strip().splitlines()[-1]}
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["durability"] = durability
            res["items_per_s"] = n / (res["put_s"] + res["get_done_s"])
            res["put_per_s"] = n / res["put_s"]
            res["get_done_per_s"] = n / res["get_done_s"]
            results[row] = res
            print(f"  {row}: done", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for row, durability, _ in ROWS:
        res = results[row]
        base = results.get(BASELINE[durability], {})
        if "items_per_s" in res and "items_per_s" in base:
            res["vs_logstore"] = res["items_per_s"] / base["items_per_s"]

    header = ["durability", "queue", "items", "put/s", "get+done/s", "items/s", "vs logstore",
              "peak RSS MB", "notes"]
    lines = []
    for row, durability, _ in ROWS:
        res = results[row]
        if "skipped" in res:
            lines.append([durability, row, "-", "-", "-", "-", "-", "-", res["skipped"]])
            continue
        lines.append([durability, row, f"{res['items']:,}", f"{res['put_per_s']:,.0f}",
                      f"{res['get_done_per_s']:,.0f}", f"{res['items_per_s']:,.0f}",
                      f"{res['vs_logstore']:.2f}", f"{res['peak_rss_mb']:.0f}", res["note"]])
    print(f"DurableQueue vs persist-queue {pq_version or '(not installed)'}: "
          f"put N, then N x (get + task_done/ack); {VALUE_SIZE}-byte items, pickled; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(_table.render(header, lines, left={0, 1, 8}, group_by_first=False))
    print("items/s = N / (put time + get/done time); vs logstore = items/s / the logstore row "
          "of the same durability")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "items": items, "durable_items": durable_items,
                       "persist_queue": pq_version, "python": platform.python_version(),
                       "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
