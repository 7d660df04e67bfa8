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

import errno
import os
import random
import shutil
import stat
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from logstore.fs import FileSystem

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

PAGE = 4096
#: File damage modes that keep the unsynced part a "suffix" story: dropped, kept, torn, or a kept
#: prefix followed by zeros or garbage up to the new size.
SUFFIX_MODES: Tuple[str, ...] = ("drop", "keep", "torn", "zero_tail", "garbage_tail")
#: Every file damage mode: :data:`SUFFIX_MODES` plus ``"zero_page"`` (one unsynced page reads
#: as zeros, later ones were written back: out-of-order write-back).
ALL_MODES: Tuple[str, ...] = SUFFIX_MODES + ("zero_page",)
#: Directory modes: unsynced entry changes all lost, all kept, or a prefix of them kept.
DIR_MODES: Tuple[str, ...] = ("drop", "keep", "prefix")

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
    ("output.py", "Out.__init__", "open('wb')", "the CLI's output file (-o), not log data"),
)


class Crash(BaseException):
    """The simulated machine lost power at this seam operation (and stays off)."""


# ------------------------------------------------------------------------------------- model
class _File:
    """One inode. Content = ``data`` followed by zeros up to ``size`` (sparse tails stay cheap)."""

    __slots__ = ("id", "data", "size", "durable", "ino")

    def __init__(self, node_id: int, data: bytes = b"", size: int = 0,
                 ino: Optional[int] = None) -> None:
        self.id = node_id
        self.data = bytearray(data)
        self.size = max(size, len(data))
        self.durable: Optional[Tuple[bytes, int]] = None  # (data, size) at the last sync
        self.ino = ino

    def content(self) -> Tuple[bytes, int]:
        return bytes(self.data), self.size

    def write(self, offset: int, data: bytes) -> None:
        d = self.data
        end = offset + len(data)
        if offset > len(d):
            d.extend(bytes(offset - len(d)))
        d[offset:end] = data
        if end > self.size:
            self.size = end

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        self.size = size

    def set_content(self, data: bytes, size: int) -> None:
        self.data = bytearray(data)
        self.size = max(size, len(data))

    def durable_content(self) -> Tuple[bytes, int]:
        return self.durable if self.durable is not None else (b"", 0)

    def __repr__(self) -> str:
        d = self.durable_content()
        return f"<file #{self.id} {self.size}B, durable {d[1]}B>"


class _Dir:
    __slots__ = ("id", "live", "durable", "changes")

    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.live: Dict[str, Union[_File, "_Dir"]] = {}
        self.durable: Dict[str, Union[_File, "_Dir"]] = {}
        # Entry changes since the last fsync_dir, in order: (name, node or None for a removal).
        self.changes: List[Tuple[str, Optional[Union[_File, "_Dir"]]]] = []

    def set(self, name: str, node: Optional[Union[_File, "_Dir"]]) -> None:
        if node is None:
            if self.live.pop(name, None) is None:
                return
        else:
            self.live[name] = node
        self.changes.append((name, node))

    def synced(self) -> None:
        self.durable = dict(self.live)
        self.changes = []

    def __repr__(self) -> str:
        return f"<dir #{self.id} {sorted(self.live)}>"


_Node = Union[_File, _Dir]


class Event:
    """One entry of the trace. ``op`` events are crash points; the others record what the seam
    learnt on the way (content written outside it, entries found by a directory listing).

    ``kind``: ``mkdir``, ``create``, ``pwrite``, ``truncate``, ``fdatasync``, ``fsync``,
    ``rename``, ``unlink``, ``fsync_dir`` (ops); ``adopt``, ``adopt_dir``, ``observe``,
    ``forget``, ``assume_durable`` (not ops). ``path`` is relative to the root (``""`` is the
    root itself, None its parent directory); ``node`` the id of the file or directory.
    """

    __slots__ = ("kind", "path", "node", "offset", "data", "size", "dest", "thread", "op")

    def __init__(self, kind: str, path: Optional[str], node: int = 0, offset: int = 0,
                 data: Optional[bytes] = None, size: int = 0, dest: Optional[str] = None,
                 op: bool = True) -> None:
        self.kind = kind
        self.path = path
        self.node = node
        self.offset = offset
        self.data = data
        self.size = size
        self.dest = dest
        self.thread = threading.get_ident()
        self.op = op

    def describe(self) -> str:
        """E.g. ``fdatasync(00000000000000000000.log)`` or ``rename(a.tmp -> a)``."""
        path = "<parent of root>" if self.path is None else (self.path or ".")
        if self.kind == "pwrite":
            return f"pwrite({path} @{self.offset}+{len(self.data or b'')})"
        if self.kind == "truncate":
            return f"truncate({path} to {self.size})"
        if self.kind == "rename":
            return f"rename({path} -> {self.dest})"
        if self.kind == "mkdir" and self.path == "":
            return "mkdir(<root>)"
        return f"{self.kind}({path})"

    def __repr__(self) -> str:
        return f"<Event {self.describe()}{'' if self.op else ' (not an op)'}>"


