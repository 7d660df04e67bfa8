"""The disk model of the power-loss simulator: what a tree of files holds, volatile and durable.

:class:`DiskModel` is driven by a trace of :class:`Event` s (file creation, writes, truncates,
syncs, renames, unlinks, mkdirs, directory fsyncs) recorded by
:class:`~logstore.testing.powerloss.PowerLossFS`:

* per file (per inode, :class:`FileNode`): its **volatile** content (what the page cache holds)
  and its **durable** content, the content at its last ``fsync``/``fdatasync``;
* per directory (:class:`DirNode`): its volatile and durable entries and the entry changes made
  since its last ``fsync_dir``.

:meth:`DiskModel.materialize` writes the tree as found after a power loss, within what
``segments/FORMAT.md`` allows a crash to do; :func:`damage` chooses what an unsynced part of a
file becomes (see :data:`SUFFIX_MODES`, :data:`ALL_MODES`, :data:`DIR_MODES`).
"""

from __future__ import annotations

import errno
import os
import random
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "ALL_MODES", "DIR_MODES", "PAGE", "SUFFIX_MODES", "Damage", "DirNode", "DiskModel", "Event",
    "FileNode", "damage", "read_sparse", "read_sparse_path", "split_path",
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


class FileNode:
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


class DirNode:
    __slots__ = ("id", "live", "durable", "changes")

    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.live: Dict[str, Union[FileNode, "DirNode"]] = {}
        self.durable: Dict[str, Union[FileNode, "DirNode"]] = {}
        # Entry changes since the last fsync_dir, in order: (name, node or None for a removal).
        self.changes: List[Tuple[str, Optional[Union[FileNode, "DirNode"]]]] = []

    def set(self, name: str, node: Optional[Union[FileNode, "DirNode"]]) -> None:
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


_Node = Union[FileNode, DirNode]


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


def split_path(path: str) -> List[str]:
    return [p for p in path.split("/") if p] if path else []


class DiskModel:
    """The simulated disk of one root directory, driven by :class:`Event` s (see the module
    docstring). :meth:`apply` one event at a time, :meth:`materialize` whenever."""

    def __init__(self) -> None:
        self.root = DirNode(0)
        self.root_live = False  # the root directory exists (in the page cache)
        self.root_durable = False  # ... and its entry in the parent is durable
        self.nodes: Dict[int, _Node] = {0: self.root}

    # ------------------------------------------------------------------ lookups
    def lookup(self, path: str) -> Optional[_Node]:
        node: Optional[_Node] = self.root if self.root_live else None
        for part in split_path(path):
            if not isinstance(node, DirNode):
                return None
            node = node.live.get(part)
        return node

    def _parent(self, path: str) -> Tuple[DirNode, str]:
        parts = split_path(path)
        if not parts:
            raise ValueError("the root has no parent inside the model")
        parent = self.lookup("/".join(parts[:-1]))
        if not isinstance(parent, DirNode):
            raise FileNotFoundError(errno.ENOENT, "no such directory in the model", path)
        return parent, parts[-1]

    def file(self, node_id: int) -> FileNode:
        node = self.nodes[node_id]
        assert isinstance(node, FileNode)
        return node

    def entry_durable(self, path: str) -> bool:
        """Is ``path`` durable in its directory (and every directory above it), naming the node
        that is there now?"""
        if not self.root_durable:
            return False
        node: _Node = self.root
        for part in split_path(path):
            if not isinstance(node, DirNode):
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
            node = FileNode(ev.node, ev.data or b"", ev.size)
            self.nodes[ev.node] = node
            parent, name = self._parent(ev.path or "")
            parent.set(name, node)
        elif k in ("mkdir", "adopt_dir"):
            d = DirNode(ev.node)
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
                if isinstance(synced, DirNode):
                    synced.synced()
        elif k == "assume_durable":
            self._assume_durable(self.root)
            self.root_durable = self.root_live
        else:  # pragma: no cover - a bug in the recorder
            raise ValueError(f"unknown event {k!r}")

    def _assume_durable(self, d: DirNode) -> None:
        d.synced()
        for node in d.live.values():
            if isinstance(node, DirNode):
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

    def _write_dir(self, d: DirNode, path: str, rel: str, rng: random.Random,
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
            if isinstance(node, DirNode):
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
def read_sparse(fd: int) -> Tuple[bytes, int]:
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


def read_sparse_path(path: str) -> Tuple[bytes, int]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return read_sparse(fd)
    finally:
        os.close(fd)
