"""The ``logstore`` command line (click). Grows with the operator-CLI issue.

Commands here: ``demo`` (the README's main job).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import click

from . import __version__
from .log import Log

# A writer that is killed mid-stream by the demo: appends durably, reports acknowledged offsets.
_CRASH_WRITER = r"""
import sys, json
import logstore
log = logstore.Log.open(sys.argv[1], fsync="always", segment_bytes=64 * 1024)
i = 0
while True:
    off = log.append(json.dumps({"order": 100000 + i, "user": f"user-{i % 50}",
                                 "amount": i % 997}).encode(), key=f"user-{i % 50}".encode())
    print(off, flush=True)
    i += 1
"""


@click.group()
@click.version_option(__version__, prog_name="logstore")
def main() -> None:
    """logstore: a durable, segmented append-only log. See README.md."""


@main.command()
@click.argument("directory", default="./logstore-demo", type=click.Path(file_okay=False))
@click.option("--records", default=50_000, show_default=True, help="Orders to write.")
def demo(directory: str, records: int) -> None:
    """Write a realistic order stream into DIRECTORY, crash a writer, recover, replay."""
    path = os.path.join(directory, "orders")
    click.echo(f"logstore {__version__} demo in {os.path.abspath(directory)}")
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(200)]

    # 1. Bulk load in batches (one fsync per batch), then single durable appends.
    with Log.open(path, fsync="always", segment_bytes=1 << 20, compression="zstd") as log:
        start = log.end_offset
        t0 = time.perf_counter()
        for base in range(0, records, 500):
            n = min(500, records - base)
            batch_users = [rng.choice(users) for _ in range(n)]
            values = [json.dumps({"order": start + base + i, "user": u,
                                  "amount": rng.randint(1, 500)}).encode()
                      for i, u in enumerate(batch_users)]
            log.append_batch(values, keys=[u.encode() for u in batch_users],
                             headers=[{"type": b"order-created"}] * n)
        dt = time.perf_counter() - t0
        click.echo(f"1. appended {records:,} orders in batches of 500 (fsync=always, zstd): "
                   f"{records / dt:,.0f} records/s")
        t0 = time.perf_counter()
        for i in range(200):
            log.append(b'{"order": "single"}', key=b"user-0")
        dt = time.perf_counter() - t0
        click.echo(f"   200 single durable appends: {dt / 200 * 1e3:.2f} ms each "
                   f"(one fdatasync per append)")
        end = log.end_offset

    # 2. A writer process is killed with SIGKILL while appending durably.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, path],
                            stdout=subprocess.PIPE, env=env)
    acked = []
    deadline = time.time() + 0.7
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    click.echo(f"2. a writer acknowledged {len(acked)} durable appends, then was killed "
               f"with SIGKILL")

    # 3. Reopen: recovery truncates a torn tail (if any) and rebuilds the indexes.
    with Log.open(path) as log:
        report = log.recovery_report
        click.echo("3. reopened; recovery report:")
        for line in report.summary().splitlines():
            click.echo("   " + line)
        missing = [o for o in acked if o >= log.end_offset]
        click.echo(f"   acknowledged records lost: {len(missing)} (must be 0); "
                   f"end_offset={log.end_offset:,}")
        if missing:
            raise click.ClickException("acknowledged records were lost")

        # 4. Reads: by offset, by time, replay from an offset.
        rec = log.get(end // 2)
        click.echo(f"4. get({end // 2:,}) -> key={rec.key!r} value={rec.value[:60]!r}...")
        ts = log.get(records // 3).timestamp_ms
        click.echo(f"   offset_for_time({ts}) -> {log.offset_for_time(ts):,}")
        t0 = time.perf_counter()
        totals: dict = {}
        count = 0
        for r in log.replay(0):
            count += 1
            if r.key is not None:
                totals[r.key] = totals.get(r.key, 0) + 1
        dt = time.perf_counter() - t0
        top = sorted(totals.items(), key=lambda kv: -kv[1])[:3]
        click.echo(f"   replayed {count:,} records in {dt:.2f} s ({count / dt:,.0f}/s); "
                   f"busiest users: {', '.join(f'{k.decode()}={v}' for k, v in top)}")

        # 5. What is on disk.
        segs = log.segments()
        size = sum(s["size"] for s in segs)
        click.echo(f"5. {len(segs)} segments, {size / 1e6:.1f} MB on disk, offsets "
                   f"[{log.start_offset:,}, {log.end_offset:,})")
        for s in segs[-3:]:
            click.echo(f"   {os.path.basename(s['path'])}  {s['size']:>9,} bytes  "
                       f"offsets {s['base_offset']:,}..{s['next_offset'] - 1:,}")
    click.echo("done: run it again to append to the same log (recovery and replay repeat).")


if __name__ == "__main__":  # pragma: no cover
    main()