@dataclass(frozen=True)
class Damage:
    """What :meth:`DiskModel.materialize` did to one file or directory with unsynced changes."""

    path: str  # relative to the root; "." is the root
    mode: str  # a file mode (SUFFIX_MODES / "zero_page"), a directory mode, or "gone"
    durable_bytes: int = 0
    written_bytes: int = 0
    result_bytes: int = 0
    is_dir: bool = False

    def __str__(self) -> str:
        if self.is_dir:
            return f"{self.path}/: entries {self.mode}"
        return (f"{self.path}: {self.mode} (durable {self.durable_bytes} B, written "
                f"{self.written_bytes} B -> {self.result_bytes} B)")


def _split(path: str) -> List[str]:
    return [p for p in path.split("/") if p] if path else []


class DiskModel:
    """The simulated disk of one root directory, driven by :class:`Event` s (see the module
    docstring). :meth:`apply` one event at a time, :meth:`materialize` whenever."""

    def __init__(self) -> None:
        self.root = _Dir(0)
        self.root_live = False  # the root directory exists (in the page cache)
        self.root_durable = False  # ... and its entry in the parent is durable
        self.nodes: Dict[int, _Node] = {0: self.root}

    # ------------------------------------------------------------------ lookups
    def lookup(self, path: str) -> Optional[_Node]:
        node: Optional[_Node] = self.root if self.root_live else None
        for part in _split(path):
            if not isinstance(node, _Dir):
                return None
            node = node.live.get(part)
        return node

    def _parent(self, path: str) -> Tuple[_Dir, str]:
        parts = _split(path)
        if not parts:
            raise ValueError("the root has no parent inside the model")
        parent = self.lookup("/".join(parts[:-1]))
        if not isinstance(parent, _Dir):
            raise FileNotFoundError(errno.ENOENT, "no such directory in the model", path)
        return parent, parts[-1]

    def file(self, node_id: int) -> _File:
        node = self.nodes[node_id]
        assert isinstance(node, _File)
        return node

    def entry_durable(self, path: str) -> bool:
        """Is ``path`` durable in its directory (and every directory above it), naming the node
        that is there now?"""
        if not self.root_durable:
            return False
        node: _Node = self.root
        for part in _split(path):
            if not isinstance(node, _Dir):
                return False
            live, durable = node.live.get(part), node.durable.get(part)
            if live is None or durable is not live:
                return False
            node = live
        return True

    # ------------------------------------------------------------------ events
    def apply(self, ev: Event) -> None:
        k = ev.kind
        if k == "pwrite":
            self.file(ev.node).write(ev.offset, ev.data or b"")
        elif k in ("fdatasync", "fsync"):
            f = self.file(ev.node)
            f.durable = f.content()
        elif k == "truncate":
            self.file(ev.node).truncate(ev.size)
        elif k == "observe":
            self.file(ev.node).set_content(ev.data or b"", ev.size)
        elif k in ("create", "adopt"):
            node = _File(ev.node, ev.data or b"", ev.size)
            self.nodes[ev.node] = node
            parent, name = self._parent(ev.path or "")
            parent.set(name, node)
        elif k in ("mkdir", "adopt_dir"):
            d = _Dir(ev.node)
            self.nodes[ev.node] = d
            if ev.path == "":
                self.root = d
                self.nodes[0] = d
                self.root_live = True
            else:
                parent, name = self._parent(ev.path or "")
                parent.set(name, d)
        elif k == "rename":
            src_parent, src_name = self._parent(ev.path or "")
            moved = src_parent.live.get(src_name)
            if moved is None:
                return
            dst_parent, dst_name = self._parent(ev.dest or "")
            src_parent.set(src_name, None)
            dst_parent.set(dst_name, moved)
        elif k in ("unlink", "forget"):
            parent, name = self._parent(ev.path or "")
            parent.set(name, None)
        elif k == "fsync_dir":
            if ev.path is None:
                self.root_durable = self.root_live
            else:
                synced = self.lookup(ev.path)
                if isinstance(synced, _Dir):
                    synced.synced()
        elif k == "assume_durable":
            self._assume_durable(self.root)
            self.root_durable = self.root_live
        else:  # pragma: no cover - a bug in the recorder
            raise ValueError(f"unknown event {k!r}")

    def _assume_durable(self, d: _Dir) -> None:
        d.synced()
        for node in d.live.values():
            if isinstance(node, _Dir):
                self._assume_durable(node)
            else:
                node.durable = node.content()

    def replay_to(self, events: Sequence[Event], start: int, stop: int) -> int:
        """Apply ``events[start:stop]``; returns ``stop`` (the next start)."""
        apply = self.apply
        for i in range(start, stop):
            apply(events[i])
        return stop

    # ------------------------------------------------------------------ power-up
    def materialize(self, dest: str, rng: random.Random, modes: Sequence[str] = ALL_MODES,
                    dir_modes: Sequence[str] = DIR_MODES, fingerprint: Any = None
                    ) -> List[Damage]:
        """Write the tree as found after a power loss now into ``dest`` (which must not exist;
        its parent must). Returns what was done to each file or directory that had unsynced
        changes (never changes the model). ``fingerprint``: a ``hashlib`` object updated with
        every path and content written (equal digests: equal trees)."""
        done: List[Damage] = []
        if not self.root_live and not self.root_durable:
            return [Damage(".", "gone (never created)", is_dir=True)]
        if not self.root_durable:
            mode = rng.choice(list(dir_modes))
            if mode == "drop" or (mode == "prefix" and rng.random() < 0.5):
                done.append(Damage(".", "gone (its mkdir was never made durable)", is_dir=True))
                if fingerprint is not None:
                    fingerprint.update(b"<no root>")
                return done
            done.append(Damage(".", f"kept ({mode}), its mkdir never made durable",
                               is_dir=True))
        os.mkdir(dest)
        contents: Dict[int, Tuple[bytes, int]] = {}
        self._write_dir(self.root, dest, "", rng, tuple(modes), tuple(dir_modes), done,
                        contents, fingerprint)
        return done

    def _write_dir(self, d: _Dir, path: str, rel: str, rng: random.Random,
                   modes: Tuple[str, ...], dir_modes: Tuple[str, ...], done: List[Damage],
                   contents: Dict[int, Tuple[bytes, int]], fingerprint: Any) -> None:
        entries = d.durable
        if d.changes:
            mode = rng.choice(dir_modes)
            if mode == "keep":
                entries = d.live
            elif mode == "prefix":
                n = rng.randint(0, len(d.changes))
                entries = dict(d.durable)
                for name, node in d.changes[:n]:
                    if node is None:
                        entries.pop(name, None)
                    else:
                        entries[name] = node
                mode = f"prefix ({n} of {len(d.changes)} changes)"
            done.append(Damage(rel or ".", mode, is_dir=True))
        for name in sorted(entries):
            node = entries[name]
            child = os.path.join(path, name)
            child_rel = f"{rel}/{name}" if rel else name
            if isinstance(node, _Dir):
                os.mkdir(child)
                if fingerprint is not None:
                    fingerprint.update(b"D%d:%s\0" % (len(child_rel), child_rel.encode()))
                self._write_dir(node, child, child_rel, rng, modes, dir_modes, done, contents,
                                fingerprint)
                continue
            got = contents.get(node.id)
            if got is None:
                durable = node.durable_content()
                written = (bytes(node.data), node.size)
                got, mode = damage(durable, written, rng, modes)
                contents[node.id] = got
                if mode != "synced":
                    done.append(Damage(child_rel, mode, durable[1], written[1], got[1]))
            if fingerprint is not None:
                data = got[0].rstrip(b"\0")
                fingerprint.update(b"F%d:%s\0%d:%d:" % (len(child_rel), child_rel.encode(),
                                                          got[1], len(data)))
                fingerprint.update(data)
            _write_file(child, got)


