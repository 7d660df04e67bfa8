"""``logstore groups``: consumer groups and subscriptions, like kafka-consumer-groups: list,
describe (lag in records and seconds), reset offsets (a dry run unless ``--execute``), delete.

The store is opened read-only (safe beside its writing process): a group's commits live in its
lease logs, which any process may write while it holds the leases (:mod:`logstore.views.admin`).
Resetting and deleting are refused (exit 3) while the group has a live member in any process.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import click

from ..errors import ConfigError, UnknownTopicError
from ..views import admin
from ..views.consumer import SUBSCRIPTION_PREFIX, validate_group
from ..views.names import validate_name
from .common import operator, path_arg, reading_store, writing_store
from .output import Indented, age, num, parse_time, table

_PLAIN = Indented("")


@click.command("groups")
@path_arg
@click.option("--topic", default=None, metavar="T", help="Only groups of topic T.")
@click.option("--group", "-g", default=None, metavar="G", help="Describe (reset, delete) group G.")
@click.option("--subscription", default=None, metavar="NAME",
              help="Describe (reset, delete) durable subscription NAME instead of a group.")
@click.option("--reset-offsets", is_flag=True,
              help="Reset the committed offsets of --group on --topic (a dry run without "
                   "--execute); with one of --to-earliest, --to-latest, --to-time, "
                   "--to-offset, --shift-by.")
@click.option("--to-earliest", is_flag=True, help="Reset to each partition's start.")
@click.option("--to-latest", is_flag=True, help="Reset to each partition's end.")
@click.option("--to-time", default=None, metavar="TIME",
              help="Reset to the first record at or after TIME (ISO 8601, ms, -1h...).")
@click.option("--to-offset", type=click.IntRange(min=0), default=None, metavar="N",
              help="Reset to offset N (kept within each partition's [start, end]).")
@click.option("--shift-by", type=int, default=None, metavar="N",
              help="Move each commit by N (negative: back; a partition without a commit "
                   "shifts from its start).")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              metavar="P", help="Reset only partition P (repeatable; default: all).")
@click.option("--execute", is_flag=True, help="Commit the reset (default: print it only).")
@click.option("--delete", is_flag=True,
              help="Delete --group (or --subscription): its commits on --topic, or on every "
                   "topic.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator
def groups(path: str, topic: Optional[str], group: Optional[str], subscription: Optional[str],
           reset_offsets: bool, to_earliest: bool, to_latest: bool, to_time: Optional[str],
           to_offset: Optional[int], shift_by: Optional[int], partitions: Tuple[int, ...],
           execute: bool, delete: bool, as_json: bool) -> None:
    """List the consumer groups and subscriptions of the store PATH, describe one, reset its
    offsets or delete it.

    \b
    Without --group: one line per group (or subscription) and topic: live members, committed
    partitions, lag in records and the age of the oldest record not consumed (lag_s).
    --group G: per partition its committed offset, start, end, lag and lag_s, and the live
    members (in any process).
    --reset-offsets: the new committed offsets (a dry run: nothing changes) or, with
    --execute, commits them. Refused (exit 3) while the group has a live member, as Kafka
    refuses a reset of an active group: stop its consumers first.
    --delete: removes the group's commits (exit 3 while it has a live member).
    Read-only for listing and describing: safe beside the process writing the store.

    \b
    Examples:
      logstore groups data/shop
      logstore groups data/shop --group billing
      logstore groups data/shop --group billing --topic orders --reset-offsets --to-time -1h
      logstore groups data/shop --group billing --topic orders --reset-offsets --shift-by -100 --execute
      logstore groups data/shop --subscription audit --topic orders --delete
    """
    gid = _group_id(group, subscription)
    modes = [m for m, on in (("earliest", to_earliest), ("latest", to_latest),
                             ("time", to_time is not None), ("offset", to_offset is not None),
                             ("shift", shift_by is not None)) if on]
    if (modes or partitions or execute) and not reset_offsets:
        raise click.BadParameter("--to-*, --shift-by, --partition and --execute go with "
                                 "--reset-offsets", param_hint="--reset-offsets")
    if reset_offsets and delete:
        raise click.BadParameter("choose one of --reset-offsets and --delete",
                                 param_hint="--delete")
    if topic is not None:
        validate_name("topic", topic)
    with reading_store(path) as store:
        if reset_offsets:
            if gid is None or topic is None:
                raise click.BadParameter("--reset-offsets needs --group (or --subscription) "
                                         "and --topic", param_hint="--reset-offsets")
            if len(modes) != 1:
                raise click.BadParameter("--reset-offsets needs exactly one of --to-earliest, "
                                         "--to-latest, --to-time, --to-offset, --shift-by",
                                         param_hint="--reset-offsets")
            value = {"time": None if to_time is None else parse_time(to_time, "--to-time"),
                     "offset": to_offset, "shift": shift_by}.get(modes[0])
            _reset(store, gid, topic, modes[0], value, list(partitions) or None, execute,
                   as_json)
        elif delete:
            if gid is None:
                raise click.BadParameter("--delete needs --group (or --subscription)",
                                         param_hint="--delete")
            _delete(store, gid, topic, as_json, path)
        elif gid is not None:
            _describe(store, gid, topic, as_json)
        else:
            _list(store, topic, as_json)


def _group_id(group: Optional[str], subscription: Optional[str]) -> Optional[str]:
    if group is not None and subscription is not None:
        raise click.BadParameter("choose one of --group and --subscription",
                                 param_hint="--subscription")
    if subscription is not None:
        validate_name("subscription", subscription)
        return SUBSCRIPTION_PREFIX + subscription
    if group is not None:
        try:
            validate_group(group)
        except (ConfigError, TypeError) as e:
            raise click.BadParameter(str(e), param_hint="--group") from None
    return group


def _topics_of(store: Any, gid: str, topic: Optional[str]) -> List[str]:
    found = sorted({g.topic for g in admin.list_groups(store, topic) if g.group == gid})
    if not found:
        what = _what(gid)
        raise UnknownTopicError(f"no {what}" + (f" on topic {topic!r}" if topic else ""))
    return found


def _what(gid: str) -> str:
    if gid.startswith(SUBSCRIPTION_PREFIX):
        return f"subscription {gid[len(SUBSCRIPTION_PREFIX):]!r}"
    return f"group {gid!r}"


# ---------------------------------------------------------------------------------- list
def _list(store: Any, topic: Optional[str], as_json: bool) -> None:
    if topic is not None:
        store.get_topic(topic)  # unknown topic: exit 2
    infos = admin.list_groups(store, topic)
    rows: List[Dict[str, Any]] = []
    for g in infos:
        d = admin.describe_group(store, g.group, g.topic)
        rows.append({"group": g.name, "kind": g.kind, "topic": g.topic,
                     "members": len(d["members"]),
                     "committed_partitions": sum(1 for x in d["partitions"].values()
                                                 if x["committed"] is not None),
                     "partitions": len(d["partitions"]), "lag": d["lag"], "lag_s": d["lag_s"]})
    if as_json:
        click.echo(json.dumps({"groups": rows}, indent=1))
        return
    if not rows:
        click.echo("no consumer groups or subscriptions" + (f" on topic {topic!r}" if topic
                                                            else ""))
        return
    cells = [["GROUP", "KIND", "TOPIC", "MEMBERS", "COMMITTED", "LAG", "LAG AGE"]]
    for r in rows:
        cells.append([r["group"], r["kind"], r["topic"], str(r["members"]),
                      f"{r['committed_partitions']}/{r['partitions']}", str(r["lag"]),
                      age(r["lag_s"])])
    table(_PLAIN, cells, left=(0, 1, 2))


# ---------------------------------------------------------------------------------- describe
def _describe(store: Any, gid: str, topic: Optional[str], as_json: bool) -> None:
    docs = [admin.describe_group(store, gid, t) for t in _topics_of(store, gid, topic)]
    if as_json:
        for d in docs:
            d["partitions"] = {str(p): x for p, x in d["partitions"].items()}
        click.echo(json.dumps({"group": gid, "topics": docs}, indent=1))
        return
    for i, d in enumerate(docs):
        if i:
            click.echo("")
        members = d["members"]
        click.echo(f"{_what(gid)} topic {d['topic']!r}: {len(members)} live member"
                   f"{'s' if len(members) != 1 else ''}, lag {d['lag']} records, oldest "
                   f"{age(d['lag_s'])}")
        cells = [["PARTITION", "COMMITTED", "START", "END", "LAG", "LAG AGE"]]
        for p, x in sorted(d["partitions"].items()):
            cells.append([str(p), num(x["committed"]), str(x["start_offset"]),
                          str(x["end_offset"]), num(x["lag"]), age(x["lag_s"])])
        table(_PLAIN, cells, left=())
        for m in members:
            click.echo(f"  member {m}")


# ---------------------------------------------------------------------------------- reset
def _reset(store: Any, gid: str, topic: str, mode: str, value: Optional[int],
           partitions: Optional[List[int]], execute: bool, as_json: bool) -> None:
    plan = admin.plan_reset(store, gid, topic, mode, value, partitions)
    if execute:
        admin.reset_offsets(store, gid, topic, plan)
    if as_json:
        click.echo(json.dumps({"group": gid, "topic": topic, "executed": execute,
                               "partitions": {str(p): {"committed": cur, "new": new}
                                              for p, (cur, new) in sorted(plan.items())}},
                              indent=1))
        return
    cells = [["PARTITION", "COMMITTED", "NEW"]]
    for p, (cur, new) in sorted(plan.items()):
        cells.append([str(p), num(cur), str(new)])
    table(_PLAIN, cells, left=())
    if execute:
        click.echo(f"committed: {_what(gid)} on topic {topic!r} resumes at these offsets")
    else:
        click.echo("dry run: nothing changed (--execute commits it)")


# ---------------------------------------------------------------------------------- delete
def _delete(store: Any, gid: str, topic: Optional[str], as_json: bool, path: str) -> None:
    topics = _topics_of(store, gid, topic)
    if any(store.offsets.group_offsets(gid, t) for t in topics):
        # Commits of a store from before version 2 are in the offsets log: the writer's.
        store.close()
        with writing_store(path) as writer:
            for t in topics:
                admin.delete_group(writer, gid, t)
    else:
        for t in topics:
            admin.delete_group(store, gid, t)
    if as_json:
        click.echo(json.dumps({"group": gid, "deleted": topics}))
    else:
        click.echo(f"deleted {_what(gid)} on topic{'s' if len(topics) > 1 else ''} "
                   f"{', '.join(topics)}")
