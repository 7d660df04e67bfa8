"""Behaviour of the public Log API, including every documented bad-input error."""

import os

import numpy as np
import pytest

import logstore
from logstore import (
    ConfigError,
    LogClosedError,
    LogLockedError,
    LogstoreError,
    NotALogError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    Record,
    RecordTooLargeError,
)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "log")


def test_append_get_read_replay_roundtrip(path):
    with logstore.Log.open(path) as log:
        assert (log.start_offset, log.end_offset) == (0, 0)
        assert log.append(b"a", key=b"k", headers={"h": b"1"}, timestamp_ms=5) == 0
        assert log.append_batch([b"b", None, b"d"], keys=[None, b"k2", b"k3"],
                                timestamps_ms=[6, 7, 8]) == range(1, 4)
        assert log.end_offset == 4
        assert log.get(0) == Record(0, 5, b"k", b"a", {"h": b"1"})
        assert log.get(2) == Record(2, 7, b"k2", None, {})
        assert [r.value for r in log.read(1)] == [b"b", None, b"d"]
        assert [r.offset for r in log.replay(1, 3)] == [1, 2]
        assert log.read(4) == []
        assert type(log.get(3).value) is bytes


def test_values_are_bytes_and_headers_fresh(path):
    with logstore.Log.open(path) as log:
        log.append(bytearray(b"xy"), headers={"a": memoryview(b"z")})
        log.append_batch([memoryview(b"q"), b"r"])
        r = log.get(0)
        assert r.value == b"xy" and type(r.value) is bytes and r.headers == {"a": b"z"}
        r.headers["b"] = b"mutated"
        assert log.get(0).headers == {"a": b"z"}
        assert log.get(1).value == b"q"
        # A multi-byte memoryview counts bytes, not items.
        arr = np.arange(4, dtype=np.int64)
        off = log.append(memoryview(arr))
        assert log.get(off).value == arr.tobytes()


def test_get_many_in_the_order_given_and_its_bad_input(path):
    with logstore.Log.open(path, segment_bytes=1024, fsync="always") as log:
        log.append(b"a", headers={"h": b"1"})
        log.append_batch([b"v%d" % i for i in range(200)])
        log.append_batch([b"z%d" % i for i in range(30)], keys=[b"k"] * 30)
        end = log.end_offset
        wanted = [230, 0, 5, 5, np.int64(17), 229, 1, 0]
        got = log.get_many(wanted)
        assert got == [log.get(int(o)) for o in wanted]
        assert [r.offset for r in got] == [int(o) for o in wanted]
        got[1].headers["h"] = b"mutated"  # repeats are separate records with fresh dicts
        assert got[7].headers == {"h": b"1"}
        assert log.get_many(iter(range(3))) == [log.get(i) for i in range(3)]
        assert log.get_many([]) == []
        # Bad input: nothing returned, the documented error for the first offending offset.
        for bad, error in (([1, 2.0], TypeError), ([1, "3"], TypeError), ([True], TypeError),
                           ([0, None], TypeError), ([3, -1], OffsetOutOfRangeError),
                           ([end], OffsetOutOfRangeError), ([1, end + 5], OffsetOutOfRangeError),
                           ([1 << 70], OffsetOutOfRangeError)):
            with pytest.raises(error):
                log.get_many(bad)
        with pytest.raises(TypeError):
            log.get_many(5)
        with pytest.raises(OffsetOutOfRangeError, match=str(1 << 70)):
            log.get_many([0, 1 << 70])
    with pytest.raises(LogClosedError):
        log.get_many([0])
    with pytest.raises(LogClosedError):
        log.get_many([])
    with logstore.Log.open(path, readonly=True) as ro:  # the read-only view agrees
        assert ro.get_many([230, 0, 100]) == [ro.get(230), ro.get(0), ro.get(100)]


def test_reopen_keeps_everything(path):
    with logstore.Log.open(path, segment_bytes=1024) as log:
        for i in range(300):
            log.append(b"v%d" % i, key=b"k%d" % (i % 5))
    with logstore.Log.open(path, segment_bytes=1024) as log:
        assert log.recovery_report.clean
        assert log.end_offset == 300
        assert [r.value for r in log.replay()] == [b"v%d" % i for i in range(300)]
        assert log.append(b"next") == 300
        assert len(log.segments()) > 5


