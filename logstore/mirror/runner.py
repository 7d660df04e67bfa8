"""What ``logstore mirror STORE TOPIC --servers ... --stream NAME`` runs: open the store, mirror
until a signal (or until caught up), print status lines, map failures to exit codes.

The CLI (``logstore.cli``) parses options and calls :func:`run_mirror_cli`; everything about
running a mirror as a process lives here, so the CLI stays a thin layer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from ..errors import ConfigError, LogLockedError, MirrorError, NotALogError, UnknownTopicError
from ..format.names import STORE_META
from ..views.store import Store
from .config import MirrorConfig
from .jetstream import JetStreamMirror
from .messages import subject_filter

__all__ = ["run_mirror_cli", "EXIT_OK", "EXIT_CONFIG", "EXIT_LOCKED", "EXIT_ERROR"]

EXIT_OK = 0
EXIT_CONFIG = 2   # no store, no topic, bad options or stream settings
EXIT_LOCKED = 3   # another process has the store open for writing
EXIT_ERROR = 4    # anything else retrying cannot fix (MirrorError)


def run_mirror_cli(
    store_path: str,
    topic: str,
    servers: Union[str, Sequence[str], None] = None,
    stream: Optional[str] = None,
    *,
    until_caught_up: bool = False,
    status_interval_s: float = 10.0,
    fsync: Optional[str] = None,
    echo: Optional[Callable[[str], None]] = None,
    config: Optional[MirrorConfig] = None,
    **options: Any,
) -> int:
    """What ``logstore mirror STORE TOPIC --servers ... --stream NAME`` runs.

    Opens the store for writing, mirrors until SIGINT/SIGTERM (or, with ``until_caught_up``,
    until everything present is acked), printing a status line every ``status_interval_s``
    through ``echo`` (default: stderr). The mirror's options are ``config`` and/or the
    :class:`MirrorConfig` fields as keywords (``subject_prefix``, ``replicas``,
    ``max_in_flight``, ``dedup_window_s``, ``ack_timeout_s``, ``max_backoff_s``...); ``fsync``
    is the store's fsync policy (default: the store's default).

    Returns the exit code: 0 done/stopped, 2 configuration error (no store, no topic, bad stream
    settings), 3 the store is locked by another writer, 4 any other error.
    """
    say = echo or _stderr

    def error(text: str) -> None:
        say(f"logstore: error: {text}")

    given = {k: v for k, v in (("servers", servers), ("stream", stream)) if v is not None}
    try:
        config = MirrorConfig.from_options(config, **given, **options)
    except ConfigError as e:
        error(f"{e}")
        return EXIT_CONFIG
    if not os.path.exists(os.path.join(store_path, STORE_META)):
        error(f"{store_path} is not a logstore store (no {STORE_META})")
        return EXIT_CONFIG
    opts = {} if fsync is None else {"fsync": fsync}
    try:
        store = Store.open(store_path, **opts)
    except LogLockedError as e:
        error(f"{e}")
        return EXIT_LOCKED
    except (NotALogError, ConfigError) as e:
        error(f"{e}")
        return EXIT_CONFIG
    try:
        try:
            mirror = JetStreamMirror(store, topic, config=config)
        except (ConfigError, UnknownTopicError) as e:
            error(f"{e}")
            return EXIT_CONFIG
        return _run(mirror, store, until_caught_up, status_interval_s, say, error)
    finally:
        store.close()


def _run(mirror: JetStreamMirror, store: Store, until_caught_up: bool, status_interval_s: float,
         say: Callable[[str], None], error: Callable[[str], None]) -> int:
    """Run ``mirror`` with signal handlers and the status ticker; close it; the exit code."""
    try:
        with _stop_on_signals(mirror), _ticker(status_interval_s, lambda: say(status_line(mirror))):
            say(f"mirroring topic {mirror.topic_name!r} of {store.root} to JetStream stream "
                f"{mirror.stream!r} (subjects "
                f"{subject_filter(mirror.subject_prefix, mirror.topic_name)}) via "
                f"{', '.join(mirror.servers)}")
            mirror.run(until_caught_up=until_caught_up)
    except ConfigError as e:
        error(f"{e}")
        return EXIT_CONFIG
    except MirrorError as e:
        error(f"{e}")
        return EXIT_ERROR
    finally:
        mirror.close()
    say(status_line(mirror, final=True))
    return EXIT_OK


def status_line(mirror: JetStreamMirror, final: bool = False) -> str:
    """One line of the mirror's state: ``mirror T -> S: connected, lag N, acked M[, last error
    X s ago: ...]`` (``final``: ``stopped`` instead of the connection state)."""
    st = mirror.status()
    state = "stopped" if final else "connected" if st["connected"] else "NOT connected"
    line = (f"mirror {mirror.topic_name} -> {mirror.stream}: {state}, lag {st['lag']}, "
            f"acked {st['acked']}")
    if st["last_error"]:
        age = time.time() - (st["last_error_at"] or time.time())
        line += f", last error {age:.0f} s ago: {st['last_error']}"
    return line


@contextlib.contextmanager
def _stop_on_signals(mirror: JetStreamMirror) -> Iterator[None]:
    """SIGINT/SIGTERM stop the mirror (gracefully: acks in flight, final commit) while inside;
    the previous handlers come back after. Only the main thread may set handlers."""
    def on_signal(_signum: int, _frame: Any) -> None:
        mirror.stop()

    old = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, on_signal)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _ticker(interval_s: float, tick: Callable[[], None]) -> Iterator[None]:
    """Call ``tick`` every ``interval_s`` seconds from a daemon thread while inside."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            tick()

    threading.Thread(target=loop, daemon=True, name="logstore-mirror-status").start()
    try:
        yield
    finally:
        stop.set()


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
