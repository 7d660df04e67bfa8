"""Compatibility alias: ``logstore.durablequeue`` is :mod:`logstore.views.durablequeue`.

Kept because the README has long named ``logstore.durablequeue.JSON``/``BYTES``/``PICKLE``.
"""

from .views.durablequeue import BYTES, JSON, PICKLE, DurableQueue, DurableSimpleQueue

__all__ = ["BYTES", "JSON", "PICKLE", "DurableQueue", "DurableSimpleQueue"]