def test_offset_for_time(path):
    with logstore.Log.open(path, segment_bytes=1024, index_interval_bytes=64) as log:
        log.append_batch([b"x"] * 50, timestamps_ms=list(range(1000, 1050)))
        for t in range(1050, 1300, 10):
            log.append(b"y" * 40, timestamp_ms=t)
        assert log.offset_for_time(0) == 0
        assert log.offset_for_time(1000) == 0
        assert log.offset_for_time(1025) == 25
        assert log.offset_for_time(1051) == 51
        assert log.offset_for_time(1290) == 74
        assert log.offset_for_time(10**12) == log.end_offset


def test_read_max_bytes_returns_at_least_one(path):
    with logstore.Log.open(path) as log:
        log.append_batch([b"x" * 100] * 10)
        assert len(log.read(0, max_bytes=1)) == 1
        assert len(log.read(0, max_bytes=250)) == 2
        assert len(log.read(0, max_records=3)) == 3
        assert len(log.read(8, max_bytes=10_000)) == 2


def test_replay_to_offset_exclusive_and_clamped(path):
    with logstore.Log.open(path) as log:
        log.append_batch([b"%d" % i for i in range(10)])
        assert [r.offset for r in log.replay(3, 6)] == [3, 4, 5]
        assert [r.offset for r in log.replay(8, 100)] == [8, 9]
        assert list(log.replay(10)) == []
        it = log.replay()  # the end is fixed when replay() is called
        log.append(b"later")
        assert len(list(it)) == 10


def test_append_batch_empty_and_buffer_form(path):
    with logstore.Log.open(path) as log:
        assert log.append_batch([]) == range(0, 0)
        r = log.append_buffer(b"aabbbc", np.array([2, 3, 1]))
        assert r == range(0, 3)
        assert [x.value for x in log.replay()] == [b"aa", b"bbb", b"c"]


def test_compression_zstd_roundtrip_and_smaller(tmp_path):
    values = [b"order %d for user %d, status=pending" % (i, i % 7) for i in range(1000)]
    sizes = {}
    for comp in ("none", "zstd"):
        p = str(tmp_path / comp)
        with logstore.Log.open(p, compression=comp) as log:
            for i in range(0, 1000, 100):
                log.append_batch(values[i:i + 100])
            assert [r.value for r in log.replay()] == values
            assert log.get(517).value == values[517]
            sizes[comp] = sum(s["size"] for s in log.segments())
    assert sizes["zstd"] < sizes["none"] / 2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", ["text", 5, 1.5, object()])
def test_value_must_be_bytes(path, bad):
    with logstore.Log.open(path) as log:
        with pytest.raises(TypeError) as e:
            log.append(bad)
        if isinstance(bad, str):
            assert "encode" in str(e.value)
        with pytest.raises(TypeError):
            log.append_batch([b"ok", bad])
        with pytest.raises(TypeError, match="encode"):
            log.append(b"v", key="text-key")
        with pytest.raises(TypeError, match="encode"):
            log.append(b"v", headers={"h": "text"})
        with pytest.raises(TypeError):
            log.append_batch(b"not a list")
        assert log.end_offset == 0  # nothing written by any failed call


def test_too_large_is_rejected_and_log_unchanged(path):
    with logstore.Log.open(path, max_record_bytes=1024) as log:
        log.append(b"fine")
        with pytest.raises(RecordTooLargeError):
            log.append(b"x" * 2000)
        with pytest.raises(RecordTooLargeError):
            log.append_batch([b"x" * 600, b"y" * 600])
        assert isinstance(RecordTooLargeError("x"), LogstoreError)
        assert log.end_offset == 1
        assert log.append(b"after") == 1


def test_batch_larger_than_segment_goes_alone(path):
    with logstore.Log.open(path, segment_bytes=1024, max_record_bytes=1 << 20) as log:
        log.append(b"small")
        log.append(b"B" * 5000)
        log.append(b"small2")
        segs = log.segments()
        assert [s["base_offset"] for s in segs] == [0, 1, 2]
        assert log.get(1).value == b"B" * 5000


