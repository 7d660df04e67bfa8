"""Mirror a topic into a NATS JetStream stream, exactly once and in per-partition order.

    from logstore.mirror import JetStreamMirror
    mirror = JetStreamMirror(store, "orders", servers=["nats://127.0.0.1:4222"], stream="ORDERS")
    mirror.start()            # background thread with its own asyncio loop
    ...
    mirror.status()           # per-partition lag, connected flag, last error
    mirror.stop()

Needs the optional dependency nats-py (``pip install 'logstore[nats]'``). This module is the
engine (connection, resync, the publish pipeline, commits). The options live in
:class:`~logstore.mirror.config.MirrorConfig`; the message layout (headers, ids, subjects) in
:mod:`logstore.mirror.messages`; checking/creating the stream and reading where it ends in
:mod:`logstore.mirror.stream`; the ``logstore mirror`` command in :mod:`logstore.mirror.runner`.

How it works
------------
The mirror is an ordinary consumer of the topic: its position per partition lives in the store's
offset store under the reserved group ``__mirror__<stream>``. Record ``offset`` of partition
``p`` becomes one JetStream message on subject ``<prefix>.<topic>.<p>`` whose payload is the
record value, with the key, timestamp, position and the record's headers carried in NATS headers
(see :func:`~logstore.mirror.messages.encode_headers` / :func:`~logstore.mirror.decode_message`)
and ``Nats-Msg-Id = <store id>:<topic>:<p>:<offset>``.

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

Threads: everything below "loop plumbing" runs on the mirror's private asyncio loop (one thread at
a time); ``status``/``stop`` may be called from any thread and read the shared fields under
``_lock``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import operator
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, LogstoreError, MirrorError
from ..record import Record
from .config import MirrorConfig
from .messages import H_EXPECTED_LAST_SEQ, ack_error, encode_headers, subject_filter, subject_for
from .nats_api import nats, nats_errors
from .stream import ensure_stream, stream_position

__all__ = ["JetStreamMirror"]

log = logging.getLogger("logstore.mirror")


class _Broken(Exception):
    """The current publishing run ("epoch") must stop and resync. ``reconnect``: drop the
    connection first (it is dead or stuck)."""

    def __init__(self, reason: str, reconnect: bool = False):
        super().__init__(reason)
        self.reconnect = reconnect


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
    """The mirror's private loop: nats-py's internal tasks of a dead connection (flusher, reader)
    end with connection errors nobody awaits; the mirror already handled the disconnect."""
    log.debug("logstore mirror: asyncio: %s", context.get("message"),
              exc_info=context.get("exception"))


class _Entry:
    """One publish in flight, in chain order."""

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

    Options are the fields of :class:`~logstore.mirror.config.MirrorConfig`, given as keyword
    arguments (``servers``, ``stream``, ``subject_prefix``, ``replicas``, ``group``,
    ``max_in_flight``, ``dedup_window_s``, ``ack_timeout_s``, ``backoff_initial_s``,
    ``max_backoff_s``, ``commit_interval_s``, ``connect_timeout_s``, ``api_timeout_s``,
    ``create_stream``, ``nats_options``) and/or as ``config=MirrorConfig(...)`` (keywords given
    as well override its fields). Each option is readable as an attribute of the mirror
    (``mirror.stream``, ``mirror.max_in_flight``...); ``mirror.config`` is the whole config, with
    ``stream`` and ``group`` filled in.

    The store must be open for writing (positions are committed). Use one mirror per stream.
    """

    def __init__(
        self,
        store: Any,
        topic: str,
        servers: Union[str, Sequence[str], None] = None,
        stream: Optional[str] = None,
        *,
        config: Optional[MirrorConfig] = None,
        **options: Any,
    ):
        if getattr(store, "readonly", False):
            raise ConfigError("the mirror commits its positions: open the store for writing "
                              "(readonly=False)")
        self.store = store
        self.topic = store.get_topic(topic)
        self.topic_name: str = self.topic.name
        given = {k: v for k, v in (("servers", servers), ("stream", stream)) if v is not None}
        self.config: MirrorConfig = MirrorConfig.from_options(
            config, **given, **options).for_topic(self.topic_name)
        self._init_state()

    def _init_state(self) -> None:
        n = self.topic.partition_count
        self._store_id: str = self.store.id
        self._subjects = [subject_for(self.subject_prefix, self.topic_name, p) for p in range(n)]
        # Positions: next offset to publish / acked contiguously / committed.
        self._send_next: List[int] = [0] * n
        self._acked_next: List[int] = [0] * n
        self._committed: List[Optional[int]] = [
            self.store.offsets.get(self.group, self.topic_name, p) for p in range(n)]
        self._last_commit = 0.0
        self._rr = 0
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
        self._executor: Optional[ThreadPoolExecutor] = None
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

    # Options read as attributes (mirror.stream, mirror.ack_timeout_s...), as before MirrorConfig.
    servers: Tuple[str, ...]
    stream: str
    subject_prefix: str
    replicas: Optional[int]
    group: str
    max_in_flight: int
    dedup_window_s: float
    ack_timeout_s: float
    backoff_initial_s: float
    max_backoff_s: float
    commit_interval_s: float
    connect_timeout_s: float
    api_timeout_s: float
    create_stream: bool
    nats_options: Dict[str, Any]

    @property
    def retry_horizon_s(self) -> float:
        """Longest time between two publishes of one record while the mirror runs: an ack
        timeout, the wait for the rest of the window, and one backoff."""
        return self.config.retry_horizon_s

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
                "subjects": subject_filter(self.subject_prefix, self.topic_name),
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
                f"servers={list(self.servers)}>")

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
        """Epochs until done: (re)connect, resync, pump; after a failed epoch, back off and
        retry (``once``: raise :class:`MirrorError` instead). Returns the records acked."""
        self._wake = asyncio.Event()
        if self._nc is not None:
            await self._check_kept_connection()
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
                    if await self._pump(until_caught_up):
                        self._maybe_commit(force=True)
                        return self._stats["acked"] - acked_before
                except (ConfigError, MirrorError):
                    raise
                except _Broken as e:
                    await self._end_epoch(str(e), reconnect=e.reconnect)
                    if once:
                        raise MirrorError(str(e)) from None
                except (asyncio.TimeoutError, OSError, nats_errors.Error) as e:
                    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    await self._end_epoch(text, reconnect=True)
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

    async def _check_kept_connection(self) -> None:
        """A connection kept from an earlier run_once: check it (it may have been closed as
        stale while the loop was idle) and re-read the stream's position."""
        try:
            await self._nc.flush(timeout=self.api_timeout_s)
        except Exception:  # any failure means the same: reconnect before publishing
            self._conn_broken = "the connection was lost while idle"
        self._synced = False

    async def _end_epoch(self, reason: str, reconnect: bool) -> None:
        """After a failed epoch: let the publishes in flight settle, commit what was acked,
        forget the stream position (resync before publishing again), drop the connection if
        asked, and report ``reason``."""
        await self._settle()
        self._maybe_commit(force=True)
        self._synced = False
        if reconnect:
            await self._disconnect()
        self._set_error(reason)
        log.warning("logstore mirror %s: %s", self.stream, reason)

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
            servers=list(self.servers),
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
        replicas = await ensure_stream(nc, self._js, self.config, self.topic_name)
        with self._lock:
            self._stream_replicas = replicas

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        with self._lock:
            self._connected = False
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:  # already closed or dead: nothing to do
                pass

    # ------------------------------------------------------------------ resync
    async def _resync(self) -> None:
        """Read where the stream is (its last sequence and, per partition, the last mirrored
        offset) and start a new chain from there."""
        position = await stream_position(self._js, self.stream, self._subjects, self._store_id,
                                         self.topic_name)
        if position is None:
            raise _Broken("the stream kept changing during resync: is something else "
                          "publishing into it?")
        after, lasts = position
        commits = {}
        notes: List[str] = []
        for p, plog in enumerate(self.topic.partitions):
            pos = self._resume_position(p, plog.start_offset, plog.end_offset, lasts[p], notes)
            self._send_next[p] = self._acked_next[p] = pos
            if pos != self._committed[p] and pos <= plog.end_offset:
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

    def _resume_position(self, p: int, start: int, end: int, last: Optional[int],
                         notes: List[str]) -> int:
        """Where partition ``p`` resumes, given the local log's ``start``/``end`` and the last
        offset the stream holds (``last``); appends what is worth reporting to ``notes``."""
        committed = self._committed[p]
        pos = committed if committed is not None else start
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
        return pos

    # ------------------------------------------------------------------ publishing
    async def _on_reply(self, msg: Any) -> None:
        try:
            token = int(msg.subject[len(self._inbox):])
        except ValueError:
            return
        e = self._by_token.pop(token, None)
        if e is None:
            return
        e.error = ack_error(msg.headers, msg.data, e.partition, e.offset, e.seq, self.stream)
        e.state = _Entry.OK if e.error is None else _Entry.FAILED
        if self._wake is not None:
            self._wake.set()

    async def _publish(self, p: int, rec: Record) -> None:
        nc = self._nc
        token = self._token = self._token + 1
        seq = self._next_seq
        self._next_seq += 1
        headers = encode_headers(self.topic_name, p, rec, self._store_id)
        headers[H_EXPECTED_LAST_SEQ] = str(seq - 1)
        entry = _Entry(p, rec.offset, seq, time.monotonic())
        self._by_token[token] = entry
        self._chain.append(entry)
        try:
            await nc.publish(self._subjects[p], rec.value or b"", reply=self._inbox + str(token),
                             headers=headers)
        except nats_errors.MaxPayloadError:
            raise MirrorError(
                f"offset {rec.offset} of partition {p} ({len(rec.value or b'')} bytes plus "
                f"headers) is larger than the NATS server's max_payload ({nc.max_payload} "
                f"bytes): raise max_payload on the servers") from None
        with self._lock:
            self._stats["published"] += 1

    def _fill(self) -> List[Tuple[int, Record]]:
        """Records to publish now, [(partition, Record)]: at most the free window, taken from
        the partitions in turn (a round robin that starts one further each call)."""
        room = self.max_in_flight - len(self._chain)
        if room <= 0:
            return []
        parts = self.topic.partitions
        n = len(parts)
        chunk = max(1, min(500, self.max_in_flight // n if n else 1))
        batch: List[Tuple[int, Record]] = []
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
                batch.extend((p, r) for r in recs)
                self._send_next[p] = recs[-1].offset + 1
                room -= len(recs)
                progressed = True
            self._rr = (self._rr + 1) % max(1, n)
        return batch

    def _pop_acked(self) -> None:
        """Advance the acked positions over the acked head of the chain."""
        chain = self._chain
        acked = 0
        while chain and chain[0].state == _Entry.OK:
            e = chain.popleft()
            self._acked_next[e.partition] = e.offset + 1
            acked += 1
        if acked:
            with self._lock:
                self._stats["acked"] += acked

    def _drain(self) -> None:
        """Advance acked positions over the acked head of the chain; raise _Broken on a failed
        or timed-out head."""
        self._pop_acked()
        if self._chain:
            head = self._chain[0]
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
            batch = self._fill()
            if batch:
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
        # store.wait_for_data blocks a thread: run it on a one-thread pool, created on first use
        # (a mirror that never catches up never starts the thread).
        if self._executor is None:
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
        self._pop_acked()  # whatever was acked at the head still counts
        self._chain.clear()
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


# Each option is readable on the mirror (mirror.stream, mirror.max_in_flight...) as it was
# before MirrorConfig: read-only properties that read self.config.
for _name in MirrorConfig.option_names():
    setattr(JetStreamMirror, _name, property(operator.attrgetter(f"config.{_name}"),
                                             doc=f"``config.{_name}`` (read-only)."))
del _name
