"""``logstore produce``: append one record per input line to a log or a store's topic.

Takes the writer's lock (exit 3 if another writer has the log or the store open).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import click

from ..diagnostics.targets import require_log_dir, resolve_targets, store_path
from ..errors import LogstoreError, NotALogError, RecordTooLargeError, UnknownTopicError
from ..storage.log import Log
from ..views.names import validate_name
from .common import (
    EXIT_USAGE, CommandExit, error, exit_code, open_store, operator, option_flag, parse_options,
    path_arg, quiet_option, store_options,
)
from .output import binary


@click.command()
@path_arg
@click.option("--file", "src", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read lines from FILE instead of stdin.")
@click.option("--key", default=None, help="Key (UTF-8) of every record (default: no key).")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Records per appended batch (written at every N lines and at end of input).")
@click.option("--create", is_flag=True,
              help="Create the log if PATH does not exist yet (with --topic: the store and/or "
                   "the topic).")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --create --topic: partitions of a new topic.")
@option_flag
@store_options()
@quiet_option
@operator
def produce(path: str, src: Optional[str], key: Optional[str], batch_size: int, create: bool,
            partitions: int, options: tuple, topic: Optional[str], partition: Optional[int],
            quiet: bool) -> None:
    """Append one record per input line to the log in PATH (the line without its \\n).

    A store root needs --topic NAME: keyed records go to the key's partition (as
    Topic.publish does), unkeyed ones round-robin, or all to --partition P.

    Takes the writer's lock: fails with exit status 3 if another writer has the log (or the
    store) open. Prints a summary on stderr (not with --quiet).
    """
    opts = parse_options(options)
    kb = None if key is None else key.encode("utf-8")
    if partition is not None and topic is None:
        raise click.BadParameter("--partition needs --topic", param_hint="--partition")
    if topic is not None:
        target_store = store_path(path)
        if target_store is not None and target_store[1] is not None:
            raise NotALogError(f"{path} is a topic directory: pass the store root "
                               f"{os.path.dirname(os.path.dirname(path.rstrip(os.sep)))} "
                               f"with --topic")
        if target_store is None and not (create and not os.path.exists(path)):
            resolve_targets(path, topic)  # the usage error: not a store
        _produce_store(path, src, kb, batch_size, create, partitions, opts, topic, partition,
                       quiet)
        return
    if store_path(path) is not None:
        raise click.BadParameter(f"{path} is a store: name the topic with --topic",
                                 param_hint="--topic")
    if not (create and not os.path.exists(path)):
        require_log_dir(path, "produce")
    _produce_log(path, src, kb, batch_size, opts, quiet)


def _lines(stream: Any):
    """The input's lines without their ``\\n``."""
    for line in stream:
        yield line[:-1] if line.endswith(b"\n") else line


def failed(e: BaseException, first_line: int, line: int, written: str) -> CommandExit:
    """Say on stderr what a failed append of input lines ``first_line..line`` (one batch) left
    written (``written``: e.g. "100 records, offsets 0..99 of LOG"), and the exit to take:
    2 for a record too large (a usage error), else as for any error."""
    reason = str(e).replace("; nothing was written", "")
    lines = f"line {line}" if first_line == line else f"lines {first_line}..{line}"
    error(f"appending {lines} failed: {reason}. Written in all: {written}")
    return CommandExit(EXIT_USAGE if isinstance(e, RecordTooLargeError) else exit_code(e))


def _produce_log(path: str, src: Optional[str], kb: Optional[bytes], batch_size: int,
                 opts: Dict[str, Any], quiet: bool) -> None:
    log = Log.open(path, **opts)
    stream = open(src, "rb") if src else binary(sys.stdin)
    first = None
    count = 0
    line = 0
    pending: List[bytes] = []

    def flush() -> None:
        nonlocal first, count
        if not pending:
            return
        keys = None if kb is None else [kb] * len(pending)
        try:
            offs = log.append_batch(pending, keys=keys)
        except (LogstoreError, OSError) as e:
            written = (f"{count} records, offsets {first}..{first + count - 1} of {path}"
                       if count else "no record")
            raise failed(e, line - len(pending) + 1, line, written) from e
        if first is None:
            first = offs.start
        count += len(pending)
        pending.clear()

    try:
        for value in _lines(stream):
            line += 1
            pending.append(value)
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:
        try:
            log.close()
        finally:
            if src:
                stream.close()
    if not quiet:
        if count:
            click.echo(f"produced {count} records at offsets {first}..{first + count - 1} "
                       f"to {path}", err=True)
        else:
            click.echo(f"produced 0 records to {path}", err=True)


def _produce_store(path: str, src: Optional[str], kb: Optional[bytes], batch_size: int,
                   create: bool, partitions: int, opts: Dict[str, Any], topic: str,
                   partition: Optional[int], quiet: bool) -> None:
    validate_name("topic", topic)
    store = open_store(path, opts)
    stream = None
    try:
        if topic not in store.topics() and not create:
            raise UnknownTopicError(f"no topic {topic!r} in store {path} (--create makes it)")
        t = store.topic(topic, partitions if topic not in store.topics() else None)
        if partition is not None and partition >= t.partition_count:
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition} (it has "
                                    f"{t.partition_count})")
        stream = open(src, "rb") if src else binary(sys.stdin)
        pending: Dict[int, List[bytes]] = {}
        ranges: Dict[int, List[int]] = {}  # partition -> [first, last]
        count = 0
        waiting = 0

        def flush() -> None:
            nonlocal waiting
            for p, values in sorted(pending.items()):
                keys = None if kb is None else [kb] * len(values)
                try:
                    offs = t.partitions[p].append_batch(values, keys=keys)
                except (LogstoreError, OSError) as e:
                    done = sum(b - a + 1 for a, b in ranges.values())
                    where = ", ".join(f"{topic}/{q} offsets {a}..{b}"
                                      for q, (a, b) in sorted(ranges.items()))
                    raise failed(e, count - waiting + 1, count,
                                 f"{done} records ({where})" if done else "no record") from e
                r = ranges.setdefault(p, [offs.start, offs.stop - 1])
                r[1] = offs.stop - 1
            pending.clear()
            waiting = 0

        for value in _lines(stream):
            p = partition if partition is not None else t.partition_of(kb)
            pending.setdefault(p, []).append(value)
            count += 1
            waiting += 1
            if waiting >= batch_size:
                flush()
        flush()
    finally:
        try:
            store.close()
        finally:
            if src and stream is not None:
                stream.close()
    if not quiet:
        where = ", ".join(f"{topic}/{p} offsets {a}..{b}" for p, (a, b) in sorted(ranges.items()))
        click.echo(f"produced {count} records to {path} topic {topic}"
                   + (f": {where}" if where else ""), err=True)
