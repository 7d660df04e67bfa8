"""Disk full, file too large, I/O errors: at every kind of write, sync, rename and truncate.

Two layers:

* A real writer **process** under ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, so the kernel fails
  writes with ``EFBIG`` (a short write first, then the error) exactly where the file would grow
  past the limit, in the data file or in a preallocated index during a segment roll.
* In-process **injection** through the I/O seam (``FaultFS``): ``ENOSPC``/``EIO``/``EFBIG`` on
  ``pwrite``, ``fdatasync``, ``fsync``, ``fsync_dir``, ``replace``, ``truncate``, ``open`` and
  ``unlink``, at an append, a segment roll, a close and an open.

The documented behaviour (README "Failures"): a failed *write* raises ``StorageError`` and leaves
the log usable with the partial batch cut off and no offset consumed; a failed *fsync* raises
``StorageError`` and poisons the log (every later write raises ``StorageError``) until it is
reopened; reopening always works and loses nothing that was acknowledged durable.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import logstore
from logstore import StorageError
from logstore.fs import FileSystem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = errno


# ------------------------------------------------------------------------------ RLIMIT_FSIZE
CHILD = r"""
import hashlib, json, os, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import logstore
d, policy, kind, limit = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by SIGXFSZ
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
opts = {"always": {"fsync": "always"}, "every": {"fsync": "every", "fsync_records": 7},
        "never": {"fsync": "never"},
        "buffered": {"fsync": "never", "write_buffer_bytes": 2048}}[policy]
if kind == "roll":  # small segments, huge preallocated indexes: the roll's index hits the limit
    opts.update(segment_bytes=16384, index_interval_bytes=8)
else:
    opts.update(segment_bytes=1 << 20)
out = {"acked": [], "events": []}
def ev(*a):
    out["events"].append(" ".join(map(str, a)))
def vals(i, n):
    return [b"%d:" % (i + j) * 37 for j in range(n)]
log = logstore.Log.open(d, **opts)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
i = 0
err = None
failed = None
while i < 200000:
    n = 1 if kind == "single" else 6
    v = vals(i, n)
    try:
        if n == 1:
            r = [log.append(v[0])]
        else:
            r = list(log.append_batch(v))
    except logstore.LogstoreError as e:
        err, failed = e, v
        break
    assert r == list(range(i, i + n)), (r, i)
    out["acked"] += [(o, x.decode()) for o, x in zip(r, v)]
    i += n
out["error"] = type(err).__name__
out["errno"] = getattr(err, "errno", None)
out["message"] = str(err)[:300]
out["is_storage_error"] = isinstance(err, logstore.StorageError)
out["end_after_failure"] = log.end_offset
try:
    out["replay_after_failure"] = [(r.offset, r.value.decode()) for r in log.replay()]
    seg = log.segments()[-1]
    out["segment_size"], out["file_size"] = seg["size"], os.path.getsize(seg["path"])
except logstore.LogstoreError as e:  # with a write buffer: reads must write the buffer first
    out["replay_after_failure"] = f"{type(e).__name__} {getattr(e, 'errno', None)}"
try:  # the same append again: still too big, still nothing consumed
    log.append_batch(failed)
    out["retry"] = "ok"
except logstore.LogstoreError as e:
    out["retry"] = type(e).__name__ + " " + str(getattr(e, "errno", None))
out["end_after_retry"] = log.end_offset
if policy == "buffered":
    # Records acknowledged into the write buffer: give them room to reach the file before close.
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    ev("limit raised before close")
try:
    log.close()
    out["close"] = "ok"
except BaseException as e:
    out["close"] = type(e).__name__
# Reopen in the same process, still under the limit (unless raised above).
try:
    with logstore.Log.open(d, **opts) as again:
        out["reopen_under_limit"] = "ok"
        out["reopen_clean"] = again.recovery_report.clean
        out["replay_after_reopen"] = [(r.offset, r.value.decode()) for r in again.replay()]
except BaseException as e:
    out["reopen_under_limit"] = f"{type(e).__name__} {getattr(e, 'errno', None)}"
