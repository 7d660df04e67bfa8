"""JetStreamMirror against a real 3-node NATS JetStream cluster (tests/nats_cluster.py).

Skipped when nats-py (pip install 'logstore[nats]') or the nats-server binary (Debian package
nats-server, >= 2.2 for JetStream clustering) is missing.

Each heavy test mirrors 50,000 records of a 4-partition topic and then reads the whole stream
back: exactly 50,000 messages, and on every partition subject the Logstore-Offset sequence is
exactly 0, 1, 2, ... (no gap, no duplicate, in order).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nats_cluster import NatsCluster, find_nats_server, free_ports, nats_server_version

import logstore
from logstore.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_logstore_does_not_need_nats():
    code = ("import sys; import logstore; "
            "assert 'nats' not in sys.modules, 'import logstore pulled in nats'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_mirror_without_nats_py_says_how_to_install():
    code = textwrap.dedent("""
        import sys
        sys.modules['nats'] = None          # as if nats-py were not installed
        try:
            import logstore.mirror
        except ImportError as e:
            print(e)
        else:
            print('imported?!')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=60)
    assert "pip install 'logstore[nats]'" in out.stdout, out.stdout + out.stderr


try:
    import nats
    import nats.errors
except ImportError:  # the tests below skip; the two above still run
    nats = None
    pytestmark_nats = "nats-py is not installed: pip install 'logstore[nats]'"
else:
    pytestmark_nats = None
    from logstore.mirror import JetStreamMirror, MirrorError, decode_message, encode_headers

NATS_SERVER = find_nats_server()
_VERSION = nats_server_version(NATS_SERVER) if NATS_SERVER else None
_SERVER_SKIP = (
    "nats-server not installed (apt-get install nats-server)" if NATS_SERVER is None else
    f"nats-server {_VERSION} is too old for JetStream clustering (need >= 2.2)"
    if _VERSION is None or _VERSION < (2, 2, 0) else None)
needs_nats = pytest.mark.skipif(nats is None, reason=pytestmark_nats or "")
needs_server = pytest.mark.skipif(nats is None or _SERVER_SKIP is not None,
                                  reason=pytestmark_nats or _SERVER_SKIP or "")

N = 50_000
PARTITIONS = 4
FAST = dict(ack_timeout_s=1.5, max_backoff_s=1.0, backoff_initial_s=0.05)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------------- helpers
def make_store(path, n=N, partitions=PARTITIONS):
    """A store with topic 'orders': n keyed records (some unkeyed, some tombstones, some with
    binary headers), written in batches so setup is quick. Returns per-partition counts."""
    from logstore.views.names import partition_for_key

    per = {p: [] for p in range(partitions)}
    for i in range(n):
        key = None if i % 13 == 0 else b"user-%d" % (i % 211)
        p = i % partitions if key is None else partition_for_key(key, partitions)
        value = None if i % 101 == 0 else b'{"order": %d, "amount": %d}' % (i, i % 997)
        headers = {"type": b"created"}
        if i % 7 == 0:
            headers["bin ary"] = bytes([0, 255, 10, 13, i % 256])
        per[p].append((key, value, headers, 1_700_000_000_000 + i))
    with logstore.Store.open(path, fsync="never") as st:
        topic = st.topic("orders", partitions=partitions)
        for p, items in per.items():
            plog = topic.partitions[p]
            for j in range(0, len(items), 500):
                chunk = items[j:j + 500]
                plog.append_batch([c[1] for c in chunk], keys=[c[0] for c in chunk],
                                  headers=[c[2] for c in chunk],
                                  timestamps_ms=[c[3] for c in chunk])
    return {p: len(items) for p, items in per.items()}


async def _with_js(urls, fn):
    nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=5)
    try:
        return await fn(nc, nc.jetstream(timeout=5))
    finally:
        await nc.close()


def stream_info(urls, stream):
    async def fn(nc, js):
        return await js.stream_info(stream)
    return asyncio.run(_with_js(urls, fn))


def stream_count(urls, stream):
    try:
        return stream_info(urls, stream).state.messages
    except Exception:
        return None


