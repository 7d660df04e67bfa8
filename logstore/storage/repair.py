"""Repairing a log directory on request (etcd's ``wal.Repair``): what ``recover --apply`` does.

A writer's open already repairs what a crash can do (``loader``: a torn tail, leftover files,
the active segment's indexes). :func:`repair_log` does, under the writer's lock, the few things
an open does not do on its own, then a normal writer open and clean close:

* removes the clean-shutdown marker, so that the open scans the active segment;
* rewrites the indexes of sealed segments whose indexes are wrong;
* ``force_truncate``: cuts the active segment at damage that valid batches follow (an open
  refuses such a log with ``CorruptLogError``), DROPPING everything after the damage.

Deciding what to do is read-only and belongs to the diagnostics
(``logstore.diagnostics.repair_plan``); this module only carries it out.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from ..config import LogConfig
from ..fs import DEFAULT_FS, FileSystem
from . import meta
from .lockfile import DirectoryLock
from .log import Log
from .segment import Segment
from .segments import list_segments
from .sizing import index_capacity


def repair_log(log_dir: str, *, remove_marker: bool = False,
               sealed_rebuilds: Sequence[Tuple[int, int]] = (),
               force_truncate: bool = False, fs: Optional[FileSystem] = None,
               drop_key_indexes: Sequence[str] = ()) -> Dict[str, str]:
    """Repair the log in ``log_dir`` (see the module docstring), then open it for writing (which
    truncates a torn tail, rebuilds the active indexes, deletes leftovers) and close it.

    ``sealed_rebuilds``: ``(base offset, next offset)`` of each sealed segment whose indexes
    are rewritten. Returns ``{"forced": <the forced cut's recovery summary>}`` (if
    ``force_truncate``) and ``{"summary": <the open's recovery summary>}``.
    ``drop_key_indexes``: key index files to delete (hints that disagree with their segment:
    the next ``replay_key`` builds them again). Raises
    ``LogLockedError`` if a writer has the log open (nothing is changed then).
    """
    fs = fs or DEFAULT_FS
    cfg = LogConfig()
    result: Dict[str, str] = {}
    lock = DirectoryLock(log_dir).acquire()
    try:
        if remove_marker:
            meta.remove_clean_shutdown(log_dir, fs)
        for base, next_offset in sealed_rebuilds:
            rebuild_sealed_indexes(log_dir, base, next_offset, fs, cfg)
        for path in drop_key_indexes:
            try:
                fs.unlink(path)
            except FileNotFoundError:
                pass
        if force_truncate:
            result["forced"] = cut_active_at_damage(log_dir, fs, cfg)
    finally:
        lock.release()
    # A normal writer open: deletes *.tmp, truncates a torn tail, rebuilds the active indexes.
    log = Log.open(log_dir, fs=fs)
    try:
        rep = log.recovery_report
        result["summary"] = rep.summary() if rep is not None else ""
    finally:
        log.close()
    return result


def rebuild_sealed_indexes(log_dir: str, base: int, next_offset: int, fs: FileSystem,
                           cfg: LogConfig) -> None:
    """Rewrite both indexes of the sealed segment ``base`` from its data (which must be
    undamaged: a damaged segment raises ``CorruptLogError``)."""
    seg = Segment.open_sealed(log_dir, base, next_offset, fs, cfg.index_interval_bytes,
                              writable=True)
    try:
        seg.rebuild_sealed_indexes()
    finally:
        seg.close()


def cut_active_at_damage(log_dir: str, fs: FileSystem, cfg: LogConfig) -> str:
    """Recover the active segment as a writer's open would, but cut it at the damage even when
    valid batches follow it. Returns the recovery summary. The caller holds the writer's lock.
    """
    # Without the marker the next open scans the active segment again, whatever happens here.
    meta.remove_clean_shutdown(log_dir, fs)
    bases = list_segments(log_dir)
    seg = Segment(log_dir, bases[-1], fs, cfg.index_interval_bytes, writable=True)
    try:
        forced = seg.recover(index_capacity(cfg), force_truncate=True)
    finally:
        # Trims and unmaps the indexes recovery just preallocated (the next open rewrites
        # them), and closes the file.
        seg.close_active()
    return forced.summary()
