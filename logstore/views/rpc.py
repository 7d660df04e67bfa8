"""Request-reply over a store: requests on a work queue, replies in one inbox per requester.

    reply = store.request("rpc.resize", b'{"img": 1}', timeout=5)      # a Record
    store.respond("rpc.resize", lambda req: resize(req.value))        # a responder thread

A **request** is a message of the work queue named like its topic (``store.queue(topic)``: its
deliveries, visibility timeout, redeliveries and dead letters) with three headers:
``x-reply-to`` (the requester's inbox topic), ``x-correlation-id`` (a fresh uuid4 hex) and
``x-rpc-deadline-ms`` (when the requester stops waiting, wall clock ms). A **responder** gets
requests from the queue, calls the handler, publishes the reply into the inbox named by
``x-reply-to`` with the same ``x-correlation-id`` (an exception becomes an error reply with header
``x-rpc-error``, raised as :class:`~logstore.errors.RemoteError` by the requester), and acks the
request *after* the reply is stored: a responder that dies in between leaves the request to be
delivered again (at-least-once), and the second reply is discarded as late.

Each :class:`Requester` owns an **inbox**: topic ``rpc.inbox.<n>`` (1 partition), where ``n`` is
the lowest free inbox slot of the store, held with an ``flock`` on
``internal/rpc/inboxes/<n>/.lock`` for the requester's lifetime (released by the kernel when its
process dies, so a slot, and its topic, is reused by the next requester: inboxes do not pile
up). A requester reads only its own inbox, from the end it found when it took the slot, in one
dispatcher thread that hands each reply to the waiting caller by correlation id (a thread
blocked in :meth:`Requester.request`, or an asyncio future resolved with
``loop.call_soon_threadsafe``: no thread per waiting request). A reply whose request is no longer
waiting (it timed out, or a duplicate after a redelivery, or it was sent before this requester
took the slot) is discarded and counted (``late_replies_total``). Inboxes keep replies for 10
minutes (``retention_ms``), in 1 MiB segments.

Requests whose deadline has passed when a responder gets them are acked without calling the
handler (nobody waits for the answer) and counted (``expired_total``). A message without
``x-reply-to`` is a one-way request: the handler runs, nothing is replied.

Across processes: nothing here assumes that requester and responder share a process (inbox
slots are ``flock``-ed, the reply names its inbox, the requester only reads its inbox), so it
works between processes as soon as several processes may write one store (issue 19): until
then, the process that opened the store for writing runs both sides (threads).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ..errors import (
    LogClosedError, LogLockedError, OffsetOutOfRangeError, RemoteError, UnknownTopicError,
)
from ..format.names import INTERNAL_DIR
from ..record import Record
from ..storage.lockfile import DirectoryLock
from ..util import now_ms
from .names import validate_name

logger = logging.getLogger("logstore")

REPLY_TO = "x-reply-to"
CORRELATION_ID = "x-correlation-id"
DEADLINE = "x-rpc-deadline-ms"
ERROR = "x-rpc-error"
RPC_HEADERS = (REPLY_TO, CORRELATION_ID, DEADLINE, ERROR)
INBOX_PREFIX = "rpc.inbox."
INBOXES_DIR = os.path.join(INTERNAL_DIR, "rpc", "inboxes")
INBOX_SETTINGS = {"retention_ms": 600_000, "segment_bytes": 1 << 20}
_PENDING_SLICE_S = 0.005  # re-read the inbox this often while requests wait (other processes)


class _Pending:
    __slots__ = ("event", "loop", "future", "reply")

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.loop = loop
        self.future = None if loop is None else loop.create_future()
        self.event = threading.Event() if loop is None else None
        self.reply: Optional[Record] = None

    def deliver(self, rec: Optional[Record], error: Optional[BaseException] = None) -> None:
        self.reply = rec
        if self.loop is None:
            self.event.set()
            return
        fut = self.future

        def resolve() -> None:
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(rec)

        try:
            self.loop.call_soon_threadsafe(resolve)
        except RuntimeError:
            pass  # the loop is closed: nobody waits


def _result(rec: Record) -> Record:
    err = rec.headers.get(ERROR)
    if err is not None:
        raise RemoteError(err.decode("utf-8", "replace"), rec)
    return rec


class Requester:
    """Sends requests and waits for their replies in its own inbox. ``store.requester()`` is the
    store's default one (what ``store.request`` uses); make more with ``Requester(store)``.
    Thread-safe; closed with the store."""

    def __init__(self, store: Any):
        store.check_writable()
        self.store = store
        self._lock = threading.Condition(threading.Lock())
        self._pending: Dict[str, _Pending] = {}
        self._reading = threading.Lock()
        self._early: Set[int] = set()  # inbox offsets handed over before the reader read them
        self._closed = False
        self._slot = self._claim_slot()
        try:
            name = f"{INBOX_PREFIX}{self.slot}"
            new = name not in store.topics()
            self.topic = store.topic(name, 1, **(INBOX_SETTINGS if new else {}))
            self.inbox = name
            self._position = self.topic.partitions[0].end_offset
        except BaseException:
            self._slot.release()
            raise
        self.sent = self.replies = self.timeouts = self.late = self.remote_errors = 0
        self._thread: Optional[threading.Thread] = None
        self._unlisten = store.on(self.inbox, self._published)
        store.attach(self)

    def _claim_slot(self) -> DirectoryLock:
        base = os.path.join(self.store.root, INBOXES_DIR)
        n = 0
        while True:
            path = os.path.join(base, str(n))
            self.store.fs.makedirs(path)
            try:
                lock = DirectoryLock(path).acquire()
            except LogLockedError:
                n += 1
                continue
            self.slot = n
            return lock

    # ------------------------------------------------------------------ sending
    def _prepare(self, topic: str, timeout: float, headers: Optional[Dict[str, bytes]],
                 pending: _Pending) -> Tuple[str, Dict[str, bytes]]:
        """Check the arguments, make the request's headers and register ``pending`` under a
        fresh correlation id (before the request exists: no reply can beat it)."""
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        validate_name("queue", topic)
        h = dict(headers or {})
        for name in RPC_HEADERS:
            if name in h:
                raise ValueError(f"header {name!r} is set by request() itself")
        cid = uuid.uuid4().hex
        h[REPLY_TO] = self.inbox.encode()
        h[CORRELATION_ID] = cid.encode()
        h[DEADLINE] = str(now_ms() + int(timeout * 1000)).encode()
        with self._lock:
            self._check()
            self._pending[cid] = pending
            self._start_dispatcher()
            self._lock.notify_all()
        return cid, h

    def _put(self, topic: str, payload: Optional[bytes], headers: Dict[str, bytes],
             cid: str) -> None:
        try:
            self.store.queue(topic).put(payload, headers=headers)
        except BaseException:
            self._forget(cid)
            raise
        with self._lock:
            self.sent += 1

    def _forget(self, cid: str) -> None:
        with self._lock:
            self._pending.pop(cid, None)

    def _give_up(self, cid: str) -> bool:
        """The caller stops waiting: True if no reply came (counted as a timeout)."""
        with self._lock:
            if self._pending.pop(cid, None) is None:
                return False
            self.timeouts += 1
            return True

    def request(self, topic: str, payload: Optional[bytes], timeout: float = 5.0,
                headers: Optional[Dict[str, bytes]] = None) -> Record:
        """Send ``payload`` to the responders of ``topic`` and wait for the reply (a
        :class:`~logstore.Record` of the inbox, with ``x-correlation-id``). ``TimeoutError``
        after ``timeout`` seconds (a later reply is discarded and counted);
        :class:`~logstore.errors.RemoteError` if the handler raised."""
        pending = _Pending()
        cid, h = self._prepare(topic, timeout, headers, pending)
        self._put(topic, payload, h, cid)
        if not pending.event.wait(timeout) and self._give_up(cid):
            raise TimeoutError(f"no reply to request {cid} on {topic!r} within {timeout} s")
        pending.event.wait()  # (a reply that raced the timeout was delivered: take it)
        if pending.reply is None:
            raise LogClosedError(f"requester {self.inbox!r} was closed while waiting")
        return _result(pending.reply)

    async def request_async(self, topic: str, payload: Optional[bytes], timeout: float = 5.0,
                            headers: Optional[Dict[str, bytes]] = None) -> Record:
        """:meth:`request` for a coroutine: the request is stored in the loop's default executor
        and the reply awaited on a future (no thread waits for it). Cancelling it stops the
        wait (a reply that comes later is counted as late)."""
        loop = asyncio.get_running_loop()
        pending = _Pending(loop)
        cid, h = self._prepare(topic, timeout, headers, pending)
        try:
            await loop.run_in_executor(None, self._put, topic, payload, h, cid)
            rec = await asyncio.wait_for(asyncio.shield(pending.future), timeout)
        except asyncio.TimeoutError:
            if self._give_up(cid):
                raise TimeoutError(f"no reply to request {cid} on {topic!r} within "
                                   f"{timeout} s") from None
            rec = await pending.future
        except BaseException:
            self._forget(cid)
            raise
        return _result(rec)

    # ------------------------------------------------------------------ the inbox
    def _start_dispatcher(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch_loop, daemon=True,
                                            name=f"logstore-rpc-inbox:{self.inbox}")
            self._thread.start()

    def _dispatch_loop(self) -> None:
        """Reads the inbox for replies no publish of this process announced (another process's,
        once several may write a store): every slice while requests wait."""
        log = self.topic.partitions[0]
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()  # nothing awaited: nothing to read (late ones can wait)
                if self._closed:
                    return
            wait = _PENDING_SLICE_S
            try:
                self._read_inbox(log)
            except LogClosedError:
                return
            except Exception:  # said, and tried again a second later (waiting callers time out)
                logger.exception("request-reply inbox %s: reading failed", self.inbox)
                wait = 1.0
            with self._lock:
                if not self._closed:
                    self._lock.wait(wait)

    def _published(self, rec: Record) -> None:
        """(``store.on`` callback, in the replying thread of this process) Hand the reply over
        at once, without waiting for the dispatcher to read it."""
        with self._lock:
            if rec.offset < self._position or rec.offset in self._early:
                return  # the reader got there first
            self._early.add(rec.offset)
            pending = self._take(rec)
        if pending is not None:
            pending.deliver(rec)

    def _take(self, rec: Record) -> Optional[_Pending]:
        """(lock held) The waiting request ``rec`` answers (None: a late reply, counted)."""
        cid = rec.headers.get(CORRELATION_ID, b"").decode("ascii", "replace")
        pending = self._pending.pop(cid, None)
        if pending is None:
            self.late += 1
        else:
            self.replies += 1
            if ERROR in rec.headers:
                self.remote_errors += 1
        return pending

    def _read_inbox(self, log: Any) -> None:
        with self._reading:  # the dispatcher, or metrics() while no request waits
            self._read_locked(log)

    def _read_locked(self, log: Any) -> None:
        while self._position < log.end_offset:
            try:
                recs = log.read_records(self._position, 1000, None, 0)
            except OffsetOutOfRangeError:
                skipped = log.start_offset - self._position
                logger.warning("request-reply inbox %s: %d replies removed by retention "
                               "before they were read", self.inbox, skipped)
                with self._lock:
                    self._position = log.start_offset
                continue
            for rec in recs:
                with self._lock:
                    if rec.offset in self._early:
                        self._early.discard(rec.offset)  # handed over by _published
                        pending = None
                    else:
                        pending = self._take(rec)
                    self._position = rec.offset + 1
                if pending is not None:
                    pending.deliver(rec)

    # ------------------------------------------------------------------ lifecycle, figures
    def _check(self) -> None:
        if self._closed:
            raise LogClosedError(f"requester {self.inbox!r} is closed")

    def pending(self) -> int:
        """Requests waiting for their reply now."""
        with self._lock:
            return len(self._pending)

    def metrics(self) -> Tuple[str, str, Dict[str, Any]]:
        """(For ``store.metrics()``) ``("requesters", inbox, figures)``; process-local."""
        if not self._closed:
            try:
                self._read_inbox(self.topic.partitions[0])  # count late replies read by nobody
            except LogClosedError:
                pass
        with self._lock:
            return "requesters", self.inbox, {
                "requests_total": self.sent, "replies_total": self.replies,
                "timeouts_total": self.timeouts, "late_replies_total": self.late,
                "remote_errors_total": self.remote_errors, "pending": len(self._pending)}

    def close(self) -> None:
        """Stop the dispatcher, fail the waiting requests with LogClosedError, free the inbox
        slot (its topic stays, for the next requester). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._pending.values())
            self._pending.clear()
            self._lock.notify_all()
        self._unlisten()
        for pending in waiting:
            pending.deliver(None, LogClosedError(f"requester {self.inbox!r} was closed"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._slot.release()
        self.store.detach(self)

    def __repr__(self) -> str:
        return f"<logstore.Requester inbox={self.inbox!r}>"


class Request:
    """A request handed out by :meth:`Responder.get`: ``value`` and ``headers`` (without the
    ``x-reply-to``/``x-correlation-id``/``x-rpc-deadline-ms`` headers), ``correlation_id``,
    ``reply_to`` (None for a one-way request), ``deadline_ms``, ``message`` (the queue's)."""

    __slots__ = ("value", "key", "headers", "correlation_id", "reply_to", "deadline_ms",
                 "message")

    def __init__(self, msg: Any):
        h = dict(msg.headers)
        self.message = msg
        self.value = msg.value
        self.key = msg.key
        raw = h.pop(REPLY_TO, None)
        self.reply_to = None if raw is None else raw.decode("utf-8", "replace")
        self.correlation_id = h.pop(CORRELATION_ID, b"").decode("ascii", "replace")
        raw = h.pop(DEADLINE, None)
        try:
            self.deadline_ms: Optional[int] = None if raw is None else int(raw)
        except ValueError:
            self.deadline_ms = None
        self.headers = h

    @property
    def expired(self) -> bool:
        """True once the requester stopped waiting (its deadline passed)."""
        return self.deadline_ms is not None and now_ms() > self.deadline_ms

    def __repr__(self) -> str:
        return f"<logstore.Request {self.correlation_id} reply_to={self.reply_to!r}>"


class Responder:
    """Answers the requests of one topic (the work queue of that name). Explicit form:
    ``req = r.get(timeout)`` then ``r.reply(req, value)`` (or ``r.reply_error(req, exc)``);
    loop form: ``r.serve(handler)`` in this thread, or ``r.start(threads=N)`` (what
    ``store.respond`` does). Closed with the store."""

    def __init__(self, store: Any, topic: str, **queue_options: Any):
        self.store = store
        self.topic = topic
        self.queue = store.queue(topic, **queue_options)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self.handled = self.replied = self.errors = self.expired = 0
        self.undeliverable = 0
        store.attach(self)

    def get(self, timeout: Optional[float] = None) -> Optional[Request]:
        """The next request whose requester still waits (expired ones are acked and counted),
        or None after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self.queue.get(timeout=left)
            if msg is None:
                return None
            req = Request(msg)
            if not req.expired:
                return req
            self.queue.ack(msg)
            with self._lock:
                self.expired += 1

    def reply(self, req: Request, value: Optional[bytes] = None,
              headers: Optional[Dict[str, bytes]] = None) -> None:
        """Store the reply in the requester's inbox, then ack the request (at-least-once: a
        crash in between delivers the request again). A one-way request is only acked."""
        self._send(req, value, headers, None)

    def reply_error(self, req: Request, error: "BaseException | str") -> None:
        """Reply with an error (``x-rpc-error: <type>: <message>``), raised by the requester as
        RemoteError; then ack the request."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._send(req, None, None, text)

    def _send(self, req: Request, value: Optional[bytes], headers: Optional[Dict[str, bytes]],
              error: Optional[str]) -> None:
        if req.reply_to is not None:
            h = {k: v for k, v in (headers or {}).items() if k not in RPC_HEADERS}
            h[CORRELATION_ID] = req.correlation_id.encode()
            if error is not None:
                h[ERROR] = error.encode("utf-8", "replace")
            try:
                if not req.reply_to.startswith(INBOX_PREFIX):
                    raise UnknownTopicError(f"{req.reply_to!r} is not a reply inbox")
                self.store.get_topic(req.reply_to).publish(value, headers=h)
            except UnknownTopicError:
                # Nobody can ever read it: do not create the topic. Acked, counted, said.
                logger.warning("request %s on %r: reply-to %r is not an inbox of this store: "
                               "reply dropped", req.correlation_id, self.topic, req.reply_to)
                with self._lock:
                    self.undeliverable += 1
        self.queue.ack(req.message)
        with self._lock:
            self.handled += 1
            if req.reply_to is not None:
                self.replied += 1
            if error is not None:
                self.errors += 1

    def serve(self, handler: Callable[[Request], Optional[bytes]],
              stop: Optional[threading.Event] = None, poll_s: float = 0.5) -> None:
        """Answer requests with ``handler(request) -> bytes | None`` in this thread until
        ``stop`` (or :meth:`stop`) is set. An exception of the handler is replied as an error
        (and counted); a storage error stops the loop (the request is delivered again)."""
        stop = stop or self._stop
        while not stop.is_set() and not self._stop.is_set():
            try:
                req = self.get(timeout=poll_s)
            except LogClosedError:
                return
            if req is None:
                continue
            try:
                value = handler(req)
            except Exception as e:
                counters = getattr(self.queue, "counters", None)
                if counters is not None:
                    counters.handler_errors += 1
                self.reply_error(req, e)
                continue
            self.reply(req, value)

    def start(self, handler: Callable[[Request], Optional[bytes]], threads: int = 1
              ) -> "Responder":
        """Run :meth:`serve` in ``threads`` daemon threads; :meth:`stop` ends them. A thread
        stopped by an error (a storage error: its request is delivered again) logs it and is
        no longer counted in ``threads`` of :meth:`metrics`."""
        for i in range(threads):
            t = threading.Thread(target=self._serve_logged, args=(handler,), daemon=True,
                                 name=f"logstore-rpc-responder:{self.topic}:{i}")
            t.start()
            self._threads.append(t)
        return self

    def _serve_logged(self, handler: Callable[[Request], Optional[bytes]]) -> None:
        try:
            self.serve(handler)
        except Exception:
            logger.exception("responder of %r stopped", self.topic)

    def stop(self) -> None:
        """Stop the serving threads (each finishes the request it is answering)."""
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
        self._threads = []

    def close(self) -> None:
        self.stop()
        self.store.detach(self)

    def metrics(self) -> Tuple[str, str, Dict[str, Any]]:
        """(For ``store.metrics()``) ``("responders", topic, figures)``; process-local."""
        with self._lock:
            return "responders", self.topic, {
                "handled_total": self.handled, "replied_total": self.replied,
                "errors_total": self.errors, "expired_total": self.expired,
                "undeliverable_total": self.undeliverable,
                "threads": sum(1 for t in self._threads if t.is_alive())}

    def __repr__(self) -> str:
        return f"<logstore.Responder {self.topic!r}>"
