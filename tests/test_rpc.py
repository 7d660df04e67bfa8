"""Request-reply (logstore.views.rpc): store.request / store.respond, the explicit get/reply
form, correlation, timeouts and late replies, errors, inbox slots, restart and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import logstore
from logstore import LogClosedError, RemoteError
from logstore.views.rpc import CORRELATION_ID, DEADLINE, ERROR, REPLY_TO, Requester

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "messaging_child.py")


@pytest.fixture
def store(tmp_path):
    s = logstore.Store.open(tmp_path / "s", fsync="never", retention_check_interval_s=0)
    yield s
    s.close()


def wait_until(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_round_trip_returns_the_handlers_reply(store):
    store.respond("rpc.upper", lambda req: req.value.upper() + req.headers["x-tag"])
    rec = store.request("rpc.upper", b"resize img-1", timeout=10, headers={"x-tag": b"!"})
    assert rec.value == b"RESIZE IMG-1!"
    assert isinstance(rec, logstore.Record)
    assert len(rec.headers[CORRELATION_ID]) == 32
    figures = store.metrics()
    req = figures["requesters"]["rpc.inbox.0"]
    assert (req["requests_total"], req["replies_total"], req["pending"]) == (1, 1, 0)
    assert figures["responders"]["rpc.upper"]["handled_total"] == 1
    assert figures["queues"]["rpc.upper"]["total"] == 0  # the request was acked


def test_many_threads_each_get_their_own_reply(store):
    store.respond("rpc.double", lambda req: b"%d" % (2 * int(req.value)), threads=2)
    results = {}
    errors = []

    def caller(t):
        try:
            for i in range(25):
                n = t * 1000 + i
                results[n] = store.request("rpc.double", b"%d" % n, timeout=30).value
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {n: b"%d" % (2 * n) for n in results} and len(results) == 100
    assert store.metrics()["requesters"]["rpc.inbox.0"]["late_replies_total"] == 0


def test_timeout_raises_and_the_late_reply_is_discarded_and_counted(store):
    responder = store.responder("rpc.slow")
    with pytest.raises(TimeoutError):
        store.request("rpc.slow", b"x", timeout=0.2)
    # The responder gets the request only now, after its deadline: the explicit form skips
    # expired requests (acked, counted) unless asked for them, so answer it by hand.
    msg = store.queue("rpc.slow").get(timeout=5)
    assert msg.headers[REPLY_TO] == b"rpc.inbox.0"
    store.topic("rpc.inbox.0").publish(b"too late",
                                       headers={CORRELATION_ID: msg.headers[CORRELATION_ID]})
    msg.ack()
    requester = store.requester()
    wait_until(lambda: store.metrics()["requesters"]["rpc.inbox.0"]["late_replies_total"] == 1,
               what="the late reply to be counted")
    figures = store.metrics()["requesters"]["rpc.inbox.0"]
    assert figures["timeouts_total"] == 1 and figures["replies_total"] == 0
    assert requester.pending() == 0
    # The next request gets its own reply, not the late one.
    store.respond("rpc.echo", lambda req: req.value)
    assert store.request("rpc.echo", b"fresh", timeout=10).value == b"fresh"
    assert responder.get(timeout=0) is None


def test_expired_requests_are_not_handled(store):
    with pytest.raises(TimeoutError):
        store.request("rpc.late", b"x", timeout=0.05)
    calls = []
    responder = store.respond("rpc.late", lambda req: calls.append(req) or b"")
    wait_until(lambda: store.metrics()["responders"]["rpc.late"]["expired_total"] == 1,
               what="the expired request to be skipped")
    responder.stop()
    assert calls == []
    assert store.metrics()["queues"]["rpc.late"]["total"] == 0  # acked: nobody waits for it


def test_handler_error_is_raised_as_remote_error(store):
    def handler(req):
        raise KeyError("no such image")

    store.respond("rpc.fail", handler)
    with pytest.raises(RemoteError) as info:
        store.request("rpc.fail", b"img-9", timeout=10)
    assert "KeyError" in str(info.value) and "no such image" in str(info.value)
    assert info.value.reply.headers[ERROR].startswith(b"KeyError")
    figures = store.metrics()
    assert figures["requesters"]["rpc.inbox.0"]["remote_errors_total"] == 1
    assert figures["responders"]["rpc.fail"]["errors_total"] == 1
    assert figures["queues"]["rpc.fail"]["errors_total"] == 1
    assert figures["queues"]["rpc.fail"]["total"] == 0


def test_explicit_get_and_reply(store):
    responder = store.responder("rpc.manual")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "reply", store.request("rpc.manual", b"question", timeout=30,
                               headers={"x-user": b"7"})))
    t.start()
    req = responder.get(timeout=30)
    assert req.value == b"question"
    assert req.headers == {"x-user": b"7"}  # the rpc headers are taken out
    assert req.reply_to == "rpc.inbox.0" and not req.expired and len(req.correlation_id) == 32
    responder.reply(req, b"answer", headers={"x-status": b"ok"})
    t.join()
    assert out["reply"].value == b"answer" and out["reply"].headers["x-status"] == b"ok"
    assert store.queue("rpc.manual").stats()["total"] == 0


def test_one_way_request_has_no_reply(store):
    store.queue("rpc.notify").put(b"fire and forget")
    responder = store.responder("rpc.notify")
    req = responder.get(timeout=5)
    assert req.reply_to is None
    responder.reply(req, b"ignored")
    assert store.metrics()["responders"]["rpc.notify"]["replied_total"] == 0
    assert store.queue("rpc.notify").stats()["total"] == 0


def test_reply_to_a_non_inbox_never_creates_a_topic(store):
    store.queue("rpc.evil").put(b"x", headers={REPLY_TO: b"orders", CORRELATION_ID: b"c"})
    responder = store.responder("rpc.evil")
    responder.reply(responder.get(timeout=5), b"y")
    assert "orders" not in store.topics()
    assert store.metrics()["responders"]["rpc.evil"]["undeliverable_total"] == 1


def test_rpc_headers_cannot_be_set_by_the_caller(store):
    for name in (REPLY_TO, CORRELATION_ID, DEADLINE, ERROR):
        with pytest.raises(ValueError):
            store.request("rpc.x", b"", headers={name: b"1"})
    with pytest.raises(ValueError):
        store.request("rpc.x", b"", timeout=0)
    assert store.queue("rpc.x").stats()["total"] == 0


def test_each_requester_has_its_own_inbox_and_slots_are_reused(store):
    a, b = Requester(store), Requester(store)
    assert (a.inbox, b.inbox) == ("rpc.inbox.0", "rpc.inbox.1")
    store.respond("rpc.who", lambda req: req.value)
    assert a.request("rpc.who", b"a", timeout=10).value == b"a"
    assert b.request("rpc.who", b"b", timeout=10).value == b"b"
    # Nothing read from another inbox: b's inbox holds only its reply.
    assert [r.value for r in store.topic("rpc.inbox.1").partitions[0].read(0)] == [b"b"]
    a.close()
    c = Requester(store)
    assert c.inbox == "rpc.inbox.0"  # the freed slot, its topic reused from its end
    assert c.request("rpc.who", b"c", timeout=10).value == b"c"
    with pytest.raises(LogClosedError):
        a.request("rpc.who", b"closed", timeout=1)
    assert "rpc.inbox.2" not in store.topics()


def test_close_fails_waiting_requests(store):
    requester = Requester(store)
    out = {}

    def call():
        try:
            requester.request("rpc.nobody", b"x", timeout=60)
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=call)
    t.start()
    wait_until(lambda: requester.pending() == 1, what="the request to be pending")
    requester.close()
    t.join()
    assert isinstance(out["error"], LogClosedError)


def test_readonly_store_cannot_request(tmp_path):
    logstore.Store.open(tmp_path / "s").close()
    with logstore.Store.open(tmp_path / "s", readonly=True) as ro:
        with pytest.raises(logstore.ReadOnlyError):
            ro.request("rpc.x", b"")


def test_request_stored_before_a_restart_is_answered_after_it(tmp_path):
    root = tmp_path / "s"
    with logstore.Store.open(root, fsync="always") as store:
        with pytest.raises(TimeoutError):
            store.request("rpc.later", b"kept", timeout=0.05)
    with logstore.Store.open(root, fsync="always") as store:
        responder = store.responder("rpc.later")
        msg = store.queue("rpc.later").get(timeout=5)  # the request survived the restart
        assert msg.value == b"kept" and msg.headers[REPLY_TO] == b"rpc.inbox.0"
        msg.nack(delay=0)
        assert responder.get(timeout=0.5) is None  # expired: acked without a handler call
        assert store.metrics()["responders"]["rpc.later"]["expired_total"] == 1
        assert store.queue("rpc.later").stats()["total"] == 0


def test_sigkill_while_handling_redelivers_only_that_request(tmp_path):
    root = str(tmp_path / "s")
    n, k = 8, 5
    proc = subprocess.run([sys.executable, CHILD, "rpc", root, str(n), str(k)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    lines = proc.stdout.decode().split()
    replies = [lines[i:i + 3] for i in range(0, len(lines), 3)]
    assert replies == [["reply", str(i), f"REQ-{i}"] for i in range(k)]
    with logstore.Store.open(root) as store:
        q = store.queue("rpc.echo")
        assert q.stats()["total"] == 1  # only the request being handled is not done
        msg = q.get(timeout=5)
        assert msg.value == b"req-%d" % k and msg.delivery_count == 2
        assert q.get(timeout=0.2) is None
        # every reply the child got is in its inbox, byte for byte
        inbox = [r.value for r in store.topic("rpc.inbox.0").partitions[0].read(0)]
        assert inbox == [b"REQ-%d" % i for i in range(k)]


def test_requester_and_responder_in_two_processes(tmp_path):
    """The responder runs in a child process that opens the same store for writing (both
    with shared=True); the requester is this process."""
    root = str(tmp_path / "s")
    code = (
        "import sys, logstore\n"
        "s = logstore.Store.open(sys.argv[1], shared=True)\n"
        "r = s.responder('rpc.cross')\n"
        "print('ready', flush=True)\n"
        "r.serve(lambda req: b'pid-answer:' + req.value)\n"
    )
    with logstore.Store.open(root, shared=True) as store:
        store.queue("rpc.cross")
        child = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE,
                                 env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
        try:
            assert child.stdout.readline().strip() == b"ready"
            for i in range(20):
                assert store.request("rpc.cross", b"%d" % i, timeout=10).value == \
                    b"pid-answer:%d" % i
        finally:
            child.kill()
            child.wait()


def test_reply_not_announced_by_a_publish_is_read_from_the_inbox(store):
    """A reply appended to the inbox log directly (as another process's would be: no publish
    of this process announces it) is found by the requester's inbox reader."""
    responder = store.responder("rpc.quiet")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "reply", store.request("rpc.quiet", b"q", timeout=30)))
    t.start()
    req = responder.get(timeout=30)
    inbox = store.get_topic(req.reply_to).partitions[0]
    inbox.append(b"quiet answer", headers={CORRELATION_ID: req.correlation_id.encode()})
    t.join()
    assert out["reply"].value == b"quiet answer"
    req.message.ack()
    figures = store.metrics()["requesters"]["rpc.inbox.0"]
    assert figures["replies_total"] == 1 and figures["late_replies_total"] == 0
