"""Key-based compaction ("log cleaning") of a log's sealed segments, crash-safe.

One pass:

1. **Map.** For a range of sealed segments holding at most ``compaction_buffer_bytes / 24``
   records, hash every key (BLAKE2b-128: a 64-bit probe and a 64-bit check) and keep, per key, the
   offset of its latest record. The map is three numpy arrays (probe, check, offset), sorted by
   probe: memory is bounded by the budget, not by the number of distinct keys or value sizes.
   Two different keys sharing a probe are detected by the check half and then all their records
   are kept (a collision can only keep an extra record, never drop a live one).
2. **Clean.** Every sealed segment from the start of the log up to the end of the mapped range is
   copied to ``<base>.log.cleaned`` keeping a record only if it is its key's latest (and, for a
   tombstone, only until ``delete_retention_ms`` after its timestamp). Batches that lose nothing
   are copied byte for byte; others are re-encoded with an offset-delta column (offsets are
   preserved, gaps allowed) and the same codec.
3. **Swap.** Each ``.cleaned`` is fsynced and renamed ``.swap``; the directory is fsynced; the
   commit file is written atomically (the commit point); then each ``.swap`` is renamed over its
   ``.log``, stale index files removed (rebuilt on demand), the directory fsynced and the commit
   file removed.

The commit point is the atomic creation of ``compaction.commit`` after every ``.swap`` is durable.
Recovery (``Log`` open): without that file, ``*.cleaned`` and ``*.swap`` are deleted (the log is
exactly the pre-compaction log); with it, every ``*.swap`` is renamed into place (exactly the
post-compaction log) and the file removed. Readers keep the segment files they mapped (Linux keeps replaced files
alive while mapped); in-process readers switch to the new segments by offset.

A log with more records than fit the budget is compacted in several passes, each mapping the next
range and cleaning everything before its end.

A *dry run* (``compact(..., dry_run=True)``: ``logstore compact --dry-run``) builds the same maps
pass by pass and counts what the passes would remove, writing nothing: per sealed batch it keeps
one byte per record (which records would still be there after the passes so far).
"""

from __future__ import annotations

import hashlib
import os
import time
from functools import partial
from operator import methodcaller
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

import numpy as np

from ..config import LogConfig
from ..errors import ConfigError, MissingKeyError
from ..format.decode import DecodedBatch
from ..format.encode import frame, prepare_batch
from ..format.header import CODEC_MASK, MAX_BATCH_LENGTH
from ..format.names import CLEANED, COMPACTION_COMMIT, SWAP
from ..fs import FileSystem
from .segment import Segment
from .segments import SegmentList

_ENTRY_BYTES = 24


@dataclass
class CompactionReport:
    passes: int = 0
    segments_cleaned: int = 0
    records_before: int = 0
    records_after: int = 0
    tombstones_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    dry_run: bool = False  # nothing was changed: records_after is what a pass would leave
    records_removed: int = 0  # (dry runs) records a pass would remove, tombstones included
    payload_bytes_removed: int = 0  # (dry runs) their key and value bytes

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        if not self.dry_run:
            for name in ("dry_run", "records_removed", "payload_bytes_removed"):
                del d[name]
        return d


_blake16 = partial(hashlib.blake2b, digest_size=16)
_digest = methodcaller("digest")


def _key_hashes(batch: DecodedBatch) -> np.ndarray:
    """(n, 2) uint64: BLAKE2b-128 of each record's key (C-level map calls: no Python frame per
    key)."""
    data = bytes(batch.data)
    starts = batch.key_offsets.tolist()
    ends = (batch.key_offsets + np.maximum(batch.key_lengths, 0)).tolist()
    keys = map(data.__getitem__, map(slice, starts, ends))
    digest = b"".join(map(_digest, map(_blake16, keys)))
    return np.frombuffer(digest, dtype="<u8").reshape(-1, 2)


def _batches(seg: Segment):
    seg.ensure_open()
    for pos, h in seg.iter_headers(0):
        yield pos, h, seg.batch_at(pos, h)
    # Compaction memory is the key map, not the size of the log: drop the pages just read
    # from this process's RSS (they stay in the page cache).
    seg.release_pages()


def check_keys(segments: List[Segment]) -> None:
    """Raise MissingKeyError naming the first record without a key (nothing is changed)."""
    for seg in segments:
        for _pos, _h, batch in _batches(seg):
            kl = batch.key_lengths
            if kl is None or int(kl.min()) < 0:
                i = 0 if kl is None else int(np.flatnonzero(kl < 0)[0])
                raise MissingKeyError(
                    f"cannot compact {os.path.dirname(seg.path)}: the record at offset "
                    f"{batch.offset_at(i)} has no key (every record of a compacted log needs "
                    f"one); nothing was changed")