# Room again: the failed append now succeeds.
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
with logstore.Log.open(d, **opts) as again:
    end = again.end_offset
    r = list(again.append_batch(failed))
    out["after_raise"] = [end, r]
    out["acked"] += [(o, x.decode()) for o, x in zip(r, failed)]
print(json.dumps(out))
"""


def run_child(d, policy, kind, limit):
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, d, policy, kind, str(limit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("policy, kind", [
    ("always", "batch"), ("always", "single"), ("every", "batch"), ("never", "single"),
    ("buffered", "single"),
])
def test_file_size_limit_in_a_writer_process(tmp_path, policy, kind):
    d = str(tmp_path / "log")
    limit = 48 * 1024
    out = run_child(d, policy, kind, limit)
    # The append that crossed the limit raised StorageError(EFBIG), a LogstoreError.
    assert out["error"] == "StorageError" and out["is_storage_error"], out["message"]
    assert out["errno"] == errno.EFBIG, out["message"]
    acked = [tuple(a) for a in out["acked"]]
    before = acked[: len(acked) - len(out["after_raise"][1])]
    assert len(before) > 100
    n = len(before)
    # Nothing consumed, nothing earlier lost, the partial batch invisible; the log stays usable.
    assert out["end_after_failure"] == n
    if policy == "buffered":
        # Reads first write the buffer out, which fails too while the file is at its limit
        # (see test_reads_work_while_the_disk_is_full_with_a_write_buffer).
        assert out["replay_after_failure"] == f"StorageError {errno.EFBIG}"
    else:
        assert [tuple(r) for r in out["replay_after_failure"]] == before
        assert out["file_size"] == out["segment_size"] <= limit  # the partial write was cut off
    assert out["retry"] == f"StorageError {errno.EFBIG}" and out["end_after_retry"] == n
    assert out["close"] == "ok"
    # Reopen, in the same process and still under the limit: everything there, nothing torn.
    assert out["reopen_under_limit"] == "ok"
    assert [tuple(r) for r in out["replay_after_reopen"]] == before
    # After raising the limit the same append succeeds, at the next offset.
    end, offs = out["after_raise"]
    assert end == n and offs[0] == n
    # A fresh process (this one, no limit) sees every acknowledged record, byte for byte.
    with logstore.Log.open(d) as log:
        assert log.recovery_report.clean
        assert [(r.offset, r.value.decode()) for r in log.replay()] == acked


def test_file_size_limit_hit_by_index_preallocation_during_roll(tmp_path):
    """The roll creates the next segment's preallocated index files: that ftruncate fails with
    EFBIG. The roll is treated like a failed sync: StorageError and the log refuses writes until
    reopened. Reopening under the limit still fails (it must preallocate too); with room, all is
    there."""
    d = str(tmp_path / "log")
    out = run_child(d, "always", "roll", 20000)
    assert out["error"] == "StorageError" and out["errno"] == errno.EFBIG, out["message"]
    assert "rolling to a new segment failed" in out["message"]
    acked = [tuple(a) for a in out["acked"]]
    before = acked[: len(acked) - 6]
    assert out["end_after_failure"] == len(before)
    assert [tuple(r) for r in out["replay_after_failure"]] == before
    assert out["retry"].startswith("StorageError")  # poisoned: refuses writes until reopened
    assert out["close"] == "ok"
    # Under the limit the reopen cannot preallocate the active segment's index either: it
    # reports StorageError(EFBIG) (a raw OSError before 23530b6).
    assert out["reopen_under_limit"] in ("ok", f"StorageError {errno.EFBIG}")
    assert out["after_raise"][0] == len(before)
    with logstore.Log.open(d) as log:
        assert [(r.offset, r.value.decode()) for r in log.replay()] == acked
        assert len(log.segments()) >= 2


# ------------------------------------------------------------------------------ injection
class FaultFS(FileSystem):
    """Fails chosen seam operations: ``arm(op, errno, suffix=..., skip=N, partial=...)``."""

    def __init__(self):
        self.paths = {}
        self.rules = []
        self.injected = []

    def arm(self, op, code, suffix=None, skip=0, partial=False, times=1):
        self.rules.append({"op": op, "code": code, "suffix": suffix, "skip": skip,
                           "partial": partial, "times": times})

    def disarm(self):
        self.rules.clear()

    def _check(self, op, path, fd=None, data=None, offset=None):
        for r in self.rules:
            if r["op"] != op or r["times"] <= 0:
                continue
            if r["suffix"] is not None and not str(path).endswith(r["suffix"]):
                continue
            if r["skip"] > 0:
                r["skip"] -= 1
                return
            r["times"] -= 1
            self.injected.append((op, os.path.basename(str(path))))
            if r["partial"] and data is not None:
                os.pwrite(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(r["code"], os.strerror(r["code"]))

    def open(self, path, flags, mode=0o644):
        self._check("open", path)
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def dup(self, fd):
        new = super().dup(fd)
        self.paths[new] = self.paths.get(fd)
        return new

    def pwrite(self, fd, data, offset):
        self._check("pwrite", self.paths.get(fd), fd, data, offset)
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd):
        self._check("fdatasync", self.paths.get(fd))
        super().fdatasync(fd)

    def fsync(self, fd):
        self._check("fsync", self.paths.get(fd))
        super().fsync(fd)

    def truncate(self, fd, size):
        self._check("truncate", self.paths.get(fd))
        super().truncate(fd, size)

    def replace(self, src, dst):
        self._check("replace", dst)
        super().replace(src, dst)

    def unlink(self, path):
        self._check("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path):
        self._check("fsync_dir", path)
        super().fsync_dir(path)


def _values(log):
    return [r.value for r in log.replay()]


def _setup(tmp_path, **opts):
    fs = FaultFS()
    path = str(tmp_path / "log")
    opts.setdefault("segment_bytes", 1024)
    log = logstore.Log.open(path, fs=fs, **opts)
    for i in range(5):
        log.append(b"pre-%d-" % i * 8)
    log.flush()
    return fs, path, log


def _reopen_values(path):
    with logstore.Log.open(path) as log:
        return _values(log), log.recovery_report


# Appends that fail to *write*: StorageError, log usable, no offset consumed.
WRITE_FAULTS = {
    "pwrite ENOSPC, single append": ("pwrite", E.ENOSPC, ".log", False, "single"),
    "pwrite EIO, batch": ("pwrite", E.EIO, ".log", False, "batch"),
    "pwrite EFBIG half-written, batch": ("pwrite", E.EFBIG, ".log", True, "batch"),
    "pwrite ENOSPC half-written, batch rolling a segment": ("pwrite", E.ENOSPC, ".log", True,
                                                            "big"),
    "pwrite ENOSPC, append_buffer": ("pwrite", E.ENOSPC, ".log", False, "buffer"),
}


def _do_append(log, how):
    if how == "single":
        return [log.append(b"failing")]
    if how == "batch":
        return list(log.append_batch([b"failing-%d" % i * 20 for i in range(4)]))
    if how == "big":
        return list(log.append_batch([b"failing-%d" % i * 50 for i in range(3)]))
    if how == "buffer":
        return list(log.append_buffer(b"abcdef", [2, 4]))
    raise AssertionError(how)


@pytest.mark.parametrize("policy", ["always", "never"])
@pytest.mark.parametrize("name", list(WRITE_FAULTS))
def test_failed_write_raises_and_log_stays_usable(tmp_path, name, policy):
    op, code, suffix, partial, how = WRITE_FAULTS[name]
    fs, path, log = _setup(tmp_path, fsync=policy)
    before = _values(log)
    fs.arm(op, code, suffix, partial=partial)
    with pytest.raises(StorageError) as e:
        _do_append(log, how)
    assert fs.injected, "the fault was not reached"
    assert e.value.errno == code and isinstance(e.value, logstore.LogstoreError)
    assert log.end_offset == len(before)
    seg = log.segments()[-1]
    assert os.path.getsize(seg["path"]) == seg["size"]  # the partial batch is cut off
    assert _values(log) == before  # not visible
    assert log.append(b"next") == len(before)  # usable; the failed append consumed no offset
    log.close()
    values, report = _reopen_values(path)
    assert values == before + [b"next"]
    assert report.clean


def test_failed_write_then_failed_cut_back(tmp_path):
    """The write fails half-way and the ftruncate that should remove the partial batch fails too.
    Observed: StorageError naming both errors; the log keeps accepting appends (they overwrite
    the partial bytes); nothing torn is ever visible and a reopen cuts the leftover bytes."""
    # (A segment large enough for no roll: the armed truncate is the cut-back's, not the one
    # that trims the preallocated space of a sealed segment.)
    fs, path, log = _setup(tmp_path, segment_bytes=1 << 20)
    before = _values(log)
    fs.arm("pwrite", E.ENOSPC, ".log", partial=True)
    fs.arm("truncate", E.EIO, ".log")
    with pytest.raises(StorageError) as e:
        log.append_batch([b"failing-%d" % i * 20 for i in range(4)])
    assert "could not be removed" in str(e.value)
    assert _values(log) == before
    assert log.append(b"x") == len(before)
    log.close()
    values, report = _reopen_values(path)
    assert values == before + [b"x"]


def test_write_buffer_overflow_failure_keeps_buffered_records(tmp_path):
    """fsync="never" + write buffer: the append that needs the buffer written gets StorageError;
    the buffered (acknowledged) records stay buffered and reach the file on the next write."""
    fs, path, log = _setup(tmp_path, fsync="never", write_buffer_bytes=256)
    for i in range(3):
        log.append(b"buf-%d-" % i * 5)
    before = _values(log)
    fs.arm("pwrite", E.ENOSPC, ".log")
    with pytest.raises(StorageError):
        log.append(b"too-big-for-the-buffer" * 10)
    assert log.append(b"after") == len(before)
    log.close()
    values, _ = _reopen_values(path)
    assert values == before + [b"after"]


def test_reads_work_while_the_disk_is_full_with_a_write_buffer(tmp_path):
    fs, path, log = _setup(tmp_path, fsync="never", write_buffer_bytes=4096)
    log.append(b"in-the-buffer")
    fs.arm("pwrite", E.ENOSPC, ".log", times=1000)
    assert log.get(0).value == b"pre-0-" * 8


# Faults of a *sync* (or of a roll, which syncs): StorageError, then writes refused until reopen.
SYNC_FAULTS = {
    "fdatasync EIO after a durable append": ("always", "fdatasync", E.EIO, ".log", "single"),
    "fdatasync EIO, group of 'every' records": ("every", "fdatasync", E.EIO, ".log", "batch"),
    "roll: fdatasync of the sealed segment": ("never", "fdatasync", E.EIO, ".log", "roll"),
    "roll: fsync of the sealed .index": ("always", "fsync", E.EIO, ".index", "roll"),
    "roll: fsync of the sealed .timeindex": ("always", "fsync", E.EIO, ".timeindex", "roll"),
    "roll: trim (ftruncate) of the sealed .index": ("always", "truncate", E.EIO, ".index",
                                                     "roll"),
    "roll: ENOSPC creating the next .log": ("always", "open", E.ENOSPC, ".log", "roll"),
    "roll: ENOSPC preallocating the next .timeindex": ("always", "truncate", E.ENOSPC,
                                                       ".timeindex", "roll-skip1"),
    "roll: fsync_dir of the new segment": ("always", "fsync_dir", E.EIO, None, "roll"),
    "flush(): fdatasync EIO": ("never", "fdatasync", E.EIO, ".log", "flush"),
}


@pytest.mark.parametrize("name", list(SYNC_FAULTS))
def test_failed_sync_raises_and_poisons_until_reopen(tmp_path, name):
    policy, op, code, suffix, how = SYNC_FAULTS[name]
    opts = {"fsync": policy}
    if policy == "every":
        opts["fsync_records"] = 3
    fs, path, log = _setup(tmp_path, **opts)
    durable = _values(log)  # flushed by _setup
    # "skip1": the first .timeindex truncate of a roll is the sealed file's trim; the next one
    # is the new segment's preallocation.
    skip = 1 if how.endswith("skip1") else 0
    fs.arm(op, code, suffix, skip=skip)
    with pytest.raises(StorageError) as e:
        if how == "single":
            log.append(b"y")
        elif how == "batch":
            log.append_batch([b"b1", b"b2", b"b3"])
        elif how.startswith("roll"):
            log.append(b"r" * 900)  # does not fit in the 1024-byte segment: rolls first
        elif how == "flush":
            log.append(b"unsynced")
            log.flush()
    assert fs.injected, "the fault was not reached"
    assert e.value.errno == code and isinstance(e.value, logstore.LogstoreError)
    fs.disarm()
    # Poisoned: every write is refused, also once the disk is fine again.
    with pytest.raises(StorageError, match="reopen"):
        log.append(b"refused")
    with pytest.raises(StorageError):
        log.append_batch([b"refused"])
    with pytest.raises(StorageError):
        log.flush()
    assert log.get(0).value == durable[0]  # reads still work
    assert _values(log)[: len(durable)] == durable
    log.close()
    values, report = _reopen_values(path)
    assert not report.clean  # no clean-shutdown marker after a failure: recovery ran
    assert values[: len(durable)] == durable  # nothing durable lost
    assert all(v in durable or v in (b"y", b"b1", b"b2", b"b3", b"r" * 900, b"unsynced")
               for v in values)
    with logstore.Log.open(path) as again:  # usable again
        assert again.append(b"works") == len(values)


def test_failed_background_fsync_poisons(tmp_path):
    """fsync="every" with fsync_ms: the background flusher's fsync fails; the next append sees it."""
    import time

    fs, path, log = _setup(tmp_path, fsync="every", fsync_ms=5)
    fs.arm("fdatasync", E.EIO, ".log")
    log.append(b"z")
    deadline = time.monotonic() + 5
    while not fs.injected and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fs.injected
    time.sleep(0.02)
    with pytest.raises(StorageError):
        log.append(b"refused")
    log.close()
    values, report = _reopen_values(path)
    assert values[:5] == [b"pre-%d-" % i * 8 for i in range(5)]


