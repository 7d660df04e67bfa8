"""``logstore config``: print or change the settings stored with a log or a store's topic."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import click

from ..config import SHAPING_SETTINGS
from ..errors import NotALogError, UnknownTopicError
from ..format.names import META_NAME, STORE_META, partition_dir
from ..storage.loader import settled_config
from ..storage.log import Log
from ..storage.meta import read_meta
from ..views.names import validate_name
from .common import open_store, operator, parse_options, path_arg


@click.command("config")
@path_arg
@click.option("--topic", default=None, metavar="NAME",
              help="PATH is a store root: the settings of topic NAME.")
@click.option("--option", "-o", "options", multiple=True, metavar="NAME=VALUE",
              help=f"Change a setting (repeatable): {', '.join(SHAPING_SETTINGS)}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator
def config(path: str, topic: Optional[str], options: Tuple[str, ...], as_json: bool) -> None:
    """Print the settings stored with the log PATH (or topic NAME of the store PATH), or
    change them with -o NAME=VALUE. They shape what is kept (retention, cleanup policy,
    compression, segment size...) and apply at every open; changing one needs the writer's
    lock (exit 3 while a writer has the log or store open).

    \b
    Examples:
      logstore config data/orders
      logstore config data/orders -o retention_ms=86400000 -o compression=zstd
      logstore config data/shop --topic orders -o cleanup_policy=compact --json
    """
    changes = parse_options(options)
    if topic is not None:
        settings = _topic_settings(path, topic, changes)
    else:
        settings = _log_settings(path, changes)
    if as_json:
        click.echo(json.dumps({"path": path, "topic": topic, "settings": settings}, indent=1))
        return
    for name in SHAPING_SETTINGS:
        click.echo(f"{name} = {settings.get(name)!r}")


def _log_settings(path: str, changes: Dict[str, Any]) -> Dict[str, Any]:
    if not os.path.isfile(os.path.join(path, META_NAME)):
        raise NotALogError(f"{path} is not a log directory (no {META_NAME}); a store root "
                           f"needs --topic NAME")
    if not changes:
        return settled_config(path, {}, read_meta(path)).settings()
    with Log.open(path, retention_check_interval_s=0) as log:
        log.configure(**changes)
        return log.settings


def _topic_settings(root: str, topic: str, changes: Dict[str, Any]) -> Dict[str, Any]:
    validate_name("topic", topic)
    if not os.path.isfile(os.path.join(root, STORE_META)):
        raise NotALogError(f"{root} is not a store root (no {STORE_META})")
    partition0 = partition_dir(root, topic, 0)
    if not os.path.isfile(os.path.join(partition0, META_NAME)):
        raise UnknownTopicError(f"no topic {topic!r} in {root}")
    if not changes:
        return settled_config(partition0, {}, read_meta(partition0)).settings()
    store = open_store(root, {})
    try:
        t = store.get_topic(topic)
        t.configure(**changes)
        return t.settings
    finally:
        store.close()
