"""What a processor keeps on disk (see ``segments/FORMAT.md``, "Processing: output and
changelog records"): its metadata file, one changelog log per task, the commit record that ends
every transaction, and the marker header carried by every output batch.

Layout under the store root::

    internal/processing/<name>/processor.json        topology: stages, inputs, outputs, state ops
    internal/processing/<name>/stage-<i>/<p>/        task (stage i, input partition p): changelog

A changelog is an ordinary compacted :class:`~logstore.Log` whose writer is the task's owner (its
write lock *is* the task: one owner at a time, in any process, released by the kernel on death).
Its records:

- state entries: key ``b"s" + u16 op id (big-endian) + op-specific key``, value the pickled
  state (or ``None``: deleted);
- commit records: key ``b"c"``, value JSON (see :func:`encode_commit`). Every transaction
  appends its state entries and then its commit record in one batch (several batches, the commit
  record last, if they do not fit in one), so the last record of a finished transaction is its
  commit record. Entries after the last commit record belong to a transaction that did not
  finish: restore ignores them and the next commit re-writes their committed values.
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from ._engine import DEFAULT_FS, CorruptLogError, Log, Store, log_options, validate_name
from .reader import read_items

PROCESSING_DIR = os.path.join("internal", "processing")
META_FILE = "processor.json"
META_FORMAT = "logstore-processor"
META_VERSION = 1
COMMIT_KEY = b"c"
STATE_PREFIX = b"s"
COMMIT_VERSION = 1
#: Header carried by the last record of every output batch a task writes (exactly-once mode):
#: ``<processor>:<stage>:<partition>:<from>:<to>:<part>:<parts>`` in ASCII.
MARKER_HEADER = "x-processor-txn"
CHANGELOG_SEGMENT_BYTES = 8 << 20
_OP = struct.Struct(">H")


def validate_processor_name(name: Any) -> str:
    """Processor names follow the rules of topic names (they name directories and topics)."""
    return validate_name("processor", name)


def processor_dir(root: str, name: str) -> str:
    return os.path.join(root, PROCESSING_DIR, name)


def changelog_path(root: str, name: str, stage: int, partition: int) -> str:
    return os.path.join(processor_dir(root, name), f"stage-{stage}", str(partition))


def state_prefix(op_id: int) -> bytes:
    return STATE_PREFIX + _OP.pack(op_id)


def op_of(key: bytes) -> int:
    return _OP.unpack_from(key, 1)[0]


# ------------------------------------------------------------------------------ metadata
def read_meta(root: str, name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(processor_dir(root, name), META_FILE)
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorruptLogError(f"unreadable processor metadata: {e}", path) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise CorruptLogError("not a processor metadata file", path)
    return meta


def write_meta(root: str, name: str, meta: Dict[str, Any]) -> None:
    d = processor_dir(root, name)
    DEFAULT_FS.makedirs(d)
    DEFAULT_FS.write_file_atomic(os.path.join(d, META_FILE),
                                 json.dumps(meta, sort_keys=True, indent=1).encode())


def processors(root: str) -> List[str]:
    """Names of the processors that have run in the store at ``root``."""
    base = os.path.join(root, PROCESSING_DIR)
    if not os.path.isdir(base):
        return []
    return sorted(n for n in os.listdir(base)
                  if os.path.exists(os.path.join(base, n, META_FILE)))


# ------------------------------------------------------------------------------ changelog logs
def open_changelog(store: Store, name: str, stage: int, partition: int) -> Log:
    """Open task (stage, partition)'s changelog for writing: :class:`LogLockedError` while
    another owner (thread or process) has it. Works in a read-only store too (like a group's
    lease log): the task's owner is the changelog's only writer."""
    path = changelog_path(store.root, name, stage, partition)
    # Compaction is run by the task itself (Task.maybe_compact), not by a thread per log.
    return Log.open(path, **log_options(
        store, path, cleanup_policy="compact", retention_ms=None, retention_bytes=None,
        retention_check_interval_s=0,
        segment_bytes=min(store.config.segment_bytes, CHANGELOG_SEGMENT_BYTES)))


def open_changelog_readonly(root: str, name: str, stage: int, partition: int) -> Optional[Log]:
    path = changelog_path(root, name, stage, partition)
    if not os.path.exists(os.path.join(path, "logstore.meta")):
        return None
    return Log.open(path, readonly=True)


# ------------------------------------------------------------------------------ commit records
def encode_commit(commit: Dict[str, Any]) -> bytes:
    return json.dumps(commit, separators=(",", ":")).encode()


def decode_commit(value: Optional[bytes], path: str) -> Dict[str, Any]:
    try:
        commit = json.loads(value)  # type: ignore[arg-type]
        if not isinstance(commit, dict) or not isinstance(commit["pos"], int):
            raise ValueError("not a commit record")
    except (TypeError, ValueError, KeyError) as e:
        raise CorruptLogError(f"bad commit record in a processor changelog: {e}", path) from None
    if int(commit.get("v", 0)) > COMMIT_VERSION:
        raise CorruptLogError(f"commit record of a newer version {commit.get('v')}", path)
    return commit


def new_commit(pos: int, marks: Dict[str, List[int]]) -> Dict[str, Any]:
    """The commit record of a task that has processed nothing yet (read from ``pos``)."""
    return {"v": COMMIT_VERSION, "pos": pos, "from": pos, "marks": marks, "wm": None,
            "ops": {}, "late": 0, "in": 0, "out": 0, "txns": 0, "entries": 0, "bytes": 0,
            "time_ms": time.time_ns() // 1_000_000}


def last_commit(log: Log) -> Optional[Dict[str, Any]]:
    """The last commit record of changelog ``log`` (None if it has none). Reads only the last
    batch when it ends with a commit record (always, but after a crash in a transaction whose
    state entries needed several batches)."""
    end = log.end_offset
    if end <= log.start_offset:
        return None
    last = None
    for batch in log.replay_batches(end - 1):
        last = batch
    if last is not None and len(last):
        i = len(last) - 1
        if last.key(i) == COMMIT_KEY:
            return decode_commit(last.value(i), log.path)
    found = None
    for rec in log.replay():
        if rec.key == COMMIT_KEY:
            found = rec.value
    return None if found is None else decode_commit(found, log.path)


def read_changelog(log: Log) -> Tuple[Dict[bytes, bytes], Optional[Dict[str, Any]], Set[bytes]]:
    """Replay a changelog: ``(state, commit, tail)``: the committed state entries (deleted ones
    left out), the last commit record, and the keys written after it (an unfinished
    transaction's, not part of the state)."""
    state: Dict[bytes, Any] = {}
    pending: Dict[bytes, Any] = {}
    commit_value = None
    pos = log.start_offset
    end = log.end_offset
    while pos < end:
        items, pos = read_items(log, pos, 65536, end)
        if not items:
            break
        # Commit records are rare (one per transaction): find them, take the runs between.
        commits = [i for i, it in enumerate(items) if it[0] == COMMIT_KEY]
        start = 0
        for i in commits:
            pending.update([it[:2] for it in items[start:i]])
            if pending:
                state.update(pending)
                pending = {}
            commit_value = items[i][1]
            start = i + 1
        pending.update([it[:2] for it in items[start:]])
    for k in [k for k, v in state.items() if v is None]:
        del state[k]
    commit = None if commit_value is None else decode_commit(commit_value, log.path)
    return state, commit, set(pending)


# ------------------------------------------------------------------------------ output markers
def marker(name: str, stage: int, partition: int, start: int, stop: int, part: int,
           parts: int) -> bytes:
    return f"{name}:{stage}:{partition}:{start}:{stop}:{part}:{parts}".encode()


def marker_prefix(name: str, stage: int, partition: int) -> bytes:
    return f"{name}:{stage}:{partition}:".encode()


def parse_marker_tail(tail: bytes, where: str) -> Tuple[int, int, int, int]:
    """``(from, to, part, parts)`` of a marker, given what follows its task prefix."""
    try:
        a, b, part, parts = (int(x) for x in tail.split(b":"))
    except ValueError:
        raise CorruptLogError(f"malformed {MARKER_HEADER} header {tail!r}", where) from None
    return a, b, part, parts