def stream_leader(urls, stream):
    return stream_info(urls, stream).cluster.leader


def wait_stream_current(urls, stream, timeout=60):
    """Until every replica of the stream is current (a restarted node has caught up)."""
    def current():
        try:
            info = stream_info(urls, stream)
        except Exception:
            return False
        cl = info.cluster
        return cl is not None and cl.leader and all(
            r.current and not r.offline and not r.lag for r in (cl.replicas or []))
    wait_for(current, timeout, f"the replicas of {stream} to be current", interval=0.2)


def read_stream(urls, stream):
    """Every message of the stream, in stream order: [(subject, headers, data)], through a push
    consumer without acks (much faster than pull fetches in nats-py). If delivery stalls, a new
    consumer continues after the last stream sequence received."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def fn(nc, js):
        info = await js.stream_info(stream)
        total, last_seq = info.state.messages, info.state.last_seq
        out = []
        seen = [0]
        progress = asyncio.Event()

        async def cb(m):
            seq = m.metadata.sequence.stream
            if seq <= seen[0]:
                return  # redelivered by a replacement consumer
            seen[0] = seq
            out.append((m.subject, m.headers or {}, m.data))
            progress.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=cb, pending_msgs_limit=total + 10,
                                 pending_bytes_limit=1 << 30)
        deadline = time.monotonic() + 90
        while seen[0] < last_seq and total:
            assert time.monotonic() < deadline, f"read {len(out)} of {total} messages"
            start = seen[0] + 1
            cinfo = await js.add_consumer(stream, ConsumerConfig(
                deliver_subject=inbox, ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
                inactive_threshold=30.0))
            try:
                while seen[0] < last_seq:
                    progress.clear()
                    try:
                        await asyncio.wait_for(progress.wait(), 5)
                    except asyncio.TimeoutError:
                        break  # stalled: replace the consumer
            finally:
                try:
                    await js.delete_consumer(stream, cinfo.name)
                except Exception:
                    pass
        await sub.unsubscribe()
        return total, out

    total, msgs = asyncio.run(_with_js(urls, fn))
    assert len(msgs) == total
    return msgs


def check_stream(urls, stream, counts, store_path=None):
    """Exactly sum(counts) messages; per partition subject the offsets 0..n-1 in order."""
    msgs = read_stream(urls, stream)
    offsets = {p: [] for p in counts}
    for subject, headers, _data in msgs:
        p = int(subject.rsplit(".", 1)[1])
        assert int(headers["Logstore-Partition"]) == p
        offsets[p].append(int(headers["Logstore-Offset"]))
    assert len(msgs) == sum(counts.values()), (
        f"{len(msgs)} messages in the stream, expected {sum(counts.values())}: per partition "
        f"{ {p: len(o) for p, o in offsets.items()} } vs {counts}, distinct "
        f"{ {p: len(set(o)) for p, o in offsets.items()} }")
    for p, n in counts.items():
        got = offsets[p]
        assert got == list(range(n)), (
            f"partition {p}: {len(got)} messages, first problem at index "
            f"{next((i for i, (a, b) in enumerate(zip(got, range(n))) if a != b), len(got))}")
    if store_path is not None:  # content: every message decodes to the local record
        with logstore.Store.open(store_path, readonly=True) as st:
            topic = st.get_topic("orders")
            local = {p: topic.partitions[p].read(0, max_records=n + 1) for p, n in counts.items()}
        for subject, headers, data in msgs:
            rec = decode_message(headers, data)
            want = local[rec.partition][rec.offset]
            assert (rec.offset, rec.timestamp_ms, rec.key, rec.value, rec.headers) == \
                (want.offset, want.timestamp_ms, want.key, want.value, want.headers)
    return msgs


def wait_for(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def committed(store_path, stream):
    with logstore.Store.open(store_path, readonly=True) as st:
        return st.offsets.group_offsets(f"__mirror__{stream}", "orders")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    if nats is None or _SERVER_SKIP is not None:
        pytest.skip(pytestmark_nats or _SERVER_SKIP)
    c = NatsCluster(str(tmp_path_factory.mktemp("nats")), size=3)
    try:
        c.start_all(timeout=60)
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(nats_cluster):
    """The module's cluster with every node up (a test may have killed some)."""
    nats_cluster.start_all(timeout=60)
    yield nats_cluster
    nats_cluster.start_all(timeout=60)


