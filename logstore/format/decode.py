"""Record-batch decoding: the reader half of ``segments/FORMAT.md``.

:func:`decode` turns a CRC-checked batch into a :class:`DecodedBatch` of numpy columns (parsed
lazily, cross-checked at first use); :func:`extract_record` / :func:`extract_records` read only
the column entries of the records asked for (random-access ``get``). Columns are decoded with
numpy in one call each, so reading a batch costs a handful of C calls whatever the number of
records; only turning records into Python objects is per-record work. No I/O.
"""

from __future__ import annotations

import struct
import threading
from functools import partial
from itertools import accumulate, repeat
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zstandard

if TYPE_CHECKING:
    import numpy.typing as npt

from ..errors import CorruptLogError
from ..record import Record
from .header import (
    ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CODEC_MASK, CODEC_ZSTD, CRC_START, FORMAT_VERSION, HEADER_SIZE, I32, I64, KNOWN_ATTRS, U16, U32,
    BatchHeader, check_header, check_version, crc32c, int_struct,
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
        elif name.endswith("_lengths"):
            # The stored int32 column itself (checked by the parse): zero-copy, as for large
            # batches.
            arr = np.frombuffer(self.data, dtype="<i4", count=len(lst),
                                offset=self._length_column_at(name))
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

    The CRC is checked before a DecodedBatch exists. The columns are parsed and cross-checked
    (lengths add up to the payload, offsets increase, timestamps match the header) when the
    batch is built, or with ``lazy=True`` at the first access to any column, value, key,
    header or record: a reader that only needs ``len(batch)`` or the header pays for neither,
    and nothing unchecked is ever handed out.
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
        if a & ATTR_KEYS:
            (kl,) = I32.unpack_from(data, 0)
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
        if vl < -1:
            raise self._corrupt("negative value length")
        lists["value_lengths"] = [vl]
        lists["value_offsets"] = [start]
        if vl > 0:
            start += vl
        if a & ATTR_HEADERS:
            (hl,) = I32.unpack_from(data, pos + 4)
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
        columns = _length_columns(data, pos, n, a, fixed, len(data), self._path, self.position)
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
        start = fixed
        for name, flag, minimum in (("key", ATTR_KEYS, -1), ("value", -1, -1),
                                    ("header", ATTR_HEADERS, 0)):
            if flag != -1 and not a & flag:
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
        if start != len(data):
            raise self._corrupt("record lengths do not add up to the payload length")
        if int(arrays["timestamps"].max()) != h.max_timestamp:
            raise self._corrupt("max timestamp does not match the records")

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
        if lens is None:
            return {}
        s = self._column("header_offsets", i, i + 1)[0]
        return self._parse_headers(bytes(self.data[s : s + lens[0]]))

    def _parse_headers(self, raw: bytes) -> Dict[str, bytes]:
        return self._headers_from(raw, self._path, self.position)

    @staticmethod
    def _headers_from(raw: bytes, path: Optional[str], position: int) -> Dict[str, bytes]:
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
            hdrs = self.headers(i) if lists["header_lengths"] is not None else {}
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
            hdrs: Any = [{} for _ in range(count)]
        else:
            hs = col("header_offsets", start, stop)
            hdrs = [self._parse_headers(data[s : s + l]) if l else {} for s, l in zip(hs, hl)]
        return list(map(_make_record, zip(offs, tss, keys, values, hdrs, repeat(partition))))


_make_record = partial(tuple.__new__, Record)  # C-level, no per-record Python frame


def decode(
    buf: Any,
    pos: int,
    h: BatchHeader,
    path: Optional[str],
    file_pos: Optional[int] = None,
    header_checked: bool = False,
    lazy: bool = False,
) -> DecodedBatch:
    """Validate (CRC, structure) and decode the batch whose header ``h`` was read at ``pos``.

    ``buf`` must hold at least ``pos + h.length`` bytes; ``file_pos`` is where ``buf[pos]`` lies
    in the file (default ``pos``), for error messages. Raises :class:`CorruptLogError` naming
    ``path`` and the file position for any inconsistency; never returns unvalidated data.
    """
    where = pos if file_pos is None else file_pos
    if not header_checked:
        check_header(h, path, where)
    mv = memoryview(buf)
    if pos + h.length > len(mv):
        raise CorruptLogError("batch runs past the end of the file", path, where)
    if crc32c(mv[pos + CRC_START : pos + h.length]) != h.crc:
        raise CorruptLogError("CRC32C mismatch", path, where)
    check_version(h, path, where)
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



_SUM_STRUCTS: List[Optional[struct.Struct]] = [None] * 2049  # "<{n}I", by n, made on first use


def lengths_before(buf: Any, col: int, count: int) -> int:
    """Sum of the non-negative int32 lengths among the first ``count`` entries at ``col``
    (-1 marks null and counts 0). ``buf`` is bytes or an mmap. struct beats numpy's call
    overhead for small counts."""
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


def _length_columns(buf: Any, pos: int, n: int, attributes: int, data_start: int, end: int,
                    path: Optional[str], file_pos: Optional[int]) -> List[Tuple[Any, Any]]:
    """The key, value and header length columns of a batch (stored in that order from
    ``buf[pos]``; key and header ones only when ``attributes`` says so), each as ``(lengths,
    starts)``: the int32 lengths and where each item begins, items being stored one after
    another from ``data_start`` (keys, then values, then headers). ``(None, None)`` for an
    absent column. Checks what a small batch's parse checks: no length below -1 (below 0 for
    headers) and the lengths adding up to ``end`` exactly; CorruptLogError otherwise."""
    ints = int_struct("i", n)
    out: List[Tuple[Any, Any]] = []
    start = data_start
    for name, flag, minimum in (("key", ATTR_KEYS, -1), ("value", 0, -1),
                                ("header", ATTR_HEADERS, 0)):
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


_new_record = partial(tuple.__new__, Record)

def extract_record(buf: Any, h: BatchHeader, offset: int, path: Optional[str],
                   file_pos: int, at: int = 0, partition: Optional[int] = None,
                   crc_checked: bool = False) -> Optional[Record]:
    """The record at ``offset`` from the framed batch at ``buf[at:]`` (random-access ``get``).

    ``buf`` is bytes or an mmap. ``h`` is the batch's header, already checked by
    :func:`header_problem` and known to fit in ``buf``. Checks the CRC (unless the caller did,
    ``crc_checked``: :func:`check_crc` on these very bytes), then reads only the column entries
    it needs (struct) instead of decoding the whole batch. Returns None when the record is
    absent (a compaction gap). Falls back to :func:`decode` for compressed batches and batches
    with offset deltas. ``partition`` is set on the returned record.
    """
    a = h[4]  # attributes (tuple indexing: this is the hottest read path)
    if a & (CODEC_MASK | ATTR_OFFSET_DELTAS):
        batch = decode(buf[at : at + h.length], 0, h, path, file_pos, True)
        j = batch.index_of(offset)
        if j >= len(batch) or batch.offset_at(j) != offset:
            return None
        rec = batch.record_at(j)
        return rec if partition is None else rec._replace(partition=partition)
    if not crc_checked and crc32c(memoryview(buf)[at + CRC_START : at + h[2]]) != h[1]:
        raise CorruptLogError("CRC32C mismatch", path, file_pos)
    if h[3] != FORMAT_VERSION or a & ~KNOWN_ATTRS:
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
    headers: Dict[str, bytes] = {}
    if hl_pos >= 0:
        (hl,) = I32.unpack_from(buf, hl_pos + 4 * j)
        if kl_pos >= 0 and vl < 0:
            col += lengths_before(buf, kl_pos, n)  # (not added above: the value was null)
        hs = col + lengths_before(buf, vl_pos, n) + lengths_before(buf, hl_pos, j)
        if hl < 0 or hs + hl > end:
            raise CorruptLogError("headers run past the payload", path, file_pos)
        if hl:
            headers = DecodedBatch._headers_from(bytes(buf[hs : hs + hl]), path, file_pos)
    if vl < -1 or kl < -1 or not 0 <= ts <= h[7]:
        raise CorruptLogError("impossible record fields", path, file_pos)
    return _new_record((offset, ts, key, value, headers, partition))


def extract_records(buf: Any, h: Any, offsets: Sequence[int], path: Optional[str],
                    file_pos: int, at: int = 0) -> List[Record]:
    """The records at ``offsets`` (ascending, repeats allowed, all inside the batch) of the
    plain batch at ``buf[at:]`` whose CRC the caller checked (:func:`check_crc`).

    :func:`extract_record` for several records at once (``get_many``): the length columns are
    read once and their running sums give every record's place, so each further record costs
    a few slices instead of its own column sums. The columns are checked as a decoded batch's
    are: the lengths must add up to the payload exactly. ``h`` is the header as a BatchHeader or
    its plain tuple (dense, uncompressed: callers route other batches to :func:`decode`).
    """
    a = h[4]
    if h[3] != FORMAT_VERSION or a & ~KNOWN_ATTRS:
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
    (kls, kss), (vls, vss), (hls, hss) = _length_columns(buf, col, n, a, at + HEADER_SIZE +
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
        headers: Dict[str, bytes] = {}
        if hls is not None and hls[j]:
            hs = hss[j]
            headers = DecodedBatch._headers_from(bytes(buf[hs : hs + hls[j]]), path, file_pos)
        out.append(_new_record((offset, ts, key, value, headers, None)))
    return out
