"""The key index file of a sealed segment (``<base>.keyindex``, ``segments/FORMAT.md``, "Key
index"): the 64-bit key hash, the file's header, its blocks and their checksums. Pure: bytes in,
values (or a reason why not) out; no I/O.

A key index lists every keyed record of one segment as ``(hash of its key, relative offset,
batch position)``, sorted by hash (then offset), in blocks of ``BLOCK_ENTRIES`` entries (each
block: its hashes as u64, then its locs, ``relative_offset << 32 | position`` as in the offset
index). Before the blocks, under the header's CRC32C: a CRC32C per block and the block's first
hash (its *fence*). A reader keeps only the header, the CRCs and the fences; a lookup finds the
blocks that can hold a hash from the fences (:func:`blocks_for`), reads them with one pread,
checks their CRCs and searches them. A damaged block is noticed by the lookup that reads it,
and no damage anywhere else can hide an entry from it.

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
BLOCK_ENTRIES = 1024  # entries per checked block (16 KiB: one pread and one CRC per lookup)
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
def blocks(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return -(-count // block_entries)


def blocks_offset(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    """Where the first block starts: after the header, the block CRC table and the fences,
    8-aligned."""
    nb = blocks(count, block_entries)
    return (KEY_INDEX_HEADER_SIZE + 4 * nb + 7) // 8 * 8 + 8 * nb


def directory_size(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    """Bytes of the header, block CRC table and fences: what a reader keeps of the file."""
    return blocks_offset(count, block_entries)


def file_size(count: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return blocks_offset(count, block_entries) + ENTRY_BYTES * count


def block_span(b: int, count: int, block_entries: int = BLOCK_ENTRIES) -> Tuple[int, int]:
    """``(file position, entries)`` of block ``b``: its hashes, then its locs."""
    first = b * block_entries
    return blocks_offset(count, block_entries) + ENTRY_BYTES * first, \
        min(block_entries, count - first)


def encode_key_index(h: KeyIndexHeader, hashes: np.ndarray, locs: np.ndarray) -> bytes:
    """The bytes of a key index file (entries sorted by the caller)."""
    count = len(hashes)
    if count > MAX_ENTRIES:
        raise ValueError(f"a key index holds at most {MAX_ENTRIES} entries")
    b_entries = h.block_entries
    hashes = np.ascontiguousarray(hashes, dtype=HASH_DTYPE)
    locs = np.ascontiguousarray(locs, dtype=LOC_DTYPE)
    body = []
    crcs = []
    for b in range(blocks(count, b_entries)):
        lo, hi = b * b_entries, min((b + 1) * b_entries, count)
        block = hashes[lo:hi].tobytes() + locs[lo:hi].tobytes()
        crcs.append(crc32c(block))
        body.append(block)
    table = np.array(crcs, dtype="<u4").tobytes()
    table += bytes(-len(table) % 8)  # (the header is 64 bytes: the fences start 8-aligned)
    fences = np.ascontiguousarray(hashes[::b_entries]).tobytes()
    fields = KEY_INDEX_HEADER.pack(KEY_INDEX_MAGIC, 0, KEY_INDEX_VERSION, HASH_ID, b_entries,
                                   h.base_offset, h.next_offset, h.segment_size, count,
                                   h.last_batch, h.first_crc, h.last_crc, 0)
    crc = crc32c(fences, crc32c(table, crc32c(fields[8:])))
    return b"".join([fields[:4], struct.pack("<I", crc), fields[8:], table, fences] + body)


def parse_directory(buf: Any, file_bytes: int
                    ) -> Tuple[Optional[KeyIndexHeader], str, Optional[np.ndarray],
                               Optional[np.ndarray]]:
    """``(header, "", block CRCs, fences)`` from the first bytes of a key index file (at least
    its header; all of :func:`directory_size` to succeed) whose whole size is ``file_bytes``,
    or ``(None, why not, None, None)``: bad magic, version, header CRC32C or size. The blocks
    are checked one by one by their readers (their CRCs in the table)."""
    if len(buf) < KEY_INDEX_HEADER_SIZE:
        return None, f"{file_bytes} bytes: shorter than its header", None, None
    (magic, crc, version, hash_id, block_entries, base, nxt, seg_size, count, last_batch,
     first_crc, last_crc, _reserved) = KEY_INDEX_HEADER.unpack_from(buf, 0)
    if magic != KEY_INDEX_MAGIC:
        return None, f"bad magic {magic!r}", None, None
    if version != KEY_INDEX_VERSION or hash_id != HASH_ID:
        return None, (f"version {version}, hash {hash_id} (this logstore writes "
                      f"{KEY_INDEX_VERSION}, {HASH_ID})"), None, None
    if block_entries < 1:
        return None, "zero entries per block", None, None
    if file_bytes != file_size(count, block_entries):
        return None, (f"{file_bytes} bytes where {count} entries take "
                      f"{file_size(count, block_entries)}"), None, None
    end = directory_size(count, block_entries)
    if len(buf) < end:
        return None, "shorter than its block table", None, None
    mv = memoryview(buf)
    if crc32c(mv[KEY_INDEX_HEADER_SIZE:end], crc32c(mv[8:KEY_INDEX_HEADER_SIZE])) != crc:
        return None, "header CRC32C mismatch", None, None
    nb = blocks(count, block_entries)
    table = np.frombuffer(buf, dtype="<u4", count=nb, offset=KEY_INDEX_HEADER_SIZE).copy()
    fences = np.frombuffer(buf, dtype=HASH_DTYPE, count=nb, offset=end - 8 * nb).copy()
    header = KeyIndexHeader(base, nxt, seg_size, count, last_batch, first_crc, last_crc,
                            block_entries)
    return header, "", table, fences


def blocks_for(fences: np.ndarray, h: int) -> Tuple[int, int]:
    """The blocks ``[first, last]`` that hold every entry of hash ``h`` (if any), from the
    fences (each block's first hash): entries are sorted, so they lie from the last block
    starting below ``h`` to the last block starting at or below it."""
    target = np.uint64(h)
    first = int(np.searchsorted(fences, target, side="left")) - 1
    last = int(np.searchsorted(fences, target, side="right")) - 1
    return max(first, 0), max(last, 0)


def parse_blocks(data: Any, count: int, first: int, last: int, table: np.ndarray,
                 block_entries: int = BLOCK_ENTRIES
                 ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """``(hashes, locs, "")`` of blocks ``first..last`` read together (``data`` starts at block
    ``first``), each checked against its CRC in ``table``; ``(None, None, why)`` otherwise."""
    hs, ls = [], []
    at = 0
    for b in range(first, last + 1):
        _pos, n = block_span(b, count, block_entries)
        size = ENTRY_BYTES * n
        if at + size > len(data):
            return None, None, f"block {b} is cut short"
        if crc32c(memoryview(data)[at : at + size]) != int(table[b]):
            return None, None, f"block {b} fails its CRC32C"
        hs.append(np.frombuffer(data, dtype=HASH_DTYPE, count=n, offset=at))
        ls.append(np.frombuffer(data, dtype=LOC_DTYPE, count=n, offset=at + 8 * n))
        at += size
    if len(hs) == 1:
        return hs[0], ls[0], ""
    return np.concatenate(hs), np.concatenate(ls), ""
