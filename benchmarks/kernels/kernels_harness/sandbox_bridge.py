"""Run the candidate process through ``autolab.sandbox.run_sandboxed``.

When autolab's sandbox is importable it is used as is (scrubbed environment, no network,
rlimits, audit hook on file access, process-tree kill). Where it is not (autolab missing,
or an older checkout), ``_fallback`` keeps the same call shape with what the standard
library gives: an environment built only from ``env``, a new session, a wall-clock limit
and a kill of the whole process group. The result reports which one ran (``sandbox``).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class Result:
    returncode: int | None
    state: str                      # ok | failed | killed
    reason: str = ""
    wall_s: float = 0.0
    violations: list = field(default_factory=list)
    stdout_tail: str = ""
    sandbox: str = "fallback"
    isolation: dict = field(default_factory=dict)


def _fallback(argv: Sequence[str], cwd: str, env: dict, wall_s: float,
              on_line: Callable[[str], None] | None) -> Result:
    t0 = time.monotonic()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1)
    tail: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    killed = False
    while True:
        left = wall_s - (time.monotonic() - t0)
        if left <= 0:
            killed = True
            break
        if not sel.select(timeout=min(left, 1.0)):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        line = line.rstrip("\n")
        tail.append(line)
        del tail[:-200]
        if on_line:
            on_line(line)
    if killed or proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rc = proc.wait()
    sel.close()
    proc.stdout.close()
    wall = time.monotonic() - t0
    if killed:
        return Result(rc, "killed", f"wall-clock limit of {wall_s:.0f}s reached", wall, [], "\n".join(tail), "fallback")
    return Result(rc, "ok" if rc == 0 else "failed", "" if rc == 0 else f"exit code {rc}", wall, [],
                  "\n".join(tail), "fallback")


_HARDEN_FAILED: dict = {}   # per process: the hardened sandbox broke the worker's start once (why)


def run(argv: Sequence[str], cwd: str, env: dict, wall_s: float, write_allow: Sequence[str] = (),
        read_deny: Sequence[str] = (), on_line: Callable[[str], None] | None = None,
        memory_mb: int | None = None, ready_path: str | None = None) -> Result:
    """Run ``argv`` sandboxed. ``ready_path`` is a file the worker writes once its own start-up
    (torch, CUDA, triton) is done and before any candidate code is imported. If the hardened
    sandbox (mount/PID/IPC namespaces, Landlock, dropped capabilities) kills the worker before
    that file exists - seen on the H100 machine: CUDA init fails with error 304 - the run is
    repeated once with ``harden=False`` (scrubbed environment, audit hook, limits and process
    kill stay), and later runs in this process go there directly. Nothing a candidate does can
    trigger this: it happens before the candidate is loaded. The result says which ran."""
    if os.environ.get("AUTOLAB_KERNELS_SANDBOX") == "fallback":   # set only by perf/kernels_gpu.py's retry
        return _fallback(argv, cwd, env, wall_s, on_line)
    try:
        from autolab.sandbox import Limits, Policy, run_sandboxed
    except Exception:   # autolab's sandbox not available here: standard-library isolation
        return _fallback(argv, cwd, env, wall_s, on_line)
    limits = Limits(wall_s=wall_s) if memory_mb is None else Limits(wall_s=wall_s, memory_mb=memory_mb)
    deny = tuple(p for p in read_deny if os.path.exists(p))

    def once(harden: bool):
        kw = {} if harden else {"harden": False}
        return run_sandboxed(list(argv), cwd=cwd, policy=Policy(read_deny=deny, write_allow=tuple(write_allow), **kw),
                             limits=limits, env=dict(env), on_line=on_line)

    harden = not _HARDEN_FAILED
    r = once(harden)
    if harden and ready_path and not os.path.exists(ready_path) and getattr(r, "state", "") != "ok":
        _HARDEN_FAILED["reason"] = (getattr(r, "stdout_tail", "") or "")[-600:]
        harden = False
        r = once(False)
    state = getattr(r, "state", "ok")
    state = getattr(state, "value", state)
    isolation = dict(getattr(r, "isolation", {}) or {})
    isolation["harden"] = "on" if harden else "off: " + _HARDEN_FAILED.get("reason", "")[-300:]
    return Result(getattr(r, "returncode", None), str(state).lower(), getattr(r, "reason", "") or "",
                  float(getattr(r, "wall_s", 0.0) or 0.0), list(getattr(r, "violations", []) or []),
                  getattr(r, "stdout_tail", "") or "", "autolab.sandbox" if harden else "autolab.sandbox(harden=False)",
                  isolation)
