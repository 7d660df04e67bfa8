"""Simulated power loss at every seam operation, and fsync honesty (see tests/simfs.py).

A deterministic single-threaded workload (single appends, batches, a batch bigger than a
segment, flushes, clean close + reopen) runs over :class:`SimFS`, which loses power after the
K-th durability-relevant operation. The directory is rebuilt from what was durable (plus damaged
versions of what was not) and reopened with the normal FileSystem. Then:

* the log always reopens (power loss cannot damage fsynced bytes in this model);
* every record the engine claimed durable (an ``append`` that returned under
  ``fsync="always"``, everything below ``log.durable_offset``, everything before a returned
  ``flush()``/``close()``) is there, byte for byte;
* every record there is exactly the one written at its offset (nothing torn, nothing invented),
  offsets are dense, and the log is usable (append, close, reopen).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import shutil
import tempfile
import threading
import time

import pytest

import logstore
from logstore.fs import FileSystem
from simfs import ALL_MODES, SUFFIX_MODES, Crash, SimFS, damage

SEGMENT_BYTES = 1024


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory on tmpfs when there is one: durability is simulated by SimFS, and
    the real fsyncs of the many reopens would dominate the run time on a disk."""
    base = "/dev/shm"
    if not (os.path.isdir(base) and os.access(base, os.W_OK)):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="logstore-powerloss-", dir=base)
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------ model + workload
def record_for(rng: random.Random, offset: int):
    """A record that names its own offset: anything else at that offset is garbage."""
    unit = b"%d:" % offset
    if rng.random() < 0.05:
        return unit, None, {}
    key = unit if rng.random() < 0.5 else None
    headers = {"o": unit} if rng.random() < 0.3 else {}
    return key, unit * rng.randint(1, 40), headers


def digest(key, value, headers) -> str:
    h = hashlib.sha1(repr((key, value, sorted(headers.items()))).encode())
    return h.hexdigest()


class Model:
    """What the workload did and what the engine promised."""

    def __init__(self, policy: str):
        self.policy = policy
        self.attempted = {}  # offset -> digest of the record written (or being written) there
        self.next = 0
        self.durable = 0  # every offset below this was promised durable
        self.log = None

    def opened(self, log) -> None:
        end = log.end_offset
        assert end >= self.durable, f"reopen lost promised records: end {end} < {self.durable}"
        for off in [o for o in self.attempted if o >= end]:
            del self.attempted[off]  # never acknowledged, now gone: the offset will be reused
        self.next = end
        self.log = log
        self.claim()

    def claim(self) -> None:
        self.durable = max(self.durable, self.log.durable_offset)

    def appended(self, n: int) -> None:
        self.next += n
        if self.policy == "always":
            self.durable = self.next
        self.claim()


def options(policy: str, compression: str = "none"):
    opts = dict(fsync=policy, segment_bytes=SEGMENT_BYTES, index_interval_bytes=128,
                compression=compression)
    if policy == "every":
        opts["fsync_records"] = 3
    return opts


def workload(root: str, fs, model: Model, seed: int, steps: int, compression: str = "none"):
    """Run the workload; returns normally or raises Crash (the log is then in model.log)."""
    rng = random.Random(seed)
    opts = options(model.policy, compression)
    model.log = None
    model.opened(logstore.Log.open(root, fs=fs, **opts))
    for _ in range(steps):
        log = model.log
        r = rng.random()
        if r < 0.45:
            key, value, headers = record_for(rng, model.next)
            model.attempted[model.next] = digest(key, value, headers)
            off = log.append(value, key=key, headers=headers or None)
            assert off == model.next
            model.appended(1)
        elif r < 0.82:
            n = 30 if rng.random() < 0.1 else rng.randint(1, 8)  # 30: bigger than a segment
            recs = [record_for(rng, model.next + i) for i in range(n)]
            for i, (k, v, h) in enumerate(recs):
                model.attempted[model.next + i] = digest(k, v, h)
            keys = [k for k, _, _ in recs]
            offs = log.append_batch([v for _, v, _ in recs],
                                    keys=keys if any(k is not None for k in keys) else None,
                                    headers=[h for _, _, h in recs])
            assert offs == range(model.next, model.next + n)
            model.appended(n)
        elif r < 0.92:
            log.flush()
            model.durable = model.next
        else:
            log.close()
            model.durable = model.next
            model.opened(logstore.Log.open(root, fs=fs, **opts))
    model.log.close()
    model.durable = model.next


