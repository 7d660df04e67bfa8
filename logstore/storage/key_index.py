"""Per-segment key indexes (``segments/FORMAT.md``, "Key index"): which records of a segment
have a given key, without reading the others.

* :func:`scan_keys` walks a segment's batches (CRC-checked, decoded, offsets and gaps checked as
  a replay would) and returns one entry per keyed record: the hash of its key, its relative
  offset and its batch's position. The hashes are computed with numpy for all keys at once
  (``format.key_index_entries.key_hashes``), so indexing costs no Python work per record.
* :class:`SortedKeys` is the index of a sealed segment built from a scan, sorted by hash;
  :class:`KeyIndexFile` the one saved in ``<base>.keyindex``: its identity checked against the
  segment it claims to index when loaded, read with pread (never mapped: a file truncated
  under a mapping would kill the process with SIGBUS), each block's CRC checked when a lookup
  reads it.
* :class:`GrowingKeys` is the in-memory index of the active segment, extended by scanning only
  the batches appended since the last lookup; it keeps a sorted part and a short unsorted tail,
  merged when the tail grows past a quarter of the sorted part.
* :func:`write_key_index` saves a sorted index atomically (a unique ``.tmp`` name, fsync,
  rename; no directory fsync: losing the file costs a rebuild, nothing else).

Indexes are hints: whatever an entry says is checked against the batch it names before a record
is returned (:mod:`logstore.storage.key_replay`), and :func:`check_key_index_file` tells
``logstore verify`` whether a file agrees with its segment. No locks here: callers serialise.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import numpy as np

from ..errors import CorruptLogError
from ..format.decode import decode
from ..format.header import (
    ATTR_HEADERS, ATTR_KEYS, ATTR_OFFSET_DELTAS, ATTR_TIMESTAMPS, CODEC_MASK, END_MASK,
    FORMAT_VERSION, HEADER_SIZE, I32, NULL_BIT, U32, check_header, check_version, crc_ok,
    parse_header,
)
from ..format.key_index_entries import (
    ENTRY_BYTES, HASH_DTYPE, KEY_INDEX_HEADER, KEY_INDEX_HEADER_SIZE, LOC_DTYPE, KeyIndexHeader,
    block_span, blocks, blocks_for, directory_size, encode_key_index, file_size, key_hashes,
    parse_blocks, parse_directory,
)
from ..format.names import TMP
from ..fs import FileSystem

# Key bytes gathered before their hashes are computed (bounds a scan's memory).
HASH_CHUNK_BYTES = 16 << 20
# Batches the one-record fast path of scan_keys reads without decode(): no compression, no
# offset deltas, no timestamp column (what a single append writes).
_NOT_SIMPLE = CODEC_MASK | ATTR_OFFSET_DELTAS | ATTR_TIMESTAMPS
# gap(expected offset, found offset, position): raise CorruptLogError unless gaps are allowed.
Gap = Callable[[int, int, int], None]


class KeyIndexDamaged(Exception):
    """A key index disagrees with itself or with its segment: rebuild it (never a data
    problem by itself)."""


class KeyScan(NamedTuple):
    """What :func:`scan_keys` found: entries in offset order, and where the scan ended."""

    hashes: np.ndarray  # uint64
    locs: np.ndarray  # int64: relative offset << 32 | batch position
    end: int  # position after the last batch scanned
    next_offset: int  # offset after the last batch scanned (or the expected one)
    first_crc: int  # crc field of the batch at position 0 (0 if none was scanned from 0)
    last_batch: int  # position of the last batch scanned (-1 if none)
    last_crc: int  # its crc field


class _Hasher:
    """Key bytes and entry fields gathered batch by batch (in offset order), hashed a chunk at
    a time. One-record batches are gathered in plain lists (no numpy call per record)."""

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.lens: List[np.ndarray] = []
        self.locs: List[np.ndarray] = []
        self.one_lens: List[int] = []
        self.one_locs: List[int] = []
        self.pending = 0
        self.hashes_done: List[np.ndarray] = []
        self.locs_done: List[np.ndarray] = []

    def add_one(self, key: bytes, loc: int) -> None:
        self.parts.append(key)
        self.one_lens.append(len(key))
        self.one_locs.append(loc)
        self.pending += len(key) + 16
        if self.pending >= HASH_CHUNK_BYTES:
            self.flush()

    def add(self, keys: bytes, lens: np.ndarray, locs: np.ndarray) -> None:
        self._take_ones()
        self.parts.append(keys)
        self.lens.append(lens)
        self.locs.append(locs)
        self.pending += len(keys) + 16 * len(lens)
        if self.pending >= HASH_CHUNK_BYTES:
            self.flush()

    def _take_ones(self) -> None:
        if self.one_lens:
            self.lens.append(np.array(self.one_lens, dtype=np.int64))
            self.locs.append(np.array(self.one_locs, dtype=np.int64))
            self.one_lens, self.one_locs = [], []

    def flush(self) -> None:
        self._take_ones()
        if not self.lens:
            return
        lens = np.concatenate(self.lens).astype(np.int64)
        starts = np.cumsum(lens) - lens
        self.hashes_done.append(key_hashes(b"".join(self.parts), starts, lens))
        self.locs_done.append(np.concatenate(self.locs).astype(LOC_DTYPE))
        self.parts, self.lens, self.locs, self.pending = [], [], [], 0

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        self.flush()
        if not self.hashes_done:
            return np.empty(0, HASH_DTYPE), np.empty(0, LOC_DTYPE)
        if len(self.hashes_done) == 1:
            return self.hashes_done[0], self.locs_done[0]
        return np.concatenate(self.hashes_done), np.concatenate(self.locs_done)


def _one_record_keys(buf: Any, pos: int, h: Any, path: str) -> Tuple[int, int]:
    """(key start, key length) of a plain one-record batch with a key column (its CRC and
    version checked by the caller); the structure checks ``decode`` would make. Length -1: no
    key. Version 1 item columns hold lengths, version 2 end positions (FORMAT.md)."""
    p = pos + HEADER_SIZE
    cols = 2 + (1 if h.attributes & ATTR_HEADERS else 0)
    first = 4 * cols
    if h.payload_length < first or h.raw_length != h.payload_length:
        raise CorruptLogError("batch columns run past the payload", path, pos)
    if h.last_offset_delta != 0:
        raise CorruptLogError("dense batch with a gap in its header", path, pos)
    if h.version == FORMAT_VERSION:
        ke = U32.unpack_from(buf, p)[0]
        ve = U32.unpack_from(buf, p + 4)[0]
        he = U32.unpack_from(buf, p + 8)[0] if cols == 3 else ve & END_MASK
        k_end, v_end = ke & END_MASK, ve & END_MASK
        if he & NULL_BIT or not first <= k_end <= v_end <= he or (
                ke & NULL_BIT and k_end != first) or (ve & NULL_BIT and v_end != k_end):
            raise CorruptLogError("impossible item position", path, pos)
        if he != h.payload_length:
            raise CorruptLogError("items do not fill the payload", path, pos)
        return p + first, -1 if ke & NULL_BIT else k_end - first
    (kl,) = I32.unpack_from(buf, p)
    (vl,) = I32.unpack_from(buf, p + 4)
    hl = I32.unpack_from(buf, p + 8)[0] if cols == 3 else 0
    if kl < -1 or vl < -1 or hl < 0:
        raise CorruptLogError("negative key, value or header length", path, pos)
    if first + max(kl, 0) + max(vl, 0) + hl != h.payload_length:
        raise CorruptLogError("record lengths do not add up to the payload length", path, pos)
    return p + first, kl


def scan_keys(buf: Any, shift: int, start: int, end: int, base: int, expect: int, path: str,
              gap: Gap) -> KeyScan:
    """Index the batches of a segment (base offset ``base``) from file position ``start`` to
    ``end``; ``buf[p - shift]`` is the byte at file position ``p`` (``shift`` 0: a mapping of
    the whole file; else bytes read from position ``shift``). The first batch should start at
    offset ``expect``. Every batch is checked as a replay checks it (header, CRC32C, structure,
    increasing offsets; a gap goes to ``gap``) and :class:`CorruptLogError` names the first one
    that fails."""
    hasher = _Hasher()
    pos = start
    first_crc = 0
    last_batch, last_crc = -1, 0
    while pos < end:
        at = pos - shift
        if end - pos < HEADER_SIZE:
            raise CorruptLogError("truncated batch header", path, pos)
        h = parse_header(buf, at)
        check_header(h, path, pos)
        if pos + h.length > end:
            raise CorruptLogError("truncated batch (torn write)", path, pos)
        if h.base_offset < expect:
            raise CorruptLogError(f"batch base offset {h.base_offset} goes back (expected >= "
                                  f"{expect})", path, pos)
        if h.base_offset > expect:
            gap(expect, h.base_offset, pos)
        rel0 = h.base_offset - base
        a = h.attributes
        if h.record_count == 1 and not a & _NOT_SIMPLE:
            if not crc_ok(buf, at, h):  # (a version 2 batch with a chunk table: the payload)
                raise CorruptLogError("CRC32C mismatch", path, pos)
            check_version(h, path, pos)
            if a & ATTR_KEYS:
                ks, kl = _one_record_keys(buf, at, h, path)
                if kl >= 0:
                    hasher.add_one(bytes(buf[ks : ks + kl]), (rel0 << 32) | pos)
        else:
            batch = decode(buf, at, h, path, pos, header_checked=True, lazy=True)
            kl_col = batch.key_lengths
            if kl_col is not None:
                kl_arr = np.asarray(kl_col, dtype=np.int64)
                keyed = kl_arr >= 0
                if keyed.any():
                    ko = int(np.asarray(batch.key_offsets)[0])
                    total = int(kl_arr[keyed].sum())
                    if a & ATTR_OFFSET_DELTAS:
                        rels = np.asarray(batch.offsets, dtype=np.int64) - base
                    else:
                        rels = np.arange(rel0, rel0 + h.record_count, dtype=np.int64)
                    hasher.add(bytes(batch.data[ko : ko + total]), kl_arr[keyed],
                               (rels[keyed] << 32) | pos)
        if pos == 0:
            first_crc = h.crc
        last_batch, last_crc = pos, h.crc
        expect = h.next_offset
        pos += h.length
    hashes, locs = hasher.result()
    return KeyScan(hashes, locs, pos, expect, first_crc, last_batch, last_crc)


def batch_crc_at(buf: Any, pos: int) -> int:
    """The crc field of the batch header at ``pos`` of ``buf``."""
    return U32.unpack_from(buf, pos + 4)[0]


# ----------------------------------------------------------------------------- sealed
class SortedKeys:
    """A sealed segment's key index built in this process, in memory: entries sorted by hash
    (then offset)."""

    source = "built"

    def __init__(self, header: KeyIndexHeader, hashes: np.ndarray, locs: np.ndarray):
        self.header = header
        self.hashes = hashes
        self.locs = locs

    @classmethod
    def from_scan(cls, scan: KeyScan, base: int, next_offset: int, size: int) -> "SortedKeys":
        order = np.argsort(scan.hashes, kind="stable")  # stable: offsets stay ascending
        header = KeyIndexHeader(base, next_offset, size, len(order), max(scan.last_batch, 0),
                                scan.first_crc, scan.last_crc)
        return cls(header, scan.hashes[order], scan.locs[order])

    def find(self, h: int) -> np.ndarray:
        """The locs of every entry with hash ``h``, in offset order."""
        target = np.uint64(h)
        lo = int(np.searchsorted(self.hashes, target, side="left"))
        hi = int(np.searchsorted(self.hashes, target, side="right"))
        return self.locs[lo:hi]


class KeyIndexFile:
    """A sealed segment's key index in its file, read with pread: this keeps only the
    header, the block CRCs and the fences (12 bytes per block of entries); a lookup reads the
    blocks that can hold its hash and checks their CRCs.

    The file is opened for each lookup (no descriptor is held per segment). If it was replaced
    meanwhile (another writer of a shared log saved it again), the new one is taken if it
    describes the same segment; anything else raises :class:`KeyIndexDamaged`."""

    source = "file"

    def __init__(self, path: str, header: KeyIndexHeader, table: np.ndarray,
                 fences: np.ndarray, stat: Tuple[int, int, int]):
        self.path = path
        self.header = header
        self.table = table
        self.fences = fences
        self.stat = stat

    def find(self, h: int) -> np.ndarray:
        header = self.header
        if header.count == 0:
            return np.empty(0, LOC_DTYPE)
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise KeyIndexDamaged(f"{self.path}: {e}") from None
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != self.stat:
                self._reread(fd, st)
                header = self.header
            first, last = blocks_for(self.fences, h)
            pos, _n = block_span(first, header.count, header.block_entries)
            end_pos, end_n = block_span(last, header.count, header.block_entries)
            data = os.pread(fd, end_pos + ENTRY_BYTES * end_n - pos, pos)
        except OSError as e:
            raise KeyIndexDamaged(f"{self.path}: {e}") from None
        finally:
            os.close(fd)
        hashes, locs, why = parse_blocks(data, header.count, first, last, self.table,
                                         header.block_entries)
        if hashes is None:
            raise KeyIndexDamaged(why)
        target = np.uint64(h)
        lo = int(np.searchsorted(hashes, target, side="left"))
        hi = int(np.searchsorted(hashes, target, side="right"))
        found = locs[lo:hi]
        if hi - lo > 1 and not (np.diff(found >> 32) > 0).all():
            raise KeyIndexDamaged("entries of one hash are not in offset order")
        return found

    def _reread(self, fd: int, st: os.stat_result) -> None:
        """The file was replaced: take the new one if it describes the same segment."""
        header, why, table, fences = _read_directory(fd, st.st_size)
        if header is None or header != self.header:
            raise KeyIndexDamaged(f"replaced by another file: {why or 'another segment'}")
        self.table, self.fences = table, fences
        self.stat = (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_directory(fd: int, size: int):
    """parse_directory of the key index file open as ``fd`` (``size`` bytes): its header,
    then, if that is plausible, the block CRCs and fences after it."""
    head = os.pread(fd, KEY_INDEX_HEADER_SIZE, 0)
    if len(head) == KEY_INDEX_HEADER_SIZE:
        fields = KEY_INDEX_HEADER.unpack_from(head, 0)
        count, b_entries = fields[8], fields[4]
        if b_entries >= 1 and size == file_size(count, b_entries):
            head = os.pread(fd, directory_size(count, b_entries), 0)
    return parse_directory(head, size)


def identity_problem(h: KeyIndexHeader, base: int, next_offset: int, size: int,
                     buf: Any) -> Optional[str]:
    """Why a key index with header ``h`` does not describe the segment whose bytes are ``buf``
    (``size`` of them, sealed, from ``base`` to ``next_offset``), or None."""
    if h.base_offset != base:
        return f"it indexes the segment at offset {h.base_offset}"
    if h.next_offset != next_offset or h.segment_size != size:
        return (f"it indexes a segment ending at offset {h.next_offset} with {h.segment_size} "
                f"bytes; this one ends at {next_offset} with {size}")
    if size == 0:
        return None if h.count == 0 and h.first_crc == h.last_crc == 0 else "empty segment"
    if h.last_batch + HEADER_SIZE > size:
        return f"its last batch position {h.last_batch} is past the segment's end"
    last = parse_header(buf, h.last_batch)
    if (batch_crc_at(buf, 0) != h.first_crc or last.crc != h.last_crc
            or h.last_batch + last.length != size):
        return "its first or last batch differs from the segment's (a rewritten segment)"
    return None


def load_key_index(path: str, base: int, next_offset: int, size: int, buf: Any
                   ) -> Tuple[Optional[KeyIndexFile], str]:
    """The key index saved at ``path`` for the sealed segment whose bytes are ``buf``, or
    ``(None, why not)``: missing, torn, a damaged header, another segment's or a stale one.
    Its blocks are checked as lookups read them (:meth:`KeyIndexFile.find`)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable: {e}"
    try:
        st = os.fstat(fd)
        header, why, table, fences = _read_directory(fd, st.st_size)
    except OSError as e:
        return None, f"unreadable: {e}"
    finally:
        os.close(fd)
    if header is None:
        return None, why
    problem = identity_problem(header, base, next_offset, size, buf)
    if problem is not None:
        return None, f"stale: {problem}"
    return KeyIndexFile(path, header, table, fences, (st.st_ino, st.st_size, st.st_mtime_ns)), ""


