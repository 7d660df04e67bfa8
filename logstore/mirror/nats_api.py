"""The nats-py names the mirror uses, imported in this one place.

nats-py is an optional dependency (the ``nats`` extra): ``import logstore`` never imports the
mirror, and importing the mirror without nats-py raises an ``ImportError`` that says how to
install it instead of a bare ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

try:
    import nats
    import nats.errors as nats_errors
    import nats.js.errors as js_errors
    from nats.js.api import StorageType, StreamConfig
except ImportError as _e:  # pragma: no cover - exercised only without nats-py
    raise ImportError(
        "logstore.mirror needs the NATS client nats-py, which is not installed: "
        "pip install 'logstore[nats]'  (or: pip install 'nats-py>=2.6')") from _e

__all__ = ["nats", "nats_errors", "js_errors", "StorageType", "StreamConfig"]
