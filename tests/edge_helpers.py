"""Small helpers shared by the issue-16 edge tests (tests/test_readers_follow.py, test_fork.py,
test_settings.py, test_edges_cli.py, test_exit_flush.py).

Only public names are used, except the CLI entry point: ``logstore.cli.main`` is imported here
and nowhere else in these tests (repoint ``CLI_MODULE`` if the CLI moves). Batch positions are
read from the on-disk format (segments/FORMAT.md: ``u32 batch_length`` at byte 8 of every batch
header), not through engine internals.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
CLI_MODULE = "logstore.cli"  # the one place naming the CLI's module (it has ``main``)
HEADER = 64


def cli_main():
    return importlib.import_module(CLI_MODULE).main


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code = code
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return (f"<exit {self.exit_code}\n--- stdout (tail)\n{self.stdout[-1500:]}\n"
                f"--- stderr (tail)\n{self.stderr[-1500:]}>")


def run_cli(*args, input: Optional[str] = None) -> CliResult:
    """``logstore ARGS`` in this process (click's CliRunner, as tests/test_cli*.py do)."""
    from click.testing import CliRunner

    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(cli_main(), [str(a) for a in args], input=input, catch_exceptions=False)
    return CliResult(r.exit_code, r.stdout, r.stderr)


CLI_BOOT = ("import sys; from importlib import import_module; "
            f"sys.argv[0] = 'logstore'; import_module({CLI_MODULE!r}).main()")


def cli_process(*args, **popen_kw) -> subprocess.Popen:
    """``logstore ARGS`` as a real process (for --follow, signals)."""
    return subprocess.Popen([sys.executable, "-c", CLI_BOOT] + [str(a) for a in args],
                            env=ENV, **popen_kw)


def run_python(code: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (ends normally unless the code says otherwise)."""
    return subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def batch_positions(path: str) -> List[Tuple[int, int]]:
    """``(position, length)`` of the batches of a segment file, read from their headers;
    stops at anything that is not a plausible header (a zero tail, damage)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    pos = 0
    while pos + HEADER <= len(data):
        if data[pos:pos + 4] != b"LSTB":
            break
        length = struct.unpack_from("<I", data, pos + 8)[0]
        if length < HEADER or pos + length > len(data):
            break
        out.append((pos, length))
        pos += length
    return out


def overwrite(path: str, pos: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(data)


def snapshot(directory: str) -> Dict[str, bytes]:
    """Every file under ``directory`` with its content (to prove nothing changed)."""
    out = {}
    for base, _dirs, files in os.walk(directory):
        for name in files:
            p = os.path.join(base, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, directory)] = f.read()
    return out


def segment_paths(directory: str) -> List[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith(".log") and n[:-4].isdigit())


def jsonl(text: str) -> List[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]
