"""Record-batch encoding: the writer half of ``segments/FORMAT.md`` (columns, optional zstd,
framing with base offset, checksums and padding). No I/O.

This logstore writes version 2 batches only: item columns hold end positions, and an
uncompressed batch whose payload passes :data:`CHUNK_TABLE_MIN` bytes gets a chunk table (the
running CRC32C of its payload every :data:`CHUNK_SHIFT`-sized chunk) so that readers can check
only what they read.

Encoding runs outside the log's lock (:func:`prepare_batch`, :func:`prepare_one`,
:func:`prepare_from_buffer` give a :class:`PreparedBatch`); framing (:func:`frame`,
:func:`frame_single`) runs under it, once the base offset is known.
"""

from __future__ import annotations

import struct
import threading
from itertools import accumulate
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import zstandard

from ..errors import RecordTooLargeError
from .header import (
    ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CHUNK_SHIFT_AT, CODEC_NONE,
    CODEC_ZSTD, CRC_START, FORMAT_VERSION, HEADER, HEADER_SIZE, I32, MAGIC, MAX_BATCH_LENGTH,
    MAX_TIMESTAMP, NULL_BIT, PAD, U16, U32, align, crc32c, int_struct, table_bytes,
)

_ZERO_HEADER = bytes(HEADER_SIZE)  # room for the header, packed in place by frame()
# Chunk tables: a payload above CHUNK_TABLE_MIN bytes is checked in chunks of 2**CHUNK_SHIFT
# bytes (2 KiB: a random get checks two or three of them instead of the whole batch; each
# costs the writer one more crc32c call), grown so that a batch has at most MAX_CHUNKS of them
# (a get also checks the whole table, 4 bytes per chunk). Smaller batches keep one CRC32C over
# everything, like version 1: reading 16 KiB costs about what checking chunks costs in Python,
# and batch writes of that size stay exactly as cheap as before.
CHUNK_SHIFT = 11
CHUNK_TABLE_MIN = 16 << 10
MAX_CHUNKS = 256


def chunk_shift_for(payload_length: int) -> int:
    """The chunk shift the writer uses for an uncompressed payload (0: no chunk table)."""
    if payload_length <= CHUNK_TABLE_MIN:
        return 0
    shift = CHUNK_SHIFT
    while payload_length > MAX_CHUNKS << shift:
        shift += 1
    return shift


class PreparedBatch(NamedTuple):
    """A batch's payload, encoded before its base offset is known (outside the log's lock)."""

    attributes: int
    record_count: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    # The payload as pieces (columns, value blob, ...) whose concatenation it is: frame() joins
    # them once, straight into the framed batch, instead of copying a joined payload again.
    parts: Tuple[Any, ...]
    payload_length: int
    raw_length: int

    @property
    def framed_length(self) -> int:
        return align(HEADER_SIZE + table_bytes(self.attributes, self.payload_length)
                     + self.payload_length)



# ----------------------------------------------------------------------------------- writing

_local = threading.local()


def _compressor(level: int) -> "zstandard.ZstdCompressor":
    # ZstdCompressor objects are not thread-safe: one per thread and level.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp



def _not_bytes(what: str, index: Optional[int], item: Any) -> TypeError:
    where = f"{what}" if index is None else f"{what} at index {index}"
    hint = " (encode it first, e.g. s.encode())" if isinstance(item, str) else ""
    return TypeError(
        f"{where} must be bytes-like (bytes, bytearray, memoryview) or None, "
        f"got {type(item).__name__}{hint}"
    )


def _byte_length(item: Any, what: str, index: Optional[int]) -> int:
    try:
        return memoryview(item).nbytes
    except TypeError:
        raise _not_bytes(what, index, item) from None


