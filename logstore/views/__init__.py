"""Layer 3, views over logs: a store of topics and what reads them.

``names`` (topic/queue/group names, partitioning), ``offsets`` (the store's compacted cursor
log), ``leases`` (per-partition lease logs of consumer groups), ``consumer`` (groups and
subscriptions), ``workqueue`` (ack/redelivery/dead letters over a topic), ``store`` (``Store``
and ``Topic``) and ``durablequeue`` (``queue.Queue`` on a store). Around them: ``counters``,
``metrics`` and ``prometheus`` (``store.metrics()`` and its text exposition), ``rpc``
(request-reply), ``breaker`` (circuit breaker), ``wakeup`` and ``aio`` (asyncio front ends),
``durableasyncqueue`` (``asyncio.Queue`` on a store). Nothing here owns bytes on disk except
through a ``storage.log.Log``. Imports ``storage``, ``format`` and the foundation.
"""
