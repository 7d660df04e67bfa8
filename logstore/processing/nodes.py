"""Per-task runtime operators. Each task (stage, input partition) builds its own chain of nodes
from the stream definitions (:mod:`.dsl`) and pushes every batch of input through it, a list of
``(key, value, timestamp_ms)`` items at a time: per-record work is one list comprehension or one
tight loop per operator, never a generator chain per record.

Stateful nodes (keyed state, windows) keep their state in dicts, record which entries changed
since the last commit (``dirty_entries``) and rebuild from committed changelog entries
(``restore``). Their results must depend only on the items pushed and the state: no wall clock.
"""

from __future__ import annotations

import heapq
import pickle
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._engine import crc32c
from .aggregations import Count
from .changelog import state_prefix

Item = Tuple[Optional[bytes], Any, int]
_MISSING = object()
_DUMPS = pickle.dumps
_LOADS = pickle.loads
_PROTO = pickle.HIGHEST_PROTOCOL
_INF = float("inf")


def enc_key(key: Optional[bytes]) -> bytes:
    """A stream key as part of a changelog key (None and b"" stay distinct)."""
    return b"\x00" if key is None else b"\x01" + key


def dec_key(raw: bytes) -> Optional[bytes]:
    return None if raw[:1] == b"\x00" else bytes(raw[1:])


def key_order(key: Optional[bytes]) -> Tuple[bool, bytes]:
    return (key is not None, key or b"")


def sorted_keys(keys: Any) -> List[Optional[bytes]]:
    try:
        return sorted(keys)
    except TypeError:  # a None key among bytes keys
        return sorted(keys, key=key_order)


def to_key(key: Any) -> Optional[bytes]:
    """What ``key_by`` accepts: bytes (kept), str (UTF-8), None (unkeyed)."""
    if key is None or type(key) is bytes:
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key_by must return bytes, str or None, got {type(key).__name__}")


class Node:
    """Receives batches of items and pushes its results to its children."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: List["Node"] = []

    def push(self, items: List[Item]) -> None:
        raise NotImplementedError

    def emit(self, items: List[Item]) -> None:
        if items:
            for child in self.children:
                child.push(items)


class Fanout(Node):
    """The source of a task: hands each batch to the stream's first operators."""

    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        self.emit(items)


# ------------------------------------------------------------------------------ stateless
class FnNode(Node):
    """An operator applying a user function: ``fn(value)``, or ``fn(value, key, timestamp)``
    with ``metadata``."""

    __slots__ = ("fn", "metadata")

    def __init__(self, fn: Callable, metadata: bool):
        super().__init__()
        self.fn = fn
        self.metadata = metadata


class MapNode(FnNode):
    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        f = self.fn
        if self.metadata:
            self.emit([(k, f(v, k, t), t) for k, v, t in items])
        else:
            self.emit([(k, f(v), t) for k, v, t in items])


class FilterNode(FnNode):
    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        f = self.fn
        if self.metadata:
            self.emit([it for it in items if f(it[1], it[0], it[2])])
        else:
            self.emit([it for it in items if f(it[1])])


class FlatMapNode(FnNode):
    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        f = self.fn
        if self.metadata:
            self.emit([(k, x, t) for k, v, t in items for x in f(v, k, t)])
        else:
            self.emit([(k, x, t) for k, v, t in items for x in f(v)])


class ForeachNode(FnNode):
    """A side effect per item; the items pass on unchanged."""

    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        f = self.fn
        if self.metadata:
            for k, v, t in items:
                f(v, k, t)
        else:
            for _k, v, _t in items:
                f(v)
        self.emit(items)


class KeyByNode(FnNode):
    __slots__ = ()

    def push(self, items: List[Item]) -> None:
        f = self.fn
        if self.metadata:
            out = [(f(v, k, t), v, t) for k, v, t in items]
        else:
            out = [(f(v), v, t) for k, v, t in items]
        if out and any(type(it[0]) is not bytes for it in out):
            out = [(to_key(k), v, t) for k, v, t in out]
        self.emit(out)


class JoinNode(Node):
    """Stream-table join: each item's lookup key (its key, or ``on(value)``) against the table
    as this task last refreshed it."""

    __slots__ = ("table", "fn", "how", "on")

    def __init__(self, table: Any, fn: Callable, how: str, on: Optional[Callable]):
        super().__init__()
        self.table = table
        self.fn = fn
        self.how = how
        self.on = on

    def push(self, items: List[Item]) -> None:
        rows = self.table.rows
        f = self.fn
        on = self.on
        out = []
        inner = self.how == "inner"
        for k, v, t in items:
            row = rows.get(k if on is None else to_key(on(v)), _MISSING)
            if row is _MISSING:
                if inner:
                    continue
                row = None
            out.append((k, f(v, row), t))
        self.emit(out)


