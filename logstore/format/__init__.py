"""Layer 1, the on-disk format as pure functions: bytes in, values (or errors) out.

``header`` (the 64-byte batch header, constants, CRC32C), ``encode`` (columns, zstd, framing),
``decode`` (``DecodedBatch``, random-access record extraction), ``damage`` (the torn-tail vs
corruption rules recovery and ``verify`` share), ``names`` (every file and directory name),
``queue_events`` (the work-queue event log's records and their replay),
``index_entries`` (an offset-index entry's two fields). No file I/O, no threads, no locks:
everything here mirrors a section of ``segments/FORMAT.md``, and a change here is a format
change (bump the version, update FORMAT.md and the golden files).

Imports only the foundation (``logstore.errors``, ``logstore.record``, ``logstore.fs`` for a
name).
"""
