"""Names and placement in a store: which topic, queue, group and subscription names are valid,
and which partition a keyed message goes to. Shared by the store, its views and the CLI.
"""

from __future__ import annotations

import re
from typing import Any

import crc32c as _crc32c

from ..errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def validate_name(kind: str, name: Any) -> str:
    """Topic/queue/subscription names: 1-200 of [A-Za-z0-9._-], not starting with '.', '_' or '-'.

    This excludes path tricks ('..', '/', NUL), empty and overlong names, and the reserved
    internal namespace.
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
    if not _NAME.match(name) or ".." in name:
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-200 characters from A-Z a-z 0-9 . _ -, "
            f"starting with a letter or digit, without '..'")
    return name


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition of a keyed message: CRC32C of the key modulo the partition count.

    Stable across processes, machines and Python versions (unlike ``hash()``).
    """
    return _crc32c.crc32c(key) % partitions