def _ends(lengths: Any, start: int, max_bytes: int) -> Tuple[bytes, int]:
    """(Version 2) An item column's stored entries: where each item ends, as u32 positions in
    the raw payload (bit 31 set for a null, length -1), the first item starting at ``start``;
    and where the last one ends. ``lengths``: a list of ints without nulls, or an int64 array
    (nulls as -1). RecordTooLargeError past ``max_bytes`` (before any entry overflows)."""
    if type(lengths) is list:
        end = start + sum(lengths)
        _check_size(end, len(lengths), max_bytes)
        if len(lengths) <= 4096:
            ends = list(accumulate(lengths, initial=start))
            del ends[0]
            return int_struct("I", len(ends)).pack(*ends), end
        lengths = np.array(lengths, dtype=np.int64)
    sizes = np.maximum(lengths, 0)
    ends = np.cumsum(sizes) + start
    end = int(ends[-1]) if len(ends) else start
    _check_size(end, len(lengths), max_bytes)
    if (lengths < 0).any():
        ends[lengths < 0] |= NULL_BIT
    return ends.astype("<u4").tobytes(), end


def _check_size(raw_length: int, n: int, max_bytes: int) -> None:
    if raw_length > max_bytes:
        raise RecordTooLargeError(
            f"batch of {n} record(s) encodes to more than {raw_length - 1} bytes, above "
            f"max_record_bytes={max_bytes}; nothing was written"
        )


def _column(items: Sequence[Any], what: str, nullable: bool) -> tuple:
    """Join bytes-like ``items`` into one blob; return (blob, lengths): a list of ints when no
    item is None, else an int64 array with -1 for None."""
    try:
        # Common case, in two C-level passes: len() fails on None, join() on non-buffers, and
        # the sum check catches buffers whose len() is not their byte count.
        lengths = list(map(len, items))
        blob = b"".join(items)
        if sum(lengths) == len(blob):
            return blob, lengths
    except TypeError:
        pass
    return _column_checked(items, what, nullable)


def _column_checked(items: Sequence[Any], what: str, nullable: bool) -> tuple:
    """:func:`_column` for the other cases (None, other buffers, bad items): validates every
    item and raises the precise TypeError."""
    n = len(items)
    has_none = nullable and any(x is None for x in items)
    present = [x for x in items if x is not None] if has_none else items
    try:
        blob = b"".join(present)
    except TypeError:
        for i, x in enumerate(items):
            if x is None and nullable:
                continue
            if not isinstance(x, (bytes, bytearray, memoryview)):
                _byte_length(x, what, i)  # raises for non-buffers; other buffers are fine
        blob = b"".join(bytes(memoryview(x)) for x in present)
    if has_none:
        lengths = np.fromiter(
            (-1 if x is None else len(x) for x in items), dtype=np.int64, count=n
        )
    else:
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
    if int(lengths[lengths > 0].sum()) != len(blob):
        # A multi-byte memoryview: len() counts items, not bytes.
        lengths = np.array(
            [-1 if x is None else _byte_length(x, what, i) for i, x in enumerate(items)],
            dtype=np.int64,
        )
    return blob, lengths


def encode_headers(headers: Optional[Dict[str, Any]], index: Optional[int] = None) -> bytes:
    """Encode one record's headers: repeated (u16 name length, UTF-8 name, u32 value length, value)."""
    if not headers:
        return b""
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict of str -> bytes, got {type(headers).__name__}")
    parts: List[bytes] = []
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__}")
        raw_name = name.encode("utf-8")
        if len(raw_name) > 0xFFFF:
            raise ValueError("a header name must be at most 65535 bytes in UTF-8")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _not_bytes(f"header {name!r}", index, value)
        value = bytes(value)
        parts += (U16.pack(len(raw_name)), raw_name, U32.pack(len(value)), value)
    return b"".join(parts)


