"""Check the README's "Testing your application's recovery" example from a fresh install.

    python tools/check_readme_example.py [--venv DIR] [--keep]

1. Builds a new virtual environment outside the repository (``--venv``, default a new temporary
   directory) and installs this checkout into it, as a user would (``pip install <checkout>``,
   not editable), plus pytest.
2. Copies the README's example, as written, to ``test_bank.py`` in a new directory outside the
   repository and runs ``pytest`` there: both tests must pass.
3. Breaks the example's application code on purpose (acknowledges before the append returns:
   the ``acknowledge(amount)`` line moved above ``self.topic.publish(...)``) and runs pytest
   again: both tests must fail.

Exit status 0 when all of that holds, 1 otherwise (the pytest output is printed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- test_bank.py:"


def example_source(readme: str) -> str:
    """The first ```python block after the example's marker comment."""
    at = readme.index(MARKER)
    m = re.compile(r"```python\n(.*?)```", re.S).search(readme, at)
    if m is None:
        raise ValueError("no ```python block after the example marker in README.md")
    return m.group(1)


def break_example(src: str) -> str:
    """Acknowledge before the append returns: move the acknowledge line above the publish."""
    lines = src.splitlines(keepends=True)
    pub = [i for i, line in enumerate(lines) if "self.topic.publish(" in line]
    ack = [i for i, line in enumerate(lines) if line.strip().startswith("acknowledge(amount)")]
    if len(pub) != 1 or len(ack) != 1 or not pub[0] < ack[0]:
        raise ValueError("cannot find the publish and acknowledge lines of Account.deposit")
    moved = lines.pop(ack[0])
    lines.insert(pub[0], moved)
    return "".join(lines)


def run_pytest(python: str, src: str, where: str) -> Tuple[int, str]:
    os.makedirs(where)
    with open(os.path.join(where, "test_bank.py"), "w") as f:
        f.write(src)
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_bank.py"], cwd=where, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return proc.returncode, proc.stdout


def summary(out: str) -> str:
    lines = [line for line in out.splitlines() if re.search(r"\b(passed|failed|error)", line)]
    return lines[-1].strip("= ") if lines else "(no summary line)"


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", help="virtual environment to create (or reuse, if it exists)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args(argv)
    with open(os.path.join(ROOT, "README.md")) as f:
        src = example_source(f.read())
    broken = break_example(src)
    work = tempfile.mkdtemp(prefix="logstore-readme-example-")
    venv = args.venv or os.path.join(work, "venv")
    if os.path.commonpath([os.path.abspath(venv), ROOT]) == ROOT:
        print("the venv must be outside the repository", file=sys.stderr)
        return 2
    ok = True
    build = os.path.join(ROOT, "build")
    had_build = os.path.exists(build)
    try:
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python):
            print(f"creating {venv} and installing {ROOT} (not editable) and pytest ...")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([python, "-m", "pip", "install", "-q", ROOT, "pytest"], check=True)
        else:  # an existing venv gets this checkout installed again (never a stale copy)
            print(f"reinstalling {ROOT} (not editable) into {venv} ...")
            subprocess.run([python, "-m", "pip", "install", "-q", "--force-reinstall",
                            "--no-deps", ROOT], check=True)
            subprocess.run([python, "-m", "pip", "install", "-q", ROOT, "pytest"], check=True)
        where = subprocess.run([python, "-c", "import logstore, os; print(os.path.dirname("
                                "logstore.__file__))"], check=True, cwd=work,
                               stdout=subprocess.PIPE, text=True).stdout.strip()
        print(f"logstore imported from {where}")
        if os.path.commonpath([where, ROOT]) == ROOT:
            print("logstore is imported from the checkout, not from an installed copy")
            return 1
        rc, out = run_pytest(python, src, os.path.join(work, "as-written"))
        good = rc == 0 and re.search(r"\b2 passed\b", out) is not None
        print(f"README example as written: {summary(out)} -> {'OK' if good else 'WRONG'}")
        rc2, out2 = run_pytest(python, broken, os.path.join(work, "acknowledges-too-early"))
        bad = rc2 == 1 and re.search(r"\b2 failed\b", out2) is not None
        print(f"with acknowledge() before publish(): {summary(out2)} -> "
              f"{'OK (both tests fail)' if bad else 'WRONG'}")
        if not good:
            print(out)
        if not bad:
            print(out2)
        ok = good and bad
    finally:
        if not had_build:  # setuptools builds in the checkout: leave no build/ behind
            shutil.rmtree(build, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