# ---------------------------------------------------------------------- unit-ish tests
@needs_nats
def test_headers_roundtrip_odd_values():
    rec = logstore.Record(42, 1_700_000_000_123, b"\x00key\xff", None,
                          {"type": b"created", "bin ary": b"\x00\r\n", "sp": b" padded ",
                           "utf": "é".encode(), "Logstore-X": b"x"})
    h = encode_headers("orders", 3, rec, "abc")
    assert h["Nats-Msg-Id"] == "abc:orders:3:42"
    assert h["Logstore-Offset"] == "42" and h["Logstore-Partition"] == "3"
    assert h["Logstore-Timestamp"] == "1700000000123" and h["Logstore-Tombstone"] == "1"
    assert h["Logstore-H-type"] == "created"
    back = decode_message(h, b"")
    assert back == logstore.Record(42, 1_700_000_000_123, b"\x00key\xff", None, rec.headers, 3)
    with pytest.raises(ValueError):
        decode_message({"foo": "bar"}, b"x")


@needs_nats
def test_config_errors(tmp_path):
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        st.topic("orders", partitions=2)
        with pytest.raises(ConfigError, match="retry horizon"):
            JetStreamMirror(st, "orders", servers=["nats://127.0.0.1:1"], stream="S",
                            dedup_window_s=5, ack_timeout_s=2, max_backoff_s=2)
        with pytest.raises(ConfigError):
            JetStreamMirror(st, "orders", servers=["nats://127.0.0.1:1"], stream="a.b")
        with pytest.raises(ConfigError):
            JetStreamMirror(st, "orders", servers=[], stream="S")
        with pytest.raises(logstore.UnknownTopicError):
            JetStreamMirror(st, "nope", servers=["nats://127.0.0.1:1"], stream="S")


@needs_nats
def test_unreachable_cluster_run_once_raises_and_status_shows_it(tmp_path):
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        st.topic("orders", partitions=2).publish(b"x")
        port = free_ports(1)[0]
        with JetStreamMirror(st, "orders", servers=[f"nats://127.0.0.1:{port}"], stream="S",
                             connect_timeout_s=0.5, **FAST) as m:
            with pytest.raises(MirrorError):
                m.run_once()
            s = m.status()
            assert s["connected"] is False and s["last_error"] and s["lag"] == 1


# ---------------------------------------------------------------------- cluster tests
@needs_server
def test_mirror_50k_exactly_once_in_order(cluster, tmp_path):
    path = str(tmp_path / "store")
    counts = make_store(path)
    t0 = time.monotonic()
    with logstore.Store.open(path, fsync="never") as st, \
            JetStreamMirror(st, "orders", servers=cluster.urls, stream="BASIC",
                                            subject_prefix="basic", **FAST) as m:
        assert m.run_once() == N
        took = time.monotonic() - t0
        s = m.status()
        assert s["lag"] == 0 and s["connected"] and s["stream_replicas"] == 3
        assert all(v["committed"] == counts[p] for p, v in s["partitions"].items())
        # New records are picked up; a second pass publishes only them.
        st.topic("orders").publish(b"late", key=b"user-1")
        assert m.run_once() == 1
        p = logstore.views.names.partition_for_key(b"user-1", PARTITIONS)
        counts[p] += 1
    print(f"\n50k mirrored in {took:.1f} s ({N / took:,.0f} records/s)")
    check_stream(cluster.urls, "BASIC", counts, store_path=path)
    assert committed(path, "BASIC") == counts


