"""The child side of :mod:`logstore.testing.crash` (runs in a fresh interpreter).

Frames written to the acknowledgement file (one ``os.write`` each, O_APPEND, so a frame is in
the file once the call returned, whatever happens to this process next)::

    b"LSAK" | kind (1 byte) | payload length (u32 LE) | CRC32 of payload (u32 LE) | payload

kinds: ``R`` ready (the log/store is open), ``A`` acknowledged value (pickle), ``D`` done
(pickle of the function's return value), ``E`` error (UTF-8 traceback). A frame cut short (the
process was killed inside the write) fails its CRC or length and is ignored by the reader: that
acknowledgement never completed.
"""

from __future__ import annotations

import os
import pickle
import runpy
import signal
import struct
import sys
import threading
import traceback
import types
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .targets import close_target, open_target

MAGIC = b"LSAK"
_HEAD = struct.Struct("<4scII")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(MAGIC, kind, len(payload), zlib.crc32(payload)) + payload


def read_frames(path: str) -> List[Tuple[bytes, bytes]]:
    """Every complete frame of the acknowledgement file, in order (a torn last one dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    pos = 0
    while pos + _HEAD.size <= len(data):
        magic, kind, n, crc = _HEAD.unpack_from(data, pos)
        start = pos + _HEAD.size
        payload = data[start:start + n]
        if magic != MAGIC or len(payload) != n or zlib.crc32(payload) != crc:
            break
        out.append((kind, payload))
        pos = start + n
    return out


class Ack:
    """The ``ack(value)`` callable given to the function: durably hands ``value`` to the parent
    (the frame is in the file when this returns) and, with ``after_acks=N``, SIGKILLs this
    process right after the N-th acknowledgement."""

    def __init__(self, fd: int, kill_after: Optional[int]) -> None:
        self._fd = fd
        self._kill_after = kill_after
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, value: Any) -> None:
        data = frame(b"A", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        with self._lock:
            _write_all(self._fd, data)
            self.count += 1
            if self._kill_after is not None and self.count >= self._kill_after:
                os.kill(os.getpid(), signal.SIGKILL)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _load_main(path: str) -> None:
    """Make ``__main__`` the parent's main script (for functions defined there), without running
    its ``if __name__ == "__main__"`` block (as multiprocessing's spawn does)."""
    namespace = runpy.run_path(path, run_name="__mp_main__")
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def main(spec: Dict[str, Any]) -> None:
    fd = os.open(spec["ack_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if spec.get("cwd"):
            os.chdir(spec["cwd"])
        if spec.get("main_path"):
            _load_main(spec["main_path"])
        fn = pickle.loads(spec["fn"])
        args = pickle.loads(spec["args"])
        ack = Ack(fd, spec.get("after_acks"))
        kind = spec["kind"]
        if kind == "dir":
            _write_all(fd, frame(b"R", b""))
            result = fn(spec["path"], ack, *args)
        else:
            target = open_target(kind, spec["path"], spec["options"])
            _write_all(fd, frame(b"R", b""))
            try:
                result = fn(target, ack, *args)
            finally:
                close_target(target)
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an unpicklable return value is reported as None
            payload = pickle.dumps(None)
        _write_all(fd, frame(b"D", payload))
    except BaseException:  # noqa: BLE001 - everything goes to the parent
        _write_all(fd, frame(b"E", traceback.format_exc().encode("utf-8", "replace")))
        _flush()
        os._exit(3)
    _flush()
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


BOOT = ("import pickle, sys\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    spec = pickle.load(f)\n"
        "sys.path[:] = spec['sys_path']\n"
        "from logstore.testing.child import main\n"
        "main(spec)\n")
