"""Random access to records: ``get``, ``get_many`` and reads of part of a batch, checking only
the bytes they use.

For a version 2 batch, :func:`extract_record` reads the two end entries of each item column
that locate the record (eight bytes each), its timestamp delta if any, and its key, value and
headers, and checks exactly the chunks holding those bytes and the header (one CRC32C call per
run of chunks: see :func:`~logstore.format.header.check_spans`), not the rest of the batch. Everything read is checked before anything is returned or trusted (entries are
read first only to know which chunks to check, and bounds-checked so that a damaged entry can
only fail the check, never misdirect a read). A version 1 batch has one CRC32C for the whole
batch: it is checked whole, as before. Compressed batches and batches with offset deltas
(compacted) are decoded whole (:func:`~logstore.format.decode.decode`).

:func:`extract_records` (``get_many``) does the same for several records of one batch, and
:func:`extract_range` (``read``/``replay``) for a run of consecutive records, building the
records with C-level maps (no Python frame per record). No I/O.
"""

from __future__ import annotations

import struct
from functools import partial
from itertools import repeat
from operator import le
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import CorruptLogError
from ..record import Record
from .columns import (
    EMPTY_HEADERS, equal_items, item_ends, length_columns, lengths_before, make_records,
    parse_headers,
)
from .decode import decode
from .header import (
    ALIGN, ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CHUNK_SHIFT_AT,
    CHUNK_SHIFT_MASK, CODEC_MASK, CRC_START, END_MASK, FORMAT_VERSION, HEADER_SIZE, I32, I64,
    KNOWN_ATTRS, KNOWN_ATTRS_V2, MAGIC_INT, MAX_BATCH_LENGTH, MAX_CHUNK_SHIFT, MIN_CHUNK_SHIFT,
    NULL_BIT, STEP, U32, U32_PAIR, VERSION_1, check_spans, check_two, check_version, crc32c,
    crc_ok, int_struct,
)

_new_record = partial(tuple.__new__, Record)  # C-level, no per-record Python frame
# The header as plain ints (the magic too: no bytes object), field positions as in HEADER.
HEADER_INTS = struct.Struct("<IIIHHqqqIIIIQ")
# What find_record reads of the target's header beyond STEP's fields: crc, version,
# attributes, base and max timestamp, record count, payload length.
_REST = struct.Struct("<4xI4xHH8xqqI4xI")
# Batches find_record does not read inline: anything but uncompressed, dense, values only.
_NOT_VALUES_ONLY = (CODEC_MASK | ATTR_OFFSET_DELTAS | ATTR_KEYS | ATTR_HEADERS | ATTR_TIMESTAMPS
                    | ~KNOWN_ATTRS_V2)
# find_record leaves to extract_record / the general route: compressed, sparse, unknown flags.
_QUICK_NOT = CODEC_MASK | ATTR_OFFSET_DELTAS | ~KNOWN_ATTRS_V2
_QUICK_NOT_V1 = CODEC_MASK | ATTR_OFFSET_DELTAS | ~KNOWN_ATTRS
# Batches read whole (decoded): compressed, or with offset deltas, or unknown attributes.
_WHOLE = CODEC_MASK | ATTR_OFFSET_DELTAS | ~KNOWN_ATTRS_V2
_SPARSE_ITEMS = ATTR_KEYS | ATTR_HEADERS | ATTR_TIMESTAMPS


