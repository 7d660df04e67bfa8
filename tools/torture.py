#!/usr/bin/env python3
"""Crash torture for logstore: SIGKILL a writer process over and over, then check everything.

    python tools/torture.py --rounds 200 --dir /tmp/torture [--seed S] [--quick] [--json]

Each round starts a *writer subprocess* (this same file, ``--writer`` mode) with a random
configuration (compression, fsync policy, tiny ``segment_bytes`` so that segments roll, index
interval, write buffer, 1-3 threads, single appends and batches, tombstones, keys, headers), lets it
run for a random moment and SIGKILLs it (sometimes while it is still opening, i.e. during crash
recovery; sometimes after a clean ``close()``). With probability ``--tear`` the round then also
plays a *power loss* of the active segment's unsynced tail: it cuts, zero-fills or garbles the file
from a random point after the last byte that was acknowledged durable (what FORMAT.md says a crash
may do). Then it reopens the log and checks the invariants:

* every record acknowledged durable (``fsync="always"``, or below a ``durable_offset`` the writer
  observed) is present and byte-identical; without a write buffer and without a tear, every
  acknowledged record at all (a process crash loses nothing written);
* offsets are dense from 0 to ``end_offset``;
* every record is well-formed (self-describing values, so torn or garbage data is recognisable
  even for records that were never acknowledged), also through ``get`` at random offsets and
  through a read-only opener before recovery;
* after the writable reopen every segment scans clean (``Segment.scan``: headers, CRC32C,
  structure), segments are contiguous, and sealed segments' indexes are consistent;
* a log closed cleanly reopens without recovery.

Prints rounds, records acknowledged, records lost (must be 0), corrupt records returned (must be
0), recoveries performed (writable opens whose ``recovery_report.clean`` is False) and torn tails
truncated (those with ``truncated_bytes > 0``). Exit status 1 if any invariant failed.

Workloads are pluggable: a class registered in ``WORKLOADS`` provides

* ``random_config(rng, quick) -> dict`` with at least ``"workload"`` (its name) and ``"options"``
  (``Log.open`` keyword arguments), plus anything its writer needs;
* ``writer(directory, cfg, emit, control)``, run in the subprocess: open, then append forever,
  calling ``emit("A <offset> <digest> <durable 0|1>\n")`` after each acknowledged record,
  ``emit("D <durable_offset>\n")`` when the engine promises more durability, ``emit("O <clean>
  <truncated>\n")`` after its open, ``emit("C\n")`` after a clean close and ``emit("E ...")`` for
  a wrong read-back; ``control("ready")`` once open;
* ``check_records(log, state, problems, label) -> end_offset``: read the reopened log back
  against ``state.acked`` (offset -> (digest, required)), adding to ``state.stats["lost"]`` and
  ``["corrupt"]`` and to ``problems``.

Only ``core`` (the plain log) exists so far; queue views and compaction will add their own (a
compacting workload's check must accept offset gaps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import logstore  # noqa: E402
from logstore.config import SHAPING_SETTINGS  # noqa: E402
from logstore.storage import loader as recovery  # noqa: E402
from logstore.fs import DEFAULT_FS  # noqa: E402
from logstore.storage.index import OffsetIndex, TimeIndex  # noqa: E402
from logstore.storage.segment import Segment  # noqa: E402

ACKS = "acks.txt"  # written by the writer next to (not inside) the log directory


# ------------------------------------------------------------------------------------ records
# A record is self-describing: its value is ``unit * n`` with ``unit = b"<gen>:<tid>:<seq>:"``; its
# key is None or ``unit``; its headers are {} or {"u": unit}. A tombstone (value None) has key
# ``unit``. Anything else returned by the log is garbage.

_UNIT = re.compile(rb"(\d+):(\d+):(\d+):")


def make_record(rng: random.Random, gen: int, tid: int, seq: int, tombstones: bool):
    unit = b"%d:%d:%d:" % (gen, tid, seq)
    if tombstones and rng.random() < 0.03:
        return unit, None, {}
    key = unit if rng.random() < 0.5 else None
    headers = {"u": unit} if rng.random() < 0.3 else {}
    return key, unit * rng.randint(1, 60), headers


def digest(key: Optional[bytes], value: Optional[bytes], headers: Dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for part in (key, value):
        h.update(b"N" if part is None else b"B%d:" % len(part) + part)
    for name in sorted(headers):
        h.update(b"H" + name.encode() + b"=" + headers[name])
    return h.hexdigest()


def well_formed(rec) -> bool:
    """True if ``rec`` is a record some writer really built (see above)."""
    value, key, headers = rec.value, rec.key, rec.headers
    if value is None:
        unit = key
        if key is None or _UNIT.fullmatch(key) is None:
            return False
    else:
        m = _UNIT.match(value)
        if m is None:
            return False
        unit = m.group(0)
        if len(value) % len(unit) or value != unit * (len(value) // len(unit)):
            return False
        if key is not None and key != unit:
            return False
    return headers == {} or headers == {"u": unit}


# ------------------------------------------------------------------------------------ writer


def writer_main(directory: str, ack_path: str, cfg: Dict[str, Any]) -> None:
    """Runs in the subprocess: open, append forever, log acknowledgements to ``ack_path``."""
    workload = WORKLOADS[cfg["workload"]]
    ack_fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out_lock = threading.Lock()

    def emit(text: str) -> None:
        data = text.encode()
        with out_lock:
            os.write(ack_fd, data)

    def control(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    control("opening")
    workload.writer(directory, cfg, emit, control)


def open_writer(directory: str, opts: Dict[str, Any]) -> "logstore.Log":
    """Open the log for writing with this round's options: its stored settings (from an
    earlier round) apply at open, then this round's are made the stored ones with configure()
    (an open that passed different ones would be refused)."""
    shaping = {k: v for k, v in opts.items() if k in SHAPING_SETTINGS}
    log = logstore.Log.open(directory, **{k: v for k, v in opts.items() if k not in shaping})
    try:
        log.configure(**shaping)
    except BaseException:
        log.close()
        raise
    return log


class CoreWorkload:
    """The plain log: appends (single, batch, buffer), flushes, read-backs, clean closes."""

    name = "core"

    @staticmethod
    def random_config(rng: random.Random, quick: bool) -> Dict[str, Any]:
        opts: Dict[str, Any] = {
            "compression": rng.choice(["none", "zstd"]),
            "segment_bytes": rng.randint(1024, 8192),
            "index_interval_bytes": rng.choice([64, 256, 1024, 4096]),
        }
        policy = rng.choice(["always", "always", "every", "never"])
        opts["fsync"] = policy
        if policy == "every":
            kind = rng.choice(["records", "ms", "both"])
            if kind in ("records", "both"):
                opts["fsync_records"] = rng.randint(1, 50)
            if kind in ("ms", "both"):
                opts["fsync_ms"] = rng.randint(1, 50)
        if policy != "always" and rng.random() < 0.25:
            opts["write_buffer_bytes"] = rng.randint(64, 4096)
        if rng.random() < 0.1:
            opts["segment_ms"] = rng.randint(1, 50)
        return {
            "workload": "core",
            "options": opts,
            "threads": rng.randint(1, 3),
            "batch_prob": rng.choice([0.0, 0.3, 0.7, 1.0]),
            "max_batch": rng.choice([5, 20, 60]),
            "buffer_prob": rng.choice([0.0, 0.1]),
            "flush_prob": rng.choice([0.0, 0.02]),
            "read_prob": rng.choice([0.0, 0.05]),
            "tombstones": rng.random() < 0.5,
            # Some rounds close cleanly after a few operations and then wait for the kill.
            "clean_close_after": rng.randint(1, 200) if rng.random() < 0.1 else None,
        }

    @staticmethod
    def writer(directory: str, cfg: Dict[str, Any], emit, control) -> None:
        opts = cfg["options"]
        log = open_writer(directory, opts)
        rep = log.recovery_report
        emit(f"O {int(rep.clean)} {rep.truncated_bytes}\n" if rep else "O 1 0\n")
        always = opts["fsync"] == "always"
        gen = cfg["gen"]
        seed = cfg["seed"]
        state = {"ops": 0, "durable": log.durable_offset}
        state_lock = threading.Lock()
        stop = threading.Event()
        acked: Dict[int, str] = {}

        def note_durable() -> None:
            d = log.durable_offset
            with state_lock:
                if d > state["durable"]:
                    state["durable"] = d
                    emit(f"D {d}\n")

        failed: List[str] = []

        def work(tid: int) -> None:
            try:
                work_loop(tid)
            except BaseException as e:  # reported, never mistaken for a clean close
                failed.append(repr(e))
                emit(f"X thread {tid} raised {e!r:.500}\n")
                stop.set()

        def work_loop(tid: int) -> None:
            rng = random.Random(seed * 1000 + tid)
            seq = 0
            while not stop.is_set():
                r = rng.random()
                if r < cfg["flush_prob"]:
                    log.flush()
                    note_durable()
                    continue
                if r < cfg["flush_prob"] + cfg["read_prob"]:
                    with state_lock:
                        known = list(acked.items())[-50:]
                    if known:
                        off, want = rng.choice(known)
                        rec = log.get(off)
                        if digest(rec.key, rec.value, rec.headers) != want or not well_formed(rec):
                            emit(f"E read-back of offset {off} returned {rec!r:.200}\n")
                    continue
                if rng.random() < cfg["batch_prob"]:
                    n = rng.randint(1, cfg["max_batch"])
                    recs = []
                    for _ in range(n):
                        recs.append(make_record(rng, gen, tid, seq, cfg["tombstones"]))
                        seq += 1
                    if rng.random() < cfg["buffer_prob"]:
                        # append_buffer: values only, same timestamp, no keys or headers.
                        vals = [make_record(rng, gen, tid, seq + i, False)[1] for i in range(n)]
                        seq += n
                        recs = [(None, v, {}) for v in vals]
                        offs = log.append_buffer(b"".join(vals), [len(v) for v in vals])
                    else:
                        keys = [k for k, _, _ in recs]
                        hdrs = [h for _, _, h in recs]
                        offs = log.append_batch([v for _, v, _ in recs],
                                                keys=keys if any(keys) else None,
                                                headers=hdrs if any(hdrs) else None)
                    pairs = list(zip(offs, recs))
                else:
                    key, value, headers = make_record(rng, gen, tid, seq, cfg["tombstones"])
                    seq += 1
                    off = log.append(value, key=key, headers=headers or None)
                    pairs = [(off, (key, value, headers))]
                lines = []
                for off, (k, v, h) in pairs:
                    dg = digest(k, v, h)
                    lines.append(f"A {off} {dg} {int(always)}\n")
                with state_lock:
                    for off, (k, v, h) in pairs:
                        acked[off] = digest(k, v, h)
                    state["ops"] += 1
                    ops = state["ops"]
                emit("".join(lines))
                if not always:
                    note_durable()
                limit = cfg["clean_close_after"]
                if limit is not None and ops >= limit:
                    stop.set()

        threads = [threading.Thread(target=work, args=(t,), daemon=True)
                   for t in range(cfg["threads"])]
        control("ready")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            control("failed")
            while True:
                time.sleep(1)
        emit("S\n")  # closing: from here on everything may be fsynced (no power-loss tear)
        log.close()
        emit("C\n")
        control("closed")
        while True:  # wait for the kill
            time.sleep(1)

    @staticmethod
    def check_records(log, state: "TortureState", problems: List[str], label: str) -> int:
        """Replay everything and random gets; returns end_offset. Adds problems found."""
        end = log.end_offset
        start = log.start_offset
        if start != 0:
            problems.append(f"{label}: start_offset {start} != 0")
        expect = start
        corrupt = 0
        try:
            for rec in log.replay():
                if rec.offset != expect:
                    problems.append(f"{label}: offsets not dense: {rec.offset} after {expect - 1}")
                    expect = rec.offset
                expect += 1
                if not well_formed(rec):
                    corrupt += 1
                    if corrupt <= 3:
                        problems.append(f"{label}: garbage record {rec!r:.200}")
                    continue
                want = state.acked.get(rec.offset)
                if want is not None and digest(rec.key, rec.value, rec.headers) != want[0]:
                    corrupt += 1
                    if corrupt <= 3:
                        problems.append(f"{label}: acknowledged record {rec.offset} changed")
        except logstore.LogstoreError as e:
            problems.append(f"{label}: replay raised {type(e).__name__}: {e}")
        if expect != end:
            problems.append(f"{label}: replay stopped at {expect}, end_offset is {end}")
        rng = random.Random(end)
        for off in (rng.randrange(end) for _ in range(min(end, 50))):
            try:
                rec = log.get(off)
            except logstore.LogstoreError as e:
                problems.append(f"{label}: get({off}) raised {type(e).__name__}: {e}")
                continue
            want = state.acked.get(off)
            if rec.offset != off or not well_formed(rec) or (
                    want is not None and digest(rec.key, rec.value, rec.headers) != want[0]):
                corrupt += 1
                problems.append(f"{label}: get({off}) returned a wrong record {rec!r:.200}")
        state.stats["corrupt"] += corrupt
        lost = sorted(o for o, (_, required) in state.acked.items() if required and o >= end)
        if lost:
            state.stats["lost"] += len(lost)
            problems.append(f"{label}: {len(lost)} acknowledged records lost, e.g. {lost[:5]} "
                            f"(end_offset {end})")
        return end


WORKLOADS: Dict[str, Any] = {"core": CoreWorkload}


# ------------------------------------------------------------------------------------ checks


def verify_directory(directory: str) -> List[str]:
    """Scan every segment of a (closed or recovered) log: a list of problems, [] if clean.

    Every batch header, CRC32C and structure is checked (``Segment.scan``), the first batch of a
    segment must start at its base offset, segments must be contiguous and dense, and a sealed
    segment's indexes must be consistent (they are fsynced before the next segment exists).
    """
    problems: List[str] = []
    bases = recovery.list_segments(directory)
    if not bases:
        return problems
    nexts = bases[1:] + [None]
    for base, nxt in zip(bases, nexts):
        seg = Segment(directory, base, DEFAULT_FS, 4096, writable=False)
        scan = seg.scan(0)
        name = os.path.basename(seg.path)
        if scan.error is not None:
            problems.append(f"{name}: {scan.error}")
            continue
        if scan.valid_end != scan.file_size:
            problems.append(f"{name}: {scan.file_size - scan.valid_end} trailing bytes")
        expect = base
        for b in scan.batches:
            if b.base_offset != expect:
                problems.append(f"{name}: batch at {b.position} starts at offset {b.base_offset},"
                                f" expected {expect}")
            expect = b.next_offset
        if nxt is not None:
            if expect != nxt:
                problems.append(f"{name}: ends at offset {expect} but the next segment starts "
                                f"at {nxt}")
            # Sealed: its indexes were trimmed and fsynced before the next segment was created.
            problems += _check_sealed_indexes(seg, scan, nxt)
    return problems


def inspect_problems(directory: str) -> List[str]:
    """Problems ``logstore.inspect`` (``logstore verify``) reports, if that module exists."""
    try:
        from logstore.diagnostics.report import inspect_log
        from logstore.diagnostics.targets import resolve_targets
        targets = resolve_targets(directory)
    except ImportError:
        return []
    out = []
    for target in targets:
        report = inspect_log(target, verify=True, settle=0)
        out += [f"{p.kind} {os.path.basename(p.file)}@{p.position}: {p.reason}"
                for p in report.problems]
    return out


def _check_sealed_indexes(seg: Segment, scan, nxt: int) -> List[str]:
    name = os.path.basename(seg.path)
    out = []
    oi = OffsetIndex.map_readonly(seg.index_path)
    ti = TimeIndex.map_readonly(seg.timeindex_path)
    if oi is None or ti is None:
        return [f"{name}: sealed segment index file missing or of a wrong size"]
    rel_end = nxt - seg.base_offset
    starts = {b.position: b.base_offset for b in scan.batches}
    if oi.valid_prefix(rel_end, scan.file_size) != oi.n:
        out.append(f"{name}: offset index has implausible entries")
    for rel, pos in oi.pairs():
        if starts.get(pos) != seg.base_offset + rel:
            out.append(f"{name}: offset index entry ({rel}, {pos}) does not name a batch start")
            break
    if ti.n == 0 or ti.valid_prefix(rel_end) != ti.n or ti.last()[1] != rel_end:
        out.append(f"{name}: time index is not sealed properly")
    elif scan.batches and ti.last()[0] != max(b.max_timestamp for b in scan.batches):
        out.append(f"{name}: sealed time index max timestamp is wrong")
    return out


# ------------------------------------------------------------------------------------ driver


@dataclass
class TortureState:
    acked: Dict[int, Tuple[str, bool]] = field(default_factory=dict)  # offset -> (digest, required)
    stats: Dict[str, int] = field(default_factory=lambda: {
        "rounds": 0, "acknowledged": 0, "required": 0, "lost": 0, "corrupt": 0,
        "recoveries": 0, "torn_tails": 0, "truncated_bytes": 0, "tears_injected": 0,
        "clean_closes": 0, "kills_during_open": 0, "writer_errors": 0, "failures": 0,
        "readonly_checks": 0, "writable_checks": 0,
    })
    problems: List[str] = field(default_factory=list)


def _parse_acks(path: str):
    acks: List[Tuple[int, str, bool]] = []
    durable = 0
    opens: List[Tuple[bool, int]] = []
    closed = False
    closing = False
    errors: List[str] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")[:-1]  # a last line without its newline was cut by the kill
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind == "A" and len(parts) == 4 and len(parts[2]) == 40:
            acks.append((int(parts[1]), parts[2], parts[3] == "1"))
        elif kind == "D" and len(parts) == 2:
            durable = max(durable, int(parts[1]))
        elif kind == "O" and len(parts) == 3:
            opens.append((parts[1] == "1", int(parts[2])))
        elif kind == "C":
            closed = True
        elif kind == "S":
            closing = True
        elif kind in ("E", "X"):
            errors.append(line)
    return acks, durable, opens, closed, closing, errors


def _wait_line(proc: subprocess.Popen, want: str, timeout: float) -> Optional[str]:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
        if buf.endswith(b"\n"):
            line = buf.decode().strip()
            buf = b""
            if line == want:
                return line
    return None


def tear_tail(directory: str, required_below: int, rng: random.Random) -> Tuple[str, int]:
    """Play a power loss of the active segment's unsynced tail (FORMAT.md's crash model).

    Everything from the first batch holding offset >= ``required_below`` on may be damaged:
    cut at a random point, zero-filled or filled with garbage from a random point to the end.
    Returns (what was done, bytes affected).
    """
    bases = recovery.list_segments(directory)
    if not bases:
        return "none", 0
    seg = Segment(directory, bases[-1], DEFAULT_FS, 4096, writable=False)
    scan = seg.scan(0)
    start = 0
    for b in scan.batches:
        if b.base_offset < required_below:  # holds a required record: must stay whole
            start = b.position + b.length
    size = scan.file_size
    if start >= size:
        return "none", 0
    cut = rng.randint(start, size)
    mode = rng.choice(["truncate", "zeros", "garbage"])
    with open(seg.path, "r+b") as f:
        if mode == "truncate":
            f.truncate(cut)
        elif mode == "zeros":
            f.seek(cut)
            f.write(bytes(size - cut))
        else:
            f.seek(cut)
            f.write(os.urandom(size - cut))
    return mode, size - cut


def run_round(directory: str, state: TortureState, rng: random.Random, gen: int,
              round_no: int, quick: bool, tear_prob: float, workload_name: str,
              verbose: bool) -> List[str]:
    workload = WORKLOADS[workload_name]
    cfg = workload.random_config(rng, quick)
    cfg["gen"] = gen * 100000 + round_no
    cfg["seed"] = rng.randrange(1 << 30)
    ack_path = directory.rstrip("/") + "." + ACKS
    if os.path.exists(ack_path):
        os.unlink(ack_path)
    problems: List[str] = []
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--writer", directory, ack_path,
         json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if _wait_line(proc, "opening", 60) is None:
            proc.kill()
            _, err = proc.communicate()
            problems.append(f"writer did not start: {err.decode()[-2000:]}")
            return problems
        kill_early = rng.random() < 0.1
        if kill_early:
            time.sleep(rng.uniform(0, 0.03))
            state.stats["kills_during_open"] += 1
        else:
            if _wait_line(proc, "ready", 60) is None:
                proc.kill()
                _, err = proc.communicate()
                problems.append(f"writer failed to open the log: {err.decode()[-3000:]}")
                return problems
            hi = 0.25 if quick else 0.6
            time.sleep(rng.uniform(0.0, hi))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    if proc.returncode != -signal.SIGKILL:
        problems.append(f"writer exited with {proc.returncode} before the kill: "
                        f"{err.decode()[-3000:]}")
        state.stats["writer_errors"] += 1
    acks, durable, opens, closed, closing, errors = _parse_acks(ack_path)
    problems += [f"writer: {e}" for e in errors]
    state.stats["corrupt"] += sum(1 for e in errors if e.startswith("E"))
    state.stats["writer_errors"] += sum(1 for e in errors if e.startswith("X"))
    for clean, truncated in opens:
        if not clean:
            state.stats["recoveries"] += 1
        if truncated:
            state.stats["torn_tails"] += 1
            state.stats["truncated_bytes"] += truncated
    if closed:
        state.stats["clean_closes"] += 1
    opts = cfg["options"]
    buffered = bool(opts.get("write_buffer_bytes"))
    # Power loss of the unsynced tail. Not once close() has started (it fsyncs everything; the
    # kill may come between its return and the "C" line), nor while a clean-shutdown marker is
    # on disk (a writer killed while opening, before removing it): the marker vouches for the
    # active segment's bytes, which were fsynced; tearing them would be media damage, not a
    # power loss.
    marker = os.path.exists(os.path.join(directory, "clean-shutdown"))
    tear = not (closed or closing or marker) and rng.random() < tear_prob
    # Everything already required (earlier rounds) stays: the tear models losing only what this
    # writer left unsynced.
    durable_below = max((o + 1 for o, (_, req) in state.acked.items() if req), default=0)
    durable_below = max(durable_below, durable)
    for off, dg, is_durable in acks:
        if is_durable:
            durable_below = max(durable_below, off + 1)
    for off, dg, is_durable in acks:
        required = is_durable or off < durable or (not buffered and not tear)
        state.acked[off] = (dg, required)
        state.stats["acknowledged"] += 1
        state.stats["required"] += int(required)
    if tear:
        # Offsets below durable_below are fsynced: they must stay. A writer that was killed after
        # acknowledging offset N may also have fsynced offsets above N (group commit) that it
        # never acknowledged: those may go.
        mode, nbytes = tear_tail(directory, durable_below, rng)
        if nbytes:
            state.stats["tears_injected"] += 1
        if verbose:
            print(f"  tear: {mode} {nbytes} bytes")

    # Keep the crashed state (before any recovery) in case this round fails.
    before = directory.rstrip("/") + ".before-recovery"
    shutil.rmtree(before, ignore_errors=True)
    if os.path.isdir(directory):
        shutil.copytree(directory, before)
    # Read-only look first: it must see only whole, valid records, without changing anything.
    try:
        ro = logstore.Log.open(directory, readonly=True)
        try:
            workload.check_records(ro, state, problems, "read-only open")
        finally:
            ro.close()
        state.stats["readonly_checks"] += 1
    except logstore.NotALogError:
        if acks:
            problems.append("read-only open: not a log, although records were acknowledged")
    except logstore.LogstoreError as e:
        problems.append(f"read-only open raised {type(e).__name__}: {e}")

    writable = rng.random() < 0.6
    end = None
    if writable:
        try:
            log = open_writer(directory, cfg["options"])
        except logstore.LogstoreError as e:
            problems.append(f"reopen raised {type(e).__name__}: {e}")
            return problems
        try:
            rep = log.recovery_report
            if rep is not None and not rep.clean:
                state.stats["recoveries"] += 1
            if rep is not None and rep.truncated_bytes:
                state.stats["torn_tails"] += 1
                state.stats["truncated_bytes"] += rep.truncated_bytes
            if closed and rep is not None and not rep.clean:
                problems.append("the writer closed the log cleanly but reopening ran recovery")
            end = workload.check_records(log, state, problems, "writable reopen")
        finally:
            log.close()
        state.stats["writable_checks"] += 1
        for p in verify_directory(directory):
            problems.append(f"verify: {p}")
        for p in inspect_problems(directory):
            problems.append(f"logstore.inspect: {p}")
    # Acknowledged records that were allowed to go (buffered, torn) are forgotten: their offsets
    # will be reused by the next writer.
    if end is None:
        try:
            with logstore.Log.open(directory, readonly=True) as ro:
                end = ro.end_offset
        except logstore.LogstoreError:
            end = 0
    for off in [o for o in state.acked if o >= end]:
        del state.acked[off]
    return problems


def torture(rounds: int, directory: str, seed: int, quick: bool, tear_prob: float = 0.3,
            rounds_per_log: int = 20, workload: str = "core", verbose: bool = False,
            out=sys.stdout) -> TortureState:
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    state = TortureState()
    gen = 0
    log_dir = None
    started = time.monotonic()
    for r in range(rounds):
        if log_dir is None or r % rounds_per_log == 0:
            # A fresh log every few rounds keeps verification time bounded.
            if log_dir is not None:
                final_check(log_dir, state, workload)
            gen += 1
            log_dir = os.path.join(directory, f"log-{gen:04d}")
            if os.path.exists(log_dir):
                shutil.rmtree(log_dir)
            state.acked.clear()
        before = dict(state.stats)
        problems = run_round(log_dir, state, rng, gen, r, quick, tear_prob, workload, verbose)
        state.stats["rounds"] += 1
        if problems:
            state.stats["failures"] += 1
            keep = os.path.join(directory, f"failure-round-{r}")
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(log_dir, keep)  # after the checks
            if os.path.isdir(log_dir + ".before-recovery"):  # as the crash left it
                shutil.copytree(log_dir + ".before-recovery", keep + "-before-recovery")
            state.problems += [f"round {r}: {p}" for p in problems]
            for p in problems[:20]:
                print(f"round {r}: FAIL {p}", file=out)
        if verbose:
            new = state.stats["acknowledged"] - before["acknowledged"]
            print(f"round {r}: +{new} acknowledged, {len(problems)} problems "
                  f"({time.monotonic() - started:.1f}s)", file=out)
    if log_dir is not None:
        final_check(log_dir, state, workload)
    return state


def final_check(log_dir: str, state: TortureState, workload: str = "core") -> None:
    problems: List[str] = []
    checker = WORKLOADS[workload]
    try:
        with logstore.Log.open(log_dir) as log:
            rep = log.recovery_report
            if rep is not None and not rep.clean:
                state.stats["recoveries"] += 1
            if rep is not None and rep.truncated_bytes:
                state.stats["torn_tails"] += 1
                state.stats["truncated_bytes"] += rep.truncated_bytes
            checker.check_records(log, state, problems, "final reopen")
        problems += [f"verify: {p}" for p in verify_directory(log_dir)]
        problems += [f"logstore.inspect: {p}" for p in inspect_problems(log_dir)]
        with logstore.Log.open(log_dir) as log:
            if not log.recovery_report.clean:
                problems.append("final: a clean close was followed by a recovery")
    except logstore.LogstoreError as e:
        problems.append(f"final reopen raised {type(e).__name__}: {e}")
    if problems:
        state.stats["failures"] += 1
        state.problems += [f"{os.path.basename(log_dir)} final: {p}" for p in problems]


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--writer":
        writer_main(argv[1], argv[2], json.loads(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--dir", required=True, help="working directory (created; logs go inside)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="shorter writer runs")
    ap.add_argument("--tear", type=float, default=0.3,
                    help="probability of also tearing the unsynced tail (power loss) per round")
    ap.add_argument("--rounds-per-log", type=int, default=None,
                    help="start a fresh log every N rounds (default 20, 8 with --quick)")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="core")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    t0 = time.monotonic()
    per_log = args.rounds_per_log or (8 if args.quick else 20)
    state = torture(args.rounds, args.dir, seed, args.quick, args.tear, per_log,
                    args.workload, args.verbose)
    s = state.stats
    elapsed = time.monotonic() - t0
    ok = s["failures"] == 0 and s["lost"] == 0 and s["corrupt"] == 0
    if args.json:
        print(json.dumps({**s, "seed": seed, "seconds": round(elapsed, 1), "ok": ok,
                          "problems": state.problems[:50]}))
    else:
        print(f"seed                      {seed}")
        print(f"rounds                    {s['rounds']}")
        print(f"records acknowledged      {s['acknowledged']} "
              f"({s['required']} required to survive)")
        print(f"records lost              {s['lost']}")
        print(f"corrupt records returned  {s['corrupt']}")
        print(f"recoveries performed      {s['recoveries']}")
        print(f"torn tails truncated      {s['torn_tails']} ({s['truncated_bytes']} bytes; "
              f"{s['tears_injected']} power-loss tears injected)")
        print(f"kills during open         {s['kills_during_open']}")
        print(f"clean closes              {s['clean_closes']}")
        print(f"invariant failures        {s['failures']}")
        print(f"time                      {elapsed:.1f}s")
        for p in state.problems[:50]:
            print(f"  {p}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
