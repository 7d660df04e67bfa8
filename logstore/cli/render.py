"""Records of whole stored batches as output bytes, a batch at a time (``replay``, ``consume``).

``replay`` and ``consume`` write what ``output.record_json`` / the raw formats describe, but from
the columns of a :class:`~logstore.format.decode.DecodedBatch` instead of one ``Record`` and one
``json.dumps`` per record: numbers come from the numpy columns (``tolist``), keys and values are
sliced out of the batch's one buffer and base64-encoded or JSON-escaped by C-level ``map`` calls,
and each line is one ``bytes % tuple``. Raw values of a batch are one slice of its buffer (values
are stored back to back, in record order), with newlines or length prefixes put in by numpy.

The output is byte for byte what the per-record path writes (``tests/test_cli_render.py``
checks it on random batches); batches the fast path does not cover (text mode with headers or
bytes that are not UTF-8) take the per-record path, ``output.record_json``.
"""

from __future__ import annotations

import binascii
import json
from functools import lru_cache, partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .output import dumps, record_json

#: A length prefix of ``--length-prefixed`` raw output/input: 4 bytes, big-endian; this value
#: marks a tombstone (no bytes follow).
TOMBSTONE_LENGTH = 0xFFFFFFFF

_b64 = partial(binascii.b2a_base64, newline=False)
_quoted = b'"%s"'.__mod__
# The C encoder json.dumps(str, ensure_ascii=False) uses: quotes and escapes.
_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]


def prefix(where: Dict[str, Any]) -> bytes:
    """The start of every JSON line of one log: ``{`` and the fields naming it in a store."""
    if not where:
        return b"{"
    return dumps(where)[:-1].encode("utf-8") + b", "


def bounds(batch: Any, start: int, stop: int) -> Tuple[int, int]:
    """Indexes ``[j, k)`` of the batch's records with offsets in ``[start, stop)``."""
    h = batch.header
    j = batch.index_of(start) if h.base_offset < start else 0
    k = batch.index_of(stop) if h.last_offset >= stop else len(batch)
    return j, k


# ---------------------------------------------------------------------------------- raw
def raw(batch: Any, j: int, k: int, framing: str = "none") -> Any:
    """The values of records ``[j, k)`` as raw output: back to back (``framing="none"``; a
    tombstone writes nothing), each followed by ``\\n`` (``"newline"``), or each preceded by its
    4-byte big-endian length (``"length"``; :data:`TOMBSTONE_LENGTH` for a tombstone)."""
    if j >= k:
        return b""
    vl = np.asarray(batch.value_lengths[j:k], dtype=np.int64)
    sizes = np.maximum(vl, 0)
    first = int(batch.value_offsets[j])
    total = int(sizes.sum())
    data = batch.values_buffer[first : first + total]  # stored back to back, in record order
    if framing == "none":
        return data
    n = k - j
    src = np.frombuffer(data, dtype=np.uint8)
    if framing == "newline":
        out = np.empty(total + n, dtype=np.uint8)
        ends = np.cumsum(sizes + 1) - 1  # where each record's "\n" goes
        keep = np.ones(total + n, dtype=bool)
        keep[ends] = False
        out[ends] = 10
        out[keep] = src
        return out.tobytes()
    if framing != "length":
        raise ValueError(f"unknown framing {framing!r}")
    out = np.empty(total + 4 * n, dtype=np.uint8)
    starts = np.cumsum(sizes + 4) - (sizes + 4)  # where each record's prefix starts
    heads = (starts[:, None] + np.arange(4)).ravel()
    keep = np.ones(total + 4 * n, dtype=bool)
    keep[heads] = False
    out[heads] = np.where(vl < 0, TOMBSTONE_LENGTH, vl).astype(">u4").view(np.uint8)
    out[keep] = src
    return out.tobytes()


# ---------------------------------------------------------------------------------- jsonl
def _pieces(data: bytes, offs: Any, lens: Any, encode: Any) -> List[Any]:
    """Each ``data[off : off + len]`` (numpy columns) passed through ``encode`` (a function,
    or a tuple of functions applied in turn: C-level ``map`` calls, no Python frame per
    record), None for a length < 0 (no key, a tombstone)."""
    lens_list = lens.tolist()
    steps = encode if isinstance(encode, tuple) else (encode,)
    if not len(lens_list) or min(lens_list) >= 0:
        it: Any = map(data.__getitem__, map(slice, offs.tolist(), (offs + lens).tolist()))
        for step in steps:
            it = map(step, it)
        return list(it)
    out = []
    for o, n in zip(offs.tolist(), lens_list):
        if n < 0:
            out.append(None)
            continue
        piece: Any = data[o : o + n]
        for step in steps:
            piece = step(piece)
        out.append(piece)
    return out


