"""Crash tests: a real writer process is SIGKILLed at random moments, over and over.

After every kill the log is reopened (running crash recovery) and checked: every record whose
append returned under fsync="always" is present and byte-identical, offsets are dense, and no
record anywhere is garbage (every value is one the writer really built: no torn record is
ever visible).
"""

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

import logstore

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_writer.py")
UNIT = re.compile(rb"^(\d+):(\d+):$")


def well_formed(value: bytes) -> bool:
    first = value.split(b":", 2)
    if len(first) < 3:
        return False
    unit = first[0] + b":" + first[1] + b":"
    return UNIT.match(unit) is not None and len(value) % len(unit) == 0 and \
        value == unit * (len(value) // len(unit))


def run_and_kill(directory, seed, threads, options, rng):
    args = [sys.executable, WRITER, directory, str(seed), str(threads)]
    args += [f"{k}={v}" for k, v in options.items()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    if first != b"ready\n":
        proc.kill()
        pytest.fail(f"writer did not start: {first!r} {proc.communicate()[1].decode()}")
    time.sleep(rng.uniform(0.05, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    # Read through the same file objects: communicate() would skip what readline() buffered.
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait()
    acked = {}
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 2:  # the last line may be cut mid-way by the kill: ignore it
            if len(parts[1]) == 40:
                acked[int(parts[0])] = parts[1]
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return acked


def check(directory, all_acked):
    with logstore.Log.open(directory, segment_bytes=4096) as log:
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
        acked = run_and_kill(directory, r, threads, options, rng)
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
        acked = run_and_kill(directory, r, 2, {"fsync": "never", "segment_bytes": 4096}, rng)
        all_acked.update(acked)
        check(directory, all_acked)
