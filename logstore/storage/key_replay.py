"""``Log.replay_key``: every record of one key, in offset order, through the segments' key
indexes (:mod:`logstore.storage.key_index`) instead of a scan of the log.

Per segment from the one holding ``from_offset`` on:

* a **sealed** segment's index is the one cached for its Segment object, else its
  ``<base>.keyindex`` file (checked, read with pread: :func:`load_key_index`), else built by
  scanning the segment once, which a writer then saves atomically (read-only openers keep it in
  memory: they never write a file). The first ``replay_key`` that reaches a segment pays for the
  scan; a log whose writer never asked pays nothing. The active segment's in-memory index
  becomes the sealed one when the segment is sealed, without a second scan.
* the **active** segment has no file: an in-memory index (:class:`GrowingKeys`) built by
  scanning it once and extended by the batches appended since the last call.

Every entry found is checked against the batch it names before its record is returned: the
batch's header and CRC32C, the offset inside it, the record's key equal to the one asked for
(a different key with the same 64-bit hash is skipped: a collision). Anything else (an entry
pointing at no batch or at another record, a block failing its CRC) means the index is wrong:
it is rebuilt from the segment and the lookup done again; if an index just built disagrees, the
segment changed or is damaged and :class:`CorruptLogError` is raised. Data damage met while
building (a bad CRC, a gap in a log that is not compacted) raises :class:`CorruptLogError` as a
replay would: never a silent gap.

Locking: the log's lock is held only to pin bytes (a mapping, or bytes read with pread) and
segment fields; scans, hashing and decoding run outside it. One lock per Segment object keeps
two threads from building the same index twice; the cache is weak (an index goes with its
Segment object: a segment compaction replaced or retention deleted is forgotten).
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..errors import CorruptLogError
from ..format.decode import decode
from ..format.extract import extract_record, extract_records
from ..format.header import (
    ATTR_OFFSET_DELTAS, CODEC_MASK, FORMAT_VERSION, HEADER_SIZE, check_version, crc_ok,
    header_problem, parse_header,
)
from ..format.key_index_entries import key_hash
from ..format.names import KEYINDEX_SUFFIX, segment_name
from ..record import Record
from ..util import check_offset
from .key_index import (
    GrowingKeys, KeyIndexDamaged, KeyIndexFile, KeyScan, SortedKeys, load_key_index,
    scan_keys, write_key_index,
)
from .reading import ReadHooks, check_range
from .segment import Segment

Index = Union[SortedKeys, KeyIndexFile, GrowingKeys]

_cache_lock = threading.Lock()
_indexes: "weakref.WeakKeyDictionary[Segment, Index]" = weakref.WeakKeyDictionary()
_build_locks: "weakref.WeakKeyDictionary[Segment, threading.Lock]" = weakref.WeakKeyDictionary()


def key_index_path(seg: Segment) -> str:
    """``<directory>/<base>.keyindex`` of a segment."""
    return os.path.join(seg.directory, segment_name(seg.base_offset, KEYINDEX_SUFFIX))


def cached_index(seg: Segment) -> Optional[Index]:
    """(tests, tools) The index this process holds for ``seg``, if any."""
    with _cache_lock:
        return _indexes.get(seg)


def replay_key(hooks: ReadHooks, key: bytes, from_offset: int = 0) -> List[Record]:
    """The records of the log behind ``hooks`` whose key is ``key``, from ``from_offset`` up
    to the end as it is now, in offset order: ``[r for r in log.replay(from_offset) if r.key
    == key]``, errors included (OffsetOutOfRangeError outside ``[start_offset,
    end_offset]``), read through the key indexes."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes-like, got {type(key).__name__}"
                        + (" (encode it first)" if isinstance(key, str) else ""))
    key = bytes(key)
    from_offset = check_offset("from_offset", from_offset)
    kh = key_hash(key)
    with hooks.lock:
        hooks.check_open()
        end = hooks.end()
        check_range(hooks.segs, from_offset, end)
        i = max(bisect.bisect_right(hooks.segs.bases, from_offset) - 1, 0)
        todo = list(hooks.segs.items[i:])
    out: List[Record] = []
    for seg in todo:
        if seg.base_offset >= end:
            break
        out.extend(_segment_records(hooks, seg, key, kh, from_offset, end))
    return out


