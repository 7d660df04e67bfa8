"""Mirroring a topic into NATS JetStream (needs the optional ``nats-py``: ``logstore[nats]``).

``JetStreamMirror`` copies every record of a topic's partitions into a JetStream stream,
exactly once and in order per partition, with the local store as the durable outbox;
``decode_message`` turns a mirrored message back into a :class:`~logstore.Record`.
"""

from ..errors import MirrorError
from .jetstream import JetStreamMirror, decode_message, encode_headers

__all__ = ["JetStreamMirror", "MirrorError", "decode_message", "encode_headers"]
