"""Stateful model test: a :class:`logstore.Log` must behave like a plain Python list.

A hypothesis ``RuleBasedStateMachine`` drives one log through random appends (single and
batched, with tombstones, keys, headers and explicit or implicit timestamps), reads of every
kind, clean reopens, simulated process crashes and flushes, and compares every answer with an
in-memory model: a list of ``(key, value, headers, timestamp)`` plus the id of the batch each
record was written in. The machine is run for every combination of compression and fsync
policy; segment size (1024..4096 bytes) and index interval are drawn per example so segments
roll often and the sparse indexes are dense.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from logstore import Log, OffsetOutOfRangeError
from logstore.record import Record

CLEAN_MARKER = "clean-shutdown"
MAX_TS = 2**63 - 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------------------ strategies
header_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
headers_st = st.none() | st.dictionaries(header_names, st.binary(max_size=12), max_size=3)
keys_st = st.none() | st.binary(max_size=12)
# Mostly small values (many records per segment), sometimes one larger than a whole segment.
values_st = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.binary(min_size=41, max_size=200),
    # Large but cheap to generate (hypothesis' entropy budget): a short pattern repeated.
    st.builds(lambda pattern, n: pattern * n, st.binary(min_size=1, max_size=3),
              st.integers(350, 500)),
)
# Small explicit timestamps collide often (interesting for offset_for_time); the extremes are
# legal too. None means "now", chosen by the log.
timestamps_st = st.none() | st.integers(0, 60) | st.sampled_from([0, 2**40, MAX_TS])
explicit_ts_st = st.integers(0, 60) | st.sampled_from([0, 2**40, MAX_TS])


def size_of(entry) -> int:
    key, value = entry[0], entry[1]
    return (0 if key is None else len(key)) + (0 if value is None else len(value))


def expected_read(model, offset: int, max_records: int, max_bytes):
    """The read() result: records from ``offset`` on, at most ``max_records``, taken while the
    key+value bytes stay within ``max_bytes`` and the budget is not yet used up (a zero-size
    record after an exactly spent budget is not taken, however the records were batched); at
    least one record when one exists, even if it alone is larger (a reader always progresses)."""
    candidates = model[offset: offset + max_records]
    if max_bytes is None:
        return candidates
    out = []
    total = 0
    for entry in candidates:
        size = size_of(entry)
        if total >= max_bytes or total + size > max_bytes:
            break
        total += size
        out.append(entry)
    if not out and candidates:
        out = candidates[:1]
    return out


class LogMachine(RuleBasedStateMachine):
    compression = "none"
    fsync = "always"

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="logstore-model-")
        self.path = os.path.join(self.tmp, "log")
        self.model = []  # (key, value, headers, timestamp_ms, batch_id)
        self.batch_counter = 0
        self.log = None
        self.options = {}

    # ---------------------------------------------------------------- helpers
    def record(self, offset: int) -> Record:
        key, value, headers, ts, _ = self.model[offset]
        return Record(offset, ts, key, value, dict(headers or {}))

    def expected(self, start: int, stop: int):
        return [self.record(o) for o in range(start, stop)]

    def open(self) -> None:
        self.log = Log.open(self.path, **self.options)

    def resolve_implicit_timestamps(self, first: int, count: int, t0: int, t1: int,
                                    implicit) -> None:
        """Records appended with timestamp None get "now": read it back, check it is now."""
        seen = None
        for i in range(count):
            if not implicit[i]:
                continue
            got = self.log.get(first + i).timestamp_ms
            assert t0 <= got <= t1, (got, t0, t1)
            if seen is not None:
                assert got == seen  # one batch, one "now"
            seen = got
            key, value, headers, _, batch = self.model[first + i]
            self.model[first + i] = (key, value, headers, got, batch)

    # ---------------------------------------------------------------- setup / teardown
    @initialize(segment_bytes=st.integers(1024, 4096), index_interval=st.sampled_from([1, 64, 200]))
    def open_log(self, segment_bytes, index_interval):
        self.options = dict(fsync=self.fsync, compression=self.compression,
                            segment_bytes=segment_bytes, index_interval_bytes=index_interval)
        self.open()
        assert self.log.end_offset == 0

    def teardown(self):
        try:
            if self.log is not None:
                self.log.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- writes
    @rule(value=values_st, key=keys_st, headers=headers_st, ts=timestamps_st)
    def append(self, value, key, headers, ts):
        t0 = now_ms()
        off = self.log.append(value, key=key, headers=headers, timestamp_ms=ts)
        t1 = now_ms()
        assert off == len(self.model)
        self.model.append((key, value, headers, ts, self.batch_counter))
        self.batch_counter += 1
        self.resolve_implicit_timestamps(off, 1, t0, t1, [ts is None])

    @rule(data=st.data(), n=st.integers(1, 20))
    def append_batch(self, data, n):
        values = data.draw(st.lists(values_st, min_size=n, max_size=n), label="values")
        keys = data.draw(st.none() | st.lists(keys_st, min_size=n, max_size=n), label="keys")
        headers = data.draw(st.none() | st.lists(headers_st, min_size=n, max_size=n),
                            label="headers")
        stamps = data.draw(st.none() | st.lists(explicit_ts_st, min_size=n, max_size=n),
                           label="timestamps")
        first = len(self.model)
        t0 = now_ms()
        got = self.log.append_batch(values, keys=keys, headers=headers, timestamps_ms=stamps)
        t1 = now_ms()
        assert got == range(first, first + n)
        for i in range(n):
            self.model.append((
                None if keys is None else keys[i],
                values[i],
                None if headers is None else headers[i],
                None if stamps is None else stamps[i],
                self.batch_counter,
            ))
        self.batch_counter += 1
        self.resolve_implicit_timestamps(first, n, t0, t1, [stamps is None] * n)

    @rule()
    def flush(self):
        self.log.flush()
        assert self.log.durable_offset == len(self.model)

    # ---------------------------------------------------------------- reads
    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def get(self, data):
        offset = data.draw(st.integers(0, len(self.model) - 1), label="offset")
        assert self.log.get(offset) == self.record(offset)

    @rule(beyond=st.integers(0, 3))
    def get_out_of_range(self, beyond):
        with pytest.raises(OffsetOutOfRangeError):
            self.log.get(len(self.model) + beyond)
        with pytest.raises(OffsetOutOfRangeError):
            self.log.get(-1 - beyond)
        assert self.log.read(len(self.model)) == []
        with pytest.raises(OffsetOutOfRangeError):
            self.log.read(len(self.model) + 1 + beyond)

    @rule(data=st.data(), max_records=st.integers(1, 30))
    def read(self, data, max_records):
        offset = data.draw(st.integers(0, len(self.model)), label="offset")
        # Budgets that end exactly on a record boundary are the interesting ones.
        sums, total = [0], 0
        for entry in self.model[offset: offset + max_records]:
            total += size_of(entry)
            sums.append(total)
        max_bytes = data.draw(
            st.none() | st.integers(0, 400) | st.builds(
                lambda n, nudge: max(0, n + nudge), st.sampled_from(sums), st.integers(-1, 1)),
            label="max_bytes")
        got = self.log.read(offset, max_records=max_records, max_bytes=max_bytes)
        entries = expected_read(self.model, offset, max_records, max_bytes)
        expected = self.expected(offset, offset + len(entries))
        assert got == expected
        # The max_bytes rule itself, independently of the model's prefix computation.
        assert len(got) <= max_records
        if offset < len(self.model):
            assert got, "read() must return at least one record when one exists"
            assert got[0].offset == offset
        if max_bytes is not None and len(got) > 1:
            assert sum(size_of((r.key, r.value)) for r in got) <= max_bytes

    @rule(data=st.data())
    def replay(self, data):
        n = len(self.model)
        start = data.draw(st.integers(0, n), label="from")
        stop = data.draw(st.none() | st.integers(start, n + 5), label="to")
        got = list(self.log.replay(start, stop))
        assert got == self.expected(start, n if stop is None else min(stop, n))
        if start > 0:
            with pytest.raises(ValueError):
                self.log.replay(start, start - 1)

    @rule(data=st.data())
    def offset_for_time(self, data):
        candidates = st.integers(0, 70) | st.sampled_from([0, MAX_TS, 2**40, now_ms()])
        if self.model:
            # A stored timestamp or just past it, picked by position. (Not from the set of
            # distinct timestamps: how many "now" timestamps coincide depends on the clock, and
            # hypothesis must draw the same way when it replays a case.)
            model = self.model
            candidates = candidates | st.builds(
                lambda i, nudge: min(MAX_TS, model[i][3] + nudge),
                st.integers(0, len(model) - 1), st.integers(0, 1))
        ts = data.draw(candidates, label="ts")
        expected = next((i for i, e in enumerate(self.model) if e[3] >= ts), len(self.model))
        assert self.log.offset_for_time(ts) == expected

    # ---------------------------------------------------------------- restarts
    @rule()
    def reopen(self):
        self.log.close()
        assert os.path.exists(os.path.join(self.path, CLEAN_MARKER))
        self.open()
        assert self.log.recovery_report.clean
        assert not os.path.exists(os.path.join(self.path, CLEAN_MARKER))

    @rule()
    def crash(self):
        """A process crash: no close(), no clean-shutdown marker, the lock dies with the fds."""
        old = self.log
        old.abandon()
        self.log = None
        assert not os.path.exists(os.path.join(self.path, CLEAN_MARKER))
        self.open()
        report = self.log.recovery_report
        assert not report.clean
        # Every append was written (and, with fsync="always", synced) before it returned:
        # a process crash cannot leave a torn tail behind. What recovery may cut is the
        # preallocated, never-written space of a syncing writer: zero bytes only.
        assert report.truncated_bytes == 0 or report.unwritten_tail
        assert report.problem is None

    # ---------------------------------------------------------------- invariants
    @invariant()
    def offsets(self):
        if self.log is None:
            return
        assert self.log.start_offset == 0
        assert self.log.end_offset == len(self.model)

    @invariant()
    def replay_everything(self):
        if self.log is None:
            return
        assert list(self.log.replay()) == self.expected(0, len(self.model))

    @invariant()
    def segments_tile_the_log(self):
        if self.log is None:
            return
        segs = self.log.segments()
        assert segs[0]["base_offset"] == 0
        assert segs[-1]["next_offset"] == len(self.model)
        for a, b in zip(segs, segs[1:]):
            assert a["next_offset"] == b["base_offset"]
            assert a["sealed"] and a["next_offset"] > a["base_offset"]
        assert not segs[-1]["sealed"]
        limit = self.options["segment_bytes"]
        for s in segs:
            if s["size"] > limit:
                # Only a single batch larger than segment_bytes may overflow a segment.
                ids = {self.model[o][4] for o in range(s["base_offset"], s["next_offset"])}
                assert len(ids) == 1, (s, limit)


SETTINGS = settings(
    max_examples=45,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("fsync", ["always", "never"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_log_matches_model(compression, fsync):
    machine = type(f"LogMachine_{compression}_{fsync}", (LogMachine,),
                   {"compression": compression, "fsync": fsync})
    run_state_machine_as_test(machine, settings=SETTINGS)


# ------------------------------------------------------------------------------ regressions
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_read_max_bytes_does_not_depend_on_batch_boundaries(tmp_path, compression):
    """Regression: read(max_bytes=B) used to stop at a batch boundary once B was used up exactly,
    but inside one batch it went on returning the following zero-size records (b"", None): the
    same records gave different answers depending on how they had been batched."""
    values = [b"abc", b"", None, b"xyz"]
    single = Log.open(tmp_path / "single", fsync="never", compression=compression)
    batched = Log.open(tmp_path / "batched", fsync="never", compression=compression)
    try:
        for v in values:
            single.append(v, timestamp_ms=5)
        batched.append_batch(values, timestamps_ms=[5] * len(values))
        assert list(single.replay()) == list(batched.replay())  # the same records
        for max_bytes in range(0, 8):
            a = single.read(0, max_bytes=max_bytes)
            b = batched.read(0, max_bytes=max_bytes)
            assert a == b, max_bytes
            expected = expected_read([(None, v) for v in values], 0, 1000, max_bytes)
            assert [r.value for r in a] == [v for _, v in expected], max_bytes
        # From the zero-size records on, with a zero budget: exactly one record.
        assert single.read(1, max_bytes=0) == batched.read(1, max_bytes=0)
        assert [r.value for r in single.read(1, max_bytes=0)] == [b""]
    finally:
        single.close()
        batched.close()