def extract_record(buf: Any, h: Any, offset: int, path: Optional[str], file_pos: int,
                   at: int = 0, partition: Optional[int] = None,
                   crc_checked: bool = False) -> Optional[Record]:
    """The record at ``offset`` from the framed batch at ``buf[at:]`` (random-access ``get``).

    ``buf`` is bytes or an mmap. ``h`` is the batch's header (a BatchHeader or the plain tuple
    of its fields), already checked by :func:`header_problem` and known to fit in ``buf``.
    Checks the bytes it uses (all of a version 1 or small batch, unless the caller did:
    ``crc_checked``), reads only the column entries it needs (struct) instead of decoding the
    batch, and returns None when the record is absent (a compaction gap). ``partition`` is set
    on the returned record.
    """
    a = h[4]  # attributes (tuple indexing: this is the hottest read path)
    if h[3] != FORMAT_VERSION or a & _WHOLE:
        return _record_other(buf, h, offset, path, file_pos, at, partition, crc_checked)
    n = h[8]
    j = offset - h[5]
    pl = h[10]
    p = at + HEADER_SIZE  # the payload: columns, then items
    if not crc_checked and not a & CHUNK_SHIFT_MASK:  # a small batch: one CRC32C for it all
        if crc32c(memoryview(buf)[at + CRC_START : at + h[2]]) != h[1]:
            raise CorruptLogError("CRC32C mismatch", path, file_pos)
        crc_checked = True
    if not 0 <= j < n or h[9] != n - 1:
        if not crc_checked:
            check_spans(buf, at, h, (), path, file_pos)  # the header says so: is it intact?
        if h[9] != n - 1:
            raise CorruptLogError("dense batch with a gap in its header", path, file_pos)
        return None
    if not a & _SPARSE_ITEMS:
        # Values only (no keys, headers or timestamps): the common layout, inlined.
        first = 4 * n
        if first > pl:
            _fail(buf, at, h, (), "batch columns run past the payload", path, file_pos,
                  crc_checked)
        if j:
            lo = 4 * j - 4
            s, e = U32_PAIR.unpack_from(buf, p + lo)
            s &= END_MASK
        else:
            lo = 0
            s = first
            e = U32.unpack_from(buf, p)[0]
        null = e & NULL_BIT
        e &= END_MASK
        if not first <= s <= e <= pl or (null and s != e):
            _fail(buf, at, h, ((lo, 4 * j + 4),), "impossible value position", path, file_pos,
                  crc_checked)
        if not crc_checked:
            check_two(buf, at, h, lo, 4 * j + 4, s, e, path, file_pos)
        if null:
            return _new_record((offset, h[6], None, None, EMPTY_HEADERS, partition))
        value = buf[p + s : p + e]
        if type(value) is not bytes:
            value = bytes(value)
        return _new_record((offset, h[6], None, value, EMPTY_HEADERS, partition))
    return _record_v2(buf, h, offset, j, p, path, file_pos, at, partition, crc_checked)