def check_reopen(root: str, model: Model, label: str) -> int:
    """Reopen with the real FileSystem and check every invariant; returns end_offset."""
    if os.path.exists(os.path.join(root, "logstore.meta")):
        with logstore.Log.open(root, readonly=True) as ro:  # before recovery: no garbage either
            _check_records(ro, model, label + " (read-only)", promised=False)
    try:
        log = logstore.Log.open(root, segment_bytes=SEGMENT_BYTES)
    except logstore.LogstoreError as e:
        raise AssertionError(f"{label}: the log did not reopen: {type(e).__name__}: {e}") from e
    try:
        end = _check_records(log, model, label, promised=True)
        off = log.append(b"after-crash")  # usable
        assert off == end, label
    finally:
        log.close()
    with logstore.Log.open(root) as again:
        assert again.recovery_report.clean, label
        assert again.get(end).value == b"after-crash", label
        assert again.end_offset == end + 1, label
    return end


def _check_records(log, model: Model, label: str, promised: bool) -> int:
    end = log.end_offset
    if promised:
        assert end >= model.durable, (
            f"{label}: records promised durable were lost: end_offset {end} < {model.durable}")
    expect = 0
    for rec in log.replay():
        assert rec.offset == expect, f"{label}: offsets not dense at {expect}"
        expect += 1
        want = model.attempted.get(rec.offset)
        assert want is not None, f"{label}: record {rec.offset} was never written: {rec!r:.200}"
        assert digest(rec.key, rec.value, rec.headers) == want, (
            f"{label}: record {rec.offset} is not what was written: {rec!r:.200}")
    assert expect == end, label
    rng = random.Random(end)
    for off in (rng.randrange(end) for _ in range(min(end, 20))):
        rec = log.get(off)
        assert digest(rec.key, rec.value, rec.headers) == model.attempted[off], label
    return end


def crash_run(tmp_path, policy: str, seed: int, steps: int, k: int, modes, mode_seed: int,
              compression: str = "none"):
    """One crash at operation ``k``; returns (model, crashed?, what materialize did)."""
    root = str(tmp_path / f"log-{policy}-{seed}-{k}")
    fs = SimFS(root, crash_after=k)
    model = Model(policy)
    try:
        workload(root, fs, model, seed, steps, compression)
        crashed = False
    except Crash:
        crashed = True
    fs.abandon(model.log)
    done = fs.materialize(random.Random(mode_seed), modes)
    return root, model, crashed, done, fs.ops


def count_ops(tmp_path, policy: str, seed: int, steps: int, compression: str = "none") -> int:
    root = str(tmp_path / f"count-{policy}-{seed}")
    fs = SimFS(root)
    workload(root, fs, Model(policy), seed, steps, compression)
    return fs.ops


# ------------------------------------------------------------------------------ the model itself
def test_simfs_model_basics(tmp_path):
    """The simulator keeps exactly what was made durable (checked with mode "drop")."""
    root = str(tmp_path / "d")
    os.mkdir(root)
    fs = SimFS(root)
    synced = fs.open(os.path.join(root, "synced"), os.O_RDWR | os.O_CREAT)
    fs.pwrite(synced, b"durable", 0)
    fs.fdatasync(synced)
    fs.pwrite(synced, b"+volatile", 7)
    unsynced_name = fs.open(os.path.join(root, "new-after-dirsync"), os.O_RDWR | os.O_CREAT)
    fs.close(unsynced_name)
    fs.fsync_dir(root)  # "synced" and "new-after-dirsync" entries durable
    fs.close(fs.open(os.path.join(root, "created-late"), os.O_RDWR | os.O_CREAT))
    fs.unlink(os.path.join(root, "new-after-dirsync"))  # not dir-fsynced: undone
    tmp = fs.open(os.path.join(root, "a.tmp"), os.O_RDWR | os.O_CREAT)
    fs.pwrite(tmp, b"renamed", 0)
    fs.fsync(tmp)
    fs.close(tmp)
    fs.replace(os.path.join(root, "a.tmp"), os.path.join(root, "synced"))  # not dir-fsynced
    fs.crash()
    with pytest.raises(Crash):
        fs.pwrite(synced, b"x", 0)
    fs.abandon(None)
    fs.materialize(random.Random(0), ["drop"])
    assert sorted(os.listdir(root)) == ["new-after-dirsync", "synced"]
    assert open(os.path.join(root, "synced"), "rb").read() == b"durable"
    assert open(os.path.join(root, "new-after-dirsync"), "rb").read() == b""


