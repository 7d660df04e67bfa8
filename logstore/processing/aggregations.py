"""Window aggregations: what a window computes from the values that fall into it.

An aggregation is four small functions over an *accumulator* (which must be picklable: it is
what the changelog stores):

- ``init()``: the accumulator of an empty window;
- ``add(acc, value)``: the accumulator after one more value;
- ``merge(a, b)``: two accumulators as one (session windows merge sessions);
- ``result(acc)``: what the window emits.

Provided: :class:`Count`, :class:`Sum`, :class:`Min`, :class:`Max`, :class:`Mean`,
:class:`Reduce` and :class:`Agg` (several named aggregations at once, emitting a dict).
``Sum``, ``Min``, ``Max`` and ``Mean`` take an optional function that picks the number from a
value (``Sum(lambda v: v["amount"])``); without it the value itself is used.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ._engine import ConfigError

__all__ = ["Aggregation", "Count", "Sum", "Min", "Max", "Mean", "Reduce", "Agg"]

_EMPTY = None  # accumulator of Min/Max/Reduce before the first value


class Aggregation:
    """Base class; subclass it (or duck-type it) for a custom aggregation."""

    mergeable = True

    def init(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, value: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any) -> Any:
        return acc


def _pick(fn: Optional[Callable[[Any], Any]], what: str) -> Optional[Callable[[Any], Any]]:
    if fn is not None and not callable(fn):
        raise TypeError(f"{what}(fn): fn must be callable, got {fn!r}")
    return fn


class Count(Aggregation):
    """Number of values."""

    def init(self) -> int:
        return 0

    def add(self, acc: int, value: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b


class _OfValue(Aggregation):
    """An aggregation of ``fn(value)`` (or of the value itself)."""

    def __init__(self, fn: Optional[Callable[[Any], Any]] = None):
        self.fn = _pick(fn, type(self).__name__)


class Sum(_OfValue):
    """Sum of ``fn(value)`` (or of the values)."""

    def init(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any) -> Any:
        return acc + (value if self.fn is None else self.fn(value))

    def merge(self, a: Any, b: Any) -> Any:
        return a + b


class Min(_OfValue):
    """Smallest ``fn(value)`` (None for no value)."""

    def init(self) -> Any:
        return _EMPTY

    def add(self, acc: Any, value: Any) -> Any:
        x = value if self.fn is None else self.fn(value)
        return x if acc is None or x < acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else min(a, b)


class Max(_OfValue):
    """Largest ``fn(value)`` (None for no value)."""

    def init(self) -> Any:
        return _EMPTY

    def add(self, acc: Any, value: Any) -> Any:
        x = value if self.fn is None else self.fn(value)
        return x if acc is None or x > acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else max(a, b)


class Mean(_OfValue):
    """Arithmetic mean of ``fn(value)``; the accumulator is ``(sum, count)``."""

    def init(self) -> tuple:
        return (0, 0)

    def add(self, acc: tuple, value: Any) -> tuple:
        return (acc[0] + (value if self.fn is None else self.fn(value)), acc[1] + 1)

    def merge(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, acc: tuple) -> Optional[float]:
        return acc[0] / acc[1] if acc[1] else None


class Reduce(Aggregation):
    """A custom fold: ``initializer(first value)`` (default: the value itself), then
    ``reducer(acc, value)`` for every further value. Session windows also need ``merge(a, b)``
    (two accumulators as one)."""

    def __init__(self, reducer: Callable[[Any, Any], Any],
                 initializer: Optional[Callable[[Any], Any]] = None,
                 merge: Optional[Callable[[Any, Any], Any]] = None):
        if not callable(reducer):
            raise TypeError(f"Reduce(reducer): reducer must be callable, got {reducer!r}")
        self.reducer = reducer
        self.initializer = _pick(initializer, "Reduce initializer")
        self._merge = _pick(merge, "Reduce merge")
        self.mergeable = merge is not None

    def init(self) -> Any:
        return _EMPTY

    def add(self, acc: Any, value: Any) -> Any:
        # The accumulator is (value,) once set, so that None stays a valid accumulator value.
        if acc is _EMPTY:
            return (value if self.initializer is None else self.initializer(value),)
        return (self.reducer(acc[0], value),)

    def merge(self, a: Any, b: Any) -> Any:
        if self._merge is None:
            raise ConfigError("Reduce(...) needs merge=fn to be used in a session window")
        if a is _EMPTY:
            return b
        if b is _EMPTY:
            return a
        return (self._merge(a[0], b[0]),)

    def result(self, acc: Any) -> Any:
        return None if acc is _EMPTY else acc[0]


class Agg(Aggregation):
    """Several named aggregations of the same values; emits ``{name: result}``."""

    def __init__(self, **aggregations: Aggregation):
        if not aggregations:
            raise ConfigError("Agg(...) needs at least one name=Aggregation()")
        for name, agg in aggregations.items():
            check_aggregation(agg, f"Agg({name}=...)")
        self.names = tuple(aggregations)
        self.parts = tuple(aggregations.values())
        self.mergeable = all(getattr(a, "mergeable", True) for a in self.parts)

    def init(self) -> tuple:
        return tuple(a.init() for a in self.parts)

    def add(self, acc: tuple, value: Any) -> tuple:
        return tuple(a.add(x, value) for a, x in zip(self.parts, acc))

    def merge(self, a: tuple, b: tuple) -> tuple:
        return tuple(p.merge(x, y) for p, x, y in zip(self.parts, a, b))

    def result(self, acc: tuple) -> Dict[str, Any]:
        return {n: p.result(x) for n, p, x in zip(self.names, self.parts, acc)}


def check_aggregation(agg: Any, what: str) -> Any:
    for name in ("init", "add", "merge", "result"):
        if not callable(getattr(agg, name, None)):
            raise TypeError(f"{what}: an aggregation needs init/add/merge/result methods "
                            f"(e.g. logstore.processing.Count()), got {agg!r}")
    return agg