def find_record(buf: Any, pos: int, size: int, expect: int, offset: int, path: Optional[str]
                ) -> Optional[Record]:
    """``get``'s quick route through a mapped segment: from the batch at ``pos`` (whose base
    offset should be ``expect``: a sparse index entry), step over batch headers to the batch
    holding ``offset`` and extract the record (:func:`extract_record`; the values-only layout
    of version 2 is inlined here). ``size``: bytes of whole batches in ``buf``.

    Returns None for "take the general route" (which handles and reports every case): a hint
    that does not match, a gap, a compressed or sparse batch, any odd header. Batches stepped
    over are read on three fields (a damaged one breaks the offset chain or runs out of the
    segment); the target's header and the bytes the record uses are checked (CRC32C) before
    anything is returned.
    """
    limit = size - HEADER_SIZE
    while pos <= limit:
        magic, length, base, last_delta = STEP.unpack_from(buf, pos)
        if magic != MAGIC_INT or base != expect or length < HEADER_SIZE:
            return None
        expect = base + last_delta + 1
        if expect > offset:
            break
        pos += length
    else:
        return None
    crc, version, a, ts, max_ts, n, pl = _REST.unpack_from(buf, pos)
    if (version != FORMAT_VERSION or a & _NOT_VALUES_ONLY or last_delta != n - 1
            or pos + length > size or length & 7 or max_ts != ts or ts < 0):
        return _find_other(buf, pos, size, offset, path)
    first = 4 * n
    if a & CHUNK_SHIFT_MASK:
        shift = a >> CHUNK_SHIFT_AT
        if (shift > MAX_CHUNK_SHIFT or shift < MIN_CHUNK_SHIFT or not length - ALIGN <
                HEADER_SIZE + pl + (((pl + (1 << shift) - 1) >> shift) << 2) <= length
                or first > pl):
            return None
        checked = False
    else:
        if not length - ALIGN < HEADER_SIZE + pl <= length or first > pl:
            return None
        if crc32c(memoryview(buf)[pos + CRC_START : pos + length]) != crc:
            raise CorruptLogError("CRC32C mismatch", path, pos)
        checked = True
    # Values only: the value's two end entries, then the value.
    j = offset - base
    p = pos + HEADER_SIZE
    if j:
        lo = 4 * j - 4
        s, e = U32_PAIR.unpack_from(buf, p + lo)
        s &= END_MASK
    else:
        lo = 0
        s = first
        e = U32.unpack_from(buf, p)[0]
    if e & NULL_BIT:
        if e & END_MASK != s or not first <= s <= pl:
            return None
        if not checked:
            check_two(buf, pos, HEADER_INTS.unpack_from(buf, pos), lo, 4 * j + 4, s, s, path, pos)
        return _new_record((offset, ts, None, None, EMPTY_HEADERS, None))
    if not first <= s <= e <= pl:
        return None  # (the general route reports it)
    if not checked:
        # check_two inlined (the value lies after the column entries): the chunks of the
        # entries and of the value, as one run when they are at most one chunk apart.
        c0 = lo >> shift
        c1 = (4 * j + 3) >> shift
        v0 = s >> shift
        v1 = (e - 1) >> shift if e > s else v0
        if v0 <= c1 + 2:
            c1, v0 = v1, -1
        mv = memoryview(buf)
        end = p + pl  # the chunk table
        if c0 > 1:
            if crc32c(mv[pos + CRC_START : p]) != crc:
                raise CorruptLogError("CRC32C mismatch (batch header)", path, pos)
            if c0 == c1:
                seed, want = U32_PAIR.unpack_from(buf, end + 4 * c0 - 4)
            else:
                seed = U32.unpack_from(buf, end + 4 * c0 - 4)[0]
                want = U32.unpack_from(buf, end + 4 * c1)[0]
            run = mv[p + (c0 << shift) : min(p + ((c1 + 1) << shift), end)]
        else:  # from the header on: checks it too
            seed = 0
            want = U32.unpack_from(buf, end + 4 * c1)[0]
            run = mv[pos + CRC_START : min(p + ((c1 + 1) << shift), end)]
        if crc32c(run, seed) != want:
            raise CorruptLogError(f"CRC32C mismatch (payload chunks {c0}..{c1})", path, pos)
        if v0 >= 0:
            if v0 == v1:
                seed, want = U32_PAIR.unpack_from(buf, end + 4 * v0 - 4)
            else:
                seed = U32.unpack_from(buf, end + 4 * v0 - 4)[0]
                want = U32.unpack_from(buf, end + 4 * v1)[0]
            if crc32c(mv[p + (v0 << shift) : min(p + ((v1 + 1) << shift), end)], seed) != want:
                raise CorruptLogError(f"CRC32C mismatch (payload chunks {v0}..{v1})", path, pos)
    return _new_record((offset, ts, None, buf[p + s : p + e], EMPTY_HEADERS, None))


def _find_other(buf: Any, pos: int, size: int, offset: int, path: Optional[str]
                ) -> Optional[Record]:
    """:func:`find_record` for any batch but a plain values-only version 2 one: the header
    checks of :func:`plain_header`, then :func:`extract_record`."""
    h = plain_header(buf, pos, size)
    return None if h is None else extract_record(buf, h, offset, path, pos, pos)


def plain_header(buf: Any, pos: int, size: int) -> Optional[tuple]:
    """The header at ``buf[pos]`` as a plain tuple (:data:`HEADER_INTS`) if it passes
    :func:`~logstore.format.header.header_problem`'s checks, is of a known version, dense and
    uncompressed, and its batch ends by ``size``; else None ("the general route decides")."""
    h = HEADER_INTS.unpack_from(buf, pos)
    length, version, a, n, pl = h[2], h[3], h[4], h[8], h[10]
    table = 0
    if version == FORMAT_VERSION:
        if a & _QUICK_NOT:
            return None
        shift = (a >> CHUNK_SHIFT_AT) & 0x1F
        if shift:
            if not MIN_CHUNK_SHIFT <= shift <= MAX_CHUNK_SHIFT:
                return None
            table = ((pl + (1 << shift) - 1) >> shift) * 4
    elif version != VERSION_1 or a & _QUICK_NOT_V1:
        return None
    if (h[0] != MAGIC_INT or length > MAX_BATCH_LENGTH or length & 7 or length < HEADER_SIZE
            or pos + length > size or h[9] != n - 1 or n < 1
            or not length - ALIGN < HEADER_SIZE + table + pl <= length or h[6] < 0 or h[7] < 0):
        return None
    return h