def test_simfs_root_not_durable_until_parent_synced(tmp_path):
    root = str(tmp_path / "r")
    fs = SimFS(root)
    fs.mkdir(root)
    fs.crash()
    fs.abandon(None)
    fs.materialize(random.Random(0))
    assert not os.path.exists(root)


def test_damage_never_touches_durable_bytes():
    rng = random.Random(5)
    for _ in range(2000):
        d = rng.randbytes(rng.randint(0, 300))
        v = d + rng.randbytes(rng.randint(0, 9000))
        out, mode = damage(d, v, rng, ALL_MODES)
        assert out[: len(d)] == d, mode
        assert len(out) <= len(v), mode
        if mode in SUFFIX_MODES and mode not in ("zero_tail", "garbage_tail"):
            assert v.startswith(out), mode  # a prefix of what was written


# ------------------------------------------------------------------------------ crash sweeps
@pytest.mark.parametrize("policy, compression, modes, stride", [
    ("always", "none", ALL_MODES, 1),  # at most one unsynced batch: even a zeroed page is a tail
    ("never", "none", SUFFIX_MODES, 1),
    ("always", "zstd", ALL_MODES, 3),
    ("every", "zstd", SUFFIX_MODES, 3),
])
def test_power_loss_at_every_operation(fast_tmp, policy, compression, modes, stride):
    tmp_path = fast_tmp
    seed, steps = 11, 26
    total = count_ops(tmp_path, policy, seed, steps, compression)
    assert total > 60, total  # rolls, flushes, a reopen: many crash points
    stats = {"crashed": 0, "damaged_files": 0, "promised": 0}
    points = sorted(set(range(stride - 1, total + 1, stride)) | {0, total})
    for k in points:
        root, model, crashed, done, _ = crash_run(tmp_path, policy, seed, steps, k, modes,
                                                  mode_seed=k * 7919 + seed, compression=compression)
        stats["crashed"] += crashed
        stats["damaged_files"] += sum(1 for d in done if d[1] not in ("synced", "drop"))
        stats["promised"] += model.durable
        check_reopen(root, model, f"{policy}/{compression} crash after op {k}/{total} {done}")
    assert stats["crashed"] == len(points) - 1  # k == total: the workload finished
    assert stats["damaged_files"] > len(points) // 4  # unsynced data really was torn/zeroed/kept
    assert stats["promised"] > 0


def test_power_loss_random_points_random_workloads(fast_tmp):
    tmp_path = fast_tmp
    """A few hundred (workload seed, crash point) pairs over all policies and compressions."""
    rng = random.Random(2024)
    for i in range(120):
        policy = rng.choice(["always", "never", "every"])
        compression = rng.choice(["none", "zstd"])
        seed = rng.randrange(10**6)
        steps = rng.randint(5, 40)
        k = rng.randint(0, 60 + 6 * steps)
        modes = ALL_MODES if policy == "always" else SUFFIX_MODES
        root, model, crashed, done, _ = crash_run(tmp_path, policy, seed, steps, k, modes,
                                                  rng.randrange(10**6), compression)
        check_reopen(root, model, f"#{i} {policy}/{compression} seed {seed} steps {steps} "
                                  f"k {k}: {done}")


