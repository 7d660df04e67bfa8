"""The stream definitions a user builds (:class:`Stream`, :class:`Window`, :class:`Windowed`,
:class:`Table`): a tree of operator definitions per *stage*. A stage reads one topic; ``key_by``
ends a stage with a write to an internal repartition topic and starts the next stage on it.
Nothing runs here: every task builds its own runtime nodes from these definitions (``build``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import nodes as N
from .aggregations import Agg, Aggregation, Count, Max, Mean, Min, Reduce, Sum, check_aggregation
from ._engine import ConfigError, Topic
from .serde import BYTES, PICKLE, check_serde

__all__ = ["Stream", "Window", "Windowed", "Table", "Topology"]


def _fn(fn: Any, what: str) -> Callable:
    if not callable(fn):
        raise TypeError(f"{what}: expected a function, got {fn!r}")
    return fn


def _ms(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an int of milliseconds >= {minimum}, got {value!r}")
    return value


# ------------------------------------------------------------------------------ definitions
class Def:
    """An operator definition; ``children`` receive its output."""

    def __init__(self) -> None:
        self.children: List[Def] = []

    def make(self, ctx: "BuildContext") -> N.Node:
        raise NotImplementedError

    def build(self, ctx: "BuildContext") -> N.Node:
        node = self.make(ctx)
        node.children = [c.build(ctx) for c in self.children]
        return node


class BuildContext:
    """What a task hands to the definitions while building its nodes."""

    def __init__(self, task: Any):
        self.task = task
        self.stateful: List[N.StatefulNode] = []


class FnDef(Def):
    def __init__(self, cls: type, fn: Callable, metadata: bool):
        super().__init__()
        self.cls, self.fn, self.metadata = cls, fn, metadata

    def make(self, ctx: BuildContext) -> N.Node:
        return self.cls(self.fn, self.metadata)


class KeyStateDef(Def):
    def __init__(self, op_id: int, name: str, fn: Callable, kind: str, metadata: bool,
                 ttl_ms: Optional[int]):
        super().__init__()
        self.op_id, self.name, self.fn, self.kind = op_id, name, fn, kind
        self.metadata, self.ttl_ms = metadata, ttl_ms

    def make(self, ctx: BuildContext) -> N.Node:
        node = N.KeyStateNode(self.op_id, self.fn, self.kind, self.metadata, self.ttl_ms)
        ctx.stateful.append(node)
        return node


class JoinDef(Def):
    def __init__(self, table: "Table", fn: Callable, how: str, on: Optional[Callable]):
        super().__init__()
        self.table, self.fn, self.how, self.on = table, fn, how, on

    def make(self, ctx: BuildContext) -> N.Node:
        ctx.task.tables.add(self.table)
        return N.JoinNode(self.table, self.fn, self.how, self.on)


class SinkDef(Def):
    def __init__(self, topic: str, serde: Any, partitions: Optional[int], internal: bool = False):
        super().__init__()
        self.topic, self.serde, self.partitions, self.internal = topic, serde, partitions, internal

    def make(self, ctx: BuildContext) -> N.Node:
        return N.SinkNode(self.serde.dumps, ctx.task.out_buffers(self.topic), ctx.task.p)


class WindowDef(Def):
    """One window operator; its outputs go to three lists of children."""

    def __init__(self, op_id: int, name: str, kind: str, size: int, step: int, grace: int,
                 agg: Any):
        super().__init__()
        self.op_id, self.name, self.kind = op_id, name, kind
        self.size, self.step, self.grace, self.agg = size, step, grace, agg
        self.final: List[Def] = []
        self.current: List[Def] = []
        self.late: List[Def] = []

    def build(self, ctx: BuildContext) -> N.Node:
        final = [c.build(ctx) for c in self.final]
        current = [c.build(ctx) for c in self.current]
        late = [c.build(ctx) for c in self.late]
        if self.kind == "session":
            node: N.WindowNode = N.SessionWindowNode(self.op_id, self.size, self.agg,
                                                     self.grace, final, current, late)
        else:
            node = N.TimeWindowNode(self.op_id, self.size, self.step, self.agg, self.grace,
                                    final, current, late)
        ctx.stateful.append(node)
        return node


class StageDef:
    """A stage: the operators run over one input topic, one task per partition."""

    def __init__(self, index: int, topic: str, serde: Any, start: str,
                 timestamp: Optional[Callable], internal: bool,
                 partitions: Optional[int] = None):
        self.index = index
        self.topic = topic
        self.serde = serde
        self.start = start
        self.timestamp = timestamp
        self.internal = internal
        self.partitions = partitions  # of an internal topic (None: as the upstream input)
        self.upstream: Optional[StageDef] = None
        self.children: List[Def] = []

    def walk(self) -> List[Def]:
        out: List[Def] = []
        todo = list(self.children)
        while todo:
            d = todo.pop(0)
            out.append(d)
            todo.extend(d.children)
            if isinstance(d, WindowDef):
                todo.extend(d.final + d.current + d.late)
        return out

    def sinks(self) -> List[SinkDef]:
        return [d for d in self.walk() if isinstance(d, SinkDef)]

    def state_ops(self) -> List[Any]:
        return [d for d in self.walk() if isinstance(d, (KeyStateDef, WindowDef))]

    def build(self, ctx: BuildContext) -> N.Node:
        root = N.Fanout()
        root.children = [c.build(ctx) for c in self.children]
        return root


class Topology:
    """A processor's stages, stateful operators and tables, as the user defines them."""

    def __init__(self, name: str):
        self.name = name
        self.stages: List[StageDef] = []
        self.ops: Dict[str, int] = {}
        self.tables: List["Table"] = []
        self.frozen = False  # set while the processor runs

    def check_building(self) -> None:
        if self.frozen:
            raise ConfigError("cannot change a processor's streams while it runs")

    def new_stage(self, topic: Optional[str], serde: Any, start: str,
                  timestamp: Optional[Callable], internal: bool,
                  partitions: Optional[int] = None) -> StageDef:
        self.check_building()
        index = len(self.stages)
        if topic is None:
            topic = f"{self.name}.repartition-{index}"
        stage = StageDef(index, topic, serde, start, timestamp, internal, partitions)
        self.stages.append(stage)
        return stage

    def source(self, topic: str, serde: Any, start: str, timestamp: Optional[Callable]
               ) -> StageDef:
        """The stage reading ``topic``: a new one, or the existing one (another branch)."""
        for stage in self.stages:
            if stage.topic == topic:
                # One stage per input topic (one consumer group member per thread): a second
                # stream of the same topic is another branch of the same reading.
                if (stage.serde, stage.start, stage.timestamp) != (serde, start, timestamp):
                    raise ConfigError(f"topic {topic!r} is already streamed with other "
                                      f"options (value, start, timestamp): branch that stream")
                return stage
        return self.new_stage(topic, serde, start, timestamp, internal=False)

    def new_op(self, name: Optional[str], kind: str) -> Tuple[int, str]:
        """An id (1, 2, ... in definition order: what the changelog keys carry) and a name."""
        self.check_building()
        op_id = len(self.ops) + 1
        if name is None:
            name = f"{kind}-{op_id}"
        elif not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty str, got {name!r}")
        if name in self.ops:
            raise ConfigError(f"two stateful operators are named {name!r}")
        self.ops[name] = op_id
        return op_id, name


