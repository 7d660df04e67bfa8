"""The ``logstore`` command line (click).

Commands: ``demo`` (the README's main job) and the operator tools ``dump``, ``verify``,
``stats``, ``tail``, ``replay``, ``produce``, ``consume`` and ``recover``. The read-only
inspection logic lives in :mod:`logstore.inspect`; reading records goes through the public
:class:`~logstore.log.Log` API (``readonly=True``), writing through a normal writer open.

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
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import click

from . import __version__
from . import inspect as insp
from .errors import (
    CorruptLogError,
    LogLockedError,
    LogstoreError,
    NotALogError,
    OffsetOutOfRangeError,
)
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


@click.group(epilog="Exit status: 0 ok; 1 corrupt data found; 2 usage error (bad option, "
                    "missing path, not a log); 3 locked by a writer; 4 other error "
                    "(I/O, unsupported format); 130 interrupted.")
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
    if isinstance(exc, (NotALogError, OffsetOutOfRangeError)):
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
    for s in insp.segment_files(target):
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


def _seg_label(report_or_target: Any, path: str) -> str:
    """How a file of the log is named in messages: under the path the operator typed."""
    t = report_or_target
    if getattr(t, "segment", None) or getattr(t, "segment_only", False):
        if path.endswith(".log"):
            return t.label
        return os.path.join(os.path.dirname(t.label), os.path.basename(path))
    return os.path.join(t.label, os.path.basename(path))


def _open_reader(path: str) -> Log:
    insp.require_log_dir(path, "this command")
    return Log.open(path, readonly=True)


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
@_quiet_option
@_operator
def dump(path: str, from_offset: Optional[int], max_items: Optional[int], values: str,
         as_json: bool, batches: bool, show_index: bool, continue_on_error: bool,
         quiet: bool) -> None:
    """Print the records (or batches, or index entries) stored in PATH.

    PATH is a log directory or one .log segment file. Read-only; works while a writer runs.

    \b
    Record line: offset=N ts=MS key=K size=BYTES headers={..} batch=POS codec=C crc=ok [value=V]
    Batch line:  batch=POS offsets=A..B records=N base_ts=MS max_ts=MS length=L payload=P
                 raw=R codec=C crc=ok|BAD
    Keys and header values print as JSON strings, or 0x-hex when not UTF-8; null = none
    (size=null: a tombstone). --json prints the same fields as JSON objects (key/headers as
    text, falling back to base64 with a "key_encoding"/"headers_encoding" marker).

    Exit 1 if corrupt data is met: its file and byte position are printed on stderr, and
    whether `logstore recover` would repair it (a torn tail of the active segment).
    """
    targets = insp.resolve_targets(path)
    out = _Out()
    if show_index:
        _dump_index(targets, out, as_json)
        return
    bad = False
    count = 0
    for target in targets:
        with _Progress(_total_bytes(target), "dump", quiet, output_is_stdout=True) as progress:
            for ev in insp.scan(target, decode=True, continue_on_error=continue_on_error,
                                from_offset=from_offset, progress=progress):
                if isinstance(ev, insp.SegmentStart):
                    if not as_json:
                        kind = "active" if ev.seg.active else "sealed"
                        if ev.seg.base_offset is None:
                            kind = "segment"
                        out.line(f"# {_seg_label(target, ev.seg.path)} ({kind}, {ev.size} bytes)")
                elif isinstance(ev, insp.BatchEvent):
                    if batches:
                        _batch_line(out, ev.seg, ev.pos, ev.header, "ok", as_json)
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
                                obj: Dict[str, Any] = {"segment": ev.seg.name,
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
                        return
                elif isinstance(ev, insp.ErrorEvent):
                    bad = True
                    if batches and ev.header is not None and ev.error.reason == "CRC32C mismatch":
                        _batch_line(out, ev.seg, ev.pos, ev.header, "BAD", as_json)
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


def _batch_line(out: _Out, seg: Any, pos: int, h: Any, crc: str, as_json: bool) -> None:
    if as_json:
        out.line(_dumps({
            "segment": seg.name, "position": pos, "base_offset": h.base_offset,
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
            label = _seg_label(target, seg.path)
            if not as_json:
                out.line(f"# {label} ({'active' if seg.active else 'sealed'})")
            for e in entries:
                bad |= not e.ok
                if as_json:
                    obj: Dict[str, Any] = {"segment": seg.name, "index": e.kind,
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
                    out.line(_dumps({"segment": seg.name, "index": "file", "status": why}))
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
@_quiet_option
@_operator
def verify(path: str, as_json: bool, quiet: bool) -> None:
    """Check PATH (a log directory or a .log segment file) without changing anything.

    Checks every batch (header, bounds, CRC32C, structure), offset continuity within and
    across segments, the offset and time indexes against the log, the clean-shutdown marker,
    and leftover *.tmp / *.cleaned / *.swap files (reported as warnings). Never takes the
    writer's lock and opens files read-only, so it can run while a writer appends.

    Each problem names the segment file and byte position and says whether `logstore recover
    --apply` repairs it (a torn tail of the active segment, indexes, a wrong marker) or whether
    data is damaged (sealed segments, damage followed by valid batches, missing offsets).

    Exit 0: no problem (warnings allowed); 1: problems found; 2: usage error.
    """
    targets = insp.resolve_targets(path)
    reports = [_inspect_with_progress(t, True, quiet) for t in targets]
    out = _Out()
    if as_json:
        out.line(_dumps({"path": path, "ok": all(r.ok for r in reports),
                         "logs": [r.as_dict() for r in reports]}))
    else:
        for r in reports:
            _print_verify(out, r, quiet)
    out.close()
    if not all(r.ok for r in reports):
        raise _Exit(EXIT_CORRUPT)


def _inspect_with_progress(target: Any, verify: bool, quiet: bool):
    with _Progress(_total_bytes(target), "verify" if verify else "stats", quiet) as progress:
        return insp.inspect_log(target, verify=verify, progress=progress)


def _print_verify(out: _Out, r: Any, quiet: bool) -> None:
    t = r.totals()
    if not quiet:
        rng = (f"offsets [{t['start_offset']}, {t['end_offset']})"
               if t["start_offset"] is not None else "no offsets")
        out.line(f"{r.label}: {t['segments']} segment{'s' if t['segments'] != 1 else ''}, "
                 f"{rng}, {t['records']} records in {t['batches']} batches, {t['bytes']} bytes")
        for s in r.segments:
            rng = (f"{s.first_offset}..{s.next_offset - 1}" if s.next_offset is not None
                   else "empty")
            kind = "active" if s.active else "sealed"
            out.line(f"  {s.name}  {kind}  offsets {rng}  {s.records} records  "
                     f"{s.batches} batches  {s.size} bytes  {s.status}")
    for p in r.problems:
        where = _seg_label(r, p.file)
        at = f" at byte {p.position}" if p.position is not None else ""
        out.line(f"PROBLEM [{p.kind}] {where}{at}: {p.reason}")
        out.line(f"  -> {p.repair}")
    if not quiet:
        for w in r.warnings:
            out.line(f"WARNING {w}")
    if r.ok:
        if not quiet:
            out.line("OK: no problems found")
        return
    repairable = sum(1 for p in r.problems if p.recoverable)
    damaged = len(r.problems) - repairable
    out.line(f"CORRUPT: {len(r.problems)} problem{'s' if len(r.problems) != 1 else ''} "
             f"({repairable} repairable by `logstore recover --apply`, {damaged} data damage)")


# ------------------------------------------------------------------------------------ stats
@main.command()
@_path_arg
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_quiet_option
@_operator
def stats(path: str, as_json: bool, quiet: bool) -> None:
    """Segments, offsets, sizes, record and batch counts, compression, time range of PATH.

    Reads only the 64-byte batch headers (fast; CRCs are not checked: use `logstore verify`).
    The compression ratio is raw_length / payload_length summed over the batch headers.
    Timestamps: the first record's and the largest, in UTC. Exit 1 if a header is unreadable.
    """
    targets = insp.resolve_targets(path)
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


# ------------------------------------------------------------------------------------ tail
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
@_quiet_option
@_operator
def tail(path: str, n: int, follow: bool, values: str, as_json: bool, interval: float,
         quiet: bool) -> None:
    """Print the last N records of the log in PATH; with --follow, keep printing new ones.

    Line format: offset=N ts=MS key=K size=BYTES headers={..} value=V (see `dump`).
    Ctrl-C ends --follow with exit status 0.
    """
    log = _open_reader(path)
    out = _Out()
    mode = "base64" if values == "none" and as_json else values

    def emit(recs: Iterable[Any]) -> None:
        for rec in recs:
            out.line(_dumps(record_json(rec, mode)) if as_json else _record_line(rec, values))

    try:
        end = log.end_offset
        nxt = max(log.start_offset, end - n)
        while nxt < end:
            recs = log.read(nxt, max_records=min(1000, end - nxt))
            if not recs:
                break
            emit(recs)
            nxt = recs[-1].offset + 1
        out.flush()
        while follow:
            recs = log.read(nxt, max_records=1000)
            if recs:
                emit(recs)
                out.flush()
                nxt = recs[-1].offset + 1
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow ends: exit 0, quietly
    finally:
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
@_quiet_option
@_operator
def replay(path: str, from_offset: Optional[int], to_offset: Optional[int],
           from_time: Optional[str], fmt: str, values: str, newline: bool,
           output: Optional[str], quiet: bool) -> None:
    """Write the records of the log in PATH in offset order, from an offset or a time.

    \b
    jsonl (default): one JSON object per record:
      {"offset": N, "timestamp_ms": MS, "key": K, "value": V, "headers": {NAME: V}}
      Keys, values and header values are base64; with --values text they are UTF-8 strings,
      and a field that is not valid UTF-8 is written in base64 with a marker field:
      "key_encoding": "base64", "value_encoding": "base64" or "headers_encoding": "base64"
      (then all header values of that record are base64). Null key/tombstone: null.
    raw: the value bytes only, back to back with nothing in between (a tombstone writes
      nothing); with --newline a "\\n" follows every record's value.
    """
    if from_time is not None:
        ts = _parse_time(from_time)
    log = _open_reader(path)
    out = _Out(output)
    try:
        start = log.start_offset if from_offset is None else from_offset
        if from_time is not None:
            start = max(start, log.offset_for_time(ts))
        if to_offset is not None and to_offset < start:
            to_offset = start
        for rec in log.replay(start, to_offset):
            if fmt == "raw":
                if rec.value is not None:
                    out.raw(rec.value)
                if newline:
                    out.raw(b"\n")
            else:
                out.line(_dumps(record_json(rec, values)))
        out.close()
    finally:
        log.close()


# ------------------------------------------------------------------------------------ consume
@main.command()
@_path_arg
@click.option("--from-offset", type=click.IntRange(min=0), default=None,
              help="First offset (default: the log's start).")
@click.option("--max", "max_records", type=click.IntRange(min=1), default=None,
              help="At most N records.")
@click.option("--values", type=click.Choice(["base64", "text"]), default="base64",
              show_default=True)
@_quiet_option
@_operator
def consume(path: str, from_offset: Optional[int], max_records: Optional[int], values: str,
            quiet: bool) -> None:
    """Print records of the log in PATH as JSON lines (the `replay` format), then exit.

    Reads from --from-offset up to the end of the log as it is when the command starts.
    """
    log = _open_reader(path)
    out = _Out()
    try:
        end = log.end_offset
        nxt = log.start_offset if from_offset is None else from_offset
        if nxt > end:
            raise OffsetOutOfRangeError(
                f"offset {nxt} is past the end of the log (end_offset {end})")
        left = max_records
        while nxt < end and (left is None or left > 0):
            want = min(1000, end - nxt) if left is None else min(1000, end - nxt, left)
            recs = log.read(nxt, max_records=want)
            if not recs:
                break
            for rec in recs:
                out.line(_dumps(record_json(rec, values)))
            nxt = recs[-1].offset + 1
            if left is not None:
                left -= len(recs)
        out.close()
    finally:
        log.close()


# ------------------------------------------------------------------------------------ produce
def _option_value(text: str) -> Any:
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower() in ("none", "null"):
        return None
    return text


@main.command()
@_path_arg
@click.option("--file", "src", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read lines from FILE instead of stdin.")
@click.option("--key", default=None, help="Key (UTF-8) of every record (default: no key).")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Records per appended batch (written at every N lines and at end of input).")
@click.option("--create", is_flag=True, help="Create the log if PATH does not exist yet.")
@click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
              help="A Log.open option, e.g. -o fsync=never -o compression=zstd (repeatable).")
@_quiet_option
@_operator
def produce(path: str, src: Optional[str], key: Optional[str], batch_size: int, create: bool,
            options: tuple, quiet: bool) -> None:
    """Append one record per input line to the log in PATH (the line without its \\n).

    Takes the writer's lock: fails with exit status 3 if another writer has the log open.
    Prints a summary on stderr (not with --quiet).
    """
    opts: Dict[str, Any] = {}
    for item in options:
        name, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
        opts[name.strip()] = _option_value(value.strip())
    if not (create and not os.path.exists(path)):
        insp.require_log_dir(path, "produce")
    kb = None if key is None else key.encode("utf-8")
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


# ------------------------------------------------------------------------------------ recover
@main.command()
@_path_arg
@click.option("--apply", "do_apply", is_flag=True,
              help="Do it (default: a dry run that changes nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_quiet_option
@_operator
def recover(path: str, do_apply: bool, as_json: bool, quiet: bool) -> None:
    """Run crash recovery of the log in PATH explicitly; report what it would change.

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


