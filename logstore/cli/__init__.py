"""The ``logstore`` command (click): one module per command family.

The entry point ``logstore.cli:main`` is the click group; the commands parse options, call the
layers below (``diagnostics`` for what they read, ``storage``/``views`` for what they change)
and print. Nothing below this package imports it.
"""

from .commands import main

__all__ = ["main"]
