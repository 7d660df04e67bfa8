"""A topic's ``topic.json``: creating a topic crash-safely, finishing an interrupted creation,
checking an existing one against what the caller asks for.

``topic.json`` (``{"partitions": N, "retention": "limits"|"interest", "settings": {...}}``) is
written first, marked ``"creating": true`` until every partition's log exists: a crash in
between is finished by the next open, and a partition missing from a created topic is always
damage (re-created empty, it would reuse offsets its readers and groups have already seen).

In a store shared by several processes, creating (or changing) a topic's files happens under
the store's creation lock (``<root>/.tlock``, an ``flock``), so two processes creating the same
topic at once agree on one ``topic.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ..errors import ConfigError, CorruptLogError, NotALogError, UnknownTopicError
from ..format.names import CREATION_LOCK_NAME, META_NAME, TOPIC_META, topic_dir
from ..fs import FileSystem
from . import flocks

@contextlib.contextmanager
def creation_lock(root: str, shared: bool) -> Iterator[None]:
    """Hold the store's creation lock (only a shared store needs one: otherwise the store's own
    writer lock excludes every other writer)."""
    if not shared:
        yield
        return
    with flocks.held(os.path.join(root, CREATION_LOCK_NAME)):
        yield


def read_topic_meta(root: str, name: str) -> Optional[Dict[str, Any]]:
    """The topic's ``topic.json``, None if it has none; NotALogError if it is unreadable."""
    path = os.path.join(topic_dir(root, name), TOPIC_META)
    try:
        with open(path, "rb") as f:
            tmeta = json.loads(f.read())
        int(tmeta["partitions"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        raise NotALogError(f"{path} is not a topic metadata file") from None
    return tmeta


def write_topic_meta(fs: FileSystem, root: str, name: str, tmeta: Dict[str, Any]) -> None:
    """Replace the topic's ``topic.json`` atomically (durably, through ``fs``)."""
    fs.write_file_atomic(os.path.join(topic_dir(root, name), TOPIC_META),
                         json.dumps(tmeta).encode())


def prepare_topic(root: str, name: str, partitions: Optional[int], retention: Optional[str],
                  settings: Dict[str, Any], defaults: Dict[str, Any], readonly: bool,
                  fs: FileSystem, create_partition: Callable[[str, Dict[str, Any]], None]
                  ) -> Tuple[int, str, Dict[str, Any]]:
    """Make sure topic ``name`` exists as asked; returns ``(partitions, retention, stored
    settings)``. A new topic is created with ``partitions`` (default 1), ``retention`` (default
    "limits") and the settings ``defaults`` (``create_partition(path, settings)`` creates one
    partition's log); an interrupted creation is finished; an existing topic is checked:
    ConfigError for a different partition count, retention or stored setting,
    CorruptLogError for a missing partition. ``readonly``: UnknownTopicError instead of
    creating."""
    tdir = topic_dir(root, name)
    tmeta = read_topic_meta(root, name)
    if tmeta is None:
        if readonly:
            raise UnknownTopicError(f"no topic {name!r} in {root}")
        if os.path.isdir(tdir) and any(n.isdigit() for n in os.listdir(tdir)):
            raise CorruptLogError(f"topic {name!r} has partition directories but no "
                                  f"{TOPIC_META}: refusing to recreate it (its partition "
                                  f"count is unknown)", os.path.join(tdir, TOPIC_META))
        existing, policy = partitions or 1, retention or "limits"
        fs.makedirs(tdir)
        tmeta = {"partitions": existing, "retention": policy, "settings": defaults}
        write_topic_meta(fs, root, name, dict(tmeta, creating=True))
        for p in range(existing):
            create_partition(os.path.join(tdir, str(p)), defaults)
        write_topic_meta(fs, root, name, tmeta)
        return existing, policy, defaults
    existing, policy = int(tmeta["partitions"]), tmeta.get("retention", "limits")
    stored = tmeta.get("settings") or {}
    if tmeta.get("creating"):
        if readonly:
            raise UnknownTopicError(f"topic {name!r} of {root} is being created")
        for p in range(existing):
            create_partition(os.path.join(tdir, str(p)), stored)
        tmeta.pop("creating")
        write_topic_meta(fs, root, name, tmeta)
        return existing, policy, stored
    if retention is not None and retention != policy:
        raise ConfigError(f"topic {name!r} has retention={policy!r}, not {retention!r}")
    if partitions is not None and partitions != existing:
        raise ConfigError(f"topic {name!r} has {existing} partitions, not {partitions} (the "
                          f"count cannot change)")
    for k, v in settings.items():
        if k in stored and stored[k] != v:
            raise ConfigError(f"topic {name!r} stores {k}={stored[k]!r}, not {v!r}; change it "
                              f"with topic.configure({k}=...)")
    for p in range(existing):
        if not os.path.exists(os.path.join(tdir, str(p), META_NAME)):
            raise CorruptLogError(
                f"topic {name!r}: partition {p} is missing (no log in "
                f"{os.path.join(tdir, str(p))}); restore it from a copy",
                os.path.join(tdir, str(p)))
    return existing, policy, stored
