"""Batch headers: the fixed 64-byte header of ``segments/FORMAT.md``, its constants, parsing,
structural checks, and the checksums of both batch versions. No I/O: bytes in, values or errors
out.

Version 1 batches carry one CRC32C over the whole batch. Version 2 batches carry one too when
they are small; larger ones carry a *chunk table* after their payload: the running CRC32C from
byte 8 of the batch (the header after its CRC field) to the end of every chunk of the payload
(2 KiB by default), the header's own CRC covering the header alone. A reader checks any run of
chunks with one call (seeded with the table entry before it; a run from the first chunk also
checks the header), the header alone with one call, and the whole batch with one call: it
verifies exactly the bytes it returns and the bytes it used to find them (:func:`check_spans`,
:func:`check_two`), or everything (:func:`crc_ok`, :func:`chunks_ok`).

The writer half (:mod:`logstore.format.encode`) and the reader half
(:mod:`logstore.format.decode`, :mod:`logstore.format.extract`) both build on this module;
FORMAT.md is the contract.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Any, Dict, NamedTuple, Optional

import crc32c as _crc32c

from ..errors import CorruptLogError, UnsupportedFormatError

MAGIC = b"LSTB"
FORMAT_VERSION = 2  # the batch version this logstore writes
VERSION_1 = 1  # still read (and appended to: new batches are version 2, see FORMAT.md)
HEADER = struct.Struct("<4sIIHHqqqIIIIQ")
HEADER_SIZE = HEADER.size  # 64
ALIGN = 8
CRC_START = 8  # the CRC covers bytes [8, batch_length) of the batch: everything after itself

CODEC_MASK = 0x3
CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd"}
ATTR_TIMESTAMPS = 1 << 2  # int64 timestamp-delta column present
ATTR_OFFSET_DELTAS = 1 << 3  # int32 offset-delta column present (compacted batches have gaps)
ATTR_KEYS = 1 << 4  # int32 key-length column present
ATTR_HEADERS = 1 << 5  # int32 headers-length column present
KNOWN_ATTRS = CODEC_MASK | ATTR_TIMESTAMPS | ATTR_OFFSET_DELTAS | ATTR_KEYS | ATTR_HEADERS
# Version 2: bits 8-12 hold the chunk shift (chunk size = 1 << shift; 0 = no chunk table, the
# header CRC covers the whole batch as in version 1).
CHUNK_SHIFT_AT = 8
CHUNK_SHIFT_MASK = 0x1F << CHUNK_SHIFT_AT
MIN_CHUNK_SHIFT = 9  # 512 B
MAX_CHUNK_SHIFT = 30  # 1 GiB
KNOWN_ATTRS_V2 = KNOWN_ATTRS | CHUNK_SHIFT_MASK
# Version 2 item columns hold *end positions*: bits 0-30 the position in the raw payload where
# the item ends, bit 31 set for a null key or value (which then ends where it starts).
END_MASK = 0x7FFFFFFF
NULL_BIT = 0x80000000

MAX_TIMESTAMP = 2**63 - 1
# Header fields are uint32; a batch (header + payload + padding) must fit one.
MAX_BATCH_LENGTH = (1 << 30) + (1 << 20)

# The fields a forward walk needs: magic, length, base offset, last offset delta.
WALK = struct.Struct("<4s4xI4xq20xI")
# What stepping over a batch needs (get's walk): magic (as an int), length, base offset, last
# offset delta (HEADER fields at bytes 0, 8, 16 and 44).
STEP = struct.Struct("<I4xI4xq20xI")
MAGIC_INT = int.from_bytes(MAGIC, "little")
crc32c = _crc32c.crc32c
I32 = struct.Struct("<i")
U32_PAIR = struct.Struct("<II")
I64 = struct.Struct("<q")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
PAD = bytes(ALIGN)
_int_structs: Dict[tuple, struct.Struct] = {}


def int_struct(code: str, n: int) -> struct.Struct:
    """A cached ``struct.Struct`` of ``n`` little-endian integers of type ``code``."""
    st = _int_structs.get((code, n))
    if st is None:
        st = _int_structs[(code, n)] = struct.Struct(f"<{n}{code}")
    return st


class BatchHeader(NamedTuple):
    """The fixed 64-byte header of a batch (see FORMAT.md, "Batch header")."""

    magic: bytes
    crc: int
    length: int
    version: int
    attributes: int
    base_offset: int
    base_timestamp: int
    max_timestamp: int
    record_count: int
    last_offset_delta: int
    payload_length: int
    raw_length: int
    synced_before: int  # bytes of the segment known durable when this batch was written

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> str:
        return CODEC_NAMES.get(self.attributes & CODEC_MASK, "unknown")



def align(n: int) -> int:
    """``n`` rounded up to the batch alignment (8 bytes)."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def codec_id(name: str) -> int:
    """The codec bits of the attributes for a ``compression`` setting."""
    return CODEC_ZSTD if name == "zstd" else CODEC_NONE




