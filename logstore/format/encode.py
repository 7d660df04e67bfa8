"""Record-batch encoding: the writer half of ``segments/FORMAT.md`` (columns, optional zstd,
framing with base offset, CRC32C and padding). No I/O.

Encoding runs outside the log's lock (:func:`prepare_batch`, :func:`prepare_one`,
:func:`prepare_from_buffer` give a :class:`PreparedBatch`); framing (:func:`frame`,
:func:`frame_single`) runs under it, once the base offset is known.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import zstandard

from ..errors import RecordTooLargeError
from .header import (
    ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CODEC_NONE, CODEC_ZSTD,
    CRC_START, FORMAT_VERSION, HEADER, HEADER_SIZE, MAGIC, MAX_BATCH_LENGTH, MAX_TIMESTAMP, PAD,
    I32, U16, U32, align, crc32c, int_struct,
)

_ZERO_HEADER = bytes(HEADER_SIZE)  # room for the header, packed in place by frame()


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
        return align(HEADER_SIZE + self.payload_length)



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


def _int32s(values: List[int]) -> bytes:
    """``values`` as little-endian int32s."""
    if len(values) <= 4096:
        return int_struct("i", len(values)).pack(*values)
    return np.array(values, dtype="<i4").tobytes()


def _column(items: Sequence[Any], what: str, nullable: bool) -> tuple:
    """Join bytes-like ``items`` into one blob; return (blob, int32 lengths with -1 for None,
    as little-endian bytes)."""
    try:
        # Common case, in two C-level passes: len() fails on None, join() on non-buffers, and
        # the sum check catches buffers whose len() is not their byte count.
        lengths = list(map(len, items))
        blob = b"".join(items)
        if sum(lengths) == len(blob):
            return blob, _int32s(lengths)
    except TypeError:
        pass
    blob, lengths = _column_checked(items, what, nullable)
    return blob, lengths.astype("<i4").tobytes()


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
) -> PreparedBatch:
    """``parts``: the raw payload in pieces (bytes-like, byte-sized items)."""
    raw_length = sum(map(len, parts))
    if raw_length > max_bytes:
        raise RecordTooLargeError(
            f"batch of {n} record(s) encodes to {raw_length} bytes, above "
            f"max_record_bytes={max_bytes}; nothing was written"
        )
    if compression == CODEC_ZSTD and raw_length > 64:
        packed = _compressor(level).compress(b"".join(parts))
        if len(packed) < raw_length:  # keep incompressible data raw: cheaper to read
            return PreparedBatch(attrs | CODEC_ZSTD, n, last_delta, base_ts, max_ts, (packed,),
                                 len(packed), raw_length)
    return PreparedBatch(attrs, n, last_delta, base_ts, max_ts, parts, raw_length, raw_length)


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
        parts.append(I32.pack(len(key)))
        tail.append(key)
    if value is None:
        parts.append(b"\xff\xff\xff\xff")
    else:
        if type(value) is not bytes:
            _byte_length(value, "value", None)
            value = bytes(memoryview(value))
        parts.append(I32.pack(len(value)))
        tail.append(value)
    if headers:
        hb = encode_headers(headers)
        attrs |= ATTR_HEADERS
        parts.append(I32.pack(len(hb)))
        tail.append(hb)
    return _finish(attrs, 1, 0, timestamp_ms, timestamp_ms, tuple(parts + tail), compression,
                   level, max_bytes)


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

    if keys is not None and any(k is not None for k in keys):
        key_blob, key_lens = _column(keys, "key", nullable=True)
        attrs |= ATTR_KEYS
        columns.append(key_lens)
        blobs.append(key_blob)

    value_blob, value_lens = _column(values, "value", nullable=True)
    columns.append(value_lens)
    blobs.append(value_blob)

    if headers is not None and any(headers):
        encoded = [encode_headers(h, i) for i, h in enumerate(headers)]
        attrs |= ATTR_HEADERS
        columns.append(np.fromiter(map(len, encoded), dtype="<i4", count=n).tobytes())
        blobs.append(b"".join(encoded))

    return _finish(attrs, n, last_delta, base_ts, max_ts, (*columns, *blobs), compression, level,
                   max_bytes)


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
    return _finish(0, n, n - 1, timestamp_ms, timestamp_ms, (lens.astype("<i4").tobytes(), blob),
                   compression, level, max_bytes)


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
                             1, 0, raw_len, raw_len, synced_before, len(value)),
            value,
            PAD[: length - HEADER_SIZE - raw_len],
        ))
    else:
        raw_len = 8 + len(key) + len(value)
        length = (HEADER_SIZE + raw_len + 7) & ~7
        body = b"".join((
            _TAIL_KEY_VALUE.pack(length, FORMAT_VERSION, ATTR_KEYS, base_offset, timestamp_ms,
                                 timestamp_ms, 1, 0, raw_len, raw_len, synced_before, len(key),
                                 len(value)),
            key,
            value,
            PAD[: length - HEADER_SIZE - raw_len],
        ))
    return b"".join((_MAGIC_CRC.pack(MAGIC, crc32c(body)), body))


def frame(batch: PreparedBatch, base_offset: int, synced_before: int = 0) -> bytearray:
    """Give a prepared batch its base offset, header, CRC32C and padding: the bytes to write."""
    size = HEADER_SIZE + batch.payload_length
    length = align(size)
    # One copy of the payload: header room, the pieces and the padding joined in one go.
    buf = bytearray().join((_ZERO_HEADER, *batch.parts, PAD[: length - size]))
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
    U32.pack_into(buf, 4, crc32c(memoryview(buf)[CRC_START:]))
    return buf


# ----------------------------------------------------------------------------------- reading