def find_batch(buf: Any, pos: int, size: int, expect: int, offset: int
               ) -> Optional[Tuple[int, tuple]]:
    """(``get_many``'s quick route) :func:`find_record`'s walk alone: ``(position, header)``
    of the plain batch holding ``offset`` (:func:`plain_header`), or None. Headers must lie in
    ``buf``; batches must end by ``size`` (which may lie past the end of ``buf``)."""
    limit = min(size, len(buf)) - HEADER_SIZE
    while pos <= limit:
        magic, length, base, last_delta = STEP.unpack_from(buf, pos)
        if magic != MAGIC_INT or base != expect or length < HEADER_SIZE:
            return None
        expect = base + last_delta + 1
        if expect > offset:
            h = plain_header(buf, pos, size)
            return None if h is None else (pos, h)
        pos += length
    return None


def _fail(buf: Any, at: int, h: Any, spans: Any, why: str, path: Optional[str], file_pos: int,
          checked: bool) -> None:
    """Raise for an impossible structure: a CRC32C mismatch if the bytes read (``spans``) are
    damaged (the likely cause), else ``why``."""
    if not checked:
        check_spans(buf, at, h, spans, path, file_pos)
    raise CorruptLogError(why, path, file_pos)


def _item(buf: Any, p: int, col: int, j: int, first: int, pl: int, spans: List[tuple],
          at: int, h: Any, path: Optional[str], file_pos: int, checked: bool) -> tuple:
    """(Version 2) Where item ``j`` of the end column at payload position ``col`` lies:
    ``(start, end, null)`` as payload positions. ``first`` is where the column's first item
    starts if it is the batch's first item column, else -1 (the entry before the column, the
    previous section's end, says it). Adds the entry bytes (and the item's bytes) to ``spans``.
    """
    if j or first < 0:
        lo = col + 4 * j - 4
        s, e = U32_PAIR.unpack_from(buf, p + lo)
        s &= END_MASK
    else:
        lo = col
        s = first
        e = U32.unpack_from(buf, p + lo)[0]
    spans.append((lo, col + 4 * j + 4))
    null = e & NULL_BIT
    e &= END_MASK
    if not 0 <= s <= e <= pl or (null and s != e):
        _fail(buf, at, h, spans, "impossible item position", path, file_pos, checked)
    if e > s:
        spans.append((s, e))
    return s, e, null


def _record_v2(buf: Any, h: Any, offset: int, j: int, p: int, path: Optional[str],
               file_pos: int, at: int, partition: Optional[int], checked: bool) -> Record:
    """(Version 2, plain, dense) :func:`extract_record` with keys, headers or timestamps."""
    a = h[4]
    n = h[8]
    pl = h[10]
    spans: List[tuple] = []
    col = 8 * n if a & ATTR_TIMESTAMPS else 0
    fixed = col + 4 * n * (1 + (a & ATTR_KEYS and 1) + (a & ATTR_HEADERS and 1))
    if fixed > pl:
        _fail(buf, at, h, spans, "batch columns run past the payload", path, file_pos, checked)
    delta = 0
    if col:
        spans.append((8 * j, 8 * j + 8))
        delta = I64.unpack_from(buf, p + 8 * j)[0]
    first = fixed
    key_at = None
    if a & ATTR_KEYS:
        key_at = _item(buf, p, col, j, first, pl, spans, at, h, path, file_pos, checked)
        col += 4 * n
        first = -1
    value_at = _item(buf, p, col, j, first, pl, spans, at, h, path, file_pos, checked)
    headers_at = None
    if a & ATTR_HEADERS:
        headers_at = _item(buf, p, col + 4 * n, j, -1, pl, spans, at, h, path, file_pos,
                           checked)
    if not checked:
        check_spans(buf, at, h, spans, path, file_pos)
    ts = h[6] + delta
    if (not 0 <= ts <= h[7] or key_at is not None and key_at[0] < fixed
            or value_at[0] < fixed or headers_at is not None and headers_at[2]):
        raise CorruptLogError("impossible record fields", path, file_pos)
    key = None
    if key_at is not None and not key_at[2]:
        key = bytes(buf[p + key_at[0] : p + key_at[1]])
    value = None
    if not value_at[2]:
        value = bytes(buf[p + value_at[0] : p + value_at[1]])
    headers: Dict[str, bytes] = EMPTY_HEADERS
    if headers_at is not None and headers_at[1] > headers_at[0]:
        headers = parse_headers(bytes(buf[p + headers_at[0] : p + headers_at[1]]), path,
                                file_pos)
    return _new_record((offset, ts, key, value, headers, partition))


