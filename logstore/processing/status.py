"""Reading a processor from what it committed, from any process (no lock taken): the figures
``logstore stats`` shows, and a stateful operator's committed state."""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List

from . import changelog as C
from ._engine import ConfigError, Store, UnknownTopicError
from .nodes import dec_key

__all__ = ["describe", "read_state"]


def describe(store: Store) -> List[Dict[str, Any]]:
    """One dict per processor that has run in ``store`` (which may be read-only and in another
    process than the processor), from each task's last commit record:

    ``{"processor", "group", "lag", "late", "state_entries", "state_bytes", "records_in",
    "records_out", "stages": [{"stage", "input", "internal", "outputs", "lag", "late",
    "state_entries", "state_bytes", "partitions": [{"partition", "position", "end_offset",
    "lag", "watermark", "late", "state_entries", "state_bytes", "changelog_bytes",
    "records_in", "records_out", "transactions", "committed_at_ms"}]}]}``

    ``lag`` = input end offset now - committed position (a partition never processed counts
    from the input's start); ``state_bytes`` is an estimate of the memory the state takes;
    ``late`` counts records that arrived after their window closed.
    """
    out = []
    for name in C.processors(store.root):
        meta = C.read_meta(store.root, name)
        if meta is None:
            continue
        stages = []
        for s in meta.get("stages", []):
            topic = store.topic(s["input"]) if s["input"] in store.topics() else None
            parts = []
            count = 0 if topic is None else topic.partition_count
            for p in range(count):
                end = topic.partitions[p].end_offset  # type: ignore[union-attr]
                row: Dict[str, Any] = {"partition": p, "position": None, "end_offset": end,
                                       "lag": end - topic.partitions[p].start_offset,  # type: ignore
                                       "watermark": None, "late": 0, "state_entries": 0,
                                       "state_bytes": 0, "changelog_bytes": 0,
                                       "records_in": 0, "records_out": 0, "transactions": 0,
                                       "redone_transactions": 0,
                                       "committed_at_ms": None}
                log = C.open_changelog_readonly(store.root, name, s["index"], p)
                if log is not None:
                    try:
                        commit = C.last_commit(log)
                        row["changelog_bytes"] = sum(seg["size"] for seg in log.segments())
                    finally:
                        log.close()
                    if commit is not None:
                        row.update(position=commit["pos"], lag=max(0, end - commit["pos"]),
                                   watermark=commit.get("wm"), late=commit.get("late", 0),
                                   state_entries=commit.get("entries", 0),
                                   state_bytes=commit.get("bytes", 0),
                                   records_in=commit.get("in", 0),
                                   records_out=commit.get("out", 0),
                                   transactions=commit.get("txns", 0),
                                   redone_transactions=commit.get("redos", 0),
                                   committed_at_ms=commit.get("time_ms"))
                parts.append(row)
            stages.append({"stage": s["index"], "input": s["input"],
                           "internal": s.get("internal", False),
                           "outputs": s.get("outputs", []), "partitions": parts,
                           **_totals(parts)})
        out.append({"processor": name, "group": meta.get("group"), "stages": stages,
                    **_totals(stages)})
    return out


def _totals(rows: List[Dict[str, Any]]) -> Dict[str, int]:
    keys = ("lag", "late", "state_entries", "state_bytes", "records_in", "records_out",
            "redone_transactions")
    return {k: sum(int(r.get(k) or 0) for r in rows) for k in keys}


def read_state(store: Store, processor: str, op: str) -> Dict[Any, Any]:
    """The committed state of stateful operator ``op`` (its ``name=``, or the default
    ``<kind>-<n>``) of ``processor``, over all partitions:

    - keyed state (``stateful=True``): ``{key: {name: value}}``;
    - tumbling/hopping windows: ``{(key, window_start): accumulator}`` (open windows);
    - session windows: ``{key: [(first, last, accumulator), ...]}`` (open sessions).

    Keys are bytes (or None). Reads the changelogs up to their last commit; safe beside the
    running processor (it sees the last commit)."""
    meta = C.read_meta(store.root, processor)
    if meta is None:
        raise UnknownTopicError(f"no processor {processor!r} in {store.root}")
    for s in meta["stages"]:
        for o in s["ops"]:
            if o["name"] == op:
                return _read_op(store, processor, s, o)
    names = [o["name"] for s in meta["stages"] for o in s["ops"]]
    raise ConfigError(f"processor {processor!r} has no stateful operator {op!r} "
                      f"(it has: {', '.join(names) or 'none'})")


def _read_op(store: Store, processor: str, stage: Dict[str, Any], op: Dict[str, Any]
             ) -> Dict[Any, Any]:
    prefix = C.state_prefix(op["id"])
    out: Dict[Any, Any] = {}
    base = os.path.join(C.processor_dir(store.root, processor), f"stage-{stage['index']}")
    if not os.path.isdir(base):
        return out
    for name in sorted(os.listdir(base)):
        if not name.isdigit():
            continue
        log = C.open_changelog_readonly(store.root, processor, stage["index"], int(name))
        if log is None:
            continue
        try:
            state, _commit, _tail = C.read_changelog(log)
        finally:
            log.close()
        for k, v in state.items():
            if not k.startswith(prefix):
                continue
            raw = k[len(prefix):]
            value = pickle.loads(v)
            if op["kind"] in ("tumbling", "hopping"):
                out[(dec_key(raw[8:]), int.from_bytes(raw[:8], "big", signed=True))] = value
            elif op["kind"] == "session":
                out[dec_key(raw)] = value
            elif op.get("ttl_ms") is not None:
                out[dec_key(raw)] = value[0]
            else:
                out[dec_key(raw)] = value
    return out