def write_key_index(path: str, fs: FileSystem, keys: SortedKeys) -> bool:
    """Save ``keys`` at ``path`` atomically: a temporary file of its own (several processes
    may save the same index at once), fsynced, renamed over ``path``. The directory is not
    fsynced: after a power loss the file may be missing, which costs a rebuild. Returns False
    (and leaves nothing behind) if it could not be saved: an index is a hint."""
    data = encode_key_index(keys.header, keys.hashes, keys.locs)
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}{TMP}"
    try:
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            fs.pwrite(fd, data, 0)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, path)
        return True
    except OSError:
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        return False


# ----------------------------------------------------------------------------- active
class GrowingKeys:
    """The active segment's key index, in memory: built by scanning its batches once and
    extended with the batches appended since (``scanned`` bytes indexed so far).

    ``use_pread`` records how the segment object read its bytes when this index was begun: a
    reader's active segment that became sealed maps the file anew, and is indexed anew."""

    def __init__(self, base: int, use_pread: bool):
        self.base = base
        self.use_pread = use_pread
        self.scanned = 0
        self.next_offset = base
        self.first_crc = 0
        self.last_batch = -1
        self.last_crc = 0
        self.sorted_h = np.empty(0, HASH_DTYPE)
        self.sorted_l = np.empty(0, LOC_DTYPE)
        self.tail_h: List[np.ndarray] = []
        self.tail_l: List[np.ndarray] = []
        self.tail_n = 0

    def still_matches(self, buf: Any, shift: int, size: int) -> bool:
        """Whether the bytes indexed so far are still the segment's: it is not shorter, and
        the last indexed batch (and, when ``buf`` starts at the file's start, the first one)
        carries the same CRC (``buf[p - shift]`` is the byte at position ``p``)."""
        if self.last_batch < 0:
            return self.scanned <= size
        if self.scanned > size or not 0 <= self.last_batch - shift <= len(buf) - HEADER_SIZE:
            return False
        return (shift > 0 or batch_crc_at(buf, 0) == self.first_crc) and \
            batch_crc_at(buf, self.last_batch - shift) == self.last_crc

    def add(self, scan: KeyScan) -> None:
        """Take the entries of the batches scanned from ``scanned`` on."""
        if self.last_batch < 0 and scan.last_batch >= 0:
            self.first_crc = scan.first_crc
        if scan.last_batch >= 0:
            self.last_batch, self.last_crc = scan.last_batch, scan.last_crc
        self.scanned = scan.end
        self.next_offset = scan.next_offset
        if len(scan.hashes):
            self.tail_h.append(scan.hashes)
            self.tail_l.append(scan.locs)
            self.tail_n += len(scan.hashes)
        if self.tail_n > max(65536, len(self.sorted_h) // 4):
            self._merge()

    def _merge(self) -> None:
        # The tail's entries come after the sorted part's in offset order, and in offset order
        # among themselves: a stable sort by hash keeps every hash's entries in offset order.
        h = np.concatenate([self.sorted_h] + self.tail_h)
        loc = np.concatenate([self.sorted_l] + self.tail_l)
        order = np.argsort(h, kind="stable")
        self.sorted_h, self.sorted_l = h[order], loc[order]
        self.tail_h, self.tail_l, self.tail_n = [], [], 0

    def find(self, h: int) -> np.ndarray:
        target = np.uint64(h)
        lo = int(np.searchsorted(self.sorted_h, target, side="left"))
        hi = int(np.searchsorted(self.sorted_h, target, side="right"))
        parts = [self.sorted_l[lo:hi]]
        for th, tl in zip(self.tail_h, self.tail_l):
            hit = np.flatnonzero(th == target)
            if len(hit):
                parts.append(tl[hit])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def sealed(self, size: int, next_offset: int) -> SortedKeys:
        """This index as a sealed segment's, once it covers all ``size`` bytes."""
        self._merge()
        header = KeyIndexHeader(self.base, next_offset, size, len(self.sorted_h),
                                max(self.last_batch, 0), self.first_crc, self.last_crc)
        return SortedKeys(header, self.sorted_h, self.sorted_l)


# ----------------------------------------------------------------------------- verify
def check_key_index_file(path: str, log_path: str, base: int, next_offset: int,
                         gaps_allowed: bool) -> Optional[str]:
    """(``logstore verify``) Why the key index at ``path`` disagrees with the sealed segment
    ``log_path`` (from ``base`` to ``next_offset``), or None if it agrees entry for entry.
    The segment must be undamaged (verify checks it first): it is indexed again here and the
    file compared with the result. Read-only."""
    with open(log_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf: Any = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    keys, why = load_key_index(path, base, next_offset, size, buf)
    if keys is None:
        return why
    h = keys.header
    with open(path, "rb") as f:
        data = f.read()
    if h.count:
        hashes, locs, why = parse_blocks(memoryview(data)[block_span(0, h.count, h.block_entries)[0]:],
                                         h.count, 0, blocks(h.count, h.block_entries) - 1,
                                         keys.table, h.block_entries)
        if hashes is None:
            return why
        if (keys.fences != hashes[::h.block_entries]).any():
            return "its fences do not match its blocks"
    else:
        hashes, locs = np.empty(0, HASH_DTYPE), np.empty(0, LOC_DTYPE)

    def gap(expected: int, found: int, pos: int) -> None:
        if not gaps_allowed:
            raise CorruptLogError(f"offsets {expected}..{found - 1} are missing", log_path, pos)

    try:
        want = SortedKeys.from_scan(scan_keys(buf, 0, 0, size, base, base, log_path, gap), base,
                                    next_offset, size)
    except CorruptLogError as e:
        return f"its segment cannot be indexed: {e}"
    if not (np.array_equal(want.hashes, hashes) and np.array_equal(want.locs, locs)):
        return f"its {h.count} entries differ from the {want.header.count} the segment's " \
               f"records give"
    return None
