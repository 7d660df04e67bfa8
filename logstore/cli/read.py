"""Commands that read records: ``dump`` (what is stored, batch by batch, from the files),
``tail`` and ``replay`` (through read-only opens of the logs; ``consume`` is in ``consume``).

All of them work beside a running writer and change nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import click

from ..diagnostics.indexes import index_report
from ..diagnostics.scan import (
    BatchEvent, ErrorEvent, GapEvent, SegmentEnd, SegmentStart, scan,
)
from ..diagnostics.targets import Target, resolve_targets
from ..errors import CorruptLogError, NotALogError, OffsetOutOfRangeError
from ..format.header import chunk_count
from ..storage.log import Log
from ..views.names import partition_for_key
from .common import (
    EXIT_CORRUPT, CommandExit, error, opened_readers, operator, path_arg, quiet_option,
    store_options,
)
from . import render
from .output import (
    PROGRESS_MIN_RECORDS, VALUE_MODES, Out, Progress, dumps, json_bytes, json_headers, labelled,
    rec_json, record_line, seg_heading, seg_label, text_bytes, total_bytes, where,
)
from .ranges import Range, log_bounds, parse_range, range_options


# ------------------------------------------------------------------------------------ dump
@dataclass(frozen=True)
class DumpOptions:
    from_offset: Optional[int]
    max_items: Optional[int]
    values: str
    as_json: bool
    batches: bool
    continue_on_error: bool


@click.command()
@path_arg
@click.option("--from-offset", type=click.IntRange(min=0), default=None,
              help="Start at this offset (skips whole segments and batches below it).")
@click.option("--max", "max_items", type=click.IntRange(min=1), default=None,
              help="Print at most N records (or batches).")
@click.option("--values", type=click.Choice(VALUE_MODES), default="none", show_default=True,
              help="How to print values (text: UTF-8 as a JSON string, else 0x-hex).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--batches", is_flag=True, help="One line per batch instead of per record.")
@click.option("--index", "show_index", is_flag=True,
              help="Print the offset and time index entries instead, checking each against "
                   "the log.")
@click.option("--continue-on-error", is_flag=True,
              help="After corrupt data, skip to the next valid batch (8-aligned magic with a "
                   "valid CRC) instead of stopping.")
@click.option("--key", "key_text", default=None, metavar="K",
              help="Only the records whose key is K (UTF-8), read through the key index "
                   "(a store: with --topic; the key's partition unless --partition).")
@click.option("--key-hex", default=None, metavar="HEX",
              help="--key given as hex digits (keys that are not UTF-8).")
@store_options()
@quiet_option
@operator
def dump(path: str, from_offset: Optional[int], max_items: Optional[int], values: str,
         as_json: bool, batches: bool, show_index: bool, continue_on_error: bool,
         key_text: Optional[str], key_hex: Optional[str],
         topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Print the records (or batches, or index entries) stored in PATH.

    PATH is a log directory, one .log segment file, or a store root (every partition of every
    topic, or --topic NAME [--partition P]; --from-offset and --max apply per partition).
    Read-only; works while a writer runs.

    \b
    Record line: offset=N ts=MS time=ISO8601 key=K size=BYTES headers={..} batch=POS codec=C crc=ok [value=V]
    Batch line:  batch=POS offsets=A..B records=N base_ts=MS max_ts=MS length=L payload=P
                 raw=R codec=C version=V chunks=K crc=ok|BAD
    (version: the batch format, 1 or 2; chunks: entries of a version 2 batch's chunk table,
    0 for none: its bytes are then checked as a whole)
    Keys and header values print as JSON strings, or 0x-hex when not UTF-8; null = none
    (size=null: a tombstone). --json prints the same fields as JSON objects (key/headers as
    text, falling back to base64 with a "key_encoding"/"headers_encoding" marker); records and
    batches of a store's topic also carry "topic" and "partition".

    Exit 1 if corrupt data is met: its file and byte position are printed on stderr, and
    whether `logstore recover` would repair it (a torn tail of the active segment).

    --key K (or --key-hex): only that key's records, in offset order, found through the
    segments' key indexes instead of a scan (Log.replay_key; no batch/codec/crc fields). A store
    needs --topic: the key's partition is the one publish puts it in (--partition to read
    another). A read-only command never writes the index files: where the writer has not saved
    them yet, each run indexes the segments again in memory.

    \b
    Examples:
      logstore dump data/orders --max 20 --values text
      logstore dump data/shop --topic orders --partition 2 --json
      logstore dump data/orders/00000000000000000000.log --batches
      logstore dump data/orders --index
      logstore dump data/orders --key user-7
    """
    if key_text is not None or key_hex is not None:
        key = _key_option(key_text, key_hex, batches, show_index, continue_on_error)
        dump_key(path, key, topic, partition, from_offset, max_items, values, as_json)
        return
    targets = resolve_targets(path, topic, partition)
    out = Out()
    if show_index:
        dump_index(targets, out, as_json)
        return
    opts = DumpOptions(from_offset, max_items, values, as_json, batches, continue_on_error)
    bad = False
    for target in targets:
        bad |= _dump_target(out, target, opts, quiet, single=len(targets) == 1)
    out.close()
    if bad:
        raise CommandExit(EXIT_CORRUPT)


