"""Recovery tests for applications built on logstore: the fault injection logstore tests itself
with, for your own workloads.

* :func:`sweep` (power loss): run a workload once on a simulated file system, cut the power at
  every I/O operation (or a sample), rebuild the disk as a power loss may leave it (unsynced
  writes dropped, kept, torn, zeroed), reopen and call your check for each crash point.
  A failure names the crash point, the seed and the interrupted operation, and how to replay
  it alone.
* :func:`run_and_kill` (process crash): run a function in a child process, SIGKILL it after N
  acknowledgements, after a delay or at a random moment, and get back what it acknowledged plus
  the reopened log or store.
* :func:`rebuild` (event sourcing): rebuild state from ``replay(from_offset)`` and check it
  against the events the application acknowledged.
* :func:`verify`: what ``logstore verify`` checks, as a function.
* A pytest plugin (``logstore.testing.plugin``, registered through the ``pytest11`` entry point:
  active once logstore is installed) with the fixtures ``tmp_log``, ``tmp_store``,
  ``crash_runner`` and ``power_loss_sweep`` and the options ``--logstore-crash-point`` and
  ``--logstore-seed``. Importing ``logstore.testing`` does not import pytest.

The simulator itself is :class:`~logstore.testing.powerloss.PowerLossFS`.
"""

from .targets import assert_verified, verify
from .crash import CrashResult, CrashRunnerError, run_and_kill
from .powerloss import ALL_MODES, DIR_MODES, SUFFIX_MODES, Crash, Damage, PowerLossFS
from .replay import Rebuilt, RecoveryMismatch, events, rebuild
from .sweep import CrashPointFailure, Recording, SweepError, SweepReport, record, sweep

__all__ = [
    "ALL_MODES",
    "DIR_MODES",
    "SUFFIX_MODES",
    "Crash",
    "CrashPointFailure",
    "CrashResult",
    "CrashRunnerError",
    "Damage",
    "PowerLossFS",
    "Rebuilt",
    "Recording",
    "RecoveryMismatch",
    "SweepError",
    "SweepReport",
    "assert_verified",
    "events",
    "rebuild",
    "record",
    "run_and_kill",
    "sweep",
    "verify",
]
