"""Record-batch decoding: the reader half of ``segments/FORMAT.md``, whole batches.

:func:`decode` turns a checked batch (every byte: :func:`~logstore.format.header.crc_ok`) of
either version into a :class:`DecodedBatch` of numpy columns (parsed lazily, cross-checked at
first use). Columns are decoded with numpy in one call each, so reading a batch costs a handful
of C calls whatever the number of records; only turning records into Python objects is
per-record work. Random access to a few records (``get``, ``get_many``, short reads), which
checks only the bytes it reads, is :mod:`logstore.format.extract`. No I/O.
"""

from __future__ import annotations

import threading
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import numpy as np
import zstandard

if TYPE_CHECKING:
    import numpy.typing as npt

from ..errors import CorruptLogError
from ..record import Record
from .columns import (
    EMPTY_HEADERS, end_columns, end_columns_numpy, length_columns, make_records, parse_headers,
)
from .header import (
    ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CODEC_MASK, CODEC_ZSTD,
    END_MASK, FORMAT_VERSION, I32, BatchHeader, check_header, check_version,
    HEADER_SIZE, chunks_ok, crc_ok, int_struct, parse_header,
)

_local = threading.local()


def _decompressor() -> "zstandard.ZstdDecompressor":
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


_SMALL_BATCH = 512  # up to this many records, columns are parsed with struct (no numpy calls)
_COLUMNS = ("offsets", "timestamps", "key_lengths", "key_offsets", "value_lengths",
            "value_offsets", "header_lengths", "header_offsets")


def ends_layout(h: Any) -> bool:
    """Whether the batch's item columns hold end positions (version 2, uncompressed) rather
    than lengths (version 1, and compressed version 2 batches)."""
    return h[3] == FORMAT_VERSION and not h[4] & CODEC_MASK


def _column_property(name: str, doc: str) -> property:
    def get(self: "DecodedBatch") -> Optional[np.ndarray]:
        if not self._parsed:
            self._parse()
        arrays = self._arrays
        if name in arrays:
            return arrays[name]
        lst = self._lists.get(name)
        if lst is None:
            arr = None
        elif name.endswith("_lengths") and not ends_layout(self.header):
            # (Length columns) The stored int32 column itself (checked by the parse): zero-copy, as
            # for large batches.
            arr = np.frombuffer(self.data, dtype="<i4", count=len(lst),
                                offset=self._length_column_at(name))
        elif name.endswith("_lengths"):
            arr = np.array(lst, dtype=np.int32)
        else:
            arr = np.array(lst, dtype=np.int64)
        arrays[name] = arr
        return arr

    return property(get, doc=doc)