def _print_plan(out: _Out, plan: Dict[str, Any], verb: str) -> None:
    a = plan["active"]
    if a is not None:
        out.line(f"active segment {a['segment']}: {a['file_bytes']} bytes, {a['batches']} valid "
                 f"batches up to byte {a['valid_bytes']}"
                 + (" (clean-shutdown marker matches: a writer would not scan it)"
                    if a["clean_marker"] else ""))
        if a["problem"]:
            out.line(f"  first invalid batch at byte {a['problem_position']}: {a['problem']}")
    for act in plan["actions"]:
        out.line(f"{verb}: {act['text']}")
    for note in plan["notes"]:
        out.line(f"note: {note}")
    for bad in plan["unrepairable"]:
        out.line(f"cannot repair: {bad}")
    if not plan["actions"] and not plan["unrepairable"]:
        out.line("nothing to recover")


def _active_segment(target: Any):
    """A read-only Segment object for the last segment (for logstore.recovery), or None."""
    from . import recovery
    from .config import LogConfig
    from .fs import DEFAULT_FS
    from .segment import Segment

    bases = recovery.list_segments(target.log_dir)
    if not bases:
        return None
    return Segment(target.log_dir, bases[-1], DEFAULT_FS, LogConfig().index_interval_bytes,
                   writable=False)


