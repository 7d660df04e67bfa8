"""Write and fsync failures through the I/O seam, group commit, and cross-process readers."""

import errno
import os
import subprocess
import sys
import threading
import time

import pytest

import logstore
from logstore import StorageError
from logstore.fs import FileSystem


class FaultyFS(FileSystem):
    """Counts fdatasyncs; fails the next write or fsync on request."""

    def __init__(self, sync_delay=0.0):
        self.fail_write = None  # errno to raise on the next pwrite to a .log file
        self.partial = False  # write half the data before failing
        self.fail_sync = None
        self.syncs = 0
        self.sync_delay = sync_delay
        self.log_fds = set()

    def open(self, path, flags, mode=0o644):
        fd = super().open(path, flags, mode)
        if path.endswith(".log"):
            self.log_fds.add(fd)
        return fd

    def pwrite(self, fd, data, offset):
        if self.fail_write is not None and fd in self.log_fds:
            code, self.fail_write = self.fail_write, None
            if self.partial:
                os.pwrite(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(code, os.strerror(code))
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd):
        if self.fail_sync is not None:
            code = self.fail_sync
            raise OSError(code, os.strerror(code))
        self.syncs += 1
        if self.sync_delay:
            time.sleep(self.sync_delay)
        super().fdatasync(fd)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EFBIG])
def test_failed_write_removes_partial_batch_and_log_stays_usable(tmp_path, code, partial):
    fs = FaultyFS()
    path = str(tmp_path / "log")
    log = logstore.Log.open(path, fs=fs)
    log.append_batch([b"a", b"b"])
    size_before = log.segments()[-1]["size"]  # the data's end (the file is preallocated)
    fs.fail_write, fs.partial = code, partial
    with pytest.raises(StorageError) as e:
        log.append_batch([b"c" * 1000, b"d"])
    assert e.value.errno == code
    assert isinstance(e.value, logstore.LogstoreError)
    # The partial batch is cut off (and the preallocated space with it).
    assert os.path.getsize(log.segments()[-1]["path"]) == size_before
    assert log.end_offset == 2
    assert log.append(b"e") == 2  # no offset was consumed by the failed append
    assert [r.value for r in log.replay()] == [b"a", b"b", b"e"]
    log.close()
    with logstore.Log.open(path) as again:
        assert [r.value for r in again.replay()] == [b"a", b"b", b"e"]


def test_failed_fsync_poisons_writes_until_reopen(tmp_path):
    fs = FaultyFS()
    path = str(tmp_path / "log")
    log = logstore.Log.open(path, fs=fs)
    log.append(b"durable")
    fs.fail_sync = errno.EIO
    with pytest.raises(StorageError):
        log.append(b"maybe")  # written, but never acknowledged as durable
    fs.fail_sync = None
    with pytest.raises(StorageError, match="reopen"):
        log.append(b"refused")  # fsyncgate: no pretending after a failed fsync
    with pytest.raises(StorageError):
        log.flush()
    assert log.get(0).value == b"durable"  # reads still work
    log.close()  # no clean-shutdown marker after a failure: next open recovers
    with logstore.Log.open(path) as again:
        assert not again.recovery_report.clean
        assert again.get(0).value == b"durable"
        n = again.end_offset
        assert again.append(b"works again") == n


def test_failed_fsync_under_periodic_policy(tmp_path):
    fs = FaultyFS()
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs, fsync="every", fsync_records=2)
    log.append(b"1")
    fs.fail_sync = errno.EIO
    with pytest.raises(StorageError):
        log.append(b"2")
    with pytest.raises(StorageError):
        log.append(b"3")
    log.close()