def _segment_records(hooks: ReadHooks, seg: Segment, key: bytes, kh: int, lo: int,
                     end: int) -> List[Record]:
    """The records of ``key`` in ``seg`` with offsets in ``[lo, end)``."""
    for fresh in (False, True):
        index = index_for(hooks, seg, fresh)
        try:
            locs = index.find(kh)
        except KeyIndexDamaged:
            continue
        if not len(locs):
            return []
        offsets = (locs >> 32) + seg.base_offset
        locs = locs[(offsets >= lo) & (offsets < end)]
        if not len(locs):
            return []
        recs = _read_hits(hooks, seg, locs, key, kh)
        if recs is not None:
            return recs
    raise CorruptLogError("the key index built from this segment just now disagrees with it "
                          "(the segment changed under the reader, or is damaged)", seg.path)


# ------------------------------------------------------------------------ finding the index
def _build_lock(seg: Segment) -> threading.Lock:
    with _cache_lock:
        lock = _build_locks.get(seg)
        if lock is None:
            lock = _build_locks[seg] = threading.Lock()
        return lock


def index_for(hooks: ReadHooks, seg: Segment, fresh: bool = False) -> Index:
    """The key index of ``seg`` as of now (see the module docstring); ``fresh``: the cached or
    saved one disagreed with the segment, build it again from the segment."""
    with _build_lock(seg):
        with _cache_lock:
            cached = None if fresh else _indexes.get(seg)
        for _ in range(3):
            with hooks.lock:
                hooks.check_open()
                sealed = seg.sealed
                if sealed:
                    seg.ensure_open()
                    pinned = _pin(seg, 0, seg.size)
                else:
                    pinned = _pin(seg, _resume_at(cached, seg), seg.size)
                next_offset = seg.next_offset
            if sealed:
                index = _sealed_index(hooks, seg, cached, pinned, next_offset, fresh)
            else:
                index = _active_index(hooks, seg, cached, pinned)
            if index is not None:
                with _cache_lock:
                    _indexes[seg] = index
                return index
            cached = None  # (the bytes indexed so far changed: read the segment from 0)
    raise CorruptLogError("the segment kept changing while its key index was built", seg.path)


def _resume_at(cached: Optional[Index], seg: Segment) -> int:
    """Where the bytes to pin of a reader's active segment (read with pread) start: the last
    batch ``cached`` indexed (it is checked again), or 0."""
    if isinstance(cached, GrowingKeys) and cached.use_pread == seg.use_pread and seg.use_pread:
        return max(cached.last_batch, 0)
    return 0


def _pin(seg: Segment, start: int, size: int) -> Tuple[Any, int, int, bool]:
    """(log lock held) ``(bytes, shift, size, use_pread)``: the segment's bytes ``[start,
    size)`` as a mapping of the file (shift 0) or bytes read with pread (shift ``start``)."""
    if size <= 0:
        return b"", 0, 0, seg.use_pread
    if seg.use_pread:
        return seg.read_bytes(start, size - start) if size > start else b"", start, size, True
    return seg.mapped(size), 0, size, False


def _gap(hooks: ReadHooks, seg: Segment):
    return lambda expected, found, pos: hooks.gap(expected, found, seg, pos)


def _check_sealed_end(hooks: ReadHooks, seg: Segment, scan_next: int, next_offset: int,
                      end_pos: int) -> None:
    """A sealed segment's batches end at the next segment's base (or, compacted, before)."""
    if scan_next > next_offset:
        raise CorruptLogError(f"batches reach offset {scan_next - 1}, past the next segment's "
                              f"base {next_offset}", seg.path, end_pos)
    if scan_next < next_offset:
        hooks.gap(scan_next, next_offset, seg, end_pos)


def _sealed_index(hooks: ReadHooks, seg: Segment, cached: Optional[Index],
                  pinned: Tuple[Any, int, int, bool], next_offset: int, fresh: bool
                  ) -> Optional[Index]:
    """A sealed segment's index: cached, the active one's completed, saved, or built (and
    saved by a writer). ``fresh``: never the saved file (it disagreed with the segment)."""
    buf, _shift, size, _ = pinned
    base = seg.base_offset
    if isinstance(cached, (SortedKeys, KeyIndexFile)) and cached.header.segment_size == size \
            and cached.header.next_offset == next_offset:
        return cached
    keys: Optional[Union[SortedKeys, KeyIndexFile]] = None
    path = key_index_path(seg)
    if isinstance(cached, GrowingKeys) and not cached.use_pread \
            and cached.still_matches(buf, 0, size):
        # The active segment this was became sealed: index what was appended since, and sort.
        if cached.scanned < size:
            cached.add(scan_keys(buf, 0, cached.scanned, size, base, cached.next_offset,
                                 seg.path, _gap(hooks, seg)))
        _check_sealed_end(hooks, seg, cached.next_offset, next_offset, size)
        keys = cached.sealed(size, next_offset)
    elif not fresh:
        keys, _why = load_key_index(path, base, next_offset, size, buf)
    if keys is None:
        scan: KeyScan = scan_keys(buf, 0, 0, size, base, base, seg.path, _gap(hooks, seg))
        _check_sealed_end(hooks, seg, scan.next_offset, next_offset, size)
        keys = SortedKeys.from_scan(scan, base, next_offset, size)
    if keys.source == "built" and hooks.segs.writable and not seg.retired:
        if write_key_index(path, hooks.segs.fs, keys):
            # Use the saved file: only its block directory stays in this process's memory.
            saved, _why = load_key_index(path, base, next_offset, size, buf)
            if saved is not None:
                keys = saved
    return keys


