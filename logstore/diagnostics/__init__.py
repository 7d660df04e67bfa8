"""Layer 4, read-only inspection of logs and stores: what ``verify``, ``dump``, ``stats`` and
``recover``'s dry run read. Never writes, creates, renames or deletes a file, never takes the
writer's lock and never maps a file, so it is safe beside a running writer in another process.

Modules, each with one job (lower ones first; each imports only those before it):

* ``targets``: what a PATH names: a log directory, a ``.log`` segment file, a store root or a
  topic directory, expanded into :class:`~.targets.Target` logs; their segment files; whether a
  writer holds a log's lock (read from ``/proc/locks``, never probed).
* ``reader``: pread-based byte access to a segment file (a
  ``logstore.format.damage.ByteSource``) and whole-file reads of index files.
* ``scan``: walking a log's batches as events (segment start, batch, error, segment end), with
  errors classified by the engine's torn-tail rules (``logstore.format.damage``).
* ``indexes``: checking the offset and time indexes against the batches found.
* ``report``: :func:`~.report.inspect_log`, a log's :class:`~.report.LogReport` (segments,
  totals, problems with their repair, warnings), the marker and leftover-file checks.
* ``store_stats``: a store's topics, groups and lag, work-queue depth (the queue's event log
  folded by ``logstore.format.queue_events``), internal logs.
* ``repair_plan``: what ``recover`` would do (applying it is ``logstore.storage.repair``).

Uses the format rules of ``logstore.format`` and may open logs and stores read-only through
``logstore.storage``/``logstore.views``.
"""
