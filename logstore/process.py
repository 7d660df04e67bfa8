"""Objects that belong to the process that opened them: forks and interpreter exit.

A ``Log``, ``Store`` or ``DurableQueue`` holds locks (``flock`` on open file descriptions, which
a forked child shares with its parent), mappings, write buffers and in-memory state (the next
offset, group-commit waiters) that only the opening process may use: a forked child appending
through its copy would reuse offsets and overwrite the parent's acknowledged records, and its
``close()`` would release the parent's lock. So, as LMDB documents ("not after fork"), every
such object refuses every call in a forked child (:class:`~logstore.errors.ForkedProcessError`),
and its ``close()`` there is a no-op: the child must open its own.

Objects register with :func:`register`; they implement ``mark_forked()``, called in the child
right after a fork (with no lock taken: other threads did not survive the fork).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_objects: "weakref.WeakSet[Any]" = weakref.WeakSet()


def register(obj: Any) -> None:
    """Tie ``obj`` to this process (see the module docstring)."""
    _objects.add(obj)


def unregister(obj: Any) -> None:
    """``obj`` was closed: nothing to do for it at a fork or at exit."""
    _objects.discard(obj)


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        obj.mark_forked()
    _objects.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