def _record_other(buf: Any, h: Any, offset: int, path: Optional[str], file_pos: int, at: int,
                  partition: Optional[int], crc_checked: bool) -> Optional[Record]:
    """:func:`extract_record` for a batch read whole: compressed, sparse (offset deltas), of
    unknown attributes, or version 1."""
    a = h[4]
    if a & (CODEC_MASK | ATTR_OFFSET_DELTAS):
        batch = decode(buf[at : at + h[2]], 0, h, path, file_pos, True)
        j = batch.index_of(offset)
        if j >= len(batch) or batch.offset_at(j) != offset:
            return None
        rec = batch.record_at(j)
        return rec if partition is None else rec._replace(partition=partition)
    if h[3] == FORMAT_VERSION:  # unknown attributes, CRC-valid: refused
        if not crc_checked:
            check_spans(buf, at, h, (), path, file_pos)
        check_version(h, path, file_pos)
    return _record_v1(buf, h, offset, path, file_pos, at, partition, crc_checked)


def extract_records(buf: Any, h: Any, offsets: Sequence[int], path: Optional[str],
                    file_pos: int, at: int = 0) -> List[Record]:
    """The records at ``offsets`` (ascending, repeats allowed, all inside the batch) of the
    plain (uncompressed, dense) batch at ``buf[at:]``: :func:`extract_record` for several
    records at once (``get_many``). A version 1 batch is checked whole once and its length
    columns read once; a version 2 batch is checked where its records are (every run of
    chunks once, for all of them), or whole when it is small or they are many."""
    if h[3] != FORMAT_VERSION:
        if not crc_ok(buf, at, h):
            raise CorruptLogError("CRC32C mismatch", path, file_pos)
        if len(offsets) >= 4:  # break-even of reading the columns once
            return _records_v1(buf, h, offsets, path, file_pos, at)
        return [_record_v1(buf, h, o, path, file_pos, at, None, True) for o in offsets]
    a = h[4]
    n = h[8]
    if 4 * len(offsets) >= n or not a & CHUNK_SHIFT_MASK:
        if not crc_ok(buf, at, h):  # many of the records (or a small batch): check it all
            raise CorruptLogError("CRC32C mismatch", path, file_pos)
    else:
        # Check the chunks of all of them in one pass first (extract_record would check each
        # record's chunks on its own): locate them all, check, then extract as checked.
        locate_spans(buf, at, h, offsets, path, file_pos)
    if a & (_SPARSE_ITEMS | _WHOLE) or h[9] != n - 1 or h[7] != h[6]:
        if a & ~KNOWN_ATTRS_V2:
            check_version(h, path, file_pos)
        return [extract_record(buf, h, o, path, file_pos, at, None, True) for o in offsets]
    # Values only, checked: each record's two end entries and its value.
    p = at + HEADER_SIZE
    first = 4 * n
    pl = h[10]
    base, ts = h[5], h[6]
    if first > pl:
        raise CorruptLogError("batch columns run past the payload", path, file_pos)
    pair = U32_PAIR.unpack_from
    out = []
    for o in offsets:
        j = o - base
        if j:
            s, e = pair(buf, p + 4 * j - 4)
            s &= END_MASK
        else:
            s = first
            e = U32.unpack_from(buf, p)[0]
        if e >= NULL_BIT:
            if e & END_MASK != s or not first <= s <= pl:
                raise CorruptLogError("impossible value position", path, file_pos)
            value = None
        elif first <= s <= e <= pl:
            value = buf[p + s : p + e]
        else:
            raise CorruptLogError("impossible value position", path, file_pos)
        out.append(_new_record((o, ts, None, value, EMPTY_HEADERS, None)))
    if type(buf) is memoryview:
        out = [r if r[3] is None else r._replace(value=bytes(r[3])) for r in out]
    return out


