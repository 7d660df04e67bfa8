"""The item columns of a batch's raw payload (keys, values, headers), in both batch versions,
and the pieces of a record that are not columns: encoded headers blocks and the shared empty
headers mapping.

Version 1 stores a *length* per item (-1 = null): finding item ``j`` means summing the ``j``
lengths before it (:func:`lengths_before`). Version 2 stores where each item *ends* (bits 0-30,
a position in the raw payload; bit 31 set for a null key or value): item ``j`` is found from two
adjacent entries, ``[end[j-1], end[j])``, so a reader needs (and checks) eight bytes of the
column, not ``4 * j``. The entry before a column's first item is the previous column's last
one, i.e. the end of the previous section, so that rule holds for ``j = 0`` too, except for the
first item column, whose first item starts right after the fixed-width columns.

No I/O; both halves of FORMAT.md's "Raw payload" live here.
"""

from __future__ import annotations

import struct
from itertools import accumulate, repeat
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import CorruptLogError
from ..record import Record
from .header import ATTR_HEADERS, ATTR_KEYS, END_MASK, NULL_BIT, U16, U32, int_struct


class FrozenHeaders(dict):
    """An empty, immutable ``dict``: the ``headers`` of every record that has none.

    Records without headers share this one object instead of each getting a fresh ``{}``
    (building millions of records, that dict was a measurable part of the cost). It is a
    ``dict`` (``isinstance``, ``json.dumps``, ``== {}``, ``dict(h)`` and pickling behave as
    for ``{}``), but every mutating method raises ``TypeError``: copy it (``dict(rec.headers)``)
    to build new headers.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the headers of a record are read-only (copy them: dict(rec.headers))")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        return dict, ()  # unpickles as a plain (mutable) empty dict

    def __repr__(self) -> str:
        return "{}"

    def copy(self) -> Dict[str, bytes]:
        return {}


EMPTY_HEADERS = FrozenHeaders()
_tuple_new = tuple.__new__


def make_records(columns: Any, count: int) -> List[Record]:
    """Records from ``columns`` (an iterable of 6-tuples: offset, timestamp, key, value,
    headers, partition, e.g. a ``zip``), built by C-level maps: ``tuple.__new__(Record, t)``
    per record, no Python frame and no ``namedtuple.__new__`` argument parsing."""
    return list(map(_tuple_new, repeat(Record, count), columns))


_FIXED: Dict[Tuple[int, int], struct.Struct] = {}


def equal_items(buf: Any, pos: int, first: int, ends: Any) -> Optional[Tuple[bytes, ...]]:
    """If the items whose stored end positions are ``ends`` (the first starting at ``first``,
    positions relative to ``buf[pos]``) all have the same size and none is null: the items,
    cut with one struct call (~6x cheaper than slicing each); else None. Fixed-size values
    (and keys) are common, and this is the per-record cost of every replay."""
    n = len(ends)
    last = ends[-1]
    if last >= NULL_BIT:
        return None
    size, rest = divmod(last - first, n)
    if rest or size < 0 or ends != (tuple(range(first + size, last + 1, size)) if size
                                    else (first,) * n):
        return None
    st = _FIXED.get((size, n))
    if st is None:
        if len(_FIXED) >= 64:
            _FIXED.clear()
        st = _FIXED[(size, n)] = struct.Struct(f"{size}s" * n)
    return st.unpack_from(buf, pos + first)


def parse_headers(raw: bytes, path: Optional[str], position: int) -> Dict[str, bytes]:
    """Decode one record's headers block (``u16 name length, name, u32 value length, value``
    entries); :class:`CorruptLogError` at ``position`` if it is malformed."""
    out: Dict[str, bytes] = {}
    p = 0
    end = len(raw)
    try:
        while p < end:
            (nl,) = U16.unpack_from(raw, p)
            p += 2
            name = raw[p : p + nl].decode("utf-8")
            p += nl
            (vl,) = U32.unpack_from(raw, p)
            p += 4
            if p + vl > end or len(name.encode("utf-8")) != nl:
                raise ValueError
            out[name] = raw[p : p + vl]
            p += vl
    except (ValueError, struct.error, UnicodeDecodeError):
        raise CorruptLogError("malformed record headers", path, position) from None
    return out


# ------------------------------------------------------------------------------- version 1
_SUM_STRUCTS: List[Optional[struct.Struct]] = [None] * 2049  # "<{n}I", by n, made on first use


def lengths_before(buf: Any, col: int, count: int) -> int:
    """(Version 1) Sum of the non-negative int32 lengths among the first ``count`` entries at
    ``col`` (-1 marks null and counts 0). ``buf`` is bytes or an mmap. struct beats numpy's
    call overhead for small counts."""
    if count <= 2048:
        st = _SUM_STRUCTS[count]
        if st is None:
            st = _SUM_STRUCTS[count] = struct.Struct(f"<{count}I")
        # Read as unsigned, a null (-1) adds 2**32 - 1. The other lengths of a batch sum below
        # MAX_BATCH_LENGTH < 2**31, so the number of nulls is the total rounded to the nearest
        # multiple of 2**32: one C-level sum, no search for nulls. (Lengths a crafted batch
        # sums wrongly this way are caught by the callers' bounds checks, as before.)
        total = sum(st.unpack_from(buf, col))
        return total - ((total + 0x80000000) >> 32) * 0xFFFFFFFF
    arr = np.frombuffer(buf, dtype="<i4", count=count, offset=col)
    return int(arr.sum()) + int(np.count_nonzero(arr < 0))


_ITEM_COLUMNS = (("key", ATTR_KEYS, -1), ("value", 0, -1), ("header", ATTR_HEADERS, 0))


def length_columns(buf: Any, pos: int, n: int, attributes: int, data_start: int, end: int,
                   path: Optional[str], file_pos: Optional[int]) -> List[Tuple[Any, Any]]:
    """(Version 1) The key, value and header length columns of a batch (stored in that order
    from ``buf[pos]``; key and header ones only when ``attributes`` says so), each as
    ``(lengths, starts)``: the int32 lengths and where each item begins in ``buf``, items being
    stored one after another from ``data_start`` (keys, then values, then headers).
    ``(None, None)`` for an absent column. Checks: no length below -1 (below 0 for headers) and
    the lengths adding up to ``end`` exactly; CorruptLogError otherwise."""
    ints = int_struct("i", n)
    out: List[Tuple[Any, Any]] = []
    start = data_start
    for name, flag, minimum in _ITEM_COLUMNS:
        if flag and not attributes & flag:
            out.append((None, None))
            continue
        lens = list(ints.unpack_from(buf, pos))
        pos += 4 * n
        low = min(lens)
        if low < minimum:
            raise CorruptLogError(f"negative {name} length", path, file_pos)
        starts = list(accumulate(lens if low >= 0 else [x if x > 0 else 0 for x in lens],
                                 initial=start))
        start = starts.pop()
        out.append((lens, starts))
    if start != end:
        raise CorruptLogError("record lengths do not add up to the payload length", path,
                              file_pos)
    return out


# ------------------------------------------------------------------------------- version 2
def item_ends(raw: Any, first: int, base: int, nullable: bool, what: str,
              path: Optional[str], file_pos: Optional[int]) -> Tuple[List[int], List[int], int]:
    """(Version 2) One column's stored end entries ``raw`` (ints) as ``(lengths, starts,
    end)``: lengths with -1 for a null item, starts as positions in the buffer (``base`` = where
    the raw payload starts in it), ``end`` = where the last item ends. ``first``: where the
    first item starts (buffer position). Checks that the ends never go back and that a null item
    is empty (and allowed: ``nullable``); CorruptLogError otherwise."""
    if not raw:
        return [], [], first
    if max(raw) < NULL_BIT:  # no nulls: all C-level
        ends = [e + base for e in raw] if base else list(raw)
        starts = [first]
        starts += ends[:-1]
        lens = [e - s for e, s in zip(ends, starts)]
        if min(lens) < 0:
            raise CorruptLogError(f"{what} ends go back", path, file_pos)
        return lens, starts, ends[-1]
    if not nullable:
        raise CorruptLogError(f"a null {what} (headers cannot be null)", path, file_pos)
    lens = []
    starts = []
    cur = first
    for e in raw:
        p = (e & END_MASK) + base
        if e & NULL_BIT:
            if p != cur:
                raise CorruptLogError(f"a null {what} is not empty", path, file_pos)
            lens.append(-1)
        else:
            if p < cur:
                raise CorruptLogError(f"{what} ends go back", path, file_pos)
            lens.append(p - cur)
        starts.append(cur)
        cur = p
    return lens, starts, cur


def end_columns(buf: Any, pos: int, n: int, attributes: int, base: int, data_start: int,
                end: int, path: Optional[str], file_pos: Optional[int]) -> List[Tuple[Any, Any]]:
    """(Version 2) :func:`length_columns` for end columns: the key, value and header columns
    stored from ``buf[pos]``, each as ``(lengths, starts)`` (lengths -1 for null, starts as
    positions in ``buf``), ``base`` being where the raw payload starts in ``buf``. Checks that
    the first item starts at ``data_start``, that the ends never go back and reach ``end``
    exactly, and that nulls are empty (and never headers)."""
    ints = int_struct("I", n)
    out: List[Tuple[Any, Any]] = []
    start = data_start
    for name, flag, minimum in _ITEM_COLUMNS:
        if flag and not attributes & flag:
            out.append((None, None))
            continue
        lens, starts, start = item_ends(ints.unpack_from(buf, pos), start, base, minimum < 0,
                                        name, path, file_pos)
        pos += 4 * n
        out.append((lens, starts))
    if start != end:
        raise CorruptLogError("record ends do not reach the end of the payload", path, file_pos)
    return out


def end_columns_numpy(data: Any, pos: int, n: int, attributes: int, data_start: int, end: int,
                      path: Optional[str], file_pos: Optional[int]) -> Dict[str, Any]:
    """(Version 2, large batches) :func:`end_columns` with numpy, over a payload ``data``
    (positions are payload positions): ``{"key_lengths": int32 array or None, "key_offsets":
    int64 array or None, ...}`` for key, value and header."""
    out: Dict[str, Any] = {}
    start = data_start
    for name, flag, minimum in _ITEM_COLUMNS:
        if flag and not attributes & flag:
            out[name + "_lengths"] = out[name + "_offsets"] = None
            continue
        raw = np.frombuffer(data, dtype="<u4", count=n, offset=pos)
        pos += 4 * n
        ends = (raw & END_MASK).astype(np.int64)
        starts = np.empty(n, dtype=np.int64)
        starts[0] = start
        starts[1:] = ends[:-1]
        lens = ends - starts
        if n and int(lens.min()) < 0:
            raise CorruptLogError(f"{name} ends go back", path, file_pos)
        nulls = raw >= NULL_BIT
        if nulls.any():
            if minimum == 0:
                raise CorruptLogError(f"a null {name} (headers cannot be null)", path, file_pos)
            if lens[nulls].any():
                raise CorruptLogError(f"a null {name} is not empty", path, file_pos)
            lens[nulls] = -1
        out[name + "_lengths"] = lens.astype(np.int32)
        out[name + "_offsets"] = starts
        start = int(ends[-1]) if n else start
    if start != end:
        raise CorruptLogError("record ends do not reach the end of the payload", path, file_pos)
    return out
