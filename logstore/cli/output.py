"""How the commands write: the output stream, the progress bar, records and bytes in text and
JSON, aligned tables, times, and how logs and segment files are named to the operator.

Output is UTF-8 bytes whatever the locale (:class:`Out`). Bytes in text lines are JSON strings
when they are UTF-8, else ``0x``-hex; in JSON, UTF-8 text or base64/hex with an ``*_encoding``
marker (see ``logstore replay --help``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

import click

from ..diagnostics.targets import segment_files

PROGRESS_MIN_BYTES = 16 << 20  # show a progress bar only for work at least this big
VALUE_MODES = ("none", "hex", "text", "base64")


# ---------------------------------------------------------------------------------- streams
def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def binary(stream: Any) -> Any:
    """The byte stream under a text stream (sys.stdout/stdin, or click's test runner's)."""
    return getattr(stream, "buffer", stream)


class Out:
    """Output as UTF-8 bytes (never depends on the locale); stdout or a file."""

    def __init__(self, path: Optional[str] = None):
        self._file = open(path, "wb") if path else None
        self.stream = self._file if self._file else binary(sys.stdout)

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


class Indented:
    """``line(text)`` into click.echo with an indent (for printers that write to an ``Out``)."""

    def __init__(self, indent: str):
        self.indent = indent

    def line(self, text: str) -> None:
        click.echo((self.indent + text).rstrip())


class Progress:
    """click's progress bar on stderr, only on a terminal, only for long work, not with --quiet.

    A command whose output goes to the same terminal (``dump`` to a TTY) gets no bar.
    """

    def __init__(self, total: int, label: str, quiet: bool, output_is_stdout: bool = False):
        self.bar = None
        enabled = (not quiet and total >= PROGRESS_MIN_BYTES and isatty(sys.stderr)
                   and not (output_is_stdout and isatty(sys.stdout)))
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

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def total_bytes(target: Any) -> int:
    """Bytes of a target's segment files (the length of its progress bar)."""
    total = 0
    try:
        segs = segment_files(target)
    except OSError:  # a missing log directory of a store: verify reports it
        return 0
    for s in segs:
        try:
            total += os.path.getsize(s.path)
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------- bytes
def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def text_bytes(b: Optional[bytes], mode: str) -> str:
    """Bytes in a text line: ``null``; hex ``0x..``; base64; text = a JSON string (0x.. if not UTF-8)."""
    if b is None:
        return "null"
    if mode == "hex":
        return "0x" + b.hex()
    if mode == "base64":
        return b64(b)
    try:
        return json.dumps(b.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return "0x" + b.hex()


def text_headers(headers: Dict[str, bytes]) -> str:
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + text_bytes(v, "text")
                          for k, v in headers.items()) + "}"


def json_bytes(obj: Dict[str, Any], name: str, b: Optional[bytes], mode: str) -> None:
    """Put ``b`` under ``name``: base64, hex, or UTF-8 text (else base64 + ``<name>_encoding``)."""
    if b is None:
        obj[name] = None
    elif mode == "text":
        try:
            obj[name] = b.decode("utf-8")
        except UnicodeDecodeError:
            obj[name] = b64(b)
            obj[name + "_encoding"] = "base64"
    elif mode == "hex":
        obj[name] = b.hex()
    else:
        obj[name] = b64(b)


def json_headers(obj: Dict[str, Any], headers: Dict[str, bytes], mode: str) -> None:
    if mode == "text":
        try:
            obj["headers"] = {k: v.decode("utf-8") for k, v in headers.items()}
            return
        except UnicodeDecodeError:
            obj["headers"] = {k: b64(v) for k, v in headers.items()}
            obj["headers_encoding"] = "base64"
            return
    obj["headers"] = {k: (v.hex() if mode == "hex" else b64(v)) for k, v in headers.items()}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------------- records
def record_json(rec: Any, mode: str = "base64") -> Dict[str, Any]:
    """The JSON object of ``replay``/``consume``/``tail --json``: one record, bytes encoded."""
    obj: Dict[str, Any] = {"offset": rec.offset, "timestamp_ms": rec.timestamp_ms}
    json_bytes(obj, "key", rec.key, mode)
    json_bytes(obj, "value", rec.value, mode)
    json_headers(obj, rec.headers, mode)
    return obj


def rec_json(target: Any, rec: Any, mode: str) -> Dict[str, Any]:
    """:func:`record_json` led by the fields naming the log of a store it comes from."""
    where_ = where(target)
    obj = record_json(rec, mode)
    return {**where_, **obj} if where_ else obj


def record_line(rec: Any, mode: str) -> str:
    """A record as a text line (``offset=N ts=MS key=K size=BYTES headers={..} [value=V]``)."""
    size = "null" if rec.value is None else str(len(rec.value))
    line = (f"offset={rec.offset} ts={rec.timestamp_ms} key={text_bytes(rec.key, 'text')} "
            f"size={size} headers={text_headers(rec.headers)}")
    if mode != "none":
        line += f" value={text_bytes(rec.value, mode)}"
    return line


def labelled(target: Any, line: str) -> str:
    """Record lines of a store root's logs start with the log's label (``orders/2``)."""
    return f"{target.label} {line}" if target.expanded else line


# ---------------------------------------------------------------------------------- naming
def seg_label(report_or_target: Any, path: str) -> str:
    """How a file of the log is named in messages: under the path the operator typed."""
    t = report_or_target
    if getattr(t, "segment", None) or getattr(t, "segment_only", False):
        if path.endswith(".log"):
            return t.label
        return os.path.join(os.path.dirname(t.label), os.path.basename(path))
    return os.path.join(t.files_label, os.path.basename(path))


def seg_heading(target: Any, path: str) -> str:
    """A segment in headings: ``orders/2 0000...0.log`` for a log of a store root, else the
    file under the path as typed."""
    if target.expanded:
        return f"{target.label} {os.path.basename(path)}"
    return seg_label(target, path)


def where(target: Any) -> Dict[str, Any]:
    """JSON fields naming the log of a store a record or batch comes from."""
    if target.topic is not None:
        return {"topic": target.topic, "partition": target.partition}
    if target.internal:
        return {"log": target.label}
    return {}


# ---------------------------------------------------------------------------------- tables, times
def table(out: Any, rows: List[List[str]], left: Iterable[int] = (0,), indent: str = "") -> None:
    """An aligned table: the first row is the header; columns not in ``left`` align right."""
    left = set(left)
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    for x in rows:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))]
        out.line(indent + "  ".join(cells).rstrip())


def num(v: Any) -> str:
    return "-" if v is None else str(v)


def age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def iso(ms: Optional[int]) -> str:
    if ms is None or ms < 0:
        return "-"
    try:
        t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
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
