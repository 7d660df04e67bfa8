"""A throwaway 3-node NATS JetStream cluster on 127.0.0.1 for tests (no nats-py needed here).

    with NatsCluster(tmp_path) as cluster:
        cluster.urls                  # ["nats://127.0.0.1:PORT", ...] client URLs
        cluster.kill(1)               # SIGKILL node 1 (its data dir stays)
        cluster.start_node(1)         # start it again on the same ports and data dir
        cluster.stop_all(); cluster.start_all()
        cluster.wait_ready()          # a JetStream meta leader with every running node a peer

Each node gets a config file, a JetStream store directory and a log file under the given
directory, and free TCP ports (client, cluster routes, HTTP monitoring). Processes are stopped by
their own PID (SIGTERM, then SIGKILL after a grace period); nothing else is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import List, Optional

CLUSTER_NAME = "logstore-test"


def find_nats_server() -> Optional[str]:
    """The nats-server binary (Debian installs it in /usr/sbin), or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    for cand in ("/usr/sbin/nats-server", "/usr/local/sbin/nats-server",
                 "/usr/local/bin/nats-server"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def nats_server_version(binary: str) -> Optional[tuple]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "nats-server: v2.9.10"
    word = out.strip().split()[-1].lstrip("v") if out.strip() else ""
    try:
        return tuple(int(x) for x in word.split("-")[0].split(".")[:3])
    except ValueError:
        return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL this nats-server if the test process dies (no leaked servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_ports(n: int) -> List[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class NatsCluster:
    """``size`` JetStream nodes clustered over routes on 127.0.0.1."""

    def __init__(self, base_dir: str, size: int = 3, binary: Optional[str] = None):
        self.binary = binary or find_nats_server()
        if self.binary is None:
            raise RuntimeError("nats-server not found (apt-get install nats-server)")
        self.base_dir = os.path.abspath(base_dir)
        self.size = size
        ports = free_ports(3 * size)
        self.client_ports = ports[0:size]
        self.route_ports = ports[size:2 * size]
        self.http_ports = ports[2 * size:3 * size]
        self.procs: List[Optional[subprocess.Popen]] = [None] * size
        self.logs: List[Optional[object]] = [None] * size
        os.makedirs(self.base_dir, exist_ok=True)
        for i in range(size):
            os.makedirs(self.store_dir(i), exist_ok=True)
            with open(self.config_path(i), "w") as f:
                f.write(self._config(i))

    # ------------------------------------------------------------------ layout
    def name(self, i: int) -> str:
        return f"n{i + 1}"

    def store_dir(self, i: int) -> str:
        return os.path.join(self.base_dir, self.name(i), "jetstream")

    def config_path(self, i: int) -> str:
        return os.path.join(self.base_dir, self.name(i), "nats.conf")

    def log_path(self, i: int) -> str:
        return os.path.join(self.base_dir, self.name(i), "nats.log")

    @property
    def urls(self) -> List[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def url(self, i: int) -> str:
        return self.urls[i]

    def _config(self, i: int) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports)
                           if j != i)
        return (
            f'server_name: "{self.name(i)}"\n'
            f"listen: 127.0.0.1:{self.client_ports[i]}\n"
            f"http: 127.0.0.1:{self.http_ports[i]}\n"
            f"jetstream {{\n"
            f'  store_dir: "{self.store_dir(i)}"\n'
            f"  max_memory_store: 64MB\n"
            f"  max_file_store: 2GB\n"
            f"}}\n"
            f"cluster {{\n"
            f"  name: {CLUSTER_NAME}\n"
            f"  listen: 127.0.0.1:{self.route_ports[i]}\n"
            f"  routes: [{routes}]\n"
            f"}}\n"
        )

    # ------------------------------------------------------------------ processes
    def start_node(self, i: int) -> None:
        if self.running(i):
            return
        log = open(self.log_path(i), "ab")
        self.logs[i] = log
        self.procs[i] = subprocess.Popen([self.binary, "-c", self.config_path(i)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if sys.platform.startswith(
                                             "linux") else None)

    def start_all(self, wait: bool = True, timeout: float = 30.0) -> "NatsCluster":
        for i in range(self.size):
            self.start_node(i)
        if wait:
            self.wait_ready(timeout)
        return self

    def running(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def pid(self, i: int) -> Optional[int]:
        p = self.procs[i]
        return p.pid if p is not None else None

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (by its PID)."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        self._close_log(i)

    def stop_node(self, i: int, grace: float = 5.0) -> None:
        """SIGTERM node ``i``; SIGKILL if it is still alive after ``grace`` seconds."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        self._close_log(i)

    def stop_all(self, grace: float = 5.0) -> None:
        for i in range(self.size):
            p = self.procs[i]
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for i in range(self.size):
            p = self.procs[i]
            if p is None:
                continue
            try:
                p.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
            self._close_log(i)

    def _close_log(self, i: int) -> None:
        log = self.logs[i]
        if log is not None:
            log.close()
            self.logs[i] = None

    def close(self, remove: bool = True) -> None:
        self.stop_all()
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "NatsCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ health
    def jsz(self, i: int, timeout: float = 1.0) -> Optional[dict]:
        """Node ``i``'s ``/jsz`` monitoring document, or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz",
                                        timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def meta_leader(self) -> Optional[str]:
        for i in range(self.size):
            if not self.running(i):
                continue
            doc = self.jsz(i)
            leader = ((doc or {}).get("meta_cluster") or {}).get("leader")
            if leader:
                return leader
        return None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node reports the same meta leader and the leader sees all of the
        running nodes as current peers."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for i in range(self.size):
                p = self.procs[i]
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"nats-server {self.name(i)} exited with {p.returncode}; "
                                       f"log: {self.tail_log(i)}")
            running = [i for i in range(self.size) if self.running(i)]
            docs = [self.jsz(i) for i in running]
            last = docs
            leaders = {((d or {}).get("meta_cluster") or {}).get("leader") for d in docs}
            if docs and None not in docs and len(leaders) == 1 and None not in leaders:
                leader = leaders.pop()
                # /jsz of 2.9 has no server name: node i is self.name(i).
                ldoc = next((d for i, d in zip(running, docs) if self.name(i) == leader), None)
                if ldoc is not None:
                    peers = (ldoc.get("meta_cluster") or {}).get("replicas") or []
                    current = {p.get("name") for p in peers if p.get("current")}
                    want = {self.name(i) for i in running} - {leader}
                    if want <= current:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"NATS cluster not ready after {timeout}s: {last}")

    def tail_log(self, i: int, n: int = 2000) -> str:
        try:
            with open(self.log_path(i), "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return ""
