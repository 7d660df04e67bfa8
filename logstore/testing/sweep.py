"""The power-loss sweep: run a workload once on the simulated file system, then cut the power at
every operation it made (or a sample of them), rebuild the disk as found after power-up, reopen,
and call the user's check.

The workload runs **once**: :func:`record` keeps its trace (:class:`~.powerloss.PowerLossFS`),
and the on-disk state of crash point *K* is derived from the trace (the first *K* operations
applied, the damage of the unsynced part drawn from ``(seed, K)``). So a sweep costs one
workload run plus, per crash point, writing a few small files, one reopen (crash recovery) and
the check; scratch directories live on ``/dev/shm`` when it is there.

What a check receives: the reopened ``Log``/``Store`` (or, for ``kind="dir"``, the directory) and
the list of values the workload passed to ``ack`` **before** the power loss, in order. A value
acknowledged right after an operation counts as acknowledged at every later crash point,
including the one just after that operation: acknowledge only what must survive.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from logstore.fs import FileSystem

from . import targets
from .powerloss import ALL_MODES, DIR_MODES, Damage, DiskModel, Event, PowerLossFS, \
    describe_point

__all__ = [
    "CrashPointFailure",
    "Recording",
    "SweepError",
    "SweepReport",
    "record",
    "sweep",
]

Ack = Callable[[Any], None]
Workload = Callable[..., Any]  # (target, ack) or, kind="dir", (path, fs, ack)
Check = Callable[[Any, List[Any]], Any]  # (target or path, acked)
KINDS = ("log", "store", "dir")


class SweepError(RuntimeError):
    """The sweep could not run: the workload failed before any crash, or a bad argument."""


class CrashPointFailure(AssertionError):
    """The check (or the reopen) failed after a power loss at one crash point.

    Attributes: ``point``, ``total`` (operations of the workload: points are ``0..total``),
    ``seed``, ``operation`` (what the power loss interrupted), ``damage`` (what power-up did to
    each file and directory with unsynced changes), ``acked`` (values acknowledged before),
    ``error`` (the exception), ``replay`` (how to run this crash point alone), ``kept`` (a copy
    of the crash state before recovery, or None), ``others`` (further failing points when the
    sweep kept going).
    """

    def __init__(self, point: int, total: int, seed: Any, operation: str,
                 damage: List[Damage], acked: List[Any], error: BaseException, stage: str,
                 replay: str, kept: Optional[str], label: str) -> None:
        self.point = point
        self.total = total
        self.seed = seed
        self.operation = operation
        self.damage = damage
        self.acked = acked
        self.error = error
        self.stage = stage
        self.replay = replay
        self.kept = kept
        self.label = label
        self.others: List["CrashPointFailure"] = []
        super().__init__(self._message())

    def _message(self) -> str:
        err = f"{type(self.error).__name__}: {self.error}"
        lines = [
            f"power-loss sweep{self.label} failed at crash point {self.point} "
            f"(of 0..{self.total}, seed {self.seed!r})",
            f"  {self.operation}",
        ]
        hurt = [str(d) for d in sorted(self.damage, key=_relevance)]
        more = f"; and {len(hurt) - 5} more (.damage)" if len(hurt) > 5 else ""
        lines.append("  after power-up: " + ("; ".join(hurt[:5]) + more if hurt else
                                             "nothing unsynced (every file as last synced)"))
        last = f", the last: {self.acked[-1]!r:.80}" if self.acked else ""
        lines.append(f"  acknowledged before the power loss: {len(self.acked)} values{last}")
        lines.append(f"  {self.stage} raised {err}")
        if self.kept:
            lines.append(f"  the crash state (before recovery) is kept in {self.kept}")
        lines.append("replay this crash point alone:")
        lines.append(f"  {self.replay}")
        return "\n".join(lines)

    def add_others(self, others: List["CrashPointFailure"]) -> "CrashPointFailure":
        """List the other failing crash points in this failure's message; returns it."""
        self.others = others
        more = ", ".join(str(o.point) for o in others[:50])
        self.args = (self._message() + f"\n{len(others)} more failing crash point(s): {more}",)
        return self


