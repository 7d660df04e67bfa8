"""``logstore recover``: plan a repair (read-only, ``logstore.diagnostics.repair_plan``), print
it, and with ``--apply`` carry it out (``logstore.storage.repair``) and verify again.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import click

from ..diagnostics.repair_plan import RepairPlan, plan_repair
from ..diagnostics.report import inspect_log
from ..diagnostics.targets import Target, require_log_dir, resolve_targets, store_path
from ..storage.lockfile import DirectoryLock
from ..storage.repair import repair_log
from .check import print_problems
from .common import (
    EXIT_CORRUPT, CommandExit, inspect_with_progress, operator, path_arg, quiet_option,
    store_options,
)
from .output import Out, dumps, where


@click.command()
@path_arg
@click.option("--apply", "do_apply", is_flag=True,
              help="Do it (default: a dry run that changes nothing).")
@click.option("--force", is_flag=True,
              help="With --apply: also cut the active segment at data damage (durable data "
                   "missing or damaged), DROPPING the durable records after it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@store_options()
@quiet_option
@operator
def recover(path: str, do_apply: bool, force: bool, as_json: bool, topic: Optional[str],
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
      - opens the log for writing, which truncates a torn tail, rebuilds the active
        segment's indexes and deletes leftover *.tmp files, and closes it cleanly,
    then verifies again. Exit 0 if the log is now clean, 1 if damage remains (damage in
    sealed segments or missing offsets: restore those segments from a copy).

    \b
    Data damage in the active segment is refused: bytes that were durable (a clean-shutdown
    marker says close() fsynced them, or a later batch says they were fsynced before it was
    written) missing, zeroed or damaged, or the last segment missing. Then --apply changes
    nothing and exits 1: restore from a copy. --apply --force cuts the active segment at the
    damage instead, DROPPING the durable records after it (never for a missing last segment:
    its offsets would be assigned again).
    """
    if store_path(path) is not None:
        _recover_store(path, do_apply, force, as_json, topic, partition, quiet)
        return
    resolve_targets(path, topic, partition)  # usage error for --topic with a plain log
    target = require_log_dir(path, "recover")
    report = inspect_with_progress(target, True, quiet)
    plan = plan_repair(target, report, force)
    out = Out()
    if do_apply and plan.refused:
        if as_json:
            out.line(dumps({"path": path, "apply": True, "applied": False, **plan.as_dict(),
                            "report": report.as_dict()}))
        else:
            out.line(f"recover {path}: refused, nothing changed (data damage)")
            print_plan(out, plan, "would")
        out.close()
        raise CommandExit(EXIT_CORRUPT)
    if not do_apply:
        if as_json:
            out.line(dumps({"path": path, "apply": False, **plan.as_dict(),
                            "report": report.as_dict()}))
        else:
            out.line(f"recover {path}: dry run (nothing changed; --apply to do it)")
            print_plan(out, plan, "would")
        out.close()
        if plan.has_work or not report.ok:
            raise CommandExit(EXIT_CORRUPT)
        return
    done = apply_plan(target, plan)
    after = inspect_log(target, verify=True)
    if as_json:
        out.line(dumps({"path": path, "apply": True, **plan.as_dict(), "recovery": done,
                        "ok": after.ok, "report": after.as_dict()}))
    else:
        out.line(f"recover {path}: applied")
        print_plan(out, plan, "did")
        _print_done(out, done, summary=True)
        if after.ok:
            out.line("OK: the log verifies clean")
        else:
            print_problems(out, after)
            out.line(f"CORRUPT: {len(after.problems)} problem(s) remain")
    out.close()
    if not after.ok:
        raise CommandExit(EXIT_CORRUPT)


def apply_plan(target: Target, plan: RepairPlan) -> Dict[str, str]:
    """Carry out ``plan`` on the target's log (under its writer's lock: exit 3 if it is open)."""
    kinds = plan.kinds()
    return repair_log(target.log_dir, remove_marker="remove_marker" in kinds,
                      sealed_rebuilds=plan.sealed_rebuilds(),
                      force_truncate="force_truncate" in kinds,
                      drop_key_indexes=[os.path.join(target.log_dir, a["file"])
                                        for a in plan.actions
                                        if a["action"] == "delete_key_index"])