@needs_server
def test_acked_but_not_committed_is_not_published_again(cluster, tmp_path):
    """A crash between JetStream's ack and the local commit: the restarted mirror reads the
    stream's last offset per partition and resumes after it (no duplicate, even past the
    dedup window)."""
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        topic = st.topic("orders", partitions=3)
        for i in range(3000):
            topic.publish(b"v%d" % i, key=b"k%d" % (i % 17))
        kw = dict(servers=cluster.urls, stream="RESUME", subject_prefix="resume", replicas=1)
        with JetStreamMirror(st, "orders", **kw, **FAST) as m:
            assert m.run_once() == 3000
        group = "__mirror__RESUME"
        st.offsets.commit(group, "orders", {0: 0, 1: 5})   # as if those commits were lost
        with JetStreamMirror(st, "orders", **kw, **FAST) as m:
            assert m.run_once() == 0
            s = m.status()
            assert s["published"] == 0 and s["lag"] == 0
            assert {p: v["committed"] for p, v in s["partitions"].items()} == topic.end_offsets()
        assert stream_count(cluster.urls, "RESUME") == 3000


@needs_server
def test_messages_the_stream_lost_after_acking_them_are_published_again(cluster, tmp_path):
    """The stream holds less than the mirror committed: it acknowledged records and lost them
    (an R1 server killed before writing them). Simulated by committing positions past what
    was published. The next resync sees the stream's last offset below the committed position
    and publishes the missing records again from the local log."""
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        topic = st.topic("orders", partitions=2)
        for i in range(300):
            topic.publish(b"v%d" % i, key=b"k%d" % (i % 11))
        kw = dict(servers=cluster.urls, stream="LOSS", subject_prefix="loss", replicas=1, **FAST)
        with JetStreamMirror(st, "orders", **kw) as m:
            assert m.run_once() == 300
        in_stream = topic.end_offsets()
        for i in range(100):
            topic.publish(b"w%d" % i, key=b"k%d" % (i % 11))
        counts = topic.end_offsets()
        st.offsets.commit("__mirror__LOSS", "orders", counts)  # acked, then lost
        with JetStreamMirror(st, "orders", **kw) as m:
            assert m.run_once() == 100
            s = m.status()
            assert s["lag"] == 0
            for p in range(2):
                assert "partition %d: the stream lost offsets %d..%d" % (
                    p, in_stream[p], counts[p] - 1) in s["last_error"]
    check_stream(cluster.urls, "LOSS", counts)


MIRROR_PROC = textwrap.dedent("""
    import sys
    from logstore.mirror.runner import run_mirror_cli
    sys.exit(run_mirror_cli(sys.argv[1], "orders", sys.argv[2], sys.argv[3],
                            until_caught_up=True, subject_prefix=sys.argv[3].lower(),
                            fsync="never", ack_timeout_s=1.5, max_backoff_s=1.0,
                            status_interval_s=float(sys.argv[4])))
""")


