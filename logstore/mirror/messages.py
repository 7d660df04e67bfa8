"""What the mirror writes and reads on the wire: record <-> NATS message, subjects, message ids
and JetStream publish acks. Pure functions of their arguments; needs no nats-py.

Record ``offset`` of partition ``p`` of ``topic`` becomes one message on subject
``<prefix>.<topic>.<p>`` whose payload is the record value (empty for a tombstone) and whose
headers carry the rest (README "What a message looks like"):

==============================  ===========================================================
``Nats-Msg-Id``                 ``<store id>:<topic>:<p>:<offset>``, JetStream's dedup key
``Logstore-Partition``          decimal
``Logstore-Offset``             decimal
``Logstore-Timestamp``          decimal, milliseconds
``Logstore-Key``                base64 (standard alphabet) of the key; absent: no key
``Logstore-Tombstone``          ``1`` when the value is None
``Logstore-H-<name>``           a record header whose name is a token and whose value is
                                printable ASCII without edge spaces
``Logstore-Headers``            JSON ``{name: base64(value)}`` for the other record headers
``Nats-Expected-Last-Sequence`` the sequence chain (added by the mirror when publishing)
==============================  ===========================================================
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from ..record import Record

__all__ = [
    "H_EXPECTED_LAST_SEQ",
    "H_HEADERS_B64",
    "H_HEADER_PREFIX",
    "H_KEY",
    "H_MSG_ID",
    "H_OFFSET",
    "H_PARTITION",
    "H_TIMESTAMP",
    "H_TOMBSTONE",
    "ERR_WRONG_LAST_SEQ",
    "ack_error",
    "decode_message",
    "encode_headers",
    "message_id",
    "parse_message_id",
    "subject_filter",
    "subject_for",
    "subject_matches",
]

# NATS header names written on every mirrored message.
H_PARTITION = "Logstore-Partition"
H_OFFSET = "Logstore-Offset"
H_TIMESTAMP = "Logstore-Timestamp"
H_KEY = "Logstore-Key"              # base64 (standard alphabet) of the key; absent for no key
H_TOMBSTONE = "Logstore-Tombstone"  # "1" when the record's value is None
H_HEADER_PREFIX = "Logstore-H-"     # Logstore-H-<name>: <value> for plain-text record headers
H_HEADERS_B64 = "Logstore-Headers"  # JSON {name: base64(value)} for the other record headers
H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"

# JetStream's err_code for "wrong last sequence": the Nats-Expected-Last-Sequence check failed.
ERR_WRONG_LAST_SEQ = 10071

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP/NATS header-name token


# ---------------------------------------------------------------------- subjects and ids
def subject_for(prefix: str, topic: str, partition: int) -> str:
    """The subject of the messages of ``partition``: ``<prefix>.<topic>.<partition>``."""
    return f"{prefix}.{topic}.{partition}"


def subject_filter(prefix: str, topic: str) -> str:
    """The subjects of every partition of ``topic``: ``<prefix>.<topic>.>``."""
    return f"{prefix}.{topic}.>"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: does ``pattern`` (with ``*`` / ``>`` wildcards) cover ``subject``?"""
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


def message_id(store_id: str, topic: str, partition: int, offset: int) -> str:
    """The ``Nats-Msg-Id`` of a record: ``<store id>:<topic>:<partition>:<offset>``."""
    return f"{store_id}:{topic}:{partition}:{offset}"


def parse_message_id(msg_id: str, store_id: str, topic: str) -> Optional[Tuple[int, int]]:
    """``(partition, offset)`` of a :func:`message_id` of ``store_id``'s ``topic``; None if
    ``msg_id`` is not one of theirs (another store or topic wrote it). Raises ``ValueError`` if
    it starts like one but the rest is not ``<partition>:<offset>``."""
    prefix = f"{store_id}:{topic}:"
    if not msg_id.startswith(prefix):
        return None
    tail = msg_id[len(prefix):].split(":")
    if len(tail) != 2:
        raise ValueError(f"unexpected Nats-Msg-Id {msg_id!r}")
    return int(tail[0]), int(tail[1])


