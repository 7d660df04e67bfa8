"""The key index file of a sealed segment (``<base>.keyindex``, ``segments/FORMAT.md``, "Key
index"): the 64-bit key hash, the file's header, its block checksums. Pure: bytes in, values
(or a reason why not) out; no I/O.

A key index lists every keyed record of one segment as ``(hash of its key, relative offset,
batch position)``, sorted by hash (then offset), as two columns: ``hashes`` (u64) and ``locs``
(the offset-index packing ``relative_offset << 32 | position``, one int64). A lookup is one
``searchsorted`` on the hash column. Entries are checked in blocks of ``BLOCK_ENTRIES`` (a
CRC32C per block, the table of block CRCs under the header's CRC), so that a lookup verifies
only the blocks it reads, yet never misses an entry a damaged block hid (see
:func:`blocks_to_check`).

The hash (``key_hash`` for one key, ``key_hashes`` vectorised over many): the key's bytes,
zero-padded to a multiple of 8, read as little-endian u64 words ``w_0 .. w_{m-1}``;
``acc = sum_j fmix64(w_j ^ ((j + 1) * GOLDEN))`` modulo 2**64; ``hash = fmix64(acc ^
fmix64(len(key)))``, ``fmix64`` being MurmurHash3's 64-bit finaliser. Stable across processes,
machines and Python versions; computable with a few numpy operations per word *column*, so
indexing a segment costs no Python work per record. Two keys may share a hash: readers compare
the key of every record an entry leads to.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from .header import crc32c

KEY_INDEX_MAGIC = b"LSKI"
KEY_INDEX_VERSION = 1
HASH_ID = 1  # the key hash defined above (a header field: another hash is another id)
BLOCK_ENTRIES = 4096  # entries per checked block (64 KiB of hashes and locs)
# magic, crc, version, hash id, block entries, base offset, next offset, segment size,
# entry count, last batch position, first batch crc, last batch crc, reserved
KEY_INDEX_HEADER = struct.Struct("<4sIHHIqqQIIIIQ")
KEY_INDEX_HEADER_SIZE = KEY_INDEX_HEADER.size  # 64
HASH_DTYPE = np.dtype("<u8")
LOC_DTYPE = np.dtype("<i8")
ENTRY_BYTES = HASH_DTYPE.itemsize + LOC_DTYPE.itemsize
MAX_ENTRIES = 2**32 - 1

_M64 = (1 << 64) - 1
_C1 = 0xFF51AFD7ED558CCD
_C2 = 0xC4CEB9FE1A85EC53
GOLDEN = 0x9E3779B97F4A7C15
_U = np.uint64
_WORD_COLUMNS = 8  # key words hashed column by column; longer keys' further words in one go


class KeyIndexHeader(NamedTuple):
    """The 64-byte header of a key index file: what it indexes (the segment's identity) and
    how its entries are laid out."""

    base_offset: int
    next_offset: int  # the segment's next offset (the next segment's base)
    segment_size: int  # bytes of the segment's .log file
    count: int  # entries
    last_batch: int  # position of the segment's last batch (0 when it has none)
    first_crc: int  # the crc field of the batch at position 0 (0 when it has none)
    last_crc: int  # the crc field of the last batch (0 when it has none)
    block_entries: int = BLOCK_ENTRIES


# ----------------------------------------------------------------------------- the hash
def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * _C1) & _M64
    x ^= x >> 33
    x = (x * _C2) & _M64
    return x ^ (x >> 33)


def key_hash(key: bytes) -> int:
    """The 64-bit hash of one key (the same value :func:`key_hashes` computes)."""
    n = len(key)
    acc = 0
    if n:
        padded = bytes(key) + bytes(-n % 8)
        for j, (w,) in enumerate(struct.iter_unpack("<Q", padded)):
            acc += _fmix(w ^ (((j + 1) * GOLDEN) & _M64))
    return _fmix((acc & _M64) ^ _fmix(n))


def _fmix_array(x: np.ndarray) -> np.ndarray:
    """fmix64 of every element, in place (uint64 arithmetic wraps modulo 2**64)."""
    x ^= x >> _U(33)
    x *= _U(_C1)
    x ^= x >> _U(33)
    x *= _U(_C2)
    x ^= x >> _U(33)
    return x


def _words(view: np.ndarray, pos: np.ndarray, rem: np.ndarray) -> np.ndarray:
    """The words starting at byte ``pos`` (unaligned), keeping only ``rem`` bytes of each."""
    w = view[pos]
    short = rem < 8
    if short.any():
        w[short] &= (_U(1) << (rem[short] * 8).astype(np.uint64)) - _U(1)
    return w


def key_hashes(buf: Any, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 hashes of the keys ``buf[starts[i] : starts[i] + lengths[i]]`` (lengths >= 0),
    vectorised: a few numpy calls per 8-byte word column, none per key."""
    n = len(lengths)
    out = np.zeros(n, dtype=np.uint64)
    if not n:
        return out
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = np.frombuffer(bytes(buf) + bytes(8), dtype=np.uint8)
    # Every byte position as the start of a little-endian u64 (unaligned, no copy).
    view = np.ndarray(shape=(len(padded) - 7,), dtype=HASH_DTYPE, buffer=padded, strides=(1,))
    words = (lengths + 7) >> 3
    top = int(words.max())
    for j in range(min(top, _WORD_COLUMNS)):
        sel = words > j
        if j == 0 and sel.all():
            w = _words(view, starts, lengths)
            idx = None
        else:
            idx = np.flatnonzero(sel)
            w = _words(view, starts[idx] + 8 * j, lengths[idx] - 8 * j)
        w ^= _U(((j + 1) * GOLDEN) & _M64)
        _fmix_array(w)
        if idx is None:
            out += w
        else:
            out[idx] += w
    if top > _WORD_COLUMNS:  # the further words of long keys, all at once
        idx = np.flatnonzero(words > _WORD_COLUMNS)
        more = words[idx] - _WORD_COLUMNS
        first = np.cumsum(more) - more
        total = int(more.sum())
        j = np.arange(total, dtype=np.int64) - np.repeat(first, more) + _WORD_COLUMNS
        w = _words(view, np.repeat(starts[idx], more) + 8 * j,
                   np.repeat(lengths[idx], more) - 8 * j)
        w ^= (j + 1).astype(np.uint64) * _U(GOLDEN)
        _fmix_array(w)
        sums = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum(w, out=sums[1:])
        out[idx] += sums[first + more] - sums[first]
    out ^= _fmix_array(lengths.astype(np.uint64))
    return _fmix_array(out)


# ----------------------------------------------------------------------------- the file
def table_offset() -> int:
    return KEY_INDEX_HEADER_SIZE


def blocks(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return -(-count // block_entries)


def columns_offset(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    """Where the hash column starts: after the header and the block CRC table, 8-aligned."""
    end = KEY_INDEX_HEADER_SIZE + 4 * blocks(count, block_entries)
    return (end + 7) & ~7


def file_size(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return columns_offset(count, block_entries) + ENTRY_BYTES * count


def block_crc(hashes: np.ndarray, locs: np.ndarray, b: int,
              block_entries: int = BLOCK_ENTRIES) -> int:
    """CRC32C of block ``b``: its hashes' bytes, then its locs' bytes."""
    lo, hi = b * block_entries, (b + 1) * block_entries
    return crc32c(memoryview(np.ascontiguousarray(locs[lo:hi])).cast("B"),
                  crc32c(memoryview(np.ascontiguousarray(hashes[lo:hi])).cast("B")))


def encode_key_index(h: KeyIndexHeader, hashes: np.ndarray, locs: np.ndarray) -> bytes:
    """The bytes of a key index file (entries sorted by the caller)."""
    count = len(hashes)
    if count > MAX_ENTRIES:
        raise ValueError(f"a key index holds at most {MAX_ENTRIES} entries")
    hashes = np.ascontiguousarray(hashes, dtype=HASH_DTYPE)
    locs = np.ascontiguousarray(locs, dtype=LOC_DTYPE)
    table = np.array([block_crc(hashes, locs, b, h.block_entries)
                      for b in range(blocks(count, h.block_entries))], dtype="<u4")
    fields = KEY_INDEX_HEADER.pack(KEY_INDEX_MAGIC, 0, KEY_INDEX_VERSION, HASH_ID,
                                   h.block_entries, h.base_offset, h.next_offset,
                                   h.segment_size, count, h.last_batch, h.first_crc,
                                   h.last_crc, 0)
    table_bytes = table.tobytes()
    crc = crc32c(table_bytes, crc32c(fields[8:]))
    pad = bytes(columns_offset(count, h.block_entries) - KEY_INDEX_HEADER_SIZE - len(table_bytes))
    return b"".join((fields[:4], struct.pack("<I", crc), fields[8:], table_bytes, pad,
                     hashes.tobytes(), locs.tobytes()))


def parse_key_index(buf: Any) -> Tuple[Optional[KeyIndexHeader], str]:
    """``(header, "")`` if ``buf`` (a whole key index file) is structurally sound (magic,
    version, header and table CRC, size), else ``(None, why not)``. The blocks are checked
    one by one by their readers (:func:`block_crc`)."""
    size = len(buf)
    if size < KEY_INDEX_HEADER_SIZE:
        return None, f"{size} bytes: shorter than its header"
    (magic, crc, version, hash_id, block_entries, base, nxt, seg_size, count, last_batch,
     first_crc, last_crc, _reserved) = KEY_INDEX_HEADER.unpack_from(buf, 0)
    if magic != KEY_INDEX_MAGIC:
        return None, f"bad magic {magic!r}"
    if version != KEY_INDEX_VERSION or hash_id != HASH_ID:
        return None, f"version {version}, hash {hash_id} (this logstore writes "\
                     f"{KEY_INDEX_VERSION}, {HASH_ID})"
    if block_entries < 1:
        return None, "zero entries per block"
    n_blocks = blocks(count, block_entries)
    table_end = KEY_INDEX_HEADER_SIZE + 4 * n_blocks
    if size != file_size(count, block_entries):
        return None, f"{size} bytes where {count} entries take {file_size(count, block_entries)}"
    mv = memoryview(buf)
    if crc32c(mv[KEY_INDEX_HEADER_SIZE:table_end], crc32c(mv[8:KEY_INDEX_HEADER_SIZE])) != crc:
        return None, "header CRC32C mismatch"
    return KeyIndexHeader(base, nxt, seg_size, count, last_batch, first_crc, last_crc,
                          block_entries), ""


def key_index_columns(buf: Any, h: KeyIndexHeader) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(block CRC table, hashes, locs)`` of a parsed key index file, as views of ``buf``."""
    n_blocks = blocks(h.count, h.block_entries)
    table = np.frombuffer(buf, dtype="<u4", count=n_blocks, offset=KEY_INDEX_HEADER_SIZE)
    at = columns_offset(h.count, h.block_entries)
    hashes = np.frombuffer(buf, dtype=HASH_DTYPE, count=h.count, offset=at)
    locs = np.frombuffer(buf, dtype=LOC_DTYPE, count=h.count, offset=at + 8 * h.count)
    return table, hashes, locs


def blocks_to_check(lo: int, hi: int, count: int, block_entries: int) -> range:
    """The blocks a lookup that found entries ``[lo, hi)`` for a hash must verify: those
    holding entries ``lo - 1`` to ``hi`` (clipped). A binary search settles between an entry
    it saw below the hash and one it saw at or above it, so if those two and everything
    between are intact (their blocks' CRCs match), every entry of the hash is between them:
    damage elsewhere cannot hide one."""
    if count == 0:
        return range(0)
    first = max(lo - 1, 0) // block_entries
    last = min(hi, count - 1) // block_entries
    return range(first, last + 1)
