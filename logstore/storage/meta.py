"""The small metadata files of a log directory.

``logstore.meta`` (JSON, written once, atomically, at creation) names the directory as a log and
records the format version and the log's id. ``clean-shutdown`` (JSON, written atomically by
``close``) says where the log ended, so the next open needs no scan; it is removed (and the
removal made durable) before the first write after an open, so its presence always means "nothing
was written after this description".
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Dict, List, Optional

import crc32c

from ..errors import NotALogError, UnsupportedFormatError
from ..format.names import CLEAN_SHUTDOWN_NAME, LOCK_FILES, META_NAME, TMP, segment_name
from ..fs import FileSystem

FORMAT_NAME = "logstore-log"
# 2: batches may be of version 2 (FORMAT.md, "Versioning"). A version 1 directory is upgraded
# at its first writable open (upgrade_meta), before anything is written, so that an older
# logstore refuses it instead of misreading version 2 batches as damaged ones.
FORMAT_VERSION = 2
# Files that may exist in a directory that is not a log yet (a lock, an interrupted atomic write).
_IGNORABLE = LOCK_FILES


def read_meta(directory: str) -> Optional[Dict[str, Any]]:
    """The parsed metadata, None if the file is absent. Raises for foreign or newer logs."""
    path = os.path.join(directory, META_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError
        version = int(meta["version"])
    except (ValueError, KeyError, TypeError):
        raise NotALogError(f"{path} is not a logstore metadata file") from None
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{directory} uses log format version {version}; this logstore supports up to "
            f"{FORMAT_VERSION}. Upgrade logstore to open it."
        )
    return meta


def is_empty_dir(directory: str) -> bool:
    for name in os.listdir(directory):
        if name in _IGNORABLE or name.endswith(TMP):
            continue
        return False
    return True


def create_meta(directory: str, fs: FileSystem, settings: Dict[str, Any]) -> Dict[str, Any]:
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "id": uuid.uuid4().hex,
        "created_ms": int(time.time() * 1000),
        "settings": settings,
    }
    fs.write_file_atomic(os.path.join(directory, META_NAME), json.dumps(meta, indent=1).encode())
    return meta


_MARKER_FIELDS = ("segment", "size", "end_offset", "max_timestamp", "last_batch")


def _marker_crc(info: Dict[str, int]) -> int:
    return crc32c.crc32c(json.dumps([info[k] for k in _MARKER_FIELDS]).encode())


def read_clean_shutdown(directory: str) -> Optional[Dict[str, int]]:
    """The marker's fields, or None if absent, unreadable or failing its checksum (then the
    log is recovered as after a crash: a marker is only ever a shortcut)."""
    try:
        with open(os.path.join(directory, CLEAN_SHUTDOWN_NAME), "rb") as f:
            data = json.loads(f.read())
        info = {k: int(data[k]) for k in _MARKER_FIELDS}
        if int(data["crc"]) != _marker_crc(info):
            return None
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: recover as after a crash


def write_clean_shutdown(directory: str, fs: FileSystem, info: Dict[str, int]) -> None:
    data = {k: int(info[k]) for k in _MARKER_FIELDS}
    data["crc"] = _marker_crc(data)
    fs.write_file_atomic(os.path.join(directory, CLEAN_SHUTDOWN_NAME), json.dumps(data).encode())


def remove_clean_shutdown(directory: str, fs: FileSystem) -> None:
    path = os.path.join(directory, CLEAN_SHUTDOWN_NAME)
    try:
        fs.unlink(path)
    except FileNotFoundError:
        return
    fs.fsync_dir(directory)


def rewrite_meta(directory: str, fs: FileSystem, meta: Dict[str, Any]) -> None:
    """Atomically replace the metadata (same format and id; settings updated)."""
    fs.write_file_atomic(os.path.join(directory, META_NAME), json.dumps(meta, indent=1).encode())


def upgrade_meta(directory: str, fs: FileSystem, meta: Dict[str, Any]) -> None:
    """(Writers, at open) Bring an older log's metadata to :data:`FORMAT_VERSION`, atomically
    and in place in ``meta``: from now on this writer appends version 2 batches, which an older
    logstore must refuse to read (``UnsupportedFormatError``) rather than misread. Existing
    batches are left as they are (every version stays readable)."""
    if int(meta.get("version", FORMAT_VERSION)) < FORMAT_VERSION:
        meta["version"] = FORMAT_VERSION
        rewrite_meta(directory, fs, meta)


def mark_compacted(directory: str, fs: FileSystem, meta: Dict[str, Any]) -> None:
    """Record durably (``settings.compacted``) that the log may have offset gaps, once."""
    settings = meta.setdefault("settings", {})
    if not settings.get("compacted"):
        settings["compacted"] = True
        rewrite_meta(directory, fs, meta)


def stored_settings(directory: str) -> Dict[str, Any]:
    """The settings stored in the log's ``logstore.meta`` (``{}`` for none, or no log there)."""
    try:
        found = read_meta(directory)
    except NotALogError:
        return {}
    settings = (found or {}).get("settings")
    return dict(settings) if isinstance(settings, dict) else {}


def stored_cleanup_policy(settings: Dict[str, Any]) -> str:
    """The cleanup policy of stored ``settings``: ``cleanup_policy`` if stored; for a log from
    before settings were stored, ``"compact"`` if it was ever compacted (it was opened with a
    compact policy then), else the default ``"delete"``."""
    policy = settings.get("cleanup_policy")
    if isinstance(policy, str):
        return policy
    return "compact" if settings.get("compacted") else "delete"


def missing_last_segment(marker: Optional[Dict[str, int]], bases: List[int]) -> Optional[str]:
    """Why a log whose clean-shutdown ``marker`` names a segment after the last of ``bases``
    (the segments there) is damaged, or None. Its last segment is missing: opening it would
    assign offsets again that were acknowledged, so writers refuse and readers raise."""
    if marker is None or (bases and marker["segment"] <= bases[-1]):
        return None
    have = (f"the last segment there is {segment_name(bases[-1])}" if bases
            else "there is no segment")
    return (f"the clean-shutdown marker says the log ends in segment "
            f"{segment_name(marker['segment'])} at offset {marker['end_offset']}, but {have}: "
            f"the last segment is missing (data damage). Opening it for writing would assign "
            f"offsets again that were acknowledged; nothing was changed. Restore the segment "
            f"from a copy")