def _write_file(path: str, content: Tuple[bytes, int]) -> None:
    data, size = content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        if size > len(data):
            os.ftruncate(fd, size)  # sparse: the zero tail costs nothing
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ damage
def _first_difference(a: bytes, b: bytes) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    x = np.frombuffer(a, dtype=np.uint8, count=n)
    y = np.frombuffer(b, dtype=np.uint8, count=n)
    return int(np.flatnonzero(x != y)[0])


def _common_prefix(d: Tuple[bytes, int], v: Tuple[bytes, int]) -> int:
    """Common prefix of two sparse contents (data + zeros up to size)."""
    (dd, ds), (vd, vs) = d, v
    m = min(len(dd), len(vd))
    c = _first_difference(dd, vd)
    if c < m:
        return min(c, ds, vs)
    longer = dd if len(dd) > len(vd) else vd
    rest = longer[m:]
    zeros = len(rest) - len(rest.lstrip(b"\0"))
    return min(m + zeros, ds, vs)


def _splice(v: Tuple[bytes, int], d: Tuple[bytes, int], a: int,
            b: Optional[int] = None) -> Tuple[bytes, int]:
    """``v[:a] + d[a:b] + v[b:]`` of sparse contents (``b=None``: ``v[:a] + d[a:]``, whose size
    is ``max(a, size of d)``)."""
    (vd, vs), (dd, ds) = v, d
    if b is None:
        head, tail = vd[:a], dd[a:]
        if tail:
            head = head + bytes(a - len(head))
        return head + tail, max(a, ds)
    mid = dd[a:b]
    mid = mid + bytes(b - a - len(mid))
    head = vd[:a]
    head = head + bytes(a - len(head))
    return head + mid + vd[b:], vs


