"""The pytest plugin of logstore.testing (registered through the ``pytest11`` entry point, so it is
active wherever logstore is installed; no conftest needed).

Fixtures:

* ``tmp_log`` / ``tmp_store``: a ``Log`` / ``Store`` in the test's ``tmp_path``, opened with the
  options of ``@pytest.mark.logstore(...)`` (or of an indirect parametrization:
  ``@pytest.mark.parametrize("tmp_log", [{"fsync": "never"}], indirect=True)``); closed at
  teardown if the test did not, then checked like ``logstore verify`` (a problem fails the test).
* ``crash_runner``: ``crash_runner(fn, kind="log", after_acks=N | after_s=T, ...)`` calls
  :func:`logstore.testing.run_and_kill` on a directory of ``tmp_path`` (the same one on every
  call with the same ``kind``, so rounds of kills accumulate; ``path=`` for another). Reopened
  targets are closed and verified at teardown.
* ``power_loss_sweep``: ``power_loss_sweep(workload, check, kind="log", options=...)`` calls
  :func:`logstore.testing.sweep` with the session's seed and options; a failure tells how to
  replay its crash point alone.

Options: ``--logstore-crash-point=N`` (check only crash point N in every sweep; repeatable),
``--logstore-seed=S`` (the seed of sweeps and random kills; default 0; ``random`` draws one and
prints it), ``--logstore-sweep-points=N`` (sample N crash points in sweeps that would check every
one), ``--logstore-scratch=DIR`` (scratch directory of sweeps; default /dev/shm when available).
Marker: ``@pytest.mark.logstore(**options)``, default options of the four fixtures.
"""

from __future__ import annotations

import os
import random
import shlex
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import pytest

import logstore

from . import targets
from .crash import CrashResult, run_and_kill
from .sweep import SweepReport, sweep

_SEED_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("logstore", "logstore.testing (crash and power-loss tests)")
    group.addoption("--logstore-crash-point", action="append", type=int, default=None,
                    metavar="N", help="check only crash point N in every power-loss sweep "
                                      "(repeat for several)")
    group.addoption("--logstore-seed", default=None, metavar="SEED",
                    help="seed of power-loss sweeps (damage of unsynced writes) and random "
                         "kills; default 0, 'random' for a new one (printed)")
    group.addoption("--logstore-sweep-points", type=int, default=None, metavar="N",
                    help="sample N crash points in sweeps that would check every one")
    group.addoption("--logstore-scratch", default=None, metavar="DIR",
                    help="scratch directory of power-loss sweeps (default: /dev/shm if "
                         "available, else the temporary directory)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "logstore(**options): default Log/Store options of the logstore.testing "
                   "fixtures (tmp_log, tmp_store, crash_runner, power_loss_sweep)")
    raw = config.getoption("--logstore-seed", None)
    if raw is None:
        seed: Any = 0
    elif str(raw).lower() == "random":
        seed = random.SystemRandom().randrange(2**32)
    else:
        try:
            seed = int(raw)
        except ValueError:
            raise pytest.UsageError(f"--logstore-seed must be an integer or 'random' "
                                    f"(got {raw!r})") from None
    config.stash[_SEED_KEY] = seed


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    points = config.getoption("--logstore-crash-point", None)
    if config.getoption("--logstore-seed", None) is None and not points:
        return None
    extra = f", only crash point(s) {', '.join(map(str, points))}" if points else ""
    return f"logstore.testing: seed {config.stash[_SEED_KEY]}{extra}"


def _seed(config: pytest.Config) -> Any:
    return config.stash.get(_SEED_KEY, 0)


def _options(request: pytest.FixtureRequest, explicit: Optional[Dict[str, Any]] = None
             ) -> Dict[str, Any]:
    """Marker options, then ``request.param`` (indirect parametrization), then ``explicit``."""
    opts: Dict[str, Any] = {}
    marker = request.node.get_closest_marker("logstore")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.logstore takes keyword options only, e.g. "
                                    "@pytest.mark.logstore(fsync='never')")
        opts.update(marker.kwargs)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise pytest.UsageError(f"indirect parameters of tmp_log/tmp_store must be dicts of "
                                    f"options (got {param!r})")
        opts.update(param)
    if explicit:
        opts.update(explicit)
    return opts


