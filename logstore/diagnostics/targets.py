"""What a PATH names: the logs an operator command works on, and their segment files.

:func:`resolve_targets` turns what the operator typed into a list of :class:`Target`: a log
directory (has ``logstore.meta``), one ``.log`` segment file of one, or a store root
(``store.meta``) or topic directory of a store, expanded into one target per topic partition
(and, for ``verify``, the store's internal logs). :func:`segment_files` lists a target's segment
files; :func:`writer_pid` tells whether a writer holds a log's lock, without touching it.
Read-only: nothing here writes, locks or maps a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import CorruptLogError, NotALogError
from ..storage.storelock import holder_lock
from ..format.names import (
    GROUP_META, GROUPS_DIR, LOCK_NAME, LOG_SUFFIX, META_NAME, OFFSETS_LOG, QUEUES_DIR,
    STORE_META, TOPIC_META, TOPICS_DIR, parse_segment_name, partition_dir, segment_name,
)
from ..storage import meta
from ..processing.changelog import PROCESSING_DIR
from ..views import leases


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
    # The store's file describing this log (a topic.json, a group.json) is unreadable: the
    # reason. Reported as damage of this target alone; the others are still checked.
    broken: Optional[str] = None

    @property
    def files_label(self) -> str:
        """How to name the log directory when naming a file in it."""
        return self.dir_label or self.label


# ---------------------------------------------------------------------------------- stores
def is_store_root(path: "str | os.PathLike[str]") -> bool:
    """Whether ``path`` is a store root (a directory with ``store.meta``)."""
    p = os.fspath(path)
    return os.path.isdir(p) and os.path.exists(os.path.join(p, STORE_META))


def _is_topic_dir(p: str) -> bool:
    """Whether absolute directory ``p`` is ``<store root>/topics/<name>`` (with topic.json)."""
    return (os.path.isfile(os.path.join(p, TOPIC_META))
            and os.path.basename(os.path.dirname(p)) == TOPICS_DIR
            and is_store_root(os.path.dirname(os.path.dirname(p))))


def store_path(path: "str | os.PathLike[str]") -> Optional[Tuple[str, Optional[str]]]:
    """``(store root, None)`` for a store root, ``(store root, topic)`` for a topic directory
    of a store (``<root>/topics/<name>``), else None. Roots are absolute."""
    p = os.path.abspath(os.fspath(path))
    if is_store_root(p):
        return p, None
    if _is_topic_dir(p):
        return os.path.dirname(os.path.dirname(p)), os.path.basename(p)
    return None


def partition_of_store(path: "str | os.PathLike[str]") -> Optional[Tuple[str, str, int]]:
    """``(store root, topic, partition)`` if ``path`` is a topic partition directory."""
    p = os.path.abspath(os.fspath(path))
    tdir = os.path.dirname(p)
    base = os.path.basename(p)
    if base.isdigit() and _is_topic_dir(tdir):
        return os.path.dirname(os.path.dirname(tdir)), os.path.basename(tdir), int(base)
    return None


def store_topics(root: str) -> List[Tuple[str, int]]:
    """``(topic, partition count)`` of every topic of the store at ``root``, by name.

    Read from ``topics/<name>/topic.json`` (a directory without one is not a topic); a topic
    whose ``topic.json`` is unreadable is left out (see :func:`broken_topics`).
    """
    return [(name, n) for name, n, problem in _topic_entries(root) if problem is None]


def broken_topics(root: str) -> List[Tuple[str, str]]:
    """``(topic, reason)`` of every topic of the store whose ``topic.json`` is unreadable."""
    return [(name, problem) for name, _n, problem in _topic_entries(root) if problem is not None]


def _topic_entries(root: str) -> List[Tuple[str, int, Optional[str]]]:
    tdir = os.path.join(root, TOPICS_DIR)
    if not os.path.isdir(tdir):
        return []
    out = []
    for name in sorted(os.listdir(tdir)):
        meta_path = os.path.join(tdir, name, TOPIC_META)
        if not os.path.isfile(meta_path):
            continue
        try:
            out.append((name, _topic_partitions(meta_path), None))
        except NotALogError as e:
            out.append((name, 0, str(e)))
    return out


def _topic_partitions(meta_path: str) -> int:
    try:
        with open(meta_path, "rb") as f:
            n = int(json.loads(f.read())["partitions"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NotALogError(f"{meta_path} is not a topic metadata file") from None
    if n < 1:
        raise NotALogError(f"{meta_path} is not a topic metadata file (partitions={n})")
    return n


def group_dirs(root: str) -> List[Tuple[str, Optional[str], str, Optional[str]]]:
    """``(topic, group, directory, problem)`` of every group directory of the store at
    ``root`` (``internal/groups/<topic>/<dir>``), like the store's own listing but tolerant:
    a group whose ``group.json`` is unreadable comes with the reason (and group None) instead
    of failing the whole listing. Directories without a ``group.json`` (a process died before
    writing it: no commits either) and ones being removed are left out."""
    base = os.path.join(root, GROUPS_DIR)
    out: List[Tuple[str, Optional[str], str, Optional[str]]] = []
    if not os.path.isdir(base):
        return out
    for topic in sorted(os.listdir(base)):
        tdir = os.path.join(base, topic)
        if topic.startswith(".") or not os.path.isdir(tdir):
            continue
        for name in sorted(os.listdir(tdir)):
            path = os.path.join(tdir, name)
            if name.startswith("."):
                continue
            gmeta = os.path.join(path, GROUP_META)
            try:
                with open(gmeta, "rb") as f:
                    group = json.loads(f.read())["group"]
                if not isinstance(group, str):
                    raise ValueError
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                out.append((topic, None, path, f"{gmeta} is not a group file"))
                continue
            out.append((topic, group, path, None))
    return out


def topic_settings(root: str, name: str) -> Dict[str, Any]:
    """The settings stored in topic ``name``'s ``topic.json`` (``{}`` if none are stored);
    :class:`NotALogError` if the file is unreadable."""
    path = os.path.join(root, TOPICS_DIR, name, TOPIC_META)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        raise NotALogError(f"{path} is not a topic metadata file") from None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    return dict(settings) if isinstance(settings, dict) else {}


def topic_cleanup_policy(root: str, name: str, partitions: int) -> str:
    """The stored cleanup policy of topic ``name``: its ``topic.json`` settings, else (stores
    from before topics stored settings) its partitions' own (``meta.stored_cleanup_policy``:
    a partition ever compacted was opened with a compact policy), else ``"delete"``."""
    settings = topic_settings(root, name)
    if isinstance(settings.get("cleanup_policy"), str):
        return settings["cleanup_policy"]
    for p in range(partitions):
        stored = meta.stored_settings(partition_dir(root, name, p))
        if "cleanup_policy" in stored or stored.get("compacted"):
            return meta.stored_cleanup_policy(stored)
    return "delete"


def store_queues(root: str) -> List[str]:
    """Names of the store's work queues (``internal/queues/<name>`` event logs)."""
    qdir = os.path.join(root, QUEUES_DIR)
    if not os.path.isdir(qdir):
        return []
    return sorted(n for n in os.listdir(qdir) if os.path.isdir(os.path.join(qdir, n)))