# ---------------------------------------------------------------------- records
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _plain_text(value: bytes) -> Optional[str]:
    """``value`` as a header value if it is printable ASCII without edge spaces, else None."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text or text != text.strip() or not text.isprintable():
        return None
    return text


def encode_headers(topic: str, partition: int, rec: Record, store_id: str) -> Dict[str, str]:
    """The NATS headers the mirror writes for ``rec`` (without the sequence-chain header)."""
    h = {
        H_MSG_ID: message_id(store_id, topic, partition, rec.offset),
        H_PARTITION: str(partition),
        H_OFFSET: str(rec.offset),
        H_TIMESTAMP: str(rec.timestamp_ms),
    }
    if rec.key is not None:
        h[H_KEY] = _b64(rec.key)
    if rec.value is None:
        h[H_TOMBSTONE] = "1"
    if rec.headers:
        coded = {}
        for name, value in rec.headers.items():
            text = _plain_text(bytes(value)) if _TOKEN.match(name) else None
            hname = H_HEADER_PREFIX + name
            if text is not None and hname not in h:
                h[hname] = text
            else:
                coded[name] = _b64(bytes(value))
        if coded:
            h[H_HEADERS_B64] = json.dumps(coded, ensure_ascii=True, separators=(",", ":"))
    return h


def decode_message(headers: Optional[Mapping[str, str]], data: bytes) -> Record:
    """Rebuild the logstore :class:`Record` (with ``partition`` set) from a mirrored message.

    ``headers``/``data`` are a NATS message's ``headers`` and ``data`` (e.g. from a JetStream
    consumer or ``js.get_msg``). Raises ``ValueError`` if it is not a message of a mirror.
    """
    h = dict(headers or {})
    try:
        partition = int(h[H_PARTITION])
        offset = int(h[H_OFFSET])
        ts = int(h[H_TIMESTAMP])
    except (KeyError, ValueError):
        raise ValueError("not a logstore mirror message (Logstore-* headers missing)") from None
    key = base64.b64decode(h[H_KEY]) if H_KEY in h else None
    value = None if h.get(H_TOMBSTONE) == "1" else bytes(data or b"")
    rec_headers: Dict[str, bytes] = {}
    for name, text in h.items():
        if name.startswith(H_HEADER_PREFIX):
            rec_headers[name[len(H_HEADER_PREFIX):]] = text.encode("ascii")
    if H_HEADERS_B64 in h:
        for name, b in json.loads(h[H_HEADERS_B64]).items():
            rec_headers[name] = base64.b64decode(b)
    return Record(offset, ts, key, value, rec_headers, partition)


# ---------------------------------------------------------------------- publish acks
def ack_error(headers: Optional[Mapping[str, str]], data: bytes, partition: int, offset: int,
              expected_seq: int, stream: str) -> Optional[str]:
    """Read JetStream's reply to the publish of ``offset`` of ``partition``: None if the stream
    stored it at ``expected_seq``, else why not (for the mirror's ``last_error``).

    The reply is a status-only message (``503``: no responder, i.e. no stream leader) or a JSON
    publish ack ``{"stream": ..., "seq": N}`` / ``{"error": {"description": ..., "err_code":
    ...}}``. A stored sequence other than ``expected_seq`` means something else published into
    the stream.
    """
    hdrs = headers or {}
    status = hdrs.get("Status")
    if status is not None and not data:
        if status == "503":
            return "no JetStream responder for the stream's subjects (stream leader unavailable?)"
        return f"status {status} {hdrs.get('Description', '')}".strip()
    try:
        resp: Any = json.loads(data)
    except ValueError:
        resp = None
    if not isinstance(resp, dict):
        resp = {"error": {"description": f"unreadable ack {data[:100]!r}"}}
    err = resp.get("error")
    if err:
        if err.get("err_code") == ERR_WRONG_LAST_SEQ:
            return ("a message before offset %d of partition %d was lost in transit "
                    "(JetStream: %s); resyncing" % (offset, partition, err.get("description")))
        return (f"JetStream refused offset {offset} of partition {partition}: "
                f"{err.get('description')} (err_code {err.get('err_code')})")
    if resp.get("seq") != expected_seq:
        return (f"offset {offset} of partition {partition} was stored at stream sequence "
                f"{resp.get('seq')}, expected {expected_seq}: something else published into "
                f"stream {stream!r}; resyncing")
    return None
