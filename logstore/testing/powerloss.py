"""A power-loss file system: the engine runs on real files, the simulator remembers what is durable.

:class:`PowerLossFS` is a :class:`logstore.fs.FileSystem` for a whole directory **tree** (a log
directory, or a Store root with ``topics/<t>/<p>/``, ``internal/...``: a Store hands its ``fs`` to
every log it opens). Every write reaches the real files, so the engine works normally and reads
its files as always (mmap, ``os.pread``); real fsyncs are skipped (durability is simulated). The
simulator keeps a :class:`DiskModel` of the tree, driven by a trace of :class:`Event` s:

* per file (per inode): its **volatile** content (what the page cache holds) and its **durable**
  content, the content at its last ``fsync``/``fdatasync`` through the seam (a file created and
  never synced has none);
* per directory: its **volatile** entries and its **durable** entries, as of its last
  ``fsync_dir``, plus the entry changes since then (creates, renames, unlinks are volatile until
  then). The root directory is durable once its parent has been fsynced after the ``mkdir``
  (or if it existed when the simulator was created).

After a power loss at crash point *K* (every operation before the *K*-th done, that one not),
:meth:`DiskModel.materialize` writes the tree as found after power-up, within what
``segments/FORMAT.md`` allows a crash to do:

* each directory holds its durable entries (``"drop"``), all its volatile entries (``"keep"``)
  or its durable entries plus a prefix of the changes made since (``"prefix"``): see
  :data:`DIR_MODES`; a directory whose ``mkdir`` never became durable may vanish with
  everything in it;
* each file holds its durable content plus a damaged version of its unsynced part, chosen per
  file among :data:`SUFFIX_MODES` (unsynced bytes dropped, kept, a random prefix of them kept:
  torn, a kept prefix followed by zeros or by garbage up to the new size) and ``"zero_page"``
  (every unsynced byte kept except one zeroed page among them: out-of-order write-back).
  Bytes that were durable and not overwritten since are never changed.

Two ways to use it:

* **record, then derive** (what :func:`logstore.testing.sweep.sweep` does): run a workload once
  through a ``PowerLossFS``; its :attr:`PowerLossFS.events` trace and op positions give the
  on-disk state at *every* crash point without running the workload again
  (:meth:`DiskModel.replay_to`);
* **crash live**: ``PowerLossFS(root, crash_after=K)`` raises :class:`Crash` (a
  ``BaseException``, so no ``except Exception`` in the engine swallows it) at the *K*-th
  operation and at every later one; :meth:`PowerLossFS.materialize` then rewrites ``root`` in
  place as it would be found after power-up. The process that ran the workload still holds
  the engine's objects: drop them without ``close()`` (their lock files and descriptors).

Operations (crash points) are the calls that can change what is on disk: file creation,
``pwrite``, ``truncate``, ``fdatasync``/``fsync``, ``replace``, ``unlink``, ``mkdir``,
``fsync_dir``. Opening an existing file, ``close``, ``dup`` and ``start_writeback`` are not.

Writes that bypass the seam (the engine's memory-mapped index files, lock files, group member
files) are seen when the file is next opened, synced or listed through the seam; until then the
model holds what the seam last saw, i.e. those writes count as unsynced and not yet written back
(a state a power loss can produce). :data:`BYPASS` lists the engine's writes that do not go
through the seam.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple


from logstore.fs import FileSystem

from .diskmodel import (
    ALL_MODES, DIR_MODES, PAGE, SUFFIX_MODES, Damage, DirNode, DiskModel, Event, FileNode, damage,
    read_sparse, read_sparse_path, split_path,
)

__all__ = [
    "ALL_MODES",
    "BYPASS",
    "DIR_MODES",
    "PAGE",
    "SUFFIX_MODES",
    "Crash",
    "Damage",
    "DiskModel",
    "Event",
    "PowerLossFS",
    "damage",
]

#: The engine's writes that do not go through the ``fs`` seam, and why the simulator may ignore
#: them: ``(module, function, call, why)``. Every other write, truncate, rename, unlink, mkdir
#: and fsync of the engine (of a Log, and of a Store: topics, internal logs, group leases, work
#: queues, compaction, retention) goes through the seam. Kept exact by a test that reads the
#: engine's source (tests/test_powerloss.py).
BYPASS: Tuple[Tuple[str, str, str, str], ...] = (
    ("index.py", "_MappedArray.create", "np.memmap(r+)",
     "index entries of the active segment are written through a mapping (and msync'd by "
     "flush() before a resize): hints, made durable by the fsync through the seam at seal and "
     "close, checked before use and rebuilt by recovery"),
    ("index.py", "_MappedArray._grow_file", "np.memmap(r+)",
     "the same mapping made larger (numpy extends the file)"),
    ("index.py", "_MappedArray.map_shared", "np.memmap(r+)",
     "a shared log's active index, mapped by every writer: the same hints as above"),
    ("index.py", "_MappedArray.set_count", "np.memmap(r+)", "the same mapping, remapped larger"),
    ("lockfile.py", "DirectoryLock.acquire_shared", "os.open(create)",
     "the .writers lock file of a shared log: a flock, no content"),
    ("shared.py", "SharedTail.open", "os.open(create)",
     "a shared log's lock files (.wlock, .slock, .clock): flocks; the page in .wlock is "
     "coordination state of live writers, rebuilt from the segments by the first writer after "
     "they are all gone (nothing durable is ever read from it)"),
    ("shared.py", "SharedTail.open", "os.ftruncate", "the same page, sized"),
    ("shared.py", "SharedTail.open", "mmap(ACCESS_WRITE)", "the same page, mapped"),
    ("lockfile.py", "DirectoryLock.acquire", "os.ftruncate",
     "the .lock file's content is the writer's pid, informational: the flock is the lock"),
    ("lockfile.py", "DirectoryLock.acquire", "os.pwrite", "the same"),
    ("lockfile.py", "DirectoryLock.acquire", "os.open(create)", "the same"),
    ("leases.py", "Member.__init__", "os.open(create)",
     "group member files (internal/groups/<t>/<g>/members/*) mean 'alive' only while their "
     "flock is held, never after a crash"),
    ("leases.py", "Member.__init__", "os.rename", "the same"),
    ("leases.py", "Member.__init__", "os.unlink", "the same"),
    ("leases.py", "Member.leave", "os.unlink", "the same"),
    ("leases.py", "_unlink", "os.unlink", "the same (a dead member's file)"),
    ("leases.py", "remove_trash_dir", "shutil.rmtree",
     "a group directory already renamed to .removed-* durably (through the seam); a leftover "
     "is removed again at the next open"),
    ("active_file.py", "ActiveFile._map_ahead", "os.posix_fallocate",
     "fsync=\"never\" with the default FileSystem only: reserves space for batches copied "
     "into a write mapping; any FileSystem subclass (this simulator too) gets pwrite, so a "
     "sweep covers the pwrite path of fsync=\"never\", not the mapped copy"),
    ("active_file.py", "ActiveFile._map_ahead", "mmap(ACCESS_WRITE)", "the same mapping"),
    ("flocks.py", "held", "os.open(create)",
     "a shared store's lock files (.tlock, .dlock, .rlock): flocks around topic creation, "
     "queue transactions and redrives, no content"),
    ("output.py", "Out.__init__", "open('wb')", "the CLI's output file (-o), not log data"),
)


class Crash(BaseException):
    """The simulated machine lost power at this seam operation (and stays off)."""


# ------------------------------------------------------------------------------------- model
class PowerLossFS(FileSystem):
    """Simulated durability for the tree at ``root`` (which may not exist yet; its parent must).

    ``crash_after=K``: the *K*-th operation (0-based) and every later one raise :class:`Crash`.
    Without it nothing crashes and the run is recorded: :attr:`events` (the trace),
    :attr:`op_positions` (index in :attr:`events` of every operation) and :attr:`acks`.
    ``real_sync``: also call the real fsyncs (off: durability is simulated, and a sweep should
    not wait for a disk).
    """

    def __init__(self, root: "str | os.PathLike[str]", crash_after: Optional[int] = None,
                 real_sync: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.parent = os.path.dirname(self.root)
        self.crash_after = crash_after
        self.real_sync = real_sync
        self.crashed = False
        self.model = DiskModel()
        self.events: List[Event] = []
        self.op_positions: List[int] = []
        #: ``(operations done, value)`` for every :meth:`ack`, in order.
        self.acks: List[Tuple[int, Any]] = []
        self.lock = threading.RLock()
        self._fds: Dict[int, Tuple[FileNode, str]] = {}
        self._next_id = 1
        if os.path.isdir(self.root):
            self._adopt_tree()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def ops(self) -> int:
        """Operations done so far (the crash point a power loss now would be)."""
        return len(self.op_positions)

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def rel(self, path: "str | os.PathLike[str]") -> Optional[str]:
        """``path`` relative to the root ("" for the root), or None outside of it."""
        p = os.path.abspath(os.fspath(path))
        if p == self.root:
            return ""
        if p.startswith(self.root + os.sep):
            return p[len(self.root) + 1:].replace(os.sep, "/")
        return None

    def _emit(self, ev: Event) -> Event:
        if ev.op:
            self.op_positions.append(len(self.events))
        self.events.append(ev)
        self.model.apply(ev)
        return ev

    def _step(self, what: str) -> None:
        """Before an operation: crash here if the budget is spent (call with the lock held)."""
        if self.crashed:
            raise Crash(f"{what} after the power loss")
        if self.crash_after is not None and self.ops >= self.crash_after:
            self.crashed = True
            raise Crash(f"power lost before operation {self.ops} ({what})")

    def _adopt_tree(self) -> None:
        """The root exists: take everything in it as durable (the state before the run)."""
        self._emit(Event("adopt_dir", "", self._new_id(), op=False))
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = self.rel(dirpath)
            prefix = f"{rel}/" if rel else ""
            for name in sorted(dirnames):
                self._emit(Event("adopt_dir", prefix + name, self._new_id(), op=False))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    self._adopt(prefix + name, path)
        self._emit(Event("assume_durable", "", op=False))

    def _adopt(self, rel: str, path: str) -> FileNode:
        """A file the model does not know (created outside the seam): take it as it is now."""
        self._ensure_parent(rel)
        data, size = read_sparse_path(path)
        ev = self._emit(Event("adopt", rel, self._new_id(), data=data, size=size, op=False))
        node = self.model.file(ev.node)
        node.ino = os.stat(path).st_ino
        return node

    def _observe(self, node: FileNode, content: Tuple[bytes, int], rel: str) -> None:
        """Take the real content of a known file if it differs from the model (written outside
        the seam)."""
        sparse, size = content
        if size != node.size or sparse.rstrip(b"\0") != bytes(node.data).rstrip(b"\0"):
            self._emit(Event("observe", rel, node.id, data=sparse, size=size, op=False))

    def _known(self, rel: str, path: str) -> Optional[FileNode]:
        """The model's node at ``rel`` if it is the file really there now."""
        node = self.model.lookup(rel)
        if isinstance(node, FileNode):
            try:
                if node.ino is None or node.ino == os.stat(path).st_ino:
                    return node
            except FileNotFoundError:
                return None
        return None

    def _reconcile(self, rel: str, path: str) -> None:
        """Before a directory fsync: align the model's entries with the real directory (entries
        created, replaced or removed outside the seam)."""
        d = self.model.lookup(rel)
        if not isinstance(d, DirNode):
            return
        real: Dict[str, "os.DirEntry[str]"] = {e.name: e for e in os.scandir(path)}
        prefix = f"{rel}/" if rel else ""
        for name in sorted(set(d.live) - set(real)):
            self._emit(Event("forget", prefix + name, op=False))
        for name in sorted(real):
            e = real[name]
            node = d.live.get(name)
            if e.is_dir(follow_symlinks=False):
                if not isinstance(node, DirNode):
                    if node is not None:
                        self._emit(Event("forget", prefix + name, op=False))
                    self._adopt_dir_tree(prefix + name, e.path)
            elif e.is_file(follow_symlinks=False):
                if not isinstance(node, FileNode) or (node.ino is not None
                                                   and node.ino != e.inode()):
                    if node is not None:
                        self._emit(Event("forget", prefix + name, op=False))
                    self._adopt(prefix + name, e.path)

    def _ensure_parent(self, rel: str) -> None:
        """Make the model know the directories above ``rel`` (created outside the seam)."""
        parts = split_path(rel)
        if not self.model.root_live:
            if not os.path.isdir(self.root):
                return
            self._emit(Event("adopt_dir", "", self._new_id(), op=False))
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            if self.model.lookup(sub) is None:
                path = os.path.join(self.root, *parts[:i])
                if not os.path.isdir(path):
                    return
                self._adopt_dir_tree(sub, path)

    def _adopt_dir_tree(self, rel: str, path: str) -> None:
        self._emit(Event("adopt_dir", rel, self._new_id(), op=False))
        for e in sorted(os.scandir(path), key=lambda e: e.name):
            if e.is_dir(follow_symlinks=False):
                self._adopt_dir_tree(f"{rel}/{e.name}", e.path)
            elif e.is_file(follow_symlinks=False):
                self._adopt(f"{rel}/{e.name}", e.path)

    # ------------------------------------------------------------------ the seam
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        rel = self.rel(path)
        if rel is None:
            return super().open(path, flags, mode)
        with self.lock:
            existing = self._known(rel, path)
            exists = existing is not None or os.path.exists(path)
            if flags & os.O_CREAT and not exists:
                self._step(f"create({rel})")
                self._ensure_parent(rel)
                fd = super().open(path, flags, mode)
                ev = self._emit(Event("create", rel, self._new_id()))
                node = self.model.file(ev.node)
                node.ino = os.fstat(fd).st_ino
            else:
                if self.crashed:
                    raise Crash(f"open({rel}) after the power loss")
                truncating = bool(flags & os.O_TRUNC) and exists
                if truncating:
                    self._step(f"truncate({rel} to 0)")
                fd = super().open(path, flags, mode)
                found = existing if existing is not None else self._known(rel, path)
                node = found if found is not None else self._adopt(rel, path)
                if found is not None and not truncating:
                    self._observe(node, read_sparse(fd), rel)  # written outside the seam?
                if truncating:
                    self._emit(Event("truncate", rel, node.id, size=0))
            self._fds[fd] = (node, rel)
            return fd

    def dup(self, fd: int) -> int:
        new = super().dup(fd)
        with self.lock:
            if fd in self._fds:
                self._fds[new] = self._fds[fd]
        return new

    def close(self, fd: int) -> None:
        with self.lock:
            self._fds.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data: Any, offset: int) -> None:
        t = self._fds.get(fd)
        if t is None:
            return super().pwrite(fd, data, offset)
        with self.lock:
            self._step(f"pwrite({t[1]} @{offset})")
            super().pwrite(fd, data, offset)
            self._emit(Event("pwrite", t[1], t[0].id, offset=offset, data=bytes(data)))

    def _sync(self, fd: int, kind: str) -> None:
        t = self._fds.get(fd)
        if t is None:
            getattr(super(), kind)(fd)
            return
        with self.lock:
            self._step(f"{kind}({t[1]})")
            node, rel = t
            if os.fstat(fd).st_size != node.size:
                self._observe(node, read_sparse(fd), rel)  # written outside the seam
            if self.real_sync:
                getattr(super(), kind)(fd)
            self._emit(Event(kind, rel, node.id))

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync")

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync")

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """A hint without durability meaning: nothing to simulate."""

    def truncate(self, fd: int, size: int) -> None:
        t = self._fds.get(fd)
        if t is None:
            return super().truncate(fd, size)
        with self.lock:
            self._step(f"truncate({t[1]} to {size})")
            super().truncate(fd, size)
            self._emit(Event("truncate", t[1], t[0].id, size=size))

    def replace(self, src: str, dst: str) -> None:
        rs, rd = self.rel(src), self.rel(dst)
        if rs is None and rd is None:
            return super().replace(src, dst)
        with self.lock:
            self._step(f"rename({rs or src} -> {rd or dst})")
            for r in (rs, rd):
                if r:
                    self._ensure_parent(r)
            if rs is not None and self.model.lookup(rs) is None and os.path.lexists(src):
                if os.path.isdir(src):
                    self._adopt_dir_tree(rs, src)
                else:
                    self._adopt(rs, src)
            super().replace(src, dst)
            if rs is not None and rd is not None:
                self._emit(Event("rename", rs, dest=rd))
            elif rd is not None:  # moved in from outside the root
                self._emit(Event("unlink", rd))
                if os.path.isdir(dst):
                    self._adopt_dir_tree(rd, dst)
                else:
                    self._adopt(rd, dst)
            else:  # moved out of the root
                self._emit(Event("unlink", rs))

    def unlink(self, path: str) -> None:
        rel = self.rel(path)
        if rel is None:
            return super().unlink(path)
        with self.lock:
            self._step(f"unlink({rel})")
            self._ensure_parent(rel)
            super().unlink(path)
            self._emit(Event("unlink", rel))

    def mkdir(self, path: str) -> None:
        rel = self.rel(path)
        if rel is None:
            return super().mkdir(path)
        with self.lock:
            self._step(f"mkdir({rel or '<root>'})")
            if rel:
                self._ensure_parent(rel)
            super().mkdir(path)
            self._emit(Event("mkdir", rel, self._new_id()))

    def fsync_dir(self, path: str) -> None:
        p = os.path.abspath(path)
        rel = self.rel(p)
        if rel is None and p != self.parent:
            if self.real_sync:
                super().fsync_dir(p)
            return
        with self.lock:
            self._step(f"fsync_dir({'<parent of root>' if rel is None else rel or '.'})")
            if rel is not None:
                self._reconcile(rel, p)
            if self.real_sync:
                super().fsync_dir(p)
            self._emit(Event("fsync_dir", rel))

    # ------------------------------------------------------------------ acknowledgements
    def ack(self, value: Any) -> None:
        """Record that the workload acknowledged ``value`` now (after :attr:`ops` operations)."""
        with self.lock:
            self.acks.append((self.ops, value))

    # ------------------------------------------------------------------ queries
    def path_of(self, fd: int) -> Optional[str]:
        """The path (relative to the root) ``fd`` was opened with through this file system, or
        None for a descriptor it does not track."""
        t = self._fds.get(fd)
        return None if t is None else t[1]

    def node_at(self, path: "str | os.PathLike[str]") -> Optional[FileNode]:
        """The model's file at ``path`` (volatile namespace), or None."""
        rel = self.rel(path)
        node = None if rel is None else self.model.lookup(rel)
        return node if isinstance(node, FileNode) else None

    def durable_content(self, path: "str | os.PathLike[str]") -> Optional[bytes]:
        """The durable bytes of the file at ``path`` (its content at its last sync)."""
        node = self.node_at(path)
        if node is None:
            return None
        data, size = node.durable_content()
        return data + bytes(size - len(data))

    def entry_durable(self, path: "str | os.PathLike[str]") -> bool:
        """Is ``path`` durable in its directory (and its directories in theirs)?"""
        rel = self.rel(path)
        return rel is not None and self.model.entry_durable(rel)

    def unsynced(self) -> Dict[str, Tuple[int, int]]:
        """Files (by path relative to the root) whose page-cache content differs from their
        durable content: ``{path: (durable size, written size)}``."""
        out: Dict[str, Tuple[int, int]] = {}

        def walk(d: DirNode, prefix: str) -> None:
            for name, node in sorted(d.live.items()):
                if isinstance(node, DirNode):
                    walk(node, prefix + name + "/")
                else:
                    dd, ds = node.durable_content()
                    if ds != node.size or dd.rstrip(b"\0") != bytes(node.data).rstrip(b"\0"):
                        out[prefix + name] = (ds, node.size)
        if self.model.root_live:
            walk(self.model.root, "")
        return out

    # ------------------------------------------------------------------ the crash
    def crash(self) -> None:
        """Cut the power now: every later operation raises :class:`Crash`."""
        with self.lock:
            self.crashed = True

    def release_fds(self) -> None:
        """Close every descriptor opened through this file system (a dead process's are)."""
        with self.lock:
            fds = list(self._fds)
            self._fds.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def materialize(self, rng: random.Random, modes: Sequence[str] = ALL_MODES,
                    dir_modes: Sequence[str] = DIR_MODES, observe: bool = True) -> List[Damage]:
        """After :meth:`crash` (or a :class:`Crash`): rewrite ``root`` in place as found after
        power-up. Drop the engine's objects first (see :meth:`release_fds`). ``observe``: first
        read what every file really holds (writes that bypassed the seam, e.g. index mappings,
        then count as written but unsynced); False: use what the seam saw only."""
        if not self.crashed:
            raise RuntimeError("materialize() is for after the crash: call crash() first")
        with self.lock:
            if observe:
                self._observe_all()
            if os.path.lexists(self.root):
                shutil.rmtree(self.root)
            return self.model.materialize(self.root, rng, modes, dir_modes)

    def _observe_all(self) -> None:
        """Read what is really in every live file (page cache) into the model."""
        if not self.model.root_live or not os.path.isdir(self.root):
            return

        def walk(d: DirNode, prefix: str) -> None:
            for name, node in sorted(d.live.items()):
                path = os.path.join(self.root, *(prefix + name).split("/"))
                if isinstance(node, DirNode):
                    if os.path.isdir(path):
                        walk(node, prefix + name + "/")
                elif os.path.isfile(path) and self._known(prefix + name, path) is node:
                    self._observe(node, read_sparse_path(path), prefix + name)
        walk(self.model.root, "")


def derive(events: Sequence[Event], op_positions: Sequence[int], point: int) -> DiskModel:
    """A model of the disk at crash point ``point`` of a recorded trace (all events before the
    ``point``-th operation applied)."""
    model = DiskModel()
    stop = op_positions[point] if point < len(op_positions) else len(events)
    model.replay_to(events, 0, stop)
    return model


def describe_point(events: Sequence[Event], op_positions: Sequence[int], point: int) -> str:
    """``"before fdatasync(x.log), after pwrite(x.log @0+88)"`` for crash point ``point``."""
    total = len(op_positions)
    parts = []
    if point < total:
        parts.append(f"power lost before operation {point}: "
                     f"{events[op_positions[point]].describe()}")
    else:
        parts.append(f"power lost after the last operation ({total} in all)")
    if point > 0:
        parts.append(f"last operation done: {events[op_positions[point - 1]].describe()}")
    return "; ".join(parts)


def iter_ops(events: Sequence[Event], op_positions: Sequence[int]) -> Iterable[Event]:
    for i in op_positions:
        yield events[i]
