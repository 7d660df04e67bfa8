"""What ``logstore recover`` would do to a log: the read-only half of a repair.

:func:`plan_repair` combines a verify report (:func:`.report.inspect_log`) with the engine's
own scan of the active segment (``logstore.storage.tail.inspect_active``, exactly what a
writer's open would find) into a :class:`RepairPlan`: the actions ``recover --apply`` takes,
what it cannot repair, and notes. Nothing is changed and no lock is taken; applying a plan is
:func:`logstore.storage.repair.repair_log`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..config import LogConfig
from ..format.names import CLEAN_SHUTDOWN_NAME, parse_segment_name
from ..fs import DEFAULT_FS
from ..storage import meta
from ..storage.segment import Segment
from ..storage.segments import list_segments
from ..storage.tail import inspect_active, refusal
from .report import LogReport, leftover_files
from .targets import Target


@dataclass
class RepairPlan:
    """The actions of a repair (each ``{"action": ..., "text": ..., ...}``), what cannot be
    repaired, notes, and what the engine's scan found in the active segment (None: no segment).
    """

    actions: List[Dict[str, Any]] = field(default_factory=list)
    unrepairable: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    active: Optional[Dict[str, Any]] = None
    # Data damage that --apply must not touch at all (it changes nothing while any is there):
    # durable data missing or damaged in the active segment (unless forced), a missing last
    # segment (never forced: opening would assign its offsets again).
    refused: List[str] = field(default_factory=list)

    @property
    def has_work(self) -> bool:
        """Something to do or something wrong (a dry run with this exits 1)."""
        return bool(self.actions or self.unrepairable or self.refused)

    def kinds(self) -> set:
        return {a["action"] for a in self.actions}

    def sealed_rebuilds(self) -> List[Tuple[int, int]]:
        """``(base offset, next offset)`` of each sealed segment whose indexes are rewritten."""
        return [(parse_segment_name(a["segment"]), a["next_offset"]) for a in self.actions
                if a["action"] == "rebuild_sealed_indexes"]

    def as_dict(self) -> Dict[str, Any]:
        return {"actions": self.actions, "unrepairable": self.unrepairable,
                "refused": self.refused, "notes": self.notes, "active": self.active}


def plan_repair(target: Target, report: LogReport, force: bool = False) -> RepairPlan:
    """What recovery would do, from the verify report and the engine's scan of the active
    segment (see ``logstore recover --help``). ``force``: cut the active segment at data
    damage, dropping the durable data after it (else that is refused)."""
    plan = RepairPlan()
    marker = meta.read_clean_shutdown(target.log_dir)
    bases = list_segments(target.log_dir)
    missing = meta.missing_last_segment(marker, bases)
    if missing is not None:
        plan.refused.append(missing)
    seg = _active_segment(target)
    if seg is not None:
        try:
            _plan_active(plan, seg, target, report, marker, force)
        finally:
            seg.close()
    for s in report.segments:
        if not s.active and s.status == "bad index":
            plan.actions.append({"action": "rebuild_sealed_indexes", "segment": s.name,
                                 "next_offset": s.next_offset,
                                 "text": f"rewrite the indexes of sealed segment {s.name}"})
    active_damage = seg is not None and plan.active is not None and (
        plan.active["problem"] or plan.active["below_floor"])
    for p in report.problems:
        if p.kind == "damaged" and not (active_damage and p.file == seg.path) \
                and not p.file.endswith(CLEAN_SHUTDOWN_NAME):
            plan.unrepairable.append(f"{os.path.basename(p.file)}"
                                     + (f" at byte {p.position}" if p.position is not None
                                        else "")
                                     + f": {p.reason}")
    for path in report.key_index_problems:  # (hints: the next replay_key builds them again)
        plan.actions.append({"action": "delete_key_index", "file": os.path.basename(path),
                             "text": f"delete {os.path.basename(path)} (a key index that "
                                     f"disagrees with its segment)"})
    for name, what, fate in leftover_files(target.log_dir):
        # (done by the writer's open: loader.finish_interrupted_cleanups)
        plan.actions.append({"action": "leftover", "file": name,
                             "text": f"leftover {name} ({what}): {fate}"})
    if report.writer_pid is not None:
        plan.notes.append(f"a writer (pid {report.writer_pid}) has the log open, so its active "
                          f"segment may be mid-write; --apply fails (exit 3) until that writer "
                          f"closes the log")
    # A plain rebuild after an unclean shutdown is routine, not work that makes the dry run fail.
    if plan.actions and report.ok \
            and all(a["action"] == "rebuild_active_indexes" for a in plan.actions):
        plan.notes.append(plan.actions[0]["text"])
        plan.actions = []
    return plan


def _active_segment(target: Target) -> Optional[Segment]:
    """A read-only Segment object for the last segment (for the loader's scan), or None."""
    bases = list_segments(target.log_dir)
    if not bases:
        return None
    return Segment(target.log_dir, bases[-1], DEFAULT_FS, LogConfig().index_interval_bytes,
                   writable=False)


def _plan_active(plan: RepairPlan, seg: Segment, target: Target, report: LogReport,
                 marker: Optional[Dict[str, int]], force: bool) -> None:
    """The actions on the active segment: marker, torn tail or forced cut, index rebuild."""
    ours = marker is not None and marker["segment"] == seg.base_offset
    _, rr = inspect_active(seg, marker["size"] if ours else 0,
                           marker["end_offset"] if ours else None)
    size = rr.file_bytes
    clean_marker = ours and marker["size"] == size
    plan.active = {"segment": os.path.basename(seg.path), "file_bytes": size,
                   "valid_bytes": rr.valid_bytes, "batches": rr.batches,
                   "problem": rr.problem, "problem_position": rr.problem_position,
                   "data_after_problem": rr.data_after_problem,
                   "below_floor": rr.below_floor, "durable_floor": rr.durable_floor,
                   "truncate_bytes": rr.truncated_bytes, "clean_marker": clean_marker}
    name = os.path.basename(seg.path)
    refused = refusal(rr, target.log_dir)
    if refused is not None and not force:
        plan.refused.append(f"{name}: {refused}")
        return
    active_bad = bool(rr.problem) or rr.below_floor or any(
        p.file == seg.path and p.kind == "index" for p in report.problems)
    marker_bad = any(p.kind == "marker" for p in report.problems)
    if (active_bad or marker_bad) and marker is not None:
        plan.actions.append({"action": "remove_marker",
                             "text": f"remove the clean-shutdown marker ({CLEAN_SHUTDOWN_NAME}) "
                                     f"so that the active segment is scanned"})
    if refused is not None:
        lost = sum(s.records_after_damage for s in report.segments if s.path == seg.path)
        plan.actions.append({"action": "force_truncate", "segment": name,
                             "position": rr.valid_bytes, "drop_bytes": rr.truncated_bytes,
                             "drop_records": lost,
                             "text": f"cut {name} at byte {rr.valid_bytes}, DROPPING "
                                     f"{rr.truncated_bytes} bytes including {lost} records in "
                                     f"valid batches after the damage (--force: data damage, "
                                     f"not a torn tail)"})
    elif rr.problem:
        plan.actions.append({"action": "truncate", "segment": name, "position": rr.valid_bytes,
                             "drop_bytes": rr.truncated_bytes,
                             "text": f"truncate the torn tail of {name}: {rr.truncated_bytes} "
                                     f"bytes from byte {rr.valid_bytes}"})
    elif rr.unwritten_tail:
        plan.notes.append(f"{name} ends in {rr.truncated_bytes} preallocated, never written "
                          f"bytes after byte {rr.valid_bytes}: the next writer open trims them")
    if active_bad or marker_bad or not clean_marker:
        plan.actions.append({"action": "rebuild_active_indexes", "segment": name,
                             "text": f"rebuild the indexes of {name}"
                                     + ("" if active_bad or marker_bad else
                                        " (no clean-shutdown marker: the next writer open "
                                        "rescans it anyway)")})
