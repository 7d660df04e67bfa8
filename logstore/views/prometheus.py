"""The Prometheus text exposition format (version 0.0.4) of ``store.metrics()``.

No dependency: the format is plain text (``# HELP``, ``# TYPE``, one sample per line). Every
metric is named ``logstore_<entity>_<figure>`` with the entity's names as labels; counters end in
``_total``; durations and ages are in seconds. Process-local figures (see
:mod:`logstore.views.metrics`) appear only when the figures were computed in the process that
does the work.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

#: Content-Type of the exposition (what a scrape endpoint answers with).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "topic_records": "Records in the topic (end offset - start offset, summed over partitions).",
    "topic_rate_in": "Records appended per second over the last minute (record timestamps).",
    "partition_start_offset": "First offset still in the partition.",
    "partition_end_offset": "Next offset to be assigned in the partition.",
    "partition_records": "Records in the partition.",
    "partition_rate_in": "Records appended per second over the last minute.",
    "group_lag": "Records after the committed offsets (all partitions).",
    "group_lag_seconds": "Age of the oldest record not yet committed.",
    "group_partition_committed_offset": "Committed offset (next record to read).",
    "group_partition_lag": "Records after the committed offset.",
    "group_partition_lag_seconds": "Age of the oldest record after the committed offset.",
    "group_polled_total": "Records polled by this process's members since they joined.",
    "group_rate_out": "Records polled per second over the last minute (this process).",
    "group_errors_total": "Errors raised by polls in this process.",
    "queue_depth": "Messages ready to be delivered.",
    "queue_in_flight": "Messages delivered and not yet acked.",
    "queue_delayed": "Messages waiting for a retry time (nack) or a delay.",
    "queue_not_done": "Messages neither acked nor dead-lettered.",
    "queue_dead_lettered": "Messages in the dead-letter topic not yet redriven.",
    "queue_oldest_age_seconds": "Age of the oldest message not yet done (the queue's lag).",
    "queue_rate_in": "Messages put per second over the last minute.",
    "queue_rate_out": "Messages acked per second over the last minute (this process).",
    "queue_processing_seconds": "Time from get to ack of acked messages (recent ones).",
    "queue_error": "1: the queue's figures could not be computed (see logstore metrics --json).",
}

# figure key -> metric suffix, for the entities whose figures are fixed
_TOPIC = (("records", "records"), ("rate_in", "rate_in"))
_PARTITION = (("start_offset", "start_offset"), ("end_offset", "end_offset"),
              ("records", "records"), ("rate_in", "rate_in"))
_GROUP = (("lag", "lag"), ("lag_s", "lag_seconds"), ("polled_total", "polled_total"),
          ("rate_out", "rate_out"), ("errors_total", "errors_total"))
_GROUP_PARTITION = (("committed", "committed_offset"), ("lag", "lag"), ("lag_s", "lag_seconds"))
_QUEUE = (("depth", "depth"), ("in_flight", "in_flight"), ("delayed", "delayed"),
          ("total", "not_done"), ("dead_lettered", "dead_lettered"),
          ("oldest_age_s", "oldest_age_seconds"), ("rate_in", "rate_in"),
          ("rate_out", "rate_out"), ("put_total", "put_total"),
          ("delivered_total", "delivered_total"), ("acked_total", "acked_total"),
          ("nacked_total", "nacked_total"), ("redelivered_total", "redelivered_total"),
          ("ack_errors_total", "ack_errors_total"), ("errors_total", "errors_total"),
          ("skipped", "skipped"))
#: A circuit breaker's state as a number: closed 0, half-open 1, open 2.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Families:
    def __init__(self) -> None:
        self.order: List[str] = []
        self.kind: Dict[str, str] = {}
        self.samples: Dict[str, List[Tuple[str, Dict[str, str], float]]] = {}

    def add(self, name: str, labels: Dict[str, str], value: Any, kind: Optional[str] = None,
            sample: Optional[str] = None) -> None:
        if value is None or not isinstance(value, (int, float)):
            return
        full = "logstore_" + name
        if full not in self.kind:
            self.order.append(full)
            self.kind[full] = kind or ("counter" if name.endswith("_total") else "gauge")
            self.samples[full] = []
        self.samples[full].append((sample or full, labels, value))

    def text(self) -> str:
        lines: List[str] = []
        for full in self.order:
            short = full[len("logstore_"):]
            help_text = _HELP.get(short, short.replace("_", " ") + ".")
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {self.kind[full]}")
            for sample, labels, value in self.samples[full]:
                lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"{sample}{{{lab}}} {_number(value)}" if lab
                             else f"{sample} {_number(value)}")
        return "\n".join(lines) + "\n"


def prometheus_text(metrics: Dict[str, Any]) -> str:
    """``metrics`` (a ``store.metrics()`` result) in the Prometheus text format."""
    fam = _Families()
    for name, t in sorted(metrics.get("topics", {}).items()):
        for key, suffix in _TOPIC:
            fam.add("topic_" + suffix, {"topic": name}, t.get(key))
        for p, fig in sorted(t["partitions"].items()):
            for key, suffix in _PARTITION:
                fam.add("partition_" + suffix, {"topic": name, "partition": str(p)},
                        fig.get(key))
    groups = [(g, t, "group", fig) for g, by in metrics.get("groups", {}).items()
              for t, fig in by.items()]
    groups += [(s, t, "subscription", fig) for t, by in metrics.get("subscriptions", {}).items()
               for s, fig in by.items()]
    for g, t, kind, fig in sorted(groups, key=lambda x: (x[2], x[0], x[1])):
        labels = {"group": g, "topic": t, "kind": kind}
        for key, suffix in _GROUP:
            fam.add("group_" + suffix, labels, fig.get(key))
        for p, pf in sorted(fig["partitions"].items()):
            for key, suffix in _GROUP_PARTITION:
                fam.add("group_partition_" + suffix, dict(labels, partition=str(p)), pf.get(key))
    for name, fig in sorted(metrics.get("queues", {}).items()):
        labels = {"queue": name}
        if "error" in fig:
            fam.add("queue_error", labels, 1)
            continue
        for key, suffix in _QUEUE:
            fam.add("queue_" + suffix, labels, fig.get(key))
        proc = fig.get("processing_s")
        if proc is not None:
            full = "queue_processing_seconds"
            for q, label in (("50", "0.5"), ("90", "0.9"), ("99", "0.99")):
                fam.add(full, dict(labels, quantile=label), proc.get(f"p{q}_s"), "summary")
            fam.add(full, labels, proc["sum_s"], "summary", "logstore_" + full + "_sum")
            fam.add(full, labels, proc["count"], "summary", "logstore_" + full + "_count")
    for section in ("breakers", "requesters", "responders"):
        kind = section[:-1]
        for name, fig in sorted(metrics.get(section, {}).items()):
            labels = {kind: name}
            for key, value in sorted(fig.items()):
                if key == "state" and value in BREAKER_STATES:
                    fam.add(f"{kind}_state", labels, BREAKER_STATES[value])
                elif isinstance(value, (int, float)):
                    suffix = key[:-2] + "_seconds" if key.endswith("_s") else key
                    fam.add(f"{kind}_{suffix}", labels, value)
    return fam.text()
