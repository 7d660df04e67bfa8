"""Test-only helpers that put a store (or a log) into the states a crash or a fault leaves.

Everything here works on the files as ``segments/FORMAT.md`` describes them, or through the
public I/O seam (:class:`logstore.fs.FileSystem`): no engine internals are imported, so the
helpers survive the package being reorganised.

* :func:`cut_log` makes one log lose the suffix of its active segment from a given offset on,
  as a power loss under ``fsync="never"`` may (FORMAT.md's crash model: per file, any suffix of
  the unsynced data may be missing). Used on one log of a store while the others keep
  everything, it produces the "logs recovered to different points" states deterministically.
* :func:`run_child` runs a Python snippet in a child process that ends by SIGKILLing itself
  (a real process death: no ``close()``, locks dropped by the kernel).
* :class:`FaultFS` raises a chosen exception at chosen seam operations (``OSError(EIO)``,
  ``KeyboardInterrupt``, ...), or kills the process there.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
from typing import Callable, List, NamedTuple

import logstore
from logstore.fs import FileSystem

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

# FORMAT.md, "Batch": magic, crc, batch_length, version, attributes, base_offset,
# base_timestamp, max_timestamp, record_count, last_offset_delta, ...
_HEADER = struct.Struct("<4sIIHHqqqII")
HEADER_SIZE = 64
CLEAN_SHUTDOWN = "clean-shutdown"
LOG_META = "logstore.meta"


class Batch(NamedTuple):
    position: int
    length: int
    base_offset: int
    next_offset: int
    base_timestamp: int
    max_timestamp: int


def segment_files(log_dir: str) -> List[str]:
    """The ``.log`` files of a log directory, oldest first."""
    return sorted(os.path.join(log_dir, n) for n in os.listdir(log_dir)
                  if n.endswith(".log") and n[:-4].isdigit())


def batches(segment_path: str) -> List[Batch]:
    """Every batch of a segment file, from its headers (stops at a zero/foreign header)."""
    with open(segment_path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(data):
        magic, _crc, length, _v, _a, base, base_ts, max_ts, _n, last_delta = \
            _HEADER.unpack_from(data, pos)
        if magic != b"LSTB" or length < HEADER_SIZE or pos + length > len(data):
            break
        out.append(Batch(pos, length, base, base + last_delta + 1, base_ts, max_ts))
        pos += length
    return out


def cut_log(log_dir: str, end_offset: int) -> int:
    """Make the log at ``log_dir`` end at ``end_offset``, as after a power loss that dropped the
    unsynced suffix of its active segment: the last segment is cut at the batch starting at
    ``end_offset`` and the clean-shutdown marker removed (the next open recovers the segment).
    Only the active (last) segment may lose data in FORMAT.md's crash model, so
    ``end_offset`` must be inside it. Returns the number of bytes cut."""
    segs = segment_files(log_dir)
    last = segs[-1]
    base = int(os.path.basename(last)[:-4])
    assert base <= end_offset, f"{end_offset} is below the active segment of {log_dir}"
    for b in batches(last):
        if b.base_offset == end_offset:
            size = os.path.getsize(last)
            os.truncate(last, b.position)
            break
    else:
        raise AssertionError(f"no batch of {last} starts at offset {end_offset}")
    marker = os.path.join(log_dir, CLEAN_SHUTDOWN)
    if os.path.exists(marker):
        os.unlink(marker)
    return size - b.position


def log_end(log_dir: str) -> int:
    """``end_offset`` of the log at ``log_dir``, read-only."""
    with logstore.Log.open(log_dir, readonly=True) as log:
        return log.end_offset


def flip_byte(path: str, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        b = f.read(1)
        f.seek(position)
        f.write(bytes([b[0] ^ 0xFF]))


def run_child(code: str, *args: str, timeout: float = 120.0) -> str:
    """Run ``code`` (dedented) in a child Python with ``sys.argv[1:] = args``; the snippet must
    end by killing itself with SIGKILL (``die()`` is predefined). Returns its stdout."""
    prelude = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {REPO!r}); sys.path.insert(0, {TESTS!r})
        def die():
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          capture_output=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, (
        f"child exited with {proc.returncode}, not SIGKILL:\n{proc.stderr.decode()}")
    return proc.stdout.decode()


class FaultFS(FileSystem):
    """Raises ``make_error()`` at the seam operations for which ``when(op, path)`` is true, once
    ``armed`` (``times`` times, then behaves). ``op`` is one of open, pwrite, fdatasync, fsync,
    truncate, replace, unlink, mkdir, fsync_dir; ``path`` the file (for fd operations, the path
    the fd was opened with, when known)."""

    def __init__(self, when: Callable[[str, str], bool],
                 make_error: Callable[[], BaseException] = lambda: OSError(errno.EIO, "EIO"),
                 times: int = 1, armed: bool = True):
        self.when = when
        self.make_error = make_error
        self.times = times
        self.armed = armed
        self.fired = 0
        self.log: List[tuple] = []

    def _path_of(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def _check(self, op: str, path: str) -> None:
        if self.armed and self.fired < self.times and self.when(op, path):
            self.fired += 1
            self.log.append((op, path))
            raise self.make_error()

    def open(self, path, flags, mode=0o644):
        self._check("open", path)
        return super().open(path, flags, mode)

    def pwrite(self, fd, data, offset):
        self._check("pwrite", self._path_of(fd))
        return super().pwrite(fd, data, offset)

    def fdatasync(self, fd):
        self._check("fdatasync", self._path_of(fd))
        return super().fdatasync(fd)

    def fsync(self, fd):
        self._check("fsync", self._path_of(fd))
        return super().fsync(fd)

    def truncate(self, fd, size):
        self._check("truncate", self._path_of(fd))
        return super().truncate(fd, size)

    def replace(self, src, dst):
        self._check("replace", src)
        return super().replace(src, dst)

    def unlink(self, path):
        self._check("unlink", path)
        return super().unlink(path)

    def mkdir(self, path):
        self._check("mkdir", path)
        return super().mkdir(path)

    def fsync_dir(self, path):
        self._check("fsync_dir", path)
        return super().fsync_dir(path)


def kill_self() -> BaseException:
    """A ``make_error`` for :class:`FaultFS` that kills the process (a crash at that operation)."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    return SystemExit(137)  # not reached


