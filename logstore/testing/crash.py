"""The crash runner: run a function in a child process, SIGKILL it, reopen what it wrote.

``run_and_kill(fn, path, kind="store", after_acks=50)`` starts a fresh Python interpreter (no
fork of a process holding open logs), opens the log or store at ``path`` there and calls
``fn(target, ack, *args)``. Each ``ack(value)`` durably hands ``value`` to the parent: call it
once an append has returned, i.e. at the moment your application would tell its caller "done".
The child is killed with SIGKILL

* right after its N-th acknowledgement (``after_acks=N``, deterministic: the child kills
  itself inside ``ack``, before the function continues),
* ``after_s`` seconds after the log/store was open (the parent kills it),
* or, with neither, at a random moment within ``max_s`` seconds (from ``seed``).

The parent then reopens the log/store (crash recovery runs) and returns a :class:`CrashResult`
with the acknowledged values, in order, and the reopened target for assertions.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import child, targets

__all__ = ["CrashResult", "CrashRunnerError", "run_and_kill"]

KINDS = ("log", "store", "dir")


class CrashRunnerError(RuntimeError):
    """The child could not run as asked: it failed to start, raised, timed out, or finished
    before the kill that was required."""


@dataclass
class CrashResult:
    """What a :func:`run_and_kill` run left.

    ``acked``: the values the function acknowledged before it died, in order. ``killed``: it
    was SIGKILLed (False: it returned first, and ``returned`` holds its return value).
    ``target``: the ``Log``/``Store`` reopened after the kill (crash recovery done; None for
    ``kind="dir"`` or ``reopen=False``); close it, or use the result as a context manager.
    ``kill``: how the kill was chosen; ``seed``: the seed of a random kill; ``output``: the
    child's stdout and stderr.
    """

    path: str
    kind: str
    acked: List[Any]
    killed: bool
    returncode: int
    kill: str
    seed: Optional[int]
    seconds: float
    output: str = ""
    returned: Any = None
    target: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Close the reopened target (if any)."""
        target, self.target = self.target, None
        targets.close_target(target)

    def __enter__(self) -> "CrashResult":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pickled(what: str, obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - explained below
        raise TypeError(
            f"the crash runner's {what} must be picklable: the function runs in a fresh "
            f"interpreter, so it must be a module-level function of an importable module (not "
            f"a lambda, a closure or a function defined inside the test) ({e})") from e


def _wait_frames(path: str, proc: "subprocess.Popen[bytes]", want: bytes, deadline: float
                 ) -> Optional[List[Tuple[bytes, bytes]]]:
    """Poll the acknowledgement file until a frame of kind ``want`` appears (its frames), the
    child exits (None) or the deadline passes (raises)."""
    delay = 0.0005
    while True:
        frames = child.read_frames(path)
        if any(k == want for k, _ in frames):
            return frames
        if proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def run_and_kill(fn: Callable[..., Any], path: "str | os.PathLike[str]", *,
                 kind: str = "log", options: Optional[Mapping[str, Any]] = None,
                 args: Sequence[Any] = (), after_acks: Optional[int] = None,
                 after_s: Optional[float] = None, max_s: float = 1.0,
                 seed: Optional[int] = None, require_kill: Optional[bool] = None,
                 timeout: float = 60.0, reopen: bool = True) -> CrashResult:
    """Run ``fn`` in a child process and SIGKILL it (see the module docstring).

    ``fn(target, ack, *args)``: ``target`` is the ``Log`` (``kind="log"``) or ``Store``
    (``kind="store"``) at ``path`` opened with ``options``; ``kind="dir"``: ``fn(path, ack,
    *args)``. ``fn`` and ``args`` must be picklable (a module-level function). A function that
    returns before the kill has its target closed cleanly.

    ``require_kill`` (default: True with ``after_acks``, else False): raise
    :class:`CrashRunnerError` if the function returned before being killed. ``timeout``: the
    child must start, and be killed or return, within this many seconds. ``reopen``: reopen
    ``path`` with ``options`` in this process after the kill (the result's ``target``).
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
    targets.check_kind(kind, KINDS)
    options = dict(options or {})
    if "fs" in options:
        raise ValueError("options cannot carry fs= into a child process")
    path = os.path.abspath(os.fspath(path))
    after_s, how, used_seed = _moment(kind, after_acks, after_s, max_s, seed)
    if require_kill is None:
        require_kill = after_acks is not None
    t0 = time.monotonic()
    frames, output, rc = _run_child(fn, args, kind, path, options, after_acks, after_s,
                                    timeout)
    seconds = time.monotonic() - t0
    acked = [pickle.loads(p) for k, p in frames if k == b"A"]
    errors = [p.decode("utf-8", "replace") for k, p in frames if k == b"E"]
    done = [p for k, p in frames if k == b"D"]
    killed = rc == -signal.SIGKILL
    if errors:
        raise CrashRunnerError(f"the function raised in the child process (after {len(acked)} "
                               f"acknowledgements):\n{errors[0]}{_tail(output)}")
    if not killed and not done:
        raise CrashRunnerError(f"the child process exited with status {rc} before it was "
                               f"killed and without returning{_tail(output)}")
    if require_kill and not killed:
        raise CrashRunnerError(
            f"the function returned after {len(acked)} acknowledgements, before the kill "
            f"({how}): it never ran into the crash this test is about{_tail(output)}")
    result = CrashResult(path, kind, acked, killed, rc, how, used_seed, seconds, output,
                         pickle.loads(done[0]) if done else None)
    if reopen and kind != "dir":
        try:
            result.target = targets.open_target(kind, path, options)
        except Exception as e:
            note = (f"logstore.testing: reopening {path} after the child was killed "
                    f"({how}; {len(acked)} values acknowledged) failed")
            if hasattr(e, "add_note"):
                e.add_note(note)
            raise
    return result


def _moment(kind: str, after_acks: Optional[int], after_s: Optional[float], max_s: float,
            seed: Optional[int]) -> Tuple[Optional[float], str, Optional[int]]:
    """When to kill: ``(after_s, how it is described, the seed drawn for a random moment)``;
    ValueError for arguments that cannot name one."""
    if after_acks is not None and after_s is not None:
        raise ValueError("give after_acks or after_s, not both (neither: a random moment)")
    if after_acks is not None and (isinstance(after_acks, bool) or not isinstance(after_acks, int)
                                   or after_acks < 1):
        raise ValueError(f"after_acks must be an int >= 1 (got {after_acks!r})")
    if after_s is not None and after_s < 0:
        raise ValueError(f"after_s must be >= 0 (got {after_s!r})")
    used_seed: Optional[int] = None
    if after_acks is not None:
        how = f"SIGKILL right after acknowledgement {after_acks}"
    elif after_s is not None:
        how = f"SIGKILL {after_s:.3f} s after the {kind} was open"
    else:
        used_seed = seed if seed is not None else random.randrange(2**32)
        after_s = random.Random(used_seed).uniform(0.0, max_s)
        how = f"SIGKILL at a random moment: {after_s:.3f} s after the {kind} was open " \
              f"(seed {used_seed})"
    return after_s, how, used_seed


def _run_child(fn: Callable[..., Any], args: Sequence[Any], kind: str, path: str,
               options: Dict[str, Any], after_acks: Optional[int], after_s: Optional[float],
               timeout: float) -> Tuple[List[Tuple[bytes, bytes]], str, Optional[int]]:
    """Start the child, kill it when due (or let it return); its frames, output and status."""
    main = sys.modules.get("__main__")
    main_path = getattr(main, "__file__", None) if getattr(fn, "__module__", None) == "__main__" \
        else None
    fn_bytes, args_bytes = _pickled("function", fn), _pickled("args", tuple(args))
    work = tempfile.mkdtemp(prefix="logstore-crash-")
    ack_path = os.path.join(work, "acks")
    spec = {
        "sys_path": [p for p in sys.path],
        "cwd": os.getcwd(),
        "main_path": main_path,
        "fn": fn_bytes,
        "args": args_bytes,
        "kind": kind,
        "path": path,
        "options": options,
        "ack_path": ack_path,
        "after_acks": after_acks,
    }
    spec_path = os.path.join(work, "spec")
    with open(spec_path, "wb") as f:
        pickle.dump(spec, f, protocol=pickle.HIGHEST_PROTOCOL)
    out_path = os.path.join(work, "output")
    deadline = time.monotonic() + timeout
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", child.BOOT, spec_path],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            try:
                ready = _wait_frames(ack_path, proc, b"R", deadline)
            except TimeoutError:
                raise CrashRunnerError(f"the child did not open {path} within {timeout} s") \
                    from None
            if ready is not None and after_s is not None:
                try:
                    proc.wait(timeout=max(0.0, after_s))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise CrashRunnerError(
                    f"the child neither acknowledged {after_acks} values nor returned within "
                    f"{timeout} s" if after_acks is not None else
                    f"the child was still running {timeout} s after it started") from None
        finally:
            if proc.poll() is None:
                proc.kill()  # SIGKILL our own child (an error above): never leave it running
                proc.wait()
        frames = child.read_frames(ack_path)
        output = _read_text(out_path)
    finally:
        targets.remove_tree(work)
    return frames, output, proc.returncode


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(output: str, lines: int = 30) -> str:
    if not output.strip():
        return ""
    tail = output.rstrip().splitlines()[-lines:]
    return "\n--- child output (last lines) ---\n" + "\n".join(tail)