class SinkNode(Node):
    """Buffers items for an output topic, by partition, until the task's next commit.

    Keyed items go to partition ``crc32c(key) % N`` (as ``Topic.publish`` places them); unkeyed
    items of input partition p to partition ``p % N`` (deterministic, and keeps their order).
    """

    __slots__ = ("dumps", "bufs", "default")

    def __init__(self, dumps: Callable, bufs: List[List[list]], input_partition: int):
        super().__init__()
        self.dumps = dumps
        self.bufs = bufs
        self.default = bufs[input_partition % len(bufs)]

    def push(self, items: List[Item]) -> None:
        dumps = self.dumps
        bufs = self.bufs
        n = len(bufs)
        if n == 1:
            vals, keys, tss = bufs[0]
            vals.extend([dumps(v) for _k, v, _t in items])
            keys.extend([k for k, _v, _t in items])
            tss.extend([t for _k, _v, t in items])
            return
        default = self.default
        for k, v, t in items:
            b = default if k is None else bufs[crc32c(k) % n]
            b[0].append(dumps(v))
            b[1].append(k)
            b[2].append(t)


# ------------------------------------------------------------------------------ state
class StatefulNode(Node):
    """Base of nodes with state in the task's changelog (op id = their place in the topology)."""

    __slots__ = ("op_id", "prefix", "st", "late", "_entry_bytes", "_entry_count")

    def __init__(self, op_id: int):
        super().__init__()
        self.op_id = op_id
        self.prefix = state_prefix(op_id)
        self.st = -1  # this operator's stream time: the largest timestamp it has seen
        self.late = 0
        self._entry_bytes = 0  # running totals of written entries, for the size estimate
        self._entry_count = 0

    def dirty_entries(self) -> List[Tuple[bytes, Optional[bytes]]]:
        """Changelog entries (key, pickled state or None) of what changed since the last call."""
        raise NotImplementedError

    def restore(self, entries: Sequence[Tuple[bytes, bytes]]) -> None:
        """Rebuild from committed entries: (key without the op prefix, value)."""
        raise NotImplementedError

    def entries(self) -> int:
        raise NotImplementedError

    def meta(self) -> Dict[str, Any]:
        return {"st": self.st, "late": self.late}

    def load_meta(self, meta: Dict[str, Any]) -> None:
        self.st = int(meta.get("st", -1))
        self.late = int(meta.get("late", 0))

    def note_sizes(self, out: List[Tuple[bytes, Optional[bytes]]]) -> None:
        for k, v in out[:256]:  # a sample is enough for the estimate
            self._entry_bytes += len(k) + (0 if v is None else len(v))
        self._entry_count += min(len(out), 256)

    def state_bytes(self) -> int:
        """An estimate: entries x (mean changelog entry size + ~120 bytes of dict overhead)."""
        n = self.entries()
        if not n:
            return 0
        mean = self._entry_bytes / self._entry_count if self._entry_count else 64
        return int(n * (mean + 120))


class State:
    """Per-key state handed to ``stateful=True`` functions: named values of the current key.

    ``get(name, default=None)``, ``set(name, value)``, ``delete(name)``, ``exists(name)``,
    ``clear()``. Values must be picklable (they go to the changelog at each commit).
    """

    __slots__ = ("_node", "_key", "_d")

    def __init__(self, node: "KeyStateNode"):
        self._node = node
        self._key: Optional[bytes] = None
        self._d: Optional[dict] = None

    @property
    def key(self) -> Optional[bytes]:
        return self._key

    def get(self, name: str = "value", default: Any = None) -> Any:
        d = self._d
        if d is None:
            return default
        return d.get(name, default)

    def exists(self, name: str = "value") -> bool:
        return self._d is not None and name in self._d

    def set(self, name: str, value: Any) -> None:
        node = self._node
        d = self._d
        if d is None:
            d = self._d = node.data[self._key] = {}
        d[name] = value
        node.touch(self._key)

    def delete(self, name: str = "value") -> None:
        d = self._d
        if d is not None and name in d:
            del d[name]
            self._node.dirty.add(self._key)

    def clear(self) -> None:
        if self._d is not None:
            self._d.clear()
            self._node.dirty.add(self._key)


