"""Read-only byte access to a segment file and its index files, by ``os.pread``, never ``mmap``.

A writer that truncates a torn tail during its own recovery cannot kill a pread reader with
``SIGBUS``, so the diagnostics can run beside it. :class:`Reader` snapshots the file's size when
it opens it (an active segment grows: it is read up to that size unless refreshed), buffers
chunks for walking batch after batch, and is a :class:`logstore.format.damage.ByteSource` for
the torn-tail rules. :func:`read_entries` reads an index file whole into a numpy array.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np

CHUNK = 4 << 20  # bytes read per pread when walking a segment


class Reader:
    """pread-based, chunk-buffered read access to one file."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = self.opened_size = os.fstat(self.fd).st_size
        self.unwritten = 0  # zero bytes past the data of an active segment (preallocated)
        self._buf = b""
        self._start = 0

    def refresh(self) -> int:
        """Re-read the file size (the active segment grows) and drop cached bytes."""
        self.size = os.fstat(self.fd).st_size
        self._buf = b""
        return self.size

    def view(self, pos: int, n: int) -> Tuple[bytes, int]:
        """(buffer, index) such that ``buffer[index:index+n]`` are bytes [pos, pos+n) (or fewer)."""
        start = self._start
        if start <= pos and pos + n <= start + len(self._buf):
            return self._buf, pos - start
        want = min(max(n, CHUNK), max(0, self.size - pos))
        self._buf = os.pread(self.fd, want, pos)
        self._start = pos
        return self._buf, 0

    def read(self, pos: int, n: int) -> bytes:
        """Bytes ``[pos, pos+n)`` straight from the file (the ByteSource of the damage rules)."""
        return os.pread(self.fd, n, pos)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_entries(path: str, dtype: np.dtype) -> Optional[np.ndarray]:
    """The entries of an index file (read, not mapped; a partial last entry is left out);
    None if the file is missing."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    n = len(raw) // dtype.itemsize
    return np.frombuffer(raw[: n * dtype.itemsize], dtype=dtype)
