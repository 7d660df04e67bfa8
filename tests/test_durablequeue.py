"""DurableQueue / DurableSimpleQueue: CPython's Lib/test/test_queue.py behaviours, ported, plus
task_done attribution, closing, locking, serializers, storage failures and crash durability.

The ported CPython tests run against the stdlib class *and* the durable one (fixture ``make``),
so any difference in semantics shows up as a failure on one side only.
"""

import errno
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

import logstore
from logstore import LogClosedError, LogLockedError, StorageError
from logstore.durablequeue import BYTES, JSON, PICKLE, DurableQueue, DurableSimpleQueue
from logstore.fs import FileSystem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUE_SIZE = 5


@pytest.fixture
def qdir(tmp_path):
    return str(tmp_path / "q")


class _Factory:
    """Creates queues of one kind; closes the durable ones at teardown."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.tmp_path = tmp_path
        self.made = []

    def __call__(self, maxsize=0):
        if self.kind == "stdlib":
            return queue.Queue(maxsize)
        q = DurableQueue(str(self.tmp_path / f"q{len(self.made)}"), maxsize, fsync="never")
        self.made.append(q)
        return q

    def simple(self):
        if self.kind == "stdlib":
            return queue.SimpleQueue()
        q = DurableSimpleQueue(str(self.tmp_path / f"s{len(self.made)}"), fsync="never")
        self.made.append(q)
        return q

    def close(self):
        for q in self.made:
            q.close()


@pytest.fixture(params=["stdlib", "durable"])
def make(request, tmp_path):
    f = _Factory(request.param, tmp_path)
    yield f
    f.close()


# --------------------------------------------------------------------------- CPython helpers
def qfull(q):
    return q.maxsize > 0 and q.qsize() == q.maxsize


class _TriggerThread(threading.Thread):
    """Runs fn(*args) after 0.1 s, to unclog a blocked call in the main thread."""

    def __init__(self, fn, args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.started_event = threading.Event()

    def run(self):
        time.sleep(0.1)
        self.started_event.set()
        self.fn(*self.args)


def do_blocking_test(block_func, block_args, trigger_func, trigger_args):
    thread = _TriggerThread(trigger_func, trigger_args)
    thread.start()
    try:
        result = block_func(*block_args)
        assert thread.started_event.is_set(), f"{block_func!r} appeared not to block"
        return result
    finally:
        thread.join(10)


def do_exceptional_blocking_test(block_func, block_args, trigger_func, trigger_args, exc):
    thread = _TriggerThread(trigger_func, trigger_args)
    thread.start()
    try:
        with pytest.raises(exc):
            block_func(*block_args)
    finally:
        thread.join(10)
        assert thread.started_event.is_set(), "trigger thread ended but event never set"


# --------------------------------------------------------------------------- ported: Queue
def basic_queue_test(q):
    assert not q.qsize(), "call this function with an empty queue"
    assert q.empty()
    assert not q.full()
    q.put(111)
    q.put(333)
    q.put(222)
    assert [q.get(), q.get(), q.get()] == [111, 333, 222], "didn't queue the correct data"
    for i in range(QUEUE_SIZE - 1):
        q.put(i)
        assert q.qsize(), "queue should not be empty"
    assert not qfull(q), "queue should not be full"
    last = 2 * QUEUE_SIZE
    full = 3 * 2 * QUEUE_SIZE
    q.put(last)
    assert qfull(q), "queue should be full"
    assert not q.empty()
    assert q.full()
    with pytest.raises(queue.Full):
        q.put(full, block=0)
    with pytest.raises(queue.Full):
        q.put(full, timeout=0.01)
    # blocking puts, unblocked by a get in another thread
    do_blocking_test(q.put, (full,), q.get, ())
    do_blocking_test(q.put, (full, True, 10), q.get, ())
    for _ in range(QUEUE_SIZE):
        q.get()
    assert not q.qsize(), "queue should be empty"
    with pytest.raises(queue.Empty):
        q.get(block=0)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    # blocking gets, unblocked by a put in another thread
    assert do_blocking_test(q.get, (), q.put, ("empty",)) == "empty"
    assert do_blocking_test(q.get, (True, 10), q.put, ("empty",)) == "empty"


def test_basic(make):
    q = make(QUEUE_SIZE)
    basic_queue_test(q)
    basic_queue_test(q)  # same instance reused


def _worker(q, state):
    while True:
        x = q.get()
        if x < 0:
            q.task_done()
            return
        with state["lock"]:
            state["cum"] += x
        q.task_done()


def queue_join_test(q):
    state = {"cum": 0, "lock": threading.Lock()}
    threads = [threading.Thread(target=_worker, args=(q, state), daemon=True) for _ in (0, 1)]
    for t in threads:
        t.start()
    for i in range(100):
        q.put(i)
    q.join()
    assert state["cum"] == sum(range(100)), "join() did not block until all tasks were done"
    for _ in (0, 1):
        q.put(-1)  # tell the workers to stop
    q.join()  # joining twice works
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_queue_task_done(make):
    q = make()
    with pytest.raises(ValueError):
        q.task_done()


def test_queue_join(make):
    q = make()
    queue_join_test(q)
    queue_join_test(q)
    with pytest.raises(ValueError):
        q.task_done()


def test_negative_timeout_raises_exception(make):
    q = make(QUEUE_SIZE)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError):
        q.get(1, timeout=-1)
    # CPython checks the put timeout only when the queue is bounded; get's always (block=True)
    unbounded = make()
    unbounded.put(1, timeout=-1)
    with pytest.raises(ValueError):
        unbounded.get(timeout=-1)
    assert unbounded.get(block=False, timeout=-1) == 1  # timeout ignored without block


def test_nowait(make):
    q = make(QUEUE_SIZE)
    for _ in range(QUEUE_SIZE):
        q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put_nowait(1)
    for _ in range(QUEUE_SIZE):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_shrinking_queue(make):
    # bpo-10110
    q = make(3)
    q.put(1)
    q.put(2)
    q.put(3)
    with pytest.raises(queue.Full):
        q.put_nowait(4)
    assert q.qsize() == 3
    q.maxsize = 2  # shrink the queue
    with pytest.raises(queue.Full):
        q.put_nowait(4)
    q.get()
    with pytest.raises(queue.Full):  # 2 items, maxsize 2
        q.put_nowait(4)
    q.maxsize = 0  # unbounded
    for i in range(10):
        q.put_nowait(i)
    q.maxsize = -1  # negative: unbounded too
    q.put_nowait(99)
    assert not q.full()


def test_task_done_counts_like_stdlib(make):
    """task_done() before the item is got is allowed (the stdlib only counts)."""
    q = make()
    q.put("a")
    q.put("b")
    q.task_done()
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    q.join()  # nothing unfinished
    assert [q.get(), q.get()] == ["a", "b"]
    with pytest.raises(ValueError):
        q.task_done()


# --------------------------------------------------------------------------- ported: failing queue
class FailingSerializer:
    """Pickle, failing the next dumps/loads on request (CPython's FailingQueue, at our seam)."""

    def __init__(self):
        self.fail_next_put = False
        self.fail_next_get = False

    def dumps(self, obj):
        if self.fail_next_put:
            self.fail_next_put = False
            raise FailingQueueException("You Lose")
        return PICKLE.dumps(obj)

    def loads(self, data):
        if self.fail_next_get:
            self.fail_next_get = False
            raise FailingQueueException("You Lose")
        return PICKLE.loads(data)


class FailingQueueException(Exception):
    pass


def failing_queue_test(q, ser):
    assert not q.qsize()
    for i in range(QUEUE_SIZE - 1):
        q.put(i)
    ser.fail_next_put = True
    with pytest.raises(FailingQueueException):
        q.put("oops", block=0)
    ser.fail_next_put = True
    with pytest.raises(FailingQueueException):
        q.put("oops", timeout=0.1)
    q.put("last")
    assert qfull(q)
    q.get()
    q.put("last")
    assert qfull(q)
    do_blocking_test(q.put, ("full",), q.get, ())
    for _ in range(QUEUE_SIZE):
        q.get()
    assert not q.qsize()
    q.put("first")
    ser.fail_next_get = True
    with pytest.raises(FailingQueueException):
        q.get()
    assert q.qsize(), "queue should not be empty"
    ser.fail_next_get = True
    with pytest.raises(FailingQueueException):
        q.get(timeout=0.1)
    assert q.qsize(), "queue should not be empty"
    assert q.get() == "first"  # still at the head after two failed gets
    assert not q.qsize()
    ser.fail_next_get = True
    do_exceptional_blocking_test(q.get, (), q.put, ("empty",), FailingQueueException)
    assert q.qsize(), "put succeeded but get failed: queue should not be empty"
    assert q.get() == "empty"
    assert not q.qsize()


def test_failing_queue(qdir):
    ser = FailingSerializer()
    with DurableQueue(qdir, QUEUE_SIZE, serializer=ser, fsync="never") as q:
        failing_queue_test(q, ser)
        failing_queue_test(q, ser)
        assert q.unfinished_tasks == 2 * (QUEUE_SIZE - 1 + 2 + 1 + 1 + 1)
    with DurableQueue(qdir, serializer=ser, fsync="never") as q:
        # nothing was stored by the failed puts; failed gets left the item in place
        assert q.qsize() == 2 * (QUEUE_SIZE - 1 + 2 + 1 + 1 + 1)


# --------------------------------------------------------------------------- ported: SimpleQueue
def _feed(q, seq, rnd, sentinel):
    while True:
        try:
            val = seq.pop()
        except IndexError:
            q.put(sentinel)
            return
        q.put(val)
        if rnd.random() > 0.5:
            time.sleep(rnd.random() * 1e-3)


def _consume(q, results, sentinel):
    while True:
        val = q.get()
        if val == sentinel:
            return
        results.append(val)


def _consume_nonblock(q, results, sentinel):
    while True:
        while True:
            try:
                val = q.get(block=False)
            except queue.Empty:
                time.sleep(1e-5)
            else:
                break
        if val == sentinel:
            return
        results.append(val)


def _consume_timeout(q, results, sentinel):
    while True:
        while True:
            try:
                val = q.get(timeout=1e-5)
            except queue.Empty:
                pass
            else:
                break
        if val == sentinel:
            return
        results.append(val)


def run_threads(n_threads, q, inputs, feed_func, consume_func):
    results = []
    sentinel = None
    seq = inputs.copy()
    seq.reverse()
    rnd = random.Random(42)
    exceptions = []

    def log_exceptions(f):
        def wrapper(*args):
            try:
                f(*args)
            except BaseException as e:  # noqa: B902 - reported below
                exceptions.append(e)
        return wrapper

    feeders = [threading.Thread(target=log_exceptions(feed_func), args=(q, seq, rnd, sentinel))
               for _ in range(n_threads)]
    consumers = [threading.Thread(target=log_exceptions(consume_func),
                                  args=(q, results, sentinel)) for _ in range(n_threads)]
    for t in feeders + consumers:
        t.daemon = True
        t.start()
    for t in feeders + consumers:
        t.join(60)
        assert not t.is_alive()
    assert not exceptions
    assert q.empty()
    assert q.qsize() == 0
    return results


def test_simple_basic(make):
    q = make.simple()
    assert q.empty()
    assert q.qsize() == 0
    q.put(1)
    assert not q.empty()
    assert q.qsize() == 1
    q.put(2)
    q.put_nowait(3)
    q.put(4)
    assert not q.empty()
    assert q.qsize() == 4
    assert q.get() == 1
    assert q.qsize() == 3
    assert q.get_nowait() == 2
    assert q.qsize() == 2
    assert q.get(block=False) == 3
    assert not q.empty()
    assert q.qsize() == 1
    assert q.get(timeout=0.1) == 4
    assert q.empty()
    assert q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(timeout=1e-3)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.empty()
    assert q.qsize() == 0


def test_simple_negative_timeout_raises_exception(make):
    q = make.simple()
    q.put(1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)


def test_simple_order(make):
    q = make.simple()
    inputs = list(range(100))
    assert run_threads(1, q, inputs, _feed, _consume) == inputs


def test_simple_many_threads(make):
    q = make.simple()
    inputs = list(range(3000))
    assert sorted(run_threads(20, q, inputs, _feed, _consume)) == inputs


def test_simple_many_threads_nonblock(make):
    q = make.simple()
    inputs = list(range(2000))
    assert sorted(run_threads(20, q, inputs, _feed, _consume_nonblock)) == inputs


def test_simple_many_threads_timeout(make):
    q = make.simple()
    inputs = list(range(1000))
    assert sorted(run_threads(20, q, inputs, _feed, _consume_timeout)) == inputs


class C:
    pass


def test_simple_references(make):
    # the queue keeps no reference to an item once it has left the queue
    q = make.simple()
    for _ in range(20):
        q.put(C())
    for _ in range(20):
        wr = weakref.ref(q.get())
        assert wr() is None


def test_queue_many_threads_join(tmp_path):
    """8 producers, 8 consumers, 4000 items, each exactly once; join() returns when done."""
    q = DurableQueue(str(tmp_path / "q"), maxsize=50, fsync="never")
    got, lock = [], threading.Lock()

    def produce(k):
        for i in range(k, 4000, 8):
            q.put(i)

    def consume():
        while True:
            x = q.get()
            if x is None:
                q.task_done()
                return
            with lock:
                got.append(x)
            q.task_done()

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
    threads += [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads[:8]:
        t.join()
    q.join()
    assert sorted(got) == list(range(4000))
    for _ in range(8):
        q.put(None)
    for t in threads[8:]:
        t.join(10)
    assert q.unfinished_tasks == 0 and q.qsize() == 0
    q.close()
    with DurableQueue(str(tmp_path / "q"), fsync="never") as q:
        assert q.qsize() == 0 and q.unfinished_tasks == 0


# --------------------------------------------------------------------------- durable semantics
def test_put_items_survive_reopen_in_order(qdir):
    items = [1, "two", (3, 3.0), {"four": [4]}, None, b"\x00six", 10 ** 30]
    with DurableQueue(qdir) as q:
        for it in items:
            q.put(it)
    with DurableQueue(qdir, fsync="never") as q:
        assert q.qsize() == q.unfinished_tasks == len(items)
        assert [q.get_nowait() for _ in items] == items
        with pytest.raises(queue.Empty):
            q.get_nowait()


def test_got_but_not_done_is_redelivered_after_reopen_done_never(qdir):
    with DurableQueue(qdir, fsync="never") as q:
        for i in range(6):
            q.put(i)
        assert [q.get() for _ in range(4)] == [0, 1, 2, 3]
        q.task_done()  # 0
        q.task_done()  # 1
        assert q.unfinished_tasks == 4 and q.qsize() == 2
    with DurableQueue(qdir, fsync="never") as q:
        # 2 and 3 were got, not done: delivered again, first, in their order
        assert q.qsize() == q.unfinished_tasks == 4
        assert [q.get_nowait() for _ in range(4)] == [2, 3, 4, 5]
        for _ in range(4):
            q.task_done()
        q.join()
    with DurableQueue(qdir, fsync="never") as q:
        assert q.qsize() == 0
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)


def test_simple_queue_done_at_get(qdir):
    with DurableSimpleQueue(qdir, fsync="never") as q:
        for i in range(4):
            q.put(i)
        assert q.get() == 0 and q.get() == 1
    with DurableSimpleQueue(qdir, fsync="never") as q:
        assert q.qsize() == 2
        assert q.get() == 2
    with DurableSimpleQueue(qdir, fsync="never") as q:
        assert [q.get_nowait()] == [3]
        assert q.empty()
    assert not hasattr(DurableSimpleQueue, "task_done")
    assert not hasattr(DurableSimpleQueue, "join")


def test_task_done_marks_calling_threads_oldest_item(qdir):
    q = DurableQueue(qdir, fsync="never")
    for i in range(5):
        q.put(i)
    got = {}
    step = threading.Barrier(2)

    def take(name, n, done):
        got[name] = [q.get() for _ in range(n)]
        step.wait()  # both have got their items before anyone calls task_done
        for _ in range(done):
            q.task_done()

    a = threading.Thread(target=take, args=("a", 2, 1))  # gets 0, 1 (or 2, 3); marks its oldest
    b = threading.Thread(target=take, args=("b", 2, 0))
    a.start()
    b.start()
    a.join()
    b.join()
    assert sorted(got["a"] + got["b"]) == [0, 1, 2, 3]
    a_done = min(got["a"])
    # main thread holds nothing: task_done marks the oldest item held by any thread
    q.task_done()
    oldest_left = min(x for x in got["a"] + got["b"] if x != a_done)
    q.close()
    with DurableQueue(qdir, fsync="never") as q:
        left = [q.get_nowait() for _ in range(q.qsize())]
    assert left == sorted({0, 1, 2, 3, 4} - {a_done, oldest_left})


def test_task_done_before_get_marks_next_got_item(qdir):
    with DurableQueue(qdir, fsync="never") as q:
        q.put("a")
        q.put("b")
        q.put("c")
        q.task_done()  # nothing held by anyone: "a" is done as soon as it is got
        assert q.unfinished_tasks == 2
        assert q.get() == "a"
        assert q.unfinished_tasks == 2  # "b" and "c"
    with DurableQueue(qdir, fsync="never") as q:
        assert q.qsize() == 2 and q.get() == "b"  # "a" was done at get
        q.task_done()  # "b"
        q.task_done()  # credit: the next item got ("c") is done when handed out
        with pytest.raises(ValueError):
            q.task_done()
    with DurableQueue(qdir, fsync="never") as q:
        # a credit is not durable: "c" was never got, so it is still there
        assert q.qsize() == 1 and q.get() == "c"


def test_join_wakes_on_last_task_done_and_blocks_until_then(qdir):
    with DurableQueue(qdir, fsync="never") as q:
        q.put(1)
        q.put(2)
        q.get()
        q.get()
        q.task_done()
        done = threading.Event()
        t = threading.Thread(target=lambda: (q.join(), done.set()))
        t.start()
        assert not done.wait(0.15)
        q.task_done()
        assert done.wait(5)
        t.join()


def test_reopen_with_smaller_maxsize_is_full(qdir):
    with DurableQueue(qdir, fsync="never") as q:
        for i in range(4):
            q.put(i)
    with DurableQueue(qdir, maxsize=2, fsync="never") as q:
        assert q.full() and q.qsize() == 4
        with pytest.raises(queue.Full):
            q.put_nowait(9)
        q.get()
        q.get()
        q.get()
        q.put_nowait(9)
        assert q.full()


def test_growing_maxsize_wakes_blocked_put(qdir):
    with DurableQueue(qdir, maxsize=1, fsync="never") as q:
        q.put(0)
        threading.Timer(0.1, lambda: setattr(q, "maxsize", 2)).start()
        t0 = time.monotonic()
        q.put(1, timeout=5)
        assert time.monotonic() - t0 < 2
        assert q.qsize() == 2


def test_maxsize_must_be_an_int(qdir):
    with pytest.raises(TypeError):
        DurableQueue(qdir, maxsize=None)
    with DurableQueue(qdir, fsync="never") as q:
        with pytest.raises(TypeError):
            q.maxsize = 1.5


def test_done_segments_are_reclaimed_by_the_store_cleaner(qdir):
    def items_bytes():
        top = os.path.join(qdir, "topics", "items")
        total = 0
        for r, _, fs in os.walk(top):
            for f in fs:
                try:
                    total += os.path.getsize(os.path.join(r, f))
                except FileNotFoundError:
                    pass  # deleted by the background cleaner while we walked
        return total

    with DurableQueue(qdir, fsync="never", segment_bytes=16 * 1024,
                      retention_check_interval_s=0.05) as q:
        for i in range(3000):
            q.put(i)
        full = items_bytes()
        for _ in range(2900):
            q.get()
            q.task_done()
        deadline = time.monotonic() + 10
        while items_bytes() > full // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert items_bytes() <= full // 4
        assert q.get() == 2900  # the not-done items are intact
    with DurableQueue(qdir, fsync="never") as q:
        assert [q.get_nowait() for _ in range(q.qsize())] == list(range(2900, 3000))


# --------------------------------------------------------------------------- closing, locking
def test_closed_queue_raises_and_wakes_blocked_calls(qdir):
    q = DurableQueue(qdir, maxsize=1, fsync="never")
    errors = []

    def call(fn, *args):
        try:
            fn(*args)
        except LogClosedError as e:
            errors.append((fn.__name__, e))

    q2 = DurableQueue(qdir + "2", fsync="never")
    q.put("x")
    q.get()  # unfinished: join() blocks
    q.put("y")  # full: put() blocks
    q2_get = threading.Thread(target=call, args=(q2.get,))
    threads = [threading.Thread(target=call, args=(q.put, "z")),
               threading.Thread(target=call, args=(q.join,)), q2_get]
    for t in threads:
        t.start()
    time.sleep(0.1)
    q.close()
    q2.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert sorted(name for name, _ in errors) == ["get", "join", "put"]
    for fn, args in [(q.put, (1,)), (q.get, ()), (q.put_nowait, (1,)), (q.get_nowait, ()),
                     (q.qsize, ()), (q.empty, ()), (q.full, ()), (q.task_done, ()),
                     (q.join, ())]:
        with pytest.raises(LogClosedError):
            fn(*args)
    with pytest.raises(LogClosedError):
        with q:
            pass
    q.close()  # idempotent
    assert q.closed and "closed" in repr(q)
    with DurableQueue(qdir, fsync="never") as q:  # the lock was released
        assert [q.get(), q.get()] == ["x", "y"]  # "x" was got, not done: redelivered


def test_simple_closed(qdir):
    q = DurableSimpleQueue(qdir, fsync="never")
    q.close()
    for fn, args in [(q.put, (1,)), (q.get, ()), (q.get_nowait, ()), (q.qsize, ()),
                     (q.empty, ())]:
        with pytest.raises(LogClosedError):
            fn(*args)


def test_one_process_at_a_time(qdir):
    with DurableQueue(qdir, fsync="never") as q:
        q.put(1)
        with pytest.raises(LogLockedError):
            DurableQueue(qdir)
        with pytest.raises(LogLockedError):
            DurableSimpleQueue(qdir)
        code = ("import sys; from logstore.durablequeue import DurableQueue\n"
                "from logstore import LogLockedError\n"
                "try:\n    DurableQueue(sys.argv[1])\nexcept LogLockedError:\n"
                "    sys.exit(7)\n")
        r = subprocess.run([sys.executable, "-c", code, qdir], env=_env(), timeout=60)
        assert r.returncode == 7
    with DurableQueue(qdir, fsync="never") as q:
        assert q.get() == 1


# --------------------------------------------------------------------------- serializers
def test_serializers(tmp_path):
    with DurableQueue(str(tmp_path / "j"), serializer=JSON, fsync="never") as q:
        q.put({"a": [1, 2.5, None, True, "é"]})
        q.put((1, 2))
        assert q.get() == {"a": [1, 2.5, None, True, "é"]}
        assert q.get() == [1, 2]  # JSON has no tuples
        with pytest.raises(TypeError):
            q.put({1, 2})
        assert q.qsize() == 0
    with DurableQueue(str(tmp_path / "b"), serializer=BYTES, fsync="never") as q:
        q.put(b"abc")
        q.put(bytearray(b"\x00\xff"))
        q.put(memoryview(b"mv"))
        q.put(b"")
        with pytest.raises(TypeError, match="encode"):
            q.put("text")
        assert [q.get() for _ in range(4)] == [b"abc", b"\x00\xff", b"mv", b""]
        assert q.empty()

    class Upper:
        def dumps(self, obj):
            return obj.upper().encode()

        def loads(self, data):
            return data.decode().lower()

    with DurableSimpleQueue(str(tmp_path / "c"), serializer=Upper(), fsync="never") as q:
        q.put("hi")
        assert q.get() == "hi"
    with pytest.raises(TypeError):
        DurableQueue(str(tmp_path / "x"), serializer=object())
    import json

    with DurableQueue(str(tmp_path / "y"), serializer=json, fsync="never") as q:
        with pytest.raises(TypeError, match="bytes"):  # json.dumps returns str
            q.put(1)
    with pytest.raises(logstore.RecordTooLargeError):
        with DurableQueue(str(tmp_path / "z"), fsync="never", max_record_bytes=1024) as q:
            try:
                q.put(b"x" * 2048)
            finally:
                assert q.qsize() == 0 and q.unfinished_tasks == 0


# --------------------------------------------------------------------------- storage failures
class FaultyFS(FileSystem):
    """Fails the next pwrite to a file whose path contains ``fail_in``."""

    def __init__(self):
        self.fail_in = None
        self.skip = 0  # matching writes to let through first
        self.paths = {}

    def open(self, path, flags, mode=0o644):
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def pwrite(self, fd, data, offset):
        where = self.fail_in
        if where is not None and where in self.paths.get(fd, "") and \
                self.paths[fd].endswith(".log"):
            if self.skip:
                self.skip -= 1
                return super().pwrite(fd, data, offset)
            self.fail_in = None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().pwrite(fd, data, offset)


ITEMS_LOG = os.sep + os.path.join("topics", "items") + os.sep
EVENTS_LOG = os.sep + os.path.join("internal", "queues", "items") + os.sep


def test_storage_failures_leave_queue_consistent(qdir):
    fs = FaultyFS()
    q = DurableQueue(qdir, maxsize=2, fsync="never", fs=fs)
    q.put("a")
    q.put("b")
    # a blocked put that fails when it finally writes: the slot is given back
    fs.fail_in = ITEMS_LOG
    with pytest.raises(StorageError):
        do_blocking_test(q.put, ("c",), q.get, ())
    assert q.qsize() == 1 and not q.full()
    q.put("c")
    # a get whose delivery record fails: the item stays at the head
    fs.fail_in = EVENTS_LOG
    with pytest.raises(StorageError):
        q.get()
    assert q.qsize() == 2
    assert q.get() == "b"
    # a task_done whose ack fails: "b" (the oldest held by this thread) goes back to the queue
    fs.fail_in = EVENTS_LOG
    unfinished = q.unfinished_tasks
    with pytest.raises(StorageError):
        q.task_done()  # this thread's oldest is "b" ("a" is held by the trigger thread)
    assert q.unfinished_tasks == unfinished and q.qsize() == 2
    assert q.get() == "b"  # delivered again, first
    q.task_done()  # "b"
    q.task_done()  # "a" (held by the finished trigger thread)
    assert q.unfinished_tasks == 1
    q.close()
    with DurableQueue(qdir, fsync="never") as q:
        assert [q.get_nowait() for _ in range(q.qsize())] == ["c"]


def test_simple_queue_failed_ack_keeps_item(qdir):
    fs = FaultyFS()
    with DurableSimpleQueue(qdir, fsync="never", fs=fs) as q:
        q.put("a")
        fs.fail_in = EVENTS_LOG  # the delivery record
        with pytest.raises(StorageError):
            q.get()
        assert q.qsize() == 1
        fs.fail_in, fs.skip = EVENTS_LOG, 1  # the ack (after the delivery record)
        with pytest.raises(StorageError):
            q.get()
        assert q.qsize() == 1
        assert q.get() == "a"
        assert q.empty()
    with DurableSimpleQueue(qdir, fsync="never") as q:
        assert q.empty()


# --------------------------------------------------------------------------- crashes
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


CHILD = r"""
import sys, time
from logstore.durablequeue import DurableQueue, DurableSimpleQueue
path, mode = sys.argv[1], sys.argv[2]
if mode == "hold":          # get "a" and task_done it, get "b", then wait to be killed
    q = DurableQueue(path)
    assert q.get() == "a"
    q.task_done()
    assert q.get() == "b"
    print("ready", flush=True)
    time.sleep(60)
elif mode == "simple":      # get "a" (done at get), then wait to be killed
    q = DurableSimpleQueue(path)
    assert q.get() == "a"
    print("ready", flush=True)
    time.sleep(60)
else:                       # worker: print each item after its task_done returned
    q = DurableQueue(path)
    print("ready", flush=True)
    while True:
        x = q.get(timeout=10)
        q.task_done()
        print(x, flush=True)
"""


def _start_child(path, mode):
    p = subprocess.Popen([sys.executable, "-c", CHILD, path, mode], env=_env(),
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line == "ready\n", line
    return p


def _kill(p):
    p.send_signal(signal.SIGKILL)
    out = p.stdout.read()
    p.wait(10)
    assert p.returncode == -signal.SIGKILL
    return out


def test_kill9_between_get_and_task_done_redelivers(qdir):
    with DurableQueue(qdir) as q:
        for x in "abc":
            q.put(x)
    _kill(_start_child(qdir, "hold"))
    with DurableQueue(qdir, fsync="never") as q:
        assert q.qsize() == 2
        assert q.get() == "b"  # got, not done: delivered again
        assert q.get() == "c"
        with pytest.raises(queue.Empty):
            q.get_nowait()  # "a" was done: never again


def test_kill9_simple_queue_item_done_at_get(qdir):
    with DurableSimpleQueue(qdir) as q:
        q.put("a")
        q.put("b")
    _kill(_start_child(qdir, "simple"))
    with DurableSimpleQueue(qdir, fsync="never") as q:
        assert q.get_nowait() == "b"
        assert q.empty()


def test_kill9_worker_at_random_moments(qdir):
    """A worker marks items done and is SIGKILLed at a random moment, three times: no done item
    comes back, every other item does (at most one done item may be unreported), in order."""
    n = 3000
    with DurableQueue(qdir, fsync="never") as q:
        for i in range(n):
            q.put(i)
    rnd = random.Random(7)
    reported = set()
    for _ in range(3):
        p = _start_child(qdir, "work")
        time.sleep(rnd.uniform(0.05, 0.4))
        reported |= {int(x) for x in _kill(p).split()}
        with DurableQueue(qdir, fsync="never") as q:
            left = [q.get_nowait() for _ in range(q.qsize())]  # got, not done: back next open
        assert left == sorted(left)
        assert not reported & set(left), "a done item was delivered again"
        missing = set(range(n)) - reported - set(left)
        assert len(missing) <= 1, f"items lost: {sorted(missing)[:10]}"
        reported |= missing
    assert reported, "the worker never got to mark anything done"
