"""Metrics from another process (read-only), alert checks, and a Prometheus scrape endpoint.

* :func:`store_metrics` opens a store ``readonly=True`` and returns ``store.metrics()`` as the
  logs tell it (no process-local figure: see :mod:`logstore.views.metrics`). Safe beside the
  writing process: nothing is written, no lock is taken.
* :func:`parse_check` / :func:`breaches`: threshold checks such as ``depth>1000``,
  ``lag_s>60`` or ``jobs:dead_lettered>0`` against every figure set that has the figure (what
  ``logstore stats --check`` runs).
* :class:`MetricsServer`: ``GET /metrics`` answered with the Prometheus text of any source (the
  ``logstore metrics --serve`` command; or, in an application, its own ``store.metrics()`` with
  every process-local figure), with the standard library's ``http.server``.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ..errors import ConfigError, NotALogError
from ..views.metrics import entities
from ..views.prometheus import CONTENT_TYPE, prometheus_text
from ..views.store import Store
from .targets import store_path

logger = logging.getLogger("logstore")

#: Every figure a check may name, by the kinds of figure sets that have it.
FIGURES = {
    "records": ("topic", "partition"), "end_offset": ("topic", "partition"),
    "start_offset": ("partition",), "rate_in": ("topic", "partition", "queue"),
    "lag": ("group", "subscription", "queue"), "lag_s": ("group", "subscription", "queue"),
    "depth": ("queue",), "in_flight": ("queue",), "delayed": ("queue",), "total": ("queue",),
    "dead_lettered": ("queue",), "oldest_age_s": ("queue",), "skipped": ("queue",),
    "rate_out": ("group", "subscription", "queue"),
    "errors_total": ("group", "queue", "responder"),
    "redelivered_total": ("queue",), "nacked_total": ("queue",),
    "failures_in_window": ("breaker",), "pending": ("requester",),
    "timeouts_total": ("requester",), "late_replies_total": ("requester",),
}
_OPS: Dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}
_CHECK = re.compile(r"^\s*(?:(?P<name>[^=<>!]+):)?(?P<figure>[a-z_]+)\s*"
                    r"(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?[0-9]+(?:\.[0-9]+)?)\s*$")


def store_root(path: "str | os.PathLike[str]") -> Tuple[str, Optional[str]]:
    """``(store root, topic or None)`` of a store root or topic directory; NotALogError
    otherwise."""
    found = store_path(path)
    if found is None:
        raise NotALogError(f"{os.fspath(path)} is not a store (no store.meta): metrics are a "
                           f"store's")
    return found


def store_metrics(path: "str | os.PathLike[str]", topic: Optional[str] = None
                  ) -> Dict[str, Any]:
    """``store.metrics()`` of the store at ``path`` (a root, or a topic directory: that topic),
    computed read-only from its logs."""
    root, in_path = store_root(path)
    topic = topic or in_path
    store = Store.open(root, readonly=True, dedup_window_s=0)
    try:
        if topic is not None:
            store.get_topic(topic)  # UnknownTopicError for a name that is not there
        return store.metrics(topics=None if topic is None else [topic])
    finally:
        store.close()


# ------------------------------------------------------------------------------ checks
class Check(NamedTuple):
    """``[NAME:]FIGURE OP NUMBER``: ``NAME`` limits it to figure sets of that name (a topic,
    ``topic/partition``, queue, ``group@topic``, ``subscription@topic``, breaker...)."""

    text: str
    name: Optional[str]
    figure: str
    op: str
    value: float


def parse_check(text: str) -> Check:
    """A check such as ``depth>1000`` or ``jobs:lag_s>=60``; ConfigError if malformed or if
    no figure set has that figure."""
    m = _CHECK.match(text)
    if m is None:
        raise ConfigError(f"bad check {text!r}: expected [NAME:]FIGURE OP NUMBER, OP one of "
                          f"{', '.join(_OPS)}, e.g. 'depth>1000' or 'jobs:lag_s>60'")
    figure = m["figure"]
    if figure not in FIGURES:
        raise ConfigError(f"bad check {text!r}: no figure {figure!r}; figures: "
                          f"{', '.join(sorted(FIGURES))}")
    name = m["name"].strip() if m["name"] else None
    return Check(text.strip(), name, figure, m["op"], float(m["value"]))


def breaches(metrics: Dict[str, Any], checks: List[Check]) -> List[str]:
    """One line per figure that breaches a check: ``"<kind> <name>: <figure>=<value> <op>
    <threshold>"``, in the order of the checks; first, one line per figure set that could not
    be computed (a damaged queue state): that is a breach of every check."""
    out: List[str] = []
    rows = entities(metrics)
    for kind, name, fig in rows:
        if "error" in fig and checks:  # figures that could not be computed: never a silent pass
            out.append(f"{kind} {name}: figures unavailable: {fig['error']}")
    for check in checks:
        fn = _OPS[check.op]
        for kind, name, fig in rows:
            if check.name is not None and name != check.name:
                continue
            value = fig.get(check.figure)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if fn(value, check.value):
                shown = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) \
                    else str(value)
                limit = f"{check.value:g}"
                out.append(f"{kind} {name}: {check.figure}={shown} {check.op} {limit}")
    return out


# ------------------------------------------------------------------------------ serving
def parse_address(text: str) -> Tuple[str, int]:
    """``":9108"``, ``"9108"``, ``"127.0.0.1:9108"`` -> ``(host, port)`` (host "" = every
    interface)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad address {text!r}: expected [HOST]:PORT, e.g. :9108")
    return host.strip("[]"), int(port)


class MetricsServer:
    """``GET /metrics`` (and ``/``) answered with ``source()`` (a Prometheus text), in threads
    of the standard library's :class:`http.server.ThreadingHTTPServer`.

    ``MetricsServer(lambda: logstore.prometheus_text(store.metrics()), ":9108").start()``
    """

    def __init__(self, source: Callable[[], str], address: "str | Tuple[str, int]" = ":9108"):
        self.source = source
        host, port = parse_address(address) if isinstance(address, str) else address
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body, status, ctype = server.source().encode(), 200, CONTENT_TYPE
                except Exception as e:  # a scrape must say why it failed
                    logger.exception("metrics scrape failed")
                    body, status = f"metrics failed: {e}\n".encode(), 500
                    ctype = "text/plain; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("metrics http: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        """The bound ``(host, port)`` (port 0 asks the kernel for a free one)."""
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> "MetricsServer":
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="logstore-metrics-http")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()


def store_exposition(path: str, topic: Optional[str] = None) -> str:
    """The Prometheus text of :func:`store_metrics` (a fresh read-only open each call, so every
    scrape sees the latest commits and acks)."""
    return prometheus_text(store_metrics(path, topic))
