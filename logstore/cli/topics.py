"""``logstore topics``: a store's topics, like kafka-topics: list, describe (the settings
stored with the topic, partitions, groups), create, delete.

Listing and describing open the store read-only (safe beside its writer); creating and
deleting need the writer's lock (exit 3 while a writer has the store open). Deleting refuses
while a group or subscription of the topic has a live member, unless ``--force``
(:func:`logstore.views.admin.delete_topic`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import click

from ..config import SHAPING_SETTINGS
from ..diagnostics.targets import store_path
from ..errors import ConfigError, NotALogError
from ..format.names import LOG_SUFFIX
from ..views import admin
from ..views.metrics import queue_names
from ..views.names import validate_name
from .common import (
    open_store, operator, option_flag, parse_options, path_arg, reading_store, writing_store,
)
from .output import Indented, age, iso, table

_PLAIN = Indented("")


@click.command("topics")
@path_arg
@click.option("--topic", "-t", default=None, metavar="T", help="Describe (create, delete) T.")
@click.option("--create", is_flag=True, help="Create --topic (settings: -o NAME=VALUE).")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --create: the partition count (fixed for the topic's lifetime).")
@click.option("--retention", type=click.Choice(["limits", "interest"]), default="limits",
              show_default=True,
              help="With --create: 'interest' also deletes what every group has consumed.")
@click.option("--if-not-exists", is_flag=True,
              help="With --create: an existing topic is no error (its settings are not "
                   "changed: see `logstore config`).")
@click.option("--delete", is_flag=True,
              help="Delete --topic with its groups, subscriptions and queue state.")
@click.option("--force", is_flag=True,
              help="With --delete: even while a group or subscription of it has live members.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@option_flag
@operator
def topics(path: str, topic: Optional[str], create: bool, partitions: int, retention: str,
           if_not_exists: bool, delete: bool, force: bool, as_json: bool,
           options: Tuple[str, ...]) -> None:
    """List the topics of the store PATH, describe one (--topic), create or delete one.

    \b
    Without --topic: one line per topic: partitions, records, bytes, the stored cleanup
    policy and retention, groups, whether it is a work queue.
    --topic T: its stored settings (what `logstore config --topic T` prints), and per
    partition its offsets, records, bytes, segments and time range.
    --create --topic T [--partitions N] [-o retention_ms=...]: a new topic with these
    settings stored (exit 2 if it exists, unless --if-not-exists).
    --delete --topic T: the topic, its groups and subscriptions, its queue state. Refused
    (exit 3) while a group or subscription of it has a live member, unless --force.

    \b
    Examples:
      logstore topics data/shop
      logstore topics data/shop --topic orders --json
      logstore topics data/shop --create --topic events --partitions 8 -o retention_ms=604800000
      logstore topics data/shop --delete --topic events
    """
    opts = parse_options(options)
    if (create or delete) and topic is None:
        raise click.BadParameter("--create and --delete need --topic", param_hint="--topic")
    if create and delete:
        raise click.BadParameter("choose one of --create and --delete", param_hint="--delete")
    if opts and not create:
        raise click.BadParameter("-o settings go with --create (change an existing topic's "
                                 "with `logstore config --topic`)", param_hint="-o")
    if topic is not None:
        validate_name("topic", topic)
    name = topic or ""
    if create:
        _create(path, name, partitions, retention, if_not_exists, opts, as_json)
    elif delete:
        with writing_store(path) as store:
            report = admin.delete_topic(store, name, force)
            admin.empty_trash(store)
        if as_json:
            click.echo(json.dumps({"deleted": report}))
        else:
            extra = [f"{len(report['groups'])} group(s)/subscription(s)"] if report["groups"] \
                else []
            extra += ["its work-queue state"] if report["queue"] else []
            click.echo(f"deleted topic {topic!r}" + (f" with {', '.join(extra)}" if extra
                                                     else ""))
    else:
        with reading_store(path) as store:
            if topic is None:
                _list(store, as_json)
            else:
                _describe(store, topic, as_json)


def _create(path: str, topic: str, partitions: int, retention: str, if_not_exists: bool,
            settings: Dict[str, Any], as_json: bool) -> None:
    unknown = sorted(set(settings) - set(SHAPING_SETTINGS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a topic setting (settings: "
                          f"{', '.join(SHAPING_SETTINGS)})")
    if store_path(path) is None and not (os.path.isdir(path) and not os.listdir(path)) \
            and os.path.exists(path):
        raise NotALogError(f"{path} is not a store root (a directory with store.meta)")
    with (writing_store(path) if os.path.exists(path) and store_path(path) is not None
          else _new_store(path)) as store:
        existed = topic in store.topics()
        if existed and not if_not_exists:
            raise ConfigError(f"topic {topic!r} exists already ({store.get_topic(topic).partition_count}"
                              f" partitions); --if-not-exists makes that no error")
        t = store.get_topic(topic) if existed else store.topic(
            topic, partitions, retention=retention, **settings)
        doc = {"topic": topic, "created": not existed, "partitions": t.partition_count,
               "retention": t.retention, "settings": t.settings}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(f"{'created' if doc['created'] else 'exists:'} topic {topic!r}, "
                   f"{doc['partitions']} partition{'s' if doc['partitions'] != 1 else ''}")


@contextlib.contextmanager
def _new_store(path: str) -> Iterator[Any]:
    """(``--create``) A store created at ``path`` (missing, or an empty directory)."""
    store = open_store(path, {})
    try:
        yield store
    finally:
        store.close()


def _bytes_of(log_dir: str) -> Tuple[int, int]:
    """(bytes, segments) of a partition's segment files (from the directory: nothing mapped)."""
    total = count = 0
    try:
        names = os.listdir(log_dir)
    except OSError:
        return 0, 0
    for name in names:
        if name.endswith(LOG_SUFFIX):
            count += 1
            try:
                total += os.path.getsize(os.path.join(log_dir, name))
            except OSError:
                pass
    return total, count


