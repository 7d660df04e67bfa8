"""The mirror's JetStream stream: check it (creating it if missing) and read where it ends.

Stateless coroutines over a connected nats-py client (``nc``) and its JetStream context
(``js``); :class:`~logstore.mirror.jetstream.JetStreamMirror` calls them after every connect
(:func:`ensure_stream`) and before every publishing run (:func:`stream_position`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Optional, Tuple

from ..errors import ConfigError, MirrorError
from .config import MirrorConfig
from .messages import H_MSG_ID, parse_message_id, subject_filter, subject_for, subject_matches
from .nats_api import StorageType, StreamConfig, js_errors

__all__ = ["cluster_size", "ensure_stream", "last_offset", "stream_position"]

log = logging.getLogger("logstore.mirror")

_ERR_STREAM_NAME_IN_USE = 10058
_RESYNC_ATTEMPTS = 5
_CONCURRENT_LOOKUPS = 64


def cluster_size(nc: Any) -> int:
    """Nodes in the cluster of the server ``nc`` is connected to (1 if it is not clustered)."""
    # nats-py has no public accessor for the server's INFO (whose "cluster" and
    # "connect_urls" tell the cluster's size); its Client keeps it in _server_info.
    # getattr with a default: a client without it counts as one node (replicas 1).
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or [])))


async def ensure_stream(nc: Any, js: Any, config: MirrorConfig, topic: str) -> int:
    """Check that ``config.stream`` exists (creating it if missing and ``config.create_stream``)
    and can hold the mirror of ``topic``: its subjects cover the topic's, its
    ``duplicate_window`` outlasts the retry horizon, and it is not sealed, ``no_ack`` or a NATS
    mirror stream. Returns its replica count; raises ``ConfigError`` for what does not fit."""
    stream = config.stream
    filt = subject_filter(config.subject_prefix, topic)
    try:
        info = await js.stream_info(stream)
    except js_errors.NotFoundError:
        if not config.create_stream:
            raise ConfigError(f"JetStream stream {stream!r} does not exist "
                              f"(create_stream=False)") from None
        info = await _create_stream(nc, js, config, topic, filt)
    cfg = info.config
    subjects = list(cfg.subjects or [])
    first = subject_for(config.subject_prefix, topic, 0)
    if not any(subject_matches(s, first) for s in subjects):
        raise ConfigError(f"JetStream stream {stream!r} has subjects {subjects}, which "
                          f"do not include {filt!r}")
    window = float(cfg.duplicate_window or 0)
    config.check_dedup_window(window, f"the duplicate_window of stream {stream!r}")
    if cfg.sealed or cfg.no_ack:
        raise ConfigError(f"JetStream stream {stream!r} is sealed or has no_ack set")
    if cfg.mirror is not None:
        raise ConfigError(f"JetStream stream {stream!r} is itself a NATS mirror stream")
    return cfg.num_replicas


async def _create_stream(nc: Any, js: Any, config: MirrorConfig, topic: str, filt: str) -> Any:
    stream = config.stream
    replicas = config.replicas
    if replicas is None:
        replicas = 3 if cluster_size(nc) >= 3 else 1
    while True:
        stream_config = StreamConfig(name=stream, subjects=[filt], num_replicas=replicas,
                                     storage=StorageType.FILE,
                                     duplicate_window=config.dedup_window_s,
                                     description=f"logstore mirror of topic {topic}")
        try:
            info = await js.add_stream(stream_config)
            log.info("logstore mirror: created stream %s (%s, R%d)", stream, filt, replicas)
            return info
        except js_errors.BadRequestError as e:
            # An existing stream created concurrently, or replicas the server cannot host.
            if getattr(e, "err_code", None) == _ERR_STREAM_NAME_IN_USE:
                return await js.stream_info(stream)
            if config.replicas is None and replicas > 1 and "replica" in str(e).lower():
                replicas = 1
                continue
            raise ConfigError(f"cannot create JetStream stream {stream!r}: {e}") from None
        except js_errors.ServerError as e:
            if config.replicas is None and replicas > 1 and "resources" in str(e).lower():
                replicas = 1
                continue
            raise


async def last_offset(js: Any, stream: str, subject: str, store_id: str, topic: str,
                      partition: int) -> Optional[int]:
    """The offset of the last message the stream holds on ``subject`` (partition
    ``partition`` of ``topic``), None if it holds none. ``ConfigError`` if another store or
    topic wrote it; ``MirrorError`` if its ``Nats-Msg-Id`` does not parse."""
    try:
        msg = await js.get_last_msg(stream, subject)
    except js_errors.NotFoundError:
        return None
    mid = (msg.headers or {}).get(H_MSG_ID, "")
    try:
        found = parse_message_id(mid, store_id, topic)
    except ValueError:
        found = (-1, -1)
    if found is None:
        raise ConfigError(
            f"subject {subject!r} of stream {stream!r} holds messages that "
            f"are not from this store (last Nats-Msg-Id {mid!r}, this store's id is "
            f"{store_id}): use another stream or subject_prefix")
    if found[0] != partition:
        raise MirrorError(f"unexpected Nats-Msg-Id {mid!r} on {subject!r}")
    return found[1]


async def stream_position(js: Any, stream: str, subjects: List[str], store_id: str,
                          topic: str) -> Optional[Tuple[int, List[Optional[int]]]]:
    """``(last stream sequence, [last mirrored offset of each partition])``, read as one
    consistent snapshot: the sequence before and after the per-partition lookups must agree
    (retried a few times). None if the stream kept changing (something else publishes)."""
    for _attempt in range(_RESYNC_ATTEMPTS):
        before = (await js.stream_info(stream)).state.last_seq
        lasts: List[Optional[int]] = []
        for i in range(0, len(subjects), _CONCURRENT_LOOKUPS):
            lasts.extend(await asyncio.gather(*(
                last_offset(js, stream, subjects[p], store_id, topic, p)
                for p in range(i, min(i + _CONCURRENT_LOOKUPS, len(subjects))))))
        after = (await js.stream_info(stream)).state.last_seq
        if before == after:
            return after, lasts
    return None