# ------------------------------------------------------------------------------ close and open
CLOSE_FAULTS = {
    "trim of the active .index": ("truncate", E.EIO, ".index"),
    "fsync of the active .index": ("fsync", E.EIO, ".index"),
    "fsync of the active .timeindex": ("fsync", E.EIO, ".timeindex"),
    "clean-shutdown: pwrite ENOSPC": ("pwrite", E.ENOSPC, "clean-shutdown.tmp"),
    "clean-shutdown: fsync EIO": ("fsync", E.EIO, "clean-shutdown.tmp"),
    "clean-shutdown: rename EIO": ("replace", E.EIO, "clean-shutdown"),
    "clean-shutdown: fsync_dir EIO": ("fsync_dir", E.EIO, None),
}


@pytest.mark.parametrize("name", list(CLOSE_FAULTS))
def test_failure_during_close_releases_the_log_and_loses_nothing(tmp_path, name):
    op, code, suffix = CLOSE_FAULTS[name]
    fs, path, log = _setup(tmp_path)
    before = _values(log)
    fs.arm(op, code, suffix)
    try:
        log.close()
    except StorageError:
        pass  # pinned by test_failure_during_close_raises_storage_error
    assert fs.injected, "the fault was not reached"
    assert log.closed
    with pytest.raises(logstore.LogClosedError):
        log.append(b"x")
    values, _ = _reopen_values(path)  # the lock was released; nothing acknowledged lost
    assert values == before