def _topic_doc(store: Any, name: str, groups: Dict[str, List[str]],
               queues: List[str]) -> Dict[str, Any]:
    t = store.get_topic(name)
    parts: Dict[str, Any] = {}
    for p, log in enumerate(t.partitions):
        size, segs = _bytes_of(log.path)
        start, end = log.start_offset, log.end_offset
        parts[str(p)] = {"start_offset": start, "end_offset": end, "records": end - start,
                         "bytes": size, "segments": segs}
    return {"topic": name, "partitions": t.partition_count, "retention": t.retention,
            "settings": t.settings, "queue": name in queues,
            "records": sum(x["records"] for x in parts.values()),
            "bytes": sum(x["bytes"] for x in parts.values()),
            "groups": groups.get(name, []), "partition_offsets": parts}


def _groups_by_topic(store: Any) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for g in admin.list_groups(store):
        out.setdefault(g.topic, []).append(g.name if g.kind == "group" else f"sub:{g.name}")
    return out


def _list(store: Any, as_json: bool) -> None:
    groups = _groups_by_topic(store)
    queues = queue_names(store.root)
    docs = [_topic_doc(store, name, groups, queues) for name in store.topics()]
    if as_json:
        click.echo(json.dumps({"topics": docs}, indent=1))
        return
    if not docs:
        click.echo(f"no topics in {store.root}")
        return
    cells = [["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "CLEANUP", "RETENTION", "GROUPS",
              "QUEUE"]]
    for d in docs:
        s = d["settings"]
        limits = []
        if s.get("retention_ms") is not None:
            limits.append(age(s["retention_ms"] / 1000))
        if s.get("retention_bytes") is not None:
            limits.append(f"{s['retention_bytes']} B")
        if d["retention"] == "interest":
            limits.append("interest")
        cells.append([d["topic"], str(d["partitions"]), str(d["records"]), str(d["bytes"]),
                      s.get("cleanup_policy", "delete"), ", ".join(limits) or "-",
                      str(len(d["groups"])), "yes" if d["queue"] else "-"])
    table(_PLAIN, cells, left=(0, 4, 5))


def _describe(store: Any, name: str, as_json: bool) -> None:
    doc = _topic_doc(store, name, _groups_by_topic(store), queue_names(store.root))
    t = store.get_topic(name)
    for p, log in enumerate(t.partitions):
        x = doc["partition_offsets"][str(p)]
        first = None
        if x["records"]:
            try:
                first = log.get(x["start_offset"]).timestamp_ms
            except LookupError:  # compacted away or removed meanwhile
                first = None
        x["first_timestamp"] = first
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"topic {name!r}: {doc['partitions']} partition"
               f"{'s' if doc['partitions'] != 1 else ''}, {doc['records']} records, "
               f"{doc['bytes']} bytes, retention {doc['retention']}"
               + (", a work queue" if doc["queue"] else ""))
    for k in SHAPING_SETTINGS:
        click.echo(f"  {k} = {doc['settings'].get(k)!r}")
    if doc["groups"]:
        click.echo(f"  groups: {', '.join(doc['groups'])}")
    cells = [["PARTITION", "START", "END", "RECORDS", "BYTES", "SEGMENTS", "FIRST RECORD"]]
    for p, x in sorted(doc["partition_offsets"].items(), key=lambda kv: int(kv[0])):
        cells.append([p, str(x["start_offset"]), str(x["end_offset"]), str(x["records"]),
                      str(x["bytes"]), str(x["segments"]), iso(x["first_timestamp"])])
    table(_PLAIN, cells, left=(6,))
