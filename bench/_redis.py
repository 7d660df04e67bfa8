"""A private redis-server for the benchmarks that compare with Redis (compare.py, queue_bench.py).

127.0.0.1 on a free port, AOF on with the given ``appendfsync``, no RDB snapshots, everything in
its own directory. The worker that starts it stops it by PID; ``redis.pid`` in that directory
lets the parent stop it too if the worker dies (:func:`stop_leftover_server`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Optional


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``RedisServer(path, appendfsync).start()`` ... ``.stop()``."""

    def __init__(self, path: str, appendfsync: str, start_timeout_s: float = 10.0):
        self.path, self.appendfsync = path, appendfsync
        self.start_timeout_s = start_timeout_s  # a big AOF (reader rows) takes a while to load
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> "RedisServer":
        import redis
        os.makedirs(self.path, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                 "--dir", self.path, "--appendonly", "yes", "--appendfsync", self.appendfsync,
                 "--save", "", "--daemonize", "no", "--protected-mode", "yes",
                 "--logfile", os.path.join(self.path, "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(os.path.join(self.path, "redis.pid"), "w") as f:
                f.write(str(self.proc.pid))  # the parent stops it by PID if this worker dies
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.client().ping()
                    self._check_config()
                    return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
            self.stop()  # port taken in the meantime, or too slow: try another port
        raise RuntimeError(f"redis-server did not start (see {self.path}/redis.log)")

    def _check_config(self) -> None:
        c = self.client()
        cfg = c.config_get("append*")
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != self.appendfsync:
            raise AssertionError(f"verification failed: redis AOF settings {cfg}")
        if c.config_get("save").get("save", "") != "":
            raise AssertionError("verification failed: redis RDB snapshots are on")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port)

    def peak_rss_mib(self) -> Optional[float]:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # redis fsyncs the AOF and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_leftover_server(path: str) -> None:
    """If a Redis worker died without stopping its server, stop that server (by its PID)."""
    try:
        with open(os.path.join(path, "redis.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"redis-server" not in f.read():
                return
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