@pytest.mark.parametrize("name", list(CLOSE_FAULTS))
def test_failure_during_close_raises_storage_error(tmp_path, name):
    """Regression (found by this suite, fixed in 23530b6): these escaped as raw OSError."""
    op, code, suffix = CLOSE_FAULTS[name]
    fs, path, log = _setup(tmp_path)
    fs.arm(op, code, suffix)
    with pytest.raises(StorageError):
        log.close()


def test_close_reports_failed_final_fsync(tmp_path):
    """Regression (found by this suite, fixed in 23530b6): close() caught the StorageError of its
    final flush() and returned normally, although with fsync="never"/"every" close() is the
    durability point."""
    fs, path, log = _setup(tmp_path, fsync="never")
    log.append(b"only durable if close() says so")
    fs.arm("fdatasync", E.EIO, ".log")
    with pytest.raises(StorageError):
        log.close()


# Regression test for a fixed bug: a failed buffer write in flush() poisoned the log and the
# next close() silently discarded the acknowledged buffered appends.
def test_close_after_failed_buffer_flush_does_not_silently_drop_records(tmp_path):
    fs, path, log = _setup(tmp_path, fsync="never", write_buffer_bytes=4096)
    log.append(b"acknowledged-into-the-buffer")
    fs.arm("pwrite", E.ENOSPC, ".log")
    with pytest.raises(StorageError):
        log.flush()
    fs.disarm()
    try:
        log.close()
        closed_ok = True
    except StorageError:
        closed_ok = False
    values, _ = _reopen_values(path)
    assert not closed_ok or b"acknowledged-into-the-buffer" in values