def _active_index(hooks: ReadHooks, seg: Segment, cached: Optional[Index],
                  pinned: Tuple[Any, int, int, bool]) -> Optional[Index]:
    """The active segment's in-memory index, extended to the pinned bytes; None: the bytes it
    indexed changed and the segment must be pinned from its start again."""
    buf, shift, size, use_pread = pinned
    g = cached if isinstance(cached, GrowingKeys) and cached.use_pread == use_pread else None
    if g is not None and not g.still_matches(buf, shift, size):
        g = None
    if g is None:
        if shift:
            return None  # (pinned from the cached index's last batch: pin from 0 again)
        g = GrowingKeys(seg.base_offset, use_pread)
    if g.scanned < size:
        g.add(scan_keys(buf, shift, g.scanned, size, seg.base_offset, g.next_offset, seg.path,
                        _gap(hooks, seg)))
    return g


# ------------------------------------------------------------------------ reading the hits
def _read_hits(hooks: ReadHooks, seg: Segment, locs: np.ndarray, key: bytes, kh: int
               ) -> Optional[List[Record]]:
    """The records the entries ``locs`` (offset order) name, each checked against its batch;
    None if an entry is wrong (the index must be rebuilt)."""
    base = seg.base_offset
    groups: List[Tuple[int, List[int]]] = []
    for rel, pos in zip((locs >> 32).tolist(), (locs & 0xFFFFFFFF).tolist()):
        if groups and groups[-1][0] == pos:
            groups[-1][1].append(base + rel)
        else:
            groups.append((pos, [base + rel]))
    pinned = []
    with hooks.lock:
        hooks.check_open()
        seg.ensure_open()
        size = seg.size
        for pos, offs in groups:
            if pos + HEADER_SIZE > size:
                return None
            h = parse_header(seg.read_bytes(pos, HEADER_SIZE), 0)
            if header_problem(h) is not None or pos + h.length > size:
                return None
            pinned.append((pos, h, seg.read_bytes(pos, h.length), offs))
    out: List[Record] = []
    prev = -1
    for pos, h, data, offs in pinned:
        if offs[0] <= prev or offs[0] < h.base_offset or offs[-1] > h.last_offset or any(
                a >= b for a, b in zip(offs, offs[1:])):
            return None
        prev = offs[-1]
        if h.version == FORMAT_VERSION and not h.attributes & (CODEC_MASK | ATTR_OFFSET_DELTAS):
            # Version 2, plain: check only the chunks holding the hits (the whole batch when
            # it has no chunk table), as get_many does. A check failing here may be a wrong
            # entry as well as damage: rebuild the index (whose scan finds any damage).
            try:
                recs = extract_records(data, h, offs, seg.path, pos)
            except CorruptLogError:
                return None
        elif h.attributes & (CODEC_MASK | ATTR_OFFSET_DELTAS) or len(offs) > 1:
            if not crc_ok(data, 0, h):
                return None
            batch = decode(data, 0, h, seg.path, pos, header_checked=True, lazy=True)
            recs = []
            for o in offs:
                j = batch.index_of(o)
                if j >= len(batch) or batch.offset_at(j) != o:
                    return None
                recs.append(batch.record_at(j))
        else:
            if not crc_ok(data, 0, h):
                return None
            check_version(h, seg.path, pos)
            rec = extract_record(data, h, offs[0], seg.path, pos, 0, None, True)
            if rec is None:
                return None
            recs = [rec]
        for rec in recs:
            if rec.key != key:
                if rec.key is not None and key_hash(rec.key) == kh:
                    continue  # another key with the same hash
                return None
            out.append(rec)
    return out
