"""The ``logstore`` command line (click).

Commands: ``demo`` (the README's main job) and the operator tools ``dump``, ``verify``,
``stats``, ``tail``, ``replay``, ``produce``, ``consume``, ``recover``, ``compact`` and
``retention``. Every PATH is a log directory or a store root (``store.meta``: every topic
partition, or ``--topic NAME [--partition P]``); paths are resolved by
:func:`logstore.inspect.resolve_targets`. The read-only inspection logic lives in
:mod:`logstore.inspect`; reading records goes through the public :class:`~logstore.log.Log` API
(``readonly=True``) and read-only :class:`~logstore.store.Store` opens, writing through a normal
writer open of the log or the store.

Exit codes: 0 success; 1 corrupt data found (or a recover dry run that has work to do);
2 usage error (bad option, missing path, not a log, offset out of range); 3 the log is locked
by a writer; 4 other errors (I/O, unsupported format); 130 interrupted. Errors are one line on
stderr. Output to a pipe that is closed early (``| head``) ends the command quietly (exit 0).
"""

from __future__ import annotations

import base64
import datetime as _dt
import errno
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import click

from ..version import __version__
from ..diagnostics import report as insp
from ..errors import (
    ConfigError,
    CorruptLogError,
    LogLockedError,
    LogstoreError,
    MissingKeyError,
    NotALogError,
    OffsetOutOfRangeError,
    UnknownTopicError,
)
from ..format.names import CLEAN_SHUTDOWN_NAME
from ..storage.index import index_capacity
from ..storage.log import Log
from ..storage.segments import list_segments
from ..storage.tail import inspect_active

@click.group(epilog="Exit status: 0 ok; 1 corrupt data found; 2 usage error (bad option, "
                    "missing path, not a log); 3 locked by a writer; 4 other error "
                    "(I/O, unsupported format); 130 interrupted.")
@click.version_option(__version__, prog_name="logstore")
def main() -> None:
    """logstore: a durable, segmented append-only log and store. See README.md.

    PATH is a log directory, or a store root (a directory with store.meta): then every
    topic partition (labelled topic/partition), or only --topic NAME [--partition P].
    """


# ==================================================================================== operator
# Everything below is the operator CLI. Shared pieces first: exit codes, error handling, output,
# progress and the encodings of bytes in text and JSON output.

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130
PROGRESS_MIN_BYTES = 16 << 20  # show a progress bar only for work at least this big
VALUE_MODES = ("none", "hex", "text", "base64")


class _Exit(Exception):
    """Leave the command with ``code`` (after its output), printing nothing more."""

    def __init__(self, code: int):
        self.code = code


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, CorruptLogError):
        return EXIT_CORRUPT
    if isinstance(exc, (NotALogError, OffsetOutOfRangeError, ConfigError, MissingKeyError,
                        UnknownTopicError)):
        return EXIT_USAGE
    if isinstance(exc, LogLockedError):
        return EXIT_LOCKED
    return EXIT_ERROR


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except Exception:  # e.g. CliRunner's stdout has no file descriptor
        pass


def _error(message: str) -> None:
    click.echo(f"logstore: error: {message}", err=True)


def _operator(f: Callable) -> Callable:
    """Run a command: map errors to one stderr line and an exit code, stay quiet on EPIPE/^C."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> None:
        code = EXIT_OK
        try:
            f(*args, **kwargs)
            try:
                sys.stdout.flush()
            except ValueError:
                pass
        except _Exit as e:
            code = e.code
        except BrokenPipeError:
            _silence_stdout()
            code = EXIT_OK
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except LogstoreError as e:
            _error(str(e))
            code = _exit_code(e)
        except OSError as e:
            if e.errno == errno.EPIPE:
                _silence_stdout()
            else:
                _error(str(e))
                code = EXIT_ERROR
        if code:
            sys.exit(code)

    return run


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Progress:
    """click's progress bar on stderr, only on a terminal, only for long work, not with --quiet.

    A command whose output goes to the same terminal (``dump`` to a TTY) gets no bar.
    """

    def __init__(self, total: int, label: str, quiet: bool, output_is_stdout: bool = False):
        self.bar = None
        enabled = (not quiet and total >= PROGRESS_MIN_BYTES and _isatty(sys.stderr)
                   and not (output_is_stdout and _isatty(sys.stdout)))
        if enabled:
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.__exit__(None, None, None)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _binary(stream: Any) -> Any:
    """The byte stream under a text stream (sys.stdout/stdin, or click's test runner's)."""
    return getattr(stream, "buffer", stream)


class _Out:
    """Output as UTF-8 bytes (never depends on the locale); stdout or a file."""

    def __init__(self, path: Optional[str] = None):
        self._file = open(path, "wb") if path else None
        self.stream = self._file if self._file else _binary(sys.stdout)

    def line(self, text: str) -> None:
        self.stream.write(text.encode("utf-8", "backslashreplace") + b"\n")

    def raw(self, data: bytes) -> None:
        self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.stream.flush()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _text_bytes(b: Optional[bytes], mode: str) -> str:
    """Bytes in a text line: ``null``; hex ``0x..``; base64; text = a JSON string (0x.. if not UTF-8)."""
    if b is None:
        return "null"
    if mode == "hex":
        return "0x" + b.hex()
    if mode == "base64":
        return _b64(b)
    try:
        return json.dumps(b.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return "0x" + b.hex()


def _text_headers(headers: Dict[str, bytes]) -> str:
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _text_bytes(v, "text")
                          for k, v in headers.items()) + "}"


def _json_bytes(obj: Dict[str, Any], name: str, b: Optional[bytes], mode: str) -> None:
    """Put ``b`` under ``name``: base64, hex, or UTF-8 text (else base64 + ``<name>_encoding``)."""
    if b is None:
        obj[name] = None
    elif mode == "text":
        try:
            obj[name] = b.decode("utf-8")
        except UnicodeDecodeError:
            obj[name] = _b64(b)
            obj[name + "_encoding"] = "base64"
    elif mode == "hex":
        obj[name] = b.hex()
    else:
        obj[name] = _b64(b)


def _json_headers(obj: Dict[str, Any], headers: Dict[str, bytes], mode: str) -> None:
    if mode == "text":
        try:
            obj["headers"] = {k: v.decode("utf-8") for k, v in headers.items()}
            return
        except UnicodeDecodeError:
            obj["headers"] = {k: _b64(v) for k, v in headers.items()}
            obj["headers_encoding"] = "base64"
            return
    obj["headers"] = {k: (v.hex() if mode == "hex" else _b64(v)) for k, v in headers.items()}


def record_json(rec: Any, mode: str = "base64") -> Dict[str, Any]:
    """The JSON object of ``replay``/``consume``/``tail --json``: one record, bytes encoded."""
    obj: Dict[str, Any] = {"offset": rec.offset, "timestamp_ms": rec.timestamp_ms}
    _json_bytes(obj, "key", rec.key, mode)
    _json_bytes(obj, "value", rec.value, mode)
    _json_headers(obj, rec.headers, mode)
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _iso(ms: Optional[int]) -> str:
    if ms is None or ms < 0:
        return "-"
    try:
        t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC; a trailing Z is accepted) or integer milliseconds -> ms."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        d = _dt.datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time or milliseconds since the "
                                 f"epoch (e.g. 2024-05-01T12:00:00Z)", param_hint="--from-time")
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    ms = int(d.timestamp() * 1000)
    if ms < 0:
        raise click.BadParameter(f"{text!r} is before 1970", param_hint="--from-time")
    return ms


def _total_bytes(target: Any) -> int:
    total = 0
    try:
        segs = insp.segment_files(target)
    except OSError:  # a missing log directory of a store: verify reports it
        return 0
    for s in segs:
        try:
            total += os.path.getsize(s.path)
        except OSError:
            pass
    return total


def _quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bar and no informational messages.")(f)


def _path_arg(f: Callable) -> Callable:
    return click.argument("path", type=click.Path(path_type=str))(f)


def _store_options(partition: bool = True) -> Callable[[Callable], Callable]:
    """--topic (and --partition): narrow a store root to one topic (partition)."""

    def deco(f: Callable) -> Callable:
        if partition:
            f = click.option("--partition", type=click.IntRange(min=0), default=None,
                             metavar="P", help="With --topic: only partition P.")(f)
        return click.option("--topic", default=None, metavar="NAME",
                            help="PATH is a store root: only topic NAME (default: every topic)."
                            )(f)

    return deco


def _seg_label(report_or_target: Any, path: str) -> str:
    """How a file of the log is named in messages: under the path the operator typed."""
    t = report_or_target
    if getattr(t, "segment", None) or getattr(t, "segment_only", False):
        if path.endswith(".log"):
            return t.label
        return os.path.join(os.path.dirname(t.label), os.path.basename(path))
    return os.path.join(t.files_label, os.path.basename(path))


def _seg_heading(target: Any, path: str) -> str:
    """A segment in headings: ``orders/2 0000...0.log`` for a log of a store root, else the
    file under the path as typed."""
    if target.expanded:
        return f"{target.label} {os.path.basename(path)}"
    return _seg_label(target, path)


def _where(target: Any) -> Dict[str, Any]:
    """JSON fields naming the log of a store a record or batch comes from."""
    if target.topic is not None:
        return {"topic": target.topic, "partition": target.partition}
    if target.internal:
        return {"log": target.label}
    return {}


def _open_reader(path: str) -> Log:
    insp.require_log_dir(path, "this command")
    return Log.open(path, readonly=True)


def _open_readers(path: str, topic: Optional[str], partition: Optional[int], what: str
                  ) -> List[Any]:
    """(target, read-only Log) for each log PATH names (a log, a store root, a topic dir)."""
    targets = insp.require_log_dirs(path, what, topic, partition)
    out: List[Any] = []
    try:
        for t in targets:
            out.append((t, Log.open(t.log_dir, readonly=True)))
    except BaseException:
        for _, log in out:
            log.close()
        raise
    return out


def _parse_options(options: Iterable[str]) -> Dict[str, Any]:
    """``-o NAME=VALUE`` options (Log.open / Store.open options)."""
    opts: Dict[str, Any] = {}
    for item in options:
        name, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
        opts[name.strip()] = _option_value(value.strip())
    return opts


def _option_flag(f: Callable) -> Callable:
    return click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
                        help="A Log.open / Store.open option, e.g. -o fsync=never "
                             "-o retention_ms=86400000 (repeatable).")(f)


# ------------------------------------------------------------------------------------ dump
def _record_line(rec: Any, mode: str) -> str:
    size = "null" if rec.value is None else str(len(rec.value))
    line = (f"offset={rec.offset} ts={rec.timestamp_ms} key={_text_bytes(rec.key, 'text')} "
            f"size={size} headers={_text_headers(rec.headers)}")
    if mode != "none":
        line += f" value={_text_bytes(rec.value, mode)}"
    return line


@main.command()
@_path_arg
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
@_store_options()
@_quiet_option
@_operator
def dump(path: str, from_offset: Optional[int], max_items: Optional[int], values: str,
         as_json: bool, batches: bool, show_index: bool, continue_on_error: bool,
         topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Print the records (or batches, or index entries) stored in PATH.

    PATH is a log directory, one .log segment file, or a store root (every partition of every
    topic, or --topic NAME [--partition P]; --from-offset and --max apply per partition).
    Read-only; works while a writer runs.

    \b
    Record line: offset=N ts=MS key=K size=BYTES headers={..} batch=POS codec=C crc=ok [value=V]
    Batch line:  batch=POS offsets=A..B records=N base_ts=MS max_ts=MS length=L payload=P
                 raw=R codec=C crc=ok|BAD
    Keys and header values print as JSON strings, or 0x-hex when not UTF-8; null = none
    (size=null: a tombstone). --json prints the same fields as JSON objects (key/headers as
    text, falling back to base64 with a "key_encoding"/"headers_encoding" marker); records and
    batches of a store's topic also carry "topic" and "partition".

    Exit 1 if corrupt data is met: its file and byte position are printed on stderr, and
    whether `logstore recover` would repair it (a torn tail of the active segment).
    """
    targets = insp.resolve_targets(path, topic, partition)
    out = _Out()
    if show_index:
        _dump_index(targets, out, as_json)
        return
    bad = False
    for target in targets:
        count = 0
        with _Progress(_total_bytes(target), "dump", quiet, output_is_stdout=True) as progress:
            for ev in insp.scan(target, decode=True, continue_on_error=continue_on_error,
                                from_offset=from_offset, progress=progress):
                if isinstance(ev, insp.SegmentStart):
                    if not as_json:
                        kind = "active" if ev.seg.active else "sealed"
                        if ev.seg.base_offset is None:
                            kind = "segment"
                        out.line(f"# {_seg_heading(target, ev.seg.path)} ({kind}, "
                                 f"{ev.size} bytes)")
                elif isinstance(ev, insp.BatchEvent):
                    if batches:
                        _batch_line(out, target, ev.seg, ev.pos, ev.header, "ok", as_json)
                        count += 1
                    else:
                        try:
                            recs = ev.batch.records()
                        except CorruptLogError as e:
                            bad = True
                            _error(f"{e} (a CRC-valid batch with malformed record headers: data "
                                   f"damaged)")
                            if not continue_on_error:
                                raise _Exit(EXIT_CORRUPT)
                            continue
                        h = ev.header
                        for rec in recs:
                            if from_offset is not None and rec.offset < from_offset:
                                continue
                            if as_json:
                                obj: Dict[str, Any] = {**_where(target),
                                                       "segment": ev.seg.name,
                                                       "offset": rec.offset,
                                                       "timestamp_ms": rec.timestamp_ms}
                                _json_bytes(obj, "key", rec.key, "text")
                                obj["value_size"] = None if rec.value is None else len(rec.value)
                                if values != "none":
                                    _json_bytes(obj, "value", rec.value, values)
                                _json_headers(obj, rec.headers, "text")
                                obj.update(batch_position=ev.pos, codec=h.codec, crc="ok")
                                out.line(_dumps(obj))
                            else:
                                out.line(f"{_record_line(rec, 'none')} batch={ev.pos} "
                                         f"codec={h.codec} crc=ok"
                                         + ("" if values == "none"
                                            else f" value={_text_bytes(rec.value, values)}"))
                            count += 1
                            if max_items is not None and count >= max_items:
                                break
                    if max_items is not None and count >= max_items:
                        out.flush()
                        break
                elif isinstance(ev, insp.ErrorEvent):
                    bad = True
                    if batches and ev.header is not None and ev.error.reason == "CRC32C mismatch":
                        _batch_line(out, target, ev.seg, ev.pos, ev.header, "BAD", as_json)
                    out.flush()
                    _error(_corruption_line(target, ev))
                    if continue_on_error and ev.resume is not None:
                        click.echo(f"logstore: skipping bytes {ev.pos}..{ev.resume - 1} of "
                                   f"{_seg_label(target, ev.seg.path)}", err=True)
    out.close()
    if bad:
        raise _Exit(EXIT_CORRUPT)