class DecodedBatch:
    """One batch's records as columns over a single buffer.

    ``offsets`` and ``timestamps`` are int64 numpy arrays; ``value_offsets``/``value_lengths``
    locate each value inside ``values_buffer`` (length -1 marks a tombstone); ``key_*`` and
    ``header_*`` likewise, or None when no record of the batch has one. For an uncompressed
    batch read through an mmap, ``values_buffer`` is a zero-copy memoryview of the mapped file.
    Small batches are parsed without numpy and build the arrays only when asked.

    Every byte of the batch is checked (CRC32C) before a DecodedBatch exists. The columns are
    parsed and cross-checked (lengths add up to the payload, offsets increase, timestamps match
    the header) when the batch is built, or with ``lazy=True`` at the first access to any
    column, value, key, header or record: a reader that only needs ``len(batch)`` or the header
    pays for neither, and nothing unchecked is ever handed out. Both batch versions decode to
    the same columns (version 2 stores item end positions instead of lengths).
    """

    __slots__ = ("header", "position", "data", "_path", "_lists", "_arrays", "_parsed")

    if TYPE_CHECKING:  # what the column properties below return, for type checkers
        offsets: "npt.NDArray[np.int64]"
        timestamps: "npt.NDArray[np.int64]"
        key_lengths: "Optional[npt.NDArray[np.int32]]"
        key_offsets: "Optional[npt.NDArray[np.int64]]"
        value_lengths: "npt.NDArray[np.int32]"
        value_offsets: "npt.NDArray[np.int64]"
        header_lengths: "Optional[npt.NDArray[np.int32]]"
        header_offsets: "Optional[npt.NDArray[np.int64]]"
    else:
        offsets = _column_property("offsets", "int64 offset of each record")
        timestamps = _column_property("timestamps", "int64 timestamp (ms) of each record")
        key_lengths = _column_property("key_lengths", "key length per record (-1 = no key)")
        key_offsets = _column_property("key_offsets", "start of each key in values_buffer")
        value_lengths = _column_property("value_lengths",
                                         "value length per record (-1 = tombstone)")
        value_offsets = _column_property("value_offsets", "start of each value in values_buffer")
        header_lengths = _column_property("header_lengths", "encoded headers length per record")
        header_offsets = _column_property("header_offsets", "start of each record's headers")

    def __init__(self, header: BatchHeader, position: int, data: Any, path: Optional[str],
                 lazy: bool = False):
        self.header = header
        self.position = position
        self.data = data
        self._path = path
        self._lists: Dict[str, Optional[list]] = {}
        self._arrays: Dict[str, Optional[np.ndarray]] = {}
        self._parsed = False
        if not lazy:
            self._parse()

    def _parse(self) -> None:
        """Parse and check the columns (numpy for large batches; struct and lists for small
        ones, where numpy's per-call cost would dominate)."""
        if self.header.record_count > _SMALL_BATCH:
            self._parse_numpy()
        else:
            self._parse_small()
        self._parsed = True

    # -- structure -------------------------------------------------------------------------
    def _corrupt(self, why: str) -> CorruptLogError:
        return CorruptLogError(why, self._path, self.position)

    def _layout(self) -> int:
        """Bytes taken by the fixed-width columns; checks they fit in the payload."""
        a = self.header.attributes
        per = 4 + (8 if a & ATTR_TIMESTAMPS else 0) + (4 if a & ATTR_OFFSET_DELTAS else 0)
        per += (4 if a & ATTR_KEYS else 0) + (4 if a & ATTR_HEADERS else 0)
        fixed = per * self.header.record_count
        if fixed > len(self.data):
            raise self._corrupt("batch columns run past the payload")
        return fixed

    def _length_column_at(self, name: str) -> int:
        """Payload position of the int32 column ``name`` ("key_lengths", "value_lengths" or
        "header_lengths"): the columns are stored in this order after the optional timestamp
        (int64) and offset-delta (int32) columns."""
        a = self.header.attributes
        n = self.header.record_count
        pos = (8 * n if a & ATTR_TIMESTAMPS else 0) + (4 * n if a & ATTR_OFFSET_DELTAS else 0)
        if name == "key_lengths":
            return pos
        pos += 4 * n if a & ATTR_KEYS else 0
        if name == "value_lengths":
            return pos
        return pos + 4 * n

    def _check_offsets(self, first: int, last: int, increasing: bool) -> None:
        h = self.header
        if first < 0 or not increasing:
            raise self._corrupt("offset deltas are not strictly increasing")
        if last != h.last_offset_delta:
            raise self._corrupt("last offset delta does not match the header")

    def _parse_one(self) -> bool:
        """The single-record batch (one ``append``): parse it with a couple of struct calls."""
        h = self.header
        a = h.attributes
        if a & (ATTR_TIMESTAMPS | ATTR_OFFSET_DELTAS):
            return False
        data = self.data
        if h.last_offset_delta != 0:
            raise self._corrupt("dense batch with a gap in its header")
        if h.max_timestamp != h.base_timestamp:
            raise self._corrupt("max timestamp does not match the records")
        pos = 0
        lists = self._lists
        start = ((a & ATTR_KEYS) >> 2) + 4 + ((a & ATTR_HEADERS) >> 3)  # 4 bytes per column
        if len(data) < start:
            raise self._corrupt("batch columns run past the payload")
        v2 = ends_layout(h)
        if a & ATTR_KEYS:
            (kl,) = I32.unpack_from(data, 0)
            if v2:  # an end position, bit 31 = null
                kl = self._v2_length(kl, start, "key")
            if kl < -1:
                raise self._corrupt("negative key length")
            lists["key_lengths"] = [kl]
            lists["key_offsets"] = [start]
            if kl > 0:
                start += kl
            pos = 4
        else:
            lists["key_lengths"] = lists["key_offsets"] = None
        (vl,) = I32.unpack_from(data, pos)
        if v2:
            vl = self._v2_length(vl, start, "value")
        if vl < -1:
            raise self._corrupt("negative value length")
        lists["value_lengths"] = [vl]
        lists["value_offsets"] = [start]
        if vl > 0:
            start += vl
        if a & ATTR_HEADERS:
            (hl,) = I32.unpack_from(data, pos + 4)
            if v2:
                hl = -1 if hl < 0 else hl - start
            if hl < 0:
                raise self._corrupt("negative header length")
            lists["header_lengths"] = [hl]
            lists["header_offsets"] = [start]
            start += hl
        else:
            lists["header_lengths"] = lists["header_offsets"] = None
        if start != len(data):
            raise self._corrupt("record lengths do not add up to the payload length")
        lists["offsets"] = [h.base_offset]
        lists["timestamps"] = [h.base_timestamp]
        return True

    def _v2_length(self, end: int, start: int, what: str) -> int:
        """A one-record batch's stored end entry (read as int32) as a length (-1 = null)."""
        if end < 0:  # bit 31: null
            if end & END_MASK != start:
                raise self._corrupt(f"a null {what} is not empty")
            return -1
        if end < start:
            raise self._corrupt(f"negative {what} length")
        return end - start

    def _parse_small(self) -> None:
        h = self.header
        n = h.record_count
        if n == 1 and self._parse_one():
            return
        a = h.attributes
        data = self.data
        fixed = self._layout()
        pos = 0
        lists = self._lists
        if a & ATTR_TIMESTAMPS:
            base = h.base_timestamp
            ts = [base + d for d in int_struct("q", n).unpack_from(data, pos)]
            pos += 8 * n
        else:
            ts = [h.base_timestamp] * n
        if a & ATTR_OFFSET_DELTAS:
            od = int_struct("i", n).unpack_from(data, pos)
            pos += 4 * n
            self._check_offsets(od[0], od[-1], all(x < y for x, y in zip(od, od[1:])))
            offs = [h.base_offset + d for d in od]
        else:
            if h.last_offset_delta != n - 1:
                raise self._corrupt("dense batch with a gap in its header")
            offs = list(range(h.base_offset, h.base_offset + n))
        if ends_layout(h):
            columns = end_columns(data, pos, n, a, 0, fixed, len(data), self._path,
                                  self.position)
        else:
            columns = length_columns(data, pos, n, a, fixed, len(data), self._path,
                                     self.position)
        for name, (lens, starts) in zip(("key", "value", "header"), columns):
            lists[name + "_lengths"] = lens
            lists[name + "_offsets"] = starts
        if max(ts) != h.max_timestamp:
            raise self._corrupt("max timestamp does not match the records")
        lists["offsets"] = offs
        lists["timestamps"] = ts

    def _parse_numpy(self) -> None:
        h = self.header
        n = h.record_count
        a = h.attributes
        data = self.data
        fixed = self._layout()
        arrays = self._arrays
        pos = 0

        def col(dtype: str, width: int) -> np.ndarray:
            nonlocal pos
            arr = np.frombuffer(data, dtype=dtype, count=n, offset=pos)
            pos += n * width
            return arr

        if a & ATTR_TIMESTAMPS:
            arrays["timestamps"] = col("<i8", 8) + h.base_timestamp
        else:
            arrays["timestamps"] = np.full(n, h.base_timestamp, dtype=np.int64)
        if a & ATTR_OFFSET_DELTAS:
            deltas = col("<i4", 4).astype(np.int64)
            self._check_offsets(int(deltas[0]), int(deltas[-1]), bool((np.diff(deltas) > 0).all()))
            arrays["offsets"] = deltas + h.base_offset
        else:
            if h.last_offset_delta != n - 1:
                raise self._corrupt("dense batch with a gap in its header")
            arrays["offsets"] = np.arange(h.base_offset, h.base_offset + n, dtype=np.int64)
        if ends_layout(h):
            arrays.update(end_columns_numpy(data, pos, n, a, fixed, len(data), self._path,
                                            self.position))
            start = len(data)  # (checked)
        else:
            start = self._lengths_numpy(col, fixed)
        if start != len(data):
            raise self._corrupt("record lengths do not add up to the payload length")
        if int(arrays["timestamps"].max()) != h.max_timestamp:
            raise self._corrupt("max timestamp does not match the records")

    def _lengths_numpy(self, col: Any, start: int) -> int:
        """(Version 1, large batches) The length columns as arrays; returns where the items
        end."""
        arrays = self._arrays
        for name, flag, minimum in (("key", ATTR_KEYS, -1), ("value", -1, -1),
                                    ("header", ATTR_HEADERS, 0)):
            if flag != -1 and not self.header.attributes & flag:
                arrays[name + "_lengths"] = arrays[name + "_offsets"] = None
                continue
            lens = col("<i4", 4)
            if int(lens.min()) < minimum:
                raise self._corrupt(f"negative {name} length")
            arrays[name + "_lengths"] = lens
        for name in ("key", "value", "header"):
            lens = arrays[name + "_lengths"]
            if lens is None:
                continue
            sizes = np.maximum(lens, 0).astype(np.int64)
            ends = np.cumsum(sizes)
            arrays[name + "_offsets"] = ends - sizes + start
            start += int(ends[-1])
        return start

    def _column(self, name: str, start: int, stop: int) -> Optional[list]:
        if not self._parsed:
            self._parse()
        lst = self._lists.get(name, False)
        if lst is False:
            arr = self._arrays[name]
            return None if arr is None else arr[start:stop].tolist()
        return None if lst is None else lst[start:stop]

    # -- access ----------------------------------------------------------------------------
    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def record_count(self) -> int:
        return self.header.record_count

    @property
    def values_buffer(self) -> memoryview:
        return memoryview(self.data)

    def __repr__(self) -> str:
        h = self.header
        where = f" {self._path}@{self.position}" if self._path else f" @{self.position}"
        return (f"<DecodedBatch offsets {h.base_offset}..{h.last_offset} "
                f"({h.record_count} records) ts {h.base_timestamp}..{h.max_timestamp} "
                f"{h.codec} {h.length} bytes{where}>")

    def __len__(self) -> int:
        return self.header.record_count

    def index_of(self, offset: int) -> int:
        """Index of the first record with offset >= ``offset`` (``len(self)`` if none)."""
        h = self.header
        if not h.attributes & ATTR_OFFSET_DELTAS:
            return max(0, min(offset - h.base_offset, h.record_count))
        return int(np.searchsorted(self.offsets, offset))

    def offset_at(self, i: int) -> int:
        h = self.header
        if not h.attributes & ATTR_OFFSET_DELTAS:
            return h.base_offset + i
        return self._column("offsets", i, i + 1)[0]

    def value(self, i: int) -> Optional[bytes]:
        n = self._column("value_lengths", i, i + 1)[0]
        if n < 0:
            return None
        s = self._column("value_offsets", i, i + 1)[0]
        return bytes(self.data[s : s + n])

    def key(self, i: int) -> Optional[bytes]:
        lens = self._column("key_lengths", i, i + 1)
        if lens is None or lens[0] < 0:
            return None
        s = self._column("key_offsets", i, i + 1)[0]
        return bytes(self.data[s : s + lens[0]])

    def headers(self, i: int) -> Dict[str, bytes]:
        lens = self._column("header_lengths", i, i + 1)
        if lens is None or not lens[0]:
            return EMPTY_HEADERS
        s = self._column("header_offsets", i, i + 1)[0]
        return parse_headers(bytes(self.data[s : s + lens[0]]), self._path, self.position)

    def record_at(self, i: int) -> Record:
        """The ``i``-th record of the batch."""
        if not self._parsed:
            self._parse()
        lists = self._lists
        if lists and "value_lengths" in lists:
            vl = lists["value_lengths"][i]
            vs = lists["value_offsets"][i]
            data = self.data
            value = None if vl < 0 else bytes(data[vs : vs + vl])
            kls = lists["key_lengths"]
            key = None
            if kls is not None and kls[i] >= 0:
                ks = lists["key_offsets"][i]
                key = bytes(data[ks : ks + kls[i]])
            hdrs = self.headers(i) if lists["header_lengths"] is not None else EMPTY_HEADERS
            return Record(lists["offsets"][i], lists["timestamps"][i], key, value, hdrs)
        return Record(self.offset_at(i), self._column("timestamps", i, i + 1)[0], self.key(i),
                      self.value(i), self.headers(i))

    def records(self, start: int = 0, stop: Optional[int] = None,
                partition: Optional[int] = None) -> List[Record]:
        """Records ``[start, stop)`` of this batch as :class:`Record` objects (values as bytes)."""
        n = self.header.record_count
        stop = n if stop is None else min(stop, n)
        if start >= stop:
            return []
        # One copy of the payload, then cheap bytes slices (faster than slicing a memoryview).
        data = self.data
        if type(data) is not bytes:
            data = bytes(data)
        count = stop - start
        col = self._column
        offs = col("offsets", start, stop)
        tss = col("timestamps", start, stop)
        vl = col("value_lengths", start, stop)
        vs = col("value_offsets", start, stop)
        if min(vl) >= 0:
            values = [data[s : s + l] for s, l in zip(vs, vl)]
        else:
            values = [None if l < 0 else data[s : s + l] for s, l in zip(vs, vl)]
        kl = col("key_lengths", start, stop)
        if kl is None:
            keys: Any = repeat(None, count)
        else:
            ks = col("key_offsets", start, stop)
            keys = [None if l < 0 else data[s : s + l] for s, l in zip(ks, kl)]
        hl = col("header_lengths", start, stop)
        if hl is None:
            hdrs: Any = repeat(EMPTY_HEADERS, count)
        else:
            hs = col("header_offsets", start, stop)
            path, where = self._path, self.position
            hdrs = [parse_headers(data[s : s + l], path, where) if l else EMPTY_HEADERS
                    for s, l in zip(hs, hl)]
        return make_records(zip(offs, tss, keys, values, hdrs, repeat(partition)), count)


