"""Helpers of the many-process tests (issue 19): expected record values, child processes of
``tests/shared_child.py``, their record files, and the checks every test repeats.

A child writes what it did as JSON lines into its own record file, one ``os.write`` per line on
an ``O_APPEND`` descriptor: a line is in the file whole once the call that wrote it returned,
whatever happens to the process next (SIGKILL); a torn last line cannot happen, and is ignored
if it ever does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import logstore

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "shared_child.py")


# ----------------------------------------------------------------------------- record values
def value_of(wid: int, i: int) -> bytes:
    """The value writer ``wid`` appends as its ``i``-th record (its length varies with both)."""
    return (b"w%d-%d|" % (wid, i)) * (1 + (wid * 7 + i) % 5)


def key_of(i: int, keys: int) -> Optional[bytes]:
    """The key of record ``i`` (the same keys from every writer: compaction keeps the latest)."""
    return None if not keys else b"k%d" % (i % keys)


def parse_value(value: Optional[bytes]) -> Tuple[int, int]:
    """(wid, i) of a value made by :func:`value_of`; AssertionError for anything else (a torn
    or foreign record)."""
    assert value is not None, "a record without a value"
    head = value.split(b"|", 1)[0]
    assert head.startswith(b"w"), f"not a test value: {value[:60]!r}"
    wid, i = (int(x) for x in head[1:].split(b"-"))
    assert value == value_of(wid, i), f"garbled value for ({wid}, {i}): {value[:80]!r}"
    return wid, i


def check_dense_and_valid(records: Sequence[logstore.Record], start: int = 0
                          ) -> Dict[Tuple[int, int], int]:
    """Every record's offset follows the previous one from ``start`` on, every value is a whole
    test value, none twice. Returns ``{(wid, i): offset}``."""
    seen: Dict[Tuple[int, int], int] = {}
    for n, rec in enumerate(records):
        assert rec.offset == start + n, f"offset {rec.offset} where {start + n} was expected"
        wi = parse_value(rec.value)
        assert wi not in seen, f"record {wi} at offsets {seen[wi]} and {rec.offset}"
        seen[wi] = rec.offset
    return seen


def read_all(log: logstore.Log, start: Optional[int] = None) -> List[logstore.Record]:
    """Every record of ``log`` from ``start`` (default its start offset) to its end now."""
    out: List[logstore.Record] = []
    pos = log.start_offset if start is None else start
    end = log.end_offset
    while pos < end:
        recs = log.read(pos, 5000)
        assert recs, f"read({pos}) returned nothing below end_offset {end}"
        out.extend(recs)
        pos = recs[-1].offset + 1
    return out


# ----------------------------------------------------------------------------- child processes
def spawn(mode: str, cfg: Dict[str, Any], **kw: Any) -> subprocess.Popen:
    """Start ``shared_child.py MODE CONFIG`` (stderr kept for the failure message)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, CHILD, mode, json.dumps(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Wait for ``proc``; its return code (AssertionError with its stderr if it failed)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        _, err = proc.communicate()
        raise AssertionError(f"child {proc.args[2]} still running after {timeout} s: {err}")
    assert proc.returncode == 0, f"child {proc.args[2]} exited {proc.returncode}: {err}"
    return proc.returncode


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (if still running) and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def records_of(path: str) -> List[Dict[str, Any]]:
    """The JSON lines of a child's record file (a torn or garbled last line is ignored)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # (the part after the last newline is not a line)
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_for(pred: Callable[[], Any], timeout: float, what: str,
             procs: Iterable[subprocess.Popen] = ()) -> Any:
    """Poll ``pred`` until it returns something true; AssertionError after ``timeout`` s (or
    at once when one of ``procs`` exited with an error)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        for p in procs:
            if p.poll() not in (None, 0, -signal.SIGKILL):
                raise AssertionError(f"child {p.args[2]} failed ({p.returncode}) while "
                                     f"waiting for {what}: {p.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def touch(path: str) -> None:
    with open(path, "w"):
        pass


def verify(path: str, *extra: str) -> str:
    """Run ``logstore verify PATH`` in a fresh interpreter; AssertionError unless it exits 0."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "logstore.cli", "verify", "-q", path, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"logstore verify {path} exited {proc.returncode}:\n"
                                  f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def snapshot(directory: str) -> Dict[str, bytes]:
    """Every regular file under ``directory`` and its bytes (to show nothing changed), but the
    lock files (dot files: a refused open may create an empty one)."""
    out = {}
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


# ----------------------------------------------------------------------------- work queues
Event = Tuple[int, str, int, int, int, int]  # (record time ms, kind, partition, offset, count, t)


def queue_events(root: str, name: str) -> List[Event]:
    """Every event of work queue ``name``'s event log, in log order (checkpoints left out):
    ``(time the record was appended, kind "G"/"X"/"A"/"N"/"D", partition, offset, count, t)``
    where ``t`` is the lease deadline (G, X) or the not-before time (N), in ms."""
    from logstore.format.names import queue_events_dir
    from logstore.format.queue_events import decode_event, is_checkpoint
    log = logstore.Log.open(queue_events_dir(root, name), readonly=True)
    try:
        out = []
        for rec in log.replay(log.start_offset):
            if rec.value is None or is_checkpoint(rec.value):
                continue
            kind, p, off, count, t = decode_event(rec.value)
            out.append((rec.timestamp_ms, kind.decode(), p, off, count, t))
        return out
    finally:
        log.close()


def check_lease_history(events: Sequence[Event], margin_ms: int = 100
                        ) -> Dict[Tuple[int, int], Dict[str, Any]]:
    """Replay a queue's events and check that no message was ever held by two getters at once:

    * deliveries of a message are counted 1, 2, 3... (each delivery is one getter's);
    * a new delivery comes only after the previous one ended: acked/dead-lettered (then never
      again), nacked (and not before its not-before time), or its lease deadline (as extended)
      passed when the new delivery was recorded;
    * an ack is of the current delivery, recorded before its lease deadline;
    * a message is done (acked or dead-lettered) at most once.

    Times are compared with ``margin_ms`` of slack (each event is stamped by the process that
    appended it, a little after it decided). Returns per message ``{"deliveries", "acked",
    "dead", "count"}``."""
    state: Dict[Tuple[int, int], Dict[str, Any]] = {}
    for ts, kind, p, off, count, t in events:
        s = state.setdefault((p, off), {"deliveries": 0, "acked": None, "dead": None,
                                        "lease": None, "not_before": 0, "count": 0})
        msg = f"message {p}:{off} {kind} count={count} at {ts}"
        if kind == "G":
            assert s["acked"] is None and s["dead"] is None, f"{msg}: delivered after done"
            assert count == s["count"] + 1, f"{msg}: after delivery {s['count']}"
            if s["lease"] is not None:  # the previous getter's lease must have run out
                assert ts >= s["lease"][1] - margin_ms, (
                    f"{msg}: delivery {s['lease'][0]} leased until {s['lease'][1]}")
            assert ts >= s["not_before"] - margin_ms, f"{msg}: nacked until {s['not_before']}"
            s["lease"] = (count, t)
            s["count"] = count
            s["deliveries"] += 1
        elif kind == "X":
            if s["lease"] is not None and s["lease"][0] == count:
                assert ts <= s["lease"][1] + margin_ms, f"{msg}: extended an expired lease"
                s["lease"] = (count, t)
        elif kind == "N":
            assert s["lease"] is not None and s["lease"][0] == count, f"{msg}: not its delivery"
            assert ts <= s["lease"][1] + margin_ms, f"{msg}: nack after the lease deadline"
            s["lease"] = None
            s["not_before"] = t
        elif kind == "A":
            assert s["acked"] is None and s["dead"] is None, f"{msg}: done twice"
            assert s["lease"] is not None and s["lease"][0] == count, (
                f"{msg}: acked, but the current delivery is {s['lease']}")
            assert ts <= s["lease"][1] + margin_ms, f"{msg}: ack after the lease deadline"
            s["acked"] = count
            s["lease"] = None
        elif kind == "D":
            assert s["acked"] is None and s["dead"] is None, f"{msg}: done twice"
            s["dead"] = count
            s["lease"] = None
        else:  # pragma: no cover
            raise AssertionError(f"unknown event {kind}")
    return state
