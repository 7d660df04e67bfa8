"""Consumer groups across processes: partition leases, rebalancing, takeover after SIGKILL.

Members in other processes open the store read-only; each partition is read and committed by the
holder of its lease (an flock the kernel drops when the holder dies). See logstore/leases.py.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import logstore
from logstore.views import leases
from logstore.errors import LogLockedError, NotAssignedError

MEMBER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "group_member.py")


class MemberProcess:
    """A group_member.py child; a thread collects its report lines."""

    def __init__(self, root, group, topic, pause, stop_file):
        self.proc = subprocess.Popen(
            [sys.executable, MEMBER, root, group, topic, str(pause), stop_file],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assignments = []  # every assignment it reported, in order
        self.records = []  # (partition, offset) in delivery order
        self.commits = {}  # partition -> last offset whose commit returned
        self.done = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            kind, _, body = line.rstrip("\n").partition(" ")
            with self.lock:
                if kind == "A":
                    self.assignments.append(json.loads(body))
                elif kind == "R":
                    self.records.extend(tuple(x) for x in json.loads(body))
                elif kind == "C":
                    self.commits.update({int(p): o for p, o in json.loads(body).items()})
                elif kind == "BYE":
                    self.done = True

    @property
    def assignment(self):
        with self.lock:
            return self.assignments[-1] if self.assignments else None

    def snapshot(self):
        with self.lock:
            return list(self.records), dict(self.commits)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.thread.join(timeout=30)

    def finish(self):
        self.proc.wait(timeout=60)
        self.thread.join(timeout=30)
        assert self.proc.returncode == 0, self.proc.stderr.read()


def wait_until(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def publish(topic, n, start=0):
    for i in range(start, start + n):
        topic.publish(b"m%d" % i, key=b"k%d" % i)


def test_members_in_two_processes_split_the_partitions_and_one_takes_over_after_sigkill(
        tmp_path):
    root, stop = str(tmp_path / "s"), str(tmp_path / "stop")
    store = logstore.Store.open(root, retention_check_interval_s=0)
    topic = store.topic("ev", partitions=4)
    publish(topic, 400)
    a = MemberProcess(root, "g", "ev", 0.02, stop)
    b = None
    try:
        wait_until(lambda: a.assignment == [0, 1, 2, 3], what="A to hold every partition")
        wait_until(lambda: a.snapshot()[1], what="A's first commit")
        b = MemberProcess(root, "g", "ev", 0.02, stop)
        # Joining re-splits: p % 2 by joining order, so A keeps 0 and 2, B gets 1 and 3.
        wait_until(lambda: a.assignment == [0, 2] and b.assignment == [1, 3],
                   what="the split between A and B")
        publish(topic, 400, start=400)  # read by the members through their read-only stores
        wait_until(lambda: len(b.snapshot()[0]) >= 20, what="B to read")
        a.kill()
        a_records, a_commits = a.snapshot()
        wait_until(lambda: b.assignment == [0, 1, 2, 3], what="B to take over A's partitions")
        publish(topic, 200, start=800)
        ends = topic.end_offsets()
        wait_until(lambda: all(b.snapshot()[1].get(p) == end for p, end in ends.items()),
                   what="B to commit everything")
        open(stop, "w").close()
        b.finish()
    finally:
        open(stop, "w").close()
        for m in (a, b):
            if m is not None and m.proc.poll() is None:
                m.kill()
    b_records, b_commits = b.snapshot()
    everything = {(p, o) for p, end in ends.items() for o in range(end)}
    # No loss: every record was delivered to a member.
    assert set(a_records) | set(b_records) == everything
    # One holder at a time, and at-least-once handover: B read each partition it took from A
    # (1 and 3 when it joined, 0 and 2 after the kill) from A's last durable commit to the end,
    # in order, without a gap or a duplicate. Only what A polled and had not committed is
    # delivered twice.
    for p in range(4):
        got = [o for q, o in b_records if q == p]
        # B starts at A's last durable commit: the last one A reported, or one A made after it
        # but was killed before reporting (never beyond what A had read).
        read_by_a = [o for q, o in a_records if q == p]
        first = got[0] if got else ends[p]
        assert a_commits.get(p, 0) <= first <= (max(read_by_a) + 1 if read_by_a else 0) or \
            first == a_commits.get(p, 0), (p, got[:3], a_commits)
        assert got == list(range(first, ends[p])), (p, got[:3], a_commits)
        twice = set(read_by_a) & set(got)
        assert all(o >= a_commits.get(p, 0) for o in twice)
    # Committed offsets are visible to the writer's store, from the lease logs.
    assert store.groups()["g"]["ev"] == b_commits == ends
    store.close()


def test_lease_is_exclusive_between_stores_and_commit_elsewhere_is_refused(tmp_path):
    root = str(tmp_path / "s")
    writer = logstore.Store.open(root, retention_check_interval_s=0)
    topic = writer.topic("t", partitions=2)
    publish(topic, 10)
    reader = logstore.Store.open(root, readonly=True)  # another "process" (its own flocks)
    try:
        first = writer.consumer("g", "t")
        assert first.assignment() == [0, 1]
        second = reader.consumer("g", "t")  # joins: wants partition 1, held by `first`
        assert second.assignment() == []  # not until the holder lets go
        with pytest.raises(NotAssignedError):
            second.commit({1: 3})
        time.sleep(leases_interval())
        assert first.assignment() == [0]  # the holder sees the new member and lets 1 go
        time.sleep(leases_interval())
        assert second.assignment() == [1]
        second.commit({1: 3})
        with pytest.raises(NotAssignedError):
            first.commit({1: 5})
        assert first.committed() == {0: 0, 1: 3}  # read from partition 1's lease log
        assert writer.groups()["g"]["t"] == {0: 0, 1: 3}
        second.close()
        time.sleep(leases_interval())
        assert first.assignment() == [0, 1]
        assert first.position(1) == 3  # continues from the other member's commit
    finally:
        reader.close()
        writer.close()


def leases_interval():
    from logstore.views.consumer import REBALANCE_INTERVAL_S

    return REBALANCE_INTERVAL_S * 1.5


def test_dead_member_files_are_removed_and_do_not_hold_partitions(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        store.topic("t", partitions=2)
        members = os.path.join(leases.group_path(root, "t", "g"), leases.MEMBERS_DIR)
        os.makedirs(members)
        # A member file nobody holds: its process died (SIGKILL leaves the file behind).
        ghost = os.path.join(members, "0000000000000000-00000001-000000")
        open(ghost, "w").close()
        c = store.consumer("g", "t")
        assert c.assignment() == [0, 1]  # the ghost does not count
        assert not os.path.exists(ghost)
        assert len(os.listdir(members)) == 1  # c's own file
        c.close()
        assert os.listdir(members) == []


def test_group_ids_with_any_characters_get_a_safe_directory(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", retention_check_interval_s=0) as store:
        publish(store.topic("t"), 3)
        for gid in ("a/../../b", "émoji ✓", "x" * 200, "plain-name.1"):
            g = store.consumer(gid, "t")
            assert len(g.poll(10)) == 3
            g.commit()
            path = leases.group_path(root, "t", gid)
            assert os.path.dirname(path) == os.path.join(root, "internal", "groups", "t")
            assert store.groups()[gid]["t"] == {0: 3}
        assert os.listdir(os.path.join(root, "topics")) == ["t"]  # nothing escaped


def test_unsubscribe_refused_while_a_member_in_another_store_holds_it(tmp_path):
    root = str(tmp_path / "s")
    writer = logstore.Store.open(root, fsync="never", retention_check_interval_s=0)
    writer.topic("news", partitions=2)
    reader = logstore.Store.open(root, readonly=True)
    try:
        sub = reader.subscribe("news", "audit")
        assert writer.subscriptions("news") == ["audit"]
        with pytest.raises(LogLockedError):
            writer.unsubscribe("news", "audit")
        assert writer.subscriptions("news") == ["audit"]  # nothing removed
        assert sub.poll(10) == []
        sub.close()
        writer.unsubscribe("news", "audit")
        assert writer.subscriptions("news") == []
        assert os.listdir(os.path.join(root, "internal", "groups", "news")) == []
    finally:
        reader.close()
        writer.close()


def test_version_1_store_commits_are_read_and_the_store_is_upgraded(tmp_path):
    root = str(tmp_path / "s")
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        publish(store.topic("t", partitions=2), 20)
        # What version 1 did: group commits in the offsets log.
        store.offsets.commit("old", "t", {0: 4, 1: 2})
    meta_path = os.path.join(root, "store.meta")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["version"] = 1
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with logstore.Store.open(root, readonly=True) as ro:
        assert ro.groups()["old"]["t"] == {0: 4, 1: 2}
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        with open(meta_path) as f:
            assert json.load(f)["version"] == 2
        g = store.consumer("old", "t")
        assert g.position(0) == 4 and g.position(1) == 2
        recs = g.poll(100)
        assert len(recs) == 20 - 6
        g.commit()
        assert store.groups()["old"]["t"] == store.topic("t").end_offsets()
    with logstore.Store.open(root, retention_check_interval_s=0) as store:
        assert store.consumer("old", "t").poll(100) == []  # the lease logs win from now on


def test_lease_log_stays_small_under_many_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "LEASE_SEGMENT_BYTES", 4096)  # ~60 commits per segment
    monkeypatch.setattr(leases, "_TRIM_AFTER_RECORDS", 100)
    root = str(tmp_path / "s")
    with logstore.Store.open(root, fsync="never", retention_check_interval_s=0) as store:
        publish(store.topic("t"), 1)
        g = store.consumer("g", "t")
        for i in range(3000):
            g.commit({0: i % 2})
        log = g._state.leases[0]
        assert len(log.segments()) <= 3
        assert leases.last_commit(log) == 1
    with logstore.Store.open(root, readonly=True) as ro:
        assert ro.groups()["g"]["t"] == {0: 1}
