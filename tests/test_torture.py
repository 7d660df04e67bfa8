"""A short run of tools/torture.py: SIGKILLed writers with random configurations, then checks.

The long run is ``python tools/torture.py --rounds 200 --dir /tmp/torture``; this one keeps the
suite fast and asserts the figures the tool prints.
"""

import json
import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                    "torture.py")


def test_torture_short_run(tmp_path):
    rounds = 24
    proc = subprocess.run(
        [sys.executable, TOOL, "--rounds", str(rounds), "--dir", str(tmp_path / "t"),
         "--seed", "20240611", "--quick", "--tear", "0.4", "--json"],
        capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["problems"] == [], figures["problems"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert figures["ok"] is True
    assert figures["rounds"] == rounds
    assert figures["lost"] == 0
    assert figures["corrupt"] == 0
    assert figures["failures"] == 0
    assert figures["writer_errors"] == 0
    assert figures["acknowledged"] > 1000  # the writers really wrote
    assert figures["recoveries"] >= rounds // 2  # most kills leave something to recover
    assert figures["torn_tails"] >= 1  # injected power-loss tears were cut off at reopen
    assert figures["torn_tails"] <= figures["recoveries"]


def test_torture_reports_failure_with_exit_status(tmp_path, monkeypatch):
    """The tool's checks are not vacuous: a record changed on disk is caught and exits 1."""
    sys.path.insert(0, os.path.dirname(TOOL))
    try:
        import torture
    finally:
        sys.path.pop(0)
    import logstore

    d = str(tmp_path / "log")
    state = torture.TortureState()
    with logstore.Log.open(d, segment_bytes=1024) as log:
        for i in range(30):
            key, value, headers = torture.make_record(torture.random.Random(i), 1, 0, i, False)
            off = log.append(value, key=key, headers=headers or None)
            state.acked[off] = (torture.digest(key, value, headers), True)
    state.acked[29] = ("0" * 40, True)  # pretend offset 29 was acknowledged with other bytes
    state.acked[30] = ("0" * 40, True)  # and that offset 30 was acknowledged: it is lost
    problems = []
    with logstore.Log.open(d) as log:
        torture.CoreWorkload.check_records(log, state, problems, "t")
    assert any("changed" in p for p in problems)
    assert any("lost" in p for p in problems)
    assert state.stats["lost"] == 1 and state.stats["corrupt"] >= 1
    # A flipped byte in a sealed segment is reported by verify_directory.
    seg = sorted(f for f in os.listdir(d) if f.endswith(".log"))[0]
    with open(os.path.join(d, seg), "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    assert torture.verify_directory(d)