def _corruption_line(target: Any, ev: Any) -> str:
    where = f"corrupt data in {_seg_label(target, ev.seg.path)} at byte {ev.pos}: {ev.error.reason}"
    if ev.torn_tail:
        return (f"{where} (torn tail of the active segment, {ev.size - ev.pos} bytes: "
                f"`logstore recover --apply` would truncate it)")
    if ev.resume is not None:
        return f"{where} (data damaged; the next valid batch is at byte {ev.resume})"
    return f"{where} (data damaged; nothing valid follows in this segment)"


def _batch_line(out: _Out, target: Any, seg: Any, pos: int, h: Any, crc: str,
                as_json: bool) -> None:
    if as_json:
        out.line(_dumps({
            **_where(target), "segment": seg.name, "position": pos, "base_offset": h.base_offset,
            "last_offset": h.last_offset, "records": h.record_count,
            "base_timestamp": h.base_timestamp, "max_timestamp": h.max_timestamp,
            "length": h.length, "payload_length": h.payload_length,
            "raw_length": h.raw_length, "codec": h.codec, "attributes": h.attributes,
            "crc": crc}))
    else:
        out.line(f"batch={pos} offsets={h.base_offset}..{h.last_offset} records={h.record_count} "
                 f"base_ts={h.base_timestamp} max_ts={h.max_timestamp} length={h.length} "
                 f"payload={h.payload_length} raw={h.raw_length} codec={h.codec} crc={crc}")