def _timestamps(timestamps: Any, n: int, now_ms: int) -> Optional[np.ndarray]:
    if timestamps is None:
        return None
    try:
        if len(timestamps) != n:
            raise ValueError(f"timestamps_ms has {len(timestamps)} items for {n} values")
    except TypeError:
        raise TypeError("timestamps_ms must be a sequence of int milliseconds") from None
    arr = np.asarray(timestamps)
    if n and arr.dtype.kind not in "iu" and not (
        arr.dtype == object and all(type(t) is int for t in timestamps)
    ):
        raise TypeError("timestamps_ms must be int milliseconds since the epoch")
    if n and (min(int(arr.min()), 0) < 0 or int(arr.max()) > MAX_TIMESTAMP):
        raise ValueError(f"timestamps must be in [0, {MAX_TIMESTAMP}] ms")
    return arr.astype(np.int64)


def check_timestamp(ts: Any) -> int:
    if isinstance(ts, bool) or not isinstance(ts, (int, np.integer)):
        raise TypeError(f"timestamp_ms must be an int (milliseconds), got {type(ts).__name__}")
    ts = int(ts)
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp_ms must be in [0, {MAX_TIMESTAMP}], got {ts}")
    return ts


def _finish(
    attrs: int,
    n: int,
    last_delta: int,
    base_ts: int,
    max_ts: int,
    parts: Tuple[Any, ...],
    compression: int,
    level: int,
    max_bytes: int,
    length_parts: Optional[Callable[[], Tuple[Any, ...]]] = None,
) -> PreparedBatch:
    """``parts``: the raw payload in pieces (bytes-like, byte-sized items), item columns as end
    positions. ``length_parts()``: the same payload with item columns as lengths, for zstd."""
    raw_length = sum(map(len, parts))
    if raw_length > max_bytes:
        raise RecordTooLargeError(
            f"batch of {n} record(s) encodes to {raw_length} bytes, above "
            f"max_record_bytes={max_bytes}; nothing was written"
        )
    if compression == CODEC_ZSTD and raw_length > 64:
        # A compressed batch's item columns hold lengths, as in version 1: any read
        # decompresses the whole payload, so end positions would buy nothing, and lengths of
        # similar records compress far better (~30% smaller batches of small JSON records).
        raw = b"".join(length_parts() if length_parts is not None else parts)
        packed = _compressor(level).compress(raw)
        if len(packed) < raw_length:  # keep incompressible data raw: cheaper to read
            # (no chunk table either: reading any record means decompressing everything)
            return PreparedBatch(attrs | CODEC_ZSTD, n, last_delta, base_ts, max_ts, (packed,),
                                 len(packed), raw_length)
    attrs |= chunk_shift_for(raw_length) << CHUNK_SHIFT_AT
    return PreparedBatch(attrs, n, last_delta, base_ts, max_ts, parts, raw_length, raw_length)


def _int32s(values: Any) -> bytes:
    """Lengths (a list, or an int64 array with -1 for null) as little-endian int32s."""
    if type(values) is list and len(values) <= 4096:
        return int_struct("i", len(values)).pack(*values)
    return np.asarray(values, dtype="<i4").tobytes()


def prepare_one(
    value: Any,
    key: Any,
    headers: Optional[Dict[str, Any]],
    timestamp_ms: int,
    compression: int = CODEC_NONE,
    level: int = 3,
    max_bytes: int = MAX_BATCH_LENGTH,
) -> PreparedBatch:
    """Encode a one-record batch without numpy (the single-append hot path)."""
    attrs = 0
    parts: List[bytes] = []
    tail: List[Any] = []
    if key is not None:
        if type(key) is not bytes:
            _byte_length(key, "key", None)
            key = bytes(memoryview(key))
        attrs |= ATTR_KEYS
        tail.append(key)
    if value is not None and type(value) is not bytes:
        _byte_length(value, "value", None)
        value = bytes(memoryview(value))
    hb = b""
    if headers:
        hb = encode_headers(headers)
        attrs |= ATTR_HEADERS
    def lengths() -> Tuple[Any, ...]:
        cols = ([] if key is None else [I32.pack(len(key))]) + [
            b"\xff\xff\xff\xff" if value is None else I32.pack(len(value))] + (
            [I32.pack(len(hb))] if hb else [])
        return (*cols, *tail)

    # Item end positions (version 2): the items start after the columns (4 bytes each).
    pos = 4 + (4 if key is not None else 0) + (4 if hb else 0)
    if key is not None:
        pos += len(key)
        parts.append(U32.pack(pos))
    if value is None:
        parts.append(U32.pack(pos | NULL_BIT))
    else:
        pos += len(value)
        parts.append(U32.pack(pos))
        tail.append(value)
    if hb:
        pos += len(hb)
        parts.append(U32.pack(pos))
        tail.append(hb)
    _check_size(pos, 1, max_bytes)
    return _finish(attrs, 1, 0, timestamp_ms, timestamp_ms, tuple(parts + tail), compression,
                   level, max_bytes, lengths)


