"""Read-only inspection of logs on disk: what ``logstore dump``, ``verify`` and ``stats`` use.

Nothing here ever writes, creates, renames or deletes a file, or takes the writer's lock, so it is
safe to run against a log that a writer is appending to, in another process:

* Files are opened ``O_RDONLY`` and read with ``os.pread`` in chunks, never ``mmap``ed: a writer
  that truncates a torn tail during its own recovery cannot kill us with ``SIGBUS``.
* The size of a segment is snapshotted when it is opened; a growing active segment is read up to
  that size. An incomplete batch at the end of the active segment while a writer is running (or
  while the file is still growing) is re-read for a short while before it is called torn: it is
  usually a write in progress.
* The active segment's index files are read *before* its data (the writer writes a batch before
  its index entry), and index entries beyond what was scanned are left unchecked.

Paths are resolved in one place, :func:`resolve_targets`, which turns what the operator typed
into a list of :class:`Target` (a log directory, or one ``.log`` segment file of one). A store
root (``store.meta``: topics of partitions) is expanded there into one target per partition (and
the internal logs, for ``verify``). :func:`store_stats` and :func:`queue_state` read a store's
committed offsets and work-queue state, read-only, for ``logstore stats``.

The checks mirror the engine exactly: a batch is valid iff :class:`~logstore.segment.Segment`'s
scan accepts it (header, bounds, CRC32C, structure, offsets not going back), and damage in the
last segment is a torn tail iff no CRC-valid batch follows it at an 8-aligned position with a
base offset at or above the expected one (:func:`logstore.recovery.valid_batch_after`), i.e.
iff crash recovery would truncate it rather than refuse to open the log.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..views import leases

from ..storage import meta
from ..format import decode as batch_decode
from ..format.decode import DecodedBatch
from ..format.header import ALIGN, ATTR_HEADERS, BatchHeader, HEADER_SIZE, MAGIC, crc_ok, header_problem, parse_header
from ..errors import CorruptLogError, NotALogError
from ..errors import LogstoreError as LogstoreErrorBase
from ..format.names import (
    CLEAN_SHUTDOWN_NAME, COMPACTION_COMMIT, INDEX_SUFFIX, META_NAME, LOCK_NAME, LOG_SUFFIX, STORE_META, TIMEINDEX_SUFFIX, TOPIC_META,
    parse_segment_name,
)
from ..storage.segment import MAX_RELATIVE_OFFSET, zeros_between

CHUNK = 4 << 20  # bytes read per pread when walking a segment
STORE_META_NAME = STORE_META
TOPIC_META_NAME = TOPIC_META
LEFTOVER_SUFFIXES = (".tmp", ".cleaned", ".swap")
OFFSET_ENTRY = np.dtype("<i8")
TIME_ENTRY = np.dtype([("ts", "<i8"), ("rel", "<i4")])

Progress = Optional[Callable[[int], None]]


# ---------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One log to inspect: ``log_dir``, or only the segment file ``segment`` inside it.

    Logs of a store carry where they belong: ``topic`` and ``partition`` for a topic partition,
    ``internal`` for the store's own logs (``internal/offsets``, ``internal/queues/<name>``).
    ``expanded``: the operator named a store root (or a topic directory) and this target is one
    of the logs it was expanded into; its ``label`` is then ``"<topic>/<partition>"`` (or
    ``"internal/..."``) and ``dir_label`` the directory under the path as typed.
    """

    label: str  # how to name it to the operator (the path as given, or "topic/partition")
    log_dir: str  # absolute path of the log directory
    segment: Optional[str] = None  # absolute path of a single .log file, or None for the log
    topic: Optional[str] = None
    partition: Optional[int] = None
    internal: bool = False
    expanded: bool = False
    dir_label: Optional[str] = None  # the log directory as the operator would type it
    store_root: Optional[str] = None  # absolute path of the store holding this log, if any

    @property
    def files_label(self) -> str:
        """How to name the log directory when naming a file in it."""
        return self.dir_label or self.label


def store_path(path: "str | os.PathLike[str]") -> Optional[Tuple[str, Optional[str]]]:
    """``(store root, None)`` for a store root, ``(store root, topic)`` for a topic directory
    of a store (``<root>/topics/<name>``), else None. Roots are absolute."""
    p = os.path.abspath(os.fspath(path))
    if is_store_root(p):
        return p, None
    root = os.path.dirname(os.path.dirname(p))
    if (os.path.isfile(os.path.join(p, TOPIC_META_NAME))
            and os.path.basename(os.path.dirname(p)) == "topics" and is_store_root(root)):
        return root, os.path.basename(p)
    return None


def partition_of_store(path: "str | os.PathLike[str]") -> Optional[Tuple[str, str, int]]:
    """``(store root, topic, partition)`` if ``path`` is a topic partition directory."""
    return _store_of_partition(os.path.abspath(os.fspath(path)))


def is_store_root(path: "str | os.PathLike[str]") -> bool:
    """Whether ``path`` is a store root (a directory with ``store.meta``)."""
    p = os.fspath(path)
    return os.path.isdir(p) and os.path.exists(os.path.join(p, STORE_META_NAME))


def store_topics(root: str) -> List[Tuple[str, int]]:
    """``(topic, partition count)`` of every topic of the store at ``root``, by name.

    Read from ``topics/<name>/topic.json`` (a directory without one is not a topic).
    """
    tdir = os.path.join(root, "topics")
    if not os.path.isdir(tdir):
        return []
    out = []
    for name in sorted(os.listdir(tdir)):
        meta_path = os.path.join(tdir, name, TOPIC_META_NAME)
        if not os.path.isfile(meta_path):
            continue
        out.append((name, _topic_partitions(meta_path)))
    return out


