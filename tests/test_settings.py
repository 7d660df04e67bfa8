"""Issue 16, case 8: options that change what is kept are stored with the log (and topic).

``cleanup_policy``, ``retention_ms``, ``retention_bytes``, ``delete_retention_ms``,
``compression``, ``compression_level``, ``segment_bytes``, ``segment_ms``,
``index_interval_bytes`` and ``max_record_bytes`` go to ``logstore.meta`` "settings" at
creation and apply on every later open; a conflicting value at open is a ``ConfigError``
(nothing changed); ``log.configure(...)`` / ``topic.configure(...)`` change them durably;
``logstore config PATH [--topic T] [-o k=v] [--json]``. On main 8f4b83a nothing is stored:
reopening without options silently switches to no retention, policy delete, no compression.
"""

import json
import os

import pytest

import logstore
from edge_helpers import run_cli, snapshot

SHAPING = dict(compression="zstd", retention_ms=3_600_000, cleanup_policy="compact",
               segment_bytes=4096, delete_retention_ms=1000, max_record_bytes=1 << 16)


def stored_settings(d):
    with open(os.path.join(d, "logstore.meta"), "rb") as f:
        return json.loads(f.read()).get("settings", {})


def keyed(log, n, start=0):
    for i in range(start, start + n):
        log.append(b"value-%d " % i * 8, key=b"k%d" % (i % 7))