def test_power_loss_during_recovery(fast_tmp):
    tmp_path = fast_tmp
    """Crash, then crash again while the next open recovers (and appends), then reopen."""
    rng = random.Random(77)
    for i in range(60):
        policy = rng.choice(["always", "never"])
        modes = ALL_MODES if policy == "always" else SUFFIX_MODES
        seed = rng.randrange(10**6)
        root, model, _, done1, _ = crash_run(tmp_path, policy, seed, 20,
                                             rng.randint(20, 120), modes, rng.randrange(10**6))
        # Second life: recovery runs through a SimFS that loses power after k2 operations.
        fs2 = SimFS(root, crash_after=rng.randint(0, 25))
        try:
            workload(root, fs2, model, seed + 1, 6)
        except Crash:
            pass
        fs2.abandon(model.log)
        done2 = fs2.materialize(random.Random(rng.randrange(10**6)), modes)
        check_reopen(root, model, f"#{i} {policy}: {done1} then {done2}")


# ------------------------------------------------------------------------------ known gaps
def test_process_crash_then_power_loss_keeps_what_reopen_called_durable(tmp_path):
    """Regression (found by this suite, fixed in 23530b6): after a process crash the reopened log
    called recovered-but-unsynced records durable (durable_offset, and visible to readers under
    fsync="always") without fsyncing them; a power loss then lost them and reused the offsets."""
    root = str(tmp_path / "log")
    fs = SimFS(root)
    log = logstore.Log.open(root, fs=fs, fsync="never")
    log.append_batch([b"written-not-synced-%d" % i for i in range(5)])
    # The process dies (SIGKILL): no close(); the machine (page cache) keeps running.
    log.abandon()
    log = logstore.Log.open(root, fs=fs, fsync="always")  # recovery: finds the 5 records
    promised = log.durable_offset
    seen = [r.value for r in log.replay()]  # under "always", readers see only durable records
    assert promised == 5 and len(seen) == 5
    fs.abandon(log)  # ...and now the power goes out
    fs.materialize(random.Random(0), ["drop"])
    with logstore.Log.open(root) as after:
        assert after.end_offset >= promised, (
            f"durable_offset was {promised} and readers saw {len(seen)} records, "
            f"after power loss end_offset is {after.end_offset}")


# Regressions (found by this suite, fixed in 23530b6): power loss with out-of-order write-back
# leaves a zero-filled page inside the unsynced tail of the active segment with valid (never
# fsynced, never acknowledged) batches after it; Log.open refused with CorruptLogError ("valid
# batches follow it") instead of truncating at the hole.


def _zero_page(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes(4096))


def test_power_loss_hole_in_unsynced_tail_never_policy(tmp_path):
    root = str(tmp_path / "log")
    fs = SimFS(root)
    log = logstore.Log.open(root, fs=fs, fsync="never", segment_bytes=1 << 20)
    log.append(b"synced")
    log.flush()
    promised = log.durable_offset
    for i in range(200):
        log.append(b"v%05d" % i * 40)  # ~48 KiB unsynced: 12 pages
    seg = os.path.join(root, "00000000000000000000.log")
    assert len(fs.state_of_path(seg).durable) < 8192 < os.path.getsize(seg) - 16384
    fs.abandon(log)
    fs.materialize(random.Random(0), ["keep"])  # all unsynced pages written back...
    _zero_page(seg, 8192)  # ...except the third one (an unwritten extent reads as zeros)
    with logstore.Log.open(root) as after:  # was: CorruptLogError
        assert after.end_offset >= promised
        assert after.get(0).value == b"synced"


