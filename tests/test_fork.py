"""Issue 16, case 2: an object opened for writing belongs to the process that opened it.

After ``os.fork()`` (or in a ``multiprocessing`` worker started by fork) every call on a Log,
Store, Topic, consumer, WorkQueue or DurableQueue inherited from the parent raises
``logstore.ForkedProcessError`` ("opened in process <pid>; open it again in this process");
``close()`` in the child is a silent no-op that releases nothing of the parent's (its lock,
buffers, clean-shutdown marker). Nothing a child does can lose or duplicate the parent's
records. On main 8f4b83a the child's calls succeed: both processes append at the same offsets
and the parent's durable appends vanish.
"""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

import logstore
from edge_helpers import ENV, ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn):
    """Run ``fn()`` in a forked child; return what it returned (JSON), or its error text.
    The child leaves with os._exit, never through pytest."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            out = json.dumps({"ok": fn()})
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            out = json.dumps({"error": f"{type(e).__name__}: {e}"})
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    doc = json.loads(b"".join(chunks) or b'{"error": "child died"}')
    if "error" in doc:
        raise AssertionError(f"child failed: {doc['error']}")
    return doc["ok"]


def outcomes(calls):
    """{name: exception class name or "no error"} of each zero-argument call."""
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:  # noqa: BLE001
            out[name] = type(e).__name__
            if type(e).__name__ == "ForkedProcessError":
                out[name + ".message"] = str(e)
    return out


def assert_all_refused(result, parent_pid):
    names = [k for k in result if not k.endswith(".message")]
    assert names
    bad = {k: result[k] for k in names if result[k] != "ForkedProcessError"}
    assert not bad, f"calls not refused in the forked child: {bad}"
    for k in names:
        msg = result[k + ".message"]
        assert str(parent_pid) in msg and "open it again in this process" in msg, msg
    assert issubclass(logstore.ForkedProcessError, logstore.LogstoreError)
    assert issubclass(logstore.ForkedProcessError, RuntimeError)


def test_log_refuses_every_call_in_a_forked_child(tmp_path):
    d = str(tmp_path / "log")
    log = logstore.Log.open(d, fsync="always")
    for i in range(5):
        log.append(b"p%d" % i)

    def child():
        res = outcomes({
            "append": lambda: log.append(b"child"),
            "append_batch": lambda: log.append_batch([b"c1", b"c2"]),
            "read": lambda: log.read(0),
            "get": lambda: log.get(0),
            "replay": lambda: list(log.replay()),
            "end_offset": lambda: log.end_offset,
            "flush": lambda: log.flush(),
            "enforce_retention": lambda: log.enforce_retention(),
        })
        log.close()  # silent no-op in the child
        return res

    res = in_child(child)
    assert_all_refused(res, os.getpid())
    # The parent's log is intact and still its own.
    for i in range(5, 205):
        assert log.append(b"p%d" % i) == i
    with pytest.raises(logstore.LogLockedError):  # the child's close released nothing
        logstore.Log.open(d)
    log.close()
    with logstore.Log.open(d, readonly=True) as ro:
        assert [r.value for r in ro.replay()] == [b"p%d" % i for i in range(205)]


def test_issue_scenario_both_processes_append_and_close(tmp_path):
    """The issue: parent and child both append 200 records and close; no error anywhere, and
    the parent's 200 durable appends were gone."""
    d = str(tmp_path / "log")
    log = logstore.Log.open(d, fsync="always")

    def child():
        refused = 0
        for i in range(200):
            try:
                log.append(b"child-%d" % i)
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ == "ForkedProcessError":
                    refused += 1
        log.close()
        return refused

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, str(child()).encode())
        finally:
            os._exit(0)
    os.close(w)
    offs = [log.append(b"parent-%d" % i) for i in range(200)]
    refused = int(os.read(r, 100) or b"-1")
    os.close(r)
    os.waitpid(pid, 0)
    log.close()
    with logstore.Log.open(d) as again:
        stored = [x.value for x in again.replay()]
    parent = [b"parent-%d" % i for i in range(200)]
    assert [v for v in stored if v in set(parent)] == parent, \
        f"{sum(v in set(parent) for v in stored)} of the parent's 200 durable appends left"
    assert stored == parent
    assert offs == list(range(200))
    assert refused == 200