def test_offsets_out_of_range(path):
    with logstore.Log.open(path) as log:
        log.append_batch([b"a", b"b"])
        for bad in (-1, 3, 100):
            with pytest.raises(OffsetOutOfRangeError):
                log.get(bad)
            with pytest.raises(OffsetOutOfRangeError):
                log.read(bad)
            with pytest.raises(OffsetOutOfRangeError):
                log.replay(bad)
        with pytest.raises(OffsetOutOfRangeError):
            log.get(2)  # end_offset: no record yet
        assert log.read(2) == []
        with pytest.raises(IndexError):  # also an IndexError, for plain-Python callers
            log.get(5)
        with pytest.raises(TypeError):
            log.get("1")
        with pytest.raises(ValueError):
            log.read(0, max_records=0)
        with pytest.raises(ValueError):
            list(log.replay(1, 0))


@pytest.mark.parametrize("options, word", [
    ({"fsync": "sometimes"}, "fsync"),
    ({"segment_bytes": 10}, "segment_bytes"),
    ({"compression": "lz4"}, "zstd"),
    ({"fsync": "every"}, "fsync_records"),
    ({"fsync": "always", "fsync_ms": 5}, "fsync_ms"),
    ({"segment_byte": 4096}, "segment_bytes"),  # typo -> lists valid names
    ({"write_buffer_bytes": 4096}, "write_buffer_bytes"),  # needs never/every
    ({"index_interval_bytes": "4k"}, "index_interval_bytes"),
])
def test_bad_config(path, options, word):
    with pytest.raises(ConfigError) as e:
        logstore.Log.open(path, **options)
    assert word in str(e.value)
    assert isinstance(e.value, LogstoreError) and isinstance(e.value, ValueError)
    assert not os.path.exists(path)  # nothing created


def test_closed_log_raises(path):
    log = logstore.Log.open(path)
    log.append(b"x")
    log.close()
    log.close()  # idempotent
    for call in (lambda: log.append(b"y"), lambda: log.get(0), lambda: log.read(0),
                 lambda: log.end_offset, lambda: log.replay(), lambda: log.flush()):
        with pytest.raises(LogClosedError):
            call()


def test_second_writer_is_locked_out(path):
    log = logstore.Log.open(path)
    with pytest.raises(LogLockedError):
        logstore.Log.open(path)
    ro = logstore.Log.open(path, readonly=True)
    log.append(b"x")
    assert ro.get(0).value == b"x"
    with pytest.raises(ReadOnlyError):
        ro.append(b"no")
    log.close()
    logstore.Log.open(path).close()  # lock released on close
    ro.close()


def test_readonly_never_creates(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(NotALogError):
        logstore.Log.open(missing, readonly=True)
    assert not os.path.exists(missing)


def test_not_a_log_directory_is_untouched(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(NotALogError):
        logstore.Log.open(str(d))
    assert os.listdir(d) == ["notes.txt"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotALogError):
        logstore.Log.open(str(f))


def test_all_errors_derive_from_base():
    import logstore.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, LogstoreError)
        assert getattr(logstore, name) is cls


def test_write_buffer_mode_reads_its_own_writes(path):
    with logstore.Log.open(path, fsync="never", write_buffer_bytes=4096, segment_bytes=2048) as log:
        for i in range(500):
            log.append(b"%d" % i)
            if i % 97 == 0:
                assert log.get(i).value == b"%d" % i
        assert [r.value for r in log.replay()] == [b"%d" % i for i in range(500)]
    with logstore.Log.open(path) as log:
        assert log.end_offset == 500


def test_fsync_every_records_and_ms(path):
    with logstore.Log.open(path, fsync="every", fsync_records=10) as log:
        for i in range(25):
            log.append(b"x")
        assert log.durable_offset >= 20
    with logstore.Log.open(path, fsync="every", fsync_ms=5) as log:
        log.append(b"y")
        import time

        deadline = time.time() + 5
        while log.durable_offset < 26 and time.time() < deadline:
            time.sleep(0.01)
        assert log.durable_offset == 26


def test_segment_ms_rolls(path):
    with logstore.Log.open(path, segment_ms=100) as log:
        log.append(b"a", timestamp_ms=1000)
        log.append(b"b", timestamp_ms=1050)
        log.append(b"c", timestamp_ms=1100)  # 100 ms after the segment's first batch
        assert [s["base_offset"] for s in log.segments()] == [0, 2]
