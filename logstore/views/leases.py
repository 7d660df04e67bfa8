"""Partition leases for consumer groups whose members live in several processes, and the offsets
committed under them.

Every (topic, group) has a directory; every partition of the topic has a **lease log** in it:
an ordinary :class:`~logstore.log.Log` holding one record per commit (key ``b"next"``, value the
int64 next offset to read). Opening a lease log for writing takes its ``flock`` (see
:mod:`logstore.lockfile`), and that lock *is* the lease: one process at a time reads a partition
for the group and commits its offset, and the kernel drops the lease when the holder dies, even by
SIGKILL. Commits therefore never race: the lease holder is the only writer of its lease log, as
the group coordinator is the only writer of a partition of Kafka's ``__consumer_offsets``.

Members announce themselves with a file in ``members/``, ``flock``-ed for their lifetime: a file
whose lock can be taken belongs to a dead process and is removed by whoever notices. Every member
sees the same sorted list of live members, so they all compute the same assignment (partition
``p`` to member ``p % len(members)``, like a group within one process) and converge on it: each
process releases the leases it should not hold and takes the ones it should once they are free.

Layout under the store root::

    internal/groups/<topic>/<group dir>/group.json     {"group": "<group id>"}
    internal/groups/<topic>/<group dir>/members/<id>   one file per live member
    internal/groups/<topic>/<group dir>/<p>/           partition p's lease log

``<group dir>`` is the group id when it is a plain name, else ``~`` + a hash of it (group ids
may hold any character but NUL). A lease log only needs its last record; older segments are
dropped once a newer commit exists (what compaction of a one-key log amounts to).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import time
import uuid
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import CorruptLogError, LogLockedError, NotALogError
from ..fs import FileSystem
from ..storage.log import Log
from ..format.names import GROUP_META, GROUPS_DIR, MEMBERS_DIR, META_NAME

LEASE_SEGMENT_BYTES = 1 << 20
COMMIT_KEY = b"next"
_TRIM_AFTER_RECORDS = 32_768  # > one segment of commits: trimming then drops whole segments
_OFFSET = struct.Struct("<q")
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_JOINING = ".joining-"  # a member file before it is locked and visible
_ids = itertools.count()


def group_dir_name(group: str) -> str:
    if _PLAIN.match(group) and ".." not in group:
        return group
    return "~" + hashlib.blake2b(group.encode("utf-8"), digest_size=16).hexdigest()


def group_path(root: str, topic: str, group: str) -> str:
    return os.path.join(root, GROUPS_DIR, topic, group_dir_name(group))


def ensure_group_dir(fs: FileSystem, root: str, topic: str, group: str) -> str:
    """Create the (topic, group) directory if needed; return its path."""
    path = group_path(root, topic, group)
    fs.makedirs(os.path.join(path, MEMBERS_DIR))
    meta = os.path.join(path, GROUP_META)
    if not os.path.exists(meta):
        try:
            fs.write_file_atomic(meta, json.dumps({"group": group}).encode())
        except FileNotFoundError:
            # Another process wrote it at the same moment (same tmp name, same content).
            if not os.path.exists(meta):
                raise
    return path


def _started_path(group_dir: str, partition: int) -> str:
    return os.path.join(group_dir, f"started-{partition}")


def mark_started(fs: FileSystem, group_dir: str, partition: int) -> None:
    """Record, durably, that the group has a position in ``partition`` (before its first
    commit): a lease log lost later is then an error to report, not a new group."""
    path = _started_path(group_dir, partition)
    if not os.path.exists(path):
        fs.write_file_atomic(path, b"")


def was_started(group_dir: str, partition: int) -> bool:
    """Whether the group ever had a position in ``partition`` (see :func:`mark_started`)."""
    return os.path.exists(_started_path(group_dir, partition))


def list_groups(root: str) -> Iterator[Tuple[str, str, str]]:
    """``(topic, group, directory)`` of every group directory under the store ``root``."""
    base = os.path.join(root, GROUPS_DIR)
    if not os.path.isdir(base):
        return
    for topic in sorted(os.listdir(base)):
        tdir = os.path.join(base, topic)
        if topic.startswith(".") or not os.path.isdir(tdir):
            continue
        for name in sorted(os.listdir(tdir)):
            path = os.path.join(tdir, name)
            if name.startswith("."):
                continue  # a group being removed (renamed away first)
            try:
                with open(os.path.join(path, GROUP_META), "rb") as f:
                    group = json.loads(f.read())["group"]
            except FileNotFoundError:
                continue  # created by a process that died before writing it: no commits either
            except (OSError, ValueError, KeyError, TypeError):
                raise NotALogError(f"{os.path.join(path, GROUP_META)} is not a group file") \
                    from None
            yield topic, group, path


def lease_partitions(group_dir: str) -> List[int]:
    """Partitions that have a lease log in ``group_dir``."""
    return sorted(int(n) for n in os.listdir(group_dir) if n.isdigit())


# ---------------------------------------------------------------------------------- commits
def last_commit(log: Log) -> Optional[int]:
    """The offset of the last commit in lease log ``log`` (None if nothing was committed)."""
    end = log.end_offset
    if end <= log.start_offset:
        return None
    rec = log.get(end - 1)
    if rec.key != COMMIT_KEY or rec.value is None or len(rec.value) != _OFFSET.size:
        raise CorruptLogError(f"bad commit record at offset {end - 1}", log.path)
    return _OFFSET.unpack(rec.value)[0]


def append_commit(log: Log, offset: int) -> None:
    """Durably (under the log's fsync policy) record ``offset`` as committed."""
    log.append(_OFFSET.pack(offset), key=COMMIT_KEY)
    end = log.end_offset
    if end - log.start_offset > _TRIM_AFTER_RECORDS:
        # Never trim below a commit that is not yet durable (fsync="never"/"every"): a power
        # loss would leave no commit at all, and the group would start over.
        log.flush()
        log.enforce_retention(keep_from=end - 1)  # never the active segment (holds the last)


def read_commit(path: str, fs: FileSystem) -> Optional[int]:
    """The last commit in the lease log at ``path``, read-only (safe beside its holder)."""
    if not os.path.exists(os.path.join(path, META_NAME)):
        return None  # the holder died while creating it: nothing committed
    log = Log.open(path, readonly=True, fs=fs)
    try:
        return last_commit(log)
    finally:
        log.close()


def read_group_commits(group_dir: str, fs: FileSystem) -> Dict[int, int]:
    """``{partition: last commit}`` of every lease log in ``group_dir`` that has one."""
    out = {}
    for p in lease_partitions(group_dir):
        off = read_commit(os.path.join(group_dir, str(p)), fs)
        if off is not None:
            out[p] = off
    return out


def retire_group_dir(fs: FileSystem, path: str) -> str:
    """Rename a group directory away (one atomic, durable step, so a crash never leaves a group
    that looks alive with some partitions missing); return the new path."""
    trash = os.path.join(os.path.dirname(path), f".removed-{uuid.uuid4().hex}")
    fs.replace(path, trash)
    fs.fsync_dir(os.path.dirname(path))
    return trash


def remove_trash_dir(trash: str) -> None:
    shutil.rmtree(trash, ignore_errors=True)


def remove_trash(root: str) -> None:
    """Finish removals a crash interrupted (directories renamed to ``.removed-*``)."""
    base = os.path.join(root, GROUPS_DIR)
    if not os.path.isdir(base):
        return
    for topic in os.listdir(base):
        tdir = os.path.join(base, topic)
        if os.path.isdir(tdir):
            for name in os.listdir(tdir):
                if name.startswith(".removed-"):
                    remove_trash_dir(os.path.join(tdir, name))


# ---------------------------------------------------------------------------------- members
class Member:
    """This process's presence file for one group member, locked until :meth:`leave`."""

    def __init__(self, members_dir: str):
        # Sorting ids orders members by joining time, as the in-process member list is ordered.
        self.id = f"{time.time_ns():016x}-{os.getpid():08x}-{next(_ids):06x}"
        path = os.path.join(members_dir, self.id)
        tmp = os.path.join(members_dir, _JOINING + self.id)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)  # visible only once locked: a visible unlocked file is dead
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.path = path
        self._fd: Optional[int] = fd

    def leave(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def live_members(members_dir: str) -> List[str]:
    """Sorted ids of the live members; files of dead members are removed on the way."""
    out = []
    try:
        names = os.listdir(members_dir)
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(members_dir, name)
        if name.startswith(_JOINING):
            # Left by a process that died while joining, or a member joining right now.
            if _is_dead(path, min_age_s=60.0):
                _unlink(path)
            continue
        if _is_dead(path):
            _unlink(path)
        else:
            out.append(name)
    return sorted(out)


def _is_dead(path: str, min_age_s: float = 0.0) -> bool:
    """Whether nobody holds the lock of member file ``path`` (a vanished file counts as alive:
    someone else is already cleaning it up)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        if min_age_s and time.time() - os.fstat(fd).st_mtime < min_age_s:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True  # closing the fd drops the lock we just took
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def assignment(members: List[str], member: str, partitions: int) -> List[int]:
    """The partitions ``member`` reads when ``members`` (sorted) share ``partitions``."""
    i, n = members.index(member), len(members)
    return [p for p in range(partitions) if p % n == i]


def try_lease(open_log, path: str) -> Optional[Log]:
    """Open lease log ``path`` for writing with ``open_log(path)``: the lease, or None when
    another member holds it."""
    try:
        return open_log(path)
    except LogLockedError:
        return None
