"""The ``logstore`` command (click): the ``main`` group and its commands, one module per family.

Modules: ``common`` (exit codes, the error boundary, PATH/store options, opening readers),
``output`` (output stream, progress bar, record/bytes rendering, tables, times), ``render``
(records of whole batches as output bytes), ``ranges`` (the offset/time/max options),
``read`` (dump, tail, replay), ``consume`` (consume, with or without a group), ``check``
(verify, stats), ``produce``, ``topics``, ``groups``, ``queues`` (queue), ``repair`` (recover),
``maintain`` (compact, retention), ``config`` (stored settings), ``metrics`` (Prometheus text,
served or printed), ``mirror``, ``docs`` (the README from the package metadata), ``demo`` (and
``demo_writer``, the process the demo kills). Commands parse options, call the layers below (``logstore.diagnostics`` for what
they read, ``logstore.storage``/``logstore.views`` for what they change) and print; nothing
below this package imports it. The entry point ``logstore.cli:main`` is the click group.

Every PATH is a log directory or a store root (``store.meta``: every topic partition, or
``--topic NAME [--partition P]``). Exit codes: 0 success; 1 corrupt data found (or a recover
dry run that has work to do); 2 usage error; 3 the log is locked by a writer; 4 other errors
(I/O, unsupported format); 130 interrupted (see :mod:`.common`).
"""

import click

from ..version import __version__
from . import (
    check, config, consume, demo, docs, groups, maintain, metrics, mirror, produce, queues,
    read, repair, topics,
)


@click.group(epilog="""\b
Exit status: 0 ok; 1 corrupt data found; 2 usage error (bad option, missing path, not a log,
unknown topic or group); 3 locked (a writer has the log or store open, a group has live
members); 4 other error (I/O, unsupported format); 130 interrupted.

\b
Documentation: `logstore docs` prints the README installed with the package
(`logstore docs --list`, `logstore docs "command line"`); `logstore COMMAND --help` for a
command. Shell completion (bash, zsh, fish): see `logstore docs "shell completion"`.""")
@click.version_option(__version__, prog_name="logstore")
def main() -> None:
    """logstore: a durable, segmented append-only log and store.

    PATH is a log directory, or a store root (a directory with store.meta): then every
    topic partition (labelled topic/partition), or only --topic NAME [--partition P].

    \b
    Examples:
      logstore demo ./logstore-demo
      logstore topics ./logstore-demo
      logstore consume ./logstore-demo --topic orders --group billing --max 10 --values text
      logstore groups ./logstore-demo --group billing
    """


for _command in (demo.demo, docs.docs, read.dump, check.verify, check.stats, read.tail,
                 read.replay, produce.produce, consume.consume, topics.topics, groups.groups,
                 queues.queue, repair.recover, maintain.compact, maintain.retention,
                 config.config, metrics.metrics, mirror.mirror):
    main.add_command(_command)

__all__ = ["main"]
