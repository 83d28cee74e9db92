"""A research loop that runs beside the notebook.

``handle = autolab.start_loop(lab, iterations=8, ...)`` returns at once: the loop runs in a
background thread of this process (the kernel), so later cells run, the widgets stay live and
the kernel shows as idle while the loop works. The handle steers it (``stop``, ``pause``,
``resume``, ``cancel_run``), says where it is (``state``: starting, running, paused, stopping,
finished, failed) and gives its ``LoopSummary`` or its exception (``wait(timeout)``, or
``await handle`` in a notebook cell). ``Dashboard(lab, loop=handle)`` shows the state and wires
its Stop / Pause / Resume / Cancel-run buttons to the handle.

Why a thread and not a process: the loop's heavy work already runs in processes of its own (one
papermill process per run, the harness's sandboxed children below it); what stays in the kernel
is scheduling, SQLite appends and audits, which take a few milliseconds each. In the kernel's
process the handle, the Dashboard's buttons and the RunMonitor (``on_event``) are plain method
calls and callbacks on the same objects, with no second channel to keep in step; a separate
process would need one for pause, cancel and live events. What a thread costs: restarting the
kernel ends the loop (its runs in flight are killed at exit and re-run by the next loop, which
resumes from the log as after any interruption).
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from ._loop import LoopControl, LoopSummary, loop
from .errors import AutolabError
from .lab import Lab
from .records import Run

STATES = ("starting", "running", "paused", "stopping", "finished", "failed")

_HANDLES: "set[LoopHandle]" = set()   # loops still running in this process (ended at exit)


class LoopHandle:
    """A loop running in a background thread (made by ``start_loop``; see the module's text)."""

    def __init__(self, lab: Lab, control: LoopControl, future: "Future[LoopSummary]", thread: threading.Thread):
        self.lab = lab
        self.control = control
        self._future = future
        self._thread = thread
        self.started_at = time.time()
        self.ended_at: float | None = None
        future.add_done_callback(lambda _f: setattr(self, "ended_at", time.time()))

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """One of STATES: starting (taking the lab), running, paused, stopping (no new work; the
        runs in flight end), finished (``summary`` holds the LoopSummary) or failed (``exception``)."""
        if self._future.done():
            return "failed" if self._future.exception() is not None else "finished"
        if self.control.stop_requested or self.control.stopped_because():
            return "stopping"
        if self.control.paused:
            return "paused"
        return "running" if self.control.attached.is_set() else "starting"

    def done(self) -> bool:
        return self._future.done()

    @property
    def summary(self) -> LoopSummary | None:
        """The LoopSummary once finished, else None."""
        if self._future.done() and self._future.exception() is None:
            return self._future.result()
        return None

    @property
    def exception(self) -> BaseException | None:
        """What ended the loop when it failed, else None."""
        return self._future.exception() if self._future.done() else None

    def runs_in_flight(self) -> list[Run]:
        """The RUNNING records of the loop's runs in flight now."""
        return self.control.runs_in_flight()

    def describe(self) -> str:
        """One line for people: the state, runs in flight, and how the loop ended."""
        st = self.state
        if st == "finished":
            s = self.summary
            return f"finished ({s.reason}: {s.stopped})" if s is not None else "finished"
        if st == "failed":
            return f"failed: {type(self.exception).__name__}: {self.exception}"
        n = len(self.runs_in_flight())
        extra = {"paused": "; nothing new starts until resumed", "stopping": "; ends when they have ended"}.get(st, "")
        return f"{st}, {n} run{'s' if n != 1 else ''} in flight{extra}"

    def __repr__(self) -> str:
        return f"<LoopHandle {self.lab.path}: {self.describe()}>"

    # ------------------------------------------------------------------ steering
    def stop(self, cancel_runs: bool = False) -> None:
        """No new work starts; the loop ends once its runs in flight have ended (with
        ``cancel_runs``: they are cancelled now, recorded KILLED "cancelled by the user")."""
        self.control.stop(cancel_runs=cancel_runs)

    def pause(self) -> None:
        """Nothing new starts until ``resume()``; runs in flight go on."""
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def cancel_run(self, run_id: str | None = None) -> str:
        """Kill one run in flight now (None: the only one); it is recorded KILLED "cancelled by the
        user", no verdict on its candidate, whose runs of that purpose wait for the next loop."""
        return self.control.cancel_run(run_id)

    # ------------------------------------------------------------------ waiting
    def wait(self, timeout: float | None = None) -> LoopSummary:
        """Block until the loop ends (at most ``timeout`` seconds: then TimeoutError) and return its
        LoopSummary; a loop that failed raises its exception here. In a notebook, prefer
        ``await handle``: a cell blocked in ``wait`` keeps the kernel busy, and the Dashboard's
        buttons act only once it returns."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"the loop on {self.lab.path} is still {self.state} after {timeout:g} s "
                               "(handle.stop() ends it after its runs in flight)") from None

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()

    def add_done_callback(self, fn: Callable[["LoopHandle"], None]) -> None:
        """Call ``fn(handle)`` when the loop ends (from the loop's thread)."""
        self._future.add_done_callback(lambda _f: fn(self))

    def _at_exit(self) -> None:
        """The process exits (a kernel restart): end the loop's runs so nothing outlives it; they are
        recorded KILLED "interrupted" and re-run by the next loop."""
        if self._future.done():
            return
        self.control.stop()
        self.control.kill_in_flight("interrupted")
        self._thread.join(timeout=10)


def start_loop(lab: Lab, iterations: int = 8, *, start_timeout_s: float = 30.0, **kwargs) -> LoopHandle:
    """Start ``autolab.loop(lab, iterations, **kwargs)`` in a background thread and return its
    LoopHandle at once. Every argument of ``loop`` is accepted (``progress`` defaults to False:
    the Dashboard and the RunMonitor show progress). Waits up to ``start_timeout_s`` for the loop
    to take the lab, so that a loop that cannot start (another loop holds the lab, a bad argument)
    raises here, in the cell that started it."""
    if "control" in kwargs:
        raise AutolabError("start_loop makes the loop's control itself; use the handle it returns")
    kwargs.setdefault("progress", False)
    control = LoopControl()
    future: Future[LoopSummary] = Future()

    def target() -> None:
        try:
            future.set_result(loop(lab, iterations, control=control, **kwargs))
        except BaseException as e:   # noqa: BLE001 - kept for wait() / state, never lost
            future.set_exception(e)

    thread = threading.Thread(target=target, name=f"autolab-loop-{lab.path.name}", daemon=True)
    handle = LoopHandle(lab, control, future, thread)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not control.attached.wait(0.05) and not future.done() and time.monotonic() < deadline:
        pass
    if future.done() and future.exception() is not None:
        raise future.exception()
    _HANDLES.add(handle)
    handle.add_done_callback(_HANDLES.discard)
    return handle


@atexit.register
def _end_loops_at_exit() -> None:
    for h in list(_HANDLES):
        try:
            h._at_exit()
        except Exception:   # noqa: BLE001 - the process is going away
            pass


def interactive_frontend() -> bool:
    """True when the cell now running was sent by a frontend a person uses (JupyterLab, Notebook,
    VS Code: they accept ``input()``), so someone can steer a loop from the widgets; False under
    papermill or nbconvert (they send cells with stdin off) and outside a kernel. The notebooks
    use it to wait for the loop only when no one can steer it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return bool(getattr(kernel, "_allow_stdin", False))