_new_header = partial(tuple.__new__, BatchHeader)


def parse_header(buf: Any, pos: int) -> BatchHeader:
    """Unpack the header at ``pos`` (the caller checked that 64 bytes are there)."""
    return _new_header(HEADER.unpack_from(buf, pos))


def table_bytes(attributes: int, payload_length: int) -> int:
    """(Version 2) Bytes of the chunk table after the payload: ``ceil(payload_length /
    chunk)`` u32 entries, or 0 without a table."""
    shift = (attributes >> CHUNK_SHIFT_AT) & 0x1F
    if not shift:
        return 0
    return ((payload_length + (1 << shift) - 1) >> shift) * 4


def chunk_count(h: Any) -> int:
    """Entries of the batch's chunk table (0: none; version 1 batches never have one)."""
    return table_bytes(h[4], h[10]) // 4 if h[3] == FORMAT_VERSION else 0


def header_problem(h: BatchHeader) -> Optional[str]:
    """Why the header cannot start a valid batch, or None. Checks only the header itself."""
    if h.magic != MAGIC:
        if h.magic == b"\0\0\0\0" and h.length == 0:
            return "zero bytes where a batch header should be (preallocated or torn tail)"
        return f"bad magic {h.magic!r}"
    if h.length < HEADER_SIZE or h.length % ALIGN or h.length > MAX_BATCH_LENGTH:
        return f"impossible batch length {h.length}"
    table = 0
    if h.version == FORMAT_VERSION and h.attributes & CHUNK_SHIFT_MASK:
        shift = (h.attributes >> CHUNK_SHIFT_AT) & 0x1F
        if not MIN_CHUNK_SHIFT <= shift <= MAX_CHUNK_SHIFT or h.payload_length < 1:
            return f"impossible chunk size 2**{shift} for payload length {h.payload_length}"
        table = table_bytes(h.attributes, h.payload_length)
    if not (h.length - ALIGN < HEADER_SIZE + table + h.payload_length <= h.length):
        return f"payload length {h.payload_length} does not match batch length {h.length}"
    if h.record_count < 1 or h.last_offset_delta < h.record_count - 1:
        return f"impossible record count {h.record_count} / last offset delta {h.last_offset_delta}"
    if h.base_offset < 0 or h.base_timestamp < 0 or h.max_timestamp < 0:
        return "negative base offset or timestamp"
    return None


def check_header(h: BatchHeader, path: Optional[str], pos: int) -> None:
    """Raise :class:`CorruptLogError` if the header at ``pos`` cannot start a valid batch."""
    problem = header_problem(h)
    if problem:
        raise CorruptLogError(problem, path, pos)