def locate_spans(buf: Any, at: int, h: Any, offsets: Sequence[int], path: Optional[str],
                 file_pos: int) -> None:
    """(Version 2 with a chunk table) Check, with one :func:`check_spans`, the header and the
    bytes that the records at ``offsets`` use (entries, timestamps, items)."""
    a = h[4]
    n = h[8]
    pl = h[10]
    p = at + HEADER_SIZE
    cols = []
    col = 0
    if a & ATTR_TIMESTAMPS:
        col = 8 * n
    fixed = col + 4 * n * (1 + (a & ATTR_KEYS and 1) + (a & ATTR_HEADERS and 1))
    if h[9] != n - 1:
        _fail(buf, at, h, (), "dense batch with a gap in its header", path, file_pos, False)
    if fixed > pl:
        _fail(buf, at, h, (), "batch columns run past the payload", path, file_pos, False)
    first = fixed
    for flag in (ATTR_KEYS, 0, ATTR_HEADERS):
        if not flag or a & flag:
            cols.append((col, first))
            col += 4 * n
            first = -1
    spans: List[tuple] = []
    base = h[5]
    for o in offsets:
        j = o - base
        if not 0 <= j < n:
            raise ValueError(f"offset {o} is not in the batch at {base}")  # caller's bug
        if a & ATTR_TIMESTAMPS:
            spans.append((8 * j, 8 * j + 8))
        for c, f in cols:
            _item(buf, p, c, j, f, pl, spans, at, h, path, file_pos, False)
    check_spans(buf, at, h, spans, path, file_pos)


def extract_range(buf: Any, at: int, h: Any, j: int, k: int, path: Optional[str],
                  file_pos: int, partition: Optional[int] = None, checked: bool = False,
                  offsets: Optional[Sequence[int]] = None) -> List[Record]:
    """(Version 2, plain, dense) Records ``j .. k-1`` of the batch at ``buf[at:]``
    (``read``/``replay``), or, with ``offsets`` (ascending, inside that range), just those.

    Checks the header and the chunks holding those records' entries and items (the whole batch
    when that is all of it), reads each column's entries for the range with one struct call,
    and builds the records with C-level maps: no Python frame per record, one shared empty
    headers mapping for records without headers, values sliced straight from ``buf``.
    """
    a = h[4]
    n = h[8]
    pl = h[10]
    base = h[5]
    p = at + HEADER_SIZE
    whole = j == 0 and k == n
    if not checked and (whole or not a & CHUNK_SHIFT_MASK):
        if not crc_ok(buf, at, h):
            raise CorruptLogError("CRC32C mismatch", path, file_pos)
        checked = True
    if h[9] != n - 1:
        _fail(buf, at, h, (), "dense batch with a gap in its header", path, file_pos, checked)
    count = k - j
    col = 8 * n if a & ATTR_TIMESTAMPS else 0
    fixed = col + 4 * n * (1 + (a & ATTR_KEYS and 1) + (a & ATTR_HEADERS and 1))
    if fixed > pl:
        _fail(buf, at, h, (), "batch columns run past the payload", path, file_pos, checked)
    spans: List[tuple] = []
    tss: Any
    if a & ATTR_TIMESTAMPS:
        spans.append((8 * j, 8 * k))
        ts0 = h[6]
        tss = [ts0 + d for d in int_struct("q", count).unpack_from(buf, p + 8 * j)]
    else:
        tss = repeat(h[6], count)
    ints = int_struct("I", count)
    columns = []
    first = fixed
    for flag in (ATTR_KEYS, 0, ATTR_HEADERS):
        if flag and not a & flag:
            columns.append(None)
            continue
        if j or first < 0:  # the entry before item j (the previous section's end for j = 0)
            lo = col + 4 * j - 4
            start = U32.unpack_from(buf, p + lo)[0] & END_MASK
        else:
            lo = col
            start = first
        raw = ints.unpack_from(buf, p + col + 4 * j)
        spans.append((lo, col + 4 * k))
        columns.append((start, raw))
        col += 4 * n
        first = -1
    # Item bytes: from the first item's start to the last one's end, per column (bounds
    # checked first: a damaged entry must fail the check, not misdirect it).
    for c in columns:
        if c is not None:
            start, raw = c
            end = raw[-1] & END_MASK
            if not fixed <= start <= end <= pl:
                _fail(buf, at, h, spans, "impossible item position", path, file_pos, checked)
            if end > start:
                spans.append((start, end))
    if not checked:
        check_spans(buf, at, h, spans, path, file_pos)
    keys_col, values_col, headers_col = columns
    values = _items(buf, p, values_col, True, "value", path, file_pos)
    keys = repeat(None, count) if keys_col is None else _items(buf, p, keys_col, True, "key",
                                                               path, file_pos)
    if headers_col is None:
        hdrs: Any = repeat(EMPTY_HEADERS, count)
    else:
        hdrs = [parse_headers(b, path, file_pos) if b else EMPTY_HEADERS
                for b in _items(buf, p, headers_col, False, "header", path, file_pos)]
    if a & ATTR_TIMESTAMPS:
        if min(tss) < 0 or max(tss) > h[7] or whole and max(tss) != h[7]:
            raise CorruptLogError("max timestamp does not match the records", path, file_pos)
    elif h[7] != h[6]:
        raise CorruptLogError("max timestamp does not match the records", path, file_pos)
    if whole and (headers_col or values_col)[1][-1] & END_MASK != pl:
        raise CorruptLogError("record ends do not reach the end of the payload", path, file_pos)
    recs = make_records(zip(range(base + j, base + k), tss, keys, values, hdrs,
                            repeat(partition)), count)
    if offsets is not None:
        first_off = base + j
        return [recs[o - first_off] for o in offsets]
    return recs


