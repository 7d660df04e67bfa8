"""Issue 22 (API): iteration, len(), any iterable for batches, path checks, WorkQueue as a
context manager, DecodedBatch repr."""

import os

import pytest

import logstore


def test_iterating_a_log_replays_it_from_its_start(tmp_path):
    with logstore.Log.open(str(tmp_path / "l"), segment_bytes=1024,
                           retention_check_interval_s=0) as log:
        for i in range(300):
            log.append(b"%d" % i)  # (single records: several segments)
        assert [r.value for r in log] == [b"%d" % i for i in range(300)]
        assert len(log) == 300 and bool(log)
        log.enforce_retention(keep_from=100)  # whole segments below 100 go
        start = log.start_offset
        assert start > 0
        assert [r.offset for r in log] == list(range(start, 300))
        assert len(log) == 300 - start
    with logstore.Log.open(str(tmp_path / "empty")) as log:
        assert len(log) == 0 and bool(log) and list(log) == []


def test_len_of_a_compacted_log_says_why_not(tmp_path):
    with logstore.Log.open(str(tmp_path / "c"), cleanup_policy="compact") as log:
        log.append(b"v", key=b"k")
        with pytest.raises(TypeError, match="compacted"):
            len(log)


def test_append_batch_takes_any_iterable(tmp_path):
    with logstore.Log.open(str(tmp_path / "l")) as log:
        r = log.append_batch((b"%d" % i for i in range(4)), keys=iter([b"a", None, b"c", None]),
                             timestamps_ms=(t for t in (1, 2, 3, 4)))
        assert r == range(0, 4)
        assert [(x.key, x.value, x.timestamp_ms) for x in log] == [
            (b"a", b"0", 1), (None, b"1", 2), (b"c", b"2", 3), (None, b"3", 4)]
        for bad in (b"abc", "abc"):
            with pytest.raises(TypeError):
                log.append_batch(bad)
        with pytest.raises(TypeError):
            log.append_batch(42)
        assert log.end_offset == 4  # nothing written by the refusals


@pytest.mark.parametrize("opener", ["log", "store"])
@pytest.mark.parametrize("path,error", [(b"somewhere", TypeError), ("", logstore.ConfigError),
                                        (7, TypeError), (None, TypeError)])
def test_bad_paths_are_refused_before_anything_is_created(tmp_path, monkeypatch, opener, path,
                                                          error):
    monkeypatch.chdir(tmp_path)
    open_ = logstore.Log.open if opener == "log" else logstore.Store.open
    with pytest.raises(error):
        open_(path)
    assert os.listdir(tmp_path) == []


def test_work_queue_is_a_context_manager(tmp_path):
    with logstore.Store.open(str(tmp_path / "s"), fsync="never") as s:
        with s.queue("jobs") as q:
            q.put(b"x")
        assert q.closed
        with pytest.raises(logstore.LogClosedError):
            q.put(b"y")


def test_decoded_batch_repr_says_what_it_is(tmp_path):
    with logstore.Log.open(str(tmp_path / "l")) as log:
        log.append_batch([b"a", b"b", b"c"], timestamps_ms=[10, 11, 12])
        [batch] = list(log.replay_batches())
        text = repr(batch)
        assert "offsets 0..2" in text and "3 records" in text and "ts 10..12" in text
