"""``logstore produce``: append records read from stdin or a file to a log or a store's topics,
like kafka-console-producer.

Input formats (``--format``):

* ``text`` (default): one record per line (the line without its ``\\n``). ``--key K`` keys every
  record, ``--key-separator SEP`` takes each line's key from before the first SEP, ``--header
  NAME=VALUE`` adds headers, ``--timestamp TIME`` sets the timestamp, ``--null-marker TEXT``
  makes a line equal to TEXT a tombstone.
* ``jsonl``: exactly what ``logstore replay --format jsonl`` writes (``--values`` as it was
  written): every record's key, value, headers, timestamp and tombstone, so ``replay | produce``
  is a backup and restore. ``offset`` is ignored (the log assigns offsets; a log restored from
  offset 0 of a dense log gets the same ones); in a store, ``topic`` and ``partition`` say where
  a record goes unless ``--topic``/``--partition``/``--repartition`` say otherwise.
* ``raw``: the whole input is one value; with ``--length-prefixed``, values each follow their
  4-byte big-endian length (0xFFFFFFFF: a tombstone), as ``replay --format raw
  --length-prefixed`` writes them: binary-safe.

Takes the writer's lock (exit 3 if another writer has the log or the store open).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import click

from ..diagnostics.targets import require_log_dir, resolve_targets, store_path
from ..errors import LogstoreError, NotALogError, RecordTooLargeError, UnknownTopicError
from ..storage.log import Log
from ..views.names import validate_name
from .common import (
    EXIT_USAGE, CommandExit, error, exit_code, open_store, operator, option_flag, parse_options,
    path_arg, quiet_option, store_options,
)
from .output import TIME_HELP, Progress, binary, parse_time
from .render import TOMBSTONE_LENGTH

_LENGTH = struct.Struct(">I")


class Item(NamedTuple):
    """One input record, and where the input said it goes (jsonl from a store)."""

    value: Optional[bytes]
    key: Optional[bytes]
    headers: Optional[Dict[str, bytes]]
    timestamp_ms: Optional[int]
    topic: Optional[str] = None
    partition: Optional[int] = None


class InputError(Exception):
    """A line (or record) of the input that is not what the format says."""


@click.command()
@path_arg
@click.option("--file", "src", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read FILE instead of stdin (a progress bar on a terminal).")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl", "raw"]), default="text",
              show_default=True, help="Input format (see above).")
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True,
              help="jsonl: how keys, values and header values are encoded (as `replay "
                   "--values` wrote them).")
@click.option("--key", default=None, help="text: the key (UTF-8) of every record.")
@click.option("--key-separator", "key_sep", default=None, metavar="SEP",
              help="text: each line is KEY SEP VALUE (split at the first SEP).")
@click.option("--header", "header_opts", multiple=True, metavar="NAME=VALUE",
              help="text/raw: a header of every record (repeatable).")
@click.option("--timestamp", default=None, metavar="TIME",
              help=f"text/raw: the timestamp of every record ({TIME_HELP}); default now.")
@click.option("--null-marker", default=None, metavar="TEXT",
              help="text: a value equal to TEXT is a tombstone (null value).")
@click.option("--length-prefixed", is_flag=True,
              help="raw: values each after a 4-byte big-endian length (0xFFFFFFFF: a "
                   "tombstone); without it the whole input is one value.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Records per appended batch (written at every N records and at the end).")
@click.option("--create", is_flag=True,
              help="Create the log if PATH does not exist yet (with a store: the store and/or "
                   "the topics).")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --create: partitions of a new topic.")
@click.option("--repartition", is_flag=True,
              help="jsonl into a store: ignore the records' \"partition\" (place them by key, "
                   "as Topic.publish does).")
@option_flag
@store_options()
@quiet_option
@operator
def produce(path: str, src: Optional[str], fmt: str, values: str, key: Optional[str],
            key_sep: Optional[str], header_opts: Tuple[str, ...], timestamp: Optional[str],
            null_marker: Optional[str], length_prefixed: bool, batch_size: int, create: bool,
            partitions: int, repartition: bool, options: tuple, topic: Optional[str],
            partition: Optional[int], quiet: bool) -> None:
    """Append records read from stdin (or --file) to the log in PATH: one per line (text),
    replay's JSON lines (jsonl, a backup/restore round trip), or raw values.

    A store root needs --topic NAME (or, for jsonl, records carrying "topic"): keyed records
    go to the key's partition (as Topic.publish does), unkeyed ones round-robin, or all to
    --partition P; jsonl records from a store go back to their "partition" unless
    --repartition.

    Takes the writer's lock: fails with exit status 3 if another writer has the log (or the
    store) open. A line that does not fit the format ends the command with exit status 2
    after the lines before it are written. Prints a summary on stderr (not with --quiet).

    \b
    Examples:
      printf 'a\\nb\\n' | logstore produce data/orders --create
      logstore produce data/shop --topic orders --key-separator : --file orders.txt
      logstore replay data/shop --topic orders > orders.jsonl
      logstore produce restored --topic orders --format jsonl --create --partitions 4 \\
          --file orders.jsonl
      logstore replay data/blobs --format raw --length-prefixed | \\
          logstore produce copy --format raw --length-prefixed --create
    """
    opts = parse_options(options)
    _check_options(fmt, key, key_sep, header_opts, timestamp, null_marker, length_prefixed,
                   repartition)
    if partition is not None and topic is None:
        raise click.BadParameter("--partition needs --topic", param_hint="--partition")
    common = _Common(
        key=None if key is None else key.encode("utf-8"),
        headers=_header_options(header_opts),
        ts=None if timestamp is None else parse_time(timestamp, "--timestamp"))
    found = store_path(path)
    if topic is not None or (fmt == "jsonl" and found is not None and found[1] is None):
        if found is not None and found[1] is not None:
            raise NotALogError(f"{path} is a topic directory: pass the store root "
                               f"{os.path.dirname(os.path.dirname(path.rstrip(os.sep)))} "
                               f"with --topic")
        if found is None and not (create and not os.path.exists(path)):
            resolve_targets(path, topic)  # the usage error: not a store
        sink: Any = _StoreSink(path, opts, topic, partition, create, partitions, repartition)
    else:
        if found is not None:
            raise click.BadParameter(f"{path} is a store: name the topic with --topic",
                                     param_hint="--topic")
        if not (create and not os.path.exists(path)):
            require_log_dir(path, "produce")
        sink = _LogSink(path, opts)
    stream = open(src, "rb") if src else binary(sys.stdin)
    try:
        size = os.fstat(stream.fileno()).st_size if src else 0
        with Progress(size, "produce", quiet) as progress:
            reader = _Reader(stream, progress)
            items = _items(reader, fmt, values, key_sep, null_marker, length_prefixed, common)
            _produce(sink, items, reader, batch_size)
    finally:
        try:
            sink.close()
        finally:
            if src:
                stream.close()
    if not quiet:
        click.echo(sink.summary(), err=True)


def _check_options(fmt: str, key: Optional[str], key_sep: Optional[str],
                   header_opts: Tuple[str, ...], timestamp: Optional[str],
                   null_marker: Optional[str], length_prefixed: bool,
                   repartition: bool) -> None:
    text_only = {"--key": key, "--key-separator": key_sep, "--null-marker": null_marker}
    for name, given in text_only.items():
        if given is not None and fmt != "text":
            raise click.BadParameter(f"{name} is for --format text (jsonl records carry their "
                                     f"keys)", param_hint=name)
    if key is not None and key_sep is not None:
        raise click.BadParameter("choose one of --key and --key-separator", param_hint="--key")
    if key_sep == "":
        raise click.BadParameter("the separator is empty", param_hint="--key-separator")
    if fmt == "jsonl" and (header_opts or timestamp is not None):
        raise click.BadParameter("jsonl records carry their headers and timestamps",
                                 param_hint="--header/--timestamp")
    if length_prefixed and fmt != "raw":
        raise click.BadParameter("--length-prefixed is for --format raw",
                                 param_hint="--length-prefixed")
    if repartition and fmt != "jsonl":
        raise click.BadParameter("--repartition is for --format jsonl",
                                 param_hint="--repartition")


def _header_options(items: Tuple[str, ...]) -> Optional[Dict[str, bytes]]:
    out: Dict[str, bytes] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--header")
        out[name] = value.encode("utf-8")
    return out or None


class _Common(NamedTuple):
    key: Optional[bytes]
    headers: Optional[Dict[str, bytes]]
    ts: Optional[int]


# ---------------------------------------------------------------------------------- reading
class _Reader:
    """The input stream, counting lines (for messages) and bytes (for the progress bar)."""

    def __init__(self, stream: Any, progress: Any):
        self.stream = stream
        self.progress = progress
        self.line = 0  # the number of the last line (or raw record) read
        self.pending_bytes = 0

    def lines(self) -> Iterator[bytes]:
        for line in self.stream:
            self.line += 1
            self.pending_bytes += len(line)
            yield line[:-1] if line.endswith(b"\n") else line

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = self.stream.read(n)
            if not chunk:
                break
            parts.append(chunk)
            n -= len(chunk)
        data = b"".join(parts)
        self.pending_bytes += len(data)
        return data

    def tick(self) -> None:
        if self.pending_bytes:
            self.progress(self.pending_bytes)
            self.pending_bytes = 0


def _items(reader: _Reader, fmt: str, values: str, key_sep: Optional[str],
           null_marker: Optional[str], length_prefixed: bool, c: _Common) -> Iterator[Item]:
    if fmt == "jsonl":
        for line in reader.lines():
            if line.strip():
                yield _from_json(line, values)
    elif fmt == "raw":
        if not length_prefixed:
            reader.line = 1
            yield Item(reader.read(1 << 62), c.key, c.headers, c.ts)
            return
        while True:
            head = reader.read(4)
            if not head:
                return
            reader.line += 1
            if len(head) < 4:
                raise InputError("the input ends inside a length prefix")
            (n,) = _LENGTH.unpack(head)
            if n == TOMBSTONE_LENGTH:
                yield Item(None, c.key, c.headers, c.ts)
                continue
            value = reader.read(n)
            if len(value) < n:
                raise InputError(f"the input ends {n - len(value)} bytes into a value of "
                                 f"{n} bytes")
            yield Item(value, c.key, c.headers, c.ts)
    else:
        sep = None if key_sep is None else key_sep.encode("utf-8")
        marker = None if null_marker is None else null_marker.encode("utf-8")
        for line in reader.lines():
            key = c.key
            if sep is not None:
                k, found, line = line.partition(sep)
                if not found:
                    raise InputError(f"no key separator {key_sep!r} in the line")
                key = k
            yield Item(None if marker is not None and line == marker else line, key,
                       c.headers, c.ts)


def _from_json(line: bytes, mode: str) -> Item:
    """One line of ``replay --format jsonl`` (see ``output.record_json``)."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise InputError(f"not JSON ({e})") from None
    if not isinstance(obj, dict) or "value" not in obj:
        raise InputError("not a record of `logstore replay --format jsonl` (no \"value\")")
    try:
        value = _bytes(obj, "value", mode)
        key = _bytes(obj, "key", mode)
        raw_headers = obj.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise InputError("\"headers\" is not an object")
        b64 = mode == "base64" or obj.get("headers_encoding") == "base64"
        headers = {str(k): _decode(v, b64, "headers") for k, v in raw_headers.items()}
        ts = obj.get("timestamp_ms")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
            raise InputError("\"timestamp_ms\" is not an integer")
        topic, partition = obj.get("topic"), obj.get("partition")
        if topic is not None and not isinstance(topic, str):
            raise InputError("\"topic\" is not a string")
        if partition is not None and (isinstance(partition, bool)
                                      or not isinstance(partition, int) or partition < 0):
            raise InputError("\"partition\" is not an integer >= 0")
    except (binascii.Error, UnicodeEncodeError) as e:
        raise InputError(f"bad encoding ({e}); was it written with --values {mode}") from None
    return Item(value, key, headers or None, ts, topic, partition)