def _topic_partitions(meta_path: str) -> int:
    import json

    try:
        with open(meta_path, "rb") as f:
            n = int(json.loads(f.read())["partitions"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NotALogError(f"{meta_path} is not a topic metadata file") from None
    if n < 1:
        raise NotALogError(f"{meta_path} is not a topic metadata file (partitions={n})")
    return n


def store_queues(root: str) -> List[str]:
    """Names of the store's work queues (``internal/queues/<name>`` event logs)."""
    qdir = os.path.join(root, "internal", "queues")
    if not os.path.isdir(qdir):
        return []
    return sorted(n for n in os.listdir(qdir) if os.path.isdir(os.path.join(qdir, n)))


def _store_of_partition(p: str) -> Optional[Tuple[str, str, int]]:
    """(store root, topic, partition) if directory ``p`` is a topic partition of a store."""
    tdir = os.path.dirname(p)
    root = os.path.dirname(os.path.dirname(tdir))
    base = os.path.basename(p)
    if (base.isdigit() and os.path.basename(os.path.dirname(tdir)) == "topics"
            and os.path.isfile(os.path.join(tdir, TOPIC_META_NAME)) and is_store_root(root)):
        return root, os.path.basename(tdir), int(base)
    return None


def resolve_targets(path: "str | os.PathLike[str]", topic: Optional[str] = None,
                    partition: Optional[int] = None, internal: bool = False) -> List[Target]:
    """Turn a command-line PATH into the logs it names.

    A log directory (has ``logstore.meta``) is one target; a ``.log`` segment file is one target
    limited to that segment. A store root (has ``store.meta``) is every partition of every topic,
    in topic-name then partition order, or only those of ``topic`` (and only ``partition``);
    with ``internal`` (and no ``topic``) also the store's internal logs. A topic directory of a
    store (``<root>/topics/<name>``) is that topic of the store. Raises :class:`NotALogError`
    (a usage error for the CLI) for a missing path, a directory that is neither a log nor a
    store, an unknown topic or partition, or ``topic``/``partition`` with a plain log.
    """
    given = os.fspath(path)
    p = os.path.abspath(given)
    if partition is not None and topic is None:
        raise NotALogError("--partition needs --topic (partition numbers are per topic)")
    if not os.path.exists(p):
        raise NotALogError(f"{given}: no such file or directory")
    if os.path.isdir(p) and os.path.isfile(os.path.join(p, TOPIC_META_NAME)) \
            and os.path.basename(os.path.dirname(p)) == "topics" \
            and is_store_root(os.path.dirname(os.path.dirname(p))):
        name = os.path.basename(p)
        if topic is not None and topic != name:
            raise NotALogError(f"{given} is the directory of topic {name!r}, not {topic!r}")
        root_given = os.path.dirname(os.path.dirname(given.rstrip(os.sep))) or "."
        return _store_targets(root_given, os.path.dirname(os.path.dirname(p)), name,
                              partition, False)
    if is_store_root(p):
        return _store_targets(given, p, topic, partition, internal)
    if topic is not None:
        raise NotALogError(f"--topic and --partition need a store root (a directory with "
                           f"{STORE_META_NAME}); {given} is not one")
    if os.path.isfile(p):
        if not p.endswith(LOG_SUFFIX):
            raise NotALogError(
                f"{given} is neither a log directory nor a .log segment file")
        return [Target(given, os.path.dirname(p), p)]
    if not os.path.isdir(p):
        raise NotALogError(f"{given} is neither a log directory nor a .log segment file")
    if meta.read_meta(p) is None:  # raises NotALogError/UnsupportedFormatError for bad files
        raise NotALogError(f"{given} is not a log directory (no {META_NAME})")
    owner = _store_of_partition(p)
    if owner is not None:
        return [Target(given, p, topic=owner[1], partition=owner[2], store_root=owner[0])]
    return [Target(given, p)]


def _store_targets(given: str, root: str, topic: Optional[str], partition: Optional[int],
                   internal: bool) -> List[Target]:
    topics = store_topics(root)
    if topic is not None:
        found = [t for t in topics if t[0] == topic]
        if not found:
            names = ", ".join(t[0] for t in topics) or "none"
            raise NotALogError(f"no topic {topic!r} in store {given} (topics: {names})")
        topics = found
        if partition is not None and not 0 <= partition < found[0][1]:
            raise NotALogError(f"topic {topic!r} has no partition {partition} (it has "
                               f"{found[0][1]}: 0..{found[0][1] - 1})")
    out = []
    for name, n in topics:
        for part in range(n):
            if partition is not None and part != partition:
                continue
            out.append(Target(f"{name}/{part}", os.path.join(root, "topics", name, str(part)),
                              topic=name, partition=part, expanded=True,
                              dir_label=os.path.join(given, "topics", name, str(part)),
                              store_root=root))
    if internal and topic is None:
        logs = [("internal/offsets", os.path.join(root, "internal", "offsets"))]
        logs += [(f"internal/queues/{q}", os.path.join(root, "internal", "queues", q))
                 for q in store_queues(root)]
        for _topic, _group, gdir in leases.list_groups(root):  # consumer groups' lease logs
            rel = os.path.relpath(gdir, root)
            logs += [(f"{rel}/{p}", os.path.join(gdir, str(p)))
                     for p in leases.lease_partitions(gdir)]
        for label, d in logs:
            if os.path.isdir(d):
                out.append(Target(label, d, internal=True, expanded=True,
                                  dir_label=os.path.join(given, label), store_root=root))
    return out


def require_log_dir(path: "str | os.PathLike[str]", what: str) -> Target:
    """The single log directory named by ``path`` (commands that open the log through the API)."""
    targets = resolve_targets(path)
    if len(targets) != 1 or targets[0].segment is not None:
        raise NotALogError(f"{what} needs a log directory, not a segment file: {os.fspath(path)}")
    return targets[0]


def require_log_dirs(path: "str | os.PathLike[str]", what: str, topic: Optional[str] = None,
                     partition: Optional[int] = None) -> List[Target]:
    """The log directories named by ``path`` (a log, a store root or a topic directory)."""
    targets = resolve_targets(path, topic, partition)
    if any(t.segment is not None for t in targets):
        raise NotALogError(f"{what} needs a log directory or a store, not a segment file: "
                           f"{os.fspath(path)}")
    return targets


@dataclass(frozen=True)
class SegmentFile:
    """A segment file on disk, as listed when the inspection started."""

    path: str
    base_offset: Optional[int]  # from the file name; None for a file with a non-standard name
    active: bool  # the last segment of its log: the only one crash recovery may cut
    in_log: bool = True  # False: a segment file outside any log directory (a copy)
    end_offset: Optional[int] = None  # sealed: the next segment's base offset (its offset end)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def sibling(self, suffix: str) -> str:
        return self.path[: -len(LOG_SUFFIX)] + suffix


def segment_files(target: Target) -> List[SegmentFile]:
    """The target's segment files in offset order (a snapshot: a writer may add more later)."""
    bases = sorted(b for b in map(parse_segment_name, os.listdir(target.log_dir)) if b is not None)
    ends = dict(zip(bases, bases[1:]))
    if target.segment is not None:
        base = parse_segment_name(os.path.basename(target.segment))
        in_log = base is not None and os.path.exists(os.path.join(target.log_dir, META_NAME))
        return [SegmentFile(target.segment, base, in_log and bool(bases) and bases[-1] == base,
                            in_log, ends.get(base) if in_log else None)]
    return [SegmentFile(os.path.join(target.log_dir, f"{b:020d}{LOG_SUFFIX}"), b,
                        i == len(bases) - 1, True, ends.get(b))
            for i, b in enumerate(bases)]


def writer_pid(log_dir: str) -> Optional[int]:
    """Pid of the process holding the log's writer lock, or None (none, or unknown).

    Read from ``/proc/locks`` (Linux), so the lock is never touched: even a shared ``flock``
    probe could make a writer's open fail with LogLockedError.
    """
    try:
        st = os.stat(os.path.join(log_dir, LOCK_NAME))
        with open("/proc/locks", "r", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "3: FLOCK  ADVISORY  WRITE 7194 fe:00:2171887 0 EOF" ("->" marks a blocked waiter)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[2] != "->" and parts[5] == ident:
            try:
                return int(parts[4])
            except ValueError:
                return -1
    return None


# ---------------------------------------------------------------------------------- reading
class Reader:
    """pread-based, chunk-buffered read access to one file (no mmap: see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = self.opened_size = os.fstat(self.fd).st_size
        self.unwritten = 0  # zero bytes past the data of an active segment (preallocated)
        self._buf = b""
        self._start = 0

    def refresh(self) -> int:
        """Re-read the file size (the active segment grows) and drop cached bytes."""
        self.size = os.fstat(self.fd).st_size
        self._buf = b""
        return self.size

    def view(self, pos: int, n: int) -> Tuple[bytes, int]:
        """(buffer, index) such that ``buffer[index:index+n]`` are bytes [pos, pos+n) (or fewer)."""
        start = self._start
        if start <= pos and pos + n <= start + len(self._buf):
            return self._buf, pos - start
        want = min(max(n, CHUNK), max(0, self.size - pos))
        self._buf = os.pread(self.fd, want, pos)
        self._start = pos
        return self._buf, 0

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Item:
    """One step of a segment walk: a valid batch (``error`` None) or the first invalid one."""

    pos: int
    header: Optional[BatchHeader]  # None if the header itself is unusable
    batch: Optional[DecodedBatch]  # decoded (CRC-checked) batch when walking with decode=True
    error: Optional[CorruptLogError]


def _read_one(r: Reader, seg: SegmentFile, pos: int, expect: Optional[int], decode: bool) -> Item:
    end = r.size
    path = r.path
    if end - pos < HEADER_SIZE:
        return Item(pos, None, None, CorruptLogError("truncated batch header", path, pos))
    buf, i = r.view(pos, HEADER_SIZE)
    if len(buf) - i < HEADER_SIZE:
        return Item(pos, None, None, CorruptLogError("truncated batch header", path, pos))
    h = parse_header(buf, i)
    problem = header_problem(h)
    if problem:
        return Item(pos, None, None, CorruptLogError(problem, path, pos))
    if pos + h.length > end:
        return Item(pos, h, None, CorruptLogError("truncated batch (torn write)", path, pos))
    batch = None
    if decode:
        buf, i = r.view(pos, h.length)
        if len(buf) - i < h.length:
            return Item(pos, h, None, CorruptLogError("truncated batch (torn write)", path, pos))
        try:
            batch = batch_decode.decode(buf, i, h, path, pos, True)
        except CorruptLogError as e:
            return Item(pos, h, None, e)
    if expect is not None and h.base_offset < expect:
        return Item(pos, h, None, CorruptLogError(
            f"batch base offset {h.base_offset} goes back (expected >= {expect})", path, pos))
    if seg.base_offset is not None and h.next_offset - 1 - seg.base_offset > MAX_RELATIVE_OFFSET:
        return Item(pos, h, None, CorruptLogError(
            "batch offsets too far from the segment base", path, pos))
    return Item(pos, h, batch, None)


def walk(r: Reader, seg: SegmentFile, pos: int = 0, expect: Optional[int] = None,
         decode: bool = True, settle: float = 0.0, writer_running: bool = False
         ) -> Iterator[Item]:
    """Yield consecutive batches from ``pos``; the last item is the first invalid batch, if any.

    ``decode`` checks CRC32C and structure (else only headers and bounds: ``stats``).
    ``settle`` > 0 (active segment): an invalid batch is re-read for up to that many seconds if
    a writer is running or the file has grown since it was opened: it may be being written.
    """
    while pos < r.size:
        item = _read_one(r, seg, pos, expect, decode)
        if item.error is not None and seg.active and zeros_between(r.fd, pos, r.size):
            # Never-written, preallocated space of the active segment: the data ends here
            # (FORMAT.md, "Preallocated tail"). Recovery trims it; it is not damage.
            r.unwritten = r.size - pos
            r.size = pos
            return
        if item.error is not None and settle > 0 and (
                writer_running or r.refresh() != r.opened_size):
            deadline = time.monotonic() + settle
            while item.error is not None and time.monotonic() < deadline:
                time.sleep(0.05)
                r.refresh()
                item = _read_one(r, seg, pos, expect, decode)
        yield item
        if item.error is not None:
            return
        pos += item.header.length
        expect = item.header.next_offset


def find_valid_batch(r: Reader, start: int, min_offset: Optional[int] = None) -> Optional[int]:
    """Position of the first CRC-valid batch at an 8-aligned position >= ``start``, or None.

    Same rule as :func:`logstore.recovery.valid_batch_after` (which uses an mmap).
    """
    end = r.size
    pos = start + (-start % ALIGN)
    while pos + HEADER_SIZE <= end:
        n = min(CHUNK, end - pos)
        data = os.pread(r.fd, n, pos)
        if not data:
            return None
        i = 0
        while True:
            i = data.find(MAGIC, i)
            if i < 0:
                break
            p = pos + i
            if p % ALIGN == 0 and p + HEADER_SIZE <= end:
                raw = data[i : i + HEADER_SIZE]
                if len(raw) < HEADER_SIZE:
                    raw = os.pread(r.fd, HEADER_SIZE, p)
                h = parse_header(raw, 0)
                if (header_problem(h) is None and p + h.length <= end
                        and (min_offset is None or h.base_offset >= min_offset)):
                    body = os.pread(r.fd, h.length, p)
                    if len(body) == h.length and crc_ok(body, 0, h):
                        return p
            i += 1
        if len(data) < CHUNK:
            return None
        pos += len(data) - (len(MAGIC) - 1)  # overlap: a magic may straddle the chunk border
    return None


def unsynced_damage(r: Reader, epos: int, resume: int) -> bool:
    """Recovery's rule (logstore.recovery.synced_before_of_later_batches): damage at ``epos``
    followed by valid batches is a torn tail when no later valid batch records (in its
    ``synced_before`` header field) that the damaged bytes had been fsynced."""
    best = 0
    pos: Optional[int] = resume
    while pos is not None:
        h = parse_header(os.pread(r.fd, HEADER_SIZE, pos), 0)
        best = max(best, h.synced_before)
        pos = find_valid_batch(r, pos + h.length, h.next_offset)
    return best <= epos


# ---------------------------------------------------------------------------------- scanning
@dataclass
class SegmentStart:
    seg: SegmentFile
    size: int  # bytes in the file when it was opened


@dataclass
class BatchEvent:
    seg: SegmentFile
    pos: int
    header: BatchHeader
    batch: Optional[DecodedBatch]


@dataclass
class ErrorEvent:
    """Invalid data at ``pos``. ``torn_tail``: crash recovery would truncate it (the active
    segment, and no valid batch follows); otherwise the data is damaged. ``resume``: position of
    the next valid batch (None: none follows)."""

    seg: SegmentFile
    pos: int
    error: CorruptLogError
    header: Optional[BatchHeader]
    torn_tail: bool
    resume: Optional[int]
    size: int  # file size when the error was classified
    zero_hole: bool = False  # torn tail although valid batches follow: a zero-filled sector


@dataclass
class SegmentEnd:
    seg: SegmentFile
    size: int  # bytes of data (an active segment's preallocated zero tail excluded)
    unwritten: int = 0  # that zero tail's length


def _index_start(seg: SegmentFile, r: Reader, offset: int) -> int:
    """A position from which walking finds ``offset``: the sparse index hint, checked."""
    if seg.base_offset is None:
        return 0
    entries = _load_entries(seg.sibling(INDEX_SUFFIX), OFFSET_ENTRY)
    if entries is None or not len(entries):
        return 0
    rel = offset - seg.base_offset
    i = int(np.searchsorted(entries, (rel + 1) << 32)) - 1
    while i >= 0:
        e = int(entries[i])
        erel, pos = e >> 32, e & 0xFFFFFFFF
        # (The active segment's file ends in zero entries, so the search may land anywhere:
        # only an entry at or below the target, naming the batch found there, is used.)
        if erel <= rel and 0 < pos and pos + HEADER_SIZE <= r.size:
            buf, j = r.view(pos, HEADER_SIZE)
            if len(buf) - j >= HEADER_SIZE:
                h = parse_header(buf, j)
                if header_problem(h) is None and h.base_offset == seg.base_offset + erel:
                    return pos
        i -= 1  # an index is only a hint: a wrong entry just means walking from further back
    return 0


def scan(target: Target, *, decode: bool = True, continue_on_error: bool = False,
         from_offset: Optional[int] = None, progress: Progress = None,
         settle: Optional[float] = None) -> Iterator[Any]:
    """Walk every segment of ``target`` in order, yielding events.

    :class:`SegmentStart`, then :class:`BatchEvent` per valid batch, :class:`ErrorEvent` for
    invalid data, :class:`SegmentEnd`. After an error the walk stops (``continue_on_error``
    False: nothing more is yielded) or resumes at the next valid batch of the segment.
    ``from_offset`` skips segments and batches wholly below it. ``settle`` (default: 1 s when a
    writer holds the lock, else 0.2 s) is how long an incomplete tail of the active segment is
    watched for a write in progress while the file keeps changing.
    """
    segs = segment_files(target)
    if from_offset is not None:
        keep = [s for i, s in enumerate(segs) if i + 1 == len(segs)
                or segs[i + 1].base_offset is None or segs[i + 1].base_offset > from_offset]
        segs = keep
    running = writer_pid(target.log_dir) is not None
    for seg in segs:
        try:
            r = Reader(seg.path)
        except FileNotFoundError:
            # Removed since listing (retention, or a reader racing a rename): nothing to check.
            continue
        with r:
            yield SegmentStart(seg, r.size)
            pos = 0
            expect = seg.base_offset
            if from_offset is not None and seg.base_offset is not None \
                    and from_offset > seg.base_offset:
                pos = _index_start(seg, r, from_offset)
                if pos:
                    expect = None
                    if progress:
                        progress(pos)
            wait = 0.0
            if seg.active:
                wait = settle if settle is not None else (1.0 if running else 0.2)
            last_next = expect  # offset the next batch must reach (recovery's min_offset)
            first_error = True
            while True:
                error_item = None
                for item in walk(r, seg, pos, expect, decode, wait, running):
                    if item.error is not None:
                        error_item = item
                        break
                    h = item.header
                    last_next = h.next_offset
                    if progress:
                        progress(h.length)
                    if from_offset is None or h.next_offset > from_offset:
                        yield BatchEvent(seg, item.pos, h, item.batch)
                if error_item is None:
                    break
                epos = error_item.pos
                resume = find_valid_batch(r, epos + 1, last_next)
                torn = seg.active and first_error and resume is None
                hole = (seg.active and first_error and resume is not None
                        and unsynced_damage(r, epos, resume))
                first_error = False
                yield ErrorEvent(seg, epos, error_item.error, error_item.header, torn or hole,
                                 resume, r.size, hole)
                if not continue_on_error:
                    return
                if resume is None:
                    if progress:
                        progress(max(0, r.size - epos))
                    break
                if progress:
                    progress(resume - epos)
                pos, expect = resume, None
            yield SegmentEnd(seg, r.size, r.unwritten)


# ---------------------------------------------------------------------------------- indexes
def _load_entries(path: str, dtype: np.dtype) -> Optional[np.ndarray]:
    """The entries of an index file (read, not mapped); None if it is missing."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    n = len(raw) // dtype.itemsize
    return np.frombuffer(raw[: n * dtype.itemsize], dtype=dtype)


@dataclass
class IndexEntry:
    """One index entry and whether it is right about the log."""

    kind: str  # "offset" or "time"
    number: int  # entry number in its file
    offset: int  # absolute offset (segment base + relative offset)
    position: Optional[int] = None  # offset index: byte position of the batch
    timestamp: Optional[int] = None  # time index: max timestamp of the records before `offset`
    status: str = "ok"  # "ok", "unchecked" (past the scanned end of the active segment) or why not

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchecked")


@dataclass
class IndexFiles:
    """The two index files of a segment as found on disk (read before the segment's data)."""

    offset_path: str
    time_path: str
    offset_raw: Optional[np.ndarray]
    time_raw: Optional[np.ndarray]
    offset_size: int
    time_size: int


def read_index_files(seg: SegmentFile) -> IndexFiles:
    op, tp = seg.sibling(INDEX_SUFFIX), seg.sibling(TIMEINDEX_SUFFIX)
    o = _load_entries(op, OFFSET_ENTRY)
    t = _load_entries(tp, TIME_ENTRY)
    osz = os.path.getsize(op) if o is not None else -1
    tsz = os.path.getsize(tp) if t is not None else -1
    return IndexFiles(op, tp, o, t, osz, tsz)


class BatchTable:
    """Compact per-segment table of valid batches (positions, offsets, max timestamps)."""

    def __init__(self) -> None:
        self._pos: List[int] = []
        self._base: List[int] = []
        self._next: List[int] = []
        self._max: List[int] = []

    def add(self, pos: int, h: BatchHeader) -> None:
        self._pos.append(pos)
        self._base.append(h.base_offset)
        self._next.append(h.next_offset)
        self._max.append(h.max_timestamp)

    def arrays(self):
        pos = np.array(self._pos, dtype=np.int64)
        base = np.array(self._base, dtype=np.int64)
        nxt = np.array(self._next, dtype=np.int64)
        mx = np.array(self._max, dtype=np.int64)
        return pos, base, nxt, mx

    def __len__(self) -> int:
        return len(self._pos)


def check_indexes(seg: SegmentFile, files: IndexFiles, table: BatchTable, scanned_end: int,
                  scanned_next: int
                  ) -> Tuple[List[IndexEntry], List[str], Dict[str, int], List[str]]:
    """Check the segment's offset and time index against the batches actually found.

    Returns (entries, file-level problems, number of preallocated empty entries skipped per
    kind, notes). A missing index file is a note, not a problem: readers rebuild it from the
    log (and compaction deletes stale ones on purpose). Only meaningful for a segment whose data
    is undamaged up to ``scanned_end``. A sealed segment ends at ``seg.end_offset`` (the next
    segment's base), which is past its last batch when compaction removed its last records.
    """
    base = seg.base_offset
    assert base is not None
    notes: List[str] = []
    seg_end = scanned_next
    if not seg.active and seg.end_offset is not None and seg.end_offset >= scanned_next:
        seg_end = seg.end_offset
    pos_a, base_a, next_a, max_a = table.arrays()
    # prefix[i] = largest timestamp of the batches before batch i (-1 if none)
    prefix = np.concatenate(([-1], np.maximum.accumulate(max_a))) if len(max_a) else np.array([-1])
    seg_max = int(prefix[-1])
    rel_end = seg_end - base
    entries: List[IndexEntry] = []
    file_problems: List[str] = []
    skipped = {"offset": 0, "time": 0}

    # --- offset index
    raw = files.offset_raw
    if raw is None:
        notes.append(f"{os.path.basename(files.offset_path)} is missing (readers rebuild it from "
                     f"the log)")
    else:
        if files.offset_size % OFFSET_ENTRY.itemsize:
            file_problems.append(f"{os.path.basename(files.offset_path)} has {files.offset_size} "
                                 f"bytes, not a multiple of {OFFSET_ENTRY.itemsize}")
        values = [int(v) for v in raw]
        if seg.active:  # preallocated, zero-filled tail of the active segment's index
            while values and values[-1] == 0:
                values.pop()
                skipped["offset"] += 1
        prev_rel = prev_pos = 0
        for n, v in enumerate(values):
            rel, pos = v >> 32, v & 0xFFFFFFFF
            e = IndexEntry("offset", n, base + rel, position=pos)
            if rel <= prev_rel or pos <= prev_pos:
                e.status = ("entry at position 0 (position 0 is implicit, never stored)"
                            if pos == 0 else "entries are not strictly increasing")
            elif seg.active and pos >= scanned_end:
                e.status = "unchecked"
            else:
                i = int(np.searchsorted(pos_a, pos))
                if i >= len(pos_a) or int(pos_a[i]) != pos:
                    e.status = f"no batch starts at byte {pos}"
                elif int(base_a[i]) != base + rel:
                    e.status = (f"the batch at byte {pos} starts at offset {int(base_a[i])}, "
                                f"not {base + rel}")
            prev_rel, prev_pos = max(prev_rel, rel), max(prev_pos, pos)
            entries.append(e)

    # --- time index
    raw = files.time_raw
    if raw is None:
        notes.append(f"{os.path.basename(files.time_path)} is missing (readers rebuild it from "
                     f"the log)")
    else:
        if files.time_size % TIME_ENTRY.itemsize:
            file_problems.append(f"{os.path.basename(files.time_path)} has {files.time_size} "
                                 f"bytes, not a multiple of {TIME_ENTRY.itemsize}")
        pairs = [(int(t), int(r)) for t, r in zip(raw["ts"], raw["rel"])]
        if seg.active:
            while pairs and pairs[-1] == (0, 0):
                pairs.pop()
                skipped["time"] += 1
        prev_ts, prev_rel = -1, 0
        for n, (ts, rel) in enumerate(pairs):
            e = IndexEntry("time", n, base + rel, timestamp=ts)
            if rel <= prev_rel or ts < prev_ts or ts < 0:
                e.status = ("relative offsets must increase and timestamps must not decrease"
                            if rel > 0 else "relative offset must be > 0")
            elif seg.active and rel > rel_end:
                e.status = "unchecked"
            else:
                off = base + rel
                if off in (scanned_next, seg_end):
                    need = seg_max
                else:
                    i = int(np.searchsorted(base_a, off))
                    need = int(prefix[i]) if i < len(base_a) and int(base_a[i]) == off else None
                if need is None:
                    e.status = f"offset {off} is not the start of a batch"
                elif ts < need:
                    e.status = (f"says records before offset {off} have timestamps <= {ts}, "
                                f"but one has {need}")
            prev_ts, prev_rel = max(prev_ts, ts), max(prev_rel, rel)
            entries.append(e)
        if not seg.active:
            want = (max(seg_max, 0), rel_end)
            last = pairs[-1] if pairs else None
            if last != want:
                file_problems.append(
                    f"{os.path.basename(files.time_path)} of a sealed segment must end with "
                    f"(max timestamp {want[0]}, offset {seg_end}); found "
                    + ("no entry" if last is None else f"({last[0]}, offset {base + last[1]})"))
    return entries, file_problems, skipped, notes


# ---------------------------------------------------------------------------------- reports
@dataclass
class Problem:
    """Something wrong with a log, where it is, and what would fix it."""

    kind: str  # "torn_tail", "damaged", "index", "marker"
    file: str
    position: Optional[int]
    reason: str
    repair: str
    recoverable: bool  # `logstore recover --apply` fixes it without dropping any valid batch
    details: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        d = {"kind": self.kind, "file": self.file, "position": self.position,
             "reason": self.reason, "recoverable": self.recoverable, "repair": self.repair}
        d.update(self.details)
        return d


@dataclass
class SegmentReport:
    name: str
    path: str
    base_offset: Optional[int]
    active: bool
    size: int = 0
    first_offset: Optional[int] = None
    next_offset: Optional[int] = None
    records: int = 0
    batches: int = 0
    payload_bytes: int = 0
    raw_bytes: int = 0
    first_timestamp: Optional[int] = None
    max_timestamp: Optional[int] = None
    codecs: Dict[str, int] = field(default_factory=dict)
    valid_end: int = 0  # end of the last valid batch before the first invalid byte
    records_after_damage: int = 0  # records in valid batches found after the first damage
    status: str = "ok"  # "ok", "torn tail", "damaged", "bad index"
    index_entries: int = 0
    unwritten_bytes: int = 0  # active segment: preallocated zero bytes after the data

    def as_dict(self) -> Dict[str, Any]:
        return {
            "segment": self.name, "base_offset": self.base_offset, "active": self.active,
            "size": self.size, "first_offset": self.first_offset, "next_offset": self.next_offset,
            "records": self.records, "batches": self.batches,
            "payload_bytes": self.payload_bytes, "raw_bytes": self.raw_bytes,
            "compression_ratio": ratio(self.raw_bytes, self.payload_bytes),
            "first_timestamp": self.first_timestamp, "max_timestamp": self.max_timestamp,
            "codecs": dict(sorted(self.codecs.items())), "valid_end": self.valid_end,
            "records_after_damage": self.records_after_damage, "status": self.status,
            "unwritten_bytes": self.unwritten_bytes,
        }


def ratio(raw: int, stored: int) -> Optional[float]:
    return round(raw / stored, 3) if stored else None


@dataclass
class LogReport:
    label: str
    log_dir: str
    segment_only: bool
    segments: List[SegmentReport] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    writer_pid: Optional[int] = None
    checked: str = "full"  # "full" (verify) or "headers" (stats: no CRC check)
    compacted: bool = False  # the log has been compacted: offset gaps are expected
    dir_label: Optional[str] = None  # the log directory as typed (store logs: under the root)
    topic: Optional[str] = None  # a topic partition of a store: its topic and partition
    partition: Optional[int] = None
    internal: bool = False  # an internal log of a store

    @property
    def files_label(self) -> str:
        return self.dir_label or self.label

    @property
    def ok(self) -> bool:
        return not self.problems

    def totals(self) -> Dict[str, Any]:
        segs = self.segments
        firsts = [s.first_timestamp for s in segs if s.first_timestamp is not None]
        maxes = [s.max_timestamp for s in segs if s.max_timestamp is not None]
        codecs: Dict[str, int] = {}
        for s in segs:
            for k, v in s.codecs.items():
                codecs[k] = codecs.get(k, 0) + v
        nexts = [s.next_offset for s in segs if s.next_offset is not None]
        bases = [s.base_offset if s.base_offset is not None else s.first_offset
                 for s in segs]
        bases = [b for b in bases if b is not None]
        payload = sum(s.payload_bytes for s in segs)
        raw = sum(s.raw_bytes for s in segs)
        return {
            "segments": len(segs),
            "start_offset": bases[0] if bases else None,
            "end_offset": nexts[-1] if nexts else (bases[-1] if bases else None),
            "records": sum(s.records for s in segs),
            "batches": sum(s.batches for s in segs),
            "bytes": sum(s.size for s in segs),
            "payload_bytes": payload,
            "raw_bytes": raw,
            "compression_ratio": ratio(raw, payload),
            "first_timestamp": firsts[0] if firsts else None,
            "max_timestamp": max(maxes) if maxes else None,
            "codecs": dict(sorted(codecs.items())),
        }

    def as_dict(self) -> Dict[str, Any]:
        where: Dict[str, Any] = {}
        if self.topic is not None:
            where = {"topic": self.topic, "partition": self.partition}
        elif self.internal:
            where = {"internal": True}
        return {
            "label": self.label, **where, "log_dir": self.log_dir,
            "segment": self.segments[0].name if self.segment_only and self.segments else None,
            "ok": self.ok, "checked": self.checked, "writer_pid": self.writer_pid,
            "compacted": self.compacted,
            "totals": self.totals(),
            "segments": [s.as_dict() for s in self.segments],
            "problems": [p.as_dict() for p in self.problems],
            "warnings": list(self.warnings),
        }


_RECOVER_HINT = "`logstore recover --apply`"


def inspect_log(target: Target, *, verify: bool = True, progress: Progress = None,
                settle: Optional[float] = None) -> LogReport:
    """Scan every segment of ``target`` and report what is there and what is wrong.

    ``verify``: check CRCs, structure, offset continuity, indexes, the clean-shutdown marker and
    leftover files (``logstore verify``); else read batch headers only (``logstore stats``).
    Never changes anything.
    """
    report = LogReport(target.label, target.log_dir, target.segment is not None,
                       checked="full" if verify else "headers", dir_label=target.dir_label,
                       topic=target.topic, partition=target.partition,
                       internal=target.internal)
    if target.expanded and (not os.path.isdir(target.log_dir)
                            or not os.path.exists(os.path.join(target.log_dir, META_NAME))):
        # A store's topic.json promises this partition (or the store an internal log).
        report.problems.append(Problem(
            "damaged", target.log_dir, None,
            f"{target.label}: the log directory is missing or has no {META_NAME}",
            "data damaged: restore the directory from a copy", False))
        return report
    report.writer_pid = writer_pid(target.log_dir)
    # A compacted log (settings.compacted in logstore.meta) legitimately has offset gaps and
    # sealed segments emptied by compaction.
    try:
        found = meta.read_meta(target.log_dir)
    except NotALogError:
        found = None
    compacted = bool(found and (found.get("settings") or {}).get("compacted"))
    report.compacted = compacted
    segs: Dict[str, SegmentReport] = {}
    current: Optional[SegmentReport] = None
    table = BatchTable()
    files: Optional[IndexFiles] = None
    expect: Optional[int] = None
    damaged = False
    valid_next: Optional[int] = None  # next offset after the undamaged prefix of the segment
    prev: Optional[SegmentReport] = None
    missing_indexes: List[str] = []

    def problem(kind: str, path: str, pos: Optional[int], reason: str, repair: str,
                recoverable: bool, **details: Any) -> None:
        report.problems.append(Problem(kind, path, pos, reason, repair, recoverable, details))

    for ev in scan(target, decode=verify, continue_on_error=True, progress=progress,
                   settle=settle):
        if isinstance(ev, SegmentStart):
            seg = ev.seg
            current = SegmentReport(seg.name, seg.path, seg.base_offset, seg.active, ev.size)
            segs[seg.path] = current
            report.segments.append(current)
            table = BatchTable()
            # The active segment's indexes are read before its data (see the module docstring).
            files = read_index_files(seg) if verify and seg.base_offset is not None else None
            if files is not None and not seg.in_log and (
                    files.offset_raw is None or files.time_raw is None):
                report.warnings.append(f"{seg.name} is not inside a log directory and has no "
                                       f"index files: indexes not checked")
                files = None
            expect = valid_next = seg.base_offset
            damaged = False
        elif isinstance(ev, BatchEvent):
            h = ev.header
            s = current
            if verify and expect is not None and h.base_offset > expect and not damaged \
                    and not compacted:
                problem("damaged", ev.seg.path, ev.pos,
                        f"offsets {expect}..{h.base_offset - 1} are missing (the batch at this "
                        f"position starts at offset {h.base_offset})",
                        "data damaged: offsets of a log must be dense; restore the segment "
                        "from a copy", False)
                damaged = True
            expect = h.next_offset
            if s.first_offset is None:
                s.first_offset = h.base_offset
                s.first_timestamp = h.base_timestamp
            s.next_offset = h.next_offset
            s.records += h.record_count
            s.batches += 1
            s.payload_bytes += h.payload_length
            s.raw_bytes += h.raw_length
            s.max_timestamp = h.max_timestamp if s.max_timestamp is None \
                else max(s.max_timestamp, h.max_timestamp)
            s.codecs[h.codec] = s.codecs.get(h.codec, 0) + 1
            if not damaged:
                s.valid_end = ev.pos + h.length
                valid_next = h.next_offset
                table.add(ev.pos, h)
            else:
                s.records_after_damage += h.record_count
            if verify and ev.batch is not None and h.attributes & ATTR_HEADERS:
                try:
                    ev.batch.records()
                except CorruptLogError as e:
                    problem("damaged", ev.seg.path, ev.pos, e.reason,
                            "the batch's CRC is valid but its record headers are malformed "
                            "(written by a faulty writer): restore from a copy", False)
                    damaged = True
        elif isinstance(ev, ErrorEvent):
            s = current
            seg = ev.seg
            lost = ev.size - ev.pos
            if ev.torn_tail:
                s.status = "torn tail"
                why = ("a zero-filled sector follows: unsynced data lost to a power failure"
                       if ev.zero_hole else "nothing valid follows")
                problem("torn_tail", seg.path, ev.pos, ev.error.reason,
                        f"torn tail of the active segment ({why}): crash recovery truncates the "
                        f"last {lost} bytes. {_RECOVER_HINT} does it now (so does opening the "
                        f"log for writing)", True, truncate_bytes=lost)
            elif seg.active and not damaged:
                s.status = "damaged"
                problem("damaged", seg.path, ev.pos, ev.error.reason,
                        f"data damaged: a valid batch follows at byte {ev.resume}, so this is not "
                        f"a torn tail and a writer refuses to open the log. {_RECOVER_HINT} "
                        f"cuts the segment here, dropping {lost} bytes including valid "
                        f"batches; or restore the segment from a copy", False,
                        next_valid=ev.resume, drop_bytes=lost)
            else:
                s.status = "damaged"
                where = "active" if seg.active else "sealed"
                tail = (f"; valid batches resume at byte {ev.resume}" if ev.resume is not None
                        else "; nothing valid follows up to the end of the file")
                problem("damaged", seg.path, ev.pos, ev.error.reason,
                        f"data damaged in a {where} segment: `logstore recover` cannot repair "
                        f"it; restore the segment from a copy" + tail, False,
                        next_valid=ev.resume)
            damaged = True
            expect = None
        elif isinstance(ev, SegmentEnd):
            s = current
            seg = ev.seg
            s.size = ev.size
            s.unwritten_bytes = ev.unwritten
            if damaged and s.status == "ok":
                s.status = "damaged"
            if not damaged:
                s.valid_end = s.valid_end if s.batches else 0
            if verify and not report.segment_only and prev is not None \
                    and seg.base_offset is not None and prev.next_offset is not None \
                    and (prev.next_offset > seg.base_offset
                         or prev.next_offset < seg.base_offset and not compacted) \
                    and prev.status == "ok":
                if prev.next_offset < seg.base_offset:
                    why = (f"offsets {prev.next_offset}..{seg.base_offset - 1} are missing "
                           f"between {prev.name} and this segment")
                else:
                    why = (f"this segment starts at offset {seg.base_offset} but {prev.name} "
                           f"already reaches offset {prev.next_offset - 1}")
                problem("damaged", seg.path, 0, why,
                        "data damaged: segments must continue each other's offsets; restore "
                        "the missing segment from a copy", False)
            if verify and not seg.active and s.batches == 0 and s.status == "ok" \
                    and not compacted:
                problem("damaged", seg.path, 0, "sealed segment holds no batch",
                        "data damaged: restore the segment from a copy", False)
                s.status = "damaged"
            if verify and files is not None and s.status in ("ok", "torn tail"):
                entries, file_problems, _, notes = check_indexes(seg, files, table,
                                                                 s.valid_end, valid_next)
                missing_indexes.extend(n.split()[0] for n in notes)
                s.index_entries = sum(1 for e in entries if e.kind == "offset")
                bad = [e for e in entries if not e.ok]
                for why in file_problems:
                    problem("index", seg.path, None, why, _INDEX_REPAIR, True)
                for e in bad[:5]:
                    if e.kind == "offset":
                        ipath, at = files.offset_path, e.number * OFFSET_ENTRY.itemsize
                        what = f"entry {e.number} (offset {e.offset} -> log byte {e.position})"
                    else:
                        ipath, at = files.time_path, e.number * TIME_ENTRY.itemsize
                        what = f"entry {e.number} (timestamp {e.timestamp} -> offset {e.offset})"
                    problem("index", ipath, at, f"{what}: {e.status}", _INDEX_REPAIR, True)
                if len(bad) > 5:
                    problem("index", seg.path, None,
                            f"{len(bad) - 5} more bad index entries", _INDEX_REPAIR, True)
                if (file_problems or bad) and s.status == "ok":
                    s.status = "bad index"
            prev = s
    if missing_indexes:
        shown = ", ".join(missing_indexes[:4]) + (", ..." if len(missing_indexes) > 4 else "")
        report.warnings.append(
            f"{len(missing_indexes)} index file{'s are' if len(missing_indexes) > 1 else ' is'} "
            f"missing ({shown}): readers rebuild them from the log (compaction removes stale "
            f"ones on purpose)")
    if verify:
        if not report.segment_only:
            _check_marker(report, problem)
            _check_files(target, report)
        if report.writer_pid is not None:
            report.warnings.append(
                f"a writer (pid {report.writer_pid}) has the log open: the active segment was "
                f"checked up to the bytes written when it was read")
    return report


_INDEX_REPAIR = ("indexes are hints rebuilt from the log: readers rebuild a bad one in memory, "
                 f"{_RECOVER_HINT} rewrites it; no data is affected")


def _check_marker(report: LogReport, problem: Callable[..., None]) -> None:
    marker = meta.read_clean_shutdown(report.log_dir)
    if marker is None or not report.segments:
        return
    last = report.segments[-1]
    name = CLEAN_SHUTDOWN_NAME
    if marker["segment"] != last.base_offset or marker["size"] != last.size:
        report.warnings.append(
            f"{name} names segment {marker['segment']} with {marker['size']} bytes but the "
            f"active segment is {last.base_offset} with {last.size} bytes: it is stale and a "
            f"writer ignores it")
        return
    end = last.next_offset if last.next_offset is not None else last.base_offset
    max_ts = last.max_timestamp if last.max_timestamp is not None else -1
    path = os.path.join(report.log_dir, name)
    if last.status in ("torn tail", "damaged"):
        problem("marker", path, None,
                f"{name} matches the damaged active segment, so a writer would open the log "
                f"without scanning it", f"{_RECOVER_HINT} removes the marker first", True)
    elif marker["end_offset"] != end or marker["max_timestamp"] != max_ts:
        problem("marker", path, None,
                f"{name} says end offset {marker['end_offset']}, max timestamp "
                f"{marker['max_timestamp']}; the active segment has {end}, {max_ts} (a writer "
                f"would trust the marker)",
                f"{_RECOVER_HINT} removes the marker and rescans the active segment", True)


COMMIT_NAME = COMPACTION_COMMIT


def leftover_files(log_dir: str) -> List[Tuple[str, str, str]]:
    """Files that are not part of the log: (name, what it is, what a writer's open does with it).

    Mirrors :func:`logstore.recovery.finish_interrupted_cleanups`, which a writer's open runs.
    """
    names = sorted(os.listdir(log_dir))
    logs = {n[: -len(LOG_SUFFIX)] for n in names if n.endswith(LOG_SUFFIX)}
    committed = COMMIT_NAME in names
    out = []
    for n in names:
        if n.endswith(".tmp"):
            out.append((n, "an interrupted atomic write", "deleted"))
        elif n.endswith(".cleaned"):
            out.append((n, "an unfinished compaction output", "deleted"))
        elif n.endswith(".deleted"):
            out.append((n, "a segment being deleted by retention", "deleted"))
        elif n.endswith(".swap"):
            if committed:
                out.append((n, "a committed compaction swap", "renamed over its .log"))
            else:
                out.append((n, "an uncommitted compaction swap", "deleted"))
        elif n == COMMIT_NAME:
            out.append((n, "the commit point of an interrupted compaction",
                        "removed once its swaps are completed"))
        elif n.endswith((INDEX_SUFFIX, TIMEINDEX_SUFFIX)) and n.rsplit(".", 1)[0] not in logs \
                and parse_segment_name(n.split(".", 1)[0] + LOG_SUFFIX) is not None:
            out.append((n, "an index file whose segment does not exist", "deleted"))
    return out


def _check_files(target: Target, report: LogReport) -> None:
    for name, what, fate in leftover_files(target.log_dir):
        report.warnings.append(f"leftover {name}: {what}, not part of the log (a writer's open "
                               f"finds it {fate})")


def index_report(target: Target) -> Iterator[Tuple[SegmentFile, List[IndexEntry], List[str],
                                                    Dict[str, int]]]:
    """Per segment: every index entry with its check, file problems, preallocated entries skipped.

    Batches are located by walking headers (no CRC check): what ``dump --index`` prints.
    """
    for seg in segment_files(target):
        if seg.base_offset is None:
            continue
        files = read_index_files(seg)
        table = BatchTable()
        end, nxt = 0, seg.base_offset
        with Reader(seg.path) as r:
            for item in walk(r, seg, 0, seg.base_offset, decode=False):
                if item.error is not None:
                    break
                table.add(item.pos, item.header)
                end, nxt = item.pos + item.header.length, item.header.next_offset
        yield (seg,) + check_indexes(seg, files, table, end, nxt)


# ---------------------------------------------------------------------------------- stores
SUBSCRIPTION_PREFIX = "__sub__"  # logstore.consumer's prefix of durable subscriptions
QUEUE_GROUP_PREFIX = "__queue__"  # logstore.workqueue: a queue's committed checkpoint
REDRIVE_GROUP_PREFIX = "__redrive__"  # logstore.workqueue: a queue's dead-letter redrive cursor
QUEUE_EVENTS_TOPIC = "__events__"


def group_kind(group: str) -> str:
    """``"group"`` (a user consumer group), ``"subscription"`` or ``"internal"``."""
    if group.startswith(SUBSCRIPTION_PREFIX):
        return "subscription"
    if group.startswith("__"):
        return "internal"
    return "group"


def queue_state(events_dir: str, checkpoint: Optional[int], bounds: List[Tuple[int, int]],
                now_ms: Optional[int] = None) -> Dict[str, Any]:
    """A work queue's state rebuilt read-only, exactly as ``WorkQueue._load`` rebuilds it.

    ``events_dir``: the queue's event log (``internal/queues/<name>``); ``checkpoint``: the
    committed offset of its last checkpoint (``store.offsets`` entry ``("__queue__<name>",
    "__events__", 0)``, or None); ``bounds``: ``(start_offset, end_offset)`` of each partition
    of the queue's topic. The event log is replayed from the checkpoint (read-only open: nothing
    is written, no lock is taken, safe beside the writing process).

    Per partition: ``low`` (every offset below is done), ``done_above`` (done offsets at or above
    ``low``), ``not_done`` = ``end_offset - low - done_above`` (what ``len(queue)`` counts: ready,
    in flight, delayed or not yet looked at), ``unacked`` (delivered at least once and not done:
    in flight, or waiting for redelivery), ``delayed`` (nacked with a retry time still in the
    future; messages put with ``delay=`` are counted in ``not_done`` only).
    """
    from ..storage.log import Log
    from ..views.workqueue import _EVENT, _Partition

    now = int(time.time() * 1000) if now_ms is None else now_ms
    parts = [_Partition(start) for start, _ in bounds]
    replayed = 0
    with Log.open(events_dir, readonly=True) as events:
        start = checkpoint
        if start is None or start < events.start_offset:
            start = events.start_offset
        start = min(start, events.end_offset)
        for rec in events.replay(start):
            v = rec.value
            replayed += 1
            if v is None:
                continue
            if v[:1] == b"C":
                import json

                snap = json.loads(v[1:])
                for p, st in enumerate(snap["partitions"]):
                    part = _Partition(int(st["low"]))
                    part.done = set(st["done"])
                    part.counts = {int(k): c for k, c in st["counts"].items()}
                    part.not_before = {int(k): t for k, t in st["not_before"].items()}
                    if p < len(parts):
                        parts[p] = part
                continue
            try:
                kind, p, off, count, t = _EVENT.unpack(v)
            except Exception:
                raise CorruptLogError(f"bad queue event at offset {rec.offset}",
                                      events_dir) from None
            if p >= len(parts):
                continue
            part = parts[p]
            if kind in (b"A", b"D"):
                part.mark_done(off)
            elif off >= part.low and off not in part.done:
                part.counts[off] = max(part.counts.get(off, 0), count)
                if kind == b"N":
                    part.not_before[off] = t
    out = []
    for p, (part, (start_off, end_off)) in enumerate(zip(parts, bounds)):
        if part.low < start_off:  # retention removed them: nothing left to deliver
            part.done = {o for o in part.done if o >= start_off}
            part.low = start_off
            while part.low in part.done:
                part.done.discard(part.low)
                part.low += 1
        done_above = sum(1 for o in part.done if part.low <= o < end_off)
        pending = {o for o in part.counts if part.low <= o < end_off and o not in part.done}
        delayed = sum(1 for o, nb in part.not_before.items()
                      if o in pending and nb > now)
        out.append({"partition": p, "start_offset": start_off, "end_offset": end_off,
                    "low": part.low, "done_above": done_above,
                    "not_done": max(0, end_off - part.low - done_above),
                    "unacked": len(pending), "delayed": delayed})
    return {
        "checkpoint_offset": checkpoint,
        "events_replayed": replayed,
        "not_done": sum(x["not_done"] for x in out),
        "unacked": sum(x["unacked"] for x in out),
        "delayed": sum(x["delayed"] for x in out),
        "partitions": out,
    }


def _lag_rows(offsets: Dict[int, int], bounds: Dict[int, Tuple[int, int]],
              partition: Optional[int]) -> List[Dict[str, Any]]:
    rows = []
    for p in sorted(offsets):
        if partition is not None and p != partition:
            continue
        committed = offsets[p]
        start, end = bounds.get(p, (None, None))
        lag = None if end is None else max(0, end - max(committed, start))
        rows.append({"partition": p, "committed": committed, "end_offset": end, "lag": lag})
    return rows


def store_stats(path: "str | os.PathLike[str]", topic: Optional[str] = None,
                partition: Optional[int] = None, progress: Optional[Callable[[Target], Progress]]
                = None, now_ms: Optional[int] = None) -> Dict[str, Any]:
    """What ``logstore stats`` prints for a store root: every topic partition (segments,
    offsets, sizes, records, from the batch headers), consumer groups and subscriptions with
    their committed offsets and lag, work queues with their depth, and the internal logs and
    groups. Read-only throughout: the store is opened with ``readonly=True`` (committed offsets
    from ``store.offsets``), queue state comes from :func:`queue_state`.

    ``topic``/``partition`` narrow everything to one topic (partition). ``progress(target)``
    returns the progress callback for the header scan of one log (or None).
    """
    from ..views.store import Store

    given = os.fspath(path)
    targets = resolve_targets(given, topic, partition, internal=True)
    root = next((t.store_root for t in targets if t.store_root), None)
    if root is None:
        p = os.path.abspath(given)
        if is_store_root(p):
            root = p
        else:  # a topic directory of a store
            root = os.path.dirname(os.path.dirname(p))
    if topic is None and not is_store_root(os.path.abspath(given)):
        topic = targets[0].topic if targets else None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    reports: Dict[str, LogReport] = {}
    for t in targets:
        reports[t.label] = inspect_log(t, verify=False,
                                       progress=progress(t) if progress else None)
    result: Dict[str, Any] = {"path": given, "store": root, "topic": topic,
                              "partition": partition, "topics": [], "groups": [],
                              "subscriptions": [], "queues": [],
                              "internal": {"groups": [], "logs": []}, "problems": []}
    for rep in reports.values():
        for pr in rep.problems:
            result["problems"].append({"label": rep.label, "file": pr.file,
                                       "position": pr.position, "reason": pr.reason})
    store = Store.open(root, readonly=True, dedup_window_s=0)
    try:
        result["id"] = store.id
        bounds: Dict[str, Dict[int, Tuple[int, int]]] = {}
        topic_names = store.topics()
        for name, n in store_topics(root):
            try:
                logs = store.topic(name).partitions
                bounds[name] = {p: (log.start_offset, log.end_offset) for p, log in enumerate(logs)}
                retention = store.topic(name).retention
            except LogstoreErrorBase:
                bounds[name] = {}
                retention = None
            if topic is not None and name != topic:
                continue
            rows = []
            for p in range(n):
                if partition is not None and p != partition:
                    continue
                rep = reports.get(f"{name}/{p}")
                tot = rep.totals() if rep is not None else {}
                start, end = bounds[name].get(p, (tot.get("start_offset"), tot.get("end_offset")))
                rows.append({"partition": p, "label": f"{name}/{p}",
                             "segments": tot.get("segments", 0),
                             "start_offset": start, "end_offset": end,
                             "records": tot.get("records", 0), "batches": tot.get("batches", 0),
                             "bytes": tot.get("bytes", 0),
                             "payload_bytes": tot.get("payload_bytes", 0),
                             "raw_bytes": tot.get("raw_bytes", 0),
                             "first_timestamp": tot.get("first_timestamp"),
                             "max_timestamp": tot.get("max_timestamp"),
                             "status": "ok" if rep is not None and rep.ok else "problems"})
            firsts = [r["first_timestamp"] for r in rows if r["first_timestamp"] is not None]
            maxes = [r["max_timestamp"] for r in rows if r["max_timestamp"] is not None]
            result["topics"].append({
                "topic": name, "partitions": n, "retention": retention,
                "queue": name in store_queues(root),
                "partition_stats": rows,
                "totals": {
                    "segments": sum(r["segments"] for r in rows),
                    "records": sum(r["records"] for r in rows),
                    "batches": sum(r["batches"] for r in rows),
                    "bytes": sum(r["bytes"] for r in rows),
                    "first_timestamp": min(firsts) if firsts else None,
                    "max_timestamp": max(maxes) if maxes else None,
                    "status": "ok" if all(r["status"] == "ok" for r in rows) else "problems",
                },
            })
        for group, by_topic in sorted(store.groups().items()):
            kind = group_kind(group)
            for tname, offsets in sorted(by_topic.items()):
                if topic is not None and tname != topic and group not in (
                        QUEUE_GROUP_PREFIX + topic, REDRIVE_GROUP_PREFIX + topic):
                    continue
                rows = _lag_rows(offsets, bounds.get(tname, {}),
                                 partition if tname == topic else None)
                if not rows:
                    continue
                lags = [r["lag"] for r in rows if r["lag"] is not None]
                entry: Dict[str, Any] = {"topic": tname, "partitions": rows,
                                         "lag": sum(lags) if lags else None}
                if kind == "subscription":
                    entry = {"subscription": group[len(SUBSCRIPTION_PREFIX):], **entry}
                    result["subscriptions"].append(entry)
                elif kind == "group":
                    result["groups"].append({"group": group, **entry})
                else:
                    if tname not in topic_names:
                        for r in rows:
                            r["lag"] = None
                        entry["lag"] = None
                    result["internal"]["groups"].append({"group": group, **entry})
        groups = store.groups()
        for q in store_queues(root):
            if topic is not None and q != topic:
                continue
            try:
                result["queues"].append(_queue_stats(store, root, q, groups, bounds, now,
                                                     topic_names))
            except LogstoreErrorBase as e:  # e.g. a missing partition or event log
                result["queues"].append({"queue": q, "error": str(e)})
    finally:
        store.close()
    for t in targets:
        if t.internal:
            rep = reports[t.label]
            tot = rep.totals()
            result["internal"]["logs"].append({
                "log": t.label, "segments": tot["segments"], "start_offset": tot["start_offset"],
                "end_offset": tot["end_offset"], "records": tot["records"],
                "bytes": tot["bytes"], "status": "ok" if rep.ok else "problems"})
    return result


def _queue_stats(store: Any, root: str, name: str, groups: Dict[str, Any],
                 bounds: Dict[str, Dict[int, Tuple[int, int]]], now: int,
                 topic_names: List[str]) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"queue": name}
    if name not in topic_names:
        entry["error"] = f"the queue's topic {name!r} does not exist"
        return entry
    tb = bounds.get(name, {})
    parts = store.topic(name).partitions
    checkpoint = groups.get(QUEUE_GROUP_PREFIX + name, {}).get(QUEUE_EVENTS_TOPIC, {}).get(0)
    state = queue_state(os.path.join(root, "internal", "queues", name), checkpoint,
                        [tb.get(p, (0, 0)) for p in range(len(parts))], now)
    oldest = None
    for row in state["partitions"]:
        if row["not_done"] and row["low"] < row["end_offset"]:
            try:
                ts = parts[row["partition"]].get(row["low"]).timestamp_ms
            except LogstoreErrorBase:
                continue
            oldest = ts if oldest is None else min(oldest, ts)
    redrive = groups.get(REDRIVE_GROUP_PREFIX + name, {})
    dlq = next(iter(redrive), None)
    if dlq is None and f"{name}.dlq" in topic_names:
        dlq = f"{name}.dlq"
    dead = None
    if dlq is not None and dlq in bounds and 0 in bounds[dlq]:
        start, end = bounds[dlq][0]
        pos = redrive.get(dlq, {}).get(0) or 0
        dead = max(0, end - max(pos, start))
    entry.update({
        "partitions": len(parts),
        "not_done": state["not_done"], "unacked": state["unacked"],
        "delayed": state["delayed"],
        "dead_letter_topic": dlq, "dead_lettered": dead,
        "oldest_age_s": None if oldest is None else max(0.0, (now - oldest) / 1000.0),
        "checkpoint_offset": checkpoint, "events_replayed": state["events_replayed"],
        "partition_state": state["partitions"],
    })
    return entry
