"""Architecture rules of the package, checked from its source (see README, "Layout").

The layering itself is import-linter's job (``lint-imports``, run by ``.ci/run`` and by
``test_layers_contract`` below when import-linter is installed). These tests check what it does
not: no module uses another module's underscored names, imports inside functions are only the
deliberate ones, and modules stay small.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "logstore")

# Imports inside functions that are there on purpose (module: imported names' modules).
ALLOWED_LOCAL_IMPORTS = {
    "logstore/__init__.py": {"mirror"},  # JetStreamMirror without importing nats-py eagerly
    "logstore/fs.py": {"ctypes"},  # sync_file_range through libc, only on Linux
    "logstore/cli/mirror.py": {"mirror.runner"},  # needs nats-py, which other commands do not
}
MAX_MODULE_LINES = 800
# Underscored names that are public API of the standard library (NamedTuple, os._exit).
STDLIB_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def modules() -> Iterator[Tuple[str, ast.Module]]:
    for dirpath, _dirs, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


def defined_names(tree: ast.Module) -> Set[str]:
    """Every name a module defines: functions, classes, methods, module and class variables,
    attributes assigned on ``self``/``cls``, parameters."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return names


def test_no_module_uses_another_modules_underscored_names():
    problems: List[str] = []
    for path, tree in modules():
        own = defined_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{path}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.Attribute):
                attr = node.attr
                if (attr.startswith("_") and not attr.startswith("__") and attr not in own
                        and attr not in STDLIB_UNDERSCORED):
                    problems.append(f"{path}:{node.lineno} uses .{attr}")
    assert problems == [], "\n".join(problems)


def test_imports_inside_functions_are_only_the_deliberate_ones():
    problems: List[str] = []
    for path, tree in modules():
        allowed = ALLOWED_LOCAL_IMPORTS.get(path, set())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    names = {node.module or ""} if node.level == 0 else {
                        (node.module or "") or a.name for a in node.names}
                else:
                    continue
                for name in names - allowed:
                    problems.append(f"{path}:{node.lineno} imports {name} inside {fn.name}()")
    assert problems == [], "\n".join(problems)


def test_modules_stay_small():
    sizes: Dict[str, int] = {}
    for path, _tree in modules():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            sizes[path] = sum(1 for _ in f)
    big = {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines: {big}"


MAX_FUNCTION_LINES = 100
#: Functions allowed over MAX_FUNCTION_LINES (code lines, docstring excluded), with the reason.
LONG_FUNCTIONS: Dict[str, str] = {}


def test_functions_stay_small():
    """No function over ~100 lines of code (its docstring aside), unless listed with a reason
    (a measured hot path kept in one piece)."""
    long = {}
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                doc = (first.end_lineno - first.lineno + 1  # type: ignore[operator]
                       if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                       and isinstance(first.value.value, str) else 0)
                n = node.end_lineno - node.lineno + 1 - doc  # type: ignore[operator]
                name = f"{path}:{node.name}"
                if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_layers_contract():
    """``lint-imports`` (import-linter, the [tool.importlinter] contracts of pyproject.toml)."""
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable),
                                                       "lint-imports")
    if not os.path.exists(exe):
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