def _dump_index(targets: List[Any], out: _Out, as_json: bool) -> None:
    bad = False
    for target in targets:
        for seg, entries, file_problems, skipped, notes in insp.index_report(target):
            label = _seg_heading(target, seg.path)
            if not as_json:
                out.line(f"# {label} ({'active' if seg.active else 'sealed'})")
            for e in entries:
                bad |= not e.ok
                if as_json:
                    obj: Dict[str, Any] = {**_where(target), "segment": seg.name,
                                           "index": e.kind,
                                           "entry": e.number, "offset": e.offset}
                    if e.kind == "offset":
                        obj["position"] = e.position
                    else:
                        obj["timestamp"] = e.timestamp
                    obj["status"] = e.status
                    out.line(_dumps(obj))
                elif e.kind == "offset":
                    out.line(f"index entry={e.number} offset={e.offset} position={e.position} "
                             f"{e.status if e.ok else 'BAD: ' + e.status}")
                else:
                    out.line(f"timeindex entry={e.number} timestamp={e.timestamp} "
                             f"offset={e.offset} {e.status if e.ok else 'BAD: ' + e.status}")
            for why in file_problems:
                bad = True
                if as_json:
                    out.line(_dumps({**_where(target), "segment": seg.name, "index": "file",
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
        raise _Exit(EXIT_CORRUPT)


# ------------------------------------------------------------------------------------ verify
@main.command()
@_path_arg
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_store_options()
@_quiet_option
@_operator
def verify(path: str, as_json: bool, topic: Optional[str], partition: Optional[int],
           quiet: bool) -> None:
    """Check PATH (a log directory or a .log segment file) without changing anything.

    A store root: every topic partition and the store's internal logs (committed offsets,
    work-queue events), or only --topic NAME [--partition P].

    Checks every batch (header, bounds, CRC32C, structure), offset continuity within and
    across segments, the offset and time indexes against the log, the clean-shutdown marker,
    and leftover *.tmp / *.cleaned / *.swap files (reported as warnings). Never takes the
    writer's lock and opens files read-only, so it can run while a writer appends.

    Each problem names the segment file and byte position and says whether `logstore recover
    --apply` repairs it (a torn tail of the active segment, indexes, a wrong marker) or whether
    data is damaged (sealed segments, damage followed by valid batches, missing offsets).

    Exit 0: no problem (warnings allowed); 1: problems found; 2: usage error.
    """
    targets = insp.resolve_targets(path, topic, partition, internal=True)
    reports = [_inspect_with_progress(t, True, quiet) for t in targets]
    out = _Out()
    if as_json:
        out.line(_dumps({"path": path, "ok": all(r.ok for r in reports),
                         "logs": [r.as_dict() for r in reports]}))
    elif len(targets) == 1 and not targets[0].expanded:
        _print_verify(out, reports[0], quiet)
    else:
        for r in reports:
            _print_verify(out, r, quiet, summary=False)
        _print_verify_summary(out, path, reports, quiet)
    out.close()
    if not all(r.ok for r in reports):
        raise _Exit(EXIT_CORRUPT)


def _inspect_with_progress(target: Any, verify: bool, quiet: bool):
    with _Progress(_total_bytes(target), "verify" if verify else "stats", quiet) as progress:
        return insp.inspect_log(target, verify=verify, progress=progress)


def _print_verify(out: _Out, r: Any, quiet: bool, summary: bool = True) -> None:
    t = r.totals()
    if not quiet and not summary and r.problems and not r.segments:
        out.line(f"{r.label}: missing")
    elif not quiet:
        rng = (f"offsets [{t['start_offset']}, {t['end_offset']})"
               if t["start_offset"] is not None else "no offsets")
        out.line(f"{r.label}: {t['segments']} segment{'s' if t['segments'] != 1 else ''}, "
                 f"{rng}, {t['records']} records in {t['batches']} batches, {t['bytes']} bytes")
        for s in r.segments:
            rng = (f"{s.first_offset}..{s.next_offset - 1}" if s.next_offset is not None
                   else "empty")
            kind = "active" if s.active else "sealed"
            extra = (f" (+{s.unwritten_bytes} preallocated)" if s.unwritten_bytes else "")
            out.line(f"  {s.name}  {kind}  offsets {rng}  {s.records} records  "
                     f"{s.batches} batches  {s.size} bytes{extra}  {s.status}")
    for p in r.problems:
        where = _seg_label(r, p.file)
        at = f" at byte {p.position}" if p.position is not None else ""
        out.line(f"PROBLEM [{p.kind}] {where}{at}: {p.reason}")
        out.line(f"  -> {p.repair}")
    if not quiet:
        for w in r.warnings:
            out.line(f"WARNING {w}")
    if not summary:
        return
    if r.ok:
        if not quiet:
            out.line("OK: no problems found")
        return
    repairable = sum(1 for p in r.problems if p.recoverable)
    damaged = len(r.problems) - repairable
    out.line(f"CORRUPT: {len(r.problems)} problem{'s' if len(r.problems) != 1 else ''} "
             f"({repairable} repairable by `logstore recover --apply`, {damaged} data damage)")


def _print_verify_summary(out: _Out, path: str, reports: List[Any], quiet: bool) -> None:
    """The closing line of `verify` over the logs of a store."""
    n = len(reports)
    logs = f"{n} log{'s' if n != 1 else ''}"
    problems = [p for r in reports for p in r.problems]
    if not problems:
        if not quiet:
            out.line(f"OK: no problems found in {logs} of {path}")
        return
    repairable = sum(1 for p in problems if p.recoverable)
    bad = [r.label for r in reports if not r.ok]
    out.line(f"CORRUPT: {len(problems)} problem{'s' if len(problems) != 1 else ''} in "
             f"{', '.join(bad)} ({len(bad)} of {logs}; {repairable} repairable by "
             f"`logstore recover --apply`, {len(problems) - repairable} data damage)")


# ------------------------------------------------------------------------------------ stats
@main.command()
@_path_arg
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--internal", "show_internal", is_flag=True,
              help="Store root: also list the internal logs and the internal groups (work-queue "
                   "checkpoints, redrive cursors).")
@_store_options()
@_quiet_option
@_operator
def stats(path: str, as_json: bool, show_internal: bool, topic: Optional[str],
          partition: Optional[int], quiet: bool) -> None:
    """Segments, offsets, sizes, record and batch counts, compression, time range of PATH.

    Reads only the 64-byte batch headers (fast; CRCs are not checked: use `logstore verify`).
    The compression ratio is raw_length / payload_length summed over the batch headers.
    Timestamps: the first record's and the largest, in UTC. Exit 1 if a header is unreadable.

    \b
    A store root (or --topic NAME [--partition P] of one):
      - per topic partition: segments, start and end offsets, records, bytes, time range;
      - consumer groups and durable subscriptions: committed offset, end offset and lag per
        partition (lag = end - committed, Kafka's meaning);
      - work queues: messages not yet done (ready, in flight or delayed), delivered but not
        acked, delayed for a retry, dead-lettered (not yet redriven), age of the oldest;
      - with --internal: the internal logs and groups.
    Committed offsets and queue state are read read-only (beside a running writer they are
    as of its last durable write).
    """
    if insp.store_path(path) is not None:
        _store_stats_command(path, as_json, show_internal, topic, partition, quiet)
        return
    targets = insp.resolve_targets(path, topic, partition)
    reports = [_inspect_with_progress(t, False, quiet) for t in targets]
    out = _Out()
    if as_json:
        out.line(_dumps({"path": path, "logs": [r.as_dict() for r in reports]}))
    else:
        for r in reports:
            _print_stats(out, r)
    out.close()
    for r in reports:
        for p in r.problems:
            _error(f"{_seg_label(r, p.file)} at byte {p.position}: {p.reason} (run `logstore "
                   f"verify`)")
    if not all(r.ok for r in reports):
        raise _Exit(EXIT_CORRUPT)


def _print_stats(out: _Out, r: Any) -> None:
    def row(name: str, d: Dict[str, Any], base: Any, status: str) -> List[str]:
        ratio = d["compression_ratio"]
        return [name, "-" if base is None else str(base),
                "-" if d.get("end") is None else str(d["end"]),
                str(d["records"]), str(d["batches"]), str(d["bytes"]), str(d["payload_bytes"]),
                str(d["raw_bytes"]), "-" if ratio is None else f"{ratio:.2f}",
                _iso(d["first_timestamp"]), _iso(d["max_timestamp"]), status]

    rows = [["segment", "base", "end", "records", "batches", "bytes", "payload", "raw",
             "ratio", "first timestamp", "max timestamp", "status"]]
    for s in r.segments:
        d = s.as_dict()
        d["bytes"] = s.size
        d["end"] = s.next_offset if s.next_offset is not None else s.base_offset
        rows.append(row(s.name, d, s.base_offset, s.status))
    t = r.totals()
    t["end"] = t["end_offset"]
    rows.append(row("total", t, t["start_offset"], "ok" if r.ok else "problems"))
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    left = {0, 9, 10, 11}
    out.line(f"log {r.label}")
    for x in rows:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))]
        out.line("  ".join(cells).rstrip())
    codecs = ", ".join(f"{k}: {v}" for k, v in t["codecs"].items())
    out.line(f"batches by codec: {codecs or '-'}")


def _table(out: _Out, rows: List[List[str]], left: Iterable[int] = (0,), indent: str = "") -> None:
    """An aligned table: the first row is the header; columns not in ``left`` align right."""
    left = set(left)
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    for x in rows:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))]
        out.line(indent + "  ".join(cells).rstrip())


