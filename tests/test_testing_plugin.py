"""The pytest plugin of logstore.testing, run the way users run it (pytester): fixtures, options,
failure reports, and replaying one crash point alone."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

WORKLOADS = '''
import logstore


def appender(log, ack):
    for i in range(20):
        log.append(b"%d" % i)
        ack(i)


def acks_too_early(log, ack):
    for i in range(20):
        ack(i)  # the bug: acknowledged before the append returned
        log.append(b"%d" % i)


def prefix_check(log, acked):
    values = [int(r.value) for r in log.replay()]
    assert values[:len(acked)] == acked, f"acknowledged {acked} but recovered {values}"
    assert len(values) <= len(acked) + 1
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(logstore_plugin_workloads=WORKLOADS)
    return pytester


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="pytest11") if e.value == "logstore.testing.plugin"]
    assert eps, "pip install the package (the pytest11 entry point registers the plugin)"


def test_importing_logstore_testing_does_not_import_pytest():
    code = ("import sys, logstore.testing; "
            "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tmp_log_and_tmp_store_options_teardown_and_verify(suite):
    suite.makepyfile(test_uses_fixtures='''
        import os
        import pytest


        @pytest.mark.logstore(fsync="never", segment_bytes=4096)
        def test_marker_options(tmp_log):
            assert tmp_log.config.fsync == "never" and tmp_log.config.segment_bytes == 4096
            assert tmp_log.append(b"x") == 0


        @pytest.mark.parametrize("tmp_store", [{"compression": "zstd"}], indirect=True)
        def test_indirect_options(tmp_store):
            assert tmp_store.config.compression == "zstd"
            tmp_store.topic("t").publish(b"y")


        def test_left_open_is_closed_at_teardown(tmp_log, tmp_path):
            tmp_log.append(b"z")
            pytest.left_open = tmp_log


        def test_closed_at_teardown(tmp_path):
            assert pytest.left_open.closed
            assert os.path.exists(os.path.join(pytest.left_open.path, "clean-shutdown"))


        def test_damage_fails_at_teardown(tmp_log, tmp_path):
            tmp_log.append(b"a" * 200)
            tmp_log.close()
            with open(tmp_path / "log" / "00000000000000000000.log", "r+b") as f:
                f.seek(100)
                f.write(b"XX")
    ''')
    result = suite.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_damage_fails_at_teardown*",
        "*logstore verify*problem(s)*",
        "*00000000000000000000.log at byte 0*",
    ])


def test_sweep_passes_and_a_failure_names_point_seed_operation_and_replay(suite):
    suite.makepyfile(test_uses_sweeps='''
        from logstore_plugin_workloads import appender, acks_too_early, prefix_check


        def test_sweep_ok(power_loss_sweep):
            report = power_loss_sweep(appender, prefix_check, options={"fsync": "always"})
            print("CHECKED", report.points)
            assert report.checked == report.ops + 1 > 40


        def test_sweep_bug(power_loss_sweep):
            power_loss_sweep(acks_too_early, prefix_check, options={"fsync": "always"})
    ''')
    result = suite.runpytest("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    m = re.search(r"power-loss sweep failed at crash point (\d+) \(of 0\.\.(\d+), seed 0\)", out)
    assert m, out
    point = int(m.group(1))
    result.stdout.fnmatch_lines([
        f"*power lost before operation {point}: *(00000000000000000000.log*",
        "*acknowledged before the power loss: * values, the last: *",
        "*the check raised AssertionError: acknowledged*",
        "*the crash state (before recovery) is kept in *crash-point-*",
        "*replay this crash point alone:*",
        f"*pytest test_uses_sweeps.py::test_sweep_bug --logstore-crash-point={point} "
        f"--logstore-seed=0*",
    ])
    # The replay runs that one crash point and fails the same way.
    again = suite.runpytest("-p", "no:cacheprovider", "test_uses_sweeps.py::test_sweep_bug",
                            f"--logstore-crash-point={point}", "--logstore-seed=0")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([f"*failed at crash point {point} (of 0..{m.group(2)}, seed 0)*",
                                f"*power lost before operation {point}: *(0000*.log*"])
    assert "logstore.testing: seed 0, only crash point(s) %d" % point in again.stdout.str()
    # ...and a passing sweep, asked for one point, checks exactly that one.
    one = suite.runpytest("-p", "no:cacheprovider", "-s", "test_uses_sweeps.py::test_sweep_ok",
                          f"--logstore-crash-point={point}")
    one.assert_outcomes(failed=1)  # its own assertion: it checked 1 point, not all
    one.stdout.fnmatch_lines([f"*CHECKED [[]{point}[]]*"])


def test_seed_and_sample_options(suite):
    suite.makepyfile(test_uses_options='''
        from logstore_plugin_workloads import appender, prefix_check


        def test_sampled(power_loss_sweep):
            report = power_loss_sweep(appender, prefix_check)
            print("SEED", report.seed, "CHECKED", report.checked)
    ''')
    result = suite.runpytest("-p", "no:cacheprovider", "-s", "--logstore-sweep-points=5",
                             "--logstore-seed=random")
    result.assert_outcomes(passed=1)
    header = re.search(r"logstore\.testing: seed (\d+)", result.stdout.str())
    assert header, result.stdout.str()
    result.stdout.fnmatch_lines([f"*SEED {header.group(1)} CHECKED 5*"])
    bad = suite.runpytest("-p", "no:cacheprovider", "--logstore-seed=abc")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--logstore-seed must be an integer or 'random'*"])


def test_the_same_seed_gives_the_same_damage(suite):
    suite.makepyfile(test_uses_seed='''
        from logstore_plugin_workloads import appender


        def test_record_damage(power_loss_sweep):
            seen = []

            def check(log, acked):
                seen.append(log.end_offset)

            power_loss_sweep(appender, check, dedup=False)
            print("ENDS", seen)
    ''')
    runs = [suite.runpytest("-p", "no:cacheprovider", "-s", f"--logstore-seed={s}")
            for s in (7, 7, 8)]
    ends = [re.search(r"ENDS (\[.*\])", r.stdout.str()).group(1) for r in runs]
    assert ends[0] == ends[1]
    assert ends[0] != ends[2]  # damage (kept or dropped tails) differs with the seed


def test_crash_runner_fixture(suite):
    suite.makepyfile(test_uses_crash_runner='''
        import pytest
        from logstore.testing import CrashRunnerError, rebuild


        def writer(log, ack):
            i = 0
            while True:
                log.append(b"%d" % i)
                ack(i)
                i += 1


        def finisher(log, ack):
            log.append(b"only")
            ack("only")
            return "finished"


        def explodes(log, ack):
            ack(1)
            raise ValueError("boom in the child")


        def test_kill_after_acks(crash_runner):
            r = crash_runner(writer, after_acks=7)
            assert r.killed and r.acked == list(range(7))
            assert r.target.end_offset == 7  # killed inside the 7th ack: nothing in flight
            rebuild(r.target, lambda s, e: s + e, 0, decode=lambda rec: int(rec.value),
                    acked=r.acked)


        def test_rounds_accumulate_on_one_log(crash_runner):
            first = crash_runner(writer, after_acks=3)
            first.close()
            second = crash_runner(writer, max_s=0.2)
            assert second.path == first.path and second.killed
            assert second.target.end_offset >= 3 + len(second.acked)


        def test_store_kind(crash_runner):
            def_ = crash_runner(publisher, kind="store", options={"fsync": "always"},
                                after_acks=5)
            assert def_.target.topic("t").partitions[0].end_offset == 5


        def publisher(store, ack):
            t = store.topic("t")
            while True:
                ack(t.publish(b"m"))


        def test_finishing_early_is_an_error(crash_runner):
            with pytest.raises(CrashRunnerError, match="returned after 1 acknowledgements"):
                crash_runner(finisher, after_acks=5)
            r = crash_runner(finisher, after_s=60)
            assert not r.killed and r.returned == "finished" and r.acked == ["only"]


        def test_child_errors_are_reported(crash_runner):
            with pytest.raises(CrashRunnerError,
                               match="(?s)raised in the child.*boom in the child"):
                crash_runner(explodes, after_acks=3)


        def test_lambdas_are_refused(crash_runner):
            with pytest.raises(TypeError, match="module-level function"):
                crash_runner(lambda log, ack: None)
    ''')
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
