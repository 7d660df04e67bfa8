"""Mirror a topic into a NATS JetStream stream, exactly once and in per-partition order.

    from logstore.mirror import JetStreamMirror
    mirror = JetStreamMirror(store, "orders", servers=["nats://127.0.0.1:4222"], stream="ORDERS")
    mirror.start()            # background thread with its own asyncio loop
    ...
    mirror.status()           # per-partition lag, connected flag, last error
    mirror.stop()

Needs the optional dependency nats-py (``pip install 'logstore[nats]'``).

How it works
------------
The mirror is an ordinary consumer of the topic: its position per partition lives in the store's
offset store under the reserved group ``__mirror__<stream>``. Record ``offset`` of partition
``p`` becomes one JetStream message on subject ``<prefix>.<topic>.<p>`` whose payload is the
record value, with the key, timestamp, position and the record's headers carried in NATS headers
(see :func:`encode_headers` / :func:`decode_message`) and ``Nats-Msg-Id =
<store id>:<topic>:<p>:<offset>``.

Publishes are pipelined (up to ``max_in_flight`` unacknowledged), and a partition's position is
committed only after JetStream acknowledged every record before it. Exactly-once and order rest
on three things:

1. **Resync before publishing.** After every (re)connect or error the mirror asks the stream for
   the last message of each partition subject and resumes after it (and after its committed
   position, whichever is later). A mirror killed between the stream's ack and its own commit
   therefore never publishes the same record twice, however long it stayed down. If the
   stream's last message is *older* than the committed position, the stream lost messages it
   had acknowledged (an R1 stream's server killed before it wrote them, say): the mirror
   publishes them again from the local log and says so in ``status()["last_error"]``.
2. **A sequence chain.** Each message carries ``Nats-Expected-Last-Sequence``: the stream
   sequence the previous message of this run is expected to get. If any message is lost on the
   way (a node dies, a connection drops), every later one in flight is refused by the server
   instead of being stored after a hole, so what the stream holds of each partition is always a
   gap-free, in-order prefix. The mirror then resyncs and continues. (The mirror therefore owns
   its stream: nothing else should publish into it.)
3. **Deduplication.** ``Nats-Msg-Id`` plus the stream's ``duplicate_window`` turn the remaining
   retries (a publish whose ack was lost) into one stored message. The window must be longer than
   the mirror's retry horizon (``2 * ack_timeout_s + max_backoff_s``), else :class:`ConfigError`.

When the cluster is unreachable the mirror backs off (exponential, with jitter, up to
``max_backoff_s``) and retries for ever; the local log is the buffer and ``status()`` shows the lag
growing. It resumes where the stream left off.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import random
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, LogstoreError, MirrorError
from ..record import Record

try:
    import nats
    import nats.errors as _nats_errors
    import nats.js.errors as _js_errors
except ImportError as _e:  # pragma: no cover - exercised only without nats-py
    raise ImportError(
        "logstore.mirror needs the NATS client nats-py, which is not installed: "
        "pip install 'logstore[nats]'  (or: pip install 'nats-py>=2.6')") from _e

__all__ = [
    "JetStreamMirror",
    "MirrorError",
    "decode_message",
    "encode_headers",
    "mirror_group",
    "run_mirror_cli",
    "subject_for",
]

log = logging.getLogger("logstore.mirror")

# NATS header names written on every mirrored message.
H_PARTITION = "Logstore-Partition"
H_OFFSET = "Logstore-Offset"
H_TIMESTAMP = "Logstore-Timestamp"
H_KEY = "Logstore-Key"              # base64 (standard alphabet) of the key; absent for no key
H_TOMBSTONE = "Logstore-Tombstone"  # "1" when the record's value is None
H_HEADER_PREFIX = "Logstore-H-"     # Logstore-H-<name>: <value> for plain-text record headers
H_HEADERS_B64 = "Logstore-Headers"  # JSON {name: base64(value)} for the other record headers
H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP/NATS header-name token
_SUBJECT_TOKEN = re.compile(r"^[^\s*>.]+$")
_STREAM_NAME = re.compile(r"^[^\s*>./\\]+$")
_ERR_WRONG_LAST_SEQ = 10071



class _Broken(Exception):
    """The current publishing run ("epoch") must stop and resync. ``reconnect``: drop the
    connection first (it is dead or stuck)."""

    def __init__(self, reason: str, reconnect: bool = False):
        super().__init__(reason)
        self.reconnect = reconnect


def mirror_group(stream: str) -> str:
    """The reserved consumer-group id holding a mirror's committed positions."""
    return f"__mirror__{stream}"


