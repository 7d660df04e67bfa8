"""``logstore queue``: a work queue of a store, like an SQS or RabbitMQ console: its figures
(``stats``), the next messages not yet done (``peek``), its dead letters (``dlq``), moving them
back (``redrive``) and dropping every message not yet done (``purge``).

``stats``, ``peek`` and ``dlq`` open the store read-only (safe beside the writing process: the
queue's state is folded from its event log). ``redrive`` and ``purge`` need the writer's lock
(exit 3 while a writer has the store open). ``purge`` asks first on a terminal; elsewhere it
needs ``--yes``. It is one checkpoint record in the queue's event log: atomic and crash-safe
(:func:`logstore.views.admin.purge_queue`).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional

import click

from ..errors import UnknownTopicError
from ..format.names import REDRIVE_GROUP
from ..views import admin
from ..views.metrics import queue_names
from ..views.names import validate_name
from ..views.workqueue import DLQ_COUNT, DLQ_REASON, DLQ_SOURCE
from .common import EXIT_USAGE, CommandExit, error, operator, path_arg, reading_store, writing_store
from .output import Indented, age, dumps, isatty, iso, record_json, table, text_bytes

_PLAIN = Indented("")
ACTIONS = ("stats", "peek", "dlq", "redrive", "purge")


@click.command("queue")
@path_arg
@click.argument("name")
@click.argument("action", type=click.Choice(ACTIONS), default="stats")
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True,
              help="peek, dlq: how many messages.")
@click.option("--all", "show_all", is_flag=True,
              help="dlq: also the dead letters redriven already.")
@click.option("--max", "max_messages", type=click.IntRange(min=1), default=None,
              help="redrive: at most N messages.")
@click.option("--dead-letter", default=None, metavar="TOPIC",
              help="The queue's dead-letter topic (default NAME.dlq).")
@click.option("--yes", "-y", is_flag=True, help="purge: do not ask.")
@click.option("--values", type=click.Choice(["text", "base64", "hex", "none"]), default="text",
              show_default=True, help="peek, dlq: how values are printed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator
def queue(path: str, name: str, action: str, count: int, show_all: bool,
          max_messages: Optional[int], dead_letter: Optional[str], yes: bool, values: str,
          as_json: bool) -> None:
    """Work queue NAME of the store PATH: ACTION is stats (default), peek, dlq, redrive or
    purge.

    \b
    stats    depth (ready), in flight, delayed, not done in all, dead letters not redriven,
             age of the oldest message not done (read-only)
    peek     the next -n messages not yet done, oldest first, with their state and
             deliveries so far (read-only; nothing is delivered)
    dlq      the dead letters not yet redriven (--all: every one), with the headers the
             queue added: x-dead-letter-reason, x-delivery-count, x-dead-letter-source
    redrive  move the dead letters back into the queue (--max N), a fresh delivery count
    purge    mark every message not yet done done (asks first; --yes on a pipe); retention
             then deletes them like acked ones. Published later: not affected

    \b
    Examples:
      logstore queue data/shop jobs
      logstore queue data/shop jobs peek -n 5
      logstore queue data/shop jobs dlq --json
      logstore queue data/shop jobs redrive --max 100
      logstore queue data/shop jobs purge --yes
    """
    validate_name("queue", name)
    dlq = dead_letter if dead_letter is not None else f"{name}.dlq"
    validate_name("topic", dlq)
    if action in ("redrive", "purge"):
        _change(path, name, action, dlq, max_messages, yes, as_json)
        return
    with reading_store(path) as store:
        if name not in queue_names(store.root):
            raise UnknownTopicError(f"no work queue {name!r} in {store.root}")
        if action == "stats":
            _stats(store, name, as_json)
        elif action == "peek":
            _peek(store, name, count, values, as_json)
        else:
            _dlq(store, name, dlq, count, show_all, values, as_json)


# ---------------------------------------------------------------------------------- read-only
def _stats(store: Any, name: str, as_json: bool) -> None:
    fig = store.metrics(topics=[name])["queues"][name]
    if "error" in fig:
        raise UnknownTopicError(fig["error"])
    if as_json:
        click.echo(json.dumps({"queue": name, **fig}, indent=1, sort_keys=True))
        return
    click.echo(f"queue {name!r}")
    for label, key in (("ready", "depth"), ("in flight", "in_flight"), ("delayed", "delayed"),
                       ("not done", "total"), ("dead letters", "dead_lettered")):
        click.echo(f"  {label:<13}{fig.get(key, 0)}")
    click.echo(f"  {'oldest':<13}{age(fig.get('oldest_age_s'))}")
    if fig.get("dead_letter_topic"):
        click.echo(f"  {'dead-letter':<13}{fig['dead_letter_topic']}")


def _message_doc(rec: Any, values: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    doc = dict(extra)
    doc.update(record_json(rec, "text" if values in ("text", "none") else values))
    if values == "none":
        doc.pop("value", None)
        doc.pop("value_encoding", None)
    return doc


def _peek(store: Any, name: str, count: int, values: str, as_json: bool) -> None:
    msgs = admin.pending_messages(store, name, count)
    if as_json:
        click.echo(json.dumps({"queue": name, "messages": [
            _message_doc(m["record"], values, {"id": m["id"], "partition": m["partition"],
                                               "state": m["state"],
                                               "deliveries": m["deliveries"],
                                               "not_before_ms": m["not_before_ms"]})
            for m in msgs]}, indent=1))
        return
    if not msgs:
        click.echo(f"queue {name!r}: no message waiting")
        return
    cells = [["ID", "STATE", "DELIVERIES", "TIME", "KEY", "VALUE"]]
    for m in msgs:
        rec = m["record"]
        cells.append([m["id"], m["state"], str(m["deliveries"]), iso(rec.timestamp_ms),
                      text_bytes(rec.key, "text"), _value(rec.value, values)])
    table(_PLAIN, cells, left=(0, 1, 3, 4, 5))


def _value(v: Optional[bytes], mode: str, width: int = 60) -> str:
    if mode == "none":
        return "-" if v is None else f"({len(v)} bytes)"
    text = text_bytes(v, mode)
    return text if len(text) <= width else text[: width - 3] + "..."


def _dlq(store: Any, name: str, dlq: str, count: int, show_all: bool, values: str,
         as_json: bool) -> None:
    if dlq not in store.topics():
        if as_json:
            click.echo(json.dumps({"queue": name, "dead_letter_topic": dlq, "dead_letters": []}))
        else:
            click.echo(f"queue {name!r}: no dead-letter topic {dlq!r} (nothing dead-lettered)")
        return
    log = store.get_topic(dlq).partitions[0]
    cursor = store.offsets.get(REDRIVE_GROUP + name, dlq, 0) or 0
    start = log.start_offset if show_all else max(cursor, log.start_offset)
    recs: List[Any] = log.read(start, max_records=count) if start < log.end_offset else []
    docs = []
    for rec in recs:
        h = rec.headers
        docs.append({"reason": _header(h, DLQ_REASON), "deliveries": _header(h, DLQ_COUNT),
                     "source": _header(h, DLQ_SOURCE), "redriven": rec.offset < cursor,
                     "record": rec})
    waiting = max(0, log.end_offset - max(cursor, log.start_offset))
    if as_json:
        click.echo(json.dumps({"queue": name, "dead_letter_topic": dlq, "not_redriven": waiting,
                               "dead_letters": [_message_doc(d.pop("record"), values, d)
                                                for d in docs]}, indent=1))
        return
    click.echo(f"queue {name!r}: {waiting} dead letter{'s' if waiting != 1 else ''} not "
               f"redriven in {dlq!r}")
    if not docs:
        return
    cells = [["OFFSET", "TIME", "REASON", "DELIVERIES", "SOURCE", "KEY", "VALUE"]]
    for d in docs:
        rec = d["record"]
        cells.append([str(rec.offset) + (" (redriven)" if d["redriven"] else ""),
                      iso(rec.timestamp_ms), d["reason"] or "-", d["deliveries"] or "-",
                      d["source"] or "-", text_bytes(rec.key, "text"), _value(rec.value, values)])
    table(_PLAIN, cells, left=(0, 1, 2, 4, 5, 6))


def _header(h: Dict[str, bytes], name: str) -> Optional[str]:
    v = h.get(name)
    return None if v is None else v.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------- changes
def _change(path: str, name: str, action: str, dlq: str, max_messages: Optional[int],
            yes: bool, as_json: bool) -> None:
    with writing_store(path) as store:
        if name not in queue_names(store.root):
            raise UnknownTopicError(f"no work queue {name!r} in {store.root}")
        if action == "redrive":
            if dlq not in store.topics():
                moved = 0
            else:
                q = store.queue(name, dead_letter=dlq)
                try:
                    moved = q.redrive(max_messages)
                finally:
                    q.close()
            if as_json:
                click.echo(dumps({"queue": name, "redriven": moved}))
            else:
                click.echo(f"redrove {moved} message{'s' if moved != 1 else ''} from {dlq!r} "
                           f"into queue {name!r}")
            return
        fig = store.metrics(topics=[name])["queues"][name]
        waiting = fig.get("total", 0)
        if not yes:
            if not isatty(sys.stdin):
                error(f"purge drops {waiting} messages of queue {name!r} for good: confirm "
                      f"with --yes")
                raise CommandExit(EXIT_USAGE)
            if not click.confirm(f"Purge queue {name!r}: {waiting} messages not yet done are "
                                 f"dropped for good. Continue?", default=False, err=True):
                error("purge cancelled: nothing changed")
                raise CommandExit(EXIT_USAGE)
        purged = admin.purge_queue(store, name)
    if as_json:
        click.echo(dumps({"queue": name, "purged": purged}))
    else:
        click.echo(f"purged {purged} message{'s' if purged != 1 else ''} of queue {name!r}")
