"""Exactly-once under SIGKILL: random pipelines, the processor process killed at random
moments (a timer) or at chosen steps of a commit (after an output batch, after a changelog
batch, after a whole commit), restarted, fed more input between rounds; at the end every
output partition holds exactly the reference's records, task by task and in order, and the
state equals the reference's (tests/processing_model.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import processing_model as M  # noqa: E402

import logstore  # noqa: E402
from logstore.processing import task as task_module  # noqa: E402

KILLS_PER_PIPELINE = 5
PIPELINES = 8  # 40 SIGKILLs in all


def _child(root: str, spec, store_options, proc_options, kill_at) -> None:
    """Run the processor until caught up; with ``kill_at = (point or None, n)``, SIGKILL itself at
    the n-th commit step of that kind ("output": after an output batch; None: any step)."""
    code = 1
    try:
        if kill_at is not None:
            seen = [0]
            only, nth = kill_at

            def hook(point: str) -> None:
                if only is None or point == only:
                    seen[0] += 1
                    if seen[0] >= nth:
                        os.kill(os.getpid(), signal.SIGKILL)

            task_module.fault_hook = hook
        store = logstore.Store.open(root, **store_options)
        app = M.build(store, spec, **proc_options)
        app.run(until_caught_up=True, handle_signals=False)
        store.close()
        code = 0
    except BaseException:  # pragma: no cover - shown by the parent's assertion
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _run_child(root, spec, store_options, proc_options, kill_at=None, kill_after=None) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _child(root, spec, store_options, proc_options, kill_at)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("seed", range(PIPELINES))
def test_sigkill_rounds_leave_exactly_the_reference_output(tmp_path, seed):
    rnd = random.Random(1000 + seed)
    spec = M.random_spec(rnd)
    while ("flat_map", 0) in spec["pre"]:  # a pipeline that drops everything tests little
        spec = M.random_spec(rnd)
    if seed % 4 == 0:  # every output and changelog commit split into several batches
        store_options = {"fsync": "never", "max_record_bytes": 2048}
    elif seed % 4 == 1:
        store_options = {"fsync": "always"}
    else:
        store_options = {"fsync": "never"}
    proc_options = {"batch_records": rnd.choice([20, 50, 200]), "commit_interval_s": 0}
    total = rnd.randrange(1500, 3000)
    inputs = M.make_input(rnd, spec["partitions"], total)
    root = str(tmp_path / "store")
    published = 0
    kills = attempts = 0
    while kills < KILLS_PER_PIPELINE and attempts < 4 * KILLS_PER_PIPELINE:
        attempts += 1
        # More input before most rounds (the store is closed while the child runs).
        upto = min(total, published + rnd.randrange(total // 6 + 1))
        store = logstore.Store.open(root, **store_options)
        M.publish(store, [recs[:upto] for recs in inputs], rnd, start=published, max_batch=20)
        store.close()
        published = upto
        if rnd.random() < 0.6:
            status = _run_child(root, spec, store_options, proc_options,
                                kill_at=(rnd.choice([None, "output"]), rnd.randrange(1, 30)))
        else:
            status = _run_child(root, spec, store_options, proc_options,
                                kill_after=rnd.uniform(0.0, 0.12))
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, status
        kills += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert kills == KILLS_PER_PIPELINE, f"only {kills} of {attempts} rounds were killed"
    store = logstore.Store.open(root, **store_options)
    M.publish(store, inputs, rnd, start=published, max_batch=20)
    store.close()
    status = _run_child(root, spec, store_options, proc_options)  # uninterrupted, to the end
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    store = logstore.Store.open(root, readonly=True)
    try:
        M.check(store, spec, inputs)
        desc = logstore.processing.describe(store)
        assert desc[0]["stages"][0]["lag"] == 0
        assert desc[0]["records_in"] >= sum(len(r) for r in inputs)
    finally:
        store.close()
    print(f"seed {seed}: {kills} SIGKILLs, {desc[0]['redone_transactions']} transactions "
          f"completed after a restart, spec {json.dumps(spec)}")


# ------------------------------------------------------------------------------ chosen steps
class _Crash(Exception):
    pass


def _crash_at(point: str, nth: int):
    seen = [0]

    def hook(p: str) -> None:
        if p == point:
            seen[0] += 1
            if seen[0] == nth:
                raise _Crash(f"{point} #{nth}")

    return hook


def _counting_app(store, name="cnt"):
    from logstore import processing as lp

    app = lp.Processor(store, name, batch_records=400, commit_interval_s=0)

    def count(value, state):
        n = state.get("n", 0) + 1
        state.set("n", n)
        return b"%s:%d" % (value, n)

    app.stream("in").map(count, stateful=True, name="counts").to("out", partitions=3)
    return app


def _check_counts(store, n_keys, per_key):
    from logstore import processing as lp

    got = {}
    for log in store.topic("out").partitions:
        for r in log.replay():
            v, n = r.value.rsplit(b":", 1)
            got.setdefault(r.key, []).append(int(n))
    assert got == {b"key-%d" % k: list(range(1, per_key + 1)) for k in range(n_keys)}
    assert lp.read_state(store, "cnt", "counts") == {
        b"key-%d" % k: {"n": per_key} for k in range(n_keys)}


@pytest.mark.parametrize("point,nth", [("output", 1), ("output", 2), ("output", 5),
                                       ("changelog", 1), ("changelog", 3),
                                       ("changelog", 20)])
def test_a_commit_interrupted_at_each_step_is_completed_exactly_once(tmp_path, point, nth):
    """Small batches (max_record_bytes=2048): each transaction writes every output partition in
    several parts and its changelog in several batches, so an interruption after one of them
    leaves a partly written transaction: parts of outputs, or state entries after the last
    commit record. The next run must finish it without a duplicate and without taking the
    uncommitted entries for state."""
    from logstore.processing import changelog as C

    n_keys, per_key = 300, 4
    root = str(tmp_path)
    with logstore.Store.open(root, fsync="never", max_record_bytes=2048) as store:
        topic = store.topic("in", partitions=2)
        for r in range(per_key):
            for k in range(0, n_keys, 20):
                topic.publish_batch([b"v%d" % r] * 20,
                                    keys=[b"key-%d" % j for j in range(k, k + 20)])
        task_module.fault_hook = _crash_at(point, nth)
        try:
            with pytest.raises(_Crash):
                _counting_app(store).run(until_caught_up=True)
        finally:
            task_module.fault_hook = None
        tails = 0
        for p in range(2):
            log = C.open_changelog_readonly(root, "cnt", 0, p)
            tails += len(C.read_changelog(log)[2])
            log.close()
        if point == "changelog":
            assert tails > 0  # state entries after the last commit record
        stats = _counting_app(store).run(until_caught_up=True)
        if point == "output":
            assert sum(t["redone_transactions"] for t in stats["tasks"]) == 1
        _check_counts(store, n_keys, per_key)


def test_uncommitted_state_entries_never_become_state_after_a_later_commit(tmp_path):
    """A state-only processor (no outputs, so nothing pins the re-run to the same input range):
    interrupted in the middle of a commit whose entries span several changelog batches, then
    run with smaller transactions and interrupted after its first commit. The entries of the
    first, unfinished commit now precede a commit record: they must have been rewritten with
    their committed values, or the next restore would take them for state (double counts)."""
    from logstore import processing as lp

    def app_with(batch):
        app = lp.Processor(store, "cnt", batch_records=batch, commit_interval_s=0)

        def count(value, state):
            state.set("n", state.get("n", 0) + 1)
            return value

        app.stream("in").map(count, stateful=True, name="counts")
        return app

    with logstore.Store.open(tmp_path, fsync="never", max_record_bytes=2048) as store:
        topic = store.topic("in", partitions=1)
        for r in range(3):
            for k in range(0, 300, 20):
                topic.publish_batch([b"v"] * 20, keys=[b"key-%d" % j for j in range(k, k + 20)])
        for batch, point, nth in ((400, "changelog", 3), (50, "committed", 1)):
            task_module.fault_hook = _crash_at(point, nth)
            try:
                with pytest.raises(_Crash):
                    app_with(batch).run(until_caught_up=True)
            finally:
                task_module.fault_hook = None
        app_with(400).run(until_caught_up=True)
        assert lp.read_state(store, "cnt", "counts") == {
            b"key-%d" % k: {"n": 3} for k in range(300)}