def _follow_acked(proc) -> list:
    """[latest "acked N" of the mirror process's status lines (stderr), all lines]: kept up to
    date by a reader thread, so that the test sees progress within one status interval without
    asking the cluster (a JetStream request can take seconds on a loaded machine)."""
    import re
    import threading

    state = [0, []]

    def read() -> None:
        for line in proc.stderr:
            state[1].append(line)
            m = re.search(r"acked (\d+)", line)
            if m:
                state[0] = int(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    return state


@needs_server
def test_mirror_process_sigkilled_three_times(cluster, tmp_path):
    path = str(tmp_path / "store")
    counts = make_store(path)
    urls = ",".join(cluster.urls)
    kills = []
    for threshold in (8_000, 20_000, 33_000):
        base = kills[-1] if kills else 0  # in the stream before this process (it resyncs)
        proc = subprocess.Popen([sys.executable, "-c", MIRROR_PROC, path, urls, "KILLS", "0.02"],
                                env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            state = _follow_acked(proc)
            wait_for(lambda: base + state[0] >= threshold or proc.poll() is not None, 60,
                     f"{threshold} messages mirrored", interval=0.002)
            assert proc.poll() is None, "".join(state[1])
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        kills.append(stream_count(cluster.urls, "KILLS"))
    # Some records were acked by the stream but not committed locally when the kills hit.
    proc = subprocess.run([sys.executable, "-c", MIRROR_PROC, path, urls, "KILLS", "60"],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    print(f"\nstream counts at the 3 kills: {kills}")
    assert kills == sorted(kills) and kills[0] < N
    check_stream(cluster.urls, "KILLS", counts)
    assert committed(path, "KILLS") == counts


@needs_server
def test_node_sigkilled_and_restarted_during_mirroring(cluster, tmp_path):
    path = str(tmp_path / "store")
    counts = make_store(path)
    with logstore.Store.open(path, fsync="never") as st:
        m = JetStreamMirror(st, "orders", servers=cluster.urls, stream="NODEKILL",
                            subject_prefix="nodekill", replicas=3, **FAST)
        m.start()
        try:
            wait_for(lambda: m.status()["acked"] >= 12_000, 60, "12k acked")
            assert m.status()["stream_replicas"] == 3
            leader = stream_leader(cluster.urls, "NODEKILL")
            victim = [cluster.name(i) for i in range(cluster.size)].index(leader)
            cluster.kill(victim)          # the stream leader, SIGKILL
            acked_at_kill = m.status()["acked"]
            time.sleep(2.0)
            cluster.start_node(victim)    # same config, same data dir
            wait_for(lambda: m.status()["lag"] == 0 and m.status()["in_flight"] == 0, 90,
                     "the mirror to catch up", interval=0.1)
            s = m.status()
        finally:
            m.stop()
            m.close()
    print(f"\nkilled stream leader {leader} at {acked_at_kill} acked; "
          f"{s['connects']} connects, {s['resyncs']} resyncs, last error: {s['last_error']}")
    assert acked_at_kill < N
    cluster.wait_ready(60)
    wait_stream_current(cluster.urls, "NODEKILL")
    check_stream(cluster.urls, "NODEKILL", counts)
    assert committed(path, "NODEKILL") == counts


@needs_server
def test_whole_cluster_down_then_back(cluster, tmp_path):
    path = str(tmp_path / "store")
    counts = make_store(path)
    with logstore.Store.open(path, fsync="never") as st:
        m = JetStreamMirror(st, "orders", servers=cluster.urls, stream="OUTAGE",
                            subject_prefix="outage", **FAST)
        m.start()
        try:
            wait_for(lambda: m.status()["acked"] >= 12_000, 60, "12k acked")
            cluster.stop_all()
            wait_for(lambda: not m.status()["connected"], 20, "the mirror to notice")
            time.sleep(3.0)
            during = m.status()
            assert not during["connected"] and during["last_error"]
            assert during["lag"] > 0 and m._thread.is_alive()
            # More local records while the cluster is away: the local log is the buffer.
            topic = st.topic("orders")
            for i in range(100):
                p, _ = topic.publish(b"during outage %d" % i, key=b"k%d" % i)
                counts[p] += 1
            cluster.start_all(timeout=60)   # same data dirs
            wait_for(lambda: m.status()["lag"] == 0 and m.status()["in_flight"] == 0, 90,
                     "the mirror to catch up", interval=0.1)
            s = m.status()
        finally:
            m.stop()
            m.close()
    print(f"\noutage: lag {during['lag']} while down ({during['last_error']}); "
          f"{s['connects']} connects, {s['resyncs']} resyncs")
    wait_stream_current(cluster.urls, "OUTAGE")
    check_stream(cluster.urls, "OUTAGE", counts)
    assert committed(path, "OUTAGE") == counts


@needs_server
def test_existing_stream_with_short_dedup_window_is_refused(cluster, tmp_path):
    async def make(nc, js):
        await js.add_stream(name="SHORTDUP", subjects=["short.orders.>"], num_replicas=1,
                            duplicate_window=2.0)
    asyncio.run(_with_js(cluster.urls, make))
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        st.topic("orders", partitions=2).publish(b"x")
        with JetStreamMirror(st, "orders", servers=cluster.urls, stream="SHORTDUP",
                             subject_prefix="short", **FAST) as m:
            with pytest.raises(ConfigError, match="duplicate_window"):
                m.run_once()
