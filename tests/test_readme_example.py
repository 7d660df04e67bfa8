"""The README's "Testing your application's recovery" example, as written, passes under pytest,
and fails (both tests) once its application acknowledges before the append returns.

This runs it with the package as installed for the test suite; tools/check_readme_example.py
runs the same check from a fresh ``pip install`` into a new virtual environment.
"""

from __future__ import annotations

import importlib.util
import os

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "check_readme_example", os.path.join(ROOT, "tools", "check_readme_example.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return _tool().example_source(f.read())


def test_readme_example_passes_as_written(pytester):
    pytester.makepyfile(test_bank=_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_readme_example_fails_when_it_acknowledges_too_early(pytester):
    broken = _tool().break_example(_example())
    assert broken != _example()
    pytester.makepyfile(test_bank=broken)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*RecoveryMismatch: 1 acknowledged event(s) lost: 40 were acknowledged, 39 recovered*",
        "*power-loss sweep failed at crash point * (of 0..*, seed 0)*",
        "*pytest test_bank.py::test_power_loss_at_every_operation --logstore-crash-point=*",
    ])
