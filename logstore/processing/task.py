"""A task: one stage of a processor over one input partition, and its transactions.

Exactly-once without a distributed transaction (see ``segments/FORMAT.md``, "Processing: output
and changelog records"). A transaction covers the input offsets ``[from, to)`` read since the
previous commit. At commit the task

1. appends its buffered outputs, one batch per output partition (several if one would pass
   half of ``max_record_bytes``), the last record of each carrying the header
   ``x-processor-txn: <processor>:<stage>:<partition>:<from>:<to>:<part>:<parts>``;
2. appends to its changelog, in one batch, the state entries changed since the previous commit
   and then a commit record: ``to`` (the next input offset), the end offset of every output
   partition (*marks*), stream times, counters. This record is the commit point.

A restarted task (after a crash, or on another member after a rebalance) replays its changelog
up to the last commit record and reads every output partition from its mark: a batch whose
marker names this task and ``from == committed position`` belongs to the transaction that was
running when the task stopped. Its ``to`` says exactly which input range to process again, and
the task re-runs ``[from, to)`` from the committed state as one transaction, writing only the
output batches (parts) that are not there yet; then it commits and goes on. So every output
partition receives each transaction's output exactly once, and the state is the state of an
uninterrupted run: the functions of the pipeline must be deterministic (results depend on the
items and the state only; window closing follows event time, never the wall clock).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import changelog as C
from ._engine import (
    CorruptLogError,
    Log,
    LogClosedError,
    NotAssignedError,
    OffsetOutOfRangeError,
)
from .dsl import BuildContext, StageDef
from .reader import read_items
from .serde import BYTES

#: Test seam: called with a point name at each step of a commit ("output" after each output
#: batch, "changelog" after each changelog batch, "committed" once a commit is complete).
fault_hook: Optional[Callable[[str], None]] = None

_GROUP_COMMIT_INTERVAL_S = 1.0
_COMPACT_EVERY_COMMITS = 64
_COMPACT_MIN_SEGMENTS = 3


class StageRuntime:
    """A stage with its topics opened (shared by the tasks of the stage in this process)."""

    def __init__(self, proc: Any, stage: StageDef, topic: Any, sinks: Dict[str, Any]):
        self.proc = proc
        self.stage = stage
        self.topic = topic
        self.sinks = sinks  # output topic name -> Topic
        # Values stay bytes with the default serializer: no call per record.
        self.loads = None if stage.serde is BYTES else stage.serde.loads


class Task:
    """Stage ``stage`` of processor ``proc`` over input partition ``p``. Opening it takes its
    changelog's write lock (:class:`LogLockedError` while another owner has it) and restores
    its state."""

    def __init__(self, proc: Any, rt: StageRuntime, p: int, member: Any):
        self.proc = proc
        self.rt = rt
        self.stage = rt.stage
        self.p = p
        self.member = member
        self.input: Log = rt.topic.partitions[p]
        self.eos = proc.guarantee == "exactly_once"
        self.tables: Set[Any] = set()
        self.out: Dict[str, List[List[list]]] = {}
        self.changelog = C.open_changelog(proc.store, proc.name, self.stage.index, p)
        try:
            ctx = BuildContext(self)
            self.root = self.stage.build(ctx)
            self.stateful = ctx.stateful
            self._restore()
        except BaseException:
            self.changelog.close()
            raise
        self._last_group_commit = 0.0
        self._commits_since_compact = 0
        self.closed = False

    # ------------------------------------------------------------------ building
    def out_buffers(self, topic: str) -> List[List[list]]:
        """The per-partition ``[values, keys, timestamps]`` buffers of output ``topic``."""
        bufs = self.out.get(topic)
        if bufs is None:
            n = self.rt.sinks[topic].partition_count
            bufs = self.out[topic] = [[[], [], []] for _ in range(n)]
        return bufs

    # ------------------------------------------------------------------ restore
    def _restore(self) -> None:
        state, commit, tail = C.read_changelog(self.changelog)
        if commit is None:
            # A new task: record where it starts (and where its outputs' tails are) before it
            # writes anything, so that a restart always has a commit to resume from.
            commit = C.new_commit(self.member.position(self.p), self._marks())
            self.changelog.append_batch([C.encode_commit(commit)], keys=[C.COMMIT_KEY])
        by_op: Dict[int, List[Tuple[bytes, bytes]]] = defaultdict(list)
        for k, v in state.items():
            by_op[C.op_of(k)].append((k[3:], v))
        ops = commit.get("ops", {})
        for node in self.stateful:
            node.restore(by_op.pop(node.op_id, ()))
            node.load_meta(ops.get(str(node.op_id), {}))
        if by_op:
            raise CorruptLogError(f"changelog holds state of unknown operator(s) "
                                  f"{sorted(by_op)}: the topology changed", self.changelog.path)
        # Keys an unfinished transaction wrote: the next commit writes their committed values
        # again, so that neither compaction nor a replay can take them for committed state.
        self.undo: Dict[bytes, Optional[bytes]] = {k: state.get(k) for k in tail}
        self.pos = self.txn_start = int(commit["pos"])
        self.wm = commit.get("wm")
        self.wm = -1 if self.wm is None else int(self.wm)
        self.n_in = int(commit.get("in", 0))
        self.n_out = int(commit.get("out", 0))
        self.n_txns = int(commit.get("txns", 0))
        self.skipped = int(commit.get("skipped", 0))
        self.n_redo = int(commit.get("redos", 0))
        self.marks: Dict[str, List[int]] = commit.get("marks", {})
        self.redo_to: Optional[int] = None
        self.landed: Dict[Tuple[str, int], Set[int]] = {}
        if self.eos:
            self._find_unfinished(self.marks)
            if self.redo_to is not None:
                self.n_redo += 1  # counted at the commit that completes it
        self.txn_began = time.monotonic()
        self.restored_entries = len(state)

    def _marks(self) -> Dict[str, List[int]]:
        return {name: [log.end_offset for log in topic.partitions]
                for name, topic in self.rt.sinks.items()}

    def _find_unfinished(self, marks: Dict[str, List[int]]) -> None:
        """Find the output batches of the transaction that was running when this task stopped
        (markers from this task with ``from`` = the committed position)."""
        prefix = C.marker_prefix(self.proc.name, self.stage.index, self.p)
        for name, topic in self.rt.sinks.items():
            ends = marks.get(name)
            if ends is None:
                raise CorruptLogError(f"commit record has no mark for output topic {name!r}: "
                                      f"the topology changed", self.changelog.path)
            for q, log in enumerate(topic.partitions):
                start = max(ends[q], log.start_offset)
                if start >= log.end_offset:
                    continue
                for batch in log.replay_batches(start):
                    n = len(batch)
                    h = batch.headers(n - 1).get(C.MARKER_HEADER)
                    if h is None or not h.startswith(prefix):
                        continue
                    a, b, part, _parts = C.parse_marker_tail(h[len(prefix):], log.path)
                    if b <= self.pos:
                        continue  # an older, committed transaction
                    if a != self.pos or (self.redo_to is not None and b != self.redo_to):
                        raise CorruptLogError(
                            f"output batch of {self.proc.name} stage {self.stage.index} "
                            f"partition {self.p} for input [{a}, {b}) does not follow the last "
                            f"commit (position {self.pos})", log.path)
                    self.redo_to = b
                    self.landed.setdefault((name, q), set()).add(part)

    # ------------------------------------------------------------------ processing
    def pending(self) -> bool:
        return (self.pos != self.txn_start or bool(self.undo)
                or any(b[0] for bufs in self.out.values() for b in bufs))

    def caught_up(self) -> bool:
        return not self.pending() and self.pos >= self.input.end_offset

    def step(self, max_records: int) -> int:
        """Process the next batch of input (about ``max_records``: whole stored batches);
        return how many records."""
        log = self.input
        pos = self.pos
        redo = self.redo_to
        if redo is not None and pos >= redo:
            self.flush()
            return 0
        start = log.start_offset
        if pos < start:
            if redo is not None:
                raise OffsetOutOfRangeError(
                    f"input offsets [{pos}, {redo}) of an unfinished transaction were removed "
                    f"by retention before it could be completed")
            self.skipped += start - pos
            self.proc.warn(f"{self.proc.name}: input {self.rt.topic.name}/{self.p} offsets "
                            f"[{pos}, {start}) were removed by retention before being processed")
            pos = self.pos = start
        if pos >= log.end_offset:
            return 0
        items, nxt = read_items(log, pos, max_records, redo)
        if items:
            if pos == self.txn_start:
                for table in self.tables:
                    table.refresh()
            self._process(items)
        self.pos = nxt
        if redo is not None and (nxt >= redo or not items):
            self.pos = redo
            self.flush()
        return len(items)

    def _process(self, items: List[Any]) -> None:
        loads = self.rt.loads
        if loads is not None:
            items = [(k, None if v is None else loads(v), t) for k, v, t in items]
        ts_fn = self.stage.timestamp
        if ts_fn is not None:
            items = [(k, v, _check_ts(ts_fn(v))) for k, v, _t in items]
        top = max([it[2] for it in items])
        if top > self.wm:
            self.wm = top
        self.n_in += len(items)
        self.root.push(items)

    def buffered(self) -> int:
        return sum(len(b[0]) for bufs in self.out.values() for b in bufs)

    # ------------------------------------------------------------------ commit
    def flush(self) -> bool:
        """Commit the running transaction (outputs, then state + position). False if there was
        nothing to commit."""
        if not self.pending():
            return False
        proc = self.proc
        start, stop = self.txn_start, self.pos
        hook = fault_hook
        max_bytes = proc.batch_bytes
        written = 0
        for name, bufs in self.out.items():
            topic = self.rt.sinks[name]
            for q, buf in enumerate(bufs):
                vals, keys, tss = buf
                if not vals:
                    continue
                parts = _split(vals, keys, tss, max_bytes)
                landed = self.landed.get((name, q), ())
                for i, (pv, pk, pt) in enumerate(parts):
                    if i in landed:
                        continue
                    hdrs = None
                    if self.eos:
                        hdrs = [None] * len(pv)
                        hdrs[-1] = {C.MARKER_HEADER: C.marker(
                            proc.name, self.stage.index, self.p, start, stop, i, len(parts))}
                    topic.partitions[q].append_batch(pv, keys=pk, headers=hdrs,
                                                     timestamps_ms=pt)
                    if hook is not None:
                        hook("output")
                written += len(vals)
                # New lists in place: the sink nodes read buf[0..2] at every push.
                buf[0], buf[1], buf[2] = [], [], []
        self.marks = self._marks()
        entries: List[Tuple[bytes, Optional[bytes]]] = list(self.undo.items())
        ops = {}
        for node in self.stateful:
            entries.extend(node.dirty_entries())
            ops[str(node.op_id)] = node.meta()
        self.n_out += written
        self.n_txns += 1
        commit = {"v": C.COMMIT_VERSION, "pos": stop, "from": start, "marks": self.marks,
                  "wm": self.wm, "ops": ops, "late": sum(n.late for n in self.stateful),
                  "in": self.n_in, "out": self.n_out, "txns": self.n_txns,
                  "skipped": self.skipped, "redos": self.n_redo, "entries": self.state_entries(),
                  "bytes": self.state_bytes(), "end": self.input.end_offset,
                  "time_ms": time.time_ns() // 1_000_000}
        # State entries and the commit record in one batch (the commit point); if they do not
        # fit, the entries go first in batches of their own and the commit record last.
        keys = [k for k, _ in entries]
        values = [v for _, v in entries]
        keys.append(C.COMMIT_KEY)
        values.append(C.encode_commit(commit))
        for pv, pk, _ in _split(values, keys, [0] * len(keys), max_bytes):
            self.changelog.append_batch(pv, keys=pk)
            if hook is not None:
                hook("changelog")
        if hook is not None:
            hook("committed")
        self.txn_start = stop
        self.undo = {}
        self.redo_to = None
        self.landed = {}
        self.txn_began = time.monotonic()
        self._after_commit()
        return True

    def _after_commit(self) -> None:
        now = time.monotonic()
        if now - self._last_group_commit >= _GROUP_COMMIT_INTERVAL_S:
            self.group_commit()
            self._last_group_commit = now
        self._commits_since_compact += 1
        if self._commits_since_compact >= _COMPACT_EVERY_COMMITS:
            self._commits_since_compact = 0
            if len(self.changelog.segments()) >= _COMPACT_MIN_SEGMENTS:
                self.changelog.compact()

    def group_commit(self) -> None:
        """Advisory: the consumer group's committed offset follows the changelog (for lag in
        ``logstore stats`` and ``retention="interest"``); the changelog is authoritative."""
        try:
            self.member.commit({self.p: self.txn_start})
        except (NotAssignedError, LogClosedError):
            pass  # the partition moved on: its new owner commits from now on

    # ------------------------------------------------------------------ stats
    def state_entries(self) -> int:
        return sum(n.entries() for n in self.stateful)

    def state_bytes(self) -> int:
        return sum(n.state_bytes() for n in self.stateful)

    def stats(self) -> Dict[str, Any]:
        end = self.input.end_offset
        return {"stage": self.stage.index, "topic": self.rt.topic.name, "partition": self.p,
                "position": self.txn_start, "end_offset": end,
                "lag": max(0, end - self.txn_start), "watermark": None if self.wm < 0
                else self.wm, "late": sum(n.late for n in self.stateful),
                "state_entries": self.state_entries(), "state_bytes": self.state_bytes(),
                "records_in": self.n_in, "records_out": self.n_out,
                "transactions": self.n_txns, "redone_transactions": self.n_redo,
                "restored_entries": self.restored_entries}

    # ------------------------------------------------------------------ lifecycle
    def close(self, commit: bool = True) -> None:
        """Commit what is pending (unless ``commit=False``: after an error in the middle of a
        batch, the state may be half-updated; the next owner redoes from the last commit) and
        release the changelog (the task)."""
        if self.closed:
            return
        try:
            if commit:
                self.flush()
                self.group_commit()
        finally:
            self.closed = True
            self.changelog.close()


def _check_ts(ts: Any) -> int:
    if type(ts) is not int:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise TypeError(f"timestamp function must return int milliseconds, got {ts!r}")
        ts = int(ts)
    if ts < 0:
        raise ValueError(f"timestamp function returned a negative timestamp {ts}")
    return ts


def _size(vals: List[Any], keys: List[Any]) -> int:
    try:
        vb = sum(map(len, vals))
    except TypeError:
        vb = sum(0 if v is None else len(v) for v in vals)
    try:
        kb = sum(map(len, keys))
    except TypeError:
        kb = sum(0 if k is None else len(k) for k in keys)
    return vb + kb + 40 * len(vals)


def _split(vals: List[Any], keys: List[Any], tss: List[int], max_bytes: int
           ) -> List[Tuple[list, list, list]]:
    """One output partition's records of a transaction as batches of at most ``max_bytes``
    (estimated). Deterministic in the records, so that a re-run splits the same way."""
    if _size(vals, keys) <= max_bytes:
        return [(vals, keys, tss)]
    parts = []
    i = 0
    n = len(vals)
    while i < n:
        size = 0
        j = i
        while j < n:
            size += (0 if vals[j] is None else len(vals[j])) + (
                0 if keys[j] is None else len(keys[j])) + 40
            if size > max_bytes and j > i:
                break
            j += 1
        parts.append((vals[i:j], keys[i:j], tss[i:j]))
        i = j
    return parts