def _key_option(key_text: Optional[str], key_hex: Optional[str], batches: bool,
                show_index: bool, continue_on_error: bool) -> bytes:
    """The key of ``dump --key``/``--key-hex`` (usage errors for what does not go with it)."""
    if key_text is not None and key_hex is not None:
        raise click.UsageError("give --key or --key-hex, not both")
    if batches or show_index or continue_on_error:
        raise click.UsageError("--key prints records through the key index: it does not go "
                               "with --batches, --index or --continue-on-error")
    if key_text is not None:
        return key_text.encode("utf-8")
    try:
        return bytes.fromhex(key_hex or "")
    except ValueError:
        raise click.BadParameter(f"{key_hex!r} is not hex digits", param_hint="--key-hex"
                                 ) from None


def dump_key(path: str, key: bytes, topic: Optional[str], partition: Optional[int],
             from_offset: Optional[int], max_items: Optional[int], values: str,
             as_json: bool) -> None:
    """``dump --key``: the records of ``key`` in the log PATH names (a store's topic: the
    key's partition, or ``partition``), through ``Log.replay_key``."""
    targets = resolve_targets(path, topic, None)
    if any(t.segment is not None for t in targets):
        raise NotALogError(f"--key reads through the log's key index: give the log directory, "
                           f"not a segment file ({path})")
    if len(targets) > 1 or targets[0].expanded:
        topics = {t.topic for t in targets}
        if len(topics) != 1 or None in topics:
            raise NotALogError("--key on a store needs --topic NAME (a key lives in one "
                               "partition of one topic)")
        broken = [t.broken for t in targets if t.broken is not None]
        if broken:
            raise CorruptLogError(broken[0], targets[0].log_dir)
        if partition is None:
            partition = partition_for_key(key, len(targets))
        elif not 0 <= partition < len(targets):
            raise NotALogError(f"topic {targets[0].topic!r} has no partition {partition}")
        targets = [targets[partition]]
    elif partition is not None:
        raise NotALogError("--partition needs --topic (partition numbers are per topic)")
    target = targets[0]
    out = Out()
    with Log.open(target.log_dir, readonly=True) as log:
        start = log.start_offset if from_offset is None else from_offset
        recs = log.replay_key(key, start)
    for rec in recs[:max_items]:
        if as_json:
            obj: Dict[str, Any] = {**where(target), "offset": rec.offset,
                                   "timestamp_ms": rec.timestamp_ms}
            json_bytes(obj, "key", rec.key, "text")
            obj["value_size"] = None if rec.value is None else len(rec.value)
            if values != "none":
                json_bytes(obj, "value", rec.value, values)
            json_headers(obj, rec.headers, "text")
            out.line(dumps(obj))
        else:
            out.line(labelled(target, record_line(rec, values)))
    out.close()