def _items(buf: Any, p: int, column: tuple, nullable: bool, what: str, path: Optional[str],
           file_pos: int) -> Any:
    """The items of one column for a range: ``column`` = (start of the first item, its stored
    end entries); bytes (None for null) sliced straight from ``buf``."""
    start, raw = column
    same = equal_items(buf, p, start, raw)
    if same is not None:
        items: Any = same
    elif max(raw) < NULL_BIT:
        stops = list(map(p.__add__, raw))
        starts = [p + start]
        starts += stops[:-1]
        if not all(map(le, starts, stops)):
            raise CorruptLogError(f"{what} ends go back", path, file_pos)
        items = list(map(buf.__getitem__, map(slice, starts, stops)))
    else:
        lens, starts, _end = item_ends(raw, p + start, p, nullable, what, path, file_pos)
        items = [None if n < 0 else buf[s : s + n] for s, n in zip(starts, lens)]
    if type(buf) is memoryview and same is None:  # (mmaps, bytes and struct give bytes)
        items = [None if x is None else bytes(x) for x in items]
    return items


# ------------------------------------------------------------------------------- version 1
def _record_v1(buf: Any, h: Any, offset: int, path: Optional[str], file_pos: int, at: int,
               partition: Optional[int], crc_checked: bool) -> Optional[Record]:
    """(Version 1, plain) :func:`extract_record`: the whole batch's CRC32C (unless the caller
    checked it), then the column entries the record needs: its place is the sum of the lengths
    before it."""
    a = h[4]
    if not crc_checked and crc32c(memoryview(buf)[at + CRC_START : at + h[2]]) != h[1]:
        raise CorruptLogError("CRC32C mismatch", path, file_pos)
    if a & ~KNOWN_ATTRS:
        check_version(h, path, file_pos)
    n = h[8]
    j = offset - h[5]
    if not 0 <= j < n:
        return None
    if h[9] != n - 1:
        raise CorruptLogError("dense batch with a gap in its header", path, file_pos)
    col = at + HEADER_SIZE  # columns and data are addressed directly in buf
    end = col + h[10]  # payload end
    ts = h[6]
    if a & ATTR_TIMESTAMPS:
        ts += I64.unpack_from(buf, col + 8 * j)[0]
        col += 8 * n
    kl_pos = -1
    if a & ATTR_KEYS:
        kl_pos = col
        col += 4 * n
    vl_pos = col
    col += 4 * n
    hl_pos = -1
    if a & ATTR_HEADERS:
        hl_pos = col
        col += 4 * n
    if col > end:
        raise CorruptLogError("batch columns run past the payload", path, file_pos)
    key = None
    kl = 0
    data_start = col  # keys, then values, then headers
    if kl_pos >= 0:
        (kl,) = I32.unpack_from(buf, kl_pos + 4 * j)
        if kl >= 0:
            ks = col + lengths_before(buf, kl_pos, j)
            if ks + kl > end:
                raise CorruptLogError("key runs past the payload", path, file_pos)
            key = bytes(buf[ks : ks + kl])
    (vl,) = I32.unpack_from(buf, vl_pos + 4 * j)
    value = None
    if vl >= 0:
        if hl_pos < 0 and (kl_pos >= 0 or 2 * j > n):
            # Values are the payload's last section: locate this one from the end, summing the
            # lengths from j on (fewer entries, and no key-column sum for keyed batches).
            vs = end - lengths_before(buf, vl_pos + 4 * j, n - j)
            if vs < data_start:
                raise CorruptLogError("value lengths exceed the payload", path, file_pos)
        else:
            if kl_pos >= 0:
                col += lengths_before(buf, kl_pos, n)
            vs = col + lengths_before(buf, vl_pos, j)
        if vs + vl > end:
            raise CorruptLogError("value runs past the payload", path, file_pos)
        value = buf[vs : vs + vl]
        if type(value) is not bytes:
            value = bytes(value)
    headers: Dict[str, bytes] = EMPTY_HEADERS
    if hl_pos >= 0:
        (hl,) = I32.unpack_from(buf, hl_pos + 4 * j)
        if kl_pos >= 0 and vl < 0:
            col += lengths_before(buf, kl_pos, n)  # (not added above: the value was null)
        hs = col + lengths_before(buf, vl_pos, n) + lengths_before(buf, hl_pos, j)
        if hl < 0 or hs + hl > end:
            raise CorruptLogError("headers run past the payload", path, file_pos)
        if hl:
            headers = parse_headers(bytes(buf[hs : hs + hl]), path, file_pos)
    if vl < -1 or kl < -1 or not 0 <= ts <= h[7]:
        raise CorruptLogError("impossible record fields", path, file_pos)
    return _new_record((offset, ts, key, value, headers, partition))


