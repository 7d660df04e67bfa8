"""Stream processing over a store's topics, embedded: stateless and windowed, exactly-once.

    import logstore
    from logstore import processing as lp

    store = logstore.Store.open("data/shop")
    app = lp.Processor(store, "per-user-minute")
    (app.stream("orders", value=lp.JSON)
        .key_by(lambda order: order["user"])
        .tumbling_window(60_000, grace_ms=5_000)
        .agg(events=lp.Count(), total=lp.Sum(lambda order: order["amount"]))
        .final()
        .to("orders-per-minute", value=lp.JSON))
    app.run(until_caught_up=True)

See README, "Stream processing", for the API and the exactly-once design, and
``segments/FORMAT.md``, "Processing: output and changelog records", for what is stored.
"""

from .aggregations import Agg, Aggregation, Count, Max, Mean, Min, Reduce, Sum
from .dsl import Stream, Table, Window, Windowed
from .nodes import State
from .processor import ProcessingError, Processor, StateLimitError
from .serde import BYTES, JSON, PICKLE, STR, Serde
from .status import describe, read_state

__all__ = [
    "Processor", "Stream", "Table", "Window", "Windowed", "State",
    "Aggregation", "Count", "Sum", "Min", "Max", "Mean", "Reduce", "Agg",
    "Serde", "BYTES", "STR", "JSON", "PICKLE",
    "describe", "read_state", "ProcessingError", "StateLimitError",
]