def _dump_target(out: Out, target: Target, o: DumpOptions, quiet: bool,
                 single: bool = True) -> bool:
    """Dump one log; True if corrupt data was met. ``--from-offset`` past the end of the only
    log dumped is a usage error (as for ``replay``); of a store's partitions, one that ends
    before it just shows nothing."""
    count = 0
    bad = False
    end: Optional[int] = None
    if target.broken is not None:  # (a store's unreadable topic.json: the others go on)
        out.flush()
        error(f"{target.label}: {target.broken} (data damaged)")
        return True
    with Progress(total_bytes(target), "dump", quiet, output_is_stdout=True) as progress:
        for ev in scan(target, decode=True, continue_on_error=o.continue_on_error,
                       from_offset=o.from_offset, progress=progress):
            if isinstance(ev, SegmentStart):
                if not o.as_json:
                    kind = "active" if ev.seg.active else "sealed"
                    if ev.seg.base_offset is None:
                        kind = "segment"
                    out.line(f"# {seg_heading(target, ev.seg.path)} ({kind}, {ev.size} bytes)")
            elif isinstance(ev, BatchEvent):
                if o.batches:
                    batch_line(out, target, ev.seg, ev.pos, ev.header, "ok", o.as_json)
                    count += 1
                else:
                    shown = _dump_records(out, target, ev, o, count)
                    if shown is None:
                        bad = True
                        continue
                    count = shown
                if o.max_items is not None and count >= o.max_items:
                    out.flush()
                    break
            elif isinstance(ev, ErrorEvent):
                bad = True
                _dump_error(out, target, ev, o)
            elif isinstance(ev, SegmentEnd):
                end = ev.next_offset if ev.next_offset is not None else ev.seg.base_offset
            elif isinstance(ev, GapEvent):
                bad = True
                out.flush()
                error(f"{seg_label(target, ev.seg.path)}"
                      + ("" if ev.at_end else f" at byte {ev.pos}")
                      + f": {ev.reason} (data damaged: the log is not compacted, so offsets "
                        f"must be dense)")
    if (single and not bad and o.from_offset is not None and end is not None
            and o.from_offset > end and target.segment is None):
        raise OffsetOutOfRangeError(f"offset {o.from_offset} is past the end of the log "
                                    f"(end_offset {end})")
    return bad


def _dump_records(out: Out, target: Target, ev: BatchEvent, o: DumpOptions, count: int
                  ) -> Optional[int]:
    """Print the records of one batch; the new count, or None for malformed record headers
    (then, without --continue-on-error, the command ends with exit 1)."""
    try:
        recs = ev.batch.records()
    except CorruptLogError as e:
        error(f"{e} (a CRC-valid batch with malformed record headers: data damaged)")
        if not o.continue_on_error:
            raise CommandExit(EXIT_CORRUPT)
        return None
    h = ev.header
    for rec in recs:
        if o.from_offset is not None and rec.offset < o.from_offset:
            continue
        if o.as_json:
            obj: Dict[str, Any] = {**where(target), "segment": ev.seg.name,
                                   "offset": rec.offset, "timestamp_ms": rec.timestamp_ms}
            json_bytes(obj, "key", rec.key, "text")
            obj["value_size"] = None if rec.value is None else len(rec.value)
            if o.values != "none":
                json_bytes(obj, "value", rec.value, o.values)
            json_headers(obj, rec.headers, "text")
            obj.update(batch_position=ev.pos, codec=h.codec, crc="ok")
            out.line(dumps(obj))
        else:
            out.line(f"{record_line(rec, 'none')} batch={ev.pos} codec={h.codec} crc=ok"
                     + ("" if o.values == "none"
                        else f" value={text_bytes(rec.value, o.values)}"))
        count += 1
        if o.max_items is not None and count >= o.max_items:
            break
    return count


def _dump_error(out: Out, target: Target, ev: ErrorEvent, o: DumpOptions) -> None:
    if o.batches and ev.header is not None and ev.error.reason == "CRC32C mismatch":
        batch_line(out, target, ev.seg, ev.pos, ev.header, "BAD", o.as_json)
    out.flush()
    error(corruption_line(target, ev))
    if o.continue_on_error and ev.resume is not None:
        click.echo(f"logstore: skipping bytes {ev.pos}..{ev.resume - 1} of "
                   f"{seg_label(target, ev.seg.path)}", err=True)


