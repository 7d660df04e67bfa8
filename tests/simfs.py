"""The power-loss file system used to live here; it is now public as
``logstore.testing.powerloss`` (a whole directory tree, a recorded trace, crash states derived
from it). This module re-exports it for old imports and keeps the one helper that needs engine
internals: :func:`abandon` (drop a Log like a dead process would).
"""

from __future__ import annotations

from typing import Any, Optional

from logstore.testing.powerloss import (  # noqa: F401 - re-exported
    ALL_MODES,
    DIR_MODES,
    PAGE,
    SUFFIX_MODES,
    Crash,
    Damage,
    DiskModel,
    Event,
    PowerLossFS,
    damage,
)

SimFS = PowerLossFS

__all__ = ["ALL_MODES", "DIR_MODES", "PAGE", "SUFFIX_MODES", "Crash", "Damage", "DiskModel",
           "Event", "PowerLossFS", "SimFS", "abandon", "damage"]


def abandon(fs: Optional[PowerLossFS], log: Any) -> None:
    """Drop ``log`` like a dead process: release its directory lock, forget its mappings, close
    its descriptors; no ``close()``. With ``fs``, also cut the power (nothing succeeds after)
    and close every descriptor opened through it."""
    if fs is not None:
        fs.crash()
    if log is not None:
        # With the power cut, the simulated file system refuses every call: let go of the
        # files without it (it closes every descriptor it opened itself, below).
        log.abandon(release_files=fs is None)
    if fs is not None:
        fs.release_fds()
