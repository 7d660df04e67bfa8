"""Crash recovery, in one place.

What can be damaged by a crash, and why only that:

* A segment is fsynced (data, then its trimmed indexes) when it is sealed, *before* the next
  segment's file is created and the directory fsynced. So every segment but the last is whole.
* The last (active) segment may end in a torn batch, or in batches that were written but never
  fsynced (fsync="never"/"every"), possibly with a zero-filled hole where the file system lost
  pages. Its preallocated indexes may hold stale or zero entries.
* ``close()`` writes ``clean-shutdown`` naming the active segment, its size and end offset. If it
  is present and matches, nothing is scanned: open is O(1) in the size of the log.

Without a valid marker, the active segment is scanned from its start (it is at most
``segment_bytes`` long): every batch's header, bounds, CRC32C, structure and offsets are checked.
The file is cut after the last valid batch only if *nothing valid follows*, i.e. the damage is a
torn tail. If a valid batch follows the damage, the problem is corruption in the middle of the
data, not a crash artefact: open refuses with :class:`CorruptLogError` rather than silently drop
the records after it; ``logstore recover --apply`` (or :func:`recover`) truncates on request.
A marker that names the active segment but does not match it is still a promise: close() had
made that many bytes, up to that end offset, durable. Recovery that finds less (a shorter file,
zeroed or damaged bytes below that size) refuses with :class:`CorruptLogError`, and so does a
marker naming a segment after the last one (a missing last segment: opening would assign its
offsets again). Recovery is idempotent: a crash during recovery just means it runs again.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from ..config import SHAPING_SETTINGS, LogConfig
from ..errors import ConfigError, CorruptLogError, NotALogError
from ..format.header import HEADER_SIZE, crc_ok, header_problem, parse_header
from ..format.names import (
    CLEANED, COMPACTION_COMMIT, DELETED, INDEX_SUFFIX, KEYINDEX_SUFFIX, LOG_SUFFIX, META_NAME,
    SWAP, TIMEINDEX_SUFFIX, TMP,
    parse_segment_name,
)
from . import meta
from ..fs import FileSystem
from .segment import Segment
from .segments import SegmentList, finish_swap, list_segments
from .tail import RecoveryReport


def marker_matches_segment(path: str, marker: dict) -> bool:
    """O(1) check of a clean-shutdown marker against the active segment it describes: the batch
    it names as last must be whole, CRC-valid, end exactly at the recorded size and end offset."""
    size, last, end = marker["size"], marker["last_batch"], marker["end_offset"]
    if size == 0:
        return last == -1 and end == int(os.path.basename(path).split(".")[0])
    if not 0 <= last <= size - HEADER_SIZE:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(last)
            raw = f.read(size - last)
    except OSError:
        return False
    if len(raw) < HEADER_SIZE:
        return False
    h = parse_header(raw, 0)
    return (header_problem(h) is None and last + h.length == size
            and h.next_offset == end and crc_ok(raw, 0, h))



def finish_interrupted_cleanups(directory: str, fs) -> List[str]:
    """Complete or undo what a crash interrupted; return what was done (for reports).

    * ``*.tmp`` (interrupted atomic writes) and ``*.cleaned`` are deleted.
    * ``*.swap``: if ``compaction.commit`` exists the pass was committed and they are renamed
      over their ``.log`` (the log is as after that pass); otherwise they are deleted (as before).
    * ``*.deleted`` (retention) and index files without their ``.log`` are deleted.
    """
    done = []
    committed = os.path.exists(os.path.join(directory, COMPACTION_COMMIT))
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(TMP) or name.endswith(CLEANED) or name.endswith(DELETED):
            fs.unlink(path)
            done.append(f"removed {name}")
        elif name.endswith(SWAP):
            if committed and os.path.exists(path[: -len(SWAP)]):
                finish_swap(fs, path)
                done.append(f"completed compaction swap {name}")
            elif committed:
                # Its segment is gone (retention deleted it after the pass committed): the
                # cleaned copy must not bring it back.
                fs.unlink(path)
                done.append(f"removed {name} of a deleted segment")
            else:
                fs.unlink(path)
                done.append(f"removed uncommitted {name}")
    if committed:
        fs.fsync_dir(directory)
        fs.unlink(os.path.join(directory, COMPACTION_COMMIT))
        done.append(f"removed {COMPACTION_COMMIT}")
    for name in os.listdir(directory):
        stem, dot, ext = name.partition(".")
        if "." + ext in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, KEYINDEX_SUFFIX) \
                and parse_segment_name(stem + LOG_SUFFIX) is not None \
                and not os.path.exists(os.path.join(directory, stem + LOG_SUFFIX)):
            fs.unlink(os.path.join(directory, name))
            done.append(f"removed orphan {name}")
    if done:
        fs.fsync_dir(directory)
    return done


def open_for_writing(segs: SegmentList, index_capacity: int) -> Optional[RecoveryReport]:
    """Open a log directory's segments for its writer (who holds the directory lock).

    Completes or undoes interrupted cleanups, opens sealed segments lazily and the last one as
    the active segment: in O(1) after a clean shutdown (the marker matches), else recovered
    (:meth:`Segment.recover`). Creates the first segment of an empty log (then returns None).
    The clean-shutdown marker is removed, durably, before anything is written: from here on it
    would lie.
    """
    d, fs = segs.directory, segs.fs
    marker = meta.read_clean_shutdown(d)
    missing = meta.missing_last_segment(marker, list_segments(d))
    if missing is not None:  # (checked before anything is changed)
        raise CorruptLogError(missing, d)
    finish_interrupted_cleanups(d, fs)
    bases = list_segments(d)
    if not bases:
        seg = Segment.create(d, 0, fs, segs.index_interval, index_capacity)
        fs.fsync_dir(d)
        segs.add(seg)
        meta.remove_clean_shutdown(d, fs)
        return None
    segs.open_sealed(bases)
    active = segs.new_segment(bases[-1])
    segs.add(active)
    ours = marker is not None and marker["segment"] == active.base_offset
    clean = (
        ours
        and os.path.getsize(active.path) == marker["size"]
        and marker["end_offset"] >= active.base_offset
        and marker_matches_segment(active.path, marker)
    )
    if clean:
        active.open_active(marker["size"], marker["end_offset"], marker["max_timestamp"],
                           index_capacity, trust_indexes=True)
        report = RecoveryReport(segment=active.path, clean=True)
    else:
        # A marker that names this segment but does not match it still says what close()
        # made durable: recovery must find at least that (else it refuses: data damage).
        report = active.recover(index_capacity, durable_floor=marker["size"] if ours else 0,
                                durable_end=marker["end_offset"] if ours else None)
    meta.remove_clean_shutdown(d, fs)
    return report


def settled_config(directory: str, options: Mapping[str, Any],
                   found: Optional[Dict[str, Any]] = None) -> LogConfig:
    """The configuration a log opens with: the options passed, with the shaping settings stored
    in its metadata (``found``, else read now) taking their place. A passed shaping setting
    that differs from the stored one raises ConfigError (nothing is changed)."""
    config = LogConfig.from_options(options)
    if found is None:
        found = meta.read_meta(directory) if os.path.isdir(directory) else None
    stored = {} if found is None else found.get("settings", {})
    shaping = {k: v for k, v in stored.items() if k in SHAPING_SETTINGS}
    return config.with_stored(shaping, options, f"log {directory}") if shaping else config


def store_missing_settings(directory: str, fs: FileSystem, found: Dict[str, Any],
                           config: LogConfig) -> None:
    """A log written before its settings were stored (or by an older version that stored
    some): store the ones it lacks, as opened now, so that every later open applies them."""
    settings = found.setdefault("settings", {})
    missing = {k: v for k, v in config.settings().items() if k not in settings}
    if missing:
        settings.update(missing)
        meta.rewrite_meta(directory, fs, found)


def configured(config: LogConfig, settings: Mapping[str, Any]) -> LogConfig:
    """``config`` with the shaping ``settings`` changed (``configure``): ConfigError for a name
    that is not a shaping setting, or a bad value."""
    unknown = sorted(set(settings) - set(SHAPING_SETTINGS))
    if unknown:
        raise ConfigError(f"{', '.join(map(repr, unknown))}: not a setting stored with a log; "
                          f"settings: {', '.join(SHAPING_SETTINGS)}")
    return config.replace(**settings)


def close_cleanly(active: Segment, next_offset: int) -> None:
    """A clean close of a log (everything already fsynced): cut the active segment's
    preallocated tail (durably), trim its indexes and write the clean-shutdown marker that lets
    the next open skip recovery (FORMAT.md, ``clean-shutdown``)."""
    if active.trim():  # the marker's size is then the file's size
        active.sync()
    last = active.find(next_offset - 1) if active.size else None
    active.close_active()
    meta.write_clean_shutdown(active.directory, active.fs, {
        "segment": active.base_offset,
        "size": active.size,
        "end_offset": next_offset,
        "max_timestamp": active.max_timestamp,
        "last_batch": last[0] if last else -1,
    })


def check_writer_directory(d: str) -> None:
    """Before a writer touches anything: ``d`` is a log, an empty directory or nothing (a
    foreign directory must stay exactly as it was). NotALogError otherwise."""
    if os.path.exists(d):
        if not os.path.isdir(d):
            raise NotALogError(f"{d} exists and is not a directory")
        if meta.read_meta(d) is None and not meta.is_empty_dir(d):
            raise NotALogError(
                f"{d} is not empty and has no {META_NAME}: not a logstore log "
                f"(refusing to initialise a log over existing files)")


def meta_for_writer(d: str, fs: FileSystem, config: LogConfig) -> Dict[str, Any]:
    """(directory lock held) The log's metadata, created with ``config``'s settings for a new
    log, or upgraded to the current directory format version (FORMAT.md, "Versioning")."""
    found = meta.read_meta(d)
    if found is None:
        if not meta.is_empty_dir(d):
            raise NotALogError(f"{d} is not empty and has no {META_NAME}")
        found = meta.create_meta(d, fs, config.settings())
    meta.upgrade_meta(d, fs, found)  # a version 1 log: before this writer appends version 2
    return found
