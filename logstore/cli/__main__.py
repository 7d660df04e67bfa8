"""``python -m logstore.cli``: the ``logstore`` command."""

from . import main

main(prog_name="logstore")