def decode(
    buf: Any,
    pos: int,
    h: BatchHeader,
    path: Optional[str],
    file_pos: Optional[int] = None,
    header_checked: bool = False,
    lazy: bool = False,
    deep: bool = False,
) -> DecodedBatch:
    """Validate (CRC, structure) and decode the batch whose header ``h`` was read at ``pos``.

    ``buf`` must hold at least ``pos + h.length`` bytes; ``file_pos`` is where ``buf[pos]`` lies
    in the file (default ``pos``), for error messages. Raises :class:`CorruptLogError` naming
    ``path`` and the file position for any inconsistency; never returns unvalidated data.
    ``deep`` (scans, ``verify``): also check every entry of a version 2 chunk table against its
    chunk, so that a batch that decodes never fails a partial read later.
    """
    where = pos if file_pos is None else file_pos
    if not header_checked:
        check_header(h, path, where)
    mv = memoryview(buf)
    if pos + h.length > len(mv):
        raise CorruptLogError("batch runs past the end of the file", path, where)
    if not crc_ok(mv, pos, h):
        raise CorruptLogError("CRC32C mismatch", path, where)
    check_version(h, path, where)
    if deep:
        problem = chunks_ok(mv, pos, h)
        if problem is not None:
            raise CorruptLogError(problem, path, where)
    payload = mv[pos + HEADER_SIZE : pos + HEADER_SIZE + h.payload_length]
    codec = h.attributes & CODEC_MASK
    if codec == CODEC_ZSTD:
        try:
            # python-zstandard allocates the frame's declared content size up front: check it
            # against the header before decompressing (a crafted frame must not cost 1 TiB).
            declared = zstandard.get_frame_parameters(payload).content_size
            if declared not in (h.raw_length, zstandard.CONTENTSIZE_UNKNOWN):
                raise CorruptLogError(f"zstd frame declares {declared} bytes, header says "
                                      f"{h.raw_length}", path, where)
            data: Any = _decompressor().decompress(payload, max_output_size=h.raw_length)
        except zstandard.ZstdError as e:
            raise CorruptLogError(f"zstd payload does not decompress: {e}", path, where) from None
        if len(data) != h.raw_length:
            raise CorruptLogError("decompressed size does not match the header", path, where)
    else:
        if h.raw_length != h.payload_length:
            raise CorruptLogError("raw length differs from payload length", path, where)
        data = payload
    return DecodedBatch(h, where, data, path, lazy)





def scan_batch(buf: Any, at: int, pos: int, end: int, expect: int, path: Optional[str],
               read: Optional[Callable[[int], Any]] = None) -> BatchHeader:
    """(Scans: recovery, ``verify``) The header of the whole, valid batch at ``buf[at:]``
    (file position ``pos``; the data ends at file position ``end``; its base offset must be at
    least ``expect``), every byte checked (:func:`decode` with ``deep``); CorruptLogError
    otherwise. ``buf`` holds the whole batch, or (with ``read(n)``, which reads its ``n``
    bytes) at least its header."""
    if end - pos < HEADER_SIZE:
        raise CorruptLogError("truncated batch header", path, pos)
    h = parse_header(buf, at)
    check_header(h, path, pos)
    if pos + h.length > end:
        raise CorruptLogError("truncated batch (torn write)", path, pos)
    if read is not None:
        buf, at = read(h.length), 0
    decode(buf, at, h, path, pos, header_checked=True, deep=True)
    if h.base_offset < expect:
        raise CorruptLogError(f"batch base offset {h.base_offset} goes back (expected >= "
                              f"{expect})", path, pos)
    return h
