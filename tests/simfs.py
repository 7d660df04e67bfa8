"""A power-loss-simulating FileSystem for tests (in the spirit of Jepsen's LazyFS and ALICE).

logstore reads its files directly (mmap, ``os.pread``), so :class:`SimFS` lets every write reach
the real files (the engine runs normally) and only *remembers* what has been made durable:

* per file (per inode): its **durable content**, i.e. the bytes it had at its last
  ``fsync``/``fdatasync`` through the seam (a file created and never synced has none);
* per directory (the log root): its **durable entries**, name -> file, as of its last
  ``fsync_dir``. Creates, renames and unlinks are volatile until then. The root directory itself
  is durable once its parent has been fsynced after the ``mkdir``.

Writes that bypass the seam (the memory-mapped index files, the lock file) are volatile like any
other unsynced write: a file's volatile content is simply the real file at the crash.

A crash is requested with ``crash_after=K``: the (K+1)-th seam operation raises :class:`Crash`
(a ``BaseException``, so no ``except OSError``/``except Exception`` in the engine swallows it) and
every later one too: the machine stopped there. :meth:`SimFS.abandon` then drops the Log like a
dead process would (lock released, file descriptors closed, no ``close()``), and
:meth:`SimFS.materialize` rebuilds the directory on disk as it would be found after power-up:

* only the durable entries exist (files created but not dir-fsynced vanish, unlinks and renames
  not dir-fsynced are undone, a root never made durable disappears with everything in it);
* each file holds its durable content, plus a *damaged* version of its unsynced part, chosen per
  file among :data:`SUFFIX_MODES` (what FORMAT.md's crash model allows: unsynced bytes dropped,
  kept, a random prefix of them kept (torn write), a kept prefix followed by zeros or garbage up
  to the new size) and optionally ``"zero_page"`` (every unsynced byte kept except one zeroed
  page among the newly appended ones: out-of-order write-back, an unwritten extent).

Bytes that were durable are never changed: power loss cannot damage fsynced data in this model,
so a log must always reopen after :meth:`materialize`.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from logstore.fs import FileSystem

PAGE = 4096
SUFFIX_MODES: Tuple[str, ...] = ("drop", "keep", "torn", "zero_tail", "garbage_tail")
ALL_MODES: Tuple[str, ...] = SUFFIX_MODES + ("zero_page",)


class Crash(BaseException):
    """The simulated machine lost power at this seam operation."""


class FileState:
    """What the simulated disk knows about one file (one inode)."""

    _ids = 0

    def __init__(self, durable: bytes, ino: int):
        FileState._ids += 1
        self.id = FileState._ids
        self.ino = ino
        self.durable = durable  # content as of the last fsync/fdatasync
        self.detached: Optional[bytes] = None  # volatile content when it left the namespace
        self.syncs = 0

    def __repr__(self) -> str:
        return f"<FileState #{self.id} ino={self.ino} durable={len(self.durable)}B>"


def _read_fd(fd: int) -> bytes:
    with open(f"/proc/self/fd/{fd}", "rb") as f:
        return f.read()


def _read_path(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Event:
    """One seam operation in the journal (for honesty checks and debugging)."""

    __slots__ = ("seq", "end", "thread", "op", "path", "state", "pos", "data", "size")

    def __init__(self, seq, thread, op, path, state, pos=None, data=None, size=None):
        self.seq = seq
        self.end: Optional[int] = None
        self.thread = thread
        self.op = op
        self.path = path
        self.state = state
        self.pos = pos
        self.data = data
        self.size = size

    def __repr__(self) -> str:
        name = os.path.basename(self.path) if self.path else "?"
        extra = "" if self.pos is None else f" @{self.pos}+{len(self.data or b'')}"
        return f"<{self.seq}-{self.end} {self.op} {name}{extra}>"


class SimFS(FileSystem):
    """See the module docstring. ``root`` is the log directory (it may not exist yet)."""

    def __init__(self, root: str, crash_after: Optional[int] = None, journal: bool = False,
                 real_sync: bool = False):
        self.root = os.path.abspath(root)
        # Durability is simulated: the real fsyncs are skipped unless asked for (speed).
        self.real_sync = real_sync
        self.parent = os.path.dirname(self.root)
        self.crash_after = crash_after
        self.ops = 0
        self.crashed = False
        self.keep_journal = journal
        self.journal: List[Event] = []
        self._seq = 0
        self._mutex = threading.RLock()
        self._by_ino: Dict[int, FileState] = {}  # live inodes under root
        self._fds: Dict[int, Tuple[FileState, str]] = {}
        self.root_durable = os.path.isdir(self.root)
        self.durable_entries: Dict[str, FileState] = {}
        if self.root_durable:
            for name, path in self._listing():
                st = FileState(_read_path(path), os.stat(path).st_ino)
                self._by_ino[st.ino] = st
                self.durable_entries[name] = st

    # ------------------------------------------------------------------ bookkeeping
    def _listing(self) -> List[Tuple[str, str]]:
        out = []
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                out.append((name, path))
        return out

    def _under_root(self, path: str) -> bool:
        return os.path.dirname(os.path.abspath(path)) == self.root

    def _state_for_ino(self, ino: int) -> FileState:
        st = self._by_ino.get(ino)
        if st is None:  # created outside the seam (the lock file): never synced
            st = self._by_ino[ino] = FileState(b"", ino)
        return st

    def _step(self, op: str) -> None:
        """Count a durability-relevant operation; crash when the budget is spent."""
        with self._mutex:
            if self.crashed:
                raise Crash(f"{op} after the crash")
            if self.crash_after is not None and self.ops >= self.crash_after:
                self.crashed = True
                raise Crash(f"power lost before operation {self.ops + 1} ({op})")
            self.ops += 1

    def _event(self, op, path=None, state=None, pos=None, data=None, size=None) -> Optional[Event]:
        if not self.keep_journal:
            return None
        with self._mutex:
            self._seq += 1
            ev = Event(self._seq, threading.get_ident(), op, path, state, pos, data, size)
            self.journal.append(ev)
            return ev

    def _done(self, ev: Optional[Event]) -> None:
        if ev is not None:
            with self._mutex:
                self._seq += 1
                ev.end = self._seq

    def _detach(self, path: str) -> None:
        """``path`` is about to leave the namespace (unlink, rename over it): remember it."""
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            return
        st = self._by_ino.pop(ino, None)
        if st is not None:
            st.detached = _read_path(path)

    # ------------------------------------------------------------------ the seam
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if not self._under_root(path):
            return super().open(path, flags, mode)
        self._step("open")
        existed = os.path.exists(path)
        ev = self._event("create" if not existed else "open", path)
        fd = super().open(path, flags, mode)
        ino = os.fstat(fd).st_ino
        with self._mutex:
            if not existed:
                self._by_ino.pop(ino, None)  # an inode number reused by a new file
                self._by_ino[ino] = FileState(b"", ino)
            st = self._state_for_ino(ino)
            self._fds[fd] = (st, path)
        if ev is not None:
            ev.state = st
        self._done(ev)
        return fd

    def dup(self, fd: int) -> int:
        new = super().dup(fd)
        with self._mutex:
            if fd in self._fds:
                self._fds[new] = self._fds[fd]
        return new

    def close(self, fd: int) -> None:
        with self._mutex:
            self._fds.pop(fd, None)
        super().close(fd)

    def _tracked(self, fd: int) -> Optional[Tuple[FileState, str]]:
        return self._fds.get(fd)

    def pwrite(self, fd: int, data, offset: int) -> None:
        t = self._tracked(fd)
        if t is None:
            return super().pwrite(fd, data, offset)
        self._step("pwrite")
        ev = self._event("pwrite", t[1], t[0], offset, bytes(data) if self.keep_journal else None)
        super().pwrite(fd, data, offset)
        self._done(ev)

    def _sync(self, fd: int, op: str) -> None:
        t = self._tracked(fd)
        if t is None:
            return getattr(super(), op)(fd)
        self._step(op)
        ev = self._event(op, t[1], t[0])
        if self.real_sync:
            getattr(super(), op)(fd)
        content = _read_fd(fd)
        with self._mutex:
            t[0].durable = content
            t[0].syncs += 1
        self._done(ev)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync")

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync")

    def truncate(self, fd: int, size: int) -> None:
        t = self._tracked(fd)
        if t is None:
            return super().truncate(fd, size)
        self._step("truncate")
        ev = self._event("truncate", t[1], t[0], size=size)
        super().truncate(fd, size)
        self._done(ev)

    def replace(self, src: str, dst: str) -> None:
        if not self._under_root(dst):
            return super().replace(src, dst)
        self._step("replace")
        ev = self._event("replace", dst)
        with self._mutex:
            self._detach(dst)
        super().replace(src, dst)
        self._done(ev)

    def unlink(self, path: str) -> None:
        if not self._under_root(path):
            return super().unlink(path)
        self._step("unlink")
        ev = self._event("unlink", path)
        with self._mutex:
            self._detach(path)
        super().unlink(path)
        self._done(ev)

    def mkdir(self, path: str) -> None:
        self._step("mkdir")
        ev = self._event("mkdir", path)
        super().mkdir(path)
        self._done(ev)

    def fsync_dir(self, path: str) -> None:
        path = os.path.abspath(path)
        self._step("fsync_dir")
        ev = self._event("fsync_dir", path)
        if self.real_sync:
            super().fsync_dir(path)
        with self._mutex:
            if path == self.root:
                entries = {}
                for name, p in self._listing():
                    entries[name] = self._state_for_ino(os.stat(p).st_ino)
                self.durable_entries = entries
            elif path == self.parent and os.path.isdir(self.root):
                self.root_durable = True
        self._done(ev)

    # ------------------------------------------------------------------ queries
    def state_of_path(self, path: str) -> Optional[FileState]:
        try:
            return self._by_ino.get(os.stat(path).st_ino)
        except FileNotFoundError:
            return None

    def unsynced(self) -> Dict[str, Tuple[int, int]]:
        """Files (by name) whose real content differs from their durable content: (D, V) sizes."""
        out = {}
        for name, path in self._listing():
            st = self.state_of_path(path)
            v = _read_path(path)
            if st is None or st.durable != v:
                out[name] = (len(st.durable) if st else 0, len(v))
        return out

    def entry_durable(self, name: str) -> bool:
        """Is ``name`` in the durable directory, naming the file that is there now?"""
        st = self.state_of_path(os.path.join(self.root, name))
        return st is not None and self.durable_entries.get(name) is st and self.root_durable

    # ------------------------------------------------------------------ the crash
    def crash(self) -> None:
        """Stop the machine now (no more operations succeed)."""
        with self._mutex:
            self.crashed = True

    def abandon(self, log) -> None:
        """Drop ``log`` like a dead process: release its lock, close every fd, no close()."""
        self.crash()
        if log is not None:
            log._stop.set()
            log._closed = True
            lock = getattr(log, "_dir_lock", None)
            if lock is not None:
                lock.release()
            for seg in log._segs.items:
                seg.close_mappings()
        with self._mutex:
            fds = list(self._fds)
            self._fds.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def materialize(self, rng: random.Random, modes: Sequence[str] = SUFFIX_MODES
                    ) -> List[Tuple[str, str, int, int, int]]:
        """Rebuild the directory as found after power-up. Returns, per file, what was done:
        (name, mode, durable bytes, volatile bytes, resulting bytes)."""
        assert self.crashed, "materialize() is for after the crash"
        if not self.root_durable:
            if os.path.exists(self.root):
                shutil.rmtree(self.root)
            return [("<root>", "never durable: gone", 0, 0, 0)]
        live = {}
        if os.path.isdir(self.root):
            for name, path in self._listing():
                live[os.stat(path).st_ino] = path
        plan: Dict[str, bytes] = {}
        done = []
        for name, st in sorted(self.durable_entries.items()):
            path = live.get(st.ino)
            if path is not None and self._by_ino.get(st.ino) is st:
                volatile = _read_path(path)
            elif st.detached is not None:
                volatile = st.detached
            else:
                volatile = st.durable
            content, mode = damage(st.durable, volatile, rng, modes)
            plan[name] = content
            done.append((name, mode, len(st.durable), len(volatile), len(content)))
        if os.path.exists(self.root):
            shutil.rmtree(self.root)
        os.mkdir(self.root)
        for name, content in plan.items():
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(content)
        return done


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def damage(durable: bytes, volatile: bytes, rng: random.Random,
           modes: Sequence[str] = SUFFIX_MODES) -> Tuple[bytes, str]:
    """One possible post-crash content of a file. Never changes a durable byte that the
    volatile content did not change; only the unsynced part varies."""
    if durable == volatile:
        return durable, "synced"
    mode = rng.choice(list(modes))
    d, v = durable, volatile
    c = _common_prefix(d, v)
    if mode == "drop":
        return d, mode
    if mode == "keep":
        return v, mode
    p = rng.randint(c, len(v))  # new bytes before p made it, those after did not
    if mode == "torn" or p >= len(v):
        return (v[:p] + d[p:] if p < len(v) else v), mode
    if mode in ("zero_tail", "garbage_tail"):
        q = max(p, len(d))
        fill = len(v) - q
        if fill <= 0:
            return v[:p] + d[p:], mode
        junk = bytes(fill) if mode == "zero_tail" else rng.randbytes(fill)
        return v[:p] + d[p:q] + junk, mode
    if mode == "zero_page":
        lo = max(len(d), c)
        if lo >= len(v):
            return v, mode
        first = lo // PAGE
        page = rng.randint(first, (len(v) - 1) // PAGE)
        a, b = max(page * PAGE, lo), min((page + 1) * PAGE, len(v))
        return v[:a] + bytes(b - a) + v[b:], mode
    raise ValueError(f"unknown mode {mode!r}")
