"""The benchmark and tool scripts still start: each one's ``--help`` exits 0 (a module they
import was moved or renamed otherwise). Benchmarks report figures; this checks only that they
run at all, never a timing."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(p for d in ("bench", "tools") for p in glob.glob(os.path.join(ROOT, d, "*.py"))
                 if not os.path.basename(p).startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_starts(script):
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "usage" in out.stdout.lower() or out.stdout.strip(), out.stdout