class KeyStateNode(StatefulNode):
    """map / filter / flat_map with ``stateful=True``: ``fn(value, state)`` (``fn(value, key,
    timestamp_ms, state)`` with ``metadata=True``). With ``ttl_ms``, a key's state expires once
    the operator's stream time is ``ttl_ms`` past the last ``set`` of it."""

    __slots__ = ("fn", "kind", "metadata", "ttl", "data", "touched", "dirty", "state")

    def __init__(self, op_id: int, fn: Callable, kind: str, metadata: bool,
                 ttl_ms: Optional[int]):
        super().__init__(op_id)
        self.fn = fn
        self.kind = kind
        self.metadata = metadata
        self.ttl = ttl_ms
        self.data: Dict[Optional[bytes], dict] = {}
        self.touched: Dict[Optional[bytes], int] = {}  # with ttl: key -> stream time of last set
        self.dirty: set = set()
        self.state = State(self)

    def touch(self, key: Optional[bytes]) -> None:
        self.dirty.add(key)
        if self.ttl is not None:
            touched = self.touched
            touched.pop(key, None)
            touched[key] = self.st  # insertion order = stream-time order (st never decreases)

    def push(self, items: List[Item]) -> None:
        f = self.fn
        kind = self.kind
        meta = self.metadata
        state = self.state
        data = self.data
        ttl = self.ttl
        touched = self.touched
        out: List[Item] = []
        append = out.append
        st = self.st
        for k, v, t in items:
            if t > st:
                st = self.st = t
            d = data.get(k)
            if ttl is not None and d is not None and touched.get(k, st) + ttl <= st:
                del data[k]  # expired: as if never set
                touched.pop(k, None)
                self.dirty.add(k)
                d = None
            state._key = k
            state._d = d
            r = f(v, k, t, state) if meta else f(v, state)
            if kind == "map":
                append((k, r, t))
            elif kind == "filter":
                if r:
                    append((k, v, t))
            else:
                for x in r:
                    append((k, x, t))
            if state._d is not None and not state._d and k in data:
                del data[k]  # emptied: no entry (a tombstone at the next commit)
                touched.pop(k, None)
        if ttl is not None:
            self._expire()
        state._d = None
        self.emit(out)

    def _expire(self) -> None:
        touched = self.touched
        limit = self.st - self.ttl
        while touched:
            k = next(iter(touched))
            if touched[k] > limit:
                break
            del touched[k]
            self.data.pop(k, None)
            self.dirty.add(k)

    def dirty_entries(self) -> List[Tuple[bytes, Optional[bytes]]]:
        prefix = self.prefix
        data = self.data
        out = []
        for k in self.dirty:
            d = data.get(k)
            if d is None:
                out.append((prefix + enc_key(k), None))
            elif self.ttl is None:
                out.append((prefix + enc_key(k), _DUMPS(d, _PROTO)))
            else:
                out.append((prefix + enc_key(k), _DUMPS((d, self.touched[k]), _PROTO)))
        self.dirty = set()
        self.note_sizes(out)
        return out

    def restore(self, entries: Sequence[Tuple[bytes, bytes]]) -> None:
        rows = []
        for raw, value in entries:
            k = dec_key(raw)
            if self.ttl is None:
                self.data[k] = _LOADS(value)
            else:
                d, when = _LOADS(value)
                rows.append((when, k, d))
        rows.sort(key=lambda r: r[0])
        for when, k, d in rows:
            self.data[k] = d
            self.touched[k] = when

    def entries(self) -> int:
        return len(self.data)

    def items(self) -> Dict[Optional[bytes], dict]:
        return self.data


# ------------------------------------------------------------------------------ windows
class WindowNode(StatefulNode):
    """Common parts of the window operators: the aggregation and the three outputs (results
    when a window closes, results on every update, late items)."""

    __slots__ = ("agg", "grace", "final", "current", "late_out", "is_count")

    def __init__(self, op_id: int, agg: Any, grace: int, final: List[Node],
                 current: List[Node], late_out: List[Node]):
        super().__init__(op_id)
        self.agg = agg
        self.grace = grace
        self.final = final
        self.current = current
        self.late_out = late_out
        self.is_count = type(agg) is Count  # a plain count: a loop without function calls

    @staticmethod
    def _send(children: List[Node], items: List[Item]) -> None:
        if items:
            for child in children:
                child.push(items)


