"""``logstore demo``: the README's main job, end to end, in numbered steps.

Each step is one function over a :class:`DemoRun` (the open store and what earlier steps
published); step 5's writer is a real module, :mod:`logstore.cli.demo_writer`, run in a child
process and killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import click

from ..diagnostics.store_stats import store_stats
from ..diagnostics.targets import is_store_root
from ..errors import NotALogError
from ..format.names import STORE_META
from ..version import __version__
from ..views.store import Store, Topic
from .check import print_store_stats
from .common import EXIT_CORRUPT, CommandExit, error, operator
from .output import Indented

DEMO_PARTITIONS = 4
DEMO_SUBSCRIPTIONS = ("audit", "analytics", "email")
DEMO_PAYMENTS = 200
DEMO_WORKERS = 4
CRASH_WATCH_S = 0.7  # how long the crash writer publishes (after its first ack) before SIGKILL
# logstore/cli/demo.py -> the directory holding the logstore package (for the child process).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class DemoRun:
    """State the steps share: the store, its orders topic, and what was published."""

    store: Store
    orders: Topic
    records: int
    rng: random.Random
    users: List[str]
    first_order: int
    published: int = 0
    subs: List[Any] = field(default_factory=list)
    pending_before: Dict[str, int] = field(default_factory=dict)

    def order(self, n: int) -> Tuple[bytes, bytes]:
        """(key, value) of order number ``n`` for a random user."""
        user = self.rng.choice(self.users)
        value = json.dumps({"order": n, "user": user, "amount": self.rng.randint(1, 500)})
        return user.encode(), value.encode()


@click.command()
@click.argument("directory", default="./logstore-demo", type=click.Path(file_okay=False))
@click.option("--records", default=50_000, show_default=True, type=click.IntRange(min=100),
              help="Orders to publish.")
@operator
def demo(directory: str, records: int) -> None:
    """A store in DIRECTORY: orders, pub/sub, a consumer group, a work queue, a crash.

    \b
    1. publishes orders keyed by user into topic "orders" (4 partitions, fsync=always);
    2. three durable subscriptions each receive every order (pub/sub fan-out);
    3. consumer group "billing" reads part of the stream, commits, and shows its lag;
    4. work queue "payments": 4 consumer threads ack the jobs; a poison message is redelivered
       until max_deliveries, then dead-lettered to "payments.dlq" (its headers say why);
    5. a writer process publishing durably is killed with SIGKILL; the store is reopened
       (crash recovery per partition) and every acknowledged order is read back;
    6. reads by offset and time, a replay; 7. `logstore stats` of the store.
    Run it again to append to the same store.
    """
    if os.path.isdir(directory) and os.listdir(directory) and not is_store_root(directory):
        raise NotALogError(f"{directory} is not empty and is not a store (no {STORE_META}; "
                           f"an older demo wrote a plain log there?): pass a new directory")
    click.echo(f"logstore {__version__} demo: a store in {os.path.abspath(directory)}")
    store = Store.open(directory, fsync="always", segment_bytes=1 << 20, compression="zstd",
                       dedup_window_s=0, retention_check_interval_s=0)
    try:
        orders = store.topic("orders", partitions=DEMO_PARTITIONS)
        run = DemoRun(store, orders, records, random.Random(7),
                      [f"user-{i}" for i in range(200)], sum(orders.end_offsets().values()))
        run.subs = [store.subscribe("orders", name) for name in DEMO_SUBSCRIPTIONS]
        run.pending_before = {s.name: sum(s.lag().values()) for s in run.subs}
        step_publish(run)
        step_fan_out(run)
        step_consumer_group(run)
        step_work_queue(run)
    finally:
        store.close()
    acked = step_crash(directory, run.first_order + 10_000_000)
    step_recover_and_read(directory, acked)
    click.echo(f"7. logstore stats {directory}")
    print_store_stats(Indented("   "), store_stats(directory))
    click.echo("done: run it again to append to the same store (recovery repeats); inspect it "
               f"with `logstore stats|verify|dump|tail {directory} [--topic orders]`.")


def step_publish(run: DemoRun) -> None:
    """1. A bulk load in batches (one fsync per partition batch), then single publishes."""
    orders, records = run.orders, run.records
    t0 = time.perf_counter()
    chunk = 500 * DEMO_PARTITIONS  # about 500 orders per partition batch
    for base in range(0, records, chunk):
        n = min(chunk, records - base)
        by_part: Dict[int, List[Tuple[bytes, bytes]]] = {}
        for i in range(n):
            key, value = run.order(run.first_order + base + i)
            by_part.setdefault(orders.partition_of(key), []).append((key, value))
        for p, items in sorted(by_part.items()):
            orders.partitions[p].append_batch(
                [v for _, v in items], keys=[k for k, _ in items],
                headers=[{"type": b"order-created"}] * len(items))
        run.published += n
    dt = time.perf_counter() - t0
    click.echo(f"1. published {records:,} orders keyed by user into topic \"orders\" "
               f"({DEMO_PARTITIONS} partitions): {records / dt:,.0f} records/s")
    click.echo("   (batches of ~500 per partition, fsync=always: one fdatasync per batch; "
               "zstd)")
    t0 = time.perf_counter()
    for i in range(200):
        key, value = run.order(run.first_order + records + i)
        orders.publish(value, key=key, headers={"type": b"order-created"})
    run.published += 200
    dt = time.perf_counter() - t0
    click.echo(f"   200 single durable publishes: {dt / 200 * 1e3:.2f} ms each (one "
               f"fdatasync per publish)")
    ends = orders.end_offsets()
    click.echo("   end offsets: " + "  ".join(f"orders/{p}={e:,}" for p, e in ends.items())
               + f"  (a user's orders all go to partition crc32c(user) % "
               f"{DEMO_PARTITIONS}, in order)")


def step_fan_out(run: DemoRun) -> None:
    """2. Pub/sub fan-out: every durable subscription receives every order."""
    t0 = time.perf_counter()
    got = {}
    for s in run.subs:
        n = 0
        while True:
            recs = s.poll(5000)
            if not recs:
                break
            n += len(recs)
        s.commit()
        got[s.name] = n
    dt = time.perf_counter() - t0
    ok = all(got[s.name] == run.pending_before[s.name] + run.published for s in run.subs)
    click.echo(f"2. pub/sub: {len(run.subs)} durable subscriptions each received every order "
               f"({', '.join(f'{k}={v:,}' for k, v in got.items())}; "
               f"{sum(got.values()) / dt:,.0f} records/s), committed their positions"
               + ("" if ok else "  MISMATCH"))
    for s in run.subs:
        s.close()


def step_consumer_group(run: DemoRun) -> None:
    """3. A consumer group reads part of the stream, commits, and lags behind."""
    billing = run.store.consumer("billing", "orders", start="earliest")
    want = max(1, run.published * 3 // 5)
    read = 0
    amount = 0
    while read < want:
        recs = billing.poll(min(1000, want - read))
        if not recs:
            break
        for r in recs:
            amount += json.loads(r.value)["amount"]
        read += len(recs)
    billing.commit()
    lag = {p: run.orders.partitions[p].end_offset - off
           for p, off in sorted(billing.committed().items())}
    click.echo(f"3. consumer group \"billing\" polled {read:,} orders (total amount "
               f"{amount:,}) and committed; lag: "
               + "  ".join(f"{p}={v:,}" for p, v in lag.items())
               + f"  (total {sum(lag.values()):,})")
    billing.close()


def step_work_queue(run: DemoRun) -> None:
    """4. Work queue: consumer threads ack payment jobs; a poison message is dead-lettered."""
    q = run.store.queue("payments", visibility_timeout=10, max_deliveries=3)
    poison_at = DEMO_PAYMENTS // 3
    for i in range(DEMO_PAYMENTS):
        user = run.rng.choice(run.users)
        job = {"order": run.first_order + i, "user": user, "amount": run.rng.randint(1, 500)}
        if i == poison_at:
            job["card"] = "expired"
        q.put(json.dumps(job).encode(), key=user.encode())
    t0 = time.perf_counter()
    acks, poison_deliveries = _work_queue_consumers(q)
    dt = time.perf_counter() - t0
    st = q.stats()
    click.echo(f"4. work queue \"payments\": {DEMO_PAYMENTS} payment jobs put, "
               f"{DEMO_WORKERS} consumer threads acked {len(acks)} in {dt:.2f} s ("
               + ", ".join(str(acks.count(n)) for n in range(DEMO_WORKERS))
               + "); the poison job (expired card) was delivered "
               f"{len(poison_deliveries)} times (max_deliveries=3), then dead-lettered")
    dlq = run.store.topic("payments.dlq").partitions[0]
    if dlq.end_offset > dlq.start_offset:
        dead = dlq.get(dlq.end_offset - 1)
        hdrs = "  ".join(f"{k}={v.decode('utf-8', 'replace')}"
                         for k, v in sorted(dead.headers.items()))
        click.echo(f"   payments.dlq offset {dead.offset}: {dead.value.decode()}")
        click.echo(f"     headers: {hdrs}")
    click.echo("   queue stats: " + "  ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items()))


def _work_queue_consumers(q: Any) -> Tuple[List[int], List[int]]:
    """Run the consumer threads until the queue is empty; (worker of each ack, delivery count
    of each delivery of the poison job)."""
    acks: List[int] = []
    poison_deliveries: List[int] = []
    failures: List[BaseException] = []
    deadline = time.monotonic() + 30

    def worker(n: int) -> None:
        try:
            while len(q) and time.monotonic() < deadline:
                msg = q.get(timeout=0.2)
                if msg is None:
                    continue
                if json.loads(msg.value).get("card") == "expired":
                    poison_deliveries.append(msg.delivery_count)
                    msg.nack(delay=0)  # "card declined": retry; after 3 deliveries: DLQ
                else:
                    msg.ack()  # durable when it returns (concurrent acks share fsyncs)
                    acks.append(n)
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    workers = [threading.Thread(target=worker, args=(n,), daemon=True)
               for n in range(DEMO_WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise failures[0]
    return acks, poison_deliveries


def _child_env() -> Dict[str, str]:
    """The environment of a child process that must import this logstore, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def step_crash(directory: str, first: int) -> List[Tuple[int, int, int]]:
    """5. A writer process publishing durably is killed with SIGKILL; return the (partition,
    offset, order) of every publish it acknowledged."""
    proc = subprocess.Popen([sys.executable, "-m", "logstore.cli.demo_writer", directory,
                             str(first)], stdout=subprocess.PIPE, env=_child_env())
    acked: List[Tuple[int, int, int]] = []
    assert proc.stdout is not None
    try:
        first_line = proc.stdout.readline()  # wait for the child's first acknowledged publish
        if first_line:
            acked.append(tuple(map(int, first_line.split())))
        deadline = time.time() + CRASH_WATCH_S
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(tuple(map(int, line.split())))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    click.echo(f"5. a writer process acknowledged {len(acked)} durable publishes "
               f"(fsync=always), then was killed with SIGKILL")
    return acked


