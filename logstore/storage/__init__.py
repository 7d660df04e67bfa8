"""Layer 2, one log directory: the engine.

``lockfile`` (the writer's flock), ``meta`` (``logstore.meta`` and the clean-shutdown marker),
``index`` (sparse offset and time indexes), ``segment`` (one ``.log`` + indexes: append, locate,
scan, recover itself), ``segments`` (the ordered segment list a log and its cleaner share),
``loader`` (opening after a crash: interrupted cleanups, the active segment's recovery),
``cleaner`` (compaction over a segment list), ``sync`` (group commit), ``sizing`` (sizes derived
from the configuration, e.g. the active index capacity), ``log`` (``Log``, the public object) and
``repair`` (what ``recover --apply`` does beyond a writer's open, like etcd's ``wal.Repair``).
Imports the foundation and ``logstore.format``; never ``views`` or above.
"""