def as_sequence(items: Any, name: str = "values") -> Any:
    """``items`` as a sequence: a list, tuple or other sequence as it is, any other iterable
    (a generator...) as a list; None stays None. A single bytes/str object is refused
    (TypeError): it would be taken for a sequence of its bytes or characters."""
    if items is None or isinstance(items, (list, tuple)):
        return items
    if isinstance(items, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"{name} must be a sequence of items (a list), not a single bytes/str "
                        f"object")
    if hasattr(items, "__len__") and hasattr(items, "__getitem__"):
        return items
    try:
        return list(items)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of items, not "
                        f"{type(items).__name__}") from None


def batch_sequences(values: Any, keys: Any = None, headers: Any = None,
                    timestamps_ms: Any = None) -> Tuple[Any, Any, Any, Any]:
    """:func:`as_sequence` of a batch's values and parallel keys, headers and timestamps."""
    return (as_sequence(values), as_sequence(keys, "keys"), as_sequence(headers, "headers"),
            as_sequence(timestamps_ms, "timestamps_ms"))


def check_batch_shape(values: Any, **parallel: Any) -> int:
    """``len(values)``, after checking that ``values`` is a sequence (not one bytes/str object)
    and that every given parallel sequence (``keys=...``, ``headers=...``) has as many items.
    TypeError / ValueError otherwise."""
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError("values must be a sequence of bytes-like objects (a list), "
                        "not a single bytes/str object")
    n = len(values)
    for name, seq in parallel.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} items for {n} values")
    return n


def prepare_batch(
    values: Sequence[Any],
    keys: Optional[Sequence[Any]],
    headers: Optional[Sequence[Optional[Dict[str, Any]]]],
    timestamps_ms: Any,
    now_ms: int,
    compression: int = CODEC_NONE,
    level: int = 3,
    max_bytes: int = MAX_BATCH_LENGTH,
    offset_deltas: Optional[np.ndarray] = None,
) -> PreparedBatch:
    """Encode a batch of ``len(values) >= 1`` records. Validates every argument first."""
    n = len(values)
    if n == 0:
        raise ValueError("a batch needs at least one record")
    if n > 0x7FFFFFFF:
        raise ValueError("too many records for one batch")
    for name, seq in (("keys", keys), ("headers", headers)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} items for {n} values")
    attrs = 0
    columns: List[bytes] = []
    blobs: List[bytes] = []

    ts = _timestamps(timestamps_ms, n, now_ms)
    if ts is None:
        base_ts = max_ts = now_ms
    else:
        base_ts = int(ts[0])
        max_ts = int(ts.max())
        deltas = ts - base_ts
        if deltas.any():
            attrs |= ATTR_TIMESTAMPS
            columns.append(deltas.astype("<i8").tobytes())

    last_delta = n - 1
    if offset_deltas is not None:
        attrs |= ATTR_OFFSET_DELTAS
        columns.append(np.asarray(offset_deltas, dtype="<i4").tobytes())
        last_delta = int(offset_deltas[-1])

    key_blob = header_blob = None
    if keys is not None and any(k is not None for k in keys):
        key_blob, key_lens = _column(keys, "key", nullable=True)
        attrs |= ATTR_KEYS
    value_blob, value_lens = _column(values, "value", nullable=True)
    if headers is not None and any(headers):
        encoded = [encode_headers(h, i) for i, h in enumerate(headers)]
        attrs |= ATTR_HEADERS
        header_blob = b"".join(encoded)
        header_lens = list(map(len, encoded))

    fixed_columns = tuple(columns)

    def lengths() -> Tuple[Any, ...]:
        cols = [_int32s(key_lens)] if key_blob is not None else []
        cols.append(_int32s(value_lens))
        if header_blob is not None:
            cols.append(_int32s(header_lens))
        return (*fixed_columns, *cols, *blobs)

    # Item end columns (version 2): positions in the raw payload, items after the columns.
    pos = sum(map(len, columns)) + 4 * n * (
        1 + (key_blob is not None) + (header_blob is not None))
    if key_blob is not None:
        ends, pos = _ends(key_lens, pos, max_bytes)
        columns.append(ends)
        blobs.append(key_blob)
    ends, pos = _ends(value_lens, pos, max_bytes)
    columns.append(ends)
    blobs.append(value_blob)
    if header_blob is not None:
        ends, pos = _ends(header_lens, pos, max_bytes)
        columns.append(ends)
        blobs.append(header_blob)

    return _finish(attrs, n, last_delta, base_ts, max_ts, (*columns, *blobs), compression, level,
                   max_bytes, lengths)


