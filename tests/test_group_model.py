"""Stateful model test of the consumer-group view across two stores (two "processes").

A hypothesis ``RuleBasedStateMachine`` drives members of one group on a 3-partition topic, in a
writer store and a read-only store of the same directory (each store holds its own leases, as
separate processes would): joins, leaves, polls, commits, seeks, publishes and store restarts
(closing without committing: a crash for the group). It checks every answer against a plain
model: members in joining order share the partitions ``p % members``; a partition keeps its
position while it stays in one store and continues from its last commit when it moves to
another store or the store restarts; a poll returns, per partition, the records right after the
position, in order.

The rebalance interval is set to 0 so that every call looks at the leases; ``settle`` calls
``assignment()`` on every member twice (the first pass releases, the second takes).
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import logstore
from logstore.views import consumer as consumer_module

PARTITIONS = 3
MAX_MEMBERS = 4


class GroupMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self._interval = consumer_module.REBALANCE_INTERVAL_S
        consumer_module.REBALANCE_INTERVAL_S = 0.0
        self.dir = tempfile.mkdtemp(prefix="logstore-group-model-")
        self.stores = [logstore.Store.open(self.dir, fsync="never",
                                           retention_check_interval_s=0), None]
        self.stores[0].topic("t", partitions=PARTITIONS)
        self.stores[1] = logstore.Store.open(self.dir, readonly=True)
        self.ends = [0] * PARTITIONS  # model: records per partition (value = b"p:offset")
        self.members = []  # (store index, Consumer), in joining order
        self.committed = {}  # partition -> committed next offset
        self.holder = {}  # partition -> store index holding its lease (model)
        self.position = {}  # partition -> next offset read by its holder

    def teardown(self):
        for s in self.stores:
            s.close()
        consumer_module.REBALANCE_INTERVAL_S = self._interval
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ model
    def model_assignment(self, i):
        return [p for p in range(PARTITIONS) if p % len(self.members) == i]

    def settle(self):
        for _ in range(2):
            for _s, c in self.members:
                c.assignment()
        holder = {}
        for i, (s, _c) in enumerate(self.members):
            for p in self.model_assignment(i):
                holder[p] = s
        for p, s in holder.items():
            if self.holder.get(p) != s:  # moved to another store (or newly taken)
                self.committed.setdefault(p, 0)  # "earliest": the start is committed at once
                self.position[p] = self.committed[p]
        self.position = {p: o for p, o in self.position.items() if p in holder}
        self.holder = holder

    # ------------------------------------------------------------------ rules
    @rule(p=st.integers(0, PARTITIONS - 1), n=st.integers(1, 5))
    def publish(self, p, n):
        topic = self.stores[0].topic("t")
        for _ in range(n):
            topic.publish(b"%d:%d" % (p, self.ends[p]), partition=p)
            self.ends[p] += 1

    @precondition(lambda self: len(self.members) < MAX_MEMBERS)
    @rule(s=st.integers(0, 1))
    def join(self, s):
        self.members.append((s, self.stores[s].consumer("g", "t")))
        self.settle()

    @precondition(lambda self: self.members)
    @rule(data=st.data())
    def leave(self, data):
        i = data.draw(st.integers(0, len(self.members) - 1))
        _s, c = self.members.pop(i)
        c.close()
        self.settle()

    @precondition(lambda self: self.members)
    @rule(data=st.data(), n=st.integers(1, 12))
    def poll(self, data, n):
        i = data.draw(st.integers(0, len(self.members) - 1))
        _s, c = self.members[i]
        assigned = self.model_assignment(i)
        recs = c.poll(n)
        assert len(recs) <= n
        by_part = {}
        for r in recs:
            assert r.partition in assigned
            by_part.setdefault(r.partition, []).append(r.offset)
            assert r.value == b"%d:%d" % (r.partition, r.offset)
        for p, offs in by_part.items():
            assert offs == list(range(self.position[p], self.position[p] + len(offs)))
            self.position[p] += len(offs)
        if len(recs) < n:  # a short poll drained every assigned partition
            assert all(self.position[p] == self.ends[p] for p in assigned)

    @precondition(lambda self: self.members)
    @rule(data=st.data())
    def commit(self, data):
        i = data.draw(st.integers(0, len(self.members) - 1))
        self.members[i][1].commit()
        for p in self.model_assignment(i):
            self.committed[p] = self.position[p]

    @precondition(lambda self: self.members)
    @rule(data=st.data())
    def seek(self, data):
        i = data.draw(st.integers(0, len(self.members) - 1))
        assigned = self.model_assignment(i)
        if not assigned:
            return
        p = data.draw(st.sampled_from(assigned))
        off = data.draw(st.integers(0, self.ends[p]))
        self.members[i][1].seek(p, off)
        self.position[p] = off

    @rule(s=st.integers(0, 1))
    def restart_store(self, s):
        """Close a store without committing (a crash, for the group) and open it again."""
        self.stores[s].close()
        if s == 0:
            self.stores[0] = logstore.Store.open(self.dir, fsync="never",
                                                 retention_check_interval_s=0)
        else:
            self.stores[1] = logstore.Store.open(self.dir, readonly=True)
        self.members = [(t, c) for t, c in self.members if t != s]
        self.holder = {p: t for p, t in self.holder.items() if t != s}
        self.settle()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def assignments_and_commits_match(self):
        for i, (_s, c) in enumerate(self.members):
            assert c.assignment() == self.model_assignment(i)
            for p in self.model_assignment(i):
                assert c.position(p) == self.position[p]
        assert self.stores[0].groups().get("g", {}).get("t", {}) == self.committed


def test_consumer_group_matches_model():
    run_state_machine_as_test(GroupMachine, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