def corruption_line(target: Target, ev: ErrorEvent) -> str:
    where_ = f"corrupt data in {seg_label(target, ev.seg.path)} at byte {ev.pos}: {ev.error.reason}"
    if ev.torn_tail:
        return (f"{where_} (torn tail of the active segment, {ev.size - ev.pos} bytes: "
                f"`logstore recover --apply` would truncate it)")
    if ev.resume is not None:
        return f"{where_} (data damaged; the next valid batch is at byte {ev.resume})"
    return f"{where_} (data damaged; nothing valid follows in this segment)"


def batch_line(out: Out, target: Target, seg: Any, pos: int, h: Any, crc: str,
               as_json: bool) -> None:
    if as_json:
        out.line(dumps({
            **where(target), "segment": seg.name, "position": pos, "base_offset": h.base_offset,
            "last_offset": h.last_offset, "records": h.record_count,
            "base_timestamp": h.base_timestamp, "max_timestamp": h.max_timestamp,
            "length": h.length, "payload_length": h.payload_length,
            "raw_length": h.raw_length, "codec": h.codec, "attributes": h.attributes,
            "version": h.version, "chunks": chunk_count(h), "crc": crc}))
    else:
        out.line(f"batch={pos} offsets={h.base_offset}..{h.last_offset} records={h.record_count} "
                 f"base_ts={h.base_timestamp} max_ts={h.max_timestamp} length={h.length} "
                 f"payload={h.payload_length} raw={h.raw_length} codec={h.codec} "
                 f"version={h.version} chunks={chunk_count(h)} crc={crc}")


def dump_index(targets: List[Target], out: Out, as_json: bool) -> None:
    """``dump --index``: every index entry with its check against the log."""
    bad = False
    for target in targets:
        for seg, entries, file_problems, skipped, notes in index_report(target):
            if not as_json:
                out.line(f"# {seg_heading(target, seg.path)} "
                         f"({'active' if seg.active else 'sealed'})")
            for e in entries:
                bad |= not e.ok
                out.line(_index_entry_line(target, seg, e, as_json))
            for why in file_problems:
                bad = True
                if as_json:
                    out.line(dumps({**where(target), "segment": seg.name, "index": "file",
                                    "status": why}))
                else:
                    out.line(f"BAD: {why}")
            if not as_json:
                for note in notes:
                    out.line(f"# {note}")
                for kind, n in skipped.items():
                    if n:
                        name = "index" if kind == "offset" else "timeindex"
                        out.line(f"# {n} preallocated empty {name} entries not shown")
    out.close()
    if bad:
        raise CommandExit(EXIT_CORRUPT)


def _index_entry_line(target: Target, seg: Any, e: Any, as_json: bool) -> str:
    if as_json:
        obj: Dict[str, Any] = {**where(target), "segment": seg.name, "index": e.kind,
                               "entry": e.number, "offset": e.offset}
        if e.kind == "offset":
            obj["position"] = e.position
        else:
            obj["timestamp"] = e.timestamp
        obj["status"] = e.status
        return dumps(obj)
    status = e.status if e.ok else "BAD: " + e.status
    if e.kind == "offset":
        return f"index entry={e.number} offset={e.offset} position={e.position} {status}"
    return f"timeindex entry={e.number} timestamp={e.timestamp} offset={e.offset} {status}"


# ------------------------------------------------------------------------------------ tail
@click.command()
@path_arg
@click.option("-n", "--lines", "n", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the last records (of the range) to print.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing records as they are appended (by any process), until Ctrl-C "
                   "(or --max records).")
