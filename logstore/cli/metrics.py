"""``logstore metrics``: a store's figures in the Prometheus text format, printed or served.

Computed read-only from the logs (:mod:`logstore.diagnostics.metrics`): depth, lag, dead
letters, ages, rates of appends. The figures only a working process has (acks per second,
processing times, redeliveries, breakers) are in that process's ``store.metrics()``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any, Optional, Sequence

import click

from ..diagnostics.metrics import (
    MetricsServer, breaches, parse_check, store_exposition, store_metrics,
)
from ..diagnostics.targets import store_path
from ..errors import ConfigError
from .common import EXIT_CORRUPT, CommandExit, operator, path_arg


@click.command("metrics")
@path_arg
@click.option("--topic", default=None, metavar="NAME",
              help="Only topic NAME (its groups, subscriptions and queue).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead.")
@click.option("--serve", "serve", default=None, metavar="[HOST]:PORT",
              help="Serve GET /metrics on this address (e.g. :9108) until ^C or SIGTERM; "
                   "every scrape reads the store again.")
@operator
def metrics(path: str, topic: Optional[str], as_json: bool, serve: Optional[str]) -> None:
    """Print the metrics of the store PATH in the Prometheus text exposition format (or serve
    them over HTTP with --serve). Read-only: safe beside the writing process.

    \b
    Examples:
      logstore metrics data/shop
      logstore metrics data/shop --json
      logstore metrics data/shop --serve :9108
    """
    if serve is None:
        if as_json:
            click.echo(json.dumps(store_metrics(path, topic), indent=1, sort_keys=True))
        else:
            click.echo(store_exposition(path, topic), nl=False)
        return
    store_metrics(path, topic)  # fail now (not a store, unknown topic) rather than per scrape
    server = MetricsServer(lambda: store_exposition(path, topic), serve)
    host, port = server.address
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    server.start()
    click.echo(f"logstore metrics: serving http://{host or '0.0.0.0'}:{port}/metrics",
               err=True)
    sys.stderr.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()


def run_checks(path: str, topic: Optional[str], checks: Sequence[str], as_json: bool) -> None:
    """``logstore stats PATH --check ...``: one line per breach on stdout and exit 1; nothing
    and exit 0 when every figure is within its threshold. Usage error (exit 2) for a malformed
    check, or a PATH that is not a store."""
    parsed = [parse_check(c) for c in checks]  # every check is checked before reading
    if store_path(path) is None:
        raise ConfigError(f"--check needs a store (a directory with store.meta); {path} is not "
                          f"one")
    lines = breaches(store_metrics(path, topic), parsed)
    if as_json:
        click.echo(json.dumps({"path": path, "checks": [c.text for c in parsed],
                               "breaches": lines}))
    else:
        for line in lines:
            click.echo(line)
    if lines:
        raise CommandExit(EXIT_CORRUPT)
