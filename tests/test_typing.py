"""The public API is typed for its users (PEP 561): ``logstore/py.typed`` ships with the
package, and ``mypy --strict`` on a user's program (``tests/typing/user_code.py``) sees real
types (``log.get(0)`` is a ``Record``, ``store.queue(...).get()`` a ``Message | None``, numpy
columns) and catches misspelt or mistyped ``Log.open``/``Store.open`` options."""

import dataclasses
import os
import re
import subprocess
import sys
import typing

import pytest

import logstore
from logstore.config import LogConfig, LogOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_CODE = os.path.join(ROOT, "tests", "typing", "user_code.py")


def test_py_typed_ships_with_the_package():
    assert os.path.isfile(os.path.join(os.path.dirname(logstore.__file__), "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert re.search(r'logstore = \["py.typed"\]', f.read())


def test_log_options_lists_every_log_config_field():
    hints = typing.get_type_hints(LogOptions)
    assert list(hints) == [f.name for f in dataclasses.fields(LogConfig)]
    assert not LogOptions.__required_keys__  # every option is optional


def test_mypy_strict_sees_real_types_in_user_code(tmp_path):
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    # logstore's own modules are followed as an installed package with py.typed is: its
    # annotations are used, errors inside it are not the user's.
    config.write_text("[mypy]\nstrict = True\n\n[mypy-logstore.*]\nfollow_imports = silent\n")
    env = dict(os.environ, MYPYPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                        "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
                        "--show-absolute-path", USER_CODE], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=600)
    notes, errors = {}, {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(.*?):(\d+): (note|error): (.*)$", line)
        if not m or os.path.abspath(m.group(1)) != USER_CODE:
            continue
        n = int(m.group(2))
        if m.group(3) == "note" and m.group(4).startswith("Revealed type is"):
            notes[n] = m.group(4)
        elif m.group(3) == "error":
            errors.setdefault(n, []).append(m.group(4))
    assert notes, p.stdout + p.stderr
    with open(USER_CODE) as f:
        source = f.read().splitlines()
    expected_errors = set()
    checked = 0
    for n, text in enumerate(source, 1):
        if "reveal_type(" in text and "# -> " in text:
            want = text.split("# -> ", 1)[1].strip()
            assert n in notes, f"line {n}: no revealed type ({text.strip()})"
            assert want in notes[n], f"line {n}: {notes[n]} (wanted {want})"
            assert "Any" not in notes[n].replace("dict[str, Any]", "").replace(
                "tuple[Any, ...]", ""), f"line {n}: {notes[n]}"
            checked += 1
        if "# error: " in text:
            want = text.split("# error: ", 1)[1].strip()
            assert any(want in e for e in errors.get(n, [])), f"line {n}: {errors.get(n)}"
            expected_errors.add(n)
    assert checked >= 30
    unexpected = {n: e for n, e in errors.items() if n not in expected_errors}
    assert not unexpected, unexpected