def _finish(target: Any, path: str) -> None:
    """Teardown: close (errors fail the test) and verify."""
    targets.close_target(target)
    if os.path.exists(path):
        problems = targets.verify(path)
        if problems:
            pytest.fail(f"logstore verify {path} at teardown: {len(problems)} problem(s):\n  "
                        + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def tmp_log(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator["logstore.Log"]:
    """A ``Log`` in ``tmp_path/"log"`` (options: ``@pytest.mark.logstore(...)`` or indirect
    parametrization); closed and verified at teardown."""
    path = str(tmp_path / "log")
    log = logstore.Log.open(path, **_options(request))
    yield log
    _finish(log, path)


@pytest.fixture
def tmp_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator["logstore.Store"]:
    """A ``Store`` in ``tmp_path/"store"`` (options as for ``tmp_log``); closed and verified at
    teardown."""
    path = str(tmp_path / "store")
    store = logstore.Store.open(path, **_options(request))
    yield store
    _finish(store, path)


class CrashRunner:
    """The ``crash_runner`` fixture: ``crash_runner(fn, kind="log", ...)`` ->
    :class:`~logstore.testing.CrashResult` (see :func:`logstore.testing.run_and_kill`)."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Any) -> None:
        self._request = request
        self._tmp = tmp_path
        self._seed = _seed(request.config)
        self._calls = 0
        self.results: List[CrashResult] = []
        self.paths: List[str] = []

    def path(self, kind: str = "log") -> str:
        """The directory used for ``kind`` when no ``path`` is given."""
        return str(self._tmp / f"crash-{kind}")

    def __call__(self, fn: Callable[..., Any], *, kind: str = "log",
                 path: "Union[str, os.PathLike[str], None]" = None,
                 options: Optional[Dict[str, Any]] = None, **kwargs: Any) -> CrashResult:
        __tracebackhide__ = True
        where = os.fspath(path) if path is not None else self.path(kind)
        if "seed" not in kwargs:
            kwargs["seed"] = random.Random(f"{self._seed}:{self._calls}").randrange(2**32)
        self._calls += 1
        result = run_and_kill(fn, where, kind=kind, options=_options(self._request, options),
                              **kwargs)
        self.results.append(result)
        if where not in self.paths:
            self.paths.append(where)
        return result

    def _teardown(self) -> None:
        for r in self.results:
            r.close()
        for p in self.paths:
            if any(os.path.exists(os.path.join(p, m)) for m in ("logstore.meta", "store.meta")):
                _finish(None, p)


@pytest.fixture
def crash_runner(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CrashRunner]:
    """Run a function in a child process and SIGKILL it: ``crash_runner(fn, kind="log",
    after_acks=N)``; see :func:`logstore.testing.run_and_kill`."""
    runner = CrashRunner(request, tmp_path)
    yield runner
    runner._teardown()


class PowerLossSweep:
    """The ``power_loss_sweep`` fixture: ``power_loss_sweep(workload, check, kind="log", ...)``
    -> :class:`~logstore.testing.SweepReport` (see :func:`logstore.testing.sweep`)."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Any) -> None:
        self._request = request
        self._tmp = tmp_path
        config = request.config
        self.seed = _seed(config)
        self.only: Optional[List[int]] = config.getoption("--logstore-crash-point", None)
        self.sample: Optional[int] = config.getoption("--logstore-sweep-points", None)
        self.scratch: Optional[str] = config.getoption("--logstore-scratch", None)
        self.reports: List[SweepReport] = []

    def __call__(self, workload: Callable[..., Any], check: Callable[..., Any], *,
                 kind: str = "log", options: Optional[Dict[str, Any]] = None,
                 points: Union[None, int, Sequence[int]] = None, **kwargs: Any) -> SweepReport:
        __tracebackhide__ = True
        if self.only:
            points = self.only
        elif points is None and self.sample:
            points = self.sample
        nodeid = self._request.node.nodeid
        hint = (f"pytest {shlex.quote(nodeid)} --logstore-crash-point={{point}} "
                f"--logstore-seed={{seed}}")
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("scratch", self.scratch)
        kwargs.setdefault("keep_failed", str(self._tmp / "crash-states"))
        kwargs.setdefault("replay_hint", hint)
        if len(self.reports) or kwargs.get("label"):
            kwargs.setdefault("label", getattr(workload, "__name__", None))
        report = sweep(workload, check, kind=kind, options=_options(self._request, options),
                       points=points, **kwargs)
        self.reports.append(report)
        return report


@pytest.fixture
def power_loss_sweep(request: pytest.FixtureRequest, tmp_path: Any) -> PowerLossSweep:
    """Cut the power at every operation of a workload and check each state:
    ``power_loss_sweep(workload, check, kind="log", options={...})``; see
    :func:`logstore.testing.sweep`."""
    return PowerLossSweep(request, tmp_path)