def _bytes(obj: Dict[str, Any], name: str, mode: str) -> Optional[bytes]:
    v = obj.get(name)
    if v is None:
        return None
    return _decode(v, mode == "base64" or obj.get(name + "_encoding") == "base64", name)


def _decode(v: Any, b64: bool, name: str) -> bytes:
    if not isinstance(v, str):
        raise InputError(f"{name!r}: a string expected, got {type(v).__name__}")
    return base64.b64decode(v, validate=True) if b64 else v.encode("utf-8")


# ---------------------------------------------------------------------------------- writing
def _produce(sink: Any, items: Iterator[Item], reader: _Reader, batch_size: int) -> None:
    """Append ``items`` through ``sink``, ``batch_size`` at a time; a bad input record ends it
    (after the records before it are written) with exit status 2."""
    waiting = 0
    first_line = 1
    while True:
        try:
            item = next(items, None)
            if item is None:
                break
            sink.add(item)
        except InputError as e:
            sink.flush(first_line, reader.line - 1)
            error(f"line {reader.line}: {str(e).rstrip('.?')}. Written in all: {sink.written()}")
            raise CommandExit(EXIT_USAGE) from None
        waiting += 1
        if waiting >= batch_size:
            sink.flush(first_line, reader.line)
            reader.tick()
            waiting = 0
            first_line = reader.line + 1
    sink.flush(first_line, reader.line)
    reader.tick()