def _fresh(d):
    pass  # no directory yet: Log.open creates it


def _closed_log(d):
    with logstore.Log.open(d) as log:
        for i in range(5):
            log.append(b"x%d" % i)


def _crashed_log_with_torn_tail(d):
    log = logstore.Log.open(d)
    for i in range(5):
        log.append(b"x%d" % i)
    seg = log.segments()[-1]["path"]
    log.abandon()  # the process "dies": no close()
    with open(seg, "ab") as f:
        f.write(b"LSTB" + b"\x01" * 100)


OPEN_FAULTS = {
    "new log: logstore.meta write ENOSPC": (_fresh, "pwrite", E.ENOSPC, ".tmp"),
    "new log: fsync_dir of the parent": (_fresh, "fsync_dir", E.EIO, None),
    "new log: first segment create ENOSPC": (_fresh, "open", E.ENOSPC, ".log"),
    "clean reopen: unlink clean-shutdown EIO": (_closed_log, "unlink", E.EIO, "clean-shutdown"),
    "clean reopen: fsync_dir after the unlink": (_closed_log, "fsync_dir", E.EIO, None),
    "clean reopen: index preallocation ENOSPC": (_closed_log, "truncate", E.ENOSPC, ".index"),
    "recovery: truncate of the torn tail EIO": (_crashed_log_with_torn_tail, "truncate", E.EIO,
                                                ".log"),
    "recovery: fdatasync after the truncate": (_crashed_log_with_torn_tail, "fdatasync", E.EIO,
                                               ".log"),
}