def check_version(h: Any, path: Optional[str], pos: int) -> None:
    """Raise :class:`UnsupportedFormatError` for a (CRC-valid) batch of an unknown format.

    Called only after the CRC matched, so that a torn tail is reported as corruption and a
    batch written by a newer logstore is never mistaken for one (and never truncated).
    ``h``: a BatchHeader or the plain tuple of its fields.
    """
    version, attributes = h[3], h[4]
    known = KNOWN_ATTRS_V2 if version == FORMAT_VERSION else KNOWN_ATTRS
    if version in (VERSION_1, FORMAT_VERSION) and not attributes & ~known and (
            attributes & CODEC_MASK) <= CODEC_ZSTD:
        return
    if version not in (VERSION_1, FORMAT_VERSION):
        raise UnsupportedFormatError(
            f"batch at byte {pos} of {path} has format version {version}; this logstore "
            f"reads versions {VERSION_1} and {FORMAT_VERSION}"
        )
    raise UnsupportedFormatError(
        f"batch at byte {pos} of {path} uses unknown attributes 0x{attributes:x}"
    )


def crc_ok(buf: Any, pos: int, h: Any) -> bool:
    """Whether the batch at ``buf[pos:]`` (header ``h``, a BatchHeader or its plain tuple,
    fitting in ``buf``) is intact, with one CRC32C call: over the whole batch (version 1, and
    version 2 without a chunk table), or from byte 8 through the payload against the chunk
    table's last (running) entry (the table's other entries: :func:`chunks_ok`)."""
    mv = memoryview(buf)
    if h[3] != FORMAT_VERSION or not h[4] & CHUNK_SHIFT_MASK:
        return crc32c(mv[pos + CRC_START : pos + h[2]]) == h[1]
    end = pos + HEADER_SIZE + h[10]
    return crc32c(mv[pos + CRC_START : end]) == U32.unpack_from(
        buf, end + table_bytes(h[4], h[10]) - 4)[0]


def check_crc(buf: Any, h: Any, path: Optional[str], file_pos: int, at: int = 0) -> None:
    """Raise CorruptLogError unless the batch at ``buf[at:]`` is intact (:func:`crc_ok`)."""
    if not crc_ok(buf, at, h):
        raise CorruptLogError("CRC32C mismatch", path, file_pos)


def chunks_ok(buf: Any, pos: int, h: Any) -> Optional[str]:
    """(``verify``, recovery scans; after :func:`crc_ok` passed) What else is wrong with a
    version 2 batch's checksums, or None: the header's own CRC, every chunk table entry
    against its chunk (so that a batch that passed this never fails a partial read), and the
    padding (zero bytes)."""
    mv = memoryview(buf)
    if h[3] != FORMAT_VERSION or not h[4] & CHUNK_SHIFT_MASK:
        return None
    if crc32c(mv[pos + CRC_START : pos + HEADER_SIZE]) != h[1]:
        return "CRC32C mismatch (batch header)"
    shift = (h[4] >> CHUNK_SHIFT_AT) & 0x1F
    size = 1 << shift
    count = (h[10] + size - 1) >> shift
    end = pos + HEADER_SIZE + h[10]
    entries = int_struct("I", count).unpack_from(buf, end)
    if any(mv[end + 4 * count : pos + h[2]]):
        return "non-zero padding after the chunk table"
    crc = h[1]
    lo = pos + HEADER_SIZE
    for i, want in enumerate(entries):
        crc = crc32c(mv[lo : min(lo + size, end)], crc)
        if crc != want:
            return f"CRC32C mismatch (payload chunk {i}: the chunk table disagrees)"
        lo += size
    return None


