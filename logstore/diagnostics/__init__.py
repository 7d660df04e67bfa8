"""Layer 4, read-only inspection of logs and stores: what ``verify``, ``dump``, ``stats`` and
``recover``'s dry run read. Never changes a file; safe beside a running writer. Uses the same
format rules as the engine (``logstore.format``) and may use ``storage``/``views`` to read.
"""