@pytest.mark.parametrize("name", list(OPEN_FAULTS))
def test_failure_during_open_then_reopen_works(tmp_path, name):
    prepare, op, code, suffix = OPEN_FAULTS[name]
    path = str(tmp_path / "log")
    prepare(path)
    before = None
    if os.path.exists(os.path.join(path, "logstore.meta")):
        with logstore.Log.open(path, readonly=True) as ro:
            before = _values(ro)
    fs = FaultFS()
    fs.arm(op, code, suffix)
    with pytest.raises(StorageError) as e:
        logstore.Log.open(path, fs=fs)
    assert fs.injected and e.value.errno == code
    with logstore.Log.open(path) as log:  # the lock was released; recovery runs again
        assert _values(log) == (before or [])
        assert log.append(b"y") == len(before or [])


@pytest.mark.parametrize("name", list(OPEN_FAULTS))
def test_failure_during_open_raises_storage_error(tmp_path, name):
    """Regression (found by this suite, fixed in 23530b6): these escaped as raw OSError."""
    prepare, op, code, suffix = OPEN_FAULTS[name]
    path = str(tmp_path / "log")
    prepare(path)
    fs = FaultFS()
    fs.arm(op, code, suffix)
    with pytest.raises(StorageError):
        logstore.Log.open(path, fs=fs)
