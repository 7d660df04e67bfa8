"""Crash tests: a real writer process is SIGKILLed at random moments, over and over
(``logstore.testing``'s crash runner: a fresh interpreter per round, acknowledgements handed to
this process durably, SIGKILL, reopen).

After every kill the log is reopened (running crash recovery) and checked: every record whose
append returned under fsync="always" is present and byte-identical, offsets are dense, and no
record anywhere is garbage (every value is one the writer really built: no torn record is
ever visible).
"""

import hashlib
import random
import re
import threading

import pytest

import logstore
from logstore.testing import run_and_kill

UNIT = re.compile(rb"^(\d+):(\d+):$")


def value_for(tid: int, seq: int, rng: random.Random) -> bytes:
    unit = f"{tid}:{seq}:".encode()
    return unit * rng.randint(1, 60)


def writer(log, ack, seed: int, threads: int) -> None:
    """Appends forever from ``threads`` threads; acknowledges ``(offset, sha1 of value)`` for
    every append that returned. Every value is self-describing (``<tid>:<seq>:`` repeated), so
    a valid record can be told from garbage even if it was never acknowledged."""

    def work(tid: int) -> None:
        rng = random.Random(seed * 100 + tid)
        seq = 0
        while True:
            if rng.random() < 0.3:
                n = rng.randint(1, 20)
                values = []
                for _ in range(n):
                    values.append(value_for(tid, seq, rng))
                    seq += 1
                offs = log.append_batch(values, keys=[v[:4] for v in values])
                pairs = list(zip(offs, values))
            else:
                v = value_for(tid, seq, rng)
                seq += 1
                pairs = [(log.append(v, headers={"t": b"%d" % tid}), v)]
            for o, v in pairs:
                ack((o, hashlib.sha1(v).hexdigest()))

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def well_formed(value: bytes) -> bool:
    first = value.split(b":", 2)
    if len(first) < 3:
        return False
    unit = first[0] + b":" + first[1] + b":"
    return UNIT.match(unit) is not None and len(value) % len(unit) == 0 and \
        value == unit * (len(value) // len(unit))


def kill_round(directory, seed, threads, options, rng):
    result = run_and_kill(writer, directory, kind="log", options=options, args=(seed, threads),
                          after_s=rng.uniform(0.05, 0.6), require_kill=True, reopen=False)
    assert result.killed
    return dict(result.acked)


def check(directory, all_acked):
    with logstore.Log.open(directory) as log:  # (its stored settings apply)
        end = log.end_offset
        seen = 0
        for rec in log.replay():
            assert rec.offset == seen, "offsets must be dense"
            seen += 1
            assert rec.value is not None and well_formed(rec.value), f"garbage at {rec.offset}"
            want = all_acked.get(rec.offset)
            if want is not None:
                assert hashlib.sha1(rec.value).hexdigest() == want, f"changed record {rec.offset}"
        assert seen == end
        lost = [o for o in all_acked if o >= end]
        assert not lost, f"acknowledged records lost: {sorted(lost)[:10]}"
        return end


@pytest.mark.parametrize("threads, compression", [(1, "none"), (3, "zstd")])
def test_sigkill_rounds_lose_nothing_acknowledged(tmp_path, threads, compression):
    directory = str(tmp_path / "log")
    rng = random.Random(1234 + threads)
    options = {"fsync": "always", "segment_bytes": 4096, "compression": compression}
    all_acked = {}
    rounds = 12
    for r in range(rounds):
        acked = kill_round(directory, r, threads, options, rng)
        all_acked.update(acked)
        end = check(directory, all_acked)
        assert end >= len(all_acked)
    assert len(all_acked) > 100  # the test really exercised the writer


def test_sigkill_with_lazy_fsync_never_returns_garbage(tmp_path):
    """fsync="never" may lose the tail on power loss, but a process kill loses nothing written
    (no write buffer), and recovery never exposes a torn record."""
    directory = str(tmp_path / "log")
    rng = random.Random(99)
    all_acked = {}
    for r in range(8):
        acked = kill_round(directory, r, 2, {"fsync": "never", "segment_bytes": 4096}, rng)
        all_acked.update(acked)
        check(directory, all_acked)


def test_kill_right_after_an_acknowledgement_loses_nothing(crash_runner):
    """The deterministic kill: the child dies inside its N-th ack, right after the append."""
    all_acked = {}
    for n in (1, 37, 250):
        result = crash_runner(writer, kind="log", options={"fsync": "always"},
                              args=(n, 1), after_acks=n)
        assert result.killed and len(result.acked) == n
        assert result.target.end_offset >= max(o for o, _ in result.acked) + 1
        result.close()
        all_acked.update(result.acked)
        check(result.path, all_acked)
