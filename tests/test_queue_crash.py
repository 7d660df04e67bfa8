"""Issue 17, case 1: a work queue's periodic checkpoint must contain every event logged before it.

A real child process (tests/queue_crash_worker.py) drives a queue so that the checkpoint taken
every ``CHECKPOINT_EVERY`` events falls exactly on its last ack / nack / dead-lettering, reports
each one after the call returned, and is SIGKILLed by the parent. The parent reopens the store
and checks the promise: an acked (or dead-lettered, or task_done) message is never delivered
again, a nacked message keeps its delay, a dead letter is published once.

Most cases shrink the checkpoint interval in the child (``storefaults.set_checkpoint_every``) to
stay fast; the ``real_interval`` cases keep the engine's own interval (the issue's reproduction:
10,000 messages, the 20,000th event is the last ack).
"""

from __future__ import annotations

import os
import queue as stdlib_queue
import signal
import subprocess
import sys

import pytest

import logstore
from storefaults import checkpoint_every

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "queue_crash_worker.py")
SMALL = 10  # messages; the checkpoint interval becomes 2 * SMALL events


def run_and_kill(root: str, mode: str, n: int, every: int, fsync: str) -> list:
    """Run the worker until it reports "done", SIGKILL it, return the lines it reported."""
    proc = subprocess.Popen([sys.executable, WORKER, root, mode, str(n), str(every), fsync],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"worker ended early: {proc.wait()} {proc.stderr.read().decode()}")
            line = line.decode().strip()
            if line == "done":
                break
            lines.append(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


def drain(q, timeout: float = 0.3) -> list:
    """Every message the queue hands out now (acked as they come)."""
    out = []
    while True:
        msg = q.get(timeout=timeout)
        if msg is None:
            return out
        out.append((msg.value.decode(), msg.delivery_count))
        msg.ack()


CASES = [
    # (mode, messages, checkpoint interval in the child (0 = the engine's), fsync)
    pytest.param("ack", SMALL, 2 * SMALL, "always", id="ack-always"),
    pytest.param("ack", SMALL, 2 * SMALL, "never", id="ack-never"),
    pytest.param("ack", None, 0, "never", id="ack-real_interval"),
]


@pytest.mark.parametrize("mode, n, every, fsync", CASES)
def test_acked_message_not_redelivered_after_crash_at_checkpoint(tmp_path, mode, n, every, fsync):
    if n is None:
        n = checkpoint_every() // 2  # the 10,000: the last ack is the checkpoint event
    root = str(tmp_path / "store")
    lines = run_and_kill(root, mode, n, every, fsync)
    acked = {line.split()[1] for line in lines if line.startswith("acked ")}
    assert len(acked) == n
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        q = store.queue("jobs")
        again = drain(q)
        assert not [v for v, _ in again if v in acked], \
            f"acked messages delivered again after the crash: {again[:5]}"
        assert len(q) == 0


def test_nacked_message_keeps_its_delay_after_crash_at_checkpoint(tmp_path):
    root = str(tmp_path / "store")
    lines = run_and_kill(root, "nack", SMALL, 2 * SMALL, "always")
    assert lines[-1] == f"nacked m{SMALL - 1}"
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        q = store.queue("jobs")
        got = drain(q)
        assert got == [], f"a message nacked with delay=3600 s was delivered at once: {got}"
        assert len(q) == 1
        assert q.stats()["delayed"] == 1


def test_dead_lettered_message_not_dead_lettered_again_after_crash_at_checkpoint(tmp_path):
    root = str(tmp_path / "store")
    lines = run_and_kill(root, "dlq", SMALL, 2 * SMALL, "always")
    assert lines[-1] == f"dead m{SMALL - 1}"
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        q = store.queue("jobs", max_deliveries=1)
        got = drain(q)
        assert got == []
        dlq = store.topic("jobs.dlq")
        copies = [r.value for r in dlq.partitions[0].replay()]
        assert copies == [b"m%d" % (SMALL - 1)], \
            f"the dead letter was published {len(copies)} times: {copies}"
        assert q.dead_lettered() == 1
        assert len(q) == 0


@pytest.mark.parametrize("mode, real", [("dq", False), ("dsq", False), ("dq", True)],
                         ids=["dq", "dsq", "dq-real_interval"])
def test_durable_queue_done_item_not_redelivered_after_crash_at_checkpoint(tmp_path, mode, real):
    n = checkpoint_every() // 2 if real else SMALL
    root = str(tmp_path / "dq")
    lines = run_and_kill(root, mode, n, 0 if real else 2 * n, "never")
    done = [line.split()[1] for line in lines]
    assert done == [f"m{i}" for i in range(n)]
    cls = logstore.DurableQueue if mode == "dq" else logstore.DurableSimpleQueue
    q = cls(root, fsync="never")
    try:
        again = []
        while True:
            try:
                again.append(q.get_nowait())
            except stdlib_queue.Empty:
                break
        assert again == [], f"items done before the crash delivered again: {again[:5]}"
    finally:
        q.close()