def _relevance(d: Damage) -> int:
    """Order of the damage list in a report: directories and data files first, indexes (hints)
    and lock files (informational) last."""
    name = d.path.rsplit("/", 1)[-1]
    if name == ".lock":
        return 3
    if name.endswith((".index", ".timeindex")):
        return 2
    return 0 if d.is_dir else 1


@dataclass
class SweepReport:
    """What a sweep did: ``ops`` operations recorded (crash points ``0..ops``), the ``points``
    checked, ``acks`` made by the workload, timings (``record_s``, ``check_s`` and per phase
    ``timings``), the file damage modes drawn (``damage_modes``)."""

    ops: int
    points: List[int]
    acks: int
    seed: Any
    record_s: float
    check_s: float
    duplicates: int = 0
    damage_modes: Dict[str, int] = field(default_factory=dict)
    #: Seconds spent in each phase over all points: materialize, reopen (crash recovery),
    #: check, close, verify, cleanup.
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def checked(self) -> int:
        """Crash points covered (``duplicates`` of them by an identical earlier state)."""
        return len(self.points)

    @property
    def seconds(self) -> float:
        return self.record_s + self.check_s

    @property
    def points_per_s(self) -> float:
        return self.checked / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        dup = f", {self.duplicates} of them identical to an earlier one" if self.duplicates \
            else ""
        return (f"{self.checked} crash points of {self.ops + 1} checked{dup} in "
                f"{self.seconds:.2f} s ({self.points_per_s:,.0f}/s; workload {self.ops} "
                f"operations, {self.acks} acks, seed {self.seed!r})")


class Recording:
    """One recorded run of a workload: its trace, its operations and its acknowledgements.

    ``root`` is the recorded directory (its real content after the run is of no further use).
    :meth:`materialize` writes the on-disk state of any crash point elsewhere.
    """

    def __init__(self, fs: PowerLossFS, kind: str, options: Mapping[str, Any],
                 seconds: float) -> None:
        self.root = fs.root
        self.kind = kind
        self.options = dict(options)
        self.events: List[Event] = fs.events
        self.op_positions: List[int] = fs.op_positions
        self.acks = fs.acks
        self._ack_ops = [n for n, _ in fs.acks]
        self.seconds = seconds
        self._model: Optional[DiskModel] = None
        self._applied = 0
        self._point = -1

    @property
    def ops(self) -> int:
        """Operations of the workload; crash points are ``0..ops``."""
        return len(self.op_positions)

    def acked_at(self, point: int) -> List[Any]:
        """The values acknowledged before a power loss at crash point ``point``."""
        return [v for _, v in self.acks[:bisect.bisect_right(self._ack_ops, point)]]

    def operation(self, point: int) -> str:
        return describe_point(self.events, self.op_positions, point)

    def model_at(self, point: int) -> DiskModel:
        """The disk model at crash point ``point``. Increasing points reuse the work done for the
        previous one (a sweep walks the trace once)."""
        if not 0 <= point <= self.ops:
            raise SweepError(f"crash point {point} does not exist: this workload makes "
                             f"{self.ops} operations (crash points 0..{self.ops}); is it "
                             f"deterministic?")
        if self._model is None or point < self._point:
            self._model, self._applied = DiskModel(), 0
        stop = self.op_positions[point] if point < self.ops else len(self.events)
        self._applied = self._model.replay_to(self.events, self._applied, stop)
        self._point = point
        return self._model

    def materialize(self, point: int, dest: str, seed: Any = 0,
                    modes: Sequence[str] = ALL_MODES,
                    dir_modes: Sequence[str] = DIR_MODES, fingerprint: Any = None
                    ) -> List[Damage]:
        """Write the state found after a power loss at ``point`` into ``dest`` (must not exist;
        may stay absent if the root itself was never durable). Deterministic in
        ``(seed, point)``. ``fingerprint``: see :meth:`DiskModel.materialize`."""
        return self.model_at(point).materialize(dest, point_rng(seed, point), modes, dir_modes,
                                                fingerprint)