@click.option("--values", type=click.Choice(VALUE_MODES), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per record (the `replay` format).")
@click.option("--interval", type=click.FloatRange(min=0.001), default=0.2, show_default=True,
              help="Seconds between polls with --follow.")
@range_options
@store_options()
@quiet_option
@operator
def tail(path: str, n: int, follow: bool, values: str, as_json: bool, interval: float,
         from_offset: Optional[int], to_offset: Optional[int], from_time: Optional[str],
         to_time: Optional[str], max_records: Optional[int], topic: Optional[str],
         partition: Optional[int], quiet: bool) -> None:
    """Print the last N records of the log in PATH; with --follow, keep printing new ones.

    \b
    Line format: offset=N ts=MS time=ISO key=K size=BYTES headers={..} value=V (see `dump`;
    time is ts in ISO 8601, UTC). --from-offset/--from-time/--to-offset/--to-time narrow
    the records the last N are taken from (--follow needs an open end: no --to-*); --max
    ends the command after N records in all.
    A store root (or --topic NAME [--partition P]): the last N records over all its
    partitions by timestamp, each line starting with its partition (`orders/2 offset=...`;
    JSON objects carry "topic" and "partition"); --follow prints new records of every
    partition. Ctrl-C ends --follow with exit status 0.

    \b
    Examples:
      logstore tail data/orders -n 20
      logstore tail data/shop --topic orders --follow --json
      logstore tail data/shop --topic orders --from-time -15m -n 1000
    """
    r = parse_range(from_offset, to_offset, from_time, to_time, max_records)
    if follow and r.bounded:
        raise click.BadParameter("--follow prints records as they come: it cannot have an end "
                                 "(--to-offset/--to-time)", param_hint="--follow")
    with opened_readers(path, topic, partition, "tail") as readers:
        out = Out()
        mode = "base64" if values == "none" and as_json else values
        left = [r.max_records]

        def emit(target: Target, recs: Iterable[Any]) -> None:
            for rec in recs:
                if left[0] is not None:
                    if left[0] <= 0:
                        raise _Done()
                    left[0] -= 1
                out.line(dumps(rec_json(target, rec, mode)) if as_json
                         else labelled(target, record_line(rec, values)))

        try:
            nexts = _tail_last(readers, n, emit, r)
            out.flush()
            while follow and (left[0] is None or left[0] > 0):
                if _tail_poll(readers, nexts, emit):
                    out.flush()
                else:
                    time.sleep(interval)
        except _Done:
            pass
        except KeyboardInterrupt:
            if not follow:
                raise
            # Ctrl-C is how --follow ends: exit 0, quietly
        out.close()


class _Done(Exception):
    """--max records printed."""


def _tail_last(readers: List[Any], n: int, emit: Any, r: Range) -> List[int]:
    """Emit the last ``n`` records of each log's range (over all logs: by timestamp); return
    each log's next offset."""
    nexts = []
    last: List[Any] = []
    for i, (target, log) in enumerate(readers):
        start, end = log_bounds(log, r, len(readers) > 1)
        nxt = max(start, end - n)
        while nxt < end:
            recs = log.read(nxt, max_records=min(1000, end - nxt))
            if not recs:
                break
            recs = [x for x in recs if x.offset < end]
            if len(readers) == 1:
                emit(target, recs)
            else:
                last.extend((x.timestamp_ms, i, x.offset, x) for x in recs)
            if not recs:
                break
            nxt = recs[-1].offset + 1
        nexts.append(max(nxt, end))
    if last:
        last.sort(key=lambda x: x[:3])
        for _, i, _, rec in last[len(last) - n:] if n else []:
            emit(readers[i][0], [rec])
    return nexts


def _tail_poll(readers: List[Any], nexts: List[int], emit: Any) -> bool:
    """Emit what was appended since ``nexts``; whether anything was."""
    got = False
    for i, (target, log) in enumerate(readers):
        try:
            recs = log.read(nexts[i], max_records=1000)
        except OffsetOutOfRangeError:
            start = log.start_offset
            if start <= nexts[i]:
                raise
            # Retention deleted records before they were printed: say so, go on at the start.
            click.echo(f"logstore: {target.label}: offsets {nexts[i]}..{start - 1} were "
                       f"deleted by retention before they were printed; continuing at "
                       f"{start}", err=True)
            nexts[i] = start
            recs = log.read(start, max_records=1000)
        if recs:
            emit(target, recs)
            nexts[i] = recs[-1].offset + 1
            got = True
    return got


# ------------------------------------------------------------------------------------ replay
@click.command()
@path_arg
@range_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "raw"]), default="jsonl",
              show_default=True)
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True, help="jsonl: how keys, values and header values are written.")
@click.option("--newline", is_flag=True, help="raw: write a \\n after each value.")
@click.option("--length-prefixed", is_flag=True,
              help="raw: a 4-byte big-endian length before each value (0xFFFFFFFF: a "
                   "tombstone): binary-safe, `produce --format raw --length-prefixed` reads it.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of stdout.")