def test_power_loss_hole_between_concurrent_durable_appends(tmp_path):
    """The same under the default fsync="always": two appenders in one group-commit window."""
    root = str(tmp_path / "log")

    class GateFS(SimFS):
        """Power fails during the first group-commit fdatasync that has two batches to sync."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.second_write = threading.Event()
            self.armed = False
            self.log_writes = 0

        def pwrite(self, fd, data, offset):
            super().pwrite(fd, data, offset)
            if self.armed and self._tracked(fd)[1].endswith(".log"):
                self.log_writes += 1
                if self.log_writes == 2:
                    self.second_write.set()

        def fdatasync(self, fd):
            if self.armed:
                self.second_write.wait(10)
                self.crash()
            super().fdatasync(fd)

    fs = GateFS(root)
    log = logstore.Log.open(root, fs=fs, fsync="always", segment_bytes=1 << 20)
    assert log.append(b"acknowledged") == 0
    fs.armed = True
    results = []

    def appender(value):
        try:
            results.append(log.append(value))
        except Crash:
            results.append("crash")
        except logstore.LogstoreError:  # t2, taking the lead after t1's crash: log abandoned
            results.append("abandoned")

    # Batch A spans pages 0-2, batch B starts on page 2: both written, neither synced.
    t1 = threading.Thread(target=appender, args=(b"A" * 8100,), daemon=True)
    t1.start()
    time.sleep(0.05)  # t1 wrote A and is inside fdatasync, waiting for the second write
    t2 = threading.Thread(target=appender, args=(b"B" * 100,), daemon=True)
    t2.start()
    t1.join(10)
    fs.abandon(log)  # t2 crashes too or finds the log abandoned: the machine is dead
    assert results and results[0] == "crash"  # neither append was acknowledged
    seg = os.path.join(root, "00000000000000000000.log")
    fs.materialize(random.Random(0), ["keep"])
    assert os.path.getsize(seg) > 8192
    # Write-back reached pages 0 and 2 but not page 1 (the middle of A): zeros there.
    _zero_page(seg, 4096)
    with logstore.Log.open(root) as after:  # was: CorruptLogError
        assert after.end_offset >= 1
        assert after.get(0).value == b"acknowledged"


def test_zeroed_sector_in_fsynced_data_is_not_truncated_silently(tmp_path):
    root = str(tmp_path / "log")
    log = logstore.Log.open(root, fsync="always")
    for i in range(100):
        log.append(b"acked-%03d-" % i * 8)  # every one fsynced before append returned
    seg = log.segments()[-1]["path"]
    log.abandon()  # the process dies; nothing is lost: all of it was fsynced
    with open(seg, "r+b") as f:  # later, the disk returns zeros for one sector
        f.seek(4096)
        f.write(bytes(512))
    try:
        with logstore.Log.open(root) as after:
            assert after.end_offset == 100, (
                f"{100 - after.end_offset} acknowledged records dropped silently: "
                f"{after.recovery_report.summary()}")
    except logstore.CorruptLogError:
        pass  # what README promises: refuse, change nothing


# ------------------------------------------------------------------------------ fsync honesty
class HonestyChecker:
    """Wraps a SimFS journal: after an acknowledged append, were its bytes synced, and its
    segment's directory entry?"""

    def __init__(self, fs: SimFS):
        self.fs = fs
        self.local = threading.local()

    def mark(self) -> None:
        with self.fs._mutex:
            self.local.start = len(self.fs.journal)

    def check(self, label: str) -> dict:
        """Called right after append returned in this thread."""
        fs = self.fs
        me = threading.get_ident()
        with fs._mutex:
            events = fs.journal[self.local.start:]
            now = fs._seq
        writes = [e for e in events if e.thread == me and e.op == "pwrite"
                  and e.path.endswith(".log")]
        assert writes, f"{label}: no write of the batch in this thread"
        w = writes[-1]
        syncs = [e for e in fs.journal if e.op in ("fdatasync", "fsync") and e.state is w.state
                 and e.seq > w.end and e.end is not None and e.end <= now]
        assert syncs, f"{label}: append returned but {os.path.basename(w.path)} was not " \
                      f"fsynced after its write {w}"
        # The bytes are in the durable content, and the file's name is durable in the directory.
        assert w.state.durable[w.pos:w.pos + len(w.data)] == w.data, label
        name = os.path.basename(w.path)
        assert fs.entry_durable(name), f"{label}: {name} is not durable in the directory"
        created = [e for e in events if e.thread == me and e.op == "create"
                   and e.path.endswith(".log")]
        for c in created:
            dsyncs = [e for e in fs.journal if e.op == "fsync_dir" and e.path == fs.root
                      and e.seq > c.end and e.end is not None and e.end <= now]
            assert dsyncs, f"{label}: new segment {c.path} created without a directory fsync"
        return {"syncs": len(syncs), "rolls": len(created)}


