"""A plain-Python reference for random processing pipelines (tests of logstore.processing).

A pipeline is a small dict (``spec``); :func:`build` makes it a processor, :func:`reference`
computes from the input, record by record with the simplest code possible, what every task must
write to every output partition (in order) and the state it must end with, and
:func:`actual` reads what the processor wrote, split by the task that wrote each batch (the
``x-processor-txn`` marker of its last record).
"""

from __future__ import annotations

import json
import pickle
import random
from typing import Any, Dict, List, Optional, Tuple

import crc32c

import logstore
from logstore import processing as lp

NAME = "model"
KEYS = [None, b"a", b"b", b"c", b"d", b"e"]


# ------------------------------------------------------------------------------ specs
def random_spec(rnd: random.Random) -> Dict[str, Any]:
    pre = []
    for _ in range(rnd.randrange(3)):
        kind = rnd.choice(["map", "filter", "flat_map"])
        if kind == "map":
            pre.append(("map", rnd.randrange(1, 5)))
        elif kind == "filter":
            m = rnd.randrange(2, 5)
            pre.append(("filter", m, rnd.randrange(m)))
        else:
            pre.append(("flat_map", rnd.randrange(0, 3)))
    key_by = rnd.choice([None, None, rnd.randrange(1, 6)])
    op_kind = rnd.choice(["none", "window", "window", "window", "state", "dedup"])
    op: Any = None
    if op_kind == "window":
        wkind = rnd.choice(["tumbling", "hopping", "session"])
        size = rnd.choice([50, 100, 200])
        step = size if wkind == "tumbling" else rnd.choice([size // 2, size // 5, size])
        if wkind == "session":
            size = rnd.choice([10, 30, 80])  # the gap
            step = 0
        op = ("window", wkind, size, step, rnd.choice([0, 0, 20, 100]),
              rnd.choice(["count", "sum", "min", "max", "mean"]),
              rnd.choice(["final", "final", "current"]), rnd.random() < 0.5)
    elif op_kind == "state":
        op = ("state", rnd.choice([None, 100, 400]))
    elif op_kind == "dedup":
        op = ("dedup", rnd.choice([50, 300]))
    return {"partitions": rnd.randrange(1, 4), "out_partitions": rnd.randrange(1, 4),
            "pre": pre, "key_by": key_by, "key_by_partitions": rnd.randrange(1, 4),
            "op": op}


def make_input(rnd: random.Random, partitions: int, n: int, disorder: int = 60
               ) -> List[List[Tuple[Optional[bytes], bytes, int]]]:
    """Per partition: records (key, value, timestamp), timestamps rising ~10 ms apart with
    out-of-order jitter up to ``disorder`` ms (and the odd jump)."""
    out = []
    for p in range(partitions):
        recs = []
        t = 1_000 + rnd.randrange(50)
        for i in range(n):
            t += rnd.choice([0, 5, 10, 10, 15, 40]) + (500 if rnd.random() < 0.01 else 0)
            ts = max(0, t - rnd.randrange(disorder) if rnd.random() < 0.3 else t)
            value = json.dumps({"id": f"{p}:{i}", "v": rnd.randrange(100)}).encode()
            recs.append((rnd.choice(KEYS), value, ts))
        out.append(recs)
    return out


def publish(store: logstore.Store, inputs, rnd: random.Random, start: int = 0,
            max_batch: int = 200) -> None:
    """Append ``inputs`` (from index ``start`` of each partition) in batches of random sizes,
    including single-record batches."""
    topic = store.topic("in", partitions=len(inputs))
    for p, recs in enumerate(inputs):
        log = topic.partitions[p]
        i = start
        while i < len(recs):
            j = min(len(recs), i + min(max_batch, rnd.choice([1, 1, 3, 40, 200])))
            chunk = recs[i:j]
            log.append_batch([c[1] for c in chunk], keys=[c[0] for c in chunk],
                             timestamps_ms=[c[2] for c in chunk])
            i = j


# ------------------------------------------------------------------------------ the pipeline
def _pre_fn(op):
    if op[0] == "map":
        c = op[1]
        return "map", lambda d: {"id": d["id"], "v": d["v"] + c}
    if op[0] == "filter":
        m, r = op[1], op[2]
        return "filter", lambda d: d["v"] % m != r
    n = op[1]
    return "flat_map", lambda d: [{"id": f"{d['id']}/{i}", "v": d["v"] + i} for i in range(n)]


def _agg(name: str):
    return {"count": lp.Count(), "sum": lp.Sum(lambda d: d["v"]), "min": lp.Min(lambda d: d["v"]),
            "max": lp.Max(lambda d: d["v"]), "mean": lp.Mean(lambda d: d["v"])}[name]


def _state_sum(d, state):
    total = state.get("sum", 0) + d["v"]
    state.set("sum", total)
    return {"id": d["id"], "v": d["v"], "sum": total}


def _dedup(d, state):
    if state.exists("seen"):
        return False
    state.set("seen", True)
    return True


def build(store: logstore.Store, spec: Dict[str, Any], **options: Any) -> lp.Processor:
    app = lp.Processor(store, NAME, **options)
    s = app.stream("in", value=lp.JSON)
    for op in spec["pre"]:
        kind, fn = _pre_fn(op)
        s = getattr(s, kind)(fn)
    if spec["key_by"] is not None:
        k = spec["key_by"]
        s = s.key_by(lambda d: f"k{d['v'] % k}", partitions=spec["key_by_partitions"])
    op = spec["op"]
    outp = spec["out_partitions"]
    if op is None:
        s.to("out", value=lp.JSON, partitions=outp)
    elif op[0] == "window":
        _, kind, size, step, grace, agg, emit, late = op
        if kind == "tumbling":
            w = s.tumbling_window(size, grace_ms=grace)
        elif kind == "hopping":
            w = s.hopping_window(size, step, grace_ms=grace)
        else:
            w = s.session_window(size, grace_ms=grace)
        res = w.aggregate(_agg(agg), name="win")
        getattr(res, emit)().to("out", value=lp.JSON, partitions=outp)
        if late:
            res.late().to("late", value=lp.JSON, partitions=outp)
    elif op[0] == "state":
        s.map(_state_sum, stateful=True, ttl_ms=op[1], name="st").to(
            "out", value=lp.JSON, partitions=outp)
    else:
        s.filter(_dedup, stateful=True, ttl_ms=op[1], name="st").to(
            "out", value=lp.JSON, partitions=outp)
    return app


# ------------------------------------------------------------------------------ reference
def _route(key: Optional[bytes], n: int, p: int) -> int:
    return p % n if key is None else crc32c.crc32c(key) % n


def _aggregate(name: str, vals: List[int]):
    """(result, accumulator as the processor stores it)."""
    if name == "count":
        return len(vals), len(vals)
    if name == "sum":
        return sum(vals), sum(vals)
    if name == "min":
        return min(vals), min(vals)
    if name == "max":
        return max(vals), max(vals)
    return sum(vals) / len(vals), (sum(vals), len(vals))


def _korder(k: Optional[bytes]):
    return (k is not None, k or b"")


def _run_op(spec, items):
    """The stateful part of the pipeline over one task's items: (results, late, state)."""
    op = spec["op"]
    results: List[Tuple] = []
    late: List[Tuple] = []
    if op is None:
        return list(items), late, {}
    st = -1
    if op[0] in ("state", "dedup"):
        ttl = op[1]
        data: Dict[Any, Tuple[dict, int]] = {}
        for k, v, t in items:
            st = max(st, t)
            cur = data.get(k)
            if cur is not None and ttl is not None and cur[1] + ttl <= st:
                cur = None
                del data[k]
            if op[0] == "state":
                total = (cur[0]["sum"] if cur else 0) + v["v"]
                data[k] = ({"sum": total}, st)
                results.append((k, {"id": v["id"], "v": v["v"], "sum": total}, t))
            else:
                if cur is None:
                    data[k] = ({"seen": True}, st)
                    results.append((k, v, t))
        if ttl is not None:
            data = {k: d for k, d in data.items() if d[1] + ttl > st}
        return results, late, {k: d[0] for k, d in data.items()}
    _, kind, size, step, grace, agg, emit, _late = op
    if kind in ("tumbling", "hopping"):
        wins: Dict[int, Dict[Any, List[int]]] = {}
        for k, v, t in items:
            st = max(st, t)
            is_late = False
            for ws in [w for w in range((t // step - size // step - 2) * step, t + 1, step)
                       if w <= t < w + size and w >= 0]:
                if ws + size + grace <= st:
                    is_late = True
                    continue
                vals = wins.setdefault(ws, {}).setdefault(k, [])
                vals.append(v["v"])
                if emit == "current":
                    results.append((k, {"start": ws, "end": ws + size,
                                        "value": _aggregate(agg, vals)[0]}, ws))
            if is_late:
                late.append((k, v, t))
            for ws in sorted(wins):
                if ws + size + grace <= st:
                    d = wins.pop(ws)
                    if emit == "final":
                        for key in sorted(d, key=_korder):
                            results.append((key, {"start": ws, "end": ws + size,
                                                  "value": _aggregate(agg, d[key])[0]}, ws))
        state = {(k, ws): _aggregate(agg, vals)[1] for ws, d in wins.items()
                 for k, vals in d.items()}
        return results, late, state
    gap = size
    sess: Dict[Any, List[list]] = {}
    for k, v, t in items:
        st = max(st, t)
        lst = sess.get(k, [])
        over = [s for s in lst if s[0] - gap <= t <= s[1] + gap]
        first = min([t] + [s[0] for s in over])
        last = max([t] + [s[1] for s in over])
        if last + gap + grace < st:
            late.append((k, v, t))
            continue
        vals = [x for s in sorted(over, key=lambda s: s[0]) for x in s[2]] + [v["v"]]
        lst = sorted([s for s in lst if s not in over] + [[first, last, vals]],
                     key=lambda s: s[0])
        sess[k] = lst
        if emit == "current":
            results.append((k, {"start": first, "end": last + 1,
                                "value": _aggregate(agg, vals)[0]}, first))
        closing = []
        for key in list(sess):
            keep = []
            for s in sess[key]:
                if s[1] + gap + grace < st:
                    closing.append((s[1] + gap + grace + 1, b"\x00" if key is None
                                    else b"\x01" + key, s[0], key, s))
                else:
                    keep.append(s)
            if keep:
                sess[key] = keep
            else:
                del sess[key]
        closing.sort(key=lambda c: c[:3])
        if emit == "final":
            for _c, _e, _f, key, s in closing:
                results.append((key, {"start": s[0], "end": s[1] + 1,
                                      "value": _aggregate(agg, s[2])[0]}, s[0]))
    state = {k: [(s[0], s[1], _aggregate(agg, s[2])[1]) for s in lst] for k, lst in sess.items()}
    return results, late, state


def _pre(spec, items):
    for op in spec["pre"]:
        kind, fn = _pre_fn(op)
        if kind == "map":
            items = [(k, fn(v), t) for k, v, t in items]
        elif kind == "filter":
            items = [(k, v, t) for k, v, t in items if fn(v)]
        else:
            items = [(k, x, t) for k, v, t in items for x in fn(v)]
    return items


Outputs = Dict[Tuple[str, int, Tuple[int, int]], List[Tuple]]


def _emit(out: Outputs, topic: str, n: int, task: Tuple[int, int], items) -> None:
    for k, v, t in items:
        out.setdefault((topic, _route(k, n, task[1]), task), []).append((k, v, t))


def reference(spec, inputs, repartition: Optional[List[List[Tuple]]] = None):
    """``(outputs, state)``: outputs ``{(topic, partition, (stage, task partition)): [(key,
    value, ts), ...]}`` in order, state as :func:`logstore.processing.read_state` returns it.
    With ``key_by``, the second stage's input is ``repartition`` (what the first stage wrote
    to the repartition topic, per partition in order: the interleaving of the first stage's
    tasks is not determined by the input)."""
    out: Outputs = {}
    state: Dict[Any, Any] = {}
    stage0 = []
    for p, recs in enumerate(inputs):
        items = [(k, json.loads(v), t) for k, v, t in recs]
        stage0.append(_pre(spec, items))
    if spec["key_by"] is not None:
        kb = spec["key_by"]
        rn = spec["key_by_partitions"]
        for p, items in enumerate(stage0):
            keyed = [(f"k{v['v'] % kb}".encode(), v, t) for k, v, t in items]
            _emit(out, f"{NAME}.repartition-1", rn, (0, p), keyed)
        tasks = [((1, p), items) for p, items in enumerate(repartition or [])]
    else:
        tasks = [((0, p), items) for p, items in enumerate(stage0)]
    n = spec["out_partitions"]
    for task, items in tasks:
        results, late, st = _run_op(spec, items)
        _emit(out, "out", n, task, results)
        if spec["op"] is not None and spec["op"][0] == "window" and spec["op"][7]:
            _emit(out, "late", n, task, late)
        state.update(st)
    return out, state


# ------------------------------------------------------------------------------ actual output
def actual(store: logstore.Store, spec) -> Outputs:
    """What the processor wrote, by (topic, partition, task), decoded like the reference."""
    out: Outputs = {}
    topics = ["out", "late"] + ([f"{NAME}.repartition-1"] if spec["key_by"] is not None else [])
    for name in topics:
        if name not in store.topics():
            continue
        topic = store.topic(name)
        for q, log in enumerate(topic.partitions):
            for batch in log.replay_batches(0):
                recs = batch.records()
                mark = recs[-1].headers.get("x-processor-txn")
                assert mark is not None, f"{name}/{q}: batch without a marker"
                parts = mark.decode().split(":")
                assert parts[0] == NAME
                task = (int(parts[1]), int(parts[2]))
                loads = pickle.loads if name.endswith("repartition-1") else json.loads
                out.setdefault((name, q, task), []).extend(
                    (r.key, loads(r.value), r.timestamp_ms) for r in recs)
    return out


def repartition_input(store: logstore.Store, spec) -> Optional[List[List[Tuple]]]:
    if spec["key_by"] is None:
        return None
    topic = store.topic(f"{NAME}.repartition-1")
    return [[(r.key, pickle.loads(r.value), r.timestamp_ms) for r in log.replay()]
            for log in topic.partitions]


def check(store: logstore.Store, spec, inputs) -> None:
    """Assert that the outputs and the state equal the reference exactly."""
    expected, state = reference(spec, inputs, repartition_input(store, spec))
    got = actual(store, spec)
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected), key=repr)[:5])
    for where in expected:
        assert got[where] == expected[where], where
    if spec["op"] is not None:
        assert lp.read_state(store, NAME, "win" if spec["op"][0] == "window" else "st") == state
