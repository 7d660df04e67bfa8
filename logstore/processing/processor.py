"""The processor: stream definitions, their stages, and the threads that run the tasks."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import changelog as C
from ._engine import (
    ConfigError,
    LogLockedError,
    LogstoreError,
    NotAssignedError,
    ReadOnlyError,
    Store,
    UnknownTopicError,
)
from .dsl import KeyStateDef, StageDef, Stream, Table, Topology, WindowDef
from .serde import BYTES, check_serde
from .task import StageRuntime, Task

__all__ = ["Processor", "ProcessingError", "StateLimitError"]

log = logging.getLogger("logstore.processing")
GUARANTEES = ("exactly_once", "at_least_once")


class ProcessingError(LogstoreError):
    """A processor cannot go on (its cause is chained)."""


class StateLimitError(ProcessingError):
    """The processor's state grew past ``max_state_bytes``."""


class Processor:
    """A stream processor over the topics of ``store``, named ``name`` (its consumer group is
    ``processor.<name>``; its state and positions live under ``internal/processing/<name>``).

    Define streams with :meth:`stream` (and tables with :meth:`table`), then :meth:`run`.

    Options: ``guarantee`` (``"exactly_once"``, or ``"at_least_once"``: no output markers and no
    output scan at restart, so after a crash the outputs of the unfinished transaction may be
    written twice); ``commit_interval_s`` (0.1: a transaction commits at least this often, and
    whenever its task has caught up with its input); ``batch_records`` (records read per step);
    ``max_buffered_records`` (outputs held before an early commit); ``max_state_bytes`` (an
    estimate; passing it raises :class:`StateLimitError`).
    """

    def __init__(self, store: Store, name: str, *, guarantee: str = "exactly_once",
                 commit_interval_s: float = 0.1, batch_records: int = 2000,
                 max_buffered_records: int = 200_000, max_state_bytes: int = 1 << 30):
        if not isinstance(store, Store):
            raise TypeError(f"store must be a logstore.Store, got {type(store).__name__}")
        C.validate_processor_name(name)
        if guarantee not in GUARANTEES:
            raise ConfigError(f"guarantee must be one of {GUARANTEES}, got {guarantee!r}")
        for opt, value, lo in (("batch_records", batch_records, 1),
                               ("max_buffered_records", max_buffered_records, 1),
                               ("max_state_bytes", max_state_bytes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{opt} must be an int >= {lo}, got {value!r}")
        if isinstance(commit_interval_s, bool) or not isinstance(
                commit_interval_s, (int, float)) or commit_interval_s < 0:
            raise ConfigError(f"commit_interval_s must be a number >= 0, got "
                              f"{commit_interval_s!r}")
        self.store = store
        self.name = name
        self.group = f"processor.{name}"
        self.guarantee = guarantee
        self.commit_interval_s = float(commit_interval_s)
        self.batch_records = batch_records
        self.max_buffered_records = max_buffered_records
        self.max_state_bytes = max_state_bytes
        # Output and changelog batches stay under half the largest batch the logs accept.
        self.batch_bytes = store.config.max_record_bytes // 2
        self._graph = Topology(name)
        self._running = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._epoch = 0
        self._idle: Dict[int, int] = {}
        self._workers: List["_Worker"] = []
        self._errors: List[BaseException] = []
        self._warnings: List[str] = []
        self._finished = False
        self._last_stats: Dict[Tuple[int, int], Dict[str, Any]] = {}

    # ------------------------------------------------------------------ definitions
    def stream(self, topic: str, *, value: Any = BYTES,
               timestamp: Optional[Callable[[Any], int]] = None,
               start: str = "earliest") -> Stream:
        """A stream of the records of ``topic`` (which must exist): ``value`` deserializes the
        values, ``timestamp(value)`` gives an event time other than the record timestamp,
        ``start`` (``"earliest"``/``"latest"``) applies to partitions this processor has never
        read."""
        self._graph.check_building()
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, got {type(topic).__name__}")
        check_serde(value, "value")
        if timestamp is not None and not callable(timestamp):
            raise TypeError("timestamp must be a function of the value")
        if start not in ("earliest", "latest"):
            raise ConfigError(f"start must be 'earliest' or 'latest', got {start!r}")
        stage = self._graph.source(topic, value, start, timestamp)
        return Stream(self._graph, stage, stage.children)

    def table(self, topic: str, *, value: Any = BYTES) -> Table:
        """Topic ``topic`` as a table (latest value per key) for :meth:`Stream.join`."""
        self._graph.check_building()
        check_serde(value, "value")
        t = Table(self._graph, topic, value)
        self._graph.tables.append(t)
        return t

    # ------------------------------------------------------------------ topology
    def topology(self) -> Dict[str, Any]:
        """The stages as stored in ``processor.json`` (and compared at every start)."""
        stages = []
        for s in self._graph.stages:
            ops = []
            for d in s.state_ops():
                if isinstance(d, WindowDef):
                    ops.append({"id": d.op_id, "name": d.name, "kind": d.kind, "size": d.size,
                                "step": d.step, "grace": d.grace})
                else:
                    assert isinstance(d, KeyStateDef)
                    ops.append({"id": d.op_id, "name": d.name, "kind": "state",
                                "ttl_ms": d.ttl_ms})
            stages.append({"index": s.index, "input": s.topic, "internal": s.internal,
                           "outputs": sorted({d.topic for d in s.sinks()}), "ops": ops})
        return {"format": C.META_FORMAT, "version": C.META_VERSION, "name": self.name,
                "group": self.group, "stages": stages}

    def _open_topics(self) -> List[StageRuntime]:
        store = self.store
        if not self._graph.stages:
            raise ConfigError(f"processor {self.name!r} has no streams: call .stream(topic)")
        existing = set(store.topics())
        counts: Dict[str, int] = {}
        runtimes = []
        for s in self._graph.stages:
            if s.internal:
                n = s.partitions or counts[s.upstream.topic]  # type: ignore[union-attr]
                if store.readonly and s.topic not in existing:
                    raise ReadOnlyError(self._readonly_message())
                topic = store.topic(s.topic, partitions=None if s.topic in existing else n,
                                    retention=None if s.topic in existing else "interest")
            else:
                if s.topic not in existing:
                    raise UnknownTopicError(f"processor {self.name!r} reads topic {s.topic!r}, "
                                            f"which does not exist in {store.root}")
                topic = store.topic(s.topic)
            counts[s.topic] = topic.partition_count
            sinks = {}
            for d in s.sinks():
                if store.readonly:
                    raise ReadOnlyError(self._readonly_message())
                if d.topic in sinks:
                    continue
                n = d.partitions
                if d.topic not in existing and n is None:
                    n = topic.partition_count
                    if d.internal:
                        n = self._stage_by_topic(d.topic).partitions or n
                sinks[d.topic] = store.topic(
                    d.topic, partitions=n,
                    retention="interest" if d.internal and d.topic not in existing else None)
                existing.add(d.topic)
            runtimes.append(StageRuntime(self, s, topic, sinks))
        for t in self._graph.tables:
            if t.topic_name not in existing:
                raise UnknownTopicError(f"table topic {t.topic_name!r} does not exist")
            t.attach(store.topic(t.topic_name))
        return runtimes

    def _stage_by_topic(self, topic: str) -> StageDef:
        return next(s for s in self._graph.stages if s.topic == topic)

    def _readonly_message(self) -> str:
        return (f"processor {self.name!r} writes topics, which needs the store open for writing: "
                f"a read-only store can run only processors without outputs (state, foreach); "
                f"to run it in several processes open the store with shared=True in each")

    def _check_meta(self) -> None:
        """Refuse to run over state and positions written by another topology. What must match
        is what the stored data depends on: the stages and their inputs and outputs, the
        stateful operators (ids, kinds, window size and step, whether keyed state expires).
        Grace periods and TTL values may change between runs (they apply from then on)."""
        mine = self.topology()
        stored = C.read_meta(self.store.root, self.name)
        if stored is None or _layout(stored.get("stages")) == _layout(mine["stages"]):
            if stored != mine:
                C.write_meta(self.store.root, self.name, mine)
            return
        raise ConfigError(
            f"processor {self.name!r} in {self.store.root} was run with another topology "
            f"(stages, stateful operators or outputs differ): its state and positions do "
            f"not fit this one. Use a new processor name.")

    # ------------------------------------------------------------------ running
    def run(self, *, until_caught_up: bool = False, threads: int = 1,
            timeout: Optional[float] = None, handle_signals: bool = True) -> Dict[str, Any]:
        """Run the processor: ``threads`` members of its consumer group in this process (each a
        thread; tasks are input partitions), until :meth:`stop`, SIGTERM/SIGINT (when called in
        the main thread with ``handle_signals``), ``timeout`` seconds, or, with
        ``until_caught_up``, until every task of this process has processed and committed all
        its input (also what earlier stages wrote for it). Returns :meth:`stats`.

        Every task commits before returning. An exception from a function of the pipeline stops
        the processor: tasks of the failing thread are released without committing (the next
        run redoes from their last commit), the others commit, and the exception is raised.
        """
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an int >= 1, got {threads!r}")
        with self._lock:
            if self._running:
                raise ConfigError(f"processor {self.name!r} is already running")
            self._running = True
            self._graph.frozen = True
        self._stop.clear()
        self._errors = []
        self._epoch = 0
        self._idle = {}
        self._finished = False
        self._last_stats = {}
        restore: List[Tuple[int, Any]] = []
        try:
            runtimes = self._open_topics()
            self._check_meta()
            if handle_signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    restore.append((sig, signal.signal(sig, self._on_signal)))
            self._workers = [_Worker(self, i, runtimes) for i in range(threads)]
            deadline = None if timeout is None else time.monotonic() + timeout
            if threads == 1:
                self._workers[0].run(until_caught_up, deadline)
            else:
                ts = [threading.Thread(target=w.run, args=(until_caught_up, deadline),
                                       name=f"logstore-processor:{self.name}:{w.wid}",
                                       daemon=True) for w in self._workers]
                for t in ts:
                    t.start()
                try:
                    for t in ts:
                        while t.is_alive():
                            t.join(0.2)  # short joins: signal handlers run in between
                except BaseException:
                    # (KeyboardInterrupt without our handlers): the workers commit and stop
                    # before the members leave the group.
                    self.stop()
                    for t in ts:
                        t.join()
                    raise
            if self._errors:
                raise self._errors[0]
            return self.stats()
        finally:
            for w in self._workers:
                w.close_members()
            for sig, handler in restore:
                signal.signal(sig, handler)
            with self._lock:
                self._running = False
                self._graph.frozen = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask :meth:`run` to return: every task commits and is released. Safe from any thread
        or a signal handler."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ coordination
    def _progress(self) -> None:
        with self._lock:
            self._epoch += 1

    def _done(self, wid: int, epoch: int) -> bool:
        """Worker ``wid`` found nothing to do in a pass that began at ``epoch``: is everyone
        done? (Nobody made progress since every worker last found nothing to do.)"""
        with self._lock:
            if epoch != self._epoch:
                return False
            self._idle[wid] = epoch
            if len(self._idle) == len(self._workers) and all(
                    e == self._epoch for e in self._idle.values()):
                self._finished = True
            return self._finished

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self.stop()

    def warn(self, message: str) -> None:
        """Log ``message`` and keep it for :meth:`stats` (``warnings``)."""
        log.warning(message)
        with self._lock:
            self._warnings.append(message)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> Dict[str, Any]:
        """Live figures of this process's tasks (see :func:`describe` for any process's view
        from what is committed): per task position, end offset, lag, watermark, late records,
        state entries and estimated bytes, records in and out, transactions."""
        found = dict(self._last_stats)
        for w in self._workers:
            for task in list(w.tasks.values()):
                if not task.closed:
                    found[(task.stage.index, task.p)] = task.stats()
        tasks = list(found.values())
        tasks.sort(key=lambda t: (t["stage"], t["partition"]))
        return {"processor": self.name, "tasks": tasks,
                "lag": sum(t["lag"] for t in tasks),
                "late": sum(t["late"] for t in tasks),
                "state_entries": sum(t["state_entries"] for t in tasks),
                "state_bytes": sum(t["state_bytes"] for t in tasks),
                "records_in": sum(t["records_in"] for t in tasks),
                "records_out": sum(t["records_out"] for t in tasks),
                "warnings": list(self._warnings)}

    def _check_state_size(self) -> None:
        if not self.max_state_bytes:
            return
        total = 0
        for w in self._workers:
            for task in list(w.tasks.values()):
                if not task.closed:
                    total += task.state_bytes()
        if total > self.max_state_bytes:
            raise StateLimitError(
                f"processor {self.name!r} holds about {total} bytes of state, above "
                f"max_state_bytes={self.max_state_bytes}: expire state (ttl_ms, shorter "
                f"windows or grace) or raise the limit")

    def __repr__(self) -> str:
        return f"<logstore.processing.Processor {self.name!r} stages={len(self._graph.stages)}>"


def _layout(stages: Any) -> Any:
    """The parts of a topology (``processor.json`` stages) that stored state depends on."""
    if not isinstance(stages, list):
        return None
    out = []
    for s in stages:
        ops = [(o.get("id"), o.get("kind"), o.get("size"), o.get("step"),
                o.get("ttl_ms") is not None) for o in s.get("ops", [])]
        out.append((s.get("index"), s.get("input"), s.get("internal"), s.get("outputs"), ops))
    return out


class _Worker:
    """One thread of a running processor: a member of the processor's group on every stage's
    input topic, and the tasks of the partitions it is assigned."""

    def __init__(self, proc: Processor, wid: int, runtimes: List[StageRuntime]):
        self.proc = proc
        self.wid = wid
        self.runtimes = runtimes
        self.members: List[Any] = []
        self.tasks: Dict[Tuple[int, int], Task] = {}
        try:
            for rt in runtimes:
                self.members.append(proc.store.consumer(proc.group, rt.topic.name,
                                                        start=rt.stage.start))
        except BaseException:
            self.close_members()
            raise

    def close_members(self) -> None:
        for m in self.members:
            try:
                m.close()
            except LogstoreError:
                pass
        self.members = []

    def _sync(self) -> Tuple[bool, bool]:
        """Close the tasks whose partitions moved away, open the newly assigned ones.
        Returns (changed, complete): complete = every assigned task is open."""
        changed = False
        complete = True
        for rt, member in zip(self.runtimes, self.members):
            assigned = set(member.assignment())
            idx = rt.stage.index
            for key in [k for k in self.tasks if k[0] == idx and k[1] not in assigned]:
                task = self.tasks.pop(key)
                task.close()
                self.proc._last_stats.pop(key, None)
                changed = True
            for p in sorted(assigned):
                if (idx, p) in self.tasks:
                    continue
                try:
                    self.tasks[(idx, p)] = Task(self.proc, rt, p, member)
                    changed = True
                except (LogLockedError, NotAssignedError):
                    # Its previous owner has not released it yet, or the partition moved on
                    # again meanwhile (a rebalance in another thread): try at the next pass.
                    complete = False
        return changed, complete

    def run(self, until_caught_up: bool, deadline: Optional[float]) -> None:
        proc = self.proc
        store = proc.store
        clean = False
        try:
            while not proc._stop.is_set() and not proc._finished:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                epoch = proc._epoch
                changed, complete = self._sync()
                progressed = changed
                for task in list(self.tasks.values()):
                    n = task.step(proc.batch_records)
                    if n:
                        progressed = True
                    if task.pending() and (
                            n == 0 or task.buffered() >= proc.max_buffered_records
                            or time.monotonic() - task.txn_began >= proc.commit_interval_s
                            or task.pos - task.txn_start >= 50 * proc.batch_records):
                        task.flush()
                        progressed = True
                        proc._check_state_size()
                if progressed:
                    proc._progress()
                    continue
                if until_caught_up and complete and all(
                        t.caught_up() for t in self.tasks.values()):
                    if proc._done(self.wid, epoch):
                        break
                    with proc._cond:
                        proc._cond.wait(0.005)
                    continue
                store.wait_for_data(0.02 if complete else 0.005)
            clean = True
        except BaseException as e:
            proc._fail(e)
        finally:
            with proc._cond:
                proc._cond.notify_all()
            self._close_tasks(commit=clean)

    def _close_tasks(self, commit: bool) -> None:
        err: Optional[BaseException] = None
        for key in list(self.tasks):
            task = self.tasks.pop(key)
            try:
                task.close(commit=commit)
                self.proc._last_stats[key] = task.stats()
            except BaseException as e:  # keep releasing the others
                err = err or e
        if err is not None:
            self.proc._fail(err)