def print_plan(out: Out, plan: RepairPlan, verb: str, indent: str = "") -> None:
    a = plan.active
    if a is not None:
        out.line(f"{indent}active segment {a['segment']}: {a['file_bytes']} bytes, "
                 f"{a['batches']} valid batches up to byte {a['valid_bytes']}"
                 + (" (clean-shutdown marker matches: a writer would not scan it)"
                    if a["clean_marker"] else ""))
        if a["problem"]:
            out.line(f"{indent}  first invalid batch at byte {a['problem_position']}: "
                     f"{a['problem']}")
    for act in plan.actions:
        out.line(f"{indent}{verb}: {act['text']}")
    for note in plan.notes:
        out.line(f"{indent}note: {note}")
    for bad in plan.unrepairable:
        out.line(f"{indent}cannot repair: {bad}")
    for bad in plan.refused:
        out.line(f"{indent}refused (data damage): {bad}")
    if not plan.actions and not plan.unrepairable and not plan.refused:
        out.line(f"{indent}nothing to recover")


def _print_done(out: Out, done: Dict[str, str], summary: bool) -> None:
    for line in done.get("forced", "").splitlines():
        out.line(f"  forced cut: {line.strip()}")
    if summary:
        for line in done.get("summary", "").splitlines():
            out.line(f"  recovery: {line.strip()}")


# ------------------------------------------------------------------------------------ stores
def _recover_store(path: str, do_apply: bool, force: bool, as_json: bool,
                   topic: Optional[str], partition: Optional[int], quiet: bool) -> None:
    """`recover` over the logs of a store root: per log as for one log, under the store lock."""
    targets = resolve_targets(path, topic, partition, internal=True)
    root = store_path(path)[0]
    lock = DirectoryLock(root).acquire() if do_apply else None  # exit 3 if the store is open
    try:
        items = [_recover_one(t, do_apply, force, quiet) for t in targets]
    finally:
        if lock is not None:
            lock.release()
    out = Out()
    if not as_json:
        out.line(f"recover {path}: " + ("applied" if do_apply else
                                         "dry run (nothing changed; --apply to do it)"))
    failed = False
    docs = []
    for it in items:
        doc, bad = _store_item_doc(it, do_apply)
        docs.append(doc)
        failed |= bad
        if not as_json:
            _print_store_item(out, it, do_apply)
    if as_json:
        out.line(dumps({"path": path, "apply": do_apply, "ok": not failed, "logs": docs}))
    elif do_apply:
        out.line("OK: every log verifies clean" if not failed else
                 "CORRUPT: problems remain (see above)")
    elif not failed:
        out.line(f"nothing to recover in {len(items)} log{'s' if len(items) != 1 else ''}")
    out.close()
    if failed:
        raise CommandExit(EXIT_CORRUPT)


def _recover_one(target: Target, do_apply: bool, force: bool, quiet: bool) -> Dict[str, Any]:
    """Plan (and apply, unless refused: data damage) the recovery of one log of a store."""
    report = inspect_with_progress(target, True, quiet)
    if target.expanded and not report.segments and report.problems:
        return {"target": target, "report": report, "missing": True}
    plan = plan_repair(target, report, force)
    item = {"target": target, "report": report, "plan": plan, "missing": False}
    if do_apply and not plan.refused:
        item["done"] = apply_plan(target, plan)
        item["after"] = inspect_log(target, verify=True)
    return item


def _store_item_doc(it: Dict[str, Any], do_apply: bool) -> Tuple[Dict[str, Any], bool]:
    """The JSON object of one log of a store, and whether it fails the command."""
    t, report = it["target"], it["report"]
    if it["missing"]:
        return {"label": t.label, **where(t), "missing": True,
                "reason": report.problems[0].reason}, True
    plan: RepairPlan = it["plan"]
    doc: Dict[str, Any] = {"label": t.label, **where(t), **plan.as_dict()}
    if do_apply and plan.refused:
        doc.update(applied=False, ok=False, report=report.as_dict())
        return doc, True
    if do_apply:
        after = it["after"]
        doc.update(recovery=it["done"], ok=after.ok, report=after.as_dict())
        return doc, not after.ok
    doc["report"] = report.as_dict()
    return doc, plan.has_work or not report.ok


def _print_store_item(out: Out, it: Dict[str, Any], do_apply: bool) -> None:
    out.line(f"{it['target'].label}:")
    if it["missing"]:
        out.line(f"  cannot repair: {it['report'].problems[0].reason}")
        return
    if do_apply and it["plan"].refused:
        out.line("  refused, nothing changed (data damage):")
        print_plan(out, it["plan"], "would", indent="  ")
        return
    print_plan(out, it["plan"], "did" if do_apply else "would", indent="  ")
    if do_apply:
        _print_done(out, it["done"], summary=False)
        print_problems(out, it["after"], indent="  ", repair=False)

