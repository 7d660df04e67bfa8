"""Batch headers: the fixed 64-byte header of ``segments/FORMAT.md``, its constants, parsing,
structural checks and CRC32C. No I/O: bytes in, values or errors out.

The writer half (:mod:`logstore.format.encode`) and the reader half
(:mod:`logstore.format.decode`) both build on this module; FORMAT.md is the contract.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Any, Dict, NamedTuple, Optional

import crc32c as _crc32c

from ..errors import CorruptLogError, UnsupportedFormatError

MAGIC = b"LSTB"
FORMAT_VERSION = 1
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


def header_problem(h: BatchHeader) -> Optional[str]:
    """Why the header cannot start a valid batch, or None. Checks only the header itself."""
    if h.magic != MAGIC:
        if h.magic == b"\0\0\0\0" and h.length == 0:
            return "zero bytes where a batch header should be (preallocated or torn tail)"
        return f"bad magic {h.magic!r}"
    if h.length < HEADER_SIZE or h.length % ALIGN or h.length > MAX_BATCH_LENGTH:
        return f"impossible batch length {h.length}"
    if not (h.length - ALIGN < HEADER_SIZE + h.payload_length <= h.length):
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


def check_version(h: BatchHeader, path: Optional[str], pos: int) -> None:
    """Raise :class:`UnsupportedFormatError` for a (CRC-valid) batch of an unknown format.

    Called only after the CRC matched, so that a torn tail is reported as corruption and a
    batch written by a newer logstore is never mistaken for one (and never truncated).
    """
    if h.version == FORMAT_VERSION and not h.attributes & ~KNOWN_ATTRS and (
            h.attributes & CODEC_MASK) <= CODEC_ZSTD:
        return
    if h.version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"batch at byte {pos} of {path} has format version {h.version}; this logstore "
            f"reads version {FORMAT_VERSION}"
        )
    if h.attributes & ~KNOWN_ATTRS or (h.attributes & CODEC_MASK) > CODEC_ZSTD:
        raise UnsupportedFormatError(
            f"batch at byte {pos} of {path} uses unknown attributes 0x{h.attributes:x}"
        )


def crc_ok(buf: Any, pos: int, h: BatchHeader) -> bool:
    return crc32c(memoryview(buf)[pos + CRC_START : pos + h.length]) == h.crc



def check_crc(buf: Any, h: Any, path: Optional[str], file_pos: int, at: int = 0) -> None:
    """Raise CorruptLogError unless the batch at ``buf[at:]`` matches the CRC32C of its header
    ``h`` (a BatchHeader or the plain tuple of its fields)."""
    if crc32c(memoryview(buf)[at + CRC_START : at + h[2]]) != h[1]:
        raise CorruptLogError("CRC32C mismatch", path, file_pos)