def failed(e: BaseException, first_line: int, line: int, written: str) -> CommandExit:
    """Say on stderr what a failed append of input lines ``first_line..line`` (one batch) left
    written (``written``: e.g. "100 records, offsets 0..99 of LOG"), and the exit to take:
    2 for a record too large (a usage error), else as for any error."""
    reason = str(e).replace("; nothing was written", "")
    lines = f"line {line}" if first_line == line else f"lines {first_line}..{line}"
    error(f"appending {lines} failed: {reason}. Written in all: {written}")
    return CommandExit(EXIT_USAGE if isinstance(e, RecordTooLargeError) else exit_code(e))


class _Pending:
    """Records waiting for their batch, as append_batch's columns."""

    def __init__(self) -> None:
        self.values: List[Optional[bytes]] = []
        self.keys: List[Optional[bytes]] = []
        self.headers: List[Optional[Dict[str, bytes]]] = []
        self.ts: List[Optional[int]] = []

    def add(self, item: Item) -> None:
        self.values.append(item.value)
        self.keys.append(item.key)
        self.headers.append(item.headers)
        self.ts.append(item.timestamp_ms)

    def append_to(self, log: Log) -> range:
        keys = None if all(k is None for k in self.keys) else self.keys
        headers = None if all(h is None for h in self.headers) else self.headers
        stamps = None
        if any(t is not None for t in self.ts):
            now = time.time_ns() // 1_000_000  # (records without one in a batch with some)
            stamps = [now if t is None else t for t in self.ts]
        return log.append_batch(self.values, keys=keys, headers=headers, timestamps_ms=stamps)