def under(*parts: str) -> Callable[[str], bool]:
    """A path test: the path contains ``os.sep.join(parts)``."""
    needle = os.sep.join(parts)
    return lambda path: needle in path


# ------------------------------------------------------------------ the only engine internals
# Kept here, in one place, so the package reorganisation (issue 18) has one spot to repoint.
def _workqueue_module():
    """The module holding the work queue's checkpoint interval (``CHECKPOINT_EVERY``)."""
    import importlib

    for name in ("logstore.views.workqueue", "logstore.workqueue"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "CHECKPOINT_EVERY"):
            return mod
    raise ImportError("no logstore module defines CHECKPOINT_EVERY")


def checkpoint_every() -> int:
    """Events between two periodic checkpoints of a work queue."""
    return _workqueue_module().CHECKPOINT_EVERY


def set_checkpoint_every(n: int) -> None:
    """Change the work queue's checkpoint interval in this process (test speed only)."""
    _workqueue_module().CHECKPOINT_EVERY = n


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the ``logstore`` console script (found through the package's entry point, so it
    follows the CLI wherever the package puts it) in a child process."""
    code = ("import sys, importlib.metadata as m\n"
            "ep = [e for e in m.entry_points(group='console_scripts') if e.name == 'logstore'][0]\n"
            "sys.argv[0] = 'logstore'\n"
            "sys.exit(ep.load()())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          timeout=timeout, env=env)


class DirsSimFS(FileSystem):
    """Power loss of a few chosen log directories of a store: one :class:`simfs.SimFS` per
    directory (what was fsynced there survives, the rest is damaged), every other file passes
    through to the real file system and survives whole. That is one of the outcomes FORMAT.md's
    crash model allows (per file, any unsynced suffix may be lost, including none).

    A stopgap for the tests that need two logs of a store to lose their unsynced data together;
    the store-tree simulator (issue 17) replaces it."""

    def __init__(self, roots):
        from simfs import SimFS

        self.sims = [SimFS(r) for r in roots]

    def _for_path(self, path):
        for s in self.sims:
            if s.rel(path) is not None:
                return s
        return None

    def _for_fd(self, fd):
        for s in self.sims:
            if fd in s._fds:
                return s
        return None

    def open(self, path, flags, mode=0o644):
        s = self._for_path(path)
        return (s or super()).open(path, flags, mode)

    def close(self, fd):
        s = self._for_fd(fd)
        return (s or super()).close(fd)

    def dup(self, fd):
        s = self._for_fd(fd)
        return (s or super()).dup(fd)

    def pwrite(self, fd, data, offset):
        s = self._for_fd(fd)
        return (s or super()).pwrite(fd, data, offset)

    def fdatasync(self, fd):
        s = self._for_fd(fd)
        return (s or super()).fdatasync(fd)

    def fsync(self, fd):
        s = self._for_fd(fd)
        return (s or super()).fsync(fd)

    def truncate(self, fd, size):
        s = self._for_fd(fd)
        return (s or super()).truncate(fd, size)

    def replace(self, src, dst):
        s = self._for_path(dst)
        return (s or super()).replace(src, dst)

    def unlink(self, path):
        s = self._for_path(path)
        return (s or super()).unlink(path)

    def fsync_dir(self, path):
        path = os.path.abspath(path)
        hit = [s for s in self.sims if path in (s.root, s.parent)]
        for s in hit:
            s.fsync_dir(path)
        if not hit:
            super().fsync_dir(path)

    def power_loss(self, seed: int = 0, modes=("drop",)) -> None:
        """Stop the simulated machine and rebuild each simulated directory as found after
        power-up (call in a process that dies right after: the engine's locks are not
        released)."""
        import random

        for s in self.sims:
            s.crash()
        for s in self.sims:
            s.release_fds()
            s.materialize(random.Random(seed), modes, dir_modes=("keep",))
