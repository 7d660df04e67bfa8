"""A circuit breaker for consumers: stop taking work while a dependency keeps failing.

    breaker = logstore.CircuitBreaker("payments", failures=5, window_s=60, cooldown_s=30,
                                      store=store)
    breaker.run(store.queue("payments"), handle)        # until breaker.stop()

States (Nygard's *Release It!*, as in Hystrix / resilience4j):

* **closed**: work flows. Every handler failure is recorded; ``failures`` of them within the last
  ``window_s`` seconds open the breaker.
* **open**: :meth:`CircuitBreaker.allow` says no: a worker stops *getting* messages (they stay in
  the queue for other consumers, or until the breaker closes). A message whose handler failed is
  not nacked: it stays in flight until its visibility timeout, then it is delivered again (its
  delivery counts toward ``max_deliveries`` like any other), so an open breaker never spins
  messages around. After ``cooldown_s`` it becomes
* **half-open**: exactly one caller gets ``allow() == True``: the **probe**. Its success closes
  the breaker (failures forgotten), its failure opens it again for another cool-down. A probe
  that found no message gives its turn back (:meth:`CircuitBreaker.cancel_probe`).

The breaker is process-local, in memory: a restart starts closed (what was left unacked is
delivered again by the queue, as after any crash). Its state and counters are in
``store.metrics()["breakers"][name]`` when it was given a ``store``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple, TypeVar

from ..errors import CircuitOpenError, ConfigError, LogClosedError

T = TypeVar("T")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """See the module docstring. Thread-safe: workers in several threads may share one."""

    def __init__(self, name: str, *, failures: int = 5, window_s: float = 60.0,
                 cooldown_s: float = 30.0, store: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise ConfigError(f"failures must be an int >= 1 (got {failures!r})")
        for label, v in (("window_s", window_s), ("cooldown_s", cooldown_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{label} must be a number of seconds > 0 (got {v!r})")
        self.name = name
        self.failures = failures
        self.window_s = float(window_s)
        self.cooldown_s = float(cooldown_s)
        self.clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._state = CLOSED
        self._recent: Deque[float] = deque()  # failure times within the window (closed)
        self._opened_at = 0.0
        self._probing = False
        self._stop = threading.Event()
        self.counts: Dict[str, int] = {"successes_total": 0, "failures_total": 0,
                                       "opened_total": 0, "probes_total": 0,
                                       "short_circuited_total": 0}
        self.store = store
        if store is not None:
            store.attach(self)

    # ------------------------------------------------------------------ state
    def _advance(self, now: float) -> str:
        """(lock held) Open -> half-open once the cool-down is over."""
        if self._state == OPEN and now - self._opened_at >= self.cooldown_s:
            self._state = HALF_OPEN
            self._probing = False
        return self._state

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        with self._cond:
            return self._advance(self.clock())

    def allow(self) -> bool:
        """May the caller take work now? Closed: yes. Open: no (counted). Half-open: yes for
        exactly one caller (the probe) until it reports, no for the others."""
        with self._cond:
            state = self._advance(self.clock())
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._probing:
                self._probing = True
                self.counts["probes_total"] += 1
                return True
            self.counts["short_circuited_total"] += 1
            return False

    def cancel_probe(self) -> None:
        """The probe found nothing to do: let the next caller probe."""
        with self._cond:
            if self._state == HALF_OPEN:
                self._probing = False
                self._cond.notify_all()

    def record_success(self) -> None:
        with self._cond:
            self.counts["successes_total"] += 1
            if self._state != CLOSED:
                self._state = CLOSED
                self._probing = False
                self._recent.clear()
                self._cond.notify_all()

    def record_failure(self) -> None:
        with self._cond:
            now = self.clock()
            self.counts["failures_total"] += 1
            state = self._advance(now)
            if state == HALF_OPEN:
                # With no probe out, this is work taken before the breaker opened, failing late:
                # it says nothing new about the service, and reopening on it would skip the probe.
                if self._probing:
                    self._open(now)  # the probe failed (or a late failure while it runs)
                return
            if state == OPEN:
                return  # a failure of work taken before it opened: already open
            recent = self._recent
            recent.append(now)
            while recent and now - recent[0] > self.window_s:
                recent.popleft()
            if len(recent) >= self.failures:
                self._open(now)

    def _open(self, now: float) -> None:
        self._state = OPEN
        self._opened_at = now
        self._probing = False
        self._recent.clear()
        self.counts["opened_total"] += 1

    def remaining_cooldown(self) -> float:
        """Seconds until an open breaker half-opens (0 when it is not open)."""
        with self._cond:
            if self._advance(self.clock()) != OPEN:
                return 0.0
            return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))

    # ------------------------------------------------------------------ using it
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` through the breaker: CircuitOpenError (fn not called) when it
        does not allow it; the outcome is recorded; fn's exception propagates."""
        if not self.allow():
            raise CircuitOpenError(f"circuit breaker {self.name!r} is {self.state}")
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result

    def process(self, queue: Any, handler: Callable[[Any], Any], timeout: float = 1.0,
                on_failure: str = "leave") -> Optional[bool]:
        """One step of a worker: if allowed, get a message (waiting up to ``timeout``), run
        ``handler(msg)``, ack it on success. On failure the message is left to its visibility
        timeout (``on_failure="leave"``) or nacked with the queue's backoff (``"nack"``).
        Returns True (handled), False (failed), or None (not allowed, or no message; an open
        breaker waits up to ``timeout`` for its cool-down first)."""
        if on_failure not in ("leave", "nack"):
            raise ValueError(f"on_failure must be 'leave' or 'nack' (got {on_failure!r})")
        if not self.allow():
            self._wait(timeout)
            return None
        try:
            msg = queue.get(timeout=timeout)
        except BaseException:
            self.cancel_probe()
            raise
        if msg is None:
            self.cancel_probe()
            return None
        try:
            handler(msg)
        except Exception:
            self.record_failure()
            counters = getattr(queue, "counters", None)
            if counters is not None:
                counters.handler_errors += 1
            if on_failure == "nack":
                queue.nack(msg)
            return False
        queue.ack(msg)
        self.record_success()
        return True

    def run(self, queue: Any, handler: Callable[[Any], Any], stop: Optional[threading.Event]
            = None, timeout: float = 0.5, on_failure: str = "leave") -> None:
        """:meth:`process` in a loop until ``stop`` or :meth:`stop` is set (or the queue is
        closed)."""
        while not self._stop.is_set() and (stop is None or not stop.is_set()):
            try:
                self.process(queue, handler, timeout, on_failure)
            except LogClosedError:
                return

    def _wait(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the cool-down ends or the probe reports."""
        with self._cond:
            if self._stop.is_set():
                return
            if self._advance(self.clock()) == OPEN:
                timeout = min(timeout, self.cooldown_s - (self.clock() - self._opened_at))
            if timeout > 0:
                self._cond.wait(timeout)

    def stop(self) -> None:
        """End every :meth:`run` loop of this breaker."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.stop()
        if self.store is not None:
            self.store.detach(self)

    def metrics(self) -> Tuple[str, str, Dict[str, Any]]:
        """(For ``store.metrics()``) ``("breakers", name, figures)``; process-local."""
        with self._cond:
            now = self.clock()
            state = self._advance(now)
            recent = sum(1 for t in self._recent if now - t <= self.window_s)
            return "breakers", self.name, dict(
                self.counts, state=state, failures_in_window=recent,
                threshold=self.failures, window_s=self.window_s, cooldown_s=self.cooldown_s)

    def __repr__(self) -> str:
        return f"<logstore.CircuitBreaker {self.name!r} {self.state}>"