def point_rng(seed: Any, point: int) -> random.Random:
    """The random source of one crash point: the same ``(seed, point)`` gives the same damage,
    whether the point is checked in a sweep or alone."""
    return random.Random(f"logstore-crash-point:{seed}:{point}")


class _Acker:
    """The ``ack`` callable given to a workload: records a snapshot of the value."""

    def __init__(self, fs: PowerLossFS) -> None:
        self._fs = fs

    def __call__(self, value: Any) -> None:
        self._fs.ack(targets.snapshot(value))


def record(workload: Workload, *, kind: str = "log", options: Optional[Mapping[str, Any]] = None,
           directory: Optional[str] = None, name: Optional[str] = None,
           initial: Optional[str] = None) -> Recording:
    """Run ``workload`` once on a :class:`~.powerloss.PowerLossFS` and keep its trace.

    ``kind="log"``/``"store"``: the workload is called as ``workload(target, ack)`` with a
    ``Log``/``Store`` opened with ``options`` on the simulated file system, closed afterwards if
    the workload did not. ``kind="dir"``: ``workload(path, fs, ack)``; open what you like at or
    under ``path`` with ``fs=fs``. ``directory``: where the recorded tree goes (the caller
    removes it); by default a scratch directory, removed once the run is recorded (the trace is
    all a :class:`Recording` needs). ``initial``: a directory (a log, a store, a crash state kept
    by an earlier run...) copied in as the starting state, all of it durable.
    """
    targets.check_kind(kind, KINDS)
    options = dict(options or {})
    if "fs" in options:
        raise SweepError("options must not contain 'fs': the sweep supplies the file system")
    own = directory is None
    base = directory or targets.make_scratch("logstore-record-")
    try:
        return _record(workload, kind, options, base, name, initial)
    finally:
        if own:
            targets.remove_tree(base)


def _record(workload: Workload, kind: str, options: Dict[str, Any], base: str,
            name: Optional[str], initial: Optional[str]) -> Recording:
    root = os.path.join(base, name or (kind if kind != "dir" else "data"))
    if initial is not None:
        if not os.path.isdir(initial):
            raise SweepError(f"initial must be an existing directory (got {initial!r})")
        shutil.copytree(initial, root, symlinks=True)
    fs = PowerLossFS(root)
    acker = _Acker(fs)
    t0 = time.perf_counter()
    try:
        if kind == "dir":
            workload(root, fs, acker)
        else:
            target = targets.open_target(kind, root, options, fs=fs)
            try:
                workload(target, acker)
            finally:
                targets.close_target(target)
    except Exception as e:  # noqa: BLE001 - reported as the workload's failure
        raise SweepError(f"the workload raised {type(e).__name__}: {e} (before any simulated "
                         f"power loss: fix the workload first)") from e
    finally:
        fs.release_fds()
    return Recording(fs, kind, options, time.perf_counter() - t0)


def _select_points(total: int, points: Union[None, int, Sequence[int]], seed: Any) -> List[int]:
    if points is None:
        return list(range(total + 1))
    if isinstance(points, bool):
        raise SweepError(f"points must be None, an int or a sequence of ints (got {points!r})")
    if isinstance(points, int):
        if points < 1:
            raise SweepError(f"points must be >= 1 (got {points})")
        if points > total:
            return list(range(total + 1))
        rng = random.Random(f"logstore-sample:{seed}")
        return sorted(rng.sample(range(total + 1), points))
    chosen = sorted(set(int(p) for p in points))
    bad = [p for p in chosen if not 0 <= p <= total]
    if bad:
        raise SweepError(f"crash point {bad[0]} does not exist: this workload makes {total} "
                         f"operations (crash points 0..{total}); is it deterministic?")
    return chosen


STAGES = ("materialize", "reopen", "check", "close", "verify", "cleanup")  # timed per point