def _num(v: Any) -> str:
    return "-" if v is None else str(v)


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _store_stats_command(path: str, as_json: bool, show_internal: bool, topic: Optional[str],
                         partition: Optional[int], quiet: bool) -> None:
    bars: List[_Progress] = []

    def progress(target: Any) -> Any:
        bar = _Progress(_total_bytes(target), f"stats {target.label}", quiet or as_json)
        bars.append(bar)
        return bar

    try:
        doc = insp.store_stats(path, topic, partition, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    out = _Out()
    if as_json:
        out.line(_dumps(doc))
    else:
        print_store_stats(out, doc, show_internal)
    out.close()
    for p in doc["problems"]:
        _error(f"{p['label']}: {p['file']} at byte {p['position']}: {p['reason']} (run "
               f"`logstore verify`)")
    if doc["problems"]:
        raise _Exit(EXIT_CORRUPT)


def print_store_stats(out: Any, doc: Dict[str, Any], show_internal: bool = False) -> None:
    """The text form of :func:`logstore.inspect.store_stats` (``logstore stats STORE``).

    ``out`` has a ``line(text)`` method.
    """
    scope = ""
    if doc.get("topic") is not None:
        scope = f", topic {doc['topic']}" + (f" partition {doc['partition']}"
                                              if doc.get("partition") is not None else "")
    out.line(f"store {doc['path']} (id {doc.get('id', '?')}{scope})")
    rows = [["topic/partition", "segments", "start", "end", "records", "bytes",
             "first timestamp", "max timestamp", "status"]]
    for t in doc["topics"]:
        for r in t["partition_stats"]:
            rows.append([r["label"], str(r["segments"]), _num(r["start_offset"]),
                         _num(r["end_offset"]), str(r["records"]), str(r["bytes"]),
                         _iso(r["first_timestamp"]), _iso(r["max_timestamp"]), r["status"]])
        if len(t["partition_stats"]) > 1:
            tot = t["totals"]
            kind = " (queue)" if t["queue"] else ""
            rows.append([f"{t['topic']} total{kind}", str(tot["segments"]), "", "",
                         str(tot["records"]), str(tot["bytes"]), _iso(tot["first_timestamp"]),
                         _iso(tot["max_timestamp"]), tot["status"]])
    out.line("")
    if len(rows) > 1:
        _table(out, rows, left=(0, 6, 7, 8))
    else:
        out.line("no topics")

    def lag_table(title: str, entries: List[Dict[str, Any]], name_key: str, head: str) -> None:
        out.line("")
        if not entries:
            out.line(f"{title}: none")
            return
        out.line(f"{title}:")
        rows = [[head, "topic", "partition", "committed", "end", "lag"]]
        for e in entries:
            for r in e["partitions"]:
                rows.append([e[name_key], e["topic"], str(r["partition"]), str(r["committed"]),
                             _num(r["end_offset"]), _num(r["lag"])])
            if len(e["partitions"]) > 1:
                rows.append([e[name_key], e["topic"], "total", "", "", _num(e["lag"])])
        _table(out, rows, left=(0, 1), indent="  ")

    lag_table("consumer groups (committed offsets)", doc["groups"], "group", "group")
    lag_table("subscriptions (committed offsets)", doc["subscriptions"], "subscription",
              "subscription")
    out.line("")
    if not doc["queues"]:
        out.line("work queues: none")
    else:
        out.line("work queues:")
        rows = [["queue", "partitions", "not done", "unacked", "retry delayed", "dead-lettered",
                 "oldest not done"]]
        notes = []
        for q in doc["queues"]:
            if "error" in q:
                notes.append(f"  {q['queue']}: {q['error']}")
                continue
            dead = "-" if q["dead_letter_topic"] is None else \
                f"{q['dead_lettered']} ({q['dead_letter_topic']})"
            rows.append([q["queue"], str(q["partitions"]), str(q["not_done"]), str(q["unacked"]),
                         str(q["delayed"]), dead, _age(q["oldest_age_s"])])
        if len(rows) > 1:
            _table(out, rows, left=(0, 5), indent="  ")
        for n in notes:
            out.line(n)
    if show_internal:
        internal = doc["internal"]
        logs = internal["logs"]
        if logs:
            out.line("")
            out.line("internal logs:")
            rows = [["log", "segments", "start", "end", "records", "bytes", "status"]]
            for lg in logs:
                rows.append([lg["log"], str(lg["segments"]), _num(lg["start_offset"]),
                             _num(lg["end_offset"]), str(lg["records"]), str(lg["bytes"]),
                             lg["status"]])
            _table(out, rows, left=(0, 6), indent="  ")
        lag_table("internal groups (work-queue checkpoints and redrive cursors)",
                  internal["groups"], "group", "group")


# ------------------------------------------------------------------------------------ tail
def _labelled(target: Any, line: str) -> str:
    """Record lines of a store root's logs start with the log's label (``orders/2``)."""
    return f"{target.label} {line}" if target.expanded else line


def _rec_json(target: Any, rec: Any, mode: str) -> Dict[str, Any]:
    where = _where(target)
    obj = record_json(rec, mode)
    return {**where, **obj} if where else obj


@main.command()
@_path_arg
@click.option("-n", "--lines", "n", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the last records to print.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing records as they are appended (by any process), until Ctrl-C.")
@click.option("--values", type=click.Choice(VALUE_MODES), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per record (the `replay` format).")
@click.option("--interval", type=click.FloatRange(min=0.001), default=0.2, show_default=True,
              help="Seconds between polls with --follow.")
@_store_options()
@_quiet_option
@_operator
def tail(path: str, n: int, follow: bool, values: str, as_json: bool, interval: float,
         topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Print the last N records of the log in PATH; with --follow, keep printing new ones.

    Line format: offset=N ts=MS key=K size=BYTES headers={..} value=V (see `dump`).
    A store root (or --topic NAME [--partition P]): the last N records over all its
    partitions by timestamp, each line starting with its partition (`orders/2 offset=...`;
    JSON objects carry "topic" and "partition"); --follow prints new records of every
    partition. Ctrl-C ends --follow with exit status 0.
    """
    readers = _open_readers(path, topic, partition, "tail")
    out = _Out()
    mode = "base64" if values == "none" and as_json else values

    def emit(target: Any, recs: Iterable[Any]) -> None:
        for rec in recs:
            out.line(_dumps(_rec_json(target, rec, mode)) if as_json
                     else _labelled(target, _record_line(rec, values)))

    try:
        nexts = []
        last: List[Any] = []
        for i, (target, log) in enumerate(readers):
            end = log.end_offset
            nxt = max(log.start_offset, end - n)
            while nxt < end:
                recs = log.read(nxt, max_records=min(1000, end - nxt))
                if not recs:
                    break
                if len(readers) == 1:
                    emit(target, recs)
                else:
                    last.extend((r.timestamp_ms, i, r.offset, r) for r in recs)
                nxt = recs[-1].offset + 1
            nexts.append(nxt)
        if last:
            last.sort(key=lambda x: x[:3])
            for _, i, _, rec in last[len(last) - n:] if n else []:
                emit(readers[i][0], [rec])
        out.flush()
        while follow:
            got = False
            for i, (target, log) in enumerate(readers):
                recs = log.read(nexts[i], max_records=1000)
                if recs:
                    emit(target, recs)
                    nexts[i] = recs[-1].offset + 1
                    got = True
            if got:
                out.flush()
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow ends: exit 0, quietly
    finally:
        for _, log in readers:
            log.close()


# ------------------------------------------------------------------------------------ replay
@main.command()
@_path_arg
@click.option("--from-offset", type=click.IntRange(min=0), default=None,
              help="First offset (default: the log's start).")
@click.option("--to-offset", type=click.IntRange(min=0), default=None,
              help="Stop before this offset (exclusive, like range(); default: the end now).")
@click.option("--from-time", default=None, metavar="ISO8601",
              help="Start at the first record with a timestamp >= this (ISO 8601, naive = UTC, "
                   "or integer ms); combined with --from-offset, the later start wins.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "raw"]), default="jsonl",
              show_default=True)
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True, help="jsonl: how keys, values and header values are written.")
@click.option("--newline", is_flag=True, help="raw: write a \\n after each value.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of stdout.")
@_store_options()
@_quiet_option
@_operator
def replay(path: str, from_offset: Optional[int], to_offset: Optional[int],
           from_time: Optional[str], fmt: str, values: str, newline: bool,
           output: Optional[str], topic: Optional[str], partition: Optional[int],
           quiet: bool) -> None:
    """Write the records of the log in PATH in offset order, from an offset or a time.

    \b
    jsonl (default): one JSON object per record:
      {"offset": N, "timestamp_ms": MS, "key": K, "value": V, "headers": {NAME: V}}
      Keys, values and header values are base64; with --values text they are UTF-8 strings,
      and a field that is not valid UTF-8 is written in base64 with a marker field:
      "key_encoding": "base64", "value_encoding": "base64" or "headers_encoding": "base64"
      (then all header values of that record are base64). Null key/tombstone: null.
      Records of a store's topic start with "topic" and "partition".
    raw: the value bytes only, back to back with nothing in between (a tombstone writes
      nothing); with --newline a "\\n" follows every record's value.
    A store root (or --topic NAME [--partition P]): partition after partition (topics by
    name), each in offset order; the offsets and the time apply to every partition.
    """
    if from_time is not None:
        ts = _parse_time(from_time)
    readers = _open_readers(path, topic, partition, "replay")
    try:
        out = _Out(output)
        for target, log in readers:
            start = log.start_offset if from_offset is None else from_offset
            if from_time is not None:
                start = max(start, log.offset_for_time(ts))
            stop = to_offset
            if stop is not None and stop < start:
                stop = start
            if len(readers) > 1:  # offsets apply to every partition: clamp to each one
                start = min(max(start, log.start_offset), log.end_offset)
                if stop is not None:
                    stop = min(max(stop, start), log.end_offset)
            for rec in log.replay(start, stop):
                if fmt == "raw":
                    if rec.value is not None:
                        out.raw(rec.value)
                    if newline:
                        out.raw(b"\n")
                else:
                    out.line(_dumps(_rec_json(target, rec, values)))
        out.close()
    finally:
        for _, log in readers:
            log.close()


# ------------------------------------------------------------------------------------ consume
@main.command()
@_path_arg
@click.option("--from-offset", type=click.IntRange(min=0), default=None,
              help="First offset (default: the log's start).")
@click.option("--max", "max_records", type=click.IntRange(min=1), default=None,
              help="At most N records (in all).")
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True)
@_store_options()
@_quiet_option
@_operator
def consume(path: str, from_offset: Optional[int], max_records: Optional[int], values: str,
            topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Print records of the log in PATH as JSON lines (the `replay` format), then exit.

    Reads from --from-offset up to the end of the log as it is when the command starts.
    A store root (or --topic NAME [--partition P]): partition after partition, objects with
    "topic" and "partition"; --from-offset applies to every partition (one that ends
    before it is skipped). Committed offsets are not used or changed.
    """
    readers = _open_readers(path, topic, partition, "consume")
    out = _Out()
    try:
        left = max_records
        for target, log in readers:
            end = log.end_offset
            nxt = log.start_offset if from_offset is None else from_offset
            if nxt > end:
                if len(readers) == 1:
                    raise OffsetOutOfRangeError(
                        f"offset {nxt} is past the end of the log (end_offset {end})")
                continue
            if len(readers) > 1:
                nxt = max(nxt, log.start_offset)
            while nxt < end and (left is None or left > 0):
                want = min(1000, end - nxt) if left is None else min(1000, end - nxt, left)
                recs = log.read(nxt, max_records=want)
                if not recs:
                    break
                for rec in recs:
                    out.line(_dumps(_rec_json(target, rec, values)))
                nxt = recs[-1].offset + 1
                if left is not None:
                    left -= len(recs)
        out.close()
    finally:
        for _, log in readers:
            log.close()


# ------------------------------------------------------------------------------------ produce
def _option_value(text: str) -> Any:
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower() in ("none", "null"):
        return None
    return text


def _open_store(root: str, opts: Dict[str, Any], **defaults: Any) -> Any:
    """Open the store at ``root`` for writing (LogLockedError, exit 3, if a writer has it):
    no background cleanup thread and no msg-id window unless asked for."""
    from ..views.store import Store

    options = dict(defaults)
    options.setdefault("retention_check_interval_s", 0)
    options.update(opts)
    return Store.open(root, dedup_window_s=0, **options)


@main.command()
@_path_arg
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
@_option_flag
@_store_options()
@_quiet_option
@_operator
def produce(path: str, src: Optional[str], key: Optional[str], batch_size: int, create: bool,
            partitions: int, options: tuple, topic: Optional[str], partition: Optional[int],
            quiet: bool) -> None:
    """Append one record per input line to the log in PATH (the line without its \\n).

    A store root needs --topic NAME: keyed records go to the key's partition (as
    Topic.publish does), unkeyed ones round-robin, or all to --partition P.

    Takes the writer's lock: fails with exit status 3 if another writer has the log (or the
    store) open. Prints a summary on stderr (not with --quiet).
    """
    opts = _parse_options(options)
    kb = None if key is None else key.encode("utf-8")
    if partition is not None and topic is None:
        raise click.BadParameter("--partition needs --topic", param_hint="--partition")
    if topic is not None:
        target_store = insp.store_path(path)
        if target_store is not None and target_store[1] is not None:
            raise NotALogError(f"{path} is a topic directory: pass the store root "
                               f"{os.path.dirname(os.path.dirname(path.rstrip(os.sep)))} "
                               f"with --topic")
        if target_store is None and not (create and not os.path.exists(path)):
            insp.resolve_targets(path, topic)  # the usage error: not a store
        _produce_store(path, src, kb, batch_size, create, partitions, opts, topic, partition,
                       quiet)
        return
    if insp.store_path(path) is not None:
        raise click.BadParameter(f"{path} is a store: name the topic with --topic",
                                 param_hint="--topic")
    if not (create and not os.path.exists(path)):
        insp.require_log_dir(path, "produce")
    log = Log.open(path, **opts)
    stream = open(src, "rb") if src else _binary(sys.stdin)
    first = None
    count = 0
    pending: List[bytes] = []

    def flush() -> None:
        nonlocal first, count
        if not pending:
            return
        keys = None if kb is None else [kb] * len(pending)
        offs = log.append_batch(pending, keys=keys)
        if first is None:
            first = offs.start
        count += len(pending)
        pending.clear()

    try:
        for line in stream:
            pending.append(line[:-1] if line.endswith(b"\n") else line)
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
    from ..views.names import validate_name

    validate_name("topic", topic)
    store = _open_store(path, opts)
    stream = None
    try:
        if topic not in store.topics() and not create:
            raise UnknownTopicError(f"no topic {topic!r} in store {path} (--create makes it)")
        t = store.topic(topic, partitions if topic not in store.topics() else None)
        if partition is not None and partition >= t.partition_count:
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition} (it has "
                                    f"{t.partition_count})")
        stream = open(src, "rb") if src else _binary(sys.stdin)
        pending: Dict[int, List[bytes]] = {}
        ranges: Dict[int, List[int]] = {}  # partition -> [first, last]
        count = 0
        waiting = 0

        def flush() -> None:
            nonlocal waiting
            for p, values in sorted(pending.items()):
                keys = None if kb is None else [kb] * len(values)
                offs = t.partitions[p].append_batch(values, keys=keys)
                r = ranges.setdefault(p, [offs.start, offs.stop - 1])
                r[1] = offs.stop - 1
            pending.clear()
            waiting = 0

        for line in stream:
            value = line[:-1] if line.endswith(b"\n") else line
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


# ------------------------------------------------------------------------------------ recover
@main.command()
@_path_arg
@click.option("--apply", "do_apply", is_flag=True,
              help="Do it (default: a dry run that changes nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_store_options()
@_quiet_option
@_operator
def recover(path: str, do_apply: bool, as_json: bool, topic: Optional[str],
            partition: Optional[int], quiet: bool) -> None:
    """Run crash recovery of the log in PATH explicitly; report what it would change.

    A store root: every topic partition and internal log (or --topic NAME [--partition P]);
    --apply then first takes the store's lock (exit 3 while a process has the store open).

    \b
    Dry run (default): verifies the log and scans the active segment like recovery does;
    nothing is changed and no lock is taken. Exit 0 if there is nothing to recover, 1 if
    there is (or if damage exists that recovery cannot repair).
    --apply: takes the writer's lock (exit 3 if a writer has the log open), then
      - removes the clean-shutdown marker if the active segment needs recovery,
      - rewrites the indexes of sealed segments whose indexes are wrong,
      - if valid batches follow damage in the active segment (a writer refuses to open
        such a log), cuts the segment at the damage, DROPPING everything after it,
      - opens the log for writing, which truncates a torn tail, rebuilds the active
        segment's indexes and deletes leftover *.tmp files, and closes it cleanly,
    then verifies again. Exit 0 if the log is now clean, 1 if damage remains (damage in
    sealed segments or missing offsets: restore those segments from a copy).
    """
    if insp.store_path(path) is not None:
        _recover_store(path, do_apply, as_json, topic, partition, quiet)
        return
    insp.resolve_targets(path, topic, partition)  # usage error for --topic with a plain log
    target = insp.require_log_dir(path, "recover")
    report = _inspect_with_progress(target, True, quiet)
    plan = _recovery_plan(target, report)
    out = _Out()
    if not do_apply:
        if as_json:
            out.line(_dumps({"path": path, "apply": False, "actions": plan["actions"],
                             "unrepairable": plan["unrepairable"], "notes": plan["notes"],
                             "active": plan["active"], "report": report.as_dict()}))
        else:
            out.line(f"recover {path}: dry run (nothing changed; --apply to do it)")
            _print_plan(out, plan, "would")
        out.close()
        if plan["actions"] or plan["unrepairable"] or not report.ok:
            raise _Exit(EXIT_CORRUPT)
        return
    done = _apply_recovery(target, report, plan)
    after = insp.inspect_log(target, verify=True)
    if as_json:
        out.line(_dumps({"path": path, "apply": True, "actions": plan["actions"],
                         "unrepairable": plan["unrepairable"], "notes": plan["notes"],
                         "active": plan["active"], "recovery": done,
                         "ok": after.ok, "report": after.as_dict()}))
    else:
        out.line(f"recover {path}: applied")
        _print_plan(out, plan, "did")
        for line in done.get("forced", "").splitlines():
            out.line(f"  forced cut: {line.strip()}")
        for line in done.get("summary", "").splitlines():
            out.line(f"  recovery: {line.strip()}")
        if after.ok:
            out.line("OK: the log verifies clean")
        else:
            for p in after.problems:
                at = f" at byte {p.position}" if p.position is not None else ""
                out.line(f"PROBLEM [{p.kind}] {_seg_label(after, p.file)}{at}: {p.reason}")
                out.line(f"  -> {p.repair}")
            out.line(f"CORRUPT: {len(after.problems)} problem(s) remain")
    out.close()
    if not after.ok:
        raise _Exit(EXIT_CORRUPT)


def _print_plan(out: _Out, plan: Dict[str, Any], verb: str, indent: str = "") -> None:
    a = plan["active"]
    if a is not None:
        out.line(f"{indent}active segment {a['segment']}: {a['file_bytes']} bytes, "
                 f"{a['batches']} valid batches up to byte {a['valid_bytes']}"
                 + (" (clean-shutdown marker matches: a writer would not scan it)"
                    if a["clean_marker"] else ""))
        if a["problem"]:
            out.line(f"{indent}  first invalid batch at byte {a['problem_position']}: "
                     f"{a['problem']}")
    for act in plan["actions"]:
        out.line(f"{indent}{verb}: {act['text']}")
    for note in plan["notes"]:
        out.line(f"{indent}note: {note}")
    for bad in plan["unrepairable"]:
        out.line(f"{indent}cannot repair: {bad}")
    if not plan["actions"] and not plan["unrepairable"]:
        out.line(f"{indent}nothing to recover")


def _recover_store(path: str, do_apply: bool, as_json: bool, topic: Optional[str],
                   partition: Optional[int], quiet: bool) -> None:
    """`recover` over the logs of a store root: per log as for one log, under the store lock."""
    from ..storage.lockfile import DirectoryLock

    targets = insp.resolve_targets(path, topic, partition, internal=True)
    root = insp.store_path(path)[0]
    lock = DirectoryLock(root).acquire() if do_apply else None  # exit 3 if the store is open
    try:
        items = []
        for target in targets:
            report = _inspect_with_progress(target, True, quiet)
            if target.expanded and not report.segments and report.problems:
                items.append({"target": target, "report": report, "missing": True})
                continue
            plan = _recovery_plan(target, report)
            item = {"target": target, "report": report, "plan": plan, "missing": False}
            if do_apply:
                item["done"] = _apply_recovery(target, report, plan)
                item["after"] = insp.inspect_log(target, verify=True)
            items.append(item)
    finally:
        if lock is not None:
            lock.release()
    out = _Out()
    failed = False
    docs = []
    if not as_json:
        out.line(f"recover {path}: " + ("applied" if do_apply else
                                         "dry run (nothing changed; --apply to do it)"))
    for it in items:
        t, report = it["target"], it["report"]
        if it["missing"]:
            failed = True
            reason = report.problems[0].reason
            if as_json:
                docs.append({"label": t.label, **_where(t), "missing": True, "reason": reason})
            else:
                out.line(f"{t.label}:")
                out.line(f"  cannot repair: {reason}")
            continue
        plan = it["plan"]
        doc: Dict[str, Any] = {"label": t.label, **_where(t), "actions": plan["actions"],
                               "unrepairable": plan["unrepairable"], "notes": plan["notes"],
                               "active": plan["active"]}
        if do_apply:
            after = it["after"]
            doc.update(recovery=it["done"], ok=after.ok, report=after.as_dict())
            failed |= not after.ok
        else:
            doc["report"] = report.as_dict()
            failed |= bool(plan["actions"] or plan["unrepairable"] or not report.ok)
        docs.append(doc)
        if as_json:
            continue
        out.line(f"{t.label}:")
        _print_plan(out, plan, "did" if do_apply else "would", indent="  ")
        if do_apply:
            for line in it["done"].get("forced", "").splitlines():
                out.line(f"  forced cut: {line.strip()}")
            after = it["after"]
            for p in after.problems:
                at = f" at byte {p.position}" if p.position is not None else ""
                out.line(f"  PROBLEM [{p.kind}] {_seg_label(after, p.file)}{at}: {p.reason}")
    if as_json:
        out.line(_dumps({"path": path, "apply": do_apply, "ok": not failed, "logs": docs}))
    elif do_apply:
        out.line("OK: every log verifies clean" if not failed else
                 "CORRUPT: problems remain (see above)")
    elif not failed:
        out.line(f"nothing to recover in {len(items)} log{'s' if len(items) != 1 else ''}")
    out.close()
    if failed:
        raise _Exit(EXIT_CORRUPT)


def _active_segment(target: Any):
    """A read-only Segment object for the last segment (for logstore.recovery), or None."""
    from ..config import LogConfig
    from ..fs import DEFAULT_FS
    from ..storage.segment import Segment

    bases = list_segments(target.log_dir)
    if not bases:
        return None
    return Segment(target.log_dir, bases[-1], DEFAULT_FS, LogConfig().index_interval_bytes,
                   writable=False)


def _recovery_plan(target: Any, report: Any) -> Dict[str, Any]:
    """What recovery would do, from the verify report and loader.inspect_active."""
    from ..storage import meta

    actions: List[Dict[str, Any]] = []
    unrepairable: List[str] = []
    notes: List[str] = []
    active_info = None
    seg = _active_segment(target)
    marker = meta.read_clean_shutdown(target.log_dir)
    if seg is not None:
        _, rr = inspect_active(seg)
        size = rr.file_bytes
        clean_marker = (marker is not None and marker["segment"] == seg.base_offset
                        and marker["size"] == size)
        active_info = {"segment": os.path.basename(seg.path), "file_bytes": size,
                       "valid_bytes": rr.valid_bytes, "batches": rr.batches,
                       "problem": rr.problem, "problem_position": rr.problem_position,
                       "data_after_problem": rr.data_after_problem,
                       "truncate_bytes": rr.truncated_bytes, "clean_marker": clean_marker}
        name = os.path.basename(seg.path)
        active_bad = bool(rr.problem) or any(
            p.file == seg.path and p.kind == "index" for p in report.problems)
        marker_bad = any(p.kind == "marker" for p in report.problems)
        if (active_bad or marker_bad) and marker is not None:
            actions.append({"action": "remove_marker",
                            "text": f"remove the clean-shutdown marker "
                                    f"({CLEAN_SHUTDOWN_NAME}) so that the active segment "
                                    f"is scanned"})
        if rr.problem and rr.data_after_problem:
            lost = sum(s.records_after_damage for s in report.segments if s.path == seg.path)
            actions.append({"action": "force_truncate", "segment": name,
                            "position": rr.valid_bytes, "drop_bytes": rr.truncated_bytes,
                            "drop_records": lost,
                            "text": f"cut {name} at byte {rr.valid_bytes}, DROPPING "
                                    f"{rr.truncated_bytes} bytes including {lost} records in "
                                    f"valid batches after the damage (mid-file corruption, "
                                    f"not a torn tail)"})
        elif rr.problem:
            actions.append({"action": "truncate", "segment": name, "position": rr.valid_bytes,
                            "drop_bytes": rr.truncated_bytes,
                            "text": f"truncate the torn tail of {name}: {rr.truncated_bytes} "
                                    f"bytes from byte {rr.valid_bytes}"})
        elif rr.unwritten_tail:
            notes.append(f"{name} ends in {rr.truncated_bytes} preallocated, never written "
                         f"bytes after byte {rr.valid_bytes}: the next writer open trims them")
        if active_bad or marker_bad or not clean_marker:
            actions.append({"action": "rebuild_active_indexes", "segment": name,
                            "text": f"rebuild the indexes of {name}"
                                    + ("" if active_bad or marker_bad else
                                       " (no clean-shutdown marker: the next writer open "
                                       "rescans it anyway)")})
    for s in report.segments:
        if s.active:
            continue
        if s.status == "bad index":
            actions.append({"action": "rebuild_sealed_indexes", "segment": s.name,
                            "next_offset": s.next_offset,
                            "text": f"rewrite the indexes of sealed segment {s.name}"})
    for p in report.problems:
        if p.kind == "damaged" and not (seg is not None and p.file == seg.path
                                        and active_info and active_info["problem"]):
            unrepairable.append(f"{os.path.basename(p.file)}"
                                + (f" at byte {p.position}" if p.position is not None else "")
                                + f": {p.reason}")
    for name, what, fate in insp.leftover_files(target.log_dir):
        # (done by the writer's open: recovery.finish_interrupted_cleanups)
        actions.append({"action": "leftover", "file": name,
                        "text": f"leftover {name} ({what}): {fate}"})
    if report.writer_pid is not None:
        notes.append(f"a writer (pid {report.writer_pid}) has the log open, so its active segment "
                     f"may be mid-write; --apply fails (exit 3) until that writer closes the log")
    # A plain rebuild after an unclean shutdown is routine, not work that makes the dry run fail.
    if actions and all(a["action"] == "rebuild_active_indexes" for a in actions) and report.ok:
        notes.append(actions[0]["text"])
        actions = []
    return {"actions": actions, "unrepairable": unrepairable, "notes": notes,
            "active": active_info}


def _apply_recovery(target: Any, report: Any, plan: Dict[str, Any]) -> Dict[str, Any]:
    """Carry out the plan under the writer's lock (see `recover --help`)."""
    from ..storage import meta
    from ..config import LogConfig
    from ..fs import DEFAULT_FS
    from ..storage.lockfile import DirectoryLock
    from ..storage.segment import Segment

    d = target.log_dir
    cfg = LogConfig()
    interval = cfg.index_interval_bytes
    capacity = index_capacity(cfg.segment_bytes, interval)
    kinds = {a["action"] for a in plan["actions"]}
    result: Dict[str, Any] = {}
    lock = DirectoryLock(d).acquire()  # LogLockedError (exit 3) if a writer has the log open
    try:
        if "remove_marker" in kinds:
            meta.remove_clean_shutdown(d, DEFAULT_FS)
        for a in plan["actions"]:
            if a["action"] == "rebuild_sealed_indexes":
                base = int(a["segment"].split(".")[0])
                seg = Segment.open_sealed(d, base, a["next_offset"], DEFAULT_FS, interval,
                                          writable=True)
                try:
                    seg.rebuild_sealed_indexes()
                finally:
                    seg.close()
        if "force_truncate" in kinds:
            # Log._recover refuses this case (CorruptLogError); do what it does, forcing the cut.
            meta.remove_clean_shutdown(d, DEFAULT_FS)
            bases = list_segments(d)
            seg = Segment(d, bases[-1], DEFAULT_FS, interval, writable=True)
            try:
                forced = seg.recover(capacity, force_truncate=True)
            finally:
                seg.close()  # (unmaps its index files before Log.open rewrites them)
            result["forced"] = forced.summary()
    finally:
        lock.release()
    # A normal writer open: deletes *.tmp, truncates a torn tail, rebuilds the active indexes.
    log = Log.open(d)
    try:
        rep = log.recovery_report
        result["summary"] = rep.summary() if rep is not None else ""
    finally:
        log.close()
    return result


# ------------------------------------------------------------------------------------ demo
# A writer that is killed mid-stream by the demo: publishes orders durably into the store,
# printing "partition offset order" once each publish is acknowledged (fsync="always").
_CRASH_WRITER = r"""
import json, random, sys
import logstore
store = logstore.Store.open(sys.argv[1], fsync="always", segment_bytes=64 * 1024,
                            dedup_window_s=0, retention_check_interval_s=0)
orders = store.topic("orders")
first = int(sys.argv[2])
rng = random.Random(first)
i = 0
while True:
    user = f"user-{rng.randrange(200)}"
    value = json.dumps({"order": first + i, "user": user, "amount": rng.randint(1, 500)})
    p, off = orders.publish(value.encode(), key=user.encode(), headers={"type": b"order-created"})
    print(p, off, first + i, flush=True)
    i += 1
"""

DEMO_PARTITIONS = 4
DEMO_SUBSCRIPTIONS = ("audit", "analytics", "email")
DEMO_PAYMENTS = 200
DEMO_WORKERS = 4


class _Indented:
    """``line(text)`` into click.echo with an indent (print_store_stats writes to it)."""

    def __init__(self, indent: str):
        self.indent = indent

    def line(self, text: str) -> None:
        click.echo((self.indent + text).rstrip())


def _package_env() -> Dict[str, str]:
    """The environment of a child process that must import this logstore, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@main.command()
@click.argument("directory", default="./logstore-demo", type=click.Path(file_okay=False))
@click.option("--records", default=50_000, show_default=True, type=click.IntRange(min=100),
              help="Orders to publish.")
@_operator
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
    from ..views.store import Store

    if os.path.isdir(directory) and os.listdir(directory) and not insp.is_store_root(directory):
        raise NotALogError(f"{directory} is not empty and is not a store (no "
                           f"{insp.STORE_META_NAME}; an older demo wrote a plain log there?): "
                           f"pass a new directory")
    click.echo(f"logstore {__version__} demo: a store in {os.path.abspath(directory)}")
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(200)]
    store = Store.open(directory, fsync="always", segment_bytes=1 << 20, compression="zstd",
                       dedup_window_s=0, retention_check_interval_s=0)
    try:
        orders = store.topic("orders", partitions=DEMO_PARTITIONS)
        subs = [store.subscribe("orders", name) for name in DEMO_SUBSCRIPTIONS]
        pending_before = {s.name: sum(s.lag().values()) for s in subs}
        first_order = sum(orders.end_offsets().values())

        # 1. Publish: a bulk load in batches (one fsync per partition batch), then singles.
        t0 = time.perf_counter()
        published = 0
        chunk = 500 * DEMO_PARTITIONS  # about 500 orders per partition batch
        for base in range(0, records, chunk):
            n = min(chunk, records - base)
            by_part: Dict[int, List[Any]] = {}
            for i in range(n):
                user = rng.choice(users)
                value = json.dumps({"order": first_order + base + i, "user": user,
                                    "amount": rng.randint(1, 500)}).encode()
                key = user.encode()
                by_part.setdefault(orders.partition_of(key), []).append((key, value))
            for p, items in sorted(by_part.items()):
                orders.partitions[p].append_batch(
                    [v for _, v in items], keys=[k for k, _ in items],
                    headers=[{"type": b"order-created"}] * len(items))
            published += n
        dt = time.perf_counter() - t0
        click.echo(f"1. published {records:,} orders keyed by user into topic \"orders\" "
                   f"({DEMO_PARTITIONS} partitions): {records / dt:,.0f} records/s")
        click.echo("   (batches of ~500 per partition, fsync=always: one fdatasync per batch; "
                   "zstd)")
        t0 = time.perf_counter()
        for i in range(200):
            user = rng.choice(users)
            orders.publish(json.dumps({"order": first_order + records + i, "user": user,
                                       "amount": rng.randint(1, 500)}).encode(),
                           key=user.encode(), headers={"type": b"order-created"})
        published += 200
        dt = time.perf_counter() - t0
        click.echo(f"   200 single durable publishes: {dt / 200 * 1e3:.2f} ms each (one "
                   f"fdatasync per publish)")
        ends = orders.end_offsets()
        click.echo("   end offsets: " + "  ".join(f"orders/{p}={e:,}" for p, e in ends.items())
                   + f"  (a user's orders all go to partition crc32c(user) % "
                   f"{DEMO_PARTITIONS}, in order)")

        # 2. Pub/sub fan-out: every durable subscription receives every order.
        t0 = time.perf_counter()
        got = {}
        for s in subs:
            n = 0
            while True:
                recs = s.poll(5000)
                if not recs:
                    break
                n += len(recs)
            s.commit()
            got[s.name] = n
        dt = time.perf_counter() - t0
        ok = all(got[s.name] == pending_before[s.name] + published for s in subs)
        click.echo(f"2. pub/sub: {len(subs)} durable subscriptions each received every order "
                   f"({', '.join(f'{k}={v:,}' for k, v in got.items())}; "
                   f"{sum(got.values()) / dt:,.0f} records/s), committed their positions"
                   + ("" if ok else "  MISMATCH"))
        for s in subs:
            s.close()

        # 3. A consumer group reads part of the stream, commits, and lags behind.
        billing = store.consumer("billing", "orders", start="earliest")
        want = max(1, published * 3 // 5)
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
        lag = {p: orders.partitions[p].end_offset - off
               for p, off in sorted(billing.committed().items())}
        click.echo(f"3. consumer group \"billing\" polled {read:,} orders (total amount "
                   f"{amount:,}) and committed; lag: "
                   + "  ".join(f"{p}={v:,}" for p, v in lag.items())
                   + f"  (total {sum(lag.values()):,})")
        billing.close()

        # 4. Work queue: a consumer acks payment jobs; a poison message is dead-lettered.
        q = store.queue("payments", visibility_timeout=10, max_deliveries=3)
        poison_at = DEMO_PAYMENTS // 3
        for i in range(DEMO_PAYMENTS):
            user = rng.choice(users)
            job = {"order": first_order + i, "user": user, "amount": rng.randint(1, 500)}
            if i == poison_at:
                job["card"] = "expired"
            q.put(json.dumps(job).encode(), key=user.encode())
        t0 = time.perf_counter()
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
        acked = len(acks)
        dt = time.perf_counter() - t0
        st = q.stats()
        click.echo(f"4. work queue \"payments\": {DEMO_PAYMENTS} payment jobs put, "
                   f"{DEMO_WORKERS} consumer threads acked {acked} in {dt:.2f} s ("
                   + ", ".join(str(acks.count(n)) for n in range(DEMO_WORKERS))
                   + "); the poison job (expired card) was delivered "
                   f"{len(poison_deliveries)} times (max_deliveries=3), then dead-lettered")
        dlq = store.topic("payments.dlq").partitions[0]
        if dlq.end_offset > dlq.start_offset:
            dead = dlq.get(dlq.end_offset - 1)
            hdrs = "  ".join(f"{k}={v.decode('utf-8', 'replace')}"
                             for k, v in sorted(dead.headers.items()))
            click.echo(f"   payments.dlq offset {dead.offset}: {dead.value.decode()}")
            click.echo(f"     headers: {hdrs}")
        click.echo("   queue stats: " + "  ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items()))
    finally:
        store.close()

    # 5. A writer process is killed with SIGKILL while publishing durably; reopen and check.
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, directory,
                             str(first_order + 10_000_000)],
                            stdout=subprocess.PIPE, env=_package_env())
    acked_recs = []
    assert proc.stdout is not None
    try:
        first_line = proc.stdout.readline()  # wait for the child's first acknowledged publish
        if first_line:
            acked_recs.append(tuple(map(int, first_line.split())))
        deadline = time.time() + 0.7
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked_recs.append(tuple(map(int, line.split())))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    click.echo(f"5. a writer process acknowledged {len(acked_recs)} durable publishes "
               f"(fsync=always), then was killed with SIGKILL")
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
        for p, off, order in acked_recs:
            log = orders.partitions[p]
            if off >= log.end_offset or json.loads(log.get(off).value)["order"] != order:
                missing += 1
        click.echo(f"   acknowledged records lost: {missing} (must be 0); every acknowledged "
                   f"order read back by (partition, offset) with its content"
                   if not missing else f"   acknowledged records lost: {missing} (must be 0)")
        if missing:
            _error("acknowledged records were lost")
            raise _Exit(EXIT_CORRUPT)

        # 6. Reads: by offset, by time, a replay of one partition.
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
    finally:
        store.close()

    # 7. What is in the store: `logstore stats DIR`.
    click.echo(f"7. logstore stats {directory}")
    print_store_stats(_Indented("   "), insp.store_stats(directory))
    click.echo("done: run it again to append to the same store (recovery repeats); inspect it "
               f"with `logstore stats|verify|dump|tail {directory} [--topic orders]`.")


# ------------------------------------------------------------------------------------ compact
def _cleanup_scope(path: str, topic: Optional[str], partition: Optional[int], what: str
                   ) -> Optional[Any]:
    """None for a plain log directory; else (store root, topic, partition) to work on.

    A topic directory or a topic partition directory of a store is that topic (partition) of
    the store: the store's lock is taken and its queues and groups are honoured.
    """
    if partition is not None and topic is None:
        raise click.BadParameter("--partition needs --topic", param_hint="--partition")
    found = insp.store_path(path)
    if found is not None:
        root, tdir = found
        if tdir is not None:
            if topic is not None and topic != tdir:
                raise NotALogError(f"{path} is the directory of topic {tdir!r}, not {topic!r}")
            topic = tdir
        insp.resolve_targets(root, topic, partition)  # unknown topic/partition: usage error
        return root, topic, partition
    insp.resolve_targets(path, topic, partition)  # --topic with a plain log: usage error
    insp.require_log_dir(path, what)
    owner = insp.partition_of_store(path)
    if owner is not None:
        return owner
    return None


def _compact_line(label: str, r: Dict[str, Any]) -> str:
    if not r.get("passes"):
        return (f"{label}: nothing to compact (no sealed segment; compaction works on sealed "
                f"segments only)")
    return (f"{label}: {r['segments_cleaned']} sealed segment"
            f"{'s' if r['segments_cleaned'] != 1 else ''} in {r['passes']} pass"
            f"{'es' if r['passes'] != 1 else ''}, records {r['records_before']} -> "
            f"{r['records_after']}, bytes {r['bytes_before']} -> {r['bytes_after']}, "
            f"{r['tombstones_dropped']} tombstones dropped, {r['seconds']:.2f} s")


@main.command()
@_path_arg
@click.option("--now-ms", type=click.IntRange(min=0), default=None,
              help="The time compaction takes as now (tombstones older than "
                   "delete_retention_ms before it are dropped); default: the clock.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_option_flag
@_store_options()
@_quiet_option
@_operator
def compact(path: str, now_ms: Optional[int], as_json: bool, options: tuple,
            topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """Run one compaction pass over PATH now and print what it did.

    Keeps the latest record of every key in the sealed segments (see README "Retention and
    compaction"). Opens the log (or store) for writing: exit 3 if a writer has it open.
    Options default to cleanup_policy=compact; -o NAME=VALUE passes Log.open options (e.g.
    -o delete_retention_ms=0 -o compaction_buffer_bytes=1048576).

    \b
    A store root: every topic partition, or --topic NAME [--partition P], and (without
    --topic) the committed-offsets log. A work queue's topic is never compacted (that would
    drop messages not yet acked): skipped, or a usage error when named with --topic. A topic
    holding keyless records cannot be compacted: skipped with the reason, or a usage error
    (exit 2) when named with --topic or given as PATH.
    """
    opts = _parse_options(options)
    opts.setdefault("cleanup_policy", "compact")
    opts.setdefault("retention_check_interval_s", 0)
    scope = _cleanup_scope(path, topic, partition, "compact")
    out = _Out()
    if scope is None:
        with Log.open(path, **opts) as log:
            report = log.compact(now_ms)
        if as_json:
            out.line(_dumps({"path": path, "logs": [{"label": path, "report": report}]}))
        else:
            out.line("compact " + _compact_line(path, report))
        out.close()
        return
    root, topic, partition = scope
    explicit = topic is not None
    docs: List[Dict[str, Any]] = []
    store = _open_store(root, opts)
    try:
        queues = set(insp.store_queues(root))
        names = [topic] if topic is not None else store.topics()
        for name in names:
            if name in queues:
                if explicit:
                    raise click.BadParameter(
                        f"topic {name!r} is a work queue's topic: compacting it would drop "
                        f"messages not yet acked", param_hint="--topic")
                docs.append({"label": name, "topic": name, "skipped":
                             "a work queue's topic (compaction would drop unacked messages)"})
                continue
            t = store.topic(name)
            for p, log in enumerate(t.partitions):
                if partition is not None and p != partition:
                    continue
                label = f"{name}/{p}"
                try:
                    docs.append({"label": label, "topic": name, "partition": p,
                                 "report": log.compact(now_ms)})
                except MissingKeyError as e:
                    if explicit:
                        raise
                    docs.append({"label": label, "topic": name, "partition": p,
                                 "skipped": str(e)})
        if not explicit:
            docs.append({"label": "internal/offsets", "internal": True,
                         "report": store.offsets.log.compact(now_ms)})
    finally:
        store.close()
    if as_json:
        out.line(_dumps({"path": path, "logs": docs}))
    else:
        out.line(f"compact {path}:")
        for d in docs:
            if "skipped" in d:
                out.line(f"  {d['label']}: skipped: {d['skipped']}")
            else:
                out.line("  " + _compact_line(d["label"], d["report"]))
    out.close()


# ------------------------------------------------------------------------------------ retention
def _retention_line(label: str, before: int, r: Dict[str, Any]) -> str:
    if not r["segments_removed"]:
        return f"{label}: nothing to delete (start offset {r['start_offset']})"
    n = r["segments_removed"]
    return (f"{label}: deleted {n} segment{'s' if n != 1 else ''} ({r['bytes_freed']} bytes), "
            f"start offset {before} -> {r['start_offset']}")


@main.command()
@_path_arg
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_option_flag
@_store_options(partition=False)
@_quiet_option
@_operator
def retention(path: str, as_json: bool, options: tuple, topic: Optional[str],
              quiet: bool) -> None:
    """Run one retention pass over PATH now and print what it deleted.

    Deletes whole sealed segments, oldest first, never the active one, by the limits given as
    options: -o retention_ms=N (older than N ms) and/or -o retention_bytes=N (keep at most N
    bytes per log). Opens the log (or store) for writing: exit 3 if a writer has it open.

    \b
    A store root (or --topic NAME): one pass of Store.enforce_retention over every topic (or
    topic NAME): the limits above; for a topic created with retention="interest", what every
    group and subscription has committed past; for a work queue's topic, only segments
    whose messages are all done (never an unacked one, whatever the limits: its queue is
    opened for that). Queue event logs are trimmed below their checkpoint and the
    committed-offsets log is compacted. A partition directory of a store is refused: run it
    on the store root with --topic.
    """
    opts = _parse_options(options)
    opts.setdefault("retention_check_interval_s", 0)
    limits = opts.get("retention_ms") is not None or opts.get("retention_bytes") is not None
    found = insp.store_path(path)
    if found is None:
        owner = insp.partition_of_store(path)
        if owner is not None:
            raise NotALogError(
                f"{path} is partition {owner[2]} of topic {owner[1]!r} of the store "
                f"{owner[0]}: run `logstore retention {owner[0]} --topic {owner[1]}` so that "
                f"the store's queues and groups are honoured")
    scope = _cleanup_scope(path, topic, None, "retention")
    out = _Out()
    note = ("no retention_ms or retention_bytes given (-o retention_ms=N): only what is "
            "already consumed (interest topics, acked queue messages) is due")
    if scope is None:
        with Log.open(path, **opts) as log:
            before = log.start_offset
            report = log.enforce_retention()
        if as_json:
            out.line(_dumps({"path": path, "logs": [{"label": path, "start_offset_before":
                                                     before, "report": report}]}))
        else:
            out.line("retention " + _retention_line(path, before, report))
            if not limits and not quiet:
                out.line("note: no retention_ms or retention_bytes given (-o retention_ms=N): "
                         "a plain log has no other limit")
        out.close()
        return
    root, topic, _ = scope
    store = _open_store(root, opts)
    docs: List[Dict[str, Any]] = []
    try:
        names = [topic] if topic is not None else store.topics()
        topics = [store.topic(n) for n in names]
        for q in insp.store_queues(root):
            if q in names:
                # Open the queue (without creating a dead-letter topic) so that its topic keeps
                # every message not yet done; checkpoint so that its event log can be trimmed.
                store.queue(q, dead_letter="").checkpoint()
        before = {f"{t.name}/{p}": log.start_offset for t in topics
                  for p, log in enumerate(t.partitions)}
        report = store.enforce_retention()
        for t in topics:
            for p, log in enumerate(t.partitions):
                label = f"{t.name}/{p}"
                r = report.get(label) or {"segments_removed": 0, "bytes_freed": 0,
                                          "start_offset": log.start_offset}
                docs.append({"label": label, "topic": t.name, "partition": p,
                             "start_offset_before": before[label], "report": r})
        for label, r in sorted(report.items()):
            if label.startswith("queue-events/"):
                docs.append({"label": "internal/queues/" + label.split("/", 1)[1],
                             "internal": True, "report": r})
            elif label == "offsets":
                docs.append({"label": "internal/offsets", "internal": True, "compaction": r})
    finally:
        store.close()
    if as_json:
        out.line(_dumps({"path": path, "logs": docs}))
    else:
        out.line(f"retention {path}:")
        for d in docs:
            if "compaction" in d:
                out.line("  " + _compact_line(d["label"] + " compacted", d["compaction"]))
            elif "start_offset_before" in d:
                out.line("  " + _retention_line(d["label"], d["start_offset_before"],
                                                d["report"]))
            else:
                r = d["report"]
                out.line(f"  {d['label']}: trimmed {r['segments_removed']} event segment"
                         f"{'s' if r['segments_removed'] != 1 else ''} below its checkpoint")
        if not limits and not quiet:
            out.line(f"note: {note}")
    out.close()


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("topic")
@click.option("--servers", "-s", required=True, multiple=True, metavar="URL[,URL...]",
              help="NATS server URLs (comma-separated or repeated), e.g. the cluster's nodes.")
@click.option("--stream", required=True, help="JetStream stream name (created if missing).")
@click.option("--subject-prefix", default="logstore", show_default=True,
              help="Messages go to PREFIX.TOPIC.PARTITION.")
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="Replicas of a stream it creates [default: 3 on a cluster of 3+ nodes, else 1].")
@click.option("--until-caught-up", is_flag=True,
              help="Exit once every record present is mirrored (default: run until ^C/SIGTERM).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Publishes awaiting their JetStream ack at once.")
@click.option("--dedup-window", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="duplicate_window (seconds) of a stream it creates.")
@click.option("--status-interval", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds between status lines on stderr.")
@_operator
def mirror(store: str, topic: str, servers: tuple, stream: str, subject_prefix: str,
           replicas: Optional[int], until_caught_up: bool, max_in_flight: int,
           dedup_window: float, status_interval: float) -> None:
    """Mirror TOPIC of the store STORE into a NATS JetStream stream, exactly once and in
    order per partition (needs: pip install 'logstore[nats]')."""
    try:
        from ..mirror.jetstream import run_mirror_cli
    except ImportError as e:
        _error(str(e))
        raise _Exit(EXIT_USAGE)
    code = run_mirror_cli(store, topic, ",".join(servers), stream,
                          subject_prefix=subject_prefix, replicas=replicas,
                          until_caught_up=until_caught_up, max_in_flight=max_in_flight,
                          dedup_window_s=dedup_window, status_interval_s=status_interval,
                          echo=lambda line: click.echo(line, err=True))
    if code:
        raise _Exit(code)
