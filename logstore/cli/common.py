"""What every command shares: exit codes, the error boundary, PATH and store options, opening.

Exit codes: 0 success; 1 corrupt data found (or a recover dry run that has work to do);
2 usage error (bad option, missing path, not a log, offset out of range); 3 the log is locked
by a writer; 4 other errors (I/O, unsupported format); 130 interrupted. :func:`operator` is the
one place exceptions become an exit code and one line on stderr; output to a pipe that is
closed early (``| head``) ends the command quietly (exit 0).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import click

from ..diagnostics.report import LogReport, inspect_log
from ..diagnostics.targets import Target, require_log_dirs
from ..errors import (
    ConfigError,
    CorruptLogError,
    LogLockedError,
    LogstoreError,
    MissingKeyError,
    NotALogError,
    OffsetOutOfRangeError,
    UnknownTopicError,
)
from ..storage.log import Log
from ..views.store import Store
from .output import Progress, total_bytes

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130


class CommandExit(Exception):
    """Leave the command with ``code`` (after its output), printing nothing more."""

    def __init__(self, code: int):
        self.code = code


def exit_code(exc: BaseException) -> int:
    """The exit status of a command that failed with ``exc``."""
    if isinstance(exc, CorruptLogError):
        return EXIT_CORRUPT
    if isinstance(exc, (NotALogError, OffsetOutOfRangeError, ConfigError, MissingKeyError,
                        UnknownTopicError)):
        return EXIT_USAGE
    if isinstance(exc, LogLockedError):
        return EXIT_LOCKED
    return EXIT_ERROR


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except Exception:  # e.g. CliRunner's stdout has no file descriptor
        pass


def error(message: str) -> None:
    """One error line on stderr."""
    click.echo(f"logstore: error: {message}", err=True)


def operator(f: Callable) -> Callable:
    """Run a command: map errors to one stderr line and an exit code, stay quiet on EPIPE/^C."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> None:
        code = EXIT_OK
        try:
            f(*args, **kwargs)
            try:
                sys.stdout.flush()
            except ValueError:
                pass
        except CommandExit as e:
            code = e.code
        except BrokenPipeError:
            _silence_stdout()
            code = EXIT_OK
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except LogstoreError as e:
            error(str(e))
            code = exit_code(e)
        except OSError as e:
            if e.errno == errno.EPIPE:
                _silence_stdout()
            else:
                error(str(e))
                code = EXIT_ERROR
        if code:
            sys.exit(code)

    return run


# ---------------------------------------------------------------------------------- options
def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bar and no informational messages.")(f)


def path_arg(f: Callable) -> Callable:
    return click.argument("path", type=click.Path(path_type=str))(f)


def store_options(partition: bool = True) -> Callable[[Callable], Callable]:
    """--topic (and --partition): narrow a store root to one topic (partition)."""

    def deco(f: Callable) -> Callable:
        if partition:
            f = click.option("--partition", type=click.IntRange(min=0), default=None,
                             metavar="P", help="With --topic: only partition P.")(f)
        return click.option("--topic", default=None, metavar="NAME",
                            help="PATH is a store root: only topic NAME (default: every topic)."
                            )(f)

    return deco


def option_flag(f: Callable) -> Callable:
    return click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
                        help="A Log.open / Store.open option, e.g. -o fsync=never "
                             "-o retention_ms=86400000 (repeatable).")(f)


def parse_options(options: Iterable[str]) -> Dict[str, Any]:
    """``-o NAME=VALUE`` options (Log.open / Store.open options)."""
    opts: Dict[str, Any] = {}
    for item in options:
        name, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
        opts[name.strip()] = _option_value(value.strip())
    return opts


def _option_value(text: str) -> Any:
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower() in ("none", "null"):
        return None
    return text


# ---------------------------------------------------------------------------------- opening
@contextlib.contextmanager
def opened_readers(path: str, topic: Optional[str], partition: Optional[int], what: str
                   ) -> Iterator[List[Tuple[Target, Log]]]:
    """``(target, read-only Log)`` for each log PATH names (a log, a store root, a topic dir),
    all closed when the block ends."""
    targets = require_log_dirs(path, what, topic, partition)
    readers: List[Tuple[Target, Log]] = []
    try:
        for t in targets:
            readers.append((t, Log.open(t.log_dir, readonly=True)))
        yield readers
    finally:
        for _, log in readers:
            log.close()


def open_store(root: str, opts: Dict[str, Any], **defaults: Any) -> Store:
    """Open the store at ``root`` for writing (LogLockedError, exit 3, if a writer has it):
    no background cleanup thread and no msg-id window unless asked for."""
    options = dict(defaults)
    options.setdefault("retention_check_interval_s", 0)
    options.update(opts)
    return Store.open(root, dedup_window_s=0, **options)


def inspect_with_progress(target: Target, verify: bool, quiet: bool) -> LogReport:
    """:func:`inspect_log` with a progress bar (on a terminal, for a big log)."""
    with Progress(total_bytes(target), "verify" if verify else "stats", quiet) as progress:
        return inspect_log(target, verify=verify, progress=progress)