# ---------------------------------------------------------------------------------- resolving
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
    if os.path.isdir(p) and _is_topic_dir(p):
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
                           f"{STORE_META}); {given} is not one")
    return [_log_target(given, p)]


def _log_target(given: str, p: str) -> Target:
    """The target of a plain log directory or segment file ``p`` (typed as ``given``)."""
    if os.path.isfile(p):
        if not p.endswith(LOG_SUFFIX):
            raise NotALogError(
                f"{given} is neither a log directory nor a .log segment file")
        return Target(given, os.path.dirname(p), p)
    if not os.path.isdir(p):
        raise NotALogError(f"{given} is neither a log directory nor a .log segment file")
    try:
        found = meta.read_meta(p)
    except NotALogError:
        # A torn or damaged logstore.meta beside segment files is a damaged log, not "not a
        # log": verify reports it (exit 1), dump still reads its segments.
        if not any(n.endswith(LOG_SUFFIX) for n in os.listdir(p)):
            raise
        found = {}
    if found is None:
        raise NotALogError(f"{given} is not a log directory (no {META_NAME})")
    owner = partition_of_store(p)
    if owner is not None:
        return Target(given, p, topic=owner[1], partition=owner[2], store_root=owner[0])
    return Target(given, p)


def _store_targets(given: str, root: str, topic: Optional[str], partition: Optional[int],
                   internal: bool) -> List[Target]:
    topics = _topic_entries(root)
    if topic is not None:
        found = [t for t in topics if t[0] == topic]
        if not found:
            names = ", ".join(t[0] for t in topics) or "none"
            raise NotALogError(f"no topic {topic!r} in store {given} (topics: {names})")
        topics = found
        if partition is not None and found[0][2] is None and not 0 <= partition < found[0][1]:
            raise NotALogError(f"topic {topic!r} has no partition {partition} (it has "
                               f"{found[0][1]}: 0..{found[0][1] - 1})")
    out = []
    for name, n, problem in topics:
        if problem is not None:  # an unreadable topic.json: this topic alone is damaged
            out.append(Target(name, os.path.join(root, TOPICS_DIR, name), topic=name,
                              expanded=True, dir_label=os.path.join(given, TOPICS_DIR, name),
                              store_root=root, broken=problem))
            continue
        for part in range(n):
            if partition is not None and part != partition:
                continue
            out.append(Target(f"{name}/{part}", partition_dir(root, name, part),
                              topic=name, partition=part, expanded=True,
                              dir_label=os.path.join(given, TOPICS_DIR, name, str(part)),
                              store_root=root))
    if internal and topic is None:
        out += _internal_targets(given, root)
    return out