def step_recover_and_read(directory: str, acked: List[Tuple[int, int, int]]) -> None:
    """5 (cont.) Reopen: crash recovery, every acknowledged order read back; 6. reads."""
    store = Store.open(directory, fsync="always", dedup_window_s=0, retention_check_interval_s=0)
    try:
        orders = store.topic("orders")
        click.echo("   reopened the store; crash recovery per partition:")
        for p, log in enumerate(orders.partitions):
            rep = log.recovery_report
            text = rep.summary() if rep is not None else "nothing to recover"
            text = text.replace(os.path.dirname(log.path + os.sep) + os.sep, "")
            for i, line in enumerate(text.splitlines()):
                click.echo(f"     {'orders/%d: ' % p if i == 0 else '  '}{line.strip()}")
        missing = 0
        for p, off, order in acked:
            log = orders.partitions[p]
            if off >= log.end_offset or json.loads(log.get(off).value)["order"] != order:
                missing += 1
        click.echo(f"   acknowledged records lost: {missing} (must be 0); every acknowledged "
                   f"order read back by (partition, offset) with its content"
                   if not missing else f"   acknowledged records lost: {missing} (must be 0)")
        if missing:
            error("acknowledged records were lost")
            raise CommandExit(EXIT_CORRUPT)
        step_reads(orders)
    finally:
        store.close()


def step_reads(orders: Topic) -> None:
    """6. Reads: by offset, by time, a replay of every partition."""
    log = orders.partitions[1]
    if log.end_offset > log.start_offset:
        mid = (log.start_offset + log.end_offset) // 2
        rec = log.get(mid)
        click.echo(f"6. orders/1 get({mid:,}) -> key={rec.key.decode()} "
                   f"value={rec.value[:60].decode()}")
        ts = rec.timestamp_ms
        click.echo(f"   orders/1 offset_for_time({ts}) -> {log.offset_for_time(ts):,}")
    t0 = time.perf_counter()
    totals: Dict[bytes, int] = {}
    count = 0
    for part in orders.partitions:
        for r in part.replay(part.start_offset):
            count += 1
            totals[r.key] = totals.get(r.key, 0) + 1
    dt = time.perf_counter() - t0
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:3]
    click.echo(f"   replayed all {count:,} orders in {dt:.2f} s ({count / dt:,.0f}/s); "
               f"busiest users: {', '.join(f'{k.decode()}={v}' for k, v in top)}")
