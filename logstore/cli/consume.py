"""``logstore consume``: print records as JSON lines (or raw), like kafka-console-consumer.

Without ``--group`` it reads a log (or a store's partitions) from ``--from-offset`` /
``--from-time`` (default: the start) and changes nothing. With ``--group G`` (a store root and
``--topic``) it is a member of consumer group G: it reads the partitions the group assigns it
from the group's committed positions, commits the position after the records it has written
(once they are written out: at-least-once, as any member), and a later run resumes there.
Either way it ends when it has caught up, after ``--max`` records, or after ``--timeout``
seconds without a new record; ``--follow`` waits for new records instead of ending when caught
up (Ctrl-C ends it, exit 0).

Records are read a stored batch at a time and written by :mod:`.render`, like ``replay``. The
store is opened read-only: consuming works beside the process that writes the store, and group
members in other processes share the partitions with it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import click

from ..diagnostics.targets import store_path
from ..errors import NotALogError, NotAssignedError, OffsetOutOfRangeError
from ..views.consumer import validate_group
from ..views.store import Store
from . import render
from .common import (
    error, opened_readers, operator, path_arg, quiet_option, store_options,
)
from .output import PROGRESS_MIN_RECORDS, Out, Progress, where
from .ranges import Range, log_bounds, parse_range, range_options
from .read import write_batches

ROUND_RECORDS = 50_000  # per partition per round: commits and partitions take turns this often


@click.command()
@path_arg
@range_options
@click.option("--group", "-g", default=None, metavar="G",
              help="Consume as a member of consumer group G (needs a store root and --topic): "
                   "from its committed positions, committing as records are written.")
@click.option("--start", type=click.Choice(["earliest", "latest"]), default="earliest",
              show_default=True, help="With --group: where a new group starts.")
@click.option("--follow", "-f", is_flag=True,
              help="Wait for new records instead of ending when caught up (Ctrl-C ends, "
                   "exit 0).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="End after SECONDS without a new record (also with --follow).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "raw"]), default="jsonl",
              show_default=True)
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True, help="jsonl: how keys, values and header values are written.")
@click.option("--newline", is_flag=True, help="raw: write a \\n after each value.")
@click.option("--interval", type=click.FloatRange(min=0.001), default=0.1, show_default=True,
              help="Seconds between looks for new records while waiting.")
@store_options()
@quiet_option
@operator
def consume(path: str, from_offset: Optional[int], to_offset: Optional[int],
            from_time: Optional[str], to_time: Optional[str], max_records: Optional[int],
            group: Optional[str], start: str, follow: bool, timeout: Optional[float],
            fmt: str, values: str, newline: bool, interval: float, topic: Optional[str],
            partition: Optional[int], quiet: bool) -> None:
    """Print records of the log in PATH as JSON lines (the `replay` format), then exit.

    Reads from --from-offset/--from-time (default: the start) up to the end as it is when the
    command starts (--to-offset/--to-time: an earlier end), and ends there, after --max
    records in all, or after --timeout seconds without a new record. --follow: keep waiting
    for new records (until Ctrl-C, exit 0). Without --group nothing is committed or changed.

    With --group G (PATH a store root, --topic T): a member of consumer group G. It reads the
    partitions the group assigns it (all of them, unless members in other processes share
    them), from the group's committed positions (a new group: --start), and commits the
    position after the records it wrote once they are written out, so the next run resumes
    there (at-least-once). --from-offset/--from-time move the group's position in the
    partitions it holds at the start; --to-offset/--to-time stop reading each partition
    there. The store is opened read-only: it works beside the process writing the store.

    \b
    Examples:
      logstore consume data/orders --from-offset 100 --max 10 --values text
      logstore consume data/shop --topic orders --group billing --max 1000
      logstore consume data/shop --topic orders --group audit --follow --timeout 60
      logstore consume data/shop --topic orders --from-time -15m --format raw --newline
    """
    r = parse_range(from_offset, to_offset, from_time, to_time, max_records)
    if fmt != "raw" and newline:
        raise click.BadParameter("--newline is for --format raw", param_hint="--newline")
    if follow and r.bounded:
        raise click.BadParameter("--follow waits for new records: it cannot have an end "
                                 "(--to-offset/--to-time)", param_hint="--follow")
    framing = "newline" if newline else "none"
    out = Out()
    writer = _Writer(out, fmt, values, framing)
    try:
        if group is not None:
            validate_group(group)
            _consume_group(path, topic, partition, group, start, r, follow, timeout, interval,
                           writer, quiet)
        else:
            _consume_logs(path, topic, partition, r, follow, timeout, interval, writer, quiet)
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow ends: exit 0 (what was written is committed already)
    out.close()


class _Writer:
    """Writes ranges of a log (``read.write_batches``), counting against ``--max``."""

    def __init__(self, out: Out, fmt: str, values: str, framing: str):
        self.out = out
        self.fmt = fmt
        self.values = values
        self.framing = framing
        self.left: Optional[int] = None
        self.progress: Any = None

    def write(self, log: Any, start: int, stop: int, pre: bytes, cap: Optional[int] = None
              ) -> int:
        """Write ``[start, stop)`` (at most ``cap`` records and what --max leaves); return the
        next offset to read."""
        want = self.left if cap is None else cap if self.left is None else min(cap, self.left)
        before = want
        left, nxt = write_batches(self.out, log, start, stop, want, self.fmt, self.values,
                                  self.framing, pre, self.progress)
        if self.left is not None and before is not None and left is not None:
            self.left -= before - left
        return nxt

    @property
    def done(self) -> bool:
        return self.left is not None and self.left <= 0


class _Idle:
    """``--timeout``: the time since the last record."""

    def __init__(self, timeout: Optional[float]):
        self.timeout = timeout
        self.last = time.monotonic()

    def got(self) -> None:
        self.last = time.monotonic()

    @property
    def expired(self) -> bool:
        return self.timeout is not None and time.monotonic() - self.last >= self.timeout


def _follow_loop(step: Callable[[], bool], caught_up: Callable[[], bool], writer: _Writer,
                 follow: bool, idle: _Idle, interval: float) -> None:
    """Call ``step`` (True: records were written) until --max, the end, or --timeout."""
    while not writer.done:
        if step():
            writer.out.flush()
            idle.got()
            continue
        if idle.expired or (not follow and caught_up()):
            return
        time.sleep(interval)


# ------------------------------------------------------------------------------ without a group
def _consume_logs(path: str, topic: Optional[str], partition: Optional[int], r: Range,
                  follow: bool, timeout: Optional[float], interval: float, writer: _Writer,
                  quiet: bool) -> None:
    writer.left = r.max_records
    with opened_readers(path, topic, partition, "consume") as readers:
        several = len(readers) > 1
        plan = []
        for target, log in readers:
            begin, stop = log_bounds(log, r, several)
            if not several and begin > log.end_offset:
                raise OffsetOutOfRangeError(f"offset {begin} is past the end of the log "
                                            f"(end_offset {log.end_offset})")
            plan.append([log, begin, stop, render.prefix(where(target)), target.label])
        total = sum(stop - begin for _, begin, stop, _, _ in plan)
        with Progress(total if not follow else 0, "consume", quiet, output_is_stdout=True,
                      minimum=PROGRESS_MIN_RECORDS) as progress:
            writer.progress = progress
            for item in plan:  # what is there now, partition after partition
                log, begin, stop, pre, _ = item
                if writer.done:
                    return
                if begin < stop or begin < log.start_offset:
                    item[1] = writer.write(log, begin, stop, pre)
            writer.out.flush()
            if r.bounded or writer.done or not (follow or timeout is not None):
                return

            def step() -> bool:
                wrote = False
                for item in plan:
                    log, nxt, _, pre, label = item
                    end = log.end_offset
                    if nxt < log.start_offset:
                        nxt = _skipped(label, nxt, log)
                    if nxt < end and not writer.done:
                        item[1] = writer.write(log, nxt, end, pre)
                        wrote = True
                return wrote

            _follow_loop(step, lambda: True, writer, follow, _Idle(timeout), interval)


def _skipped(label: str, nxt: int, log: Any) -> int:
    """Retention deleted records before they were read: say so, go on at the start."""
    start = log.start_offset
    click.echo(f"logstore: {label}: offsets {nxt}..{start - 1} were deleted by "
               f"retention before they were read; continuing at {start}", err=True)
    return start


# ------------------------------------------------------------------------------ as a group member
def _consume_group(path: str, topic: Optional[str], partition: Optional[int], group: str,
                   start: str, r: Range, follow: bool, timeout: Optional[float],
                   interval: float, writer: _Writer, quiet: bool) -> None:
    found = store_path(path)
    if found is None or found[1] is not None:
        raise NotALogError(f"--group needs a store root (a directory with store.meta) and "
                           f"--topic; {path} is not a store root")
    if topic is None:
        raise click.BadParameter("--group needs --topic", param_hint="--topic")
    if partition is not None:
        raise click.BadParameter("--partition does not apply with --group: the group assigns "
                                 "the partitions", param_hint="--partition")
    writer.left = r.max_records
    store = Store.open(found[0], readonly=True, dedup_window_s=0)
    try:
        t = store.get_topic(topic)
        consumer = store.consumer(group, topic, start=start)
        try:
            _run_member(consumer, t, r, follow, timeout, interval, writer, quiet)
        finally:
            consumer.close()
    finally:
        store.close()


def _run_member(consumer: Any, t: Any, r: Range, follow: bool, timeout: Optional[float],
                interval: float, writer: _Writer, quiet: bool) -> None:
    stops: Dict[int, int] = {}  # partition -> where this run stops reading it (--to-*)
    pres = {p: render.prefix({"topic": t.name, "partition": p})
            for p in range(t.partition_count)}
    if r.from_offset is not None or r.from_time is not None:
        for p in consumer.assignment():
            begin, _ = log_bounds(t.partitions[p], r, True)
            consumer.seek(p, begin)

    def stop_of(p: int) -> int:
        end = t.partitions[p].end_offset
        if not r.bounded:
            return end
        if p not in stops:
            stops[p] = log_bounds(t.partitions[p], r, True)[1]
        return min(stops[p], end)

    def step() -> bool:
        wrote = False
        for p in consumer.assignment():
            log = t.partitions[p]
            try:
                pos = consumer.position(p)
            except NotAssignedError:
                continue  # moved to another member meanwhile
            if pos < log.start_offset:
                pos = _skipped(f"{t.name}/{p}", pos, log)
            stop = stop_of(p)
            if pos >= stop or writer.done:
                continue
            nxt = writer.write(log, pos, stop, pres[p], ROUND_RECORDS)
            writer.out.flush()  # written out before it is committed: at-least-once
            wrote = True
            try:
                consumer.seek(p, nxt)
                consumer.commit({p: nxt})
            except NotAssignedError:
                error(f"{t.name}/{p} moved to another member of the group before its position "
                      f"{nxt} was committed: its new owner reads it again from the last commit")
        return wrote

    def caught_up() -> bool:
        lags = _lags(consumer, t, stop_of)
        return all(v <= 0 for v in lags.values())

    _follow_loop(step, caught_up, writer, follow, _Idle(timeout), interval)


def _lags(consumer: Any, t: Any, stop_of: Callable[[int], int]) -> Dict[int, int]:
    out = {}
    for p in consumer.assignment():
        try:
            out[p] = stop_of(p) - max(consumer.position(p), t.partitions[p].start_offset)
        except NotAssignedError:
            pass
    return out