def test_log_settings_are_stored_and_apply_on_reopen(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never", retention_check_interval_s=0, **SHAPING) as log:
        keyed(log, 10)
    on_disk = stored_settings(d)
    for k, v in SHAPING.items():
        assert on_disk.get(k) == v, (k, on_disk)
    with logstore.Log.open(d, retention_check_interval_s=0) as log:  # no shaping options
        for k, v in SHAPING.items():
            assert log.settings[k] == v, k
            assert getattr(log.config, k) == v, k
        with pytest.raises(logstore.MissingKeyError):  # still compacted
            log.append(b"keyless")
        off = log.append(b"x" * 500, key=b"k")
        batch = next(log.replay_batches(off))
        assert batch.header.codec == "zstd"  # still compressed
        with pytest.raises(logstore.RecordTooLargeError):  # max_record_bytes still 64 KiB
            log.append(b"y" * (1 << 17), key=b"k")


def test_retention_survives_a_reopen_without_options(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never", segment_bytes=2048, retention_bytes=4096,
                           retention_check_interval_s=0) as log:
        log.append(b"first")
    with logstore.Log.open(d, fsync="never", retention_check_interval_s=0) as log:
        for i in range(500):
            log.append(b"record-%d" % i)
        assert len(log.segments()) > 3  # segment_bytes=2048 still applies
        log.enforce_retention()
        assert log.start_offset > 0  # retention_bytes=4096 still applies


def test_conflicting_value_at_open_is_refused_before_anything_changes(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never", retention_check_interval_s=0, **SHAPING) as log:
        keyed(log, 5)
    before = snapshot(d)
    for name, other in [("compression", "none"), ("cleanup_policy", "delete"),
                        ("retention_ms", 1000), ("segment_bytes", 8192)]:
        with pytest.raises(logstore.ConfigError) as ei:
            logstore.Log.open(d, **{name: other})
        msg = str(ei.value)
        assert name in msg and "configure" in msg, msg
        assert snapshot(d) == before, f"open with a conflicting {name} changed files"
    # The same values, and per-process options, are fine.
    with logstore.Log.open(d, fsync="always", compression="zstd", cleanup_policy="compact",
                           retention_check_interval_s=0) as log:
        assert log.settings["retention_ms"] == 3_600_000
    with logstore.Log.open(d, readonly=True) as ro:
        assert ro.settings["compression"] == "zstd"


def test_configure_changes_settings_durably(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never", retention_check_interval_s=0) as log:
        assert log.settings["cleanup_policy"] == "delete"
        log.configure(retention_ms=5000, compression="zstd")
        assert log.settings["retention_ms"] == 5000
        assert log.config.retention_ms == 5000
        off = log.append(b"z" * 1000)
        assert next(log.replay_batches(off)).header.codec == "zstd"  # applies now
        with pytest.raises(logstore.ConfigError):
            log.configure(no_such_setting=1)
        with pytest.raises(logstore.ConfigError):
            log.configure(retention_ms=-5)
    assert stored_settings(d)["retention_ms"] == 5000
    with logstore.Log.open(d, retention_check_interval_s=0) as log:
        assert log.settings["retention_ms"] == 5000
        assert log.settings["compression"] == "zstd"


def test_legacy_log_without_stored_settings_takes_and_stores_the_options(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never") as log:
        log.append(b"old")
    path = os.path.join(d, "logstore.meta")
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    doc["settings"] = {}  # as written by logstore before settings were stored
    with open(path, "wb") as f:
        f.write(json.dumps(doc).encode())
    with logstore.Log.open(d, retention_ms=60_000, retention_check_interval_s=0) as log:
        assert log.settings["retention_ms"] == 60_000
    with logstore.Log.open(d, retention_check_interval_s=0) as log:
        assert log.config.retention_ms == 60_000
        assert [r.value for r in log.replay()] == [b"old"]


# ---------------------------------------------------------------------------- store topics
def test_topic_settings_are_stored_per_topic(tmp_path):
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("prices", partitions=2, cleanup_policy="compact", retention_ms=86_400_000,
                    compression="zstd")
        plain = s.topic("events", partitions=1)
        assert t.settings["cleanup_policy"] == "compact"
        assert plain.settings["cleanup_policy"] == "delete"
        t.publish(b"1.0", key=b"EUR")
        with pytest.raises(logstore.MissingKeyError):
            t.publish(b"keyless")
        plain.publish(b"keyless is fine here")
    for p in range(2):
        got = stored_settings(os.path.join(d, "topics", "prices", str(p)))
        assert got.get("cleanup_policy") == "compact" and got.get("compression") == "zstd"
    with open(os.path.join(d, "topics", "prices", "topic.json"), "rb") as f:
        assert json.loads(f.read())["settings"]["retention_ms"] == 86_400_000
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        t = s.topic("prices")
        assert t.settings["retention_ms"] == 86_400_000
        assert all(log.config.cleanup_policy == "compact" for log in t.partitions)
        with pytest.raises(logstore.MissingKeyError):
            t.publish(b"still keyless")
        with pytest.raises(logstore.ConfigError):  # conflicting with the stored value
            s.topic("prices", retention_ms=1000)
        assert s.topic("prices", retention_ms=86_400_000) is not None  # the same: fine
        t.configure(retention_ms=1000)
        assert t.settings["retention_ms"] == 1000
    with logstore.Store.open(d, retention_check_interval_s=0) as s:
        assert s.topic("prices").settings["retention_ms"] == 1000
        assert all(log.config.retention_ms == 1000 for log in s.topic("prices").partitions)


def test_store_open_options_are_defaults_for_new_topics_only(tmp_path):
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", segment_bytes=2048,
                             retention_check_interval_s=0) as s:
        s.topic("old").publish(b"a")
        s.queue("jobs").put(b"job")
        g = s.consumer("g", "old")
        g.poll(10)
        g.commit()
    # Different store-wide options later: existing topics (and internal logs) keep theirs.
    with logstore.Store.open(d, fsync="never", segment_bytes=8192,
                             retention_check_interval_s=0) as s:
        assert s.topic("old").settings["segment_bytes"] == 2048
        assert s.topic("new").settings["segment_bytes"] == 8192
        m = s.queue("jobs").get(timeout=1)
        assert m is not None and m.value == b"job"
        g = s.consumer("g", "old")
        assert g.committed() == {0: 1}


# ---------------------------------------------------------------------------- CLI
def test_cli_config_prints_and_changes_settings(tmp_path):
    d = str(tmp_path / "log")
    with logstore.Log.open(d, fsync="never", compression="zstd", retention_check_interval_s=0):
        pass
    r = run_cli("config", d, "--json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout).get("compression") == "zstd" or \
        json.loads(r.stdout)["settings"]["compression"] == "zstd"
    r = run_cli("config", d, "-o", "retention_ms=5000")
    assert r.exit_code == 0, r
    assert stored_settings(d)["retention_ms"] == 5000
    r = run_cli("config", d, "-o", "no_such=1")
    assert r.exit_code == 2, r
    r = run_cli("config", d, "-o", "retention_ms=-3")
    assert r.exit_code == 2, r
    with logstore.Log.open(d, retention_check_interval_s=0):
        r = run_cli("config", d, "-o", "retention_ms=7000")
        assert r.exit_code == 3, r  # the writer's lock is held
        assert run_cli("config", d).exit_code == 0  # printing needs no lock
    assert stored_settings(d)["retention_ms"] == 5000


def test_cli_config_of_a_store_topic(tmp_path):
    d = str(tmp_path / "store")
    with logstore.Store.open(d, fsync="never", retention_check_interval_s=0) as s:
        s.topic("t", partitions=2)
    r = run_cli("config", d, "--topic", "t", "-o", "cleanup_policy=compact")
    assert r.exit_code == 0, r
    with logstore.Store.open(d, retention_check_interval_s=0) as s:
        assert s.topic("t").settings["cleanup_policy"] == "compact"
    r = run_cli("config", d, "--topic", "nope")
    assert r.exit_code == 2, r