class _LogSink:
    def __init__(self, path: str, opts: Dict[str, Any]):
        self.path = path
        self.log = Log.open(path, **opts)
        self.pending = _Pending()
        self.first: Optional[int] = None
        self.count = 0
        self.source: Optional[Tuple[Optional[str], Optional[int]]] = None

    def add(self, item: Item) -> None:
        source = (item.topic, item.partition)
        if self.source is None:
            self.source = source
        elif source != self.source:
            raise InputError(
                f"records of more than one partition ({_label(self.source)}, {_label(source)}) "
                f"into one log: restore a store into a store root (create its topics first, "
                f"or use --topic T --create --partitions N)")
        self.pending.add(item)

    def flush(self, first_line: int, line: int) -> None:
        p = self.pending
        if not p.values:
            return
        try:
            offs = p.append_to(self.log)
        except (LogstoreError, OSError, TypeError, ValueError) as e:
            raise failed(e, first_line, line, self.written()) from e
        if self.first is None:
            self.first = offs.start
        self.count += len(p.values)
        self.pending = _Pending()

    def written(self) -> str:
        if not self.count:
            return "no record"
        return f"{self.count} records, offsets {self.first}..{self.first + self.count - 1} " \
               f"of {self.path}"

    def summary(self) -> str:
        if not self.count:
            return f"produced 0 records to {self.path}"
        return f"produced {self.count} records at offsets {self.first}.." \
               f"{self.first + self.count - 1} to {self.path}"

    def close(self) -> None:
        self.log.close()