def test_group_commit_shares_fsyncs(tmp_path):
    fs = FaultyFS(sync_delay=0.005)
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs)
    threads, per_thread = 6, 40
    offsets = []
    lock = threading.Lock()

    def work(t):
        for i in range(per_thread):
            off = log.append(b"%d-%d" % (t, i))
            assert log.durable_offset > off  # durable before append returned
            with lock:
                offsets.append(off)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = threads * per_thread
    assert sorted(offsets) == list(range(total))
    assert fs.syncs < total * 0.6, f"{fs.syncs} fsyncs for {total} concurrent durable appends"
    log.close()


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt arriving in the syncing thread."""


class HeldSyncFS(FaultyFS):
    """Holds the next fdatasync (``hold_next``) until ``release`` is set, signalling ``entered``
    when it starts; then raises ``raise_after`` if set, else syncs."""

    def __init__(self, raise_after=None):
        super().__init__()
        self.hold_next = False
        self.raise_after = raise_after
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd):
        if self.hold_next:
            self.hold_next = False
            self.entered.set()
            self.release.wait(10)
            if self.raise_after is not None:
                raise self.raise_after
        super().fdatasync(fd)


def test_interrupted_group_commit_leader_hands_over(tmp_path):
    """A leader interrupted inside fdatasync must not strand the appenders parked behind it:
    one of them leads the next fsync, and nothing is reported durable that was not synced."""
    fs = HeldSyncFS(raise_after=Interrupted())
    entered, release = fs.entered, fs.release
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs)
    log.append(b"before")
    fs.hold_next = True
    outcome = {}

    def leader():
        try:
            log.append(b"leader")
        except Interrupted:
            outcome["leader"] = "interrupted"

    def follower(name):
        outcome[name] = log.append(name.encode())

    t0 = threading.Thread(target=leader)
    t0.start()
    assert entered.wait(10)
    followers = [threading.Thread(target=follower, args=(f"f{i}",)) for i in range(3)]
    for t in followers:
        t.start()
    deadline = time.time() + 10
    while log._sync.waiting < 3 and time.time() < deadline:
        time.sleep(0.001)
    assert log._sync.waiting == 3  # parked behind the leader
    assert log.durable_offset == 1
    release.set()
    for t in [t0] + followers:
        t.join(10)
        assert not t.is_alive(), "an appender was left waiting for an fsync that never ran"
    assert outcome["leader"] == "interrupted"
    assert sorted(outcome[f"f{i}"] for i in range(3)) == [2, 3, 4]
    assert log.durable_offset == 5  # the next leader's fsync covered everything written
    log.close()
    with logstore.Log.open(str(tmp_path / "log")) as again:
        values = [r.value for r in again.read(0)]
        assert values[:2] == [b"before", b"leader"]
        assert sorted(values[2:]) == [b"f0", b"f1", b"f2"]


def test_appender_interrupted_while_parked_leaves_the_others_working(tmp_path):
    """A KeyboardInterrupt in the main thread while it waits for another thread's fsync: it
    leaves the queue of waiters, its record is still written (durable with the next fsync),
    and the other waiters are released as usual."""
    import signal

    fs = HeldSyncFS()
    entered, release = fs.entered, fs.release
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs)
    log.append(b"0")
    fs.hold_next = True
    leader = threading.Thread(target=log.append, args=(b"leader",))
    leader.start()
    assert entered.wait(10)
    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(log.append(b"waiter")))
    waiter.start()

    def interrupt_when_parked():
        deadline = time.time() + 10
        while log._sync.waiting < 2 and time.time() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt_when_parked)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        log.append(b"main")  # parks behind the leader, then the interrupt arrives
    killer.join(10)
    assert log._sync.waiting == 1  # only the other waiter is still parked
    release.set()
    leader.join(10)
    waiter.join(10)
    assert not leader.is_alive() and not waiter.is_alive()
    assert waiter_result and log.durable_offset == log.end_offset == 4
    log.close()
    with logstore.Log.open(str(tmp_path / "log")) as again:
        assert sorted(r.value for r in again.read(0)) == [b"0", b"leader", b"main", b"waiter"]


def test_fsync_always_syncs_each_append(tmp_path):
    fs = FaultyFS()
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs)
    before = fs.syncs
    for i in range(5):
        log.append(b"x")
    assert fs.syncs - before == 5
    log.close()


def test_fsync_never_does_not_sync_appends(tmp_path):
    fs = FaultyFS()
    log = logstore.Log.open(str(tmp_path / "log"), fs=fs, fsync="never")
    before = fs.syncs
    for i in range(50):
        log.append(b"x")
    assert fs.syncs == before
    log.flush()
    assert fs.syncs == before + 1
    log.close()


READER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import logstore
ro = logstore.Log.open(sys.argv[1], readonly=True)
print("open", ro.end_offset, flush=True)
deadline = time.time() + 30
seen = 0
while seen < int(sys.argv[3]) and time.time() < deadline:
    for r in ro.read(seen):
        assert r.offset == seen and r.value == b"m%d" % seen, r
        seen += 1
    time.sleep(0.002)
print("seen", seen, ro.end_offset, len(ro.segments()), flush=True)
"""


def test_readonly_reader_in_other_process_follows_appends_and_rolls(tmp_path):
    path = str(tmp_path / "log")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = logstore.Log.open(path, segment_bytes=2048)
    log.append(b"m0")
    n = 400
    proc = subprocess.Popen([sys.executable, "-c", READER, path, root, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().split() == ["open", "1"]
    for i in range(1, n):
        if i % 50 == 0:
            log.append_batch([b"m%d" % j for j in range(i, i + 1)])
        else:
            log.append(b"m%d" % i)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _, seen, end, segments = out.split()
    assert int(seen) == n and int(end) == n and int(segments) > 3
    log.close()


def test_readonly_sees_nothing_torn(tmp_path):
    """A batch being written (partially present) is invisible to read-only openers."""
    path = str(tmp_path / "log")
    log = logstore.Log.open(path)
    log.append(b"whole")
    seg = log.segments()[-1]["path"]
    log.close()
    from logstore.format import encode

    framed = encode.frame(encode.prepare_one(b"torn" * 100, None, None, 1), 1)
    with open(seg, "ab") as f:
        f.write(bytes(framed)[:100])
    ro = logstore.Log.open(path, readonly=True)
    assert ro.end_offset == 1
    assert [r.value for r in ro.replay()] == [b"whole"]
    with open(seg, "ab") as f:
        f.write(bytes(framed)[100:])
    assert ro.end_offset == 2 and ro.get(1).value == b"torn" * 100
    ro.close()
