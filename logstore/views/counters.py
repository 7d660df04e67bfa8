"""In-process counters the views keep for ``store.metrics()``: sliding-window rates and recent
durations. Cheap enough for every get, ack and poll (a few integer operations under a lock).

These figures exist only in the process that does the work: another process (the
``logstore metrics`` command, a read-only store) sees only what the logs say (depth, lag, dead
letters), see :mod:`logstore.views.metrics`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional

import numpy as np

#: Rates are over the last this many seconds (or since the counter was made, if younger).
RATE_WINDOW_S = 60
#: Durations kept for percentiles: the most recent ones.
TIMING_SAMPLES = 4096
PERCENTILES = (50, 90, 99)


class WindowCounter:
    """A total and a sliding-window rate: one bucket per second over :data:`RATE_WINDOW_S`.
    Thread-safe."""

    def __init__(self, window_s: int = RATE_WINDOW_S):
        self.window = window_s
        self.total = 0
        self.created = time.monotonic()
        self._secs = [-1] * window_s
        self._counts = [0] * window_s
        self._lock = threading.Lock()

    def add(self, n: int = 1, now: Optional[float] = None) -> None:
        sec = int(time.monotonic() if now is None else now)
        i = sec % self.window
        with self._lock:
            self.total += n
            if self._secs[i] != sec:
                self._secs[i] = sec
                self._counts[i] = 0
            self._counts[i] += n

    def rate(self, now: Optional[float] = None) -> float:
        """Events per second over the last window (over the counter's life, at least a second,
        while it is younger than the window)."""
        now = time.monotonic() if now is None else now
        sec = int(now)
        with self._lock:
            n = sum(c for s, c in zip(self._secs, self._counts) if sec - s < self.window)
        return n / min(float(self.window), max(1.0, now - self.created))


class Timings:
    """Durations (seconds): count and sum since made, percentiles of the most recent
    :data:`TIMING_SAMPLES`. Thread-safe."""

    def __init__(self, samples: int = TIMING_SAMPLES):
        self.count = 0
        self.sum = 0.0
        self._recent: Deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.count += 1
            self.sum += seconds
            self._recent.append(seconds)

    def summary(self) -> Dict[str, Optional[float]]:
        """``{"count", "sum_s", "p50_s", "p90_s", "p99_s", "max_s"}`` (percentiles None before
        the first sample)."""
        with self._lock:
            recent: List[float] = list(self._recent)
            count, total = self.count, self.sum
        out: Dict[str, Optional[float]] = {"count": count, "sum_s": total}
        if recent:
            arr = np.asarray(recent)
            for q, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES)):
                out[f"p{q}_s"] = float(v)
            out["max_s"] = float(arr.max())
        else:
            out.update({f"p{q}_s": None for q in PERCENTILES})
            out["max_s"] = None
        return out
