"""Issue 16, cases 4-6 through the API: what a log promised to keep (the *durable floor*) and
what each opener does when it is not there.

* A clean-shutdown marker naming the active segment says close() made that many bytes, up to
  that end offset, durable; a batch's synced_before says how much was fsynced before it was
  written. Missing, zeroed or damaged bytes below either are data damage: a writer's open
  refuses (CorruptLogError, nothing changed), a read-only opener raises CorruptLogError on the
  reads that reach them. A marker naming a segment after the last one (a missing last segment)
  is refused too: a writer would assign its offsets again.
* A read-only opener beside a crashed writer (no marker) stops at a zero hole (the writer's
  recovery cuts it: never acknowledged), but garbage followed by a whole, CRC-valid batch that
  continues the offsets is damage.

Each test says what main did. Public API only, plus the CLI entry point (edge_helpers).
"""

import os
import shutil

import pytest

import logstore
from edge_helpers import batch_positions, overwrite, run_cli, segment_paths, snapshot


def value(i):
    return b"v%06d" % i


def build(d, batches=30, per=100, **kw):
    """A log of ``batches`` batches of ``per`` records; returns the open writer."""
    opts = dict(fsync="never", retention_check_interval_s=0)
    opts.update(kw)
    log = logstore.Log.open(d, **opts)
    for b in range(batches):
        log.append_batch([value(b * per + i) for i in range(per)])
    return log


def flip(path, pos, n=16):
    with open(path, "r+b") as f:
        f.seek(pos)
        data = f.read(n)
        f.seek(pos)
        f.write(bytes(x ^ 0xFF for x in data))


def read_all(log):
    out, pos = [], log.start_offset
    while True:
        recs = log.read(pos, max_records=1000)
        if not recs:
            return out
        out.extend(recs)
        pos = recs[-1].offset + 1


def test_reader_of_a_crashed_log_raises_at_damage_followed_by_valid_data(tmp_path):
    """No marker (the writer was killed) and damage in the middle of the active segment,
    valid batches after it. Main: a read-only opener showed the records before the damage and
    an end_offset there, as if the log ended: a silent prefix."""
    d = str(tmp_path / "log")
    w = build(d, fsync="every", fsync_records=1)  # every batch records what was synced before
    w.abandon()  # as a SIGKILL: no marker
    seg = segment_paths(d)[-1]
    pos, _length = batch_positions(seg)[10]
    flip(seg, pos + 100)
    before = snapshot(d)
    with pytest.raises(logstore.CorruptLogError):
        logstore.Log.open(d)  # (the writer already refused)
    assert snapshot(d) == before
    with logstore.Log.open(d, readonly=True) as ro:
        with pytest.raises(logstore.CorruptLogError):
            read_all(ro)
        with pytest.raises(logstore.CorruptLogError):
            ro.end_offset
        with pytest.raises(logstore.CorruptLogError):
            list(ro.replay())
    assert snapshot(d) == before


def test_reader_of_a_crashed_log_stops_at_a_zero_hole(tmp_path):
    """Zero bytes, then valid batches, none written after those bytes were fsynced: what a
    power loss with out-of-order write-back leaves. The writer's recovery cuts there (never
    acknowledged), so a reader stops there too, without an error."""
    d = str(tmp_path / "log")
    w = build(d, fsync="never")
    w.abandon()
    seg = segment_paths(d)[-1]
    pos, length = batch_positions(seg)[10]
    overwrite(seg, pos, bytes(length))
    with logstore.Log.open(d, readonly=True) as ro:
        assert ro.end_offset == 1000
        assert [r.offset for r in read_all(ro)] == list(range(1000))
    with logstore.Log.open(d) as w:
        assert w.end_offset == 1000  # cut there


def test_reader_raises_below_the_clean_shutdown_marker(tmp_path):
    """A cleanly closed log whose active segment lost its end (or had it zeroed): main's
    readers showed the shorter log without a word."""
    d = str(tmp_path / "log")
    build(d).close()
    seg = segment_paths(d)[-1]
    positions = batch_positions(seg)
    for how in ("truncate", "zero"):
        copy = str(tmp_path / how)
        shutil.copytree(d, copy)
        cseg = os.path.join(copy, os.path.basename(seg))
        if how == "truncate":
            os.truncate(cseg, positions[-3][0] + 10)
        else:
            overwrite(cseg, positions[-3][0], bytes(os.path.getsize(cseg) - positions[-3][0]))
        before = snapshot(copy)
        with logstore.Log.open(copy, readonly=True) as ro:
            with pytest.raises(logstore.CorruptLogError) as ei:
                ro.end_offset
            assert "clean-shutdown marker" in str(ei.value)
            with pytest.raises(logstore.CorruptLogError):
                read_all(ro)
        with pytest.raises(logstore.CorruptLogError):
            logstore.Log.open(copy)
        assert snapshot(copy) == before
        r = run_cli("recover", copy, "--apply")
        assert r.exit_code == 1 and snapshot(copy) == before, r
        r = run_cli("recover", copy, "--apply", "--force")  # the operator accepts the loss
        assert r.exit_code == 0, r
        with logstore.Log.open(copy) as w:
            assert w.end_offset == 2700
            assert w.append(b"again") == 2700


def test_missing_last_segment_is_refused_by_writers_and_readers(tmp_path):
    """Main: the writer opened at the end of the previous segment and assigned its offsets
    again; readers showed the shorter log."""
    d = str(tmp_path / "log")
    build(d, batches=40, segment_bytes=16 * 1024).close()
    segs = segment_paths(d)
    assert len(segs) >= 3
    for suffix in (".log", ".index", ".timeindex"):
        p = segs[-1][:-4] + suffix
        if os.path.exists(p):
            os.unlink(p)
    before = snapshot(d)
    with pytest.raises(logstore.CorruptLogError) as ei:
        logstore.Log.open(d)
    assert "last segment is missing" in str(ei.value)
    assert snapshot(d) == before
    with logstore.Log.open(d, readonly=True) as ro:
        with pytest.raises(logstore.CorruptLogError):
            ro.end_offset
    for args in (("recover", d, "--apply"), ("recover", d, "--apply", "--force")):
        r = run_cli(*args)
        assert r.exit_code == 1 and "last segment is missing" in r.stdout, r
        assert snapshot(d) == before


def test_damaged_sealed_middle_is_still_readable_up_to_the_damage(tmp_path):
    """The floor is about the active segment: damage in a sealed segment is reported by the
    reads that reach it (as before), not at open."""
    d = str(tmp_path / "log")
    build(d, batches=40, segment_bytes=16 * 1024).close()
    segs = segment_paths(d)
    pos, _ = batch_positions(segs[1])[2]
    flip(segs[1], pos + 100)
    with logstore.Log.open(d) as w:
        assert w.end_offset == 4000
        with pytest.raises(logstore.CorruptLogError):
            read_all(w)
    with logstore.Log.open(d, readonly=True) as ro:
        assert ro.end_offset == 4000
        assert ro.get(3999).value == value(3999)
        with pytest.raises(logstore.CorruptLogError):
            read_all(ro)
