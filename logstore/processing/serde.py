"""Serializers: how values (and table values) become bytes and back.

A serializer is any object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``. Four are
provided: :data:`BYTES` (the default: values stay ``bytes``), :data:`STR` (UTF-8 text),
:data:`JSON` and :data:`PICKLE` (only for data this process family wrote itself: unpickling runs
code). A tombstone (``None`` value) stays ``None`` in both directions with every one of them.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Optional

__all__ = ["Serde", "BYTES", "STR", "JSON", "PICKLE", "check_serde"]


class Serde:
    """Base of the provided serializers (any object with ``dumps``/``loads`` works too)."""

    name = "serde"

    def dumps(self, obj: Any) -> Optional[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def loads(self, data: Optional[bytes]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<logstore.processing.{self.name}>"


class _Bytes(Serde):
    name = "BYTES"

    def dumps(self, obj: Any) -> Optional[bytes]:
        if obj is None or type(obj) is bytes:
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        raise TypeError(f"value must be bytes (or None) for the BYTES serializer, got "
                        f"{type(obj).__name__}: pass value=logstore.processing.JSON (or STR, "
                        f"PICKLE) to .to()")

    def loads(self, data: Optional[bytes]) -> Any:
        return data


class _Str(Serde):
    name = "STR"

    def dumps(self, obj: Any) -> Optional[bytes]:
        return None if obj is None else obj.encode("utf-8")

    def loads(self, data: Optional[bytes]) -> Any:
        return None if data is None else data.decode("utf-8")


class _Json(Serde):
    name = "JSON"

    def __init__(self) -> None:
        self._enc = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode

    def dumps(self, obj: Any) -> Optional[bytes]:
        return None if obj is None else self._enc(obj).encode("utf-8")

    def loads(self, data: Optional[bytes]) -> Any:
        return None if data is None else json.loads(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class _Pickle(Serde):
    name = "PICKLE"

    def dumps(self, obj: Any) -> Optional[bytes]:
        return None if obj is None else pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: Optional[bytes]) -> Any:
        return None if data is None else pickle.loads(data)


BYTES: Serde = _Bytes()
STR: Serde = _Str()
JSON: Serde = _Json()
PICKLE: Serde = _Pickle()


def check_serde(obj: Any, what: str) -> Any:
    """``obj`` if it has ``dumps`` and ``loads``; TypeError naming ``what`` otherwise."""
    if not (callable(getattr(obj, "dumps", None)) and callable(getattr(obj, "loads", None))):
        raise TypeError(f"{what} must be a serializer (an object with dumps() and loads(), e.g. "
                        f"logstore.processing.JSON), got {obj!r}")
    return obj