def _recovery_plan(target: Any, report: Any) -> Dict[str, Any]:
    """What recovery would do, from the verify report and recovery.inspect_active."""
    from . import meta, recovery

    actions: List[Dict[str, Any]] = []
    unrepairable: List[str] = []
    notes: List[str] = []
    active_info = None
    seg = _active_segment(target)
    marker = meta.read_clean_shutdown(target.log_dir)
    if seg is not None:
        _, rr = recovery.inspect_active(seg)
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
                                    f"({meta.CLEAN_SHUTDOWN_NAME}) so that the active segment "
                                    f"is scanned"})
        if rr.problem and rr.data_after_problem and insp.zero_hole_in_file(
                seg.path, rr.problem_position or 0, rr.file_bytes):
            actions.append({"action": "truncate", "segment": name, "position": rr.valid_bytes,
                            "drop_bytes": rr.truncated_bytes,
                            "text": f"truncate {name} at byte {rr.valid_bytes} "
                                    f"({rr.truncated_bytes} bytes): a zero-filled sector after "
                                    f"the damage marks data never synced before a power "
                                    f"failure, so recovery treats it as a torn tail"})
        elif rr.problem and rr.data_after_problem:
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
    from . import meta, recovery
    from .config import LogConfig
    from .fs import DEFAULT_FS
    from .lockfile import DirectoryLock
    from .segment import Segment

    d = target.log_dir
    cfg = LogConfig()
    interval = cfg.index_interval_bytes
    capacity = min(1 << 22, cfg.segment_bytes // interval + 2)  # as Log computes it
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
                    seg._ensure_size()
                    seg.rebuild_indexes(seg.scan(0, strict=True), None)
                finally:
                    seg.close()
        if "force_truncate" in kinds:
            # Log._recover refuses this case (CorruptLogError); do what it does, forcing the cut.
            meta.remove_clean_shutdown(d, DEFAULT_FS)
            bases = recovery.list_segments(d)
            seg = Segment(d, bases[-1], DEFAULT_FS, interval, writable=True)
            try:
                forced = recovery.recover_active(seg, capacity, force_truncate=True)
            finally:
                seg.close()
                seg._offset_index = seg._time_index = None  # unmap before Log.open rewrites them
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


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="logstore")