# ------------------------------------------------------------------------------ user API
class Stream:
    """A stream of ``(key, value, timestamp)`` items. Operators return new streams; nothing runs
    until :meth:`Processor.run`. Functions get the value (``fn(value)``); with
    ``metadata=True`` they get ``fn(value, key, timestamp_ms)``; with ``stateful=True`` a
    :class:`State` of the item's key is passed last."""

    def __init__(self, topology: Topology, stage: StageDef, attach: List[Def]):
        self._topo = topology
        self._stage = stage
        self._attach = attach

    def _then(self, d: Def) -> "Stream":
        self._topo.check_building()
        self._attach.append(d)
        return Stream(self._topo, self._stage, d.children)

    def _stateful(self, kind: str, fn: Callable, metadata: bool, ttl_ms: Optional[int],
                  name: Optional[str]) -> "Stream":
        if ttl_ms is not None:
            _ms(ttl_ms, "ttl_ms", 1)
        op_id, name = self._topo.new_op(name, kind)
        return self._then(KeyStateDef(op_id, name, fn, kind, metadata, ttl_ms))

    def map(self, fn: Callable, *, stateful: bool = False, metadata: bool = False,
            ttl_ms: Optional[int] = None, name: Optional[str] = None) -> "Stream":
        """Replace each value with ``fn(value)``."""
        _fn(fn, "map")
        if stateful:
            return self._stateful("map", fn, metadata, ttl_ms, name)
        return self._then(FnDef(N.MapNode, fn, metadata))

    def filter(self, fn: Callable, *, stateful: bool = False, metadata: bool = False,
               ttl_ms: Optional[int] = None, name: Optional[str] = None) -> "Stream":
        """Keep the items for which ``fn(value)`` is true."""
        _fn(fn, "filter")
        if stateful:
            return self._stateful("filter", fn, metadata, ttl_ms, name)
        return self._then(FnDef(N.FilterNode, fn, metadata))

    def flat_map(self, fn: Callable, *, stateful: bool = False, metadata: bool = False,
                 ttl_ms: Optional[int] = None, name: Optional[str] = None) -> "Stream":
        """Replace each value with the values of the iterable ``fn(value)`` (same key and
        timestamp)."""
        _fn(fn, "flat_map")
        if stateful:
            return self._stateful("flat_map", fn, metadata, ttl_ms, name)
        return self._then(FnDef(N.FlatMapNode, fn, metadata))

    def foreach(self, fn: Callable, *, metadata: bool = False) -> "Stream":
        """Call ``fn(value)`` for each item (a side effect: called again for the items of an
        unfinished transaction after a crash, i.e. at least once); the items pass on."""
        _fn(fn, "foreach")
        return self._then(FnDef(N.ForeachNode, fn, metadata))

    def key_by(self, fn: Callable, *, metadata: bool = False,
               partitions: Optional[int] = None) -> "Stream":
        """Re-key: the key becomes ``fn(value)`` (bytes, str as UTF-8, or None). The items are
        repartitioned by the new key through an internal topic
        (``<processor>.repartition-<n>``), so that state and windows after this see every item
        of a key in one task. ``partitions`` of that topic default to the input's."""
        _fn(fn, "key_by")
        if partitions is not None and (isinstance(partitions, bool) or
                                       not isinstance(partitions, int) or partitions < 1):
            raise ConfigError(f"partitions must be an int >= 1, got {partitions!r}")
        topo = self._topo
        stage = topo.new_stage(None, PICKLE, "earliest", None, internal=True,
                               partitions=partitions)
        stage.upstream = self._stage
        d = FnDef(N.KeyByNode, fn, metadata)
        d.children.append(SinkDef(stage.topic, PICKLE, partitions, internal=True))
        self._attach.append(d)
        return Stream(topo, stage, stage.children)

    def join(self, table: "Table", fn: Callable[[Any, Any], Any], *, how: str = "inner",
             on: Optional[Callable[[Any], Any]] = None) -> "Stream":
        """Stream-table join: ``fn(value, row)`` where ``row`` is the table's value for the
        item's key (or for ``on(value)``). ``how="inner"`` drops items without a row,
        ``"left"`` passes ``row=None``."""
        if not isinstance(table, Table) or table.topology is not self._topo:
            raise TypeError("join needs a Table of the same processor (processor.table(...))")
        _fn(fn, "join")
        if how not in ("inner", "left"):
            raise ConfigError(f"how must be 'inner' or 'left', got {how!r}")
        if on is not None:
            _fn(on, "join(on=...)")
        return self._then(JoinDef(table, fn, how, on))

    def to(self, topic: str, *, value: Any = BYTES, partitions: Optional[int] = None
           ) -> "Stream":
        """Write the items to ``topic`` (values through serializer ``value``; created with
        ``partitions``, default the input's, if new). Keyed items go where ``Topic.publish``
        puts them. Returns this stream."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, got {type(topic).__name__}")
        check_serde(value, "value")
        self._then(SinkDef(topic, value, partitions))
        return self

    def tumbling_window(self, size_ms: int, *, grace_ms: int = 0) -> "Window":
        """Windows ``[n*size, (n+1)*size)`` of event time."""
        _ms(size_ms, "size_ms", 1)
        return Window(self, "tumbling", size_ms, size_ms, _ms(grace_ms, "grace_ms", 0))

    def hopping_window(self, size_ms: int, step_ms: int, *, grace_ms: int = 0) -> "Window":
        """Windows ``[n*step, n*step + size)``: each item falls in ``size/step`` of them."""
        _ms(size_ms, "size_ms", 1)
        _ms(step_ms, "step_ms", 1)
        if step_ms > size_ms:
            raise ConfigError(f"step_ms ({step_ms}) must be <= size_ms ({size_ms})")
        return Window(self, "hopping", size_ms, step_ms, _ms(grace_ms, "grace_ms", 0))

    def session_window(self, gap_ms: int, *, grace_ms: int = 0) -> "Window":
        """Per key, items at most ``gap_ms`` apart form one session."""
        return Window(self, "session", _ms(gap_ms, "gap_ms", 0), 0,
                      _ms(grace_ms, "grace_ms", 0))


class Window:
    """A window specification; pick an aggregation to get a :class:`Windowed`."""

    def __init__(self, stream: Stream, kind: str, size: int, step: int, grace: int):
        self._stream, self._kind, self._size, self._step, self._grace = (
            stream, kind, size, step, grace)

    def aggregate(self, aggregation: Aggregation, *, name: Optional[str] = None) -> "Windowed":
        """Aggregate with any :class:`~logstore.processing.Aggregation`."""
        check_aggregation(aggregation, "aggregate")
        if self._kind == "session" and not getattr(aggregation, "mergeable", True):
            raise ConfigError("session windows merge sessions: the aggregation needs a merge "
                              "(Reduce(..., merge=fn))")
        s = self._stream
        op_id, name = s._topo.new_op(name, self._kind)
        d = WindowDef(op_id, name, self._kind, self._size, self._step, self._grace, aggregation)
        s._then(d)
        return Windowed(s, d)

    def count(self, *, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Count(), name=name)

    def sum(self, fn: Optional[Callable] = None, *, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Sum(fn), name=name)

    def min(self, fn: Optional[Callable] = None, *, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Min(fn), name=name)

    def max(self, fn: Optional[Callable] = None, *, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Max(fn), name=name)

    def mean(self, fn: Optional[Callable] = None, *, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Mean(fn), name=name)

    def reduce(self, reducer: Callable, initializer: Optional[Callable] = None, *,
               merge: Optional[Callable] = None, name: Optional[str] = None) -> "Windowed":
        return self.aggregate(Reduce(reducer, initializer, merge), name=name)

    def agg(self, *, name: Optional[str] = None, **aggregations: Aggregation) -> "Windowed":
        """Several aggregations at once: the result value is ``{name: result}``."""
        return self.aggregate(Agg(**aggregations), name=name)


class Windowed:
    """An aggregated window: choose when results are emitted. Result items keep the key; the
    value is ``{"start": ms, "end": ms (exclusive), "value": result}`` and the timestamp is the
    window start."""

    def __init__(self, stream: Stream, d: WindowDef):
        self._stream = stream
        self._def = d

    def final(self) -> Stream:
        """One result per window and key, when the window closes (stream time past its end
        plus the grace period): Kafka Streams' ``suppress(untilWindowCloses)``."""
        return Stream(self._stream._topo, self._stream._stage, self._def.final)

    def current(self) -> Stream:
        """The updated result on every item that changes a window."""
        return Stream(self._stream._topo, self._stream._stage, self._def.current)

    def late(self) -> Stream:
        """The items that arrived after their window closed (original key, value, timestamp);
        they are also counted in the ``late`` metric."""
        return Stream(self._stream._topo, self._stream._stage, self._def.late)


