"""Helpers shared by the test files (h11's ``tests/helpers.py``): running the CLI in-process,
and damaging a file byte by byte."""

from click.testing import CliRunner

from logstore.cli import main


def run(*args, input=None):
    """Run ``logstore ARGS...`` in-process; the click result (stdout and stderr apart)."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def lines(result):
    """The stdout lines of a :func:`run` result."""
    return result.stdout.splitlines()


def flip(path, position, new_byte=None, *, xor=0x55):
    """Damage one byte of ``path``: set it to ``new_byte``, or XOR it with ``xor``."""
    with open(path, "r+b") as f:
        f.seek(position)
        old = f.read(1)[0]
        f.seek(position)
        f.write(bytes([old ^ xor if new_byte is None else new_byte]))