def prepare_from_buffer(
    data: Any,
    lengths: Any,
    timestamp_ms: int,
    compression: int = CODEC_NONE,
    level: int = 3,
    max_bytes: int = MAX_BATCH_LENGTH,
) -> PreparedBatch:
    """Encode a batch from one contiguous buffer of values and their lengths (bulk loads)."""
    blob = memoryview(data).cast("B")
    lens = np.asarray(lengths)
    if lens.ndim != 1 or lens.dtype.kind not in "iu":
        raise TypeError("lengths must be a 1-D array of ints")
    n = len(lens)
    if n == 0:
        raise ValueError("a batch needs at least one record")
    if int(lens.min()) < 0:
        raise ValueError("lengths must be >= 0 (use append_batch with None for tombstones)")
    if int(lens.sum()) != blob.nbytes:
        raise ValueError(f"lengths add up to {int(lens.sum())} but the buffer has {blob.nbytes} bytes")
    raw_len = n * 4 + blob.nbytes
    if raw_len > max_bytes:
        raise RecordTooLargeError(
            f"batch of {n} record(s) encodes to {raw_len} bytes, above "
            f"max_record_bytes={max_bytes}; nothing was written"
        )
    ends = np.cumsum(lens, dtype=np.int64)
    ends += 4 * n
    return _finish(0, n, n - 1, timestamp_ms, timestamp_ms, (ends.astype("<u4").tobytes(), blob),
                   compression, level, max_bytes,
                   lambda: (lens.astype("<i4").tobytes(), blob))


# The header from byte 8 on (what the CRC covers) followed by the first column entries of a
# one-record batch: its value length, or its key and value lengths.
_TAIL_VALUE = struct.Struct("<IHHqqqIIIIQi")
_TAIL_KEY_VALUE = struct.Struct("<IHHqqqIIIIQii")
_MAGIC_CRC = struct.Struct("<4sI")


def frame_single(base_offset: int, timestamp_ms: int, value: bytes, key: Optional[bytes],
                 synced_before: int = 0) -> bytes:
    """Frame a one-record, uncompressed, header-less batch in one go (``append`` hot path).

    Produces exactly the bytes ``frame(prepare_one(...), base_offset)`` would.
    """
    if key is None:
        raw_len = 4 + len(value)
        length = (HEADER_SIZE + raw_len + 7) & ~7
        body = b"".join((
            _TAIL_VALUE.pack(length, FORMAT_VERSION, 0, base_offset, timestamp_ms, timestamp_ms,
                             1, 0, raw_len, raw_len, synced_before, raw_len),
            value,
            PAD[: length - HEADER_SIZE - raw_len],
        ))
    else:
        raw_len = 8 + len(key) + len(value)
        length = (HEADER_SIZE + raw_len + 7) & ~7
        body = b"".join((
            _TAIL_KEY_VALUE.pack(length, FORMAT_VERSION, ATTR_KEYS, base_offset, timestamp_ms,
                                 timestamp_ms, 1, 0, raw_len, raw_len, synced_before,
                                 8 + len(key), raw_len),
            key,
            value,
            PAD[: length - HEADER_SIZE - raw_len],
        ))
    return b"".join((_MAGIC_CRC.pack(MAGIC, crc32c(body)), body))