def test_fsync_honesty_single_thread(tmp_path):
    root = str(tmp_path / "log")
    fs = SimFS(root, journal=True)
    checker = HonestyChecker(fs)
    log = logstore.Log.open(root, fs=fs, fsync="always", segment_bytes=1024)
    rng = random.Random(3)
    rolls = 0
    fdatasyncs_before = sum(1 for e in fs.journal if e.op == "fdatasync")
    n_appends = 120
    for i in range(n_appends):
        checker.mark()
        if rng.random() < 0.3:
            offs = log.append_batch([b"b%d" % i * rng.randint(1, 80)] * rng.randint(1, 5))
            assert log.durable_offset >= offs.stop
        else:
            off = log.append(b"s%d" % i * rng.randint(1, 80))
            assert log.durable_offset > off
        rolls += checker.check(f"append {i}")["rolls"]
        # Nothing of any segment is unsynced after an acknowledged append (single thread).
        assert not {n: s for n, s in fs.unsynced().items() if n.endswith(".log")}, i
    assert rolls >= 5
    syncs = sum(1 for e in fs.journal if e.op == "fdatasync") - fdatasyncs_before
    assert syncs >= n_appends  # one per append (plus one per roll for the sealed segment)
    log.close()


def test_fsync_honesty_concurrent_group_commit(tmp_path):
    root = str(tmp_path / "log")
    fs = SimFS(root, journal=True)
    checker = HonestyChecker(fs)
    log = logstore.Log.open(root, fs=fs, fsync="always", segment_bytes=2048)
    errors = []
    totals = {"appends": 0}
    lock = threading.Lock()

    def work(t):
        rng = random.Random(t)
        try:
            for i in range(40):
                checker.mark()
                if rng.random() < 0.3:
                    log.append_batch([b"t%d-%d" % (t, i) * 20] * rng.randint(1, 4))
                else:
                    log.append(b"t%d-%d" % (t, i) * rng.randint(1, 30))
                checker.check(f"thread {t} append {i}")
                with lock:
                    totals["appends"] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert totals["appends"] == 160
    syncs = sum(1 for e in fs.journal if e.op == "fdatasync")
    assert syncs <= 160  # group commit may share fsyncs; never more than one per append
    log.close()


def test_fsync_honesty_counts_through_plain_seam(tmp_path):
    """The same claim counted with a minimal FileSystem subclass (fd -> path mapping only)."""

    class Counting(FileSystem):
        def __init__(self):
            self.paths = {}
            self.dirty = set()  # .log paths written since their last fsync
            self.created = set()  # .log paths created since the last directory fsync
            self.lock = threading.Lock()

        def open(self, path, flags, mode=0o644):
            existed = os.path.exists(path)
            fd = super().open(path, flags, mode)
            with self.lock:
                self.paths[fd] = path
                if path.endswith(".log") and not existed:
                    self.created.add(path)
            return fd

        def dup(self, fd):
            new = super().dup(fd)
            self.paths[new] = self.paths.get(fd)
            return new

        def pwrite(self, fd, data, offset):
            super().pwrite(fd, data, offset)
            if str(self.paths.get(fd)).endswith(".log"):
                self.dirty.add(self.paths[fd])

        def fdatasync(self, fd):
            path = self.paths.get(fd)
            super().fdatasync(fd)
            self.dirty.discard(path)

        def fsync(self, fd):
            path = self.paths.get(fd)
            super().fsync(fd)
            self.dirty.discard(path)

        def fsync_dir(self, path):
            super().fsync_dir(path)
            self.created.clear()

    fs = Counting()
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs, segment_bytes=1024)
    for i in range(200):
        log.append(b"x%d" % i * 10)
        assert not fs.dirty, f"append {i} returned with unsynced segment writes {fs.dirty}"
        assert not fs.created, f"append {i} returned before the new segment's directory fsync"
    assert len(log.segments()) > 5
    log.close()
