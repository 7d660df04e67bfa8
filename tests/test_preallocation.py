"""The active segment's preallocated tail (segments/FORMAT.md, "Preallocated tail").

A syncing writer (fsync "always"/"every") extends the active segment's file ahead of its data
so that each fdatasync need not commit a new file size; an fsync="never" writer reserves space
ahead of its data (posix_fallocate) and copies batches into a write mapping of it. The zero bytes past the data must never
be read as data or reported as damage, must be cut when the segment is sealed or the log is
closed, and after a crash recovery cuts them and says so.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

import logstore
from logstore import Log
from helpers import run as cli
from test_faults import FaultyFS  # the .log-fd tracking test double


def file_size(log: Log, i: int = -1) -> int:
    return os.path.getsize(log.segments()[i]["path"])


def data_size(log: Log, i: int = -1) -> int:
    return log.segments()[i]["size"]


def zero_tail(path: str, data_end: int) -> bytes:
    with open(path, "rb") as f:
        return f.read()[data_end:]


def abandon(log: Log) -> None:
    """What a killed process leaves: no close(), no marker; the lock dies with the fds."""
    log.abandon()


@pytest.mark.parametrize("options", [{"fsync": "always"}, {"fsync": "every", "fsync_records": 5}])
def test_a_syncing_writer_preallocates_and_seal_and_close_cut_it(tmp_path, options):
    path = str(tmp_path / "log")
    log = Log.open(path, segment_bytes=64 << 10, **options)
    for i in range(10):
        log.append(b"v%d" % i)
    # Extended ahead of the data, never past segment_bytes; the extra bytes are zeros.
    assert data_size(log) < file_size(log) == 64 << 10
    tail = zero_tail(log.segments()[-1]["path"], data_size(log))
    assert tail and not tail.strip(b"\0")
    while len(log.segments()) < 3:
        log.append_batch([b"x" * 1000] * 10)
    for i in range(len(log.segments()) - 1):  # sealed: exactly their batches
        assert file_size(log, i) == data_size(log, i)
    n = log.end_offset
    log.close()
    with Log.open(path, **options) as again:
        assert again.recovery_report.clean
        assert file_size(again) == data_size(again)  # close cut it
        assert again.end_offset == n and again.get(3).value == b"v3"


def test_fsync_never_writes_through_a_mapping_into_reserved_space(tmp_path):
    """fsync="never": batches are copied into a write mapping of space reserved with
    posix_fallocate (real blocks: a full disk fails the reservation, never the copy)."""
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="never", segment_bytes=256 << 10)
    reader = Log.open(path, readonly=True)
    try:
        for i in range(100):
            log.append(b"v%d" % i, key=b"k")
        active = log._segs.active
        assert active.writer.mapped_bytes  # the mapping path is the one taken
        seg_path = log.segments()[-1]["path"]
        assert data_size(log) < file_size(log) <= 256 << 10
        assert os.stat(seg_path).st_blocks * 512 >= file_size(log)  # reserved, not a hole
        tail = zero_tail(seg_path, data_size(log))
        assert tail and not tail.strip(b"\0")
        # Another opener reads the copied bytes (same page cache) and stops at the zeros.
        assert [r.value for r in reader.replay()] == [b"v%d" % i for i in range(100)]
        while len(log.segments()) < 3:
            log.append_batch([b"x" * 1000] * 20)
        for i in range(len(log.segments()) - 1):  # sealed: exactly their batches
            assert file_size(log, i) == data_size(log, i)
        n = log.end_offset
        assert reader.end_offset == n and reader.get(n - 1).value == b"x" * 1000
    finally:
        reader.close()
        log.close()
    with Log.open(path, fsync="never") as again:
        assert again.recovery_report.clean
        assert again.end_offset == n and again.get(42).value == b"v42"
        assert file_size(again) == data_size(again)  # close cut the reserved tail
        again.append(b"more")  # reopened active segment: mapped again
        assert again._segs.active.writer.mapped_bytes
    abandoned = Log.open(path, fsync="never")
    abandoned.append(b"last")
    abandon(abandoned)  # a killed writer: the copied bytes are in the file, then zeros
    with Log.open(path) as log:
        assert log.recovery_report.unwritten_tail
        assert log.get(n + 1).value == b"last" and log.end_offset == n + 2


def test_large_batches_are_written_with_pwrite_between_mapped_small_ones(tmp_path):
    """Batches above MAP_WRITE_MAX_BYTES go through pwrite into the same reserved space, small
    ones through the mapping: both land in order, readable by every opener and after a kill."""
    from logstore.storage.active_file import MAP_WRITE_MAX_BYTES

    path = str(tmp_path / "log")
    log = Log.open(path, fsync="never", segment_bytes=1 << 20)
    reader = Log.open(path, readonly=True)
    pwrites = []
    seg = log._segs.active
    real = seg.writer._os_pwrite  # (white box: count the pwrite calls of the default seam)
    seg.writer._os_pwrite = lambda fd, data, pos: (pwrites.append(len(data)), real(fd, data, pos))[1]
    big = [bytes([i % 251]) * 700 for i in range(6)]  # one batch of ~4 KiB
    expected = []
    try:
        for i in range(40):
            log.append(b"small%d" % i)
            expected.append(b"small%d" % i)
            if i % 4 == 0:
                log.append_batch(big)
                expected.extend(big)
        assert pwrites and all(n > MAP_WRITE_MAX_BYTES for n in pwrites)
        assert len(pwrites) == 10 and seg.writer.mapped_bytes
        assert [r.value for r in reader.replay()] == expected
        assert [r.value for r in log.replay()] == expected
    finally:
        reader.close()
    abandon(log)  # killed: mapped and pwritten bytes are both in the file, then zeros
    with Log.open(path) as again:
        assert [r.value for r in again.replay()] == expected


@pytest.mark.parametrize("code, keeps_mapping", [(errno.EOPNOTSUPP, False),
                                                 (errno.ENOSPC, True)])
def test_a_failing_reservation_falls_back_to_pwrite(tmp_path, monkeypatch, code,
                                                     keeps_mapping):
    def no_fallocate(fd, offset, length):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    path = str(tmp_path / "log")
    with Log.open(path, fsync="never", segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"record %d" % i)
        assert len(log.segments()) > 1
        assert file_size(log) == data_size(log)  # written by pwrite, nothing reserved
        assert log._segs.active.writer.map_writes is keeps_mapping  # ENOSPC: try again next time
    with Log.open(path) as log:
        assert log.recovery_report.clean and log.end_offset == 200
        assert log.get(199).value == b"record 199"


def test_crash_leaves_zeros_that_recovery_cuts_and_names(tmp_path):
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="always")
    for i in range(100):
        log.append(b"record %d" % i)
    end = data_size(log)
    assert file_size(log) > end
    abandon(log)
    with Log.open(path) as log:
        report = log.recovery_report
        assert not report.clean and report.problem is None and report.unwritten_tail
        assert report.valid_bytes == end and report.truncated_bytes > 0
        assert "preallocated, never written tail" in report.summary()
        assert file_size(log) == end
        assert [r.value for r in log.replay()] == [b"record %d" % i for i in range(100)]
        assert log.append(b"after") == 100  # and the writer preallocates again
        assert file_size(log) > data_size(log)


def test_garbage_after_the_zeros_is_a_torn_tail_not_unwritten_space(tmp_path):
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="always")
    for i in range(20):
        log.append(b"record %d" % i)
    seg_path, end = log.segments()[-1]["path"], data_size(log)
    abandon(log)
    with open(seg_path, "r+b") as f:
        f.seek(end + 4096)
        f.write(b"\x01garbage")
    with Log.open(path) as log:
        report = log.recovery_report
        assert report.problem is not None and not report.unwritten_tail
        assert report.valid_bytes == end and log.end_offset == 20


def test_read_only_opener_stops_at_the_zeros_and_follows_new_appends(tmp_path):
    path = str(tmp_path / "log")
    writer = Log.open(path, fsync="always")
    writer.append_batch([b"a", b"b"])
    reader = Log.open(path, readonly=True)
    try:
        assert file_size(writer) > data_size(writer)
        assert [r.value for r in reader.replay()] == [b"a", b"b"]
        writer.append(b"c")
        assert reader.get(2).value == b"c" and reader.end_offset == 3
        assert reader.read(3) == []
    finally:
        reader.close()
        writer.close()


def test_verify_and_dump_of_a_live_or_crashed_log_see_no_damage(tmp_path):
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="always")
    for i in range(30):
        log.append(b"record %d" % i, key=b"k")
    unwritten = file_size(log) - data_size(log)
    size = data_size(log)
    for state in ("live", "crashed"):
        r = cli("verify", path, "--json")
        assert r.exit_code == 0, r.stdout
        doc = json.loads(r.stdout)
        [seg] = doc["logs"][0]["segments"]
        assert seg["status"] == "ok" and seg["records"] == 30
        assert seg["size"] == size and seg["unwritten_bytes"] == unwritten
        assert "(+%d preallocated)" % unwritten in cli("verify", path).stdout
        dumped = cli("dump", path, "--json").stdout.splitlines()
        assert len([line for line in dumped if '"offset"' in line]) == 30
        if state == "live":
            abandon(log)
    r = cli("recover", path)  # dry run: routine, names what the next open trims
    assert r.exit_code == 0, r.stdout
    assert "preallocated, never written" in r.stdout


class NoExtendFS(FaultyFS):
    """ftruncate that cannot grow a segment file (a file size limit, say); shrinking works."""

    def truncate(self, fd, size):
        if fd in self.log_fds and size > os.fstat(fd).st_size:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        super().truncate(fd, size)


def test_a_failing_preallocation_is_only_skipped(tmp_path):
    path = str(tmp_path / "log")
    with Log.open(path, fsync="always", fs=NoExtendFS(), segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"record %d" % i)
        assert len(log.segments()) > 1
        assert file_size(log) == data_size(log)
    with Log.open(path) as log:
        assert log.recovery_report.clean and log.end_offset == 200
        assert log.get(199).value == b"record 199"


def test_store_views_work_over_preallocated_logs(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), fsync="always") as store:
        q = store.queue("jobs")
        q.put(b"job")
        m = q.get(timeout=1)
        q.ack(m)
        assert m.value == b"job"



def test_a_batch_behind_a_hole_of_the_preallocated_tail_is_still_found(tmp_path):
    """Damage in fsynced data, then (after 2 MiB of never-written hole) a valid later batch that
    vouches for those bytes: open must refuse (CorruptLogError), as without the hole. Skipping
    the hole must not skip the batch and call everything a torn tail (silently dropping
    acknowledged records)."""
    path = str(tmp_path / "log")
    log = Log.open(path, fsync="always")
    for i in range(10):
        log.append(b"acknowledged %d" % i * 20)
    seg_path, end = log.segments()[-1]["path"], data_size(log)
    log.append(b"the later batch")
    abandon(log)
    with open(seg_path, "r+b") as f:
        data = f.read()
        later = data[end:data_size_of(data, end)]
        f.seek(end)
        f.write(bytes(len(later)))  # the data now ends at `end`...
        f.seek(2 << 20)
        f.write(later)  # ...and the later batch sits 2 MiB further, behind a hole
        f.seek(end - 20)
        f.write(b"\xff\xff")  # damage in the last fsynced batch: nothing valid follows...
    assert os.path.getsize(seg_path) > (2 << 20) + len(later)
    with pytest.raises(logstore.CorruptLogError):  # ...but the batch behind the hole
        Log.open(path)


def data_size_of(data: bytes, pos: int) -> int:
    """End of the batch at ``pos`` (batch_length is the u32 at offset 8 of its header)."""
    return pos + int.from_bytes(data[pos + 8:pos + 12], "little")


def test_data_ranges_cover_every_written_byte(tmp_path):
    from logstore.storage.sparse import data_ranges, zeros_between

    path = str(tmp_path / "sparse")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 8 << 20)
        writes = [(0, b"head"), (3 << 20, b"\x07middle"), ((8 << 20) - 5, b"tail!")]
        for pos, data in writes:
            os.pwrite(fd, data, pos)
        ranges = data_ranges(fd, 0, 8 << 20)
        for pos, data in writes:  # whatever the file system, no written byte is left out
            assert any(lo <= pos and pos + len(data) <= hi for lo, hi in ranges), (pos, ranges)
        assert data_ranges(fd, 5, 5) == []
        assert not zeros_between(fd, 4, 8 << 20)  # finds the byte at 3 MiB behind the hole
        assert zeros_between(fd, 4, 3 << 20)
        assert not zeros_between(fd, (8 << 20) - 6, 8 << 20)
    finally:
        os.close(fd)