def _records_v1(buf: Any, h: Any, offsets: Sequence[int], path: Optional[str],
                file_pos: int, at: int) -> List[Record]:
    """(Version 1, plain; the caller checked the CRC) :func:`extract_records`: the length
    columns are read once and their running sums give every record's place. The columns are
    checked as a decoded batch's are: the lengths must add up to the payload exactly."""
    a = h[4]
    if a & ~KNOWN_ATTRS:
        check_version(h, path, file_pos)
    n = h[8]
    if h[9] != n - 1:
        raise CorruptLogError("dense batch with a gap in its header", path, file_pos)
    col = at + HEADER_SIZE
    end = col + h[10]
    per = 4 + (8 if a & ATTR_TIMESTAMPS else 0) + (4 if a & ATTR_KEYS else 0) + (
        4 if a & ATTR_HEADERS else 0)  # fixed-width column bytes per record
    if col + per * n > end:
        raise CorruptLogError("batch columns run past the payload", path, file_pos)
    tss = None
    if a & ATTR_TIMESTAMPS:
        tss = int_struct("q", n).unpack_from(buf, col)
        col += 8 * n
    (kls, kss), (vls, vss), (hls, hss) = length_columns(buf, col, n, a, at + HEADER_SIZE +
                                                         per * n, end, path, file_pos)
    base, ts0, max_ts = h[5], h[6], h[7]
    out = []
    for offset in offsets:
        j = offset - base
        if not 0 <= j < n:
            raise ValueError(f"offset {offset} is not in the batch at {base}")  # caller's bug
        ts = ts0 if tss is None else ts0 + tss[j]
        if not 0 <= ts <= max_ts:
            raise CorruptLogError("impossible record fields", path, file_pos)
        key = None
        if kls is not None and kls[j] >= 0:
            ks = kss[j]
            key = bytes(buf[ks : ks + kls[j]])
        vl = vls[j]
        value = None
        if vl >= 0:
            vs = vss[j]
            value = buf[vs : vs + vl]
            if type(value) is not bytes:
                value = bytes(value)
        headers: Dict[str, bytes] = EMPTY_HEADERS
        if hls is not None and hls[j]:
            hs = hss[j]
            headers = parse_headers(bytes(buf[hs : hs + hls[j]]), path, file_pos)
        out.append(_new_record((offset, ts, key, value, headers, None)))
    return out