def check_spans(buf: Any, at: int, h: Any, spans: Any, path: Optional[str],
                file_pos: int) -> None:
    """(Version 2) Check the header and the bytes of ``spans`` of the batch at ``buf[at:]``:
    ``spans`` is a sequence of ``(lo, hi)`` byte ranges of its payload (``0 <= lo < hi <=
    payload_length``). With a chunk table: every run of chunks holding some span with one
    CRC32C call (runs that touch or are one chunk apart are checked together; a run from the
    first chunks also covers the header), and the header alone with one more call if no run
    did. Without one: the whole (small) batch, one call. Raises :class:`CorruptLogError`
    ("CRC32C mismatch") at ``file_pos`` otherwise."""
    mv = memoryview(buf)
    a = h[4]
    if not a & CHUNK_SHIFT_MASK:
        if crc32c(mv[at + CRC_START : at + h[2]]) != h[1]:
            raise CorruptLogError("CRC32C mismatch", path, file_pos)
        return
    shift = (a >> CHUNK_SHIFT_AT) & 0x1F
    payload = at + HEADER_SIZE
    end = payload + h[10]  # where the payload ends and the table starts
    runs = sorted([(lo >> shift, (hi - 1) >> shift) for lo, hi in spans])
    if not runs or runs[0][0] > 1:
        if crc32c(mv[at + CRC_START : payload]) != h[1]:
            raise CorruptLogError("CRC32C mismatch (batch header)", path, file_pos)
    elif runs:
        runs[0] = (0, runs[0][1])  # from the header on: one call checks both
    i = 0
    n = len(runs)
    while i < n:
        c0, c1 = runs[i]
        i += 1
        while i < n and runs[i][0] <= c1 + 2:  # close enough: one call for both
            if runs[i][1] > c1:
                c1 = runs[i][1]
            i += 1
        if c0:
            lo = payload + (c0 << shift)
            seed = U32.unpack_from(buf, end + 4 * c0 - 4)[0]
        else:
            lo = at + CRC_START
            seed = 0
        stop = min(payload + ((c1 + 1) << shift), end)
        if crc32c(mv[lo:stop], seed) != U32.unpack_from(buf, end + 4 * c1)[0]:
            raise CorruptLogError(f"CRC32C mismatch (payload chunks {c0}..{c1})", path,
                                  file_pos)


def check_two(buf: Any, at: int, h: Any, lo1: int, hi1: int, lo2: int, hi2: int,
              path: Optional[str], file_pos: int) -> None:
    """(Version 2 with a chunk table; ``get``'s hot path) :func:`check_spans` for the spans
    ``[lo1, hi1)`` (non-empty: the column entries) and ``[lo2, hi2)`` (the item; may be
    empty), without building any list: one or two CRC32C calls, plus one for the header when
    no run starts at the first chunks."""
    shift = (h[4] >> CHUNK_SHIFT_AT) & 0x1F
    a0 = lo1 >> shift
    a1 = (hi1 - 1) >> shift
    if hi2 > lo2:
        b0 = lo2 >> shift
        b1 = (hi2 - 1) >> shift
        if b0 < a0:
            a0, a1, b0, b1 = b0, b1, a0, a1
        if b0 <= a1 + 2:  # one run for both
            if b1 > a1:
                a1 = b1
            b0 = -1
    else:
        b0 = -1
    mv = memoryview(buf)
    payload = at + HEADER_SIZE
    end = payload + h[10]
    if a0 > 1:
        if crc32c(mv[at + CRC_START : payload]) != h[1]:
            raise CorruptLogError("CRC32C mismatch (batch header)", path, file_pos)
        lo = payload + (a0 << shift)
        seed = U32.unpack_from(buf, end + 4 * a0 - 4)[0]
    else:  # from the header on
        lo = at + CRC_START
        seed = 0
    if crc32c(mv[lo : min(payload + ((a1 + 1) << shift), end)], seed) != U32.unpack_from(
            buf, end + 4 * a1)[0]:
        raise CorruptLogError(f"CRC32C mismatch (payload chunks {a0}..{a1})", path, file_pos)
    if b0 >= 0:
        seed = U32.unpack_from(buf, end + 4 * b0 - 4)[0] if b0 else 0
        if crc32c(mv[payload + (b0 << shift) if b0 else at + CRC_START :
                     min(payload + ((b1 + 1) << shift), end)], seed) != U32.unpack_from(
                buf, end + 4 * b1)[0]:
            raise CorruptLogError(f"CRC32C mismatch (payload chunks {b0}..{b1})", path,
                                  file_pos)
