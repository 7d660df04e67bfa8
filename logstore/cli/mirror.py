"""``logstore mirror``: mirror a store's topic into NATS JetStream (``logstore.mirror``)."""

from __future__ import annotations

from typing import Optional

import click

from .common import EXIT_USAGE, CommandExit, error, operator


@click.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("topic")
@click.option("--servers", "-s", required=True, multiple=True, metavar="URL[,URL...]",
              help="NATS server URLs (comma-separated or repeated), e.g. the cluster's nodes.")
@click.option("--stream", required=True, help="JetStream stream name (created if missing).")
@click.option("--subject-prefix", default="logstore", show_default=True,
              help="Messages go to PREFIX.TOPIC.PARTITION.")
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="Replicas of a stream it creates [default: 3 on a cluster of 3+ nodes, else 1].")
@click.option("--until-caught-up", is_flag=True,
              help="Exit once every record present is mirrored (default: run until ^C/SIGTERM).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Publishes awaiting their JetStream ack at once.")
@click.option("--dedup-window", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="duplicate_window (seconds) of a stream it creates.")
@click.option("--status-interval", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds between status lines on stderr.")
@operator
def mirror(store: str, topic: str, servers: tuple, stream: str, subject_prefix: str,
           replicas: Optional[int], until_caught_up: bool, max_in_flight: int,
           dedup_window: float, status_interval: float) -> None:
    """Mirror TOPIC of the store STORE into a NATS JetStream stream, exactly once and in
    order per partition (needs: pip install 'logstore[nats]')."""
    try:
        # Optional dependency: the mirror needs nats-py, which the other commands do not.
        from ..mirror.runner import run_mirror_cli
    except ImportError as e:
        error(str(e))
        raise CommandExit(EXIT_USAGE)
    code = run_mirror_cli(store, topic, ",".join(servers), stream,
                          subject_prefix=subject_prefix, replicas=replicas,
                          until_caught_up=until_caught_up, max_in_flight=max_in_flight,
                          dedup_window_s=dedup_window, status_interval_s=status_interval,
                          echo=lambda line: click.echo(line, err=True))
    if code:
        raise CommandExit(code)
