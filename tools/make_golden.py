"""Write the small, deterministic golden logs of the current format under
``segments/golden/v2/``.

Usage (from the checkout)::

    python tools/make_golden.py            # rewrites segments/golden/v2/{plain,zstd,tables}
    python tools/make_golden.py --out DIR  # somewhere else (the tests regenerate into a tmp dir)

The logs are used by ``tests/test_cli.py`` and ``tests/test_format_v2.py`` (exact bytes, exact
``dump``/``verify`` output) and are handy for trying the operator commands by hand (``logstore
dump segments/golden/v2/plain``).

* ``plain``: uncompressed, three tiny segments (``segment_bytes=1024``), a sparse index entry
  every 128 bytes, keys, headers, tombstones, an empty value, a binary (non-UTF-8) key, value and
  header value, single appends and multi-record batches with distinct timestamps.
* ``zstd``: zstd-compressed batches of compressible JSON orders, two segments.
* ``tables``: batches large enough to carry a chunk table (payload above 16 KiB): one with
  keys, headers, tombstones and distinct timestamps, one of values only (``append_buffer``),
  between single appends.

``segments/golden/plain`` and ``segments/golden/zstd`` are the same logs in batch format
version 1, written by logstore 8f4b83a with this script's ``make_plain``/``make_zstd`` (their
``logstore.meta`` later gained the stored settings): they are frozen, never regenerated (this
logstore writes version 2 only), and keep proving that version 1 logs stay readable.

Everything is deterministic: fixed timestamps, fixed log id and creation time in
``logstore.meta``, no ``.lock`` file. Uncompressed bytes are identical on every run; zstd bytes
depend only on the zstd library version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import logstore  # noqa: E402
from logstore.storage import meta  # noqa: E402

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
GOLDEN_ID = "00000000000000000000000000601de7"


def _finish(path: str) -> None:
    """Make the directory deterministic: fixed metadata, no lock file."""
    with open(os.path.join(path, meta.META_NAME), "rb") as f:
        data = json.loads(f.read())
    data["id"] = GOLDEN_ID
    data["created_ms"] = T0
    with open(os.path.join(path, meta.META_NAME), "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1))
    lock = os.path.join(path, ".lock")
    if os.path.exists(lock):
        os.unlink(lock)


def make_plain(path: str) -> None:
    with logstore.Log.open(path, fsync="always", segment_bytes=1024,
                           index_interval_bytes=128) as log:
        t = T0
        for i in range(6):
            log.append(b'{"n": %d}' % i, key=b"user-%d" % (i % 3), timestamp_ms=t + i * 1000)
        log.append(b"created", key=b"user-0", headers={"type": b"created", "trace": b"t-1"},
                   timestamp_ms=t + 6000)
        log.append(None, key=b"user-1", timestamp_ms=t + 7000)  # tombstone
        log.append(b"", key=None, timestamp_ms=t + 8000)  # empty value, no key
        log.append(b"\x00\xff\xfe binary", key=b"\xff\xfekey",
                   headers={"bin": b"\x80\x81", "ok": b"yes"}, timestamp_ms=t + 9000)
        # Batches with distinct timestamps, some keys missing, a tombstone inside a batch.
        for b in range(4):
            n = 5
            base = 10 + b * n
            log.append_batch(
                [b"batch-%d-record-%d" % (b, j) if j != 3 else None for j in range(n)],
                keys=[b"user-%d" % ((base + j) % 3) if j % 2 == 0 else None for j in range(n)],
                headers=[{"batch": b"%d" % b} if j == 0 else None for j in range(n)],
                timestamps_ms=[t + (base + j) * 1000 for j in range(n)],
            )
        for i in range(30, 40):
            log.append(b"tail record %d " % i + b"." * (i % 7), key=b"user-%d" % (i % 3),
                       timestamp_ms=t + i * 1000)
    _finish(path)


def make_zstd(path: str) -> None:
    with logstore.Log.open(path, fsync="never", compression="zstd", segment_bytes=2048,
                           index_interval_bytes=256) as log:
        t = T0
        for b in range(6):
            n = 20
            base = b * n
            values = [json.dumps({"order": base + j, "user": f"user-{(base + j) % 7}",
                                  "amount": (base + j) * 37 % 500,
                                  "note": "standard shipping"}).encode() for j in range(n)]
            log.append_batch(values, keys=[b"user-%d" % ((base + j) % 7) for j in range(n)],
                             headers=[{"type": b"order-created"}] * n,
                             timestamps_ms=[t + (base + j) * 100 for j in range(n)])
        log.append(b"single uncompressed record", key=b"user-0", timestamp_ms=t + 120 * 100)
    _finish(path)


def make_tables(path: str) -> None:
    with logstore.Log.open(path, fsync="always", segment_bytes=64 << 10,
                           index_interval_bytes=4096) as log:
        t = T0
        log.append(b"first", key=b"user-0", timestamp_ms=t)
        n = 300
        log.append_batch(
            [None if j % 17 == 5 else b"record-%03d " % j + b"x" * (j % 90) for j in range(n)],
            keys=[b"user-%d" % (j % 7) if j % 11 else None for j in range(n)],
            headers=[{"n": b"%d" % j, "kind": b"even" if j % 2 == 0 else b"odd"}
                     if j % 4 == 0 else None for j in range(n)],
            timestamps_ms=[t + 1000 + j for j in range(n)])
        log.append(b"between", timestamp_ms=t + 2000)
        values = b"".join(b"%-100d" % j for j in range(400))  # 400 x 100 bytes, values only
        log.append_buffer(values, [100] * 400, timestamp_ms=t + 3000)
        log.append(None, key=b"user-1", timestamp_ms=t + 4000)
    _finish(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "segments", "golden", "v2"),
                    help="output directory (default: segments/golden/v2 of the checkout)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, fn in (("plain", make_plain), ("zstd", make_zstd), ("tables", make_tables)):
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            shutil.rmtree(path)
        fn(path)
        print(f"wrote {path}: {sorted(os.listdir(path))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
