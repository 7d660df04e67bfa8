"""Mirroring a topic into NATS JetStream (needs the optional ``nats-py``: ``logstore[nats]``).

``JetStreamMirror`` copies every record of a topic's partitions into a JetStream stream,
exactly once and in order per partition, with the local store as the durable outbox;
``MirrorConfig`` holds its options; ``decode_message`` turns a mirrored message back into a
:class:`~logstore.Record`.

Modules, in import order: ``config`` (MirrorConfig) and ``messages`` (record <-> NATS message),
which need no nats-py; ``nats_api`` (the optional nats-py import, in one place); ``stream``
(check/create the stream, read where it ends); ``jetstream`` (the mirror itself); ``runner``
(``run_mirror_cli``, what ``logstore mirror`` runs).
"""

from ..errors import MirrorError
from .config import MirrorConfig
from .jetstream import JetStreamMirror
from .messages import decode_message, encode_headers

__all__ = ["JetStreamMirror", "MirrorConfig", "MirrorError", "decode_message", "encode_headers"]
