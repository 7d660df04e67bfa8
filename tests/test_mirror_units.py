"""Unit tests of the mirror's parts that need no NATS server: MirrorConfig validation and
defaults, the record <-> message encoding of logstore.mirror.messages, publish-ack reading, how
JetStreamMirror takes its options, and run_mirror_cli's exit codes before it connects.

(nats-py must be installed only because ``import logstore.mirror`` requires it.)
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("nats", reason="nats-py is not installed: pip install 'logstore[nats]'")

import logstore  # noqa: E402
from logstore.errors import ConfigError  # noqa: E402
from logstore.mirror import JetStreamMirror, MirrorConfig  # noqa: E402
from logstore.mirror import decode_message, encode_headers, messages, runner, stream  # noqa: E402
from logstore.mirror.nats_api import js_errors  # noqa: E402

UNREACHABLE = "nats://127.0.0.1:1"


# ---------------------------------------------------------------------- MirrorConfig
def test_config_defaults_are_the_documented_ones():
    c = MirrorConfig()
    assert c.servers == ("nats://127.0.0.1:4222",)
    assert (c.stream, c.subject_prefix, c.replicas, c.group) == (None, "logstore", None, None)
    assert c.max_in_flight == 1000
    assert (c.dedup_window_s, c.ack_timeout_s, c.backoff_initial_s, c.max_backoff_s) == \
        (120.0, 5.0, 0.1, 5.0)
    assert (c.commit_interval_s, c.connect_timeout_s, c.api_timeout_s) == (0.5, 2.0, 5.0)
    assert c.create_stream is True and c.nats_options == {}
    assert c.retry_horizon_s == 15.0


@pytest.mark.parametrize("servers, want", [
    ("nats://a:1", ("nats://a:1",)),
    (" nats://a:1 , nats://b:2,", ("nats://a:1", "nats://b:2")),
    (["nats://a:1", "nats://b:2"], ("nats://a:1", "nats://b:2")),
])
def test_config_servers_normalised_to_a_tuple(servers, want):
    assert MirrorConfig(servers=servers).servers == want


@pytest.mark.parametrize("servers", [[], "", " , ", [1], None, 5])
def test_config_rejects_bad_servers(servers):
    with pytest.raises(ConfigError, match="servers"):
        MirrorConfig(servers=servers)


@pytest.mark.parametrize("option, bad", [
    ("stream", "a.b"), ("stream", "a b"), ("stream", "a*"), ("stream", "a>"), ("stream", "a/b"),
    ("stream", "a\\b"), ("stream", ""), ("stream", 5),
    ("subject_prefix", ""), ("subject_prefix", "a..b"), ("subject_prefix", "a b"),
    ("subject_prefix", "a.*"), ("subject_prefix", ">"), ("subject_prefix", None),
    ("replicas", 0), ("replicas", 6), ("replicas", True), ("replicas", 2.0), ("replicas", "3"),
    ("group", ""), ("group", "a\0b"), ("group", 5),
    ("max_in_flight", 0), ("max_in_flight", True), ("max_in_flight", 1.5),
    *[(name, bad) for name in ("dedup_window_s", "ack_timeout_s", "backoff_initial_s",
                               "max_backoff_s", "commit_interval_s", "connect_timeout_s",
                               "api_timeout_s")
      for bad in (0, -1.0, True, "1", None)],
])
def test_config_rejects_invalid_values(option, bad):
    with pytest.raises(ConfigError, match=option):
        MirrorConfig(**{option: bad})


@pytest.mark.parametrize("option, good", [
    ("stream", "ORDERS-1_x"), ("subject_prefix", "a.b-c"), ("replicas", 1), ("replicas", 5),
    ("group", "my group"), ("max_in_flight", 1),
])
def test_config_accepts_valid_values(option, good):
    assert getattr(MirrorConfig(**{option: good}), option) == good


def test_config_durations_become_floats_and_max_backoff_is_at_least_the_initial():
    c = MirrorConfig(ack_timeout_s=3, backoff_initial_s=2, max_backoff_s=1, dedup_window_s=60)
    assert type(c.ack_timeout_s) is float and c.ack_timeout_s == 3.0
    assert c.max_backoff_s == 2.0  # raised to backoff_initial_s
    assert c.retry_horizon_s == 2 * 3.0 + 2.0


def test_config_dedup_window_must_outlast_the_retry_horizon():
    with pytest.raises(ConfigError, match="retry horizon"):
        MirrorConfig(dedup_window_s=15)   # == 2 * 5 + 5
    with pytest.raises(ConfigError, match="retry horizon"):
        MirrorConfig(dedup_window_s=20, ack_timeout_s=8)
    assert MirrorConfig(dedup_window_s=15.5).dedup_window_s == 15.5
    c = MirrorConfig()
    with pytest.raises(ConfigError, match="the duplicate_window of stream 'S'"):
        c.check_dedup_window(2.0, "the duplicate_window of stream 'S'")
    c.check_dedup_window(16.0, "x")


def test_config_is_frozen_and_keeps_a_copy_of_nats_options():
    opts = {"user": "u", "password": "secret"}
    c = MirrorConfig(nats_options=opts)
    opts["password"] = "changed"
    assert c.nats_options == {"user": "u", "password": "secret"}
    assert "secret" not in repr(c)   # credentials stay out of logs
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_in_flight = 5  # type: ignore[misc]


def test_config_from_options_and_for_topic():
    base = MirrorConfig(stream="S", max_in_flight=10)
    c = MirrorConfig.from_options(base, max_in_flight=20, replicas=1)
    assert (c.stream, c.max_in_flight, c.replicas) == ("S", 20, 1)
    assert MirrorConfig.from_options(base) is base
    assert MirrorConfig.from_options(None, stream="T") == MirrorConfig(stream="T")
    with pytest.raises(TypeError, match="unknown mirror option 'bogus'.*valid options: servers"):
        MirrorConfig.from_options(None, bogus=1)
    with pytest.raises(TypeError, match="MirrorConfig"):
        MirrorConfig.from_options({"stream": "S"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MirrorConfig.from_options(base, max_in_flight=0)
    # Defaults that depend on the topic.
    c = MirrorConfig().for_topic("a.b")
    assert (c.stream, c.group) == ("logstore-a_b", "__mirror__logstore-a_b")
    c = MirrorConfig(stream="S").for_topic("a.b")
    assert (c.stream, c.group) == ("S", "__mirror__S")
    c = MirrorConfig(group="g").for_topic("t")
    assert (c.stream, c.group) == ("logstore-t", "g")


# ---------------------------------------------------------------------- JetStreamMirror options
@pytest.fixture
def store(tmp_path):
    with logstore.Store.open(tmp_path / "s", fsync="never") as st:
        st.topic("orders", partitions=2)
        yield st


def test_mirror_takes_keywords_or_a_config_alike(store):
    kw = dict(servers=[UNREACHABLE], stream="S", subject_prefix="p", max_in_flight=5,
              ack_timeout_s=1, max_backoff_s=1, dedup_window_s=10)
    with JetStreamMirror(store, "orders", **kw) as a, \
            JetStreamMirror(store, "orders", config=MirrorConfig(**kw)) as b:
        assert a.config == b.config == MirrorConfig(group="__mirror__S", **kw)
    # Keywords override the config's fields; servers/stream may be positional.
    with JetStreamMirror(store, "orders", UNREACHABLE, "T", config=MirrorConfig(stream="S"),
                         max_in_flight=7) as m:
        assert (m.config.stream, m.config.max_in_flight, m.config.servers) == \
            ("T", 7, (UNREACHABLE,))


def test_mirror_options_read_as_attributes(store):
    with JetStreamMirror(store, "orders", servers=UNREACHABLE, replicas=1) as m:
        for name in MirrorConfig.option_names():
            assert getattr(m, name) == getattr(m.config, name), name
        assert (m.stream, m.group, m.replicas) == ("logstore-orders",
                                                   "__mirror__logstore-orders", 1)
        assert m.retry_horizon_s == 15.0
        with pytest.raises(AttributeError):
            m.stream = "other"  # read-only: change the config instead
        assert repr(m) == ("<logstore.JetStreamMirror 'orders' -> 'logstore-orders' "
                           f"servers=['{UNREACHABLE}']>")


def test_mirror_refuses_what_it_refused_before(store, tmp_path):
    with pytest.raises(TypeError, match="unknown mirror option 'max_inflight'"):
        JetStreamMirror(store, "orders", servers=UNREACHABLE, max_inflight=5)
    with pytest.raises(logstore.UnknownTopicError):
        JetStreamMirror(store, "nope", servers=UNREACHABLE)
    with pytest.raises(ConfigError, match="invalid stream name"):
        JetStreamMirror(store, "orders", servers=UNREACHABLE, config=MirrorConfig(),
                        stream="a.b")
    store.close()
    with logstore.Store.open(tmp_path / "s", readonly=True) as ro:
        with pytest.raises(ConfigError, match="readonly=False"):
            JetStreamMirror(ro, "orders", servers=UNREACHABLE)


# ---------------------------------------------------------------------- run_mirror_cli
def test_run_mirror_cli_is_still_importable_from_jetstream():
    from logstore.mirror.runner import run_mirror_cli

    assert run_mirror_cli is runner.run_mirror_cli


def test_run_mirror_cli_exit_codes_before_connecting(tmp_path):
    lines = []
    run = lambda *a, **kw: runner.run_mirror_cli(*a, echo=lines.append, **kw)  # noqa: E731
    assert run(str(tmp_path / "none"), "orders", UNREACHABLE, "S") == 2
    assert "is not a logstore store" in lines[-1]
    path = str(tmp_path / "s")
    with logstore.Store.open(path, fsync="never") as st:
        st.topic("orders", partitions=1)
        assert run(path, "orders", UNREACHABLE, "S") == 3   # locked by this writer
        assert lines[-1].startswith("logstore: error: ")
    assert run(path, "nope", UNREACHABLE, "S") == 2
    assert "nope" in lines[-1]
    assert run(path, "orders", UNREACHABLE, "a.b") == 2
    assert "invalid stream name 'a.b'" in lines[-1]
    assert run(path, "orders", UNREACHABLE, "S", dedup_window_s=5) == 2
    assert "retry horizon" in lines[-1]
    with pytest.raises(TypeError, match="unknown mirror option"):
        run(path, "orders", UNREACHABLE, "S", max_inflight=3)
    # Nothing was opened for writing by the refused runs: the store opens normally.
    with logstore.Store.open(path, fsync="never") as st:
        assert st.topics() == ["orders"]


# ---------------------------------------------------------------------- messages
_header_names = st.one_of(
    st.sampled_from(["type", "trace-id", "Logstore-X", "bin ary", "", "é", "Logstore-H-x"]),
    st.text(max_size=12))
_header_values = st.one_of(
    st.sampled_from([b"created", b" padded ", b"\x00\r\n", "é".encode(), b"", b"a b"]),
    st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(0, 2**62), ts=st.integers(-2**62, 2**62), partition=st.integers(0, 999),
       key=st.one_of(st.none(), st.binary(max_size=30)),
       value=st.one_of(st.none(), st.binary(max_size=50)),
       headers=st.dictionaries(_header_names, _header_values, max_size=5))
def test_record_message_round_trip(offset, ts, partition, key, value, headers):
    rec = logstore.Record(offset, ts, key, value, headers)
    h = encode_headers("orders", partition, rec, "store1")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in h.items())
    assert all(v.isascii() for v in h.values())      # NATS headers are ASCII text
    back = decode_message(h, rec.value or b"")
    assert back == logstore.Record(offset, ts, key, value, headers, partition)
    assert messages.parse_message_id(h["Nats-Msg-Id"], "store1", "orders") == (partition, offset)


def test_message_headers_layout():
    rec = logstore.Record(7, 1_700_000_000_001, b"k\xff", b"v",
                          {"type": b"created", "bin": b"\x00\x01", "sp": b" x", "a b": b"t"})
    h = encode_headers("orders", 2, rec, "abc")
    assert h["Nats-Msg-Id"] == "abc:orders:2:7"
    assert (h["Logstore-Partition"], h["Logstore-Offset"], h["Logstore-Timestamp"]) == \
        ("2", "7", "1700000000001")
    assert h["Logstore-Key"] == "a/8="                       # base64 of b"k\xff"
    assert "Logstore-Tombstone" not in h
    assert h["Logstore-H-type"] == "created"                 # a token name, printable value
    assert json.loads(h["Logstore-Headers"]) == {            # the others, base64 in JSON
        "bin": "AAE=", "sp": "IHg=", "a b": "dA=="}
    assert "Nats-Expected-Last-Sequence" not in h             # added when publishing
    tomb = encode_headers("orders", 0, logstore.Record(1, 2, None, None, {}), "abc")
    assert tomb["Logstore-Tombstone"] == "1" and "Logstore-Key" not in tomb
    assert decode_message(tomb, b"").value is None
    assert decode_message(encode_headers("o", 0, logstore.Record(1, 2, None, b"", {}), "a"),
                          b"").value == b""


@pytest.mark.parametrize("headers", [
    None, {}, {"foo": "bar"},
    {"Logstore-Partition": "1", "Logstore-Offset": "x", "Logstore-Timestamp": "1"},
    {"Logstore-Partition": "1", "Logstore-Offset": "2"},
])
def test_decode_message_refuses_what_a_mirror_did_not_write(headers):
    with pytest.raises(ValueError, match="not a logstore mirror message"):
        decode_message(headers, b"x")


def test_message_ids():
    assert messages.message_id("s1", "orders", 3, 42) == "s1:orders:3:42"
    assert messages.parse_message_id("s1:orders:3:42", "s1", "orders") == (3, 42)
    assert messages.parse_message_id("s2:orders:3:42", "s1", "orders") is None
    assert messages.parse_message_id("s1:other:3:42", "s1", "orders") is None
    assert messages.parse_message_id("", "s1", "orders") is None
    for bad in ("s1:orders:3", "s1:orders:3:x", "s1:orders:3:4:5", "s1:orders:"):
        with pytest.raises(ValueError):
            messages.parse_message_id(bad, "s1", "orders")


def test_subjects():
    assert messages.subject_for("logstore", "a.b", 3) == "logstore.a.b.3"
    assert messages.subject_filter("p.q", "t") == "p.q.t.>"
    match = messages.subject_matches
    assert match("p.t.>", "p.t.0") and match("p.t.>", "p.t.0.1") and not match("p.t.>", "p.t")
    assert match("p.*.0", "p.t.0") and not match("p.*.0", "p.t.1")
    assert match("p.t.0", "p.t.0") and not match("p.t", "p.t.0") and not match("p.t.0", "p.t")
    assert match(">", "a") and match("*.*", "a.b") and not match("*", "a.b")


# ---------------------------------------------------------------------- publish acks
def _ack(headers, data, seq=5):
    return messages.ack_error(headers, data, partition=1, offset=9, expected_seq=seq, stream="S")


def test_ack_stored_at_the_expected_sequence_is_ok():
    assert _ack(None, b'{"stream":"S","seq":5}') is None
    assert _ack({}, b'{"stream":"S","seq":5,"duplicate":true}') is None


def test_ack_errors_say_what_went_wrong():
    assert "something else published into stream 'S'" in _ack(None, b'{"stream":"S","seq":6}')
    assert "stored at stream sequence None" in _ack(None, b'{"stream":"S"}')
    lost = _ack(None, json.dumps({"error": {"code": 400, "err_code": 10071,
                                            "description": "wrong last sequence: 3"}}).encode())
    assert lost.startswith("a message before offset 9 of partition 1 was lost in transit")
    refused = _ack(None, b'{"error":{"code":503,"err_code":10077,"description":"full"}}')
    assert refused == "JetStream refused offset 9 of partition 1: full (err_code 10077)"
    assert "no JetStream responder" in _ack({"Status": "503"}, b"")
    assert _ack({"Status": "408", "Description": "Request Timeout"}, b"") == \
        "status 408 Request Timeout"
    assert "unreadable ack" in _ack(None, b"garbage")
    assert "unreadable ack" in _ack(None, b"[1, 2]")


# ---------------------------------------------------------------------- stream position
class FakeJetStream:
    """Just enough of a nats-py JetStream context for stream.stream_position: last messages per
    subject, and a last sequence that may move between reads."""

    def __init__(self, last_msg_ids, last_seqs):
        self.last_msg_ids = last_msg_ids       # subject -> Nats-Msg-Id (absent: no message)
        self.last_seqs = list(last_seqs)       # returned by successive stream_info calls

    async def stream_info(self, name):
        seq = self.last_seqs.pop(0) if len(self.last_seqs) > 1 else self.last_seqs[0]
        return SimpleNamespace(state=SimpleNamespace(last_seq=seq))

    async def get_last_msg(self, name, subject):
        if subject not in self.last_msg_ids:
            raise js_errors.NotFoundError()
        return SimpleNamespace(headers={"Nats-Msg-Id": self.last_msg_ids[subject]})


SUBJECTS = ["p.orders.0", "p.orders.1", "p.orders.2"]


def _position(js):
    return asyncio.run(stream.stream_position(js, "S", SUBJECTS, "store1", "orders"))


def test_stream_position_reads_the_last_offset_of_each_partition():
    js = FakeJetStream({"p.orders.0": "store1:orders:0:41", "p.orders.2": "store1:orders:2:0"},
                       [57])
    assert _position(js) == (57, [41, None, 0])


def test_stream_position_retries_while_the_stream_moves_then_gives_up():
    ids = {"p.orders.0": "store1:orders:0:1"}
    assert _position(FakeJetStream(ids, [5, 6, 6, 6])) == (6, [1, None, None])
    assert _position(FakeJetStream(ids, list(range(20)))) is None   # always moving


def test_stream_position_refuses_messages_of_another_store_or_a_bad_id():
    with pytest.raises(ConfigError, match="not from this store"):
        _position(FakeJetStream({"p.orders.1": "other:orders:1:5"}, [9]))
    with pytest.raises(logstore.MirrorError, match="unexpected Nats-Msg-Id"):
        _position(FakeJetStream({"p.orders.1": "store1:orders:2:5"}, [9]))   # wrong partition
    with pytest.raises(logstore.MirrorError, match="unexpected Nats-Msg-Id"):
        _position(FakeJetStream({"p.orders.1": "store1:orders:1:x"}, [9]))


def test_cluster_size_from_the_server_info():
    assert stream.cluster_size(SimpleNamespace()) == 1
    assert stream.cluster_size(SimpleNamespace(_server_info={"connect_urls": ["a", "b"]})) == 1
    info = {"cluster": "c", "connect_urls": ["a:1", "b:1", "c:1", "a:1"]}
    assert stream.cluster_size(SimpleNamespace(_server_info=info)) == 3


# ---------------------------------------------------------------------- layering
MIRROR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "logstore", "mirror")


@pytest.mark.parametrize("module", sorted(os.listdir(MIRROR_DIR)))
def test_mirror_modules_import_only_lower_layers_at_top_level(module):
    if not module.endswith(".py"):
        pytest.skip("not a module")
    tree = ast.parse(open(os.path.join(MIRROR_DIR, module), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:
            top = (node.module or "").split(".")[0]
            assert top not in ("cli", "diagnostics"), f"{module} imports ..{node.module}"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            # The one exception: jetstream.__getattr__, the run_mirror_cli compatibility shim.
            if (module, node.name) != ("jetstream.py", "__getattr__"):
                assert not inner, f"{module}:{node.name} imports inside a function"