def subject_for(prefix: str, topic: str, partition: int) -> str:
    return f"{prefix}.{topic}.{partition}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _plain_text(value: bytes) -> Optional[str]:
    """``value`` as a header value if it is printable ASCII without edge spaces, else None."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text or text != text.strip() or not text.isprintable():
        return None
    return text


def encode_headers(topic: str, partition: int, rec: Record, store_id: str) -> Dict[str, str]:
    """The NATS headers the mirror writes for ``rec`` (without the sequence-chain header)."""
    h = {
        H_MSG_ID: f"{store_id}:{topic}:{partition}:{rec.offset}",
        H_PARTITION: str(partition),
        H_OFFSET: str(rec.offset),
        H_TIMESTAMP: str(rec.timestamp_ms),
    }
    if rec.key is not None:
        h[H_KEY] = _b64(rec.key)
    if rec.value is None:
        h[H_TOMBSTONE] = "1"
    if rec.headers:
        coded = {}
        for name, value in rec.headers.items():
            text = _plain_text(bytes(value)) if _TOKEN.match(name) else None
            hname = H_HEADER_PREFIX + name
            if text is not None and hname not in h:
                h[hname] = text
            else:
                coded[name] = _b64(bytes(value))
        if coded:
            h[H_HEADERS_B64] = json.dumps(coded, ensure_ascii=True, separators=(",", ":"))
    return h


def decode_message(headers: Optional[Mapping[str, str]], data: bytes) -> Record:
    """Rebuild the logstore :class:`Record` (with ``partition`` set) from a mirrored message.

    ``headers``/``data`` are a NATS message's ``headers`` and ``data`` (e.g. from a JetStream
    consumer or ``js.get_msg``). Raises ``ValueError`` if it is not a message of a mirror.
    """
    h = dict(headers or {})
    try:
        partition = int(h[H_PARTITION])
        offset = int(h[H_OFFSET])
        ts = int(h[H_TIMESTAMP])
    except (KeyError, ValueError):
        raise ValueError("not a logstore mirror message (Logstore-* headers missing)") from None
    key = base64.b64decode(h[H_KEY]) if H_KEY in h else None
    value = None if h.get(H_TOMBSTONE) == "1" else bytes(data or b"")
    rec_headers: Dict[str, bytes] = {}
    for name, text in h.items():
        if name.startswith(H_HEADER_PREFIX):
            rec_headers[name[len(H_HEADER_PREFIX):]] = text.encode("ascii")
    if H_HEADERS_B64 in h:
        for name, b in json.loads(h[H_HEADERS_B64]).items():
            rec_headers[name] = base64.b64decode(b)
    return Record(offset, ts, key, value, rec_headers, partition)


def _subject_matches(pattern: str, subject: str) -> bool:
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
    """The mirror's private loop: nats-py's internal tasks of a dead connection (flusher, reader)
    end with connection errors nobody awaits; the mirror already handled the disconnect."""
    log.debug("logstore mirror: asyncio: %s", context.get("message"),
              exc_info=context.get("exception"))


class _Entry:
    __slots__ = ("partition", "offset", "seq", "sent", "state", "error")

    PENDING, OK, FAILED = 0, 1, 2

    def __init__(self, partition: int, offset: int, seq: int, sent: float):
        self.partition = partition
        self.offset = offset
        self.seq = seq          # the stream sequence this message must get
        self.sent = sent
        self.state = _Entry.PENDING
        self.error: Optional[str] = None


class JetStreamMirror:
    """Tail every partition of ``topic`` in ``store`` into the JetStream stream ``stream``.

    Parameters (durations in seconds):

    - ``servers``: NATS URLs (a list, or one string with commas), e.g. the cluster's nodes.
    - ``stream``: JetStream stream name; created if missing with subjects
      ``<subject_prefix>.<topic>.>``, ``replicas`` copies (default: 3 if the cluster has at least
      3 nodes, else 1), file storage and ``duplicate_window = dedup_window_s``.
    - ``group``: consumer group holding the committed positions (default ``__mirror__<stream>``).
    - ``max_in_flight``: publishes awaiting their ack at once.
    - ``ack_timeout_s``: a publish not acked by then counts as lost (reconnect and resync).
    - ``backoff_initial_s`` / ``max_backoff_s``: reconnect backoff (doubling, with jitter).
    - ``commit_interval_s``: commit positions at most this often while busy (always when idle or
      stopping).
    - ``nats_options``: extra keyword arguments for ``nats.connect`` (credentials, TLS...).

    The store must be open for writing (positions are committed). Use one mirror per stream.
    """

    def __init__(
        self,
        store: Any,
        topic: str,
        servers: Union[str, Sequence[str]] = ("nats://127.0.0.1:4222",),
        stream: Optional[str] = None,
        subject_prefix: str = "logstore",
        replicas: Optional[int] = None,
        group: Optional[str] = None,
        max_in_flight: int = 1000,
        dedup_window_s: float = 120.0,
        *,
        ack_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        max_backoff_s: float = 5.0,
        commit_interval_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        api_timeout_s: float = 5.0,
        create_stream: bool = True,
        nats_options: Optional[Dict[str, Any]] = None,
    ):
        if getattr(store, "readonly", False):
            raise ConfigError("the mirror commits its positions: open the store for writing "
                              "(readonly=False)")
        self.store = store
        self.topic = store.get_topic(topic)
        self.topic_name = self.topic.name
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.servers = list(servers)
        if not self.servers or not all(isinstance(s, str) for s in self.servers):
            raise ConfigError(f"servers must be one or more NATS URLs (got {servers!r})")
        if stream is None:
            stream = f"logstore-{self.topic_name}".replace(".", "_")
        if not isinstance(stream, str) or not _STREAM_NAME.match(stream):
            raise ConfigError(f"invalid stream name {stream!r}: no spaces, '.', '*', '>', '/'")
        self.stream = stream
        if not isinstance(subject_prefix, str) or not subject_prefix or not all(
                _SUBJECT_TOKEN.match(t) for t in subject_prefix.split(".")):
            raise ConfigError(f"invalid subject_prefix {subject_prefix!r}: dot-separated tokens "
                              f"without spaces, '*' or '>'")
        self.subject_prefix = subject_prefix
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                     or not 1 <= replicas <= 5):
            raise ConfigError(f"replicas must be an int in [1, 5] or None (got {replicas!r})")
        self.replicas = replicas
        self.group = group if group is not None else mirror_group(stream)
        if not isinstance(self.group, str) or not self.group or "\0" in self.group:
            raise ConfigError(f"invalid group {self.group!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or \
                max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be an int >= 1 (got {max_in_flight!r})")
        self.max_in_flight = max_in_flight
        for name, v in (("dedup_window_s", dedup_window_s), ("ack_timeout_s", ack_timeout_s),
                        ("backoff_initial_s", backoff_initial_s),
                        ("max_backoff_s", max_backoff_s),
                        ("commit_interval_s", commit_interval_s),
                        ("connect_timeout_s", connect_timeout_s),
                        ("api_timeout_s", api_timeout_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{name} must be a number > 0 (got {v!r})")
        self.dedup_window_s = float(dedup_window_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.max_backoff_s = max(float(max_backoff_s), self.backoff_initial_s)
        self.commit_interval_s = float(commit_interval_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.api_timeout_s = float(api_timeout_s)
        self.create_stream = bool(create_stream)
        self.nats_options = dict(nats_options or {})
        self._check_dedup_window(self.dedup_window_s, "dedup_window_s")

        n = self.topic.partition_count
        self._subjects = [subject_for(subject_prefix, self.topic_name, p) for p in range(n)]
        self._msgid_prefix = f"{store.id}:{self.topic_name}:"
        # Positions: next offset to publish / acked contiguously / committed.
        self._send_next: List[int] = [0] * n
        self._acked_next: List[int] = [0] * n
        self._committed: List[Optional[int]] = [
            store.offsets.get(self.group, self.topic_name, p) for p in range(n)]
        self._last_commit = 0.0
        self._rr = 0
        self._batch: List[Tuple[int, Record]] = []
        # Connection and run state (owned by the loop thread).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._nc: Any = None
        self._js: Any = None
        self._inbox = ""
        self._synced = False
        self._chain: Deque[_Entry] = collections.deque()
        self._by_token: Dict[int, _Entry] = {}
        self._token = 0
        self._next_seq = 0
        self._wake: Optional[asyncio.Event] = None
        self._conn_broken: Optional[str] = None
        self._executor = None
        # Shared with other threads.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._active = False
        self._connected = False
        self._last_error: Optional[str] = None
        self._last_error_at: Optional[float] = None
        self._fatal: Optional[BaseException] = None
        self._stats = {"published": 0, "acked": 0, "connects": 0, "resyncs": 0, "errors": 0}
        self._stream_replicas: Optional[int] = None

    # ------------------------------------------------------------------ configuration checks
    @property
    def retry_horizon_s(self) -> float:
        """Longest time between two publishes of one record while the mirror runs: an ack
        timeout, the wait for the rest of the window, and one backoff."""
        return 2 * self.ack_timeout_s + self.max_backoff_s

    def _check_dedup_window(self, window_s: float, what: str) -> None:
        if window_s <= self.retry_horizon_s:
            raise ConfigError(
                f"{what} ({window_s:g} s) must be longer than the mirror's retry horizon "
                f"({self.retry_horizon_s:g} s = 2 * ack_timeout_s + max_backoff_s): a retried "
                f"publish outside the window would be stored twice. Raise the window or lower "
                f"ack_timeout_s / max_backoff_s.")

    # ------------------------------------------------------------------ public API
    def status(self) -> Dict[str, Any]:
        """Per-partition ``end_offset``, ``committed``, ``acked`` and ``lag`` (end - committed),
        total ``lag``, ``connected``, ``last_error`` (+ ``last_error_at``, epoch seconds),
        ``running`` and counters."""
        parts = {}
        total = 0
        for p, plog in enumerate(self.topic.partitions):
            try:
                end = plog.end_offset
                start = plog.start_offset
            except LogstoreError:
                end = start = 0
            committed = self._committed[p]
            lag = max(0, end - (committed if committed is not None else start))
            total += lag
            parts[p] = {"end_offset": end, "committed": committed,
                        "acked": self._acked_next[p] if self._synced else committed,
                        "lag": lag}
        with self._lock:
            return {
                "topic": self.topic_name,
                "stream": self.stream,
                "group": self.group,
                "subjects": f"{self.subject_prefix}.{self.topic_name}.>",
                "connected": self._connected,
                "running": self._active,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
                "fatal": None if self._fatal is None else str(self._fatal),
                "lag": total,
                "partitions": parts,
                "in_flight": len(self._chain),
                "stream_replicas": self._stream_replicas,
                **self._stats,
            }

    def run(self, until_caught_up: bool = False) -> None:
        """Mirror in this thread, retrying for ever, until :meth:`stop` (from another thread or
        a signal handler) or, with ``until_caught_up``, until every record that exists when the
        mirror catches up is acked and committed. Raises :class:`ConfigError` /
        :class:`MirrorError` for what retrying cannot fix."""
        self._stop.clear()
        self._run_loop(self._main(until_caught_up=until_caught_up, once=False))

    def run_once(self) -> int:
        """Publish every record present now, wait for the acks, commit; one attempt (an error
        raises :class:`MirrorError`, positions stay at what was acked). Returns the number of
        records acked. The connection is kept for the next call (``close()`` ends it)."""
        return self._run_loop(self._main(until_caught_up=True, once=True))

    def start(self) -> "JetStreamMirror":
        """Run the mirror in a background thread (with its own asyncio loop). Returns self."""
        with self._lock:
            if self._active or (self._thread is not None and self._thread.is_alive()):
                raise RuntimeError("this mirror is already running")
            self._stop.clear()
            self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                            name=f"logstore-mirror-{self.stream}")
            self._thread.start()
        return self

    def _thread_main(self) -> None:
        try:
            self._run_loop(self._main(until_caught_up=False, once=False))
        except BaseException as e:  # recorded for status(); the thread just ends
            with self._lock:
                self._fatal = e
            self._set_error(f"mirror stopped: {e}")
            log.error("logstore mirror %s stopped: %s", self.stream, e)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop running (after waiting for the acks in flight, up to ``ack_timeout_s``, and a
        final commit). Safe from any thread and from a signal handler."""
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout if timeout is not None else self.ack_timeout_s + 10)

    def close(self) -> None:
        """Stop, close the NATS connection and the private event loop. The store stays open."""
        self.stop()
        loop = self._loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            try:
                loop.run_until_complete(self._disconnect())
                # Like asyncio.run: end the client's leftover tasks before closing the loop.
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        self._loop = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __enter__(self) -> "JetStreamMirror":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<logstore.JetStreamMirror {self.topic_name!r} -> {self.stream!r} "
                f"servers={self.servers}>")

    # ------------------------------------------------------------------ loop plumbing
    def _run_loop(self, coro: Any) -> Any:
        with self._lock:
            if self._active:
                coro.close()
                raise RuntimeError("this mirror is already running")
            self._active = True
            self._fatal = None
        try:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                self._loop.set_exception_handler(_quiet_exception_handler)
            return self._loop.run_until_complete(coro)
        finally:
            with self._lock:
                self._active = False

    def _set_error(self, text: Optional[str]) -> None:
        with self._lock:
            self._last_error = text
            self._last_error_at = time.time() if text else None
            if text:
                self._stats["errors"] += 1

    async def _main(self, until_caught_up: bool, once: bool) -> int:
        self._wake = asyncio.Event()
        if self._nc is not None:
            # A connection kept from an earlier run_once: check it (it may have been closed as
            # stale while the loop was idle) and re-read the stream's position.
            try:
                await self._nc.flush(timeout=self.api_timeout_s)
            except Exception:
                self._conn_broken = "the connection was lost while idle"
            self._synced = False
        acked_before = self._stats["acked"]
        backoff = self.backoff_initial_s
        try:
            while True:
                if self._stop.is_set():
                    return self._stats["acked"] - acked_before
                progress_mark = self._stats["acked"]
                try:
                    if self._nc is None or self._conn_broken is not None:
                        await self._disconnect()
                        await self._connect()
                    if not self._synced:
                        await self._resync()
                    done = await self._pump(until_caught_up)
                    if done:
                        self._maybe_commit(force=True)
                        return self._stats["acked"] - acked_before
                except (ConfigError, MirrorError):
                    raise
                except _Broken as e:
                    await self._settle()
                    self._maybe_commit(force=True)
                    self._synced = False
                    if e.reconnect:
                        await self._disconnect()
                    self._set_error(str(e))
                    log.warning("logstore mirror %s: %s", self.stream, e)
                    if once:
                        raise MirrorError(str(e)) from None
                except (asyncio.TimeoutError, OSError, _nats_errors.Error) as e:
                    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    await self._settle()
                    self._maybe_commit(force=True)
                    self._synced = False
                    await self._disconnect()
                    self._set_error(text)
                    log.warning("logstore mirror %s: %s", self.stream, text)
                    if once:
                        raise MirrorError(text) from e
                if self._stats["acked"] > progress_mark:
                    backoff = self.backoff_initial_s
                await self._sleep(_jitter(backoff))
                backoff = min(self.max_backoff_s, backoff * 2)
        finally:
            if not once:
                await self._settle()
                self._maybe_commit(force=True)
                await self._disconnect()

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake
        assert wake is not None
        wake.clear()
        if self._stop.is_set():
            return
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ connection
    async def _connect(self) -> None:
        async def on_disconnect() -> None:
            self._conn_broken = "disconnected from the NATS server"
            with self._lock:
                self._connected = False
            if self._wake is not None:
                self._wake.set()

        async def on_error(e: Exception) -> None:
            log.debug("logstore mirror %s: nats error: %s", self.stream, e)

        opts: Dict[str, Any] = dict(
            servers=self.servers,
            allow_reconnect=False,
            # Initial connect: try each server (twice, at once); our own loop backs off.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=self.connect_timeout_s,
            name=f"logstore-mirror {self.topic_name}->{self.stream}",
            disconnected_cb=on_disconnect,
            closed_cb=on_disconnect,
            error_cb=on_error,
        )
        opts.update(self.nats_options)
        self._conn_broken = None
        nc = await nats.connect(**opts)
        self._nc = nc
        self._js = nc.jetstream(timeout=self.api_timeout_s)
        self._inbox = nc.new_inbox() + "."
        await nc.subscribe(self._inbox + "*", cb=self._on_reply,
                           pending_msgs_limit=max(65536, 4 * self.max_in_flight))
        with self._lock:
            self._connected = True
            self._stats["connects"] += 1
        await self._ensure_stream()

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        with self._lock:
            self._connected = False
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:  # already closed or dead: nothing to do
                pass

    def _cluster_size(self) -> int:
        info = getattr(self._nc, "_server_info", None) or {}
        if not info.get("cluster"):
            return 1
        return max(1, len(set(info.get("connect_urls") or [])))

    async def _ensure_stream(self) -> None:
        js = self._js
        filt = f"{self.subject_prefix}.{self.topic_name}.>"
        try:
            info = await js.stream_info(self.stream)
        except _js_errors.NotFoundError:
            if not self.create_stream:
                raise ConfigError(f"JetStream stream {self.stream!r} does not exist "
                                  f"(create_stream=False)") from None
            info = await self._create_stream(filt)
        cfg = info.config
        subjects = list(cfg.subjects or [])
        if not any(_subject_matches(s, self._subjects[0]) for s in subjects):
            raise ConfigError(f"JetStream stream {self.stream!r} has subjects {subjects}, which "
                              f"do not include {filt!r}")
        window = float(cfg.duplicate_window or 0)
        self._check_dedup_window(window, f"the duplicate_window of stream {self.stream!r}")
        if cfg.sealed or cfg.no_ack:
            raise ConfigError(f"JetStream stream {self.stream!r} is sealed or has no_ack set")
        if cfg.mirror is not None:
            raise ConfigError(f"JetStream stream {self.stream!r} is itself a NATS mirror stream")
        with self._lock:
            self._stream_replicas = cfg.num_replicas

    async def _create_stream(self, filt: str) -> Any:
        from nats.js.api import StreamConfig, StorageType

        replicas = self.replicas
        if replicas is None:
            replicas = 3 if self._cluster_size() >= 3 else 1
        while True:
            config = StreamConfig(name=self.stream, subjects=[filt], num_replicas=replicas,
                                  storage=StorageType.FILE,
                                  duplicate_window=self.dedup_window_s,
                                  description=f"logstore mirror of topic {self.topic_name}")
            try:
                info = await self._js.add_stream(config)
                log.info("logstore mirror: created stream %s (%s, R%d)", self.stream, filt,
                         replicas)
                return info
            except _js_errors.BadRequestError as e:
                # An existing stream created concurrently, or replicas the server cannot host.
                if getattr(e, "err_code", None) == 10058:  # stream name already in use
                    return await self._js.stream_info(self.stream)
                if self.replicas is None and replicas > 1 and "replica" in str(e).lower():
                    replicas = 1
                    continue
                raise ConfigError(f"cannot create JetStream stream {self.stream!r}: {e}") from None
            except _js_errors.ServerError as e:
                if self.replicas is None and replicas > 1 and "resources" in str(e).lower():
                    replicas = 1
                    continue
                raise

    # ------------------------------------------------------------------ resync
    async def _last_offsets(self) -> List[Optional[int]]:
        js = self._js

        async def one(p: int) -> Optional[int]:
            try:
                msg = await js.get_last_msg(self.stream, self._subjects[p])
            except _js_errors.NotFoundError:
                return None
            headers = msg.headers or {}
            mid = headers.get(H_MSG_ID, "")
            if not mid.startswith(self._msgid_prefix):
                raise ConfigError(
                    f"subject {self._subjects[p]!r} of stream {self.stream!r} holds messages that "
                    f"are not from this store (last Nats-Msg-Id {mid!r}, this store's id is "
                    f"{self.store.id}): use another stream or subject_prefix")
            try:
                tail = mid[len(self._msgid_prefix):].split(":")
                if int(tail[0]) != p:
                    raise ValueError
                return int(tail[1])
            except (ValueError, IndexError):
                raise MirrorError(f"unexpected Nats-Msg-Id {mid!r} on {self._subjects[p]!r}") \
                    from None

        out: List[Optional[int]] = []
        parts = list(range(self.topic.partition_count))
        for i in range(0, len(parts), 64):
            out.extend(await asyncio.gather(*(one(p) for p in parts[i:i + 64])))
        return out

    async def _resync(self) -> None:
        """Read where the stream is (its last sequence and, per partition, the last mirrored
        offset) and start a new chain from there."""
        js = self._js
        for _attempt in range(5):
            before = (await js.stream_info(self.stream)).state.last_seq
            lasts = await self._last_offsets()
            after = (await js.stream_info(self.stream)).state.last_seq
            if before == after:
                break
        else:
            raise _Broken("the stream kept changing during resync: is something else "
                          "publishing into it?")
        commits = {}
        notes = []
        for p, plog in enumerate(self.topic.partitions):
            committed = self._committed[p]
            start, end = plog.start_offset, plog.end_offset
            pos = committed if committed is not None else start
            last = lasts[p]
            if last is not None and last + 1 > pos:
                pos = last + 1  # acked by the stream but not committed here (or no commit yet)
            elif last is not None and committed is not None and last + 1 < committed:
                # The stream acknowledged offsets last+1..pos-1 and no longer holds them (an R1
                # stream whose server was killed before writing them, a failover that lost
                # acknowledged writes). The local log still has them: publish them again
                # rather than leave a hole (stream limits drop the oldest, never the last).
                notes.append(f"partition {p}: the stream lost offsets {last + 1}..{pos - 1} "
                             f"after acknowledging them; publishing them again")
                pos = last + 1
            if pos < start:
                notes.append(f"partition {p}: offsets {pos}..{start - 1} were removed from the "
                             f"local log before they were mirrored")
                pos = start
            if pos > end:
                notes.append(f"partition {p}: the stream holds offsets up to {pos - 1} but the "
                             f"local log ends at {end} (local records lost?); waiting for new "
                             f"records past {pos - 1}")
            self._send_next[p] = self._acked_next[p] = pos
            if pos != committed and pos <= end:
                commits[p] = pos
        if commits:
            self._commit(commits)
        self._next_seq = after + 1
        self._chain.clear()
        self._by_token.clear()
        self._synced = True
        with self._lock:
            self._stats["resyncs"] += 1
        if notes:
            self._set_error("; ".join(notes))
            for n in notes:
                log.warning("logstore mirror %s: %s", self.stream, n)

    # ------------------------------------------------------------------ publishing
    async def _on_reply(self, msg: Any) -> None:
        try:
            token = int(msg.subject[len(self._inbox):])
        except ValueError:
            return
        e = self._by_token.pop(token, None)
        if e is None:
            return
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status is not None and not msg.data:
            e.state, e.error = _Entry.FAILED, (
                "no JetStream responder for the stream's subjects (stream leader unavailable?)"
                if status == "503" else f"status {status} {hdrs.get('Description', '')}".strip())
        else:
            try:
                resp = json.loads(msg.data)
            except ValueError:
                resp = {"error": {"description": f"unreadable ack {msg.data[:100]!r}"}}
            err = resp.get("error")
            if err:
                e.state = _Entry.FAILED
                e.error = (f"JetStream refused offset {e.offset} of partition {e.partition}: "
                           f"{err.get('description')} (err_code {err.get('err_code')})")
                if err.get("err_code") == _ERR_WRONG_LAST_SEQ:
                    e.error = ("a message before offset %d of partition %d was lost in transit "
                               "(JetStream: %s); resyncing" % (e.offset, e.partition,
                                                               err.get("description")))
            elif resp.get("seq") != e.seq:
                e.state = _Entry.FAILED
                e.error = (f"offset {e.offset} of partition {e.partition} was stored at stream "
                           f"sequence {resp.get('seq')}, expected {e.seq}: something else "
                           f"published into stream {self.stream!r}; resyncing")
            else:
                e.state = _Entry.OK
        if self._wake is not None:
            self._wake.set()

    async def _publish(self, p: int, rec: Record) -> None:
        nc = self._nc
        token = self._token = self._token + 1
        seq = self._next_seq
        self._next_seq += 1
        headers = encode_headers(self.topic_name, p, rec, self.store.id)
        headers[H_EXPECTED_LAST_SEQ] = str(seq - 1)
        entry = _Entry(p, rec.offset, seq, time.monotonic())
        self._by_token[token] = entry
        self._chain.append(entry)
        try:
            await nc.publish(self._subjects[p], rec.value or b"", reply=self._inbox + str(token),
                             headers=headers)
        except _nats_errors.MaxPayloadError:
            raise MirrorError(
                f"offset {rec.offset} of partition {p} ({len(rec.value or b'')} bytes plus "
                f"headers) is larger than the NATS server's max_payload ({nc.max_payload} "
                f"bytes): raise max_payload on the servers") from None
        with self._lock:
            self._stats["published"] += 1

    def _fill(self) -> int:
        """Records to publish now: [(partition, Record)], at most the free window."""
        room = self.max_in_flight - len(self._chain)
        if room <= 0:
            return 0
        parts = self.topic.partitions
        n = len(parts)
        chunk = max(1, min(500, self.max_in_flight // n if n else 1))
        self._batch = []
        progressed = True
        while room > 0 and progressed:
            progressed = False
            for k in range(n):
                p = (self._rr + k) % n
                if room <= 0:
                    break
                plog = parts[p]
                pos = self._send_next[p]
                if pos < plog.start_offset:
                    raise _Broken(f"partition {p}: records from {pos} were removed from the "
                                  f"local log before they were mirrored")
                if pos >= plog.end_offset:
                    continue
                recs = plog.read(pos, max_records=min(room, chunk))
                if not recs:
                    continue
                self._batch.extend((p, r) for r in recs)
                self._send_next[p] = recs[-1].offset + 1
                room -= len(recs)
                progressed = True
            self._rr = (self._rr + 1) % max(1, n)
        return len(self._batch)

    def _drain(self) -> None:
        """Advance acked positions over the acked head of the chain; raise _Broken on a failed
        or timed-out head."""
        chain = self._chain
        acked = 0
        while chain and chain[0].state == _Entry.OK:
            e = chain.popleft()
            self._acked_next[e.partition] = e.offset + 1
            acked += 1
        if acked:
            with self._lock:
                self._stats["acked"] += acked
        if chain:
            head = chain[0]
            if head.state == _Entry.FAILED:
                raise _Broken(head.error or "publish failed")
            if time.monotonic() - head.sent > self.ack_timeout_s:
                raise _Broken(f"no ack from JetStream within {self.ack_timeout_s:g} s for "
                              f"offset {head.offset} of partition {head.partition}",
                              reconnect=True)

    def _caught_up(self) -> bool:
        if self._chain:
            return False
        return all(self._acked_next[p] >= plog.end_offset
                   for p, plog in enumerate(self.topic.partitions))

    async def _pump(self, until_caught_up: bool) -> bool:
        """Publish and collect acks until caught up (returns True), stopped (False) or broken."""
        while True:
            if self._conn_broken is not None:
                raise _Broken(self._conn_broken, reconnect=True)
            self._drain()
            self._maybe_commit()
            if self._stop.is_set():
                return False
            if self._fill():
                batch, self._batch = self._batch, []
                for i, (p, rec) in enumerate(batch):
                    await self._publish(p, rec)
                    if i % 128 == 127:
                        await asyncio.sleep(0)  # let the flusher start sending
                continue
            if self._caught_up():
                self._maybe_commit(force=True)
                if until_caught_up:
                    return True
                await self._wait_for_data()
                continue
            # Waiting for acks.
            head = self._chain[0] if self._chain else None
            timeout = 0.2 if head is None else max(
                0.001, min(0.2, head.sent + self.ack_timeout_s - time.monotonic() + 0.001))
            await self._sleep(timeout)

    async def _wait_for_data(self) -> None:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(1, thread_name_prefix="logstore-mirror-wait")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.wait_for_data, 0.2)

    async def _settle(self) -> None:
        """After a break: wait until every publish in flight was answered or timed out, so no
        message of the old chain is still on its way when the new one starts."""
        deadline = time.monotonic() + self.ack_timeout_s
        while self._chain and self._nc is not None and self._conn_broken is None:
            pending = [e for e in self._chain if e.state == _Entry.PENDING]
            if not pending or time.monotonic() >= deadline:
                break
            await self._sleep(min(0.05, max(0.001, deadline - time.monotonic())))
        # Whatever was acked at the head still counts.
        chain = self._chain
        while chain and chain[0].state == _Entry.OK:
            e = chain.popleft()
            self._acked_next[e.partition] = e.offset + 1
            with self._lock:
                self._stats["acked"] += 1
        chain.clear()
        self._by_token.clear()

    # ------------------------------------------------------------------ commits
    def _commit(self, offsets: Dict[int, int]) -> None:
        self.store.offsets.commit(self.group, self.topic_name, offsets)
        for p, o in offsets.items():
            self._committed[p] = o

    def _maybe_commit(self, force: bool = False) -> None:
        if not self._synced and not force:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval_s:
            return
        todo = {p: a for p, a in enumerate(self._acked_next)
                if self._synced and a != self._committed[p]
                and a <= self.topic.partitions[p].end_offset}
        if todo:
            try:
                self._commit(todo)
            except LogstoreError as e:  # store closed under us: keep the acked state
                self._set_error(f"cannot commit mirror positions: {e}")
                raise MirrorError(f"cannot commit mirror positions: {e}") from e
        self._last_commit = now


# ---------------------------------------------------------------------- command line helper
def run_mirror_cli(
    store_path: str,
    topic: str,
    servers: Union[str, Sequence[str]],
    stream: str,
    *,
    subject_prefix: str = "logstore",
    replicas: Optional[int] = None,
    until_caught_up: bool = False,
    max_in_flight: int = 1000,
    dedup_window_s: float = 120.0,
    ack_timeout_s: float = 5.0,
    max_backoff_s: float = 5.0,
    status_interval_s: float = 10.0,
    fsync: Optional[str] = None,
    echo: Optional[Callable[[str], None]] = None,
) -> int:
    """What ``logstore mirror STORE TOPIC --servers ... --stream NAME`` runs.

    Opens the store for writing, mirrors until SIGINT/SIGTERM (or, with ``until_caught_up``,
    until everything present is acked), printing a status line every ``status_interval_s``.
    Returns the exit code: 0 done/stopped, 2 configuration error (no store, no topic, bad stream
    settings), 3 the store is locked by another writer, 4 any other error.
    """
    import os

    from ..errors import LogLockedError, NotALogError, UnknownTopicError
    from ..format.names import STORE_META
    from ..views.store import Store

    def say(text: str) -> None:
        (echo or (lambda s: print(s, file=sys.stderr, flush=True)))(text)

    def error(text: str) -> None:
        say(f"logstore: error: {text}")

    if not os.path.exists(os.path.join(store_path, STORE_META)):
        error(f"{store_path} is not a logstore store (no {STORE_META})")
        return 2
    opts = {} if fsync is None else {"fsync": fsync}
    try:
        store = Store.open(store_path, **opts)
    except LogLockedError as e:
        error(f"{e}")
        return 3
    except (NotALogError, ConfigError) as e:
        error(f"{e}")
        return 2
    try:
        try:
            mirror = JetStreamMirror(store, topic, servers=servers, stream=stream,
                                     subject_prefix=subject_prefix, replicas=replicas,
                                     max_in_flight=max_in_flight, dedup_window_s=dedup_window_s,
                                     ack_timeout_s=ack_timeout_s, max_backoff_s=max_backoff_s)
        except (ConfigError, UnknownTopicError) as e:
            error(f"{e}")
            return 2
        def on_signal(_signum: int, _frame: Any) -> None:
            mirror.stop()

        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, on_signal)

        def report(final: bool = False) -> str:
            st = mirror.status()
            state = "stopped" if final else "connected" if st["connected"] else "NOT connected"
            line = f"mirror {topic} -> {stream}: {state}, lag {st['lag']}, acked {st['acked']}"
            if st["last_error"]:
                age = time.time() - (st["last_error_at"] or time.time())
                line += f", last error {age:.0f} s ago: {st['last_error']}"
            return line

        ticker_stop = threading.Event()

        def ticker() -> None:
            while not ticker_stop.wait(status_interval_s):
                say(report())

        tick = threading.Thread(target=ticker, daemon=True)
        tick.start()
        try:
            say(f"mirroring topic {topic!r} of {store.root} to JetStream stream {stream!r} "
                f"(subjects {subject_prefix}.{topic}.>) via {', '.join(mirror.servers)}")
            mirror.run(until_caught_up=until_caught_up)
        except ConfigError as e:
            error(f"{e}")
            return 2
        except MirrorError as e:
            error(f"{e}")
            return 4
        finally:
            ticker_stop.set()
            for s, h in old.items():
                signal.signal(s, h)
            mirror.close()
        say(report(final=True))
        return 0
    finally:
        store.close()