def _label(source: Tuple[Optional[str], Optional[int]]) -> str:
    return f"{source[0] or '?'}/{'?' if source[1] is None else source[1]}"


class _StoreSink:
    def __init__(self, path: str, opts: Dict[str, Any], topic: Optional[str],
                 partition: Optional[int], create: bool, partitions: int, repartition: bool):
        if topic is not None:
            validate_name("topic", topic)
        self.path = path
        self.topic = topic
        self.partition = partition
        self.create = create
        self.partitions = partitions
        self.repartition = repartition
        self.store = open_store(path, opts)
        self.topics: Dict[str, Any] = {}
        self.pending: Dict[Tuple[str, int], _Pending] = {}
        self.ranges: Dict[Tuple[str, int], List[int]] = {}  # [first, last] written
        self.count = 0
        try:
            if topic is not None:
                t = self._topic(topic)
                if partition is not None and partition >= t.partition_count:
                    raise UnknownTopicError(f"topic {topic!r} has no partition {partition} (it "
                                            f"has {t.partition_count})")
        except BaseException:
            self.store.close()
            raise

    def _topic(self, name: str) -> Any:
        t = self.topics.get(name)
        if t is None:
            if name not in self.store.topics():
                if not self.create:
                    raise UnknownTopicError(f"no topic {name!r} in store {self.path} (--create "
                                            f"makes it)")
                t = self.store.topic(name, self.partitions)
            else:
                t = self.store.get_topic(name)
            self.topics[name] = t
        return t

    def add(self, item: Item) -> None:
        name = self.topic if self.topic is not None else item.topic
        if name is None:
            raise InputError("the record has no \"topic\": name the topic with --topic")
        try:
            validate_name("topic", name)
            t = self._topic(name)
        except (LogstoreError, ValueError) as e:
            raise InputError(str(e)) from None
        p = self.partition
        if p is None and item.partition is not None and not self.repartition:
            p = item.partition
            if p >= t.partition_count:
                raise InputError(f"the record is for partition {p}, topic {name!r} has "
                                 f"{t.partition_count} (--repartition places records by key)")
        if p is None:
            p = t.partition_of(item.key)
        self.pending.setdefault((name, p), _Pending()).add(item)

    def flush(self, first_line: int, line: int) -> None:
        for (name, p), pend in sorted(self.pending.items()):
            try:
                offs = pend.append_to(self.topics[name].partitions[p])
            except (LogstoreError, OSError, TypeError, ValueError) as e:
                raise failed(e, first_line, line, self.written()) from e
            r = self.ranges.setdefault((name, p), [offs.start, offs.stop - 1])
            r[1] = offs.stop - 1
            self.count += len(offs)
        self.pending.clear()

    def _where(self) -> str:
        return ", ".join(f"{t}/{p} offsets {a}..{b}" for (t, p), (a, b) in
                         sorted(self.ranges.items()))

    def written(self) -> str:
        return f"{self.count} records ({self._where()})" if self.count else "no record"

    def summary(self) -> str:
        names = sorted({t for t, _ in self.ranges} | ({self.topic} if self.topic else set()))
        where = self._where()
        return (f"produced {self.count} records to {self.path} topic{'s' if len(names) > 1 else ''}"
                f" {', '.join(names)}" + (f": {where}" if where else ""))

    def close(self) -> None:
        self.store.close()