def frame(batch: PreparedBatch, base_offset: int, synced_before: int = 0) -> bytearray:
    """Give a prepared batch its base offset, header, checksums and padding: the bytes to
    write. A batch with a chunk shift gets its chunk table after the payload (entry ``i``: the
    running CRC32C from byte 8 to the end of payload chunk ``i``) and a header CRC over the
    header alone; otherwise the header CRC covers the whole batch."""
    table = table_bytes(batch.attributes, batch.payload_length)
    size = HEADER_SIZE + batch.payload_length + table
    length = align(size)
    # One copy of the payload: header room, the pieces, table room and padding joined at once.
    buf = bytearray().join((_ZERO_HEADER, *batch.parts, bytes(length - size + table)))
    HEADER.pack_into(
        buf,
        0,
        MAGIC,
        0,
        length,
        FORMAT_VERSION,
        batch.attributes,
        base_offset,
        batch.base_timestamp,
        batch.max_timestamp,
        batch.record_count,
        batch.last_offset_delta,
        batch.payload_length,
        batch.raw_length,
        synced_before,
    )
    mv = memoryview(buf)
    if table:
        shift = (batch.attributes >> CHUNK_SHIFT_AT) & 0x1F
        chunk = 1 << shift
        end = HEADER_SIZE + batch.payload_length
        crc = crc32c(mv[CRC_START:HEADER_SIZE])
        U32.pack_into(buf, 4, crc)
        entries = []
        for lo in range(HEADER_SIZE, end, chunk):
            crc = crc32c(mv[lo : min(lo + chunk, end)], crc)
            entries.append(crc)
        int_struct("I", len(entries)).pack_into(buf, end, *entries)
    else:
        U32.pack_into(buf, 4, crc32c(mv[CRC_START:]))
    mv.release()
    return buf


# ----------------------------------------------------------------------------------- reading



def reseal(buf: Any, pos: int) -> None:
    """Recompute, in place, the checksums of the batch at ``buf[pos]`` (a bytearray) from its
    header as it now is: for tools and tests that craft batches (a field changed on purpose,
    checksums valid). A version 2 batch whose header describes a chunk table gets the table and
    the header CRC; any other gets one CRC32C over ``[8, length)`` (or to the end of ``buf``)."""
    length, version, attrs = struct.unpack_from("<IHH", buf, pos + 8)
    payload_length = U32.unpack_from(buf, pos + 48)[0]
    end = min(pos + length, len(buf))
    mv = memoryview(buf)
    shift = (attrs >> CHUNK_SHIFT_AT) & 0x1F
    table = table_bytes(attrs, payload_length) if version == FORMAT_VERSION else 0
    data_end = pos + HEADER_SIZE + payload_length
    if table and shift >= 9 and data_end + table <= end:
        crc = crc32c(mv[pos + CRC_START : pos + HEADER_SIZE])
        U32.pack_into(buf, pos + 4, crc)
        chunk = 1 << shift
        for i, lo in enumerate(range(pos + HEADER_SIZE, data_end, chunk)):
            crc = crc32c(mv[lo : min(lo + chunk, data_end)], crc)
            U32.pack_into(buf, data_end + 4 * i, crc)
    elif end - pos >= CRC_START:
        U32.pack_into(buf, pos + 4, crc32c(mv[pos + CRC_START : end]))
    mv.release()