def test_store_topic_consumer_refuse_in_forked_child(tmp_path):
    d = str(tmp_path / "store")
    store = logstore.Store.open(d, fsync="always", retention_check_interval_s=0)
    topic = store.topic("orders", partitions=2)
    for i in range(10):
        topic.publish(b"o%d" % i, key=b"k%d" % i)
    consumer = store.consumer("billing", "orders")
    queue = store.queue("jobs")
    queue.put(b"job-0")
    ends = topic.end_offsets()

    def child():
        res = outcomes({
            "publish": lambda: topic.publish(b"child"),
            "publish_batch": lambda: topic.publish_batch([b"a", b"b"]),
            "store.publish": lambda: store.publish("orders", b"x"),
            "store.topic": lambda: store.topic("other"),
            "consumer.poll": lambda: consumer.poll(10),
            "consumer.commit": lambda: consumer.commit(),
            "queue.put": lambda: queue.put(b"job-child"),
            "queue.get": lambda: queue.get(timeout=0),
            "enforce_retention": lambda: store.enforce_retention(),
        })
        store.close()
        return res

    assert_all_refused(in_child(child), os.getpid())
    assert topic.end_offsets() == ends
    p, off = topic.publish(b"after", key=b"k0")
    assert off == ends[p]
    assert len(consumer.poll(100)) == 11
    consumer.commit()
    m = queue.get(timeout=1)
    assert m.value == b"job-0"
    queue.ack(m)
    with pytest.raises(logstore.LogLockedError):
        logstore.Store.open(d)
    store.close()


def test_durable_queue_refuses_in_forked_child(tmp_path):
    d = str(tmp_path / "q")
    q = logstore.DurableQueue(d)
    for i in range(3):
        q.put(i)

    def child():
        res = outcomes({"put": lambda: q.put("child"), "get": lambda: q.get(timeout=0.1),
                        "qsize": lambda: q.qsize()})
        q.close()
        return res

    assert_all_refused(in_child(child), os.getpid())
    q.put(3)
    assert [q.get(timeout=1) for _ in range(4)] == [0, 1, 2, 3]
    for _ in range(4):
        q.task_done()
    q.close()
    with logstore.DurableQueue(d) as again:
        assert again.qsize() == 0


_POOL_STORE = None
_POOL_TOPIC = None
_POOL_QUEUE = None


def _pool_publish(i):
    try:
        _POOL_TOPIC.publish(b"from-worker-%d" % i)
        return "no error"
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


def _pool_put(i):
    try:
        _POOL_QUEUE.put(i)
        return "no error"
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


def test_multiprocessing_pool_fork_workers_refused(tmp_path):
    """The issue: children's publish/put returned duplicate offsets and vanished."""
    global _POOL_STORE, _POOL_TOPIC, _POOL_QUEUE
    d = str(tmp_path / "store")
    _POOL_STORE = logstore.Store.open(d, fsync="always", retention_check_interval_s=0)
    _POOL_TOPIC = _POOL_STORE.topic("t", partitions=1)
    _POOL_QUEUE = logstore.DurableQueue(str(tmp_path / "q"))
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            published = pool.map(_pool_publish, range(8))
            put = pool.map(_pool_put, range(8))
        assert published == ["ForkedProcessError"] * 8
        assert put == ["ForkedProcessError"] * 8
        offs = [_POOL_TOPIC.publish(b"parent-%d" % i)[1] for i in range(5)]
        assert offs == list(range(5))
        assert [r.value for r in _POOL_TOPIC.partitions[0].replay()] == \
            [b"parent-%d" % i for i in range(5)]
        assert _POOL_QUEUE.qsize() == 0
    finally:
        _POOL_QUEUE.close()
        _POOL_STORE.close()


_FORK_EXIT_SCRIPT = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
import logstore
log = logstore.Log.open(sys.argv[1], fsync="never", write_buffer_bytes=1 << 20)
for i in range(10):
    log.append(b"before-%d" % i)          # buffered in memory, not yet in the file
pid = os.fork()
if pid == 0:
    sys.exit(0)                            # a normal interpreter exit in the child
os.waitpid(pid, 0)
for i in range(10):
    log.append(b"after-%d" % i)
log.close()
"""


def test_forked_child_exit_leaves_parent_buffer_alone(tmp_path):
    """Guard for the fix of case 9: a flush-at-exit hook must not run in a forked child (it
    would write the parent's buffered appends, or a clean-shutdown marker, from the child)."""
    d = str(tmp_path / "log")
    r = subprocess.run([sys.executable, "-c", _FORK_EXIT_SCRIPT, d, ROOT], env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with logstore.Log.open(d) as log:
        assert [x.value for x in log.replay()] == (
            [b"before-%d" % i for i in range(10)] + [b"after-%d" % i for i in range(10)])


def test_readme_says_to_open_in_the_child():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert "fork" in text and "ForkedProcessError" in text