def damage(durable: Tuple[bytes, int], written: Tuple[bytes, int], rng: random.Random,
           modes: Sequence[str] = ALL_MODES) -> Tuple[Tuple[bytes, int], str]:
    """One possible post-crash content of a file whose last synced content is ``durable`` and
    whose page-cache content is ``written`` (each ``(data, size)``: data then zeros up to size).

    Returns ``((data, size), mode)``; mode ``"synced"`` when there was nothing unsynced. The
    unsynced bytes are those from the first difference on; where one of them does not survive,
    the file shows its durable content (zeros in space that was never written):

    * ``drop``: none survive; ``keep``: all do;
    * ``torn``: those before a random point survive (the file size grows at most to there);
    * ``zero_tail``: the same, and the file size still grows to the new size (zeros);
    * ``garbage_tail``: the same, with garbage instead of zeros in newly written space up to the
      end of its last written page;
    * ``zero_page``: all survive except one page among them (out-of-order write-back).

    A byte both contents share is never changed.
    """
    d, v = durable, written
    (vd, vs), (dd, ds) = v, d
    if ds == vs and dd.rstrip(b"\0") == vd.rstrip(b"\0"):
        return d, "synced"
    mode = rng.choice(list(modes))
    if mode == "drop":
        return d, mode
    if mode == "keep":
        return v, mode
    c = _common_prefix(d, v)
    hi = max(c, min(len(vd), vs))  # end of the written data (v is zeros after it)
    if mode == "zero_page":
        if c >= hi:
            return v, mode  # nothing unsynced but the size
        page = rng.randint(c // PAGE, (hi - 1) // PAGE)
        return _splice(v, d, max(page * PAGE, c), min((page + 1) * PAGE, hi)), mode
    if mode not in ("torn", "zero_tail", "garbage_tail"):
        raise ValueError(f"unknown damage mode {mode!r} (valid: {', '.join(ALL_MODES)})")
    p = rng.randint(c, hi)  # the unsynced bytes before p made it, those after did not
    if p >= hi:
        return v, mode
    base = _splice(v, d, p)
    if mode == "torn" or base[1] >= vs:
        return base, mode
    data = base[0]
    if mode == "garbage_tail":
        q = max(p, len(dd))
        g_end = min(vs, -(-hi // PAGE) * PAGE)
        if g_end > q:
            data = data + bytes(q - len(data)) + rng.randbytes(g_end - q)
    return (data, vs), mode


# ----------------------------------------------------------------------------- the file system
def _read_sparse(fd: int) -> Tuple[bytes, int]:
    """``(content without its zero tail, size)`` of ``fd``, skipping holes (a preallocated
    segment is mostly hole)."""
    size = os.fstat(fd).st_size
    out = bytearray()
    pos = 0
    seek_data: Optional[int] = getattr(os, "SEEK_DATA", None)
    short = False
    while pos < size and not short:
        stop = size
        if seek_data is not None:
            try:
                start = os.lseek(fd, pos, seek_data)
                stop = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    break
                seek_data = None  # not supported here: read everything
                continue
            pos = start
        while pos < stop:
            chunk = os.pread(fd, min(stop - pos, 1 << 20), pos)
            if not chunk:  # the file shrank meanwhile
                short = True
                break
            if pos > len(out):
                out += bytes(pos - len(out))
            out[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        if stop >= size:
            break
    # Drop the zero tail, but keep zeros up to the end of the last page holding data: trailing
    # zeros there may be written bytes (a batch's padding), which a garbage tail must not hit.
    n = len(bytes(out).rstrip(b"\0"))
    return bytes(out[:min(len(out), -(-n // PAGE) * PAGE)]), size


def _read_sparse_path(path: str) -> Tuple[bytes, int]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _read_sparse(fd)
    finally:
        os.close(fd)


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
        self._fds: Dict[int, Tuple[_File, str]] = {}
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

    def _adopt(self, rel: str, path: str) -> _File:
        """A file the model does not know (created outside the seam): take it as it is now."""
        self._ensure_parent(rel)
        data, size = _read_sparse_path(path)
        ev = self._emit(Event("adopt", rel, self._new_id(), data=data, size=size, op=False))
        node = self.model.file(ev.node)
        node.ino = os.stat(path).st_ino
        return node

    def _observe(self, node: _File, content: Tuple[bytes, int], rel: str) -> None:
        """Take the real content of a known file if it differs from the model (written outside
        the seam)."""
        sparse, size = content
        if size != node.size or sparse.rstrip(b"\0") != bytes(node.data).rstrip(b"\0"):
            self._emit(Event("observe", rel, node.id, data=sparse, size=size, op=False))

    def _known(self, rel: str, path: str) -> Optional[_File]:
        """The model's node at ``rel`` if it is the file really there now."""
        node = self.model.lookup(rel)
        if isinstance(node, _File):
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
        if not isinstance(d, _Dir):
            return
        real: Dict[str, "os.DirEntry[str]"] = {e.name: e for e in os.scandir(path)}
        prefix = f"{rel}/" if rel else ""
        for name in sorted(set(d.live) - set(real)):
            self._emit(Event("forget", prefix + name, op=False))
        for name in sorted(real):
            e = real[name]
            node = d.live.get(name)
            if e.is_dir(follow_symlinks=False):
                if not isinstance(node, _Dir):
                    if node is not None:
                        self._emit(Event("forget", prefix + name, op=False))
                    self._adopt_dir_tree(prefix + name, e.path)
            elif e.is_file(follow_symlinks=False):
                if not isinstance(node, _File) or (node.ino is not None
                                                   and node.ino != e.inode()):
                    if node is not None:
                        self._emit(Event("forget", prefix + name, op=False))
                    self._adopt(prefix + name, e.path)

    def _ensure_parent(self, rel: str) -> None:
        """Make the model know the directories above ``rel`` (created outside the seam)."""
        parts = _split(rel)
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
                    self._observe(node, _read_sparse(fd), rel)  # written outside the seam?
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
                self._observe(node, _read_sparse(fd), rel)  # written outside the seam
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

    def node_at(self, path: "str | os.PathLike[str]") -> Optional[_File]:
        """The model's file at ``path`` (volatile namespace), or None."""
        rel = self.rel(path)
        node = None if rel is None else self.model.lookup(rel)
        return node if isinstance(node, _File) else None

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

        def walk(d: _Dir, prefix: str) -> None:
            for name, node in sorted(d.live.items()):
                if isinstance(node, _Dir):
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

        def walk(d: _Dir, prefix: str) -> None:
            for name, node in sorted(d.live.items()):
                path = os.path.join(self.root, *(prefix + name).split("/"))
                if isinstance(node, _Dir):
                    if os.path.isdir(path):
                        walk(node, prefix + name + "/")
                elif os.path.isfile(path) and self._known(prefix + name, path) is node:
                    self._observe(node, _read_sparse_path(path), prefix + name)
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
