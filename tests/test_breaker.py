"""CircuitBreaker: its state machine (on a fake clock), a queue worker behind it (failed messages
left to their visibility timeout, no gets while open, one probe), metrics, restart, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import logstore
from logstore import CircuitBreaker, CircuitOpenError, ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "messaging_child.py")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    s = logstore.Store.open(tmp_path / "s", fsync="never", retention_check_interval_s=0)
    yield s
    s.close()


def fail():
    raise RuntimeError("down")


def test_opens_after_n_failures_within_the_window():
    clock = Clock()
    cb = CircuitBreaker("x", failures=3, window_s=10, cooldown_s=5, clock=clock)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            cb.call(fail)
    clock.t += 11  # those two fall out of the window
    for _ in range(2):
        with pytest.raises(RuntimeError):
            cb.call(fail)
    assert cb.state == "closed"
    assert cb.call(lambda: 42) == 42  # a success does not reset a closed breaker's window
    with pytest.raises(RuntimeError):
        cb.call(fail)
    assert cb.state == "open"
    with pytest.raises(CircuitOpenError):
        cb.call(lambda: 1)
    _, name, fig = cb.metrics()
    assert name == "x" and fig["state"] == "open" and fig["opened_total"] == 1
    assert fig["failures_total"] == 5 and fig["short_circuited_total"] == 1


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    cb = CircuitBreaker("x", failures=1, window_s=10, cooldown_s=5, clock=clock)
    cb.record_failure()
    assert cb.state == "open" and not cb.allow()
    assert cb.remaining_cooldown() == 5
    clock.t += 5
    assert cb.state == "half_open"
    assert cb.allow() is True  # the probe
    assert cb.allow() is False and cb.allow() is False  # everybody else waits
    cb.record_failure()  # the probe failed: open again, a new cool-down
    assert cb.state == "open" and cb.remaining_cooldown() == 5
    clock.t += 5
    assert cb.allow() is True
    cb.cancel_probe()  # found nothing to do
    assert cb.allow() is True  # another caller may probe
    cb.record_success()
    assert cb.state == "closed" and cb.allow() and cb.allow()
    fig = cb.metrics()[2]
    assert fig["probes_total"] == 3 and fig["opened_total"] == 2


def test_failures_of_work_taken_before_it_opened_do_not_extend_it():
    clock = Clock()
    cb = CircuitBreaker("x", failures=2, window_s=10, cooldown_s=5, clock=clock)
    cb.record_failure()
    cb.record_failure()
    clock.t += 4
    cb.record_failure()  # a straggler while open
    clock.t += 1
    assert cb.state == "half_open"


def test_bad_settings():
    for kw in ({"failures": 0}, {"window_s": 0}, {"cooldown_s": -1}, {"failures": True}):
        with pytest.raises(ConfigError):
            CircuitBreaker("x", **kw)


def test_worker_leaves_failed_messages_in_flight_and_stops_getting(store):
    q = store.queue("jobs", visibility_timeout=3600)
    for i in range(10):
        q.put(b"%d" % i)
    cb = CircuitBreaker("jobs", failures=2, window_s=60, cooldown_s=3600, store=store)
    handled = []

    def handler(msg):
        handled.append(msg.value)
        if msg.value in (b"1", b"2"):
            raise RuntimeError("downstream is down")

    results = [cb.process(q, handler, timeout=1) for _ in range(3)]
    assert results == [True, False, False] and cb.state == "open"
    assert cb.process(q, handler, timeout=0.01) is None  # open: no get
    st = q.stats()
    assert (st["in_flight"], st["depth"], st["total"]) == (2, 7, 9)  # not nacked, not taken
    assert handled == [b"0", b"1", b"2"]
    m = store.metrics()
    assert m["breakers"]["jobs"]["state"] == "open"
    assert m["queues"]["jobs"]["errors_total"] == 2 and m["queues"]["jobs"]["nacked_total"] == 0


def test_nack_on_failure_option(store):
    q = store.queue("jobs", backoff=(0, 0))
    q.put(b"bad")
    cb = CircuitBreaker("jobs", failures=5, store=store)
    assert cb.process(q, fail_msg, timeout=1, on_failure="nack") is False
    assert q.stats()["in_flight"] == 0
    msg = q.get(timeout=5)
    assert msg.value == b"bad" and msg.delivery_count == 2


def fail_msg(msg):
    raise RuntimeError("down")


def test_probe_success_closes_and_work_flows_again(store):
    clock = Clock()
    q = store.queue("jobs")
    for i in range(5):
        q.put(b"%d" % i)
    cb = CircuitBreaker("jobs", failures=1, window_s=60, cooldown_s=30, clock=clock)
    healthy = threading.Event()

    def handler(msg):
        if not healthy.is_set():
            raise RuntimeError("down")

    assert cb.process(q, handler, timeout=1) is False
    assert cb.state == "open"
    healthy.set()
    clock.t += 30
    assert cb.process(q, handler, timeout=1) is True  # the probe
    assert cb.state == "closed"
    assert [cb.process(q, handler, timeout=1) for _ in range(3)] == [True] * 3


def test_threads_share_one_probe(store):
    clock = Clock()
    q = store.queue("jobs")
    for i in range(20):
        q.put(b"%d" % i)
    cb = CircuitBreaker("jobs", failures=1, window_s=60, cooldown_s=30, clock=clock)
    cb.record_failure()
    clock.t += 30
    inside = threading.Event()
    release = threading.Event()
    calls = []

    def handler(msg):
        calls.append(msg.value)
        inside.set()
        release.wait(30)

    probe = threading.Thread(target=cb.process, args=(q, handler, 1))
    probe.start()
    assert inside.wait(30)
    others = [cb.process(q, handler, timeout=0.01) for _ in range(5)]  # while it probes
    release.set()
    probe.join()
    assert others == [None] * 5 and len(calls) == 1 and cb.state == "closed"


def test_run_loop_stops(store):
    q = store.queue("jobs")
    for i in range(3):
        q.put(b"%d" % i)
    cb = CircuitBreaker("jobs", store=store)
    seen = []
    t = threading.Thread(target=cb.run, args=(q, lambda m: seen.append(m.value)))
    t.start()
    deadline = time.monotonic() + 30
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    cb.stop()
    t.join(30)
    assert not t.is_alive() and sorted(seen) == [b"0", b"1", b"2"]
    assert q.stats()["total"] == 0


def test_restart_delivers_what_an_open_breaker_left(tmp_path):
    root = tmp_path / "s"
    with logstore.Store.open(root, fsync="always") as s:
        q = s.queue("jobs", visibility_timeout=3600)
        for i in range(6):
            q.put(b"%d" % i)
        cb = CircuitBreaker("jobs", failures=2, cooldown_s=3600, store=s)
        while cb.state != "open":
            cb.process(q, lambda m: fail() if int(m.value) % 2 else None, timeout=1)
        assert s.metrics()["breakers"]["jobs"]["state"] == "open"
    with logstore.Store.open(root, fsync="always") as s:
        q = s.queue("jobs")
        cb = CircuitBreaker("jobs", store=s)
        assert cb.state == "closed"  # in memory only
        done = []
        while cb.process(q, lambda m: done.append(m.value), timeout=0.2) is not None:
            pass
        # 0 and 2 were acked before the restart; 1 and 3 failed (in flight), 4, 5 not taken
        assert sorted(done) == [b"1", b"3", b"4", b"5"]


def test_sigkill_of_a_worker_behind_an_open_breaker(tmp_path):
    root = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, CHILD, "breaker", root, "12"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        while True:
            line = proc.stdout.readline().decode().strip()
            if not line:
                pytest.fail(f"child ended: {proc.wait()} {proc.stderr.read().decode()}")
            if line == "open":
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    acked = {line.split()[1].encode() for line in lines}
    assert acked == {b"0", b"2"}  # 1 and 3 failed, then it opened
    with logstore.Store.open(root) as s:
        q = s.queue("jobs")
        rest = []
        while (m := q.get(timeout=0.3)) is not None:
            rest.append(m.value)
            q.ack(m)
        assert sorted(rest) == sorted(b"%d" % i for i in range(12) if b"%d" % i not in acked)
