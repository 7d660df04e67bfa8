"""What the testing helpers share: opening a log or store by kind, scratch directories on tmpfs,
a file system without fsyncs for scratch copies, and ``verify``.

``verify`` is the one place where ``logstore.testing`` uses an internal module of the engine
(``logstore.diagnostics``, the checker behind ``logstore verify``).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import logstore
from logstore.diagnostics.report import inspect_log
from logstore.diagnostics.targets import resolve_targets
from logstore.fs import DEFAULT_FS, FileSystem

Target = Union["logstore.Log", "logstore.Store"]
KINDS = ("log", "store")


def check_kind(kind: str, allowed: Tuple[str, ...] = KINDS) -> str:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {', '.join(map(repr, allowed))} (got {kind!r})")
    return kind


def open_target(kind: str, path: "str | os.PathLike[str]", options: Mapping[str, Any],
                fs: Optional[FileSystem] = None) -> Target:
    """``Log.open`` or ``Store.open`` of ``path`` with ``options``."""
    opts: Dict[str, Any] = dict(options)
    if fs is not None:
        opts["fs"] = fs
    if kind == "log":
        return logstore.Log.open(path, **opts)
    if kind == "store":
        return logstore.Store.open(path, **opts)
    raise ValueError(f"kind must be 'log' or 'store' (got {kind!r})")


def close_target(target: Any) -> None:
    if target is not None and not getattr(target, "closed", False):
        target.close()


class NoSyncFileSystem(FileSystem):
    """The default file system without fsyncs: for scratch copies whose durability is
    meaningless (a power-loss state being checked), on a disk where fsyncs cost milliseconds."""

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


NO_SYNC_FS = NoSyncFileSystem()


def _mount_type(path: str) -> Optional[str]:
    """The file system type of the mount holding ``path`` (Linux /proc/mounts), or None."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        return None
    return kind


def is_tmpfs(path: str) -> bool:
    return _mount_type(path) in ("tmpfs", "ramfs")


def scratch_base(explicit: Optional[str] = None) -> Optional[str]:
    """Where scratch directories go: ``explicit``, else ``$LOGSTORE_TEST_SCRATCH``, else /dev/shm
    when it is a writable tmpfs (simulated crash states never need a disk), else the default
    temporary directory (None)."""
    for cand in (explicit, os.environ.get("LOGSTORE_TEST_SCRATCH")):
        if cand:
            os.makedirs(cand, exist_ok=True)
            return cand
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and is_tmpfs(shm):
        return shm
    return None


def reopen_fs_for(path: str) -> FileSystem:
    """The file system to reopen scratch copies with: the real one on tmpfs (fsync is free
    there, and recovery runs exactly as in production), no fsyncs on a disk."""
    return DEFAULT_FS if is_tmpfs(path) else NO_SYNC_FS


def make_scratch(prefix: str, explicit: Optional[str] = None) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=scratch_base(explicit))


def remove_tree(path: str) -> None:
    """Remove ``path`` (a scratch tree) if it exists; quicker than shutil.rmtree for small ones."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        os.unlink(path)
        return
    try:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                remove_tree(e.path)
            else:
                os.unlink(e.path)
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset)


def snapshot(value: Any) -> Any:
    """A copy of an acknowledged value that later mutations by the workload cannot change."""
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value):
        return value
    return copy.deepcopy(value)


def verify(path: "str | os.PathLike[str]") -> List[str]:
    """Check a log directory or store root as ``logstore verify`` does (every batch's CRC and
    structure, offset continuity, indexes, markers; a store: every partition and internal log).
    Returns the problems found, one line each (empty: OK). Read-only."""
    out: List[str] = []
    for target in resolve_targets(path, internal=True):
        report = inspect_log(target, verify=True)
        for p in report.problems:
            at = f" at byte {p.position}" if p.position is not None else ""
            out.append(f"{report.label}: [{p.kind}] {os.path.basename(p.file)}{at}: {p.reason}")
    return out


def assert_verified(path: "str | os.PathLike[str]") -> None:
    """:func:`verify` and raise ``AssertionError`` listing the problems, if any."""
    problems = verify(path)
    if problems:
        raise AssertionError(f"logstore verify {os.fspath(path)}: {len(problems)} problem(s):\n  "
                             + "\n  ".join(problems))