class Table:
    """A topic read as a table (latest value per key; a tombstone deletes), for stream-table
    joins. Every process holds the whole table in memory and follows the topic: a task
    refreshes it at the start of each transaction."""

    def __init__(self, topology: Topology, topic: str, serde: Any):
        self.topology = topology
        self.topic_name = topic
        self.serde = serde
        self.rows: Dict[Optional[bytes], Any] = {}
        self._topic: Optional[Topic] = None
        self._positions: List[int] = []
        self._lock = threading.Lock()

    def attach(self, topic: Topic) -> None:
        with self._lock:
            self._topic = topic
            self._positions = [log.start_offset for log in topic.partitions]
            self.rows = {}
        self.refresh()

    def refresh(self) -> int:
        """Read what was written to the table topic since the last refresh; return how many
        records that was."""
        topic = self._topic
        if topic is None:
            return 0
        loads = self.serde.loads
        n = 0
        with self._lock:
            rows = self.rows
            for p, log in enumerate(topic.partitions):
                pos = max(self._positions[p], log.start_offset)
                end = log.end_offset
                if pos >= end:
                    continue
                for rec in log.replay(pos, end):
                    if rec.value is None:
                        rows.pop(rec.key, None)
                    else:
                        rows[rec.key] = loads(rec.value)
                    n += 1
                self._positions[p] = end
        return n

    def get(self, key: Any, default: Any = None) -> Any:
        return self.rows.get(N.to_key(key), default)

    def __len__(self) -> int:
        return len(self.rows)