def _field(name: str, pieces: Optional[List[Any]], text: bool) -> Tuple[str, Any]:
    """The template of one bytes field (``"key": ...``) and what fills it: quoted in the
    template when no record lacks it, ``null`` when none has it, else per record."""
    if pieces is None:
        return f'"{name}": null', None
    if None not in pieces:
        return f'"{name}": %s' if text else f'"{name}": "%s"', pieces
    if text:
        return f'"{name}": %s', ["null" if p is None else p for p in pieces]
    return f'"{name}": %s', [b"null" if p is None else b'"%s"' % p for p in pieces]


def jsonl(batch: Any, j: int, k: int, mode: str, start: bytes = b"{") -> bytes:
    """Records ``[j, k)`` as JSON lines, exactly as ``json.dumps(record_json(rec, mode))`` +
    ``\\n`` per record, led by ``start`` (:func:`prefix`). ``mode``: ``"base64"`` or
    ``"text"``."""
    if j >= k:
        return b""
    data = batch.values_buffer
    data = data if type(data) is bytes else bytes(data)
    hl_arr = batch.header_lengths
    has_headers = hl_arr is not None and bool(np.any(hl_arr[j:k]))
    text = mode == "text"
    if text and has_headers:
        return _slow(batch, j, k, mode, start)
    kl = batch.key_lengths
    encode = (bytes.decode, _json_str) if text else _b64
    try:
        values = _pieces(data, batch.value_offsets[j:k], batch.value_lengths[j:k], encode)
        keys = None if kl is None else _pieces(data, batch.key_offsets[j:k], kl[j:k],
                                               _key_str if text else _key_b64)
    except UnicodeDecodeError:  # some bytes are not UTF-8: base64 with a marker, per record
        return _slow(batch, j, k, mode, start)
    kt, kcol = _field("key", keys, text)
    vt, vcol = _field("value", values, text)
    cols: List[Any] = [batch.offsets[j:k].tolist(), batch.timestamps[j:k].tolist()]
    cols += [c for c in (kcol, vcol) if c is not None]
    if has_headers:
        cols.append([b"{}" if not n else json.dumps(
            {name: _b64(v).decode("ascii") for name, v in batch.headers(i).items()},
            ensure_ascii=False).encode("utf-8") for i, n in zip(range(j, k), hl_arr[j:k].tolist())])
        ht = '"headers": %s}\n'
    else:
        ht = '"headers": {}}\n'
    line = f'"offset": %d, "timestamp_ms": %d, {kt}, {vt}, {ht}'
    if text:
        return "".join(map((start.decode("utf-8") + line).__mod__, zip(*cols))).encode("utf-8")
    return b"".join(map((start + line.encode("ascii")).__mod__, zip(*cols)))


def _str(b: bytes) -> str:
    """A value as a JSON string (UnicodeDecodeError: not UTF-8)."""
    return _json_str(b.decode("utf-8"))


_key_str = lru_cache(maxsize=4096)(_str)  # keys repeat (users, ids): encode each once
_key_b64 = lru_cache(maxsize=4096)(_b64)


def _slow(batch: Any, j: int, k: int, mode: str, start: bytes) -> bytes:
    """The per-record path (``record_json``) for what :func:`jsonl` does not cover."""
    body = start[1:].decode("utf-8")
    out = []
    for rec in batch.records(j, k):
        text = dumps(record_json(rec, mode))
        out.append("{" + body + text[1:] + "\n" if body else text + "\n")
    return "".join(out).encode("utf-8", "backslashreplace")


def records_jsonl(recs: Sequence[Any], mode: str, start: bytes = b"{") -> bytes:
    """Records (``Record`` objects, e.g. a consumer's poll) as JSON lines, as :func:`jsonl`."""
    body = start[1:].decode("utf-8")
    return "".join(("{" + body + dumps(record_json(r, mode))[1:] + "\n") if body else
                   dumps(record_json(r, mode)) + "\n" for r in recs).encode(
        "utf-8", "backslashreplace")