@store_options()
@quiet_option
@operator
def replay(path: str, from_offset: Optional[int], to_offset: Optional[int],
           from_time: Optional[str], to_time: Optional[str], max_records: Optional[int],
           fmt: str, values: str, newline: bool, length_prefixed: bool, output: Optional[str],
           topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Write the records of the log in PATH in offset order, from an offset or a time.

    \b
    jsonl (default): one JSON object per record:
      {"offset": N, "timestamp_ms": MS, "key": K, "value": V, "headers": {NAME: V}}
      Keys, values and header values are base64; with --values text they are UTF-8 strings,
      and a field that is not valid UTF-8 is written in base64 with a marker field:
      "key_encoding": "base64", "value_encoding": "base64" or "headers_encoding": "base64"
      (then all header values of that record are base64). Null key/tombstone: null.
      Records of a store's topic start with "topic" and "partition".
      `logstore produce --format jsonl` reads exactly this (a backup/restore round trip).
    raw: the value bytes only, back to back with nothing in between (a tombstone writes
      nothing); with --newline a "\\n" follows every record's value; with
      --length-prefixed each value follows its 4-byte big-endian length.
    A store root (or --topic NAME [--partition P]): partition after partition (topics by
    name), each in offset order; offsets and times apply to every partition, --max to all.

    \b
    Examples:
      logstore replay data/orders -o orders.jsonl
      logstore replay data/shop --topic orders --from-time -1h --values text
      logstore replay data/orders --from-offset 1000 --to-offset 2000 --format raw --newline
      logstore replay data/shop --topic orders | logstore produce backup --topic orders \\
          --format jsonl --create --partitions 4
    """
    r = parse_range(from_offset, to_offset, from_time, to_time, max_records)
    if fmt != "raw" and (newline or length_prefixed):
        raise click.BadParameter("--newline and --length-prefixed are for --format raw",
                                 param_hint="--format")
    if newline and length_prefixed:
        raise click.BadParameter("choose one of --newline and --length-prefixed",
                                 param_hint="--newline")
    framing = "newline" if newline else "length" if length_prefixed else "none"
    with opened_readers(path, topic, partition, "replay") as readers:
        plan = [(target, log, *log_bounds(log, r, len(readers) > 1)) for target, log in readers]
        out = Out(output)
        total = sum(max(0, stop - start) for _, _, start, stop in plan)
        if r.max_records is not None:
            total = min(total, r.max_records)
        left = r.max_records
        with Progress(total, "replay", quiet, output_is_stdout=output is None,
                      minimum=PROGRESS_MIN_RECORDS) as progress:
            for target, log, start, stop in plan:
                if left == 0:
                    break
                left = write_range(out, target, log, start, stop, left, fmt, values, framing,
                                   progress)
        out.close()


def write_range(out: Out, target: Target, log: Any, start: int, stop: int,
                left: Optional[int], fmt: str, values: str, framing: str,
                progress: Any = None) -> Optional[int]:
    """Write records ``[start, stop)`` of ``log`` (at most ``left``) a stored batch at a time
    (``render``); return how many more may be written (None: no limit)."""
    if stop <= start and log.start_offset <= start <= log.end_offset:
        return left
    left, _ = write_batches(out, log, start, stop, left, fmt, values, framing,
                            render.prefix(where(target)), progress)
    return left


def write_batches(out: Out, log: Any, start: int, stop: int, left: Optional[int], fmt: str,
                  values: str, framing: str, pre: bytes, progress: Any = None
                  ) -> Tuple[Optional[int], int]:
    """(:func:`write_range`) ``(records that may still be written, next offset to read)``."""
    nxt = start
    for batch in log.replay_batches(start, stop):
        j, k = render.bounds(batch, start, stop)
        if left is not None:
            k = min(k, j + left)
        if j < k:
            if fmt == "raw":
                out.raw(render.raw(batch, j, k, framing))
            else:
                out.raw(render.jsonl(batch, j, k, values, pre))
            if progress is not None:
                progress(k - j)
            nxt = batch.offset_at(k - 1) + 1
            if left is not None:
                left -= k - j
                if left <= 0:
                    return 0, nxt
    return left, max(nxt, stop)  # (all of [start, stop) written, or compacted away)