def sweep(workload: Workload, check: Check, *, kind: str = "log",
          options: Optional[Mapping[str, Any]] = None,
          points: Union[None, int, Sequence[int]] = None, seed: Any = 0,
          modes: Sequence[str] = ALL_MODES, dir_modes: Sequence[str] = DIR_MODES,
          scratch: Optional[str] = None, keep_failed: Optional[str] = None,
          keep_going: bool = False, verify: bool = False, dedup: bool = True,
          initial: Optional[str] = None, replay_hint: Optional[str] = None,
          label: Optional[str] = None) -> SweepReport:
    """Cut the power at every operation of ``workload`` (or a sample) and ``check`` each state.

    ``workload(target, ack)`` (``kind="log"``: a ``Log``; ``"store"``: a ``Store``, opened with
    ``options`` on the simulated file system) or ``workload(path, fs, ack)`` (``kind="dir"``).
    It must be deterministic (the same operations each run) to replay a crash point alone.
    Call ``ack(value)`` once something is acknowledged to your caller (after the append
    returned); values may be anything.

    ``check(target, acked)``: called once per crash point with the reopened ``Log``/``Store``
    (crash recovery done; ``kind="dir"``: the directory) and the values acknowledged before the
    power loss. Raise (``assert``) on a violation. The target is closed afterwards; with
    ``verify=True`` the directory is then also checked like ``logstore verify``.

    ``points``: None (every crash point ``0..ops``), an int N (N points sampled with ``seed``)
    or a sequence of crash points. ``seed`` decides the damage (which unsynced bytes survive,
    torn where) of every point, per point. ``modes``/``dir_modes``: the file and directory
    damage modes to draw from (:data:`~.powerloss.ALL_MODES`, :data:`~.powerloss.DIR_MODES`).

    A failure raises :class:`CrashPointFailure` naming the crash point, the seed, the
    interrupted operation and how to replay it alone (``replay_hint``, a format string with
    ``{point}`` and ``{seed}``); the crash state before recovery is kept in ``keep_failed`` (a
    directory; a temporary one if None). ``keep_going``: check every point, then raise for the
    first failure listing the others. ``dedup``: a crash point whose state after power-up (every
    file and directory, byte for byte) and acknowledged values equal those of a point already
    checked is not reopened and checked again (the check must not depend on anything else).
    ``initial``: a directory copied in as the durable starting state (see :func:`record`).
    Returns a :class:`SweepReport`.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
    targets.check_kind(kind, KINDS)
    _check_modes(modes, dir_modes)
    options = dict(options or {})
    work = targets.make_scratch("logstore-sweep-", scratch)
    name = kind if kind != "dir" else "data"
    label_s = f" {label!r}" if label else ""
    try:
        rec_dir = os.path.join(work, "recorded")
        os.mkdir(rec_dir)
        rec = record(workload, kind=kind, options=options, directory=rec_dir, name=name,
                     initial=initial)
        targets.remove_tree(rec_dir)  # the trace is all that is needed from here on
        chosen = _select_points(rec.ops, points, seed)
        here = os.path.join(work, "point")
        os.mkdir(here)
        dest = os.path.join(here, name)
        reopen_fs = targets.reopen_fs_for(here)
        hint = replay_hint or ("sweep(..., points=[{point}], seed={seed!r})")
        failures: List[CrashPointFailure] = []
        modes_seen: Dict[str, int] = {}
        seen = set()
        duplicates = 0
        times = dict.fromkeys(STAGES, 0.0)
        clock = time.perf_counter
        t0 = clock()
        for point in chosen:
            fp = hashlib.blake2b(digest_size=16) if dedup else None
            tm = clock()
            damage = rec.materialize(point, dest, seed, modes, dir_modes, fp)
            times["materialize"] += clock() - tm
            for d in damage:
                if not d.is_dir:
                    modes_seen[d.mode] = modes_seen.get(d.mode, 0) + 1
            acked = rec.acked_at(point)
            if fp is not None:
                key = (fp.digest(), len(acked))
                if key in seen:
                    duplicates += 1
                    targets.remove_tree(dest)
                    continue
                seen.add(key)
            error = _check_point(check, kind, dest, options, acked, reopen_fs, verify, times)
            tc = clock()
            targets.remove_tree(dest)
            times["cleanup"] += clock() - tc
            if error is None:
                continue
            stage, exc = error
            kept = _keep(rec, point, seed, modes, dir_modes, keep_failed, name)
            failure = CrashPointFailure(
                point, rec.ops, seed, rec.operation(point), damage, acked, exc, stage,
                _format_hint(hint, point, seed), kept, label_s)
            failure.__cause__ = exc
            if not keep_going:
                raise failure
            failures.append(failure)
        check_s = time.perf_counter() - t0
        if failures:
            raise failures[0].add_others(failures[1:])
        return SweepReport(rec.ops, chosen, len(rec.acks), seed, rec.seconds, check_s,
                           duplicates, modes_seen, times)
    finally:
        targets.remove_tree(work)


def _check_modes(modes: Sequence[str], dir_modes: Sequence[str]) -> None:
    """SweepError unless both are non-empty subsets of the damage modes the model knows."""
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown or not modes:
        raise SweepError(f"modes must be a non-empty subset of {ALL_MODES} (got {modes!r})")
    if not dir_modes or [m for m in dir_modes if m not in DIR_MODES]:
        raise SweepError(f"dir_modes must be a non-empty subset of {DIR_MODES} "
                         f"(got {dir_modes!r})")


def _format_hint(hint: str, point: int, seed: Any) -> str:
    try:
        return hint.format(point=point, seed=seed)
    except (KeyError, IndexError, ValueError):
        return hint


def _check_point(check: Check, kind: str, dest: str, options: Mapping[str, Any],
                 acked: List[Any], reopen_fs: FileSystem, verify: bool,
                 times: Dict[str, float]) -> Optional[Tuple[str, BaseException]]:
    """Reopen and check one materialized crash state; ``(stage, exception)`` or None.
    ``times`` accumulates the seconds spent reopening, checking and closing."""
    clock = time.perf_counter
    t0 = clock()
    if kind == "dir":
        try:
            check(dest, acked)
        except Exception as e:  # noqa: BLE001 - reported with the crash point
            return "the check", e
        finally:
            times["check"] += clock() - t0
    else:
        try:
            target = targets.open_target(kind, dest, options, fs=reopen_fs)
        except Exception as e:  # noqa: BLE001
            return f"reopening the {kind} after the power loss", e
        t1 = clock()
        times["reopen"] += t1 - t0
        try:
            check(target, acked)
        except Exception as e:  # noqa: BLE001
            try:
                targets.close_target(target)
            except Exception:  # noqa: BLE001 - the check's error is the one to report
                pass
            return "the check", e
        t2 = clock()
        times["check"] += t2 - t1
        try:
            targets.close_target(target)
        except Exception as e:  # noqa: BLE001
            return f"closing the reopened {kind}", e
        times["close"] += clock() - t2
    if verify and os.path.exists(dest):
        t3 = clock()
        problems = targets.verify(dest)
        times["verify"] += clock() - t3
        if problems:
            return "verify after the check", AssertionError(
                f"{len(problems)} problem(s): " + "; ".join(problems))
    return None


def _keep(rec: Recording, point: int, seed: Any, modes: Sequence[str],
          dir_modes: Sequence[str], keep_failed: Optional[str], name: str) -> Optional[str]:
    """Write the failing crash state (before any recovery) where the user can look at it."""
    try:
        base = keep_failed or tempfile.mkdtemp(prefix="logstore-crash-point-")
        where = os.path.join(base, f"crash-point-{point}")
        targets.remove_tree(where)
        os.makedirs(where)
        rec.materialize(point, os.path.join(where, name), seed, modes, dir_modes)
        return os.path.join(where, name)
    except OSError:
        return None