def _internal_targets(given: str, root: str) -> List[Target]:
    """The store's internal logs: committed offsets, queue events, groups' lease logs, stream
    processors' changelogs."""
    logs = [(OFFSETS_LOG, os.path.join(root, OFFSETS_LOG))]
    logs += [(f"{QUEUES_DIR}/{q}", os.path.join(root, QUEUES_DIR, q)) for q in store_queues(root)]
    out = [Target(label, d, internal=True, expanded=True,
                  dir_label=os.path.join(given, label), store_root=root)
           for label, d in logs if os.path.isdir(d)]
    for _topic, _group, gdir, problem in group_dirs(root):  # consumer groups' lease logs
        rel = os.path.relpath(gdir, root)
        if problem is not None:
            out.append(Target(rel, gdir, internal=True, expanded=True,
                              dir_label=os.path.join(given, rel), store_root=root,
                              broken=problem))
        out += [Target(f"{rel}/{p}", os.path.join(gdir, str(p)), internal=True, expanded=True,
                       dir_label=os.path.join(given, rel, str(p)), store_root=root)
                for p in leases.lease_partitions(gdir)]
    out += [Target(rel, d, internal=True, expanded=True, dir_label=os.path.join(given, rel),
                   store_root=root) for rel, d in _changelog_dirs(root)]
    return out


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _changelog_dirs(root: str) -> List[Tuple[str, str]]:
    """``(label, directory)`` of every stream processor's task changelog
    (``internal/processing/<name>/stage-<i>/<p>``): verify and stats look at them like any
    other internal log, so damage there is reported, not met first at a restart."""
    base = os.path.join(root, PROCESSING_DIR)
    out = []
    for name in _subdirs(base):
        for stage in _subdirs(os.path.join(base, name)):
            if not stage.startswith("stage-"):
                continue
            for part in _subdirs(os.path.join(base, name, stage)):
                if part.isdigit():
                    rel = os.path.join(PROCESSING_DIR, name, stage, part)
                    out.append((rel, os.path.join(root, rel)))
    out.sort(key=lambda x: (x[0].rsplit(os.sep, 1)[0], int(x[0].rsplit(os.sep, 1)[1])))
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
    for t in targets:
        if t.broken is not None:
            raise CorruptLogError(f"{t.broken} (topic {t.topic!r} of the store is damaged; "
                                  f"--topic NAME reads another one)", t.log_dir)
    return targets


# ---------------------------------------------------------------------------------- segments
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
    return [SegmentFile(os.path.join(target.log_dir, segment_name(b)), b,
                        i == len(bases) - 1, True, ends.get(b))
            for i, b in enumerate(bases)]


def writer_pid(log_dir: str) -> Optional[int]:
    """Pid of the process holding the log's writer lock (for a log of a store: the store's
    lock), or None (none, or unknown).

    Read from ``/proc/locks`` (Linux), so the lock is never touched: even a shared ``flock``
    probe could make a writer's open fail with LogLockedError.
    """
    try:
        # A log of a store is covered by the store's lock (storage.storelock).
        st = os.stat(holder_lock(log_dir) or os.path.join(log_dir, LOCK_NAME))
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