class _KeyMap:
    """Latest offset per key hash, in sorted numpy arrays."""

    def __init__(self, probes: np.ndarray, checks: np.ndarray, offsets: np.ndarray):
        order = np.lexsort((offsets, checks, probes))
        probes, checks, offsets = probes[order], checks[order], offsets[order]
        # last row of each (probe, check) group = latest offset of that key
        last = np.ones(len(probes), dtype=bool)
        if len(probes) > 1:
            last[:-1] = (probes[1:] != probes[:-1]) | (checks[1:] != checks[:-1])
        probes, checks, offsets = probes[last], checks[last], offsets[last]
        # a probe value shared by two different keys: keep every record of those keys
        collided = np.zeros(len(probes), dtype=bool)
        if len(probes) > 1:
            dup = probes[1:] == probes[:-1]
            collided[1:] |= dup
            collided[:-1] |= dup
        self.probes, self.checks, self.offsets, self.collided = probes, checks, offsets, collided

    def keep(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Boolean mask: records that are not superseded by a later record of the same key."""
        probes = hashes[:, 0]
        idx = np.searchsorted(self.probes, probes)
        idx_c = np.minimum(idx, max(len(self.probes) - 1, 0))
        if not len(self.probes):
            return np.ones(len(probes), dtype=bool)
        found = (idx < len(self.probes)) & (self.probes[idx_c] == probes)
        superseded = found & ~self.collided[idx_c] & (self.checks[idx_c] == hashes[:, 1]) & \
            (self.offsets[idx_c] > offsets)
        return ~superseded


def _build_map(segments: List[Segment], cache: dict) -> _KeyMap:
    """The key map of ``segments``; each batch's hashes are kept in ``cache`` for the clean
    phase of the same pass (bounded by the same budget as the map)."""
    probes, checks, offsets = [], [], []
    for seg in segments:
        for pos, _h, batch in _batches(seg):
            hs = _key_hashes(batch)
            cache[(seg.base_offset, pos)] = hs
            probes.append(hs[:, 0])
            checks.append(hs[:, 1])
            offsets.append(np.asarray(batch.offsets, dtype=np.int64))
    if not probes:
        empty = np.empty(0, dtype=np.uint64)
        return _KeyMap(empty, empty, np.empty(0, dtype=np.int64))
    return _KeyMap(np.concatenate(probes), np.concatenate(checks), np.concatenate(offsets))


def _clean_segment(fs: FileSystem, seg: Segment, keymap: _KeyMap, horizon_ms: int,
                   report: CompactionReport, cache: dict) -> Tuple[str, bool]:
    """Write the cleaned copy of ``seg`` to ``<log>.cleaned``; return (path, anything dropped)."""
    out_path = seg.path + CLEANED
    fd = fs.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    pos = 0
    dropped = False
    try:
        for bpos, h, batch in _batches(seg):
            offsets = np.asarray(batch.offsets, dtype=np.int64)
            hashes = cache.pop((seg.base_offset, bpos), None)
            if hashes is None:
                hashes = _key_hashes(batch)
            keep = keymap.keep(hashes, offsets)
            vl = np.asarray(batch.value_lengths)
            ts = np.asarray(batch.timestamps, dtype=np.int64)
            old_tombstones = keep & (vl < 0) & (ts < horizon_ms)
            report.tombstones_dropped += int(old_tombstones.sum())
            keep &= ~old_tombstones
            report.records_before += len(batch)
            n_keep = int(keep.sum())
            report.records_after += n_keep
            dropped |= n_keep < len(batch)
            if n_keep == 0:
                continue
            if n_keep == len(batch):
                data = seg.read_bytes(bpos, h.length)  # unchanged: copy the batch as is
            else:
                idx = np.flatnonzero(keep).tolist()
                values = [batch.value(i) for i in idx]
                keys = [batch.key(i) for i in idx]
                headers = ([batch.headers(i) for i in idx]
                           if batch.header_lengths is not None else None)
                base = int(offsets[idx[0]])
                prepared = prepare_batch(
                    values, keys, headers, ts[idx], 0,
                    compression=h.attributes & CODEC_MASK, max_bytes=MAX_BATCH_LENGTH,
                    offset_deltas=offsets[idx] - base)
                data = frame(prepared, base)
            fs.pwrite(fd, data, pos)
            pos += len(data)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    report.bytes_after += pos
    return out_path, dropped


def pass_config(config: LogConfig, tunables: Optional[Dict[str, int]]) -> LogConfig:
    """The configuration of one pass: ``config`` with ``delete_retention_ms`` and/or
    ``compaction_buffer_bytes`` replaced (ConfigError for anything else or a bad value)."""
    if not tunables:
        return config
    unknown = set(tunables) - {"delete_retention_ms", "compaction_buffer_bytes"}
    if unknown:
        raise ConfigError(f"compact() tunables: unknown {sorted(unknown)}")
    return config.replace(**tunables)


def compact(segs: SegmentList, cfg: LogConfig, mark_compacted: Callable[[], None],
            now_ms: Optional[int] = None, dry_run: bool = False,
            guard: Optional[Callable[[], ContextManager[Any]]] = None) -> CompactionReport:
    """Run compaction passes over the sealed segments of ``segs`` (the caller holds the log's
    cleaner lock: one pass at a time). ``mark_compacted`` records durably that the log may have
    offset gaps; it is called before the first commit point. ``dry_run``: count what the
    passes would remove and change nothing (``mark_compacted`` is not called). ``guard()``:
    held while cleaned segments are swapped in (default: the segment list's lock)."""
    t0 = time.perf_counter()
    report = CompactionReport(dry_run=dry_run)
    sealed = segs.sealed_snapshot()
    if not sealed:
        return report
    check_keys(sealed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    horizon = now_ms - cfg.delete_retention_ms
    budget = max(1, cfg.compaction_buffer_bytes // _ENTRY_BYTES)
    report.bytes_before = sum(seg.size for seg in sealed)
    report.records_before = _count(sealed)
    alive: Dict[Tuple[int, int], np.ndarray] = {}  # (dry run) per batch: records still there
    start = 0
    while start < len(sealed):
        # Map as many segments as the budget allows (at least one).
        end, count = start, 0
        while end < len(sealed):
            n = _count(sealed[end:end + 1])
            if end > start and count + n > budget:
                break
            count += n
            end += 1
        cache: dict = {}
        keymap = _build_map(sealed[start:end], cache)
        if dry_run:
            _count_pass(sealed[:end], keymap, horizon, report, cache, alive)
            report.passes += 1
            report.segments_cleaned += end
            start = end
            continue
        pass_report = CompactionReport()
        changed_segs, cleaned = [], []
        for seg in sealed[:end]:
            path, dropped = _clean_segment(segs.fs, seg, keymap, horizon, pass_report, cache)
            if dropped:
                changed_segs.append(seg)
                cleaned.append(path)
            else:  # nothing to remove here: keep the original file
                segs.fs.unlink(path)
        if cleaned:
            mark_compacted()
            _swap_in(segs, changed_segs, cleaned, guard)
        sealed = segs.current(sealed)
        report.passes += 1
        report.segments_cleaned += end
        report.tombstones_dropped += pass_report.tombstones_dropped
        start = end
    if dry_run:
        report.records_removed = report.records_before - sum(int(a.sum())
                                                             for a in alive.values())
        report.records_after = report.records_before - report.records_removed
        report.bytes_after = report.bytes_before
    else:
        report.records_after = _count(sealed)
        report.bytes_after = sum(seg.size for seg in sealed)
    report.seconds = time.perf_counter() - t0
    return report


def _count_pass(segments: List[Segment], keymap: _KeyMap, horizon_ms: int,
                report: CompactionReport, cache: dict,
                alive: Dict[Tuple[int, int], np.ndarray]) -> None:
    """(dry run) What one pass would remove from ``segments`` (every sealed segment up to the
    end of its mapped range): the same keep rule as :func:`_clean_segment`, applied to the
    records earlier passes would have left (``alive``, updated)."""
    for seg in segments:
        for bpos, _h, batch in _batches(seg):
            offsets = np.asarray(batch.offsets, dtype=np.int64)
            hashes = cache.pop((seg.base_offset, bpos), None)
            if hashes is None:
                hashes = _key_hashes(batch)
            before = alive.get((seg.base_offset, bpos))
            if before is None:
                before = np.ones(len(batch), dtype=bool)
            keep = keymap.keep(hashes, offsets) & before
            vl = np.asarray(batch.value_lengths)
            old_tombstones = keep & (vl < 0) & (np.asarray(batch.timestamps) < horizon_ms)
            report.tombstones_dropped += int(old_tombstones.sum())
            keep &= ~old_tombstones
            gone = before & ~keep
            if gone.any():
                kl = batch.key_lengths
                report.payload_bytes_removed += int(np.maximum(vl[gone], 0).sum()) + (
                    0 if kl is None else int(np.maximum(np.asarray(kl)[gone], 0).sum()))
            alive[(seg.base_offset, bpos)] = keep


def _count(segments: List[Segment]) -> int:
    total = 0
    for seg in segments:
        seg.ensure_open()
        total += sum(h.record_count for _p, h in seg.iter_headers(0))
    return total




def _swap_in(segs: SegmentList, old: List[Segment], cleaned: List[str],
             guard: Optional[Callable[[], ContextManager[Any]]]) -> None:
    """Put cleaned segments in place with one atomic commit point.

    ``.cleaned`` -> ``.swap`` (all of them, directory fsynced), then the commit file is written
    atomically: before it exists recovery deletes every ``.cleaned``/``.swap`` (pre-compaction
    log); once it exists recovery renames every ``.swap`` into place (post-compaction log).
    """
    fs = segs.fs
    d = segs.directory
    swaps = []
    for path in cleaned:
        swap = path[: -len(CLEANED)] + SWAP
        fs.replace(path, swap)
        swaps.append(swap)
    fs.fsync_dir(d)
    fs.write_file_atomic(os.path.join(d, COMPACTION_COMMIT), "\n".join(
        os.path.basename(p) for p in swaps).encode())  # the commit point
    with (guard() if guard is not None else segs.lock):
        segs.swap_in(old, swaps)
        fs.fsync_dir(d)
        fs.unlink(os.path.join(d, COMPACTION_COMMIT))
        fs.fsync_dir(d)
