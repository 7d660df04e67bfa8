"""The range options ``replay``, ``consume`` and ``tail`` share: ``--from-offset``,
``--to-offset``, ``--from-time``, ``--to-time`` and ``--max``, and where they put each log's
range.

Offsets and times give a half-open range ``[from, to)`` per log (per partition of a store): a
time becomes the first offset whose record timestamp is >= it (``Log.offset_for_time``), so
``--from-time A --to-time B`` selects the records from the first one at or after A up to, not
including, the first one at or after B. Given both, the later start and the earlier end win.
``--max N`` bounds the records written in all (over every partition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import click

from .output import TIME_HELP, parse_time


@dataclass(frozen=True)
class Range:
    from_offset: Optional[int] = None
    to_offset: Optional[int] = None
    from_time: Optional[int] = None  # ms
    to_time: Optional[int] = None  # ms
    max_records: Optional[int] = None

    @property
    def bounded(self) -> bool:
        """Whether the range ends before the end of the log (an offset or time end)."""
        return self.to_offset is not None or self.to_time is not None


def range_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the five range options (their values reach the command as ``from_offset``,
    ``to_offset``, ``from_time``, ``to_time``, ``max_records``; see :func:`parse_range`)."""
    f = click.option("--max", "max_records", type=click.IntRange(min=1), default=None,
                     metavar="N", help="At most N records in all (over every partition).")(f)
    f = click.option("--to-time", default=None, metavar="TIME",
                     help="End before the first record with a timestamp >= TIME "
                          f"({TIME_HELP}).")(f)
    f = click.option("--from-time", default=None, metavar="TIME",
                     help="Start at the first record with a timestamp >= TIME (same forms; "
                          "with --from-offset, the later start wins).")(f)
    f = click.option("--to-offset", type=click.IntRange(min=0), default=None, metavar="N",
                     help="End before offset N (exclusive, like range()).")(f)
    f = click.option("--from-offset", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Start at offset N.")(f)
    return f


def parse_range(from_offset: Optional[int], to_offset: Optional[int], from_time: Optional[str],
                to_time: Optional[str], max_records: Optional[int]) -> Range:
    """The options as a :class:`Range` (times parsed once, so ``-1h`` means the same instant for
    every partition); a usage error for an empty-by-construction range."""
    if from_offset is not None and to_offset is not None and to_offset < from_offset:
        raise click.BadParameter(f"--to-offset {to_offset} is below --from-offset {from_offset} "
                                 f"(the range is [from, to), like range())",
                                 param_hint="--to-offset")
    ft = None if from_time is None else parse_time(from_time, "--from-time")
    tt = None if to_time is None else parse_time(to_time, "--to-time")
    if ft is not None and tt is not None and tt < ft:
        raise click.BadParameter(f"--to-time {to_time} is before --from-time {from_time}",
                                 param_hint="--to-time")
    return Range(from_offset, to_offset, ft, tt, max_records)


def log_bounds(log: Any, r: Range, several: bool) -> Tuple[int, int]:
    """``[start, stop)`` of ``log`` for range ``r``, the end fixed now. ``several``: one of a
    store's partitions, where the offsets apply to every partition and are clamped to each
    (one that ends before ``--from-offset`` gives nothing); a single log gets the range as
    asked, so that ``Log.replay`` refuses a start past its end (a usage error, exit 2)."""
    end = log.end_offset
    begin = log.start_offset
    start = begin if r.from_offset is None else r.from_offset
    if r.from_time is not None:
        start = max(start, log.offset_for_time(r.from_time))
    stop = end if r.to_offset is None else r.to_offset
    if r.to_time is not None:
        stop = min(stop, log.offset_for_time(r.to_time))
    if several:
        start = min(max(start, begin), end)
    stop = min(max(stop, start), end)
    return start, stop