class TimeWindowNode(WindowNode):
    """Tumbling (step == size) and hopping windows: ``[start, start + size)`` for every start
    that is a multiple of ``step`` (and >= 0). A window closes (is emitted, with ``final``, and dropped)
    once the operator's stream time reaches ``end + grace``; an item whose window has closed is
    late (for hopping windows: late if any of its windows has closed; it still counts in the
    others)."""

    __slots__ = ("size", "step", "wins", "starts", "dirty", "dead", "flushed", "next_close")

    def __init__(self, op_id: int, size: int, step: int, agg: Any, grace: int,
                 final: List[Node], current: List[Node], late_out: List[Node]):
        super().__init__(op_id, agg, grace, final, current, late_out)
        self.size = size
        self.step = step
        self.wins: Dict[int, Dict[Optional[bytes], Any]] = {}
        self.starts: List[int] = []  # heap of open window starts
        self.dirty: Dict[int, set] = {}
        self.dead: List[Tuple[int, List[Optional[bytes]]]] = []  # closed, to tombstone
        self.flushed: set = set()  # windows with entries in the changelog
        self.next_close: float = _INF

    def _open(self, ws: int) -> Dict[Optional[bytes], Any]:
        d = self.wins[ws] = {}
        heapq.heappush(self.starts, ws)
        close = ws + self.size + self.grace
        if close < self.next_close:
            self.next_close = close
        return d

    def push(self, items: List[Item]) -> None:
        size = self.size
        reach = size + self.grace
        wins = self.wins
        dirty = self.dirty
        agg = self.agg
        init, add, result = agg.init, agg.add, agg.result
        want_current = bool(self.current)
        count = self.is_count and not want_current
        current: List[Item] = []
        late: List[Item] = []
        st = self.st
        cws = None
        cd: Dict[Optional[bytes], Any] = {}
        cdirty: set = set()
        tumbling = self.step == size
        for item in items:
            k, v, t = item
            if t > st:
                st = self.st = t
            if tumbling:
                ws = t - t % size
                if ws + reach <= st:
                    late.append(item)
                    continue
                if ws != cws:
                    cws = ws
                    cd = wins.get(ws)
                    if cd is None:
                        cd = self._open(ws)
                    cdirty = dirty.setdefault(ws, set())
                if count:
                    cd[k] = cd.get(k, 0) + 1
                else:
                    acc = cd.get(k, _MISSING)
                    acc = cd[k] = add(init() if acc is _MISSING else acc, v)
                    if want_current:
                        current.append((k, {"start": ws, "end": ws + size,
                                            "value": result(acc)}, ws))
                cdirty.add(k)
            else:
                is_late = False
                step = self.step
                # The first start in (t - size, t]; no window starts before 0 (as in Kafka).
                ws = max(0, (t - size) // step * step + step)
                while ws <= t:
                    if ws + reach <= st:
                        is_late = True
                    else:
                        d = wins.get(ws)
                        if d is None:
                            d = self._open(ws)
                        acc = d.get(k, _MISSING)
                        acc = d[k] = add(init() if acc is _MISSING else acc, v)
                        dirty.setdefault(ws, set()).add(k)
                        if want_current:
                            current.append((k, {"start": ws, "end": ws + size,
                                                "value": result(acc)}, ws))
                    ws += step
                if is_late:
                    late.append(item)
            if st >= self.next_close:
                if current:
                    self._send(self.current, current)
                    current = []
                self._close(st)
                cws = None
        if late:
            self.late += len(late)
            self._send(self.late_out, late)
        self._send(self.current, current)

    def _close(self, st: int) -> None:
        reach = self.size + self.grace
        starts = self.starts
        out: List[Item] = []
        result = self.agg.result
        while starts and starts[0] + reach <= st:
            ws = heapq.heappop(starts)
            d = self.wins.pop(ws)
            self.dirty.pop(ws, None)
            if ws in self.flushed:
                self.flushed.discard(ws)
                self.dead.append((ws, list(d)))
            if self.final:
                end = ws + self.size
                for k in sorted_keys(d):
                    out.append((k, {"start": ws, "end": end, "value": result(d[k])}, ws))
        self.next_close = starts[0] + reach if starts else _INF
        self._send(self.final, out)

    def dirty_entries(self) -> List[Tuple[bytes, Optional[bytes]]]:
        prefix = self.prefix
        out: List[Tuple[bytes, Optional[bytes]]] = []
        for ws, keys in self.dead:
            head = prefix + ws.to_bytes(8, "big", signed=True)
            out.extend([(head + enc_key(k), None) for k in keys])
        for ws, keys in self.dirty.items():
            d = self.wins[ws]
            head = prefix + ws.to_bytes(8, "big", signed=True)
            out.extend([(head + enc_key(k), _DUMPS(d[k], _PROTO)) for k in keys])
            self.flushed.add(ws)
        self.dead = []
        self.dirty = {}
        self.note_sizes(out)
        return out

    def restore(self, entries: Sequence[Tuple[bytes, bytes]]) -> None:
        for raw, value in entries:
            ws = int.from_bytes(raw[:8], "big", signed=True)
            d = self.wins.get(ws)
            if d is None:
                d = self._open(ws)
            d[dec_key(raw[8:])] = _LOADS(value)
        self.flushed = set(self.wins)

    def entries(self) -> int:
        return sum(map(len, self.wins.values()))


class SessionWindowNode(WindowNode):
    """Session windows per key: records less than ``gap`` apart (``t <= last + gap``) belong to
    one session ``[first, last + 1)``. A session closes once the stream time passes
    ``last + gap + grace``; an item whose (merged) session would already be closed is late."""

    __slots__ = ("gap", "sess", "heap", "dirty")

    def __init__(self, op_id: int, gap: int, agg: Any, grace: int, final: List[Node],
                 current: List[Node], late_out: List[Node]):
        super().__init__(op_id, agg, grace, final, current, late_out)
        self.gap = gap
        self.sess: Dict[Optional[bytes], List[list]] = {}  # key -> [[first, last, acc], ...]
        self.heap: List[Tuple[int, bytes]] = []  # (close time, encoded key), may be stale
        self.dirty: set = set()

    def push(self, items: List[Item]) -> None:
        gap = self.gap
        grace = self.grace
        agg = self.agg
        init, add, merge, result = agg.init, agg.add, agg.merge, agg.result
        sess = self.sess
        current: List[Item] = []
        late: List[Item] = []
        st = self.st
        for item in items:
            k, v, t = item
            if t > st:
                st = self.st = t
            lst = sess.get(k)
            first = last = t
            acc = _MISSING
            keep = []
            if lst:
                for s in lst:
                    if s[0] - gap <= t <= s[1] + gap:
                        first = min(first, s[0])
                        last = max(last, s[1])
                        acc = s[2] if acc is _MISSING else merge(acc, s[2])
                    else:
                        keep.append(s)
            if last + gap + grace < st:
                late.append(item)
                continue
            acc = add(init() if acc is _MISSING else acc, v)
            keep.append([first, last, acc])
            keep.sort(key=lambda s: s[0])
            sess[k] = keep
            self.dirty.add(k)
            heapq.heappush(self.heap, (last + gap + grace + 1, enc_key(k)))
            if self.current:
                current.append((k, {"start": first, "end": last + 1, "value": result(acc)},
                                first))
            if self.heap[0][0] <= st:
                if current:
                    self._send(self.current, current)
                    current = []
                self._close(st)
        if late:
            self.late += len(late)
            self._send(self.late_out, late)
        self._send(self.current, current)

    def _close(self, st: int) -> None:
        heap = self.heap
        reach = self.gap + self.grace + 1
        closing = []
        seen = set()
        while heap and heap[0][0] <= st:
            _ct, ek = heapq.heappop(heap)
            if ek in seen:
                continue
            seen.add(ek)
            k = dec_key(ek)
            lst = self.sess.get(k)
            if not lst:
                continue
            keep = []
            for s in lst:
                if s[1] + reach <= st:
                    closing.append((s[1] + reach, ek, k, s))
                else:
                    keep.append(s)
            if len(keep) != len(lst):
                self.dirty.add(k)
                if keep:
                    self.sess[k] = keep
                else:
                    del self.sess[k]
        if closing and self.final:
            closing.sort(key=lambda c: (c[0], c[1], c[3][0]))
            result = self.agg.result
            self._send(self.final, [(k, {"start": s[0], "end": s[1] + 1, "value": result(s[2])},
                                     s[0]) for _ct, _ek, k, s in closing])

    def dirty_entries(self) -> List[Tuple[bytes, Optional[bytes]]]:
        prefix = self.prefix
        out = []
        for k in self.dirty:
            lst = self.sess.get(k)
            out.append((prefix + enc_key(k),
                        None if not lst else _DUMPS([tuple(s) for s in lst], _PROTO)))
        self.dirty = set()
        self.note_sizes(out)
        return out

    def restore(self, entries: Sequence[Tuple[bytes, bytes]]) -> None:
        reach = self.gap + self.grace + 1
        for raw, value in entries:
            k = dec_key(raw)
            lst = [list(s) for s in _LOADS(value)]
            self.sess[k] = lst
            for s in lst:
                self.heap.append((s[1] + reach, bytes(raw)))
        heapq.heapify(self.heap)

    def entries(self) -> int:
        return sum(map(len, self.sess.values()))
