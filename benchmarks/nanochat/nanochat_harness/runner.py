"""One benchmark run: prepare data, train the candidate in a sandbox, evaluate it in another,
write the result JSON (the schema of docs/ARCHITECTURE.md, "A run").

Layout next to ``result_path`` (say ``R = result.json``)::

    result.work/        the candidate's private working copy: train.py, events.jsonl, model.pt
    result.harness/     run_config.json, eval_config.json, eval.json, train.log, eval.log

The time rule: the harness measures the train process's wall time from the outside
(``train_s``). It may spend ``allowance_s`` (declared per preset) on start-up (interpreter,
imports, data, compile) on top of ``budget_s`` of training; a train process still alive at
``budget_s + allowance_s`` (+ ``kill_grace_s`` for the kill itself) is killed and the run is
recorded as ``killed``.

On a preset with ``clock = "cpu"`` (the CPU presets) the same rule is kept in CPU seconds of the
whole train process tree (every process and thread; ``autolab.sandbox`` measures it from
outside): the tree is killed once it has used ``budget_s + allowance_s`` (+ ``kill_grace_s``) CPU
seconds, and the harness's in-process clock is compared with that figure after the run. The
wall clock is then only a safety net, ``wall_factor`` times ``budget_s + allowance_s``: a run it
kills while the machine had no idle CPU to give it was starved, and is recorded as an
infrastructure failure (its reason starts with ``infrastructure:``), not as the candidate's.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from autolab.harnesskit import idle_core_seconds as _idle_core_s, result_skeleton
from autolab.harnesskit import wall_net_reason as _wall_net_reason

from . import CLOCK_LINE, GATE_LINE, SAVED_LINE
from .boot import READY_LINE
from .data import HARNESS_DIR, TASK_DIR, atomic_write_json, prepare_data
from .data_server import TrainDataServer

EventFn = Callable[[dict], None]
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.\-/ ]*?):\s*(.*)$")
_METRIC_KEYS = ("steps", "tokens", "tokens_per_s", "mfu", "peak_mem_mb", "num_params", "training_seconds",
                "epochs", "train_loss", "final_loss")


# ----------------------------------------------------------------------------- parsing

def parse_summary(text: str) -> dict[str, Any]:
    """The script's closing block: the ``key: value`` lines after the last line that is ``---``.
    Numbers become int/float; anything else stays a string."""
    lines = text.splitlines()
    idx = max((i for i, ln in enumerate(lines) if ln.strip() == "---"), default=None)
    if idx is None:
        return {}
    out: dict[str, Any] = {}
    for ln in lines[idx + 1:]:
        m = _SUMMARY_LINE.match(ln.strip())
        if not m:
            continue
        key, raw = m.group(1).strip(), m.group(2).strip()
        out[key] = _number(raw)
    return out


def _number(raw: str) -> Any:
    s = raw.replace(",", "").replace("_", "")
    s = s[:-1] if s.endswith("%") else s
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return raw


def read_curve(events: Path) -> list[dict[str, Any]]:
    out = []
    if events.exists():
        for line in events.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and "loss" in ev and "step" in ev:
                out.append(ev)
    return out


class _Tail(threading.Thread):
    """Follows events.jsonl while the train process runs and calls on_event for each point."""

    def __init__(self, path: Path, on_event: EventFn):
        super().__init__(daemon=True, name="nanochat-events")
        self.path, self.on_event, self.stop = path, on_event, threading.Event()
        self.pos = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    self.pos += len(line)
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict):
                        try:
                            self.on_event({"type": "curve", **ev})
                        except Exception:  # noqa: BLE001 - a broken UI callback must not stop the run
                            pass
        except OSError:
            pass

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()
        self.poll()


# ----------------------------------------------------------------------------- the sandbox

def _sandboxed(argv: list[str], *, cwd: Path, env: dict[str, str], read_deny: tuple[str, ...],
               write_allow: tuple[str, ...], wall_s: float, mem_mb: int | None, log_path: Path,
               echo: bool, harden: bool = True, read_allow: tuple[str, ...] | None = None,
               end_marker: str | None = None, after_end_s: float = 10.0, relax: tuple[str, ...] = (),
               cpu_limit_s: float | None = None, baton: "GpuBaton | None" = None,
               live: dict | None = None) -> dict[str, Any]:
    """Run argv through ``autolab.sandbox.run_sandboxed``; stream its output to stdout (when
    echo) and to log_path. ``read_allow``: reads by allow-list (see Policy.read_allow);
    ``end_marker``: the line that ends the candidate's work (after it, a process but the main one
    that works is ended and reported; the main one must exit within ``after_end_s``);
    ``cpu_limit_s``: the whole tree's CPU seconds past which it is killed (reason "cpu"). Returns {returncode, killed,
    kill_reason, state, violations, wall_s, cpu_s, output, peak_memory_mb, isolation, ...}."""
    from autolab.sandbox import Limits, Policy, run_sandboxed

    lines: list[str] = []
    marks: dict[str, float] = {}
    saved_stat: list = []

    live = {} if live is None else live     # shared with the sandbox: a moving deadline

    def on_line(line: str) -> None:
        if baton is not None and line.startswith(READY_LINE):
            baton.ready(live, t_launch)
        elif baton is not None and line.startswith(GATE_LINE):
            baton.at_gate(live)
        if "clock" not in marks and line.startswith(CLOCK_LINE):
            marks["clock"] = time.monotonic()   # seen from outside: the candidate cannot move it back
        elif line.startswith(SAVED_LINE):
            marks["saved"] = time.monotonic()   # the last save counts
            if baton is not None:
                baton.saved()
            saved_stat[:] = [_stat(cwd / "model.pt"), _stat(cwd / "model.json")]
        lines.append(line)
        if echo:
            print(line, flush=True)

    kw = {"memory_mb": int(mem_mb)} if mem_mb else {}
    t_launch = time.monotonic()
    res = run_sandboxed(argv, cwd=cwd, env=env, on_line=on_line, log_path=log_path,
                        policy=Policy(read_deny=tuple(read_deny), write_allow=tuple(write_allow), harden=harden, relax=relax,
                                      read_allow=None if read_allow is None else tuple(read_allow)),
                        limits=Limits(wall_s=float(wall_s), end_marker=end_marker, after_end_s=float(after_end_s),
                                      tree_cpu_s=cpu_limit_s, **kw), live=live)
    if baton is not None:
        baton.stop_waiting()
    killed = res.state == "killed" and res.reason in ("timeout", "memory", "nproc", "cpu")
    return {
        "returncode": res.returncode, "state": res.state, "killed": killed, "kill_reason": res.reason,
        "violations": [dict(v) for v in res.violations], "wall_s": float(res.wall_s), "cpu_s": res.cpu_s,
        "wait_s": res.wait_s,
        "survivors": [dict(x) for x in res.survivors],
        "output": "\n".join(lines) if lines else res.stdout_tail,
        "peak_memory_mb": res.peak_memory_mb, "isolation": dict(res.isolation),
        "launched_at": t_launch, "frozen_s": float(live.get("frozen_s", 0.0)),
        "clock_start_s": (marks["clock"] - t_launch) if "clock" in marks else None,
        "saved_s": (marks["saved"] - t_launch) if "saved" in marks else None,
        "model_changed_after_save": bool(saved_stat) and saved_stat != [_stat(cwd / "model.pt"), _stat(cwd / "model.json")],
    }


def _stat(p: Path) -> tuple | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)   # ctime: a write then utime() still shows


def _guard_violations(reads_log: Path, workdir: Path, output: str, canary: str, phase: str) -> list[dict[str, str]]:
    """What the in-process guards (guard.py) saw: reads outside the workspace, the packages and
    the train data, and the planted canary API key in the output or in the files left behind."""
    from .guard import read_log

    out = []
    for e in read_log(reads_log)[:20]:
        what = "listed" if e.get("kind") == "list" else "read"
        out.append({"kind": "file_read", "phase": phase,
                    "detail": f"{what} {e['path']} (outside the workspace, the packages and the train data)"})
    where = [f"the {phase} output"] if canary in output else []
    for p in sorted(workdir.rglob("*")):
        try:
            if p.is_file() and p.name != "model.pt" and p.stat().st_size < 50_000_000 and canary.encode() in p.read_bytes():
                where.append(p.name)
        except OSError:
            pass
    if where:
        out.append({"kind": "env", "phase": phase,
                    "detail": f"the canary API key planted in the environment appeared in {', '.join(where[:5])}: "
                              f"the code read the environment and used what it found"})
    return out


# ----------------------------------------------------------------------------- the GPU baton

class _FileLock:
    """An exclusive file lock (flock) taken by polling, so that a wait can be given up."""

    def __init__(self, path: Path):
        self.path, self._fh = path, None

    def take(self, stop: threading.Event) -> bool:
        import fcntl

        fh = open(self.path, "a+")
        while not stop.is_set():
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fh = fh
                return True
            except BlockingIOError:
                stop.wait(0.02)
        fh.close()
        return False

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None


class GpuBaton:
    """Runs that share a GPU take turns, so that a run's timed training has the GPU to itself
    (or nearly: see overlap below) while the next run starts beside it. One file lock per GPU
    (``gpu-KEY.lock``, in the machine's cache) is held from a run's timed go to the end of its
    evaluation.

    A run's train process starts with trusted code only (``boot.py``: interpreter, harness, torch,
    the GPU's context), says it is ready and waits for its go. So the next run's papermill kernel,
    data, interpreter, imports and evaluation processes start while this one trains. The wait is
    not counted against the run's limits (no candidate code runs in it); the hard limit moves by it
    (``live["deadline"]`` of ``autolab.sandbox.run_sandboxed``).

    Without overlap (no NVML, or the preset's ``gpu_overlap`` off) the go is the timed lock: no
    candidate code of two runs is on the GPU at once.

    **With overlap** the go is a second lock, ``gpu-KEY.prep.lock`` (one run at a time in its
    pre-clock work: building, ``torch.compile``, warm-up), which a run may take while another run
    trains. The harness's clock waits at a gate (``clock_gate``: :data:`GATE_LINE`, then the
    gate file) until the run holds the timed lock; only then does it start. So the next run
    compiles during this run's training instead of after its evaluation. Policed through the GPU
    driver (``autolab.gpu_share.Nvml``, per-process SM samples, pids as seen here): while another
    run is inside its training window (``gpu-KEY.timed.json``), the waiting run's processes may
    use at most ``overlap_gpu_s`` GPU-seconds; past that its whole tree is stopped (SIGSTOP,
    ``live["freeze"]``) until that training ends, and the time it is stopped is not counted
    against it. The training run, in turn, measures every other process's GPU-seconds in its own
    window (``contention_gpu_s``); past ``contention_limit_s`` its run is an infrastructure
    failure (run again), so whatever another process does can cost time, never a verdict."""

    def __init__(self, lock_dir: Path, key: str, folder: Path, limit_s: float, nvml: Any = None,
                 overlap_gpu_s: float = 1.0, contention_limit_s: float = 3.0):
        self.lock = _FileLock(lock_dir / f"gpu-{key}.lock")
        self.pause_path = GpuBaton._pause_path(lock_dir, key)
        self.go_file, self.limit_s = folder / "go", float(limit_s)
        self.nvml = nvml                       # None: no overlap
        self.prep_lock = _FileLock(lock_dir / f"gpu-{key}.prep.lock") if nvml is not None else None
        self.state_path = lock_dir / f"gpu-{key}.timed.json"
        self.gate_file = folder / "clock-go" if nvml is not None else None
        self.overlap_gpu_s, self.contention_limit_s = float(overlap_gpu_s), float(contention_limit_s)
        self.ready_at: float | None = None
        self.go_at: float | None = None
        self.go_epoch: float | None = None
        self.gate_at: float | None = None      # the clock's gate reached (overlap)
        self.clock_go_at: float | None = None  # the timed lock taken, the gate opened
        self.clock_go_epoch: float | None = None
        self.saved_at: float | None = None
        self.prep_gpu_s = 0.0                  # this run's GPU-seconds inside other runs' training windows
        self.froze = 0                         # how many times it was stopped for using more
        self.contention_gpu_s = 0.0            # other processes' GPU-seconds inside this run's training window
        self.contention_by: dict[int, float] = {}
        self.home_pid = os.getpid()            # this runner: its descendants are this run's processes
        self.others_memory_peak = 0            # other runners' GPU memory seen at once, at most
        self.busy_while_stopped = 0.0          # this run's GPU-seconds while it was stopped
        self.escaped = False                   # ended for going on using the GPU while stopped
        self.memory_waits = 0                  # polls spent waiting for memory before the go (overlap)
        self.shared = False                    # another run's processes were on the GPU while this one's candidate code ran
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._live: dict | None = None
        self._timed = False

    @staticmethod
    def for_gpu(gpu: str, folder: Path, limit_s: float, overlap: bool = False, **kw: Any) -> "GpuBaton":
        from autolab.harnesskit import cache_root

        locks = cache_root() / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        key = "".join(c if c.isalnum() or c in "-_" else "-" for c in gpu) or "0"
        nvml = None
        if overlap and not GpuBaton.overlap_paused(locks, key):
            # the device's per-process use: NVML on a GPU, the train processes' CPU use on a CPU
            nvml = _NVML_OPEN() if not gpu.startswith("cpu") else _cpu_meter()
        return GpuBaton(locks, key, folder, limit_s, nvml=nvml, **kw)

    PAUSE_S = 900.0   # after a run spoiled by sharing, runs on that GPU take turns without overlap this long

    @staticmethod
    def _pause_path(lock_dir: Path, key: str) -> Path:
        return lock_dir / f"gpu-{key}.no-overlap-until"

    @staticmethod
    def overlap_paused(lock_dir: Path, key: str) -> bool:
        try:
            return time.time() < float(GpuBaton._pause_path(lock_dir, key).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False

    def pause_overlap(self) -> None:
        """A run was spoiled by sharing (contention, out of memory): the next runs on this GPU
        start without overlap for ``PAUSE_S``, so that whatever caused it (a candidate taking the
        memory or the GPU on purpose) costs throughput for a while, never another run's verdict
        again and again."""
        atomic_write_json(self.pause_path, time.time() + self.PAUSE_S)

    def spoiled(self, why: str) -> str:
        """``why`` (a reason this run was spoiled by sharing), after pausing the overlap."""
        self.pause_overlap()
        return why

    @property
    def overlap(self) -> bool:
        return self.nvml is not None

    @property
    def waited_s(self) -> float:
        """Seconds between ready and go (no candidate code ran). The wait at the clock's gate is
        not in it: the tree is stopped there (``live["freeze"]``), so that wait is in the
        sandbox's ``frozen_s``, which the runner adds."""
        if self.ready_at is None:
            return 0.0
        return (self.go_at if self.go_at is not None else time.monotonic()) - self.ready_at

    def _start(self, target: Callable, *args: Any) -> None:
        th = threading.Thread(target=target, args=args, daemon=True, name="gpu-baton")
        self._threads.append(th)
        th.start()

    def ready(self, live: dict, launched_at: float) -> None:
        """The train process is ready for its candidate code (called from the output reader:
        must not block)."""
        if self.ready_at is None:
            self.ready_at, self._live = time.monotonic(), live
            self._start(self._go, live, launched_at)

    def _go(self, live: dict, launched_at: float) -> None:
        lock = self.prep_lock if self.overlap else self.lock
        if not lock.take(self._stop):
            return
        if self.overlap:
            self._wait_for_memory()
            if self._stop.is_set():
                return
        self.go_at, self.go_epoch = time.monotonic(), time.time()
        # the limit counts the time before the wait and after the go, not the wait
        live["deadline"] = self.go_at + self.limit_s - (self.ready_at - launched_at)
        self.go_file.write_text("go\n")
        if self.overlap:
            self._start(self._police, live)
        else:
            self._timed = True

    def _wait_for_memory(self) -> None:
        """A run may start its pre-clock work inside another's timed turn only if the GPU has as
        much memory free as the other runners' processes hold (runs of one lab are alike: its
        warm-up needs about as much), else it waits until they hold less or that turn is over:
        two copies of a model that fills more than half the GPU would run out of memory. So on a
        GPU too small for two, the go comes once the other's train process has ended (its
        memory is free), not merely saved, and the other's evaluation goes on beside it."""
        while not self._stop.is_set() and self._other_training(or_evaluating=True) is not None:
            mem = self.nvml.memory()
            if mem is None:
                return
            if mem[0] >= sum(self._note_others_memory().values()) + 2 * 2**30:
                return
            self.memory_waits += 1
            self._stop.wait(0.5)

    def at_gate(self, live: dict) -> None:
        """The harness's clock waits at its gate (called from the output reader: must not block).
        The whole tree is stopped until the gate opens: the line comes from the candidate's
        process, which could print it and go on compiling, so the wait is not counted only
        because nothing of the run can work in it (the stopped time is the sandbox's
        ``frozen_s``, which neither the limits nor the deadline count)."""
        if self.overlap and self.gate_at is None and self.go_at is not None:
            self.gate_at = time.monotonic()
            live["freeze"] = True
            self._start(self._clock_go, live)

    def _clock_go(self, live: dict) -> None:
        if not self.lock.take(self._stop):
            return
        self.clock_go_at, self.clock_go_epoch = time.monotonic(), time.time()
        self._timed = True
        self._write_state(training=True)
        self.prep_lock.release()                 # the next run may start its pre-clock work
        # the process's own deadline, as a time stamp (it does not see the time it was stopped);
        # written while it is still stopped, so its deadline is a little early, never late
        left = live.get("deadline", float("inf")) + float(live.get("frozen_s", 0.0)) - time.monotonic()
        tmp = self.gate_file.with_suffix(".tmp")
        tmp.write_text(f"{time.time() + min(left, 1e9):.3f}\n")
        os.replace(tmp, self.gate_file)
        live["freeze"] = False
        self._start(self._watch)

    def saved(self) -> None:
        """The model is saved: this run's training window is over."""
        if self.saved_at is None and self._timed:
            self.saved_at = time.monotonic()
            if self.overlap:
                self._write_state(training=False)

    def _write_state(self, training: bool) -> None:
        atomic_write_json(self.state_path, {"runner_pid": os.getpid(), "run": str(self.go_file.parent),
                                            "training": training, "t": time.time()})

    HELD = "(the timed lock's holder)"        # a run in its timed turn that wrote no state: a run without overlap

    def _timed_lock_held(self) -> bool:
        """Whether some run holds the timed lock now (asked without taking it for more than an instant)."""
        import fcntl

        try:
            fd = os.open(self.lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)                           # (closing drops the shared lock, if taken)
        return False

    def _other_training(self, or_evaluating: bool = False) -> str | None:
        """The run (its baton folder) of another runner now inside its training window (or, with
        ``or_evaluating``, anywhere in its timed turn: training or evaluation), if any. The timed
        lock decides whether anyone is in a turn: a state file left behind by a runner that died
        (its pid since reused) names nobody, and a run that holds the lock without writing state
        (one without overlap: its whole turn, start-up included, is timed) is :data:`HELD`."""
        try:
            st = json.loads(self.state_path.read_text())
            if not isinstance(st, dict):
                st = {}
        except (OSError, ValueError):
            st = {}
        if st.get("run") == str(self.go_file.parent) or self.lock._fh is not None or not self._timed_lock_held():
            return None
        try:
            os.kill(int(st["runner_pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return self.HELD                       # the lock's holder wrote no state (or is not the state's runner)
        if not (st.get("training") or or_evaluating):
            return None
        return str(st.get("run"))

    def _police(self, live: dict) -> None:
        """From the go to the timed go: this run's processes inside another run's timed turn (its
        training and its evaluation) use at most ``overlap_gpu_s`` GPU-seconds; past that they are
        stopped until that turn ends."""
        meter = _GpuMeter(self.nvml)
        used: dict[str, float] = {}
        frozen_since: float | None = None
        while not self._stop.is_set() and self.clock_go_at is None:
            other = self._other_training(or_evaluating=True)
            root = live.get("pid")
            mine = meter.read(lambda pid: root is not None and _descends(pid, int(root)))
            over = False
            if other is not None:
                self.shared = True
                self._note_others_memory()
                used[other] = used.get(other, 0.0) + mine
                self.prep_gpu_s = sum(used.values())
                over = used[other] > self.overlap_gpu_s
            # stopped, yet its GPU work goes on (kernels queued before the stop, or a process the stop
            # missed): only ending it stops a GPU context
            if live.get("freeze"):
                frozen_since = frozen_since or time.monotonic()
                if time.monotonic() - frozen_since > 1.5:
                    self.busy_while_stopped += mine
                if self.busy_while_stopped > 2 * self.overlap_gpu_s and not self.escaped:
                    self.escaped = True
                    live["deadline"] = float("-inf")     # the sandbox ends the tree at its next look
            else:
                frozen_since = None
            gated = self.gate_at is not None and self.clock_go_at is None   # stopped at the gate (at_gate)
            if over and not live.get("freeze"):
                self.froze += 1
            if (over or gated) != bool(live.get("freeze")) and self.clock_go_at is None:
                live["freeze"] = over or gated
            self._stop.wait(0.2)
        live["freeze"] = False                   # the gate is open (or the run is over): nothing holds it back

    def _watch(self) -> None:
        """From the timed go to the save: every other process's GPU-seconds on this GPU."""
        meter = _GpuMeter(self.nvml)
        me = self.home_pid
        while not self._stop.is_set() and self.saved_at is None:
            for pid, g in meter.read_by_pid(lambda pid: not _descends(pid, me)).items():
                self.contention_by[pid] = self.contention_by.get(pid, 0.0) + g
            if self._note_others_memory():
                self.shared = True
            self.contention_gpu_s = sum(self.contention_by.values())
            self._stop.wait(0.2)

    def contended(self) -> str | None:
        """Why this run's timed training did not have the GPU to itself (None: it did)."""
        if self.overlap and self.contention_gpu_s > self.contention_limit_s:
            who = ", ".join(f"pid {p}: {g:.1f}" for p, g in sorted(self.contention_by.items(), key=lambda x: -x[1])[:3])
            return (f"infrastructure: other processes used the GPU for {self.contention_gpu_s:.1f} GPU-seconds "
                    f"during this run's timed training (more than contention_limit_s = {self.contention_limit_s:g}; "
                    f"{who}), so its figures are not its own; not the candidate's fault: run it again")
        return None

    SHARED_MEMORY = 4 * 2**30   # other runners' GPU memory past which an out-of-memory is not the run's own doing

    def _note_others_memory(self) -> dict[int, int]:
        """Other runners' processes on the GPU now, pid -> bytes of its memory; the peak of their
        sum is kept (``others_memory_peak``)."""
        me = self.home_pid
        theirs = {p: b for p, b in self.nvml.processes().items() if not _descends(p, me)}
        self.others_memory_peak = max(self.others_memory_peak, sum(theirs.values()))
        return theirs

    def others_on_gpu(self) -> bool:
        """Whether processes of another runner hold a share of the GPU's memory now."""
        return self.overlap and sum(self._note_others_memory().values()) >= self.SHARED_MEMORY

    def escaped_stop(self) -> dict[str, str] | None:
        """The violation of a run whose GPU work went on while it was stopped (it was ended)."""
        if not self.escaped:
            return None
        return {"kind": "gpu_contention", "phase": "train", "detail": (
            f"the run's processes used the GPU for {self.busy_while_stopped:.1f} GPU-seconds while they were "
            f"stopped inside another run's timed turn (work queued before the stop, or a process the stop did "
            f"not reach), more than 2 x overlap_gpu_s = {2 * self.overlap_gpu_s:g}; the run was ended")}

    def shared_failure(self, output: str, what: str = "train process") -> str | None:
        """Why a run that ran out of GPU memory while another runner held a share of the GPU's
        memory (``SHARED_MEMORY``) is not the candidate's failure (None: it is, or it did not
        share: the next run's boot and evaluation contexts alone are not a reason)."""
        if (self.overlap and self.shared and self.others_memory_peak >= self.SHARED_MEMORY
                and "out of memory" in output.lower()):
            return (f"infrastructure: the {what} ran out of GPU memory while another run's processes were "
                    "on the same GPU (overlapped start-up); not necessarily the candidate's fault: run it again "
                    "(the retry limit ends a candidate that fails this way every time)")
        return None

    def timings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpu_go_epoch": self.go_epoch}
        if self.overlap:
            out.update(gpu_overlap=True, gpu_clock_go_epoch=self.clock_go_epoch,
                       overlap_prep_gpu_s=round(self.prep_gpu_s, 3), overlap_froze=self.froze, overlap_memory_wait=self.memory_waits > 0,
                       overlap_frozen_s=round(float((self._live or {}).get("frozen_s", 0.0)), 3),
                       overlap_gate_s=round((self.clock_go_at or time.monotonic()) - self.gate_at, 3)
                       if self.gate_at is not None else 0.0,
                       contention_gpu_s=round(self.contention_gpu_s, 3))
        return out

    def stop_waiting(self) -> None:
        """The train process has ended: waits and watches still going on end (locks taken are kept)."""
        if self.saved_at is None and self._timed:
            self.saved()
        self._stop.set()
        for th in self._threads:
            th.join(timeout=5)

    def release(self) -> None:
        """After the evaluation (or when there is none)."""
        self.stop_waiting()
        if self.overlap:
            try:
                if json.loads(self.state_path.read_text()).get("run") == str(self.go_file.parent):
                    self.state_path.unlink()
            except (OSError, ValueError):
                pass
            self.prep_lock.release()
        self.lock.release()


def _nvml_open() -> Any:
    from autolab.gpu_share import Nvml

    return Nvml.open()


def _cpu_meter() -> Any:
    from autolab.gpu_share import CpuMeter

    # this harness's train processes only: its boot.py as a whole argument (a bare "boot.py" also
    # matched every sandbox's _sandbox_boot.py: another run's evaluation, another checkout's tests)
    return CpuMeter(match=os.fsencode(str(HARNESS_DIR / "boot.py")) + b"\0")


_NVML_OPEN: Callable[[], Any] = _nvml_open     # how the baton reads the GPU's per-process use


def _descends(pid: int, root: int) -> bool:
    """Whether process ``pid`` is ``root`` or one of its descendants (by /proc's parent links, to
    any depth: a candidate's chain of nested processes must not hide its deepest one)."""
    seen: set[int] = set()
    while pid not in seen:
        if pid == root:
            return True
        if pid <= 1:
            return False
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class _GpuMeter:
    """GPU-seconds per process since the last read, from the driver's per-process samples: each
    sample counts the larger of its SM and memory-traffic shares over the time since that
    process's previous sample (at most 1 s; a first sample counts a full second, so a burst is
    never under-counted)."""

    def __init__(self, nvml: Any):
        self.nvml, self.last = nvml, {}
        _, self.since = nvml.utilization(0)       # from now on

    def read_by_pid(self, keep: Callable[[int], bool]) -> dict[int, float]:
        samples, self.since = self.nvml.utilization(self.since)
        out: dict[int, float] = {}
        for smp in sorted(samples, key=lambda x: x.t_us):
            prev = self.last.get(smp.pid)
            if smp.span_us is not None:
                span = smp.span_us / 1e6
            else:
                span = 1.0 if prev is None else min(1.0, max(0.0, (smp.t_us - prev) / 1e6))
            self.last[smp.pid] = smp.t_us
            busy = max(smp.sm, smp.mem)            # kernels, or memory traffic (copies hog the bandwidth too)
            if busy > 0 and keep(smp.pid):
                out[smp.pid] = out.get(smp.pid, 0.0) + busy / 100.0 * span
        return out

    def read(self, keep: Callable[[int], bool]) -> float:
        return sum(self.read_by_pid(keep).values())


# ----------------------------------------------------------------------------- split evaluation

# CUDA IPC (the logits handed to the trusted process without a copy through host memory) needs
# the exporting process in the host's PID and IPC namespaces and torch's reference-counter file
# in the host's /dev/shm. The model process keeps Landlock, the read allow-list, no network and
# no capabilities; the trusted process is undumpable, so the model process cannot read its memory.
_CUDA_IPC_RELAX = ("pid", "ipc", "shm")


def _model_process_reads(mdir: Path, trusted_module: str) -> tuple[str, ...]:
    """What the model process may read (besides the Python environment and the system): its own
    fresh folder, the harness code (nanochat's and the task's own) and autolab; no data file."""
    import autolab

    task_harness = Path(sys.modules[trusted_module.partition(".")[0]].__file__).resolve().parent
    return tuple(dict.fromkeys((str(mdir), str(Path(__file__).resolve().parent), str(task_harness),
                                str(Path(autolab.__file__).resolve().parent))))


MODEL_EXIT_S = 15.0   # seconds the model process has to exit once the trusted side is done


class SplitEvaluation:
    """The split evaluation (shared with speedrun), started early: the trusted ``trusted_module``
    (never imports candidate code; holds the targets) and the sandboxed model server, in a fresh
    folder ``mdir`` that will hold only the script and the weights-only model (the run's workdir,
    the harness folder and the split files denied).

    :meth:`start` launches both while the candidate still trains: they start Python, torch and
    CUDA, connect (the model process proves itself with the run's token) and wait. Nothing of the
    candidate is in ``mdir`` yet and no candidate code runs in either. :meth:`finish` (after the
    train process tree has ended) copies the script and the model in, says ``go``, and waits for
    both: the time from ``go`` to the end is the evaluation's cost (``eval_s``). :meth:`cancel`
    ends both when there is nothing to evaluate."""

    def __init__(self, *, script: str, mdir: Path, hdir: Path, eval_cfg_path: Path, eval_out: Path,
                 trusted_module: str, model_cfg: dict[str, Any], config_env: str, env: dict[str, str],
                 deny: list[str], device: str, threads: int, wall_s: float, mem_mb: int | None, echo: bool,
                 harden: bool = True):
        self.script, self.mdir, self.hdir, self.eval_out = script, mdir, hdir, eval_out
        self.eval_cfg_path, self.trusted_module, self.model_cfg = eval_cfg_path, trusted_module, model_cfg
        self.config_env, self.env, self.deny, self.device = config_env, env, deny, device
        self.threads, self.wall_s, self.mem_mb, self.echo, self.harden = threads, wall_s, mem_mb, echo, harden
        self.trusted = None
        self.thread: threading.Thread | None = None
        self.ev: dict[str, Any] | None = None
        self.sockdir: Path | None = None
        self.started_at = self.go_at = None
        self._ended = False
        self._live: dict = {}     # the model process's sandbox: a deadline once the trusted side is done

    def start(self, before_s: float = 0.0) -> "SplitEvaluation":
        """Launch both processes; ``before_s``: how long they may wait for :meth:`finish` (the
        training's own limit), on top of the evaluation's ``wall_s``."""
        import secrets
        import subprocess

        from autolab.sandbox import scrubbed_env

        from .model_server import TOKEN_ENV

        if self.mdir.exists():
            shutil.rmtree(self.mdir)
        self.mdir.mkdir(parents=True)
        atomic_write_json(self.mdir / "model_config.json", self.model_cfg)
        # the socket lives in a short private folder: a path under the lab can pass AF_UNIX's 107 bytes
        self.sockdir = Path(tempfile.mkdtemp(prefix="al-ev-"))
        sock = self.sockdir / "s"
        if self.eval_out.exists():
            self.eval_out.unlink()
        token = secrets.token_hex(16)
        env = self.env
        tenv = scrubbed_env({"PYTHONPATH": env.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1",
                             "PYTHONDONTWRITEBYTECODE": "1", TOKEN_ENV: token,
                             **{k: v for k, v in env.items() if k.endswith("_NUM_THREADS") or k == "CUDA_VISIBLE_DEVICES"}})
        self.started_at = time.monotonic()
        self._log = open(self.hdir / "eval_trusted.log", "w")
        self.trusted = subprocess.Popen(
            [sys.executable, "-m", self.trusted_module, "--config", str(self.eval_cfg_path), "--out", str(self.eval_out),
             "--socket", str(sock), "--model-dir", str(self.mdir), "--wait-go"],
            cwd=self.hdir, env=tenv, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, text=True)
        menv = {**env, self.config_env: str(self.mdir / "model_config.json"), TOKEN_ENV: token}
        argv = [sys.executable, "-m", "nanochat_harness.model_server", "--socket", str(sock), "--script", self.script,
                "--device", self.device, "--threads", str(self.threads)]

        def model_process() -> None:
            self.ev = _sandboxed(argv, cwd=self.mdir, env=menv, read_deny=tuple(dict.fromkeys(self.deny)), live=self._live,
                                 write_allow=(str(self.mdir), str(self.sockdir)), wall_s=before_s + self.wall_s,
                                 mem_mb=self.mem_mb, log_path=self.hdir / "eval.log", echo=self.echo,
                                 harden=self.harden, read_allow=_model_process_reads(self.mdir, self.trusted_module),
                                 relax=_CUDA_IPC_RELAX if self.device == "cuda" else ())

        self.thread = threading.Thread(target=model_process, name="eval-model-process", daemon=True)
        self.thread.start()
        return self

    def _end(self, say: str) -> None:
        """Say ``say`` to the trusted process (``go``, or nothing: cancelled), then wait for both."""
        self._ended = True
        try:
            if say:
                self.trusted.stdin.write(say + "\n")
                self.trusted.stdin.flush()
            self.trusted.stdin.close()
        except (OSError, ValueError):
            pass
        import subprocess

        try:
            self.trusted.wait(timeout=self.wall_s + 60 if say else 60)
        except subprocess.TimeoutExpired:
            self.trusted.kill()
            self.trusted.wait()
        # the evaluation is over: a model process that does not end (a thread the candidate left
        # running, say) is killed, so it cannot hold the run (and a shared GPU) until its wall limit
        self._live["deadline"] = time.monotonic() + MODEL_EXIT_S
        self.thread.join()
        self._log.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def cancel(self) -> None:
        """End both processes (nothing to evaluate); a no-op once ended."""
        if self.trusted is not None and not self._ended:
            self._end("")

    def finish(self, workdir: Path, cand: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Copy the script (from the candidate's folder, not the workdir training could rewrite)
        and the weights-only model into ``mdir``, say go, and wait. Returns (the model process's
        sandbox result with ``eval_s`` and ``warm_s``, the trusted process's JSON)."""
        why = _copy_model(workdir, self.mdir, cand, self.script)
        if why:
            self.cancel()
            return ({"wall_s": 0.0, "eval_s": 0.0, "violations": [], "output": "", "isolation": {},
                     "peak_memory_mb": 0.0, "state": "failed", "kill_reason": "", "killed": False, "returncode": None},
                    {"ok": False, "error": why})
        self.go_at = time.monotonic()
        self._end("go")
        ev = dict(self.ev or {"wall_s": 0.0, "violations": [], "output": "", "isolation": {}, "peak_memory_mb": 0.0,
                              "state": "failed", "kill_reason": "", "killed": False, "returncode": None})
        ev["eval_s"] = time.monotonic() - self.go_at              # the critical path: go to both ended
        ev["waited_s"] = self.go_at - self.started_at             # started this long before the model was ready
        try:
            er = json.loads(self.eval_out.read_text())
        except (OSError, ValueError):
            tail = "\n".join((self.hdir / "eval_trusted.log").read_text(errors="replace").strip().splitlines()[-10:])
            er = {"ok": False, "error": f"the trusted evaluation wrote no result (exit code {self.trusted.returncode}):\n{tail}"}
        if self.echo:
            print((self.hdir / "eval_trusted.log").read_text(errors="replace").rstrip(), flush=True)
        return ev, er


def _copy_model(workdir: Path, mdir: Path, cand: Path, script: str) -> str | None:
    """Into the model process's folder: the candidate's script (from the candidate's own folder,
    not the workdir training could rewrite), model.pt and model.json; nothing else."""
    for name in ("model.pt", "model.json"):
        src = workdir / name
        if not src.is_file() or src.is_symlink():
            return (f"train.py saved no {name} (or not as a plain file); save the model with "
                    f"H.finish(model, init_kwargs): its weights and how to rebuild it")
        shutil.copyfile(src, mdir / name)
    if not (cand / script).is_file():
        return f"the candidate has no {script}"
    shutil.copyfile(cand / script, mdir / script)
    return None


def split_evaluation(*, cand: Path, workdir: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """:class:`SplitEvaluation` started and finished at once (for a caller that did not start
    it before training)."""
    return SplitEvaluation(**kw).start().finish(workdir, cand)


# ----------------------------------------------------------------------------- the run

def _resolve_candidate(candidate_dir: str | os.PathLike | None, task) -> Path:
    return Path(candidate_dir).resolve() if candidate_dir else task.seed_dir


def _copy_editable(task, src: Path, dst: Path) -> list[str]:
    copied = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and task.is_editable(rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / rel)
            copied.append(rel)
    return copied


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_benchmark(candidate_dir: str | os.PathLike | None, seed: int, preset: str | None,
                  result_path: str | os.PathLike, task_dir: str | os.PathLike | None = None,
                  on_event: EventFn | None = None, overrides: dict[str, Any] | None = None,
                  source: str | None = None, echo: bool = True) -> dict[str, Any]:
    """Run one candidate for one seed on one preset; write and return the result dict.

    ``candidate_dir``: folder with the candidate's editable files (None: the task's seed).
    ``overrides``: preset keys to replace for this run (e.g. ``{"budget_s": 5}`` in tests).
    ``source``: corpus folder (default: $AUTOLAB_DATA or the shared techtext corpus).
    Never raises for a failing candidate: that is ``status: "failed"`` / ``"killed"``."""
    from autolab.errors import AutolabError
    from autolab.task import load_task

    t_start = time.monotonic()
    task = load_task(Path(task_dir) if task_dir else TASK_DIR)
    p = task.preset(preset)
    ov = dict(overrides or {})
    settings = {**p.settings, **{k: v for k, v in ov.items() if k not in ("device", "budget_s", "timeout_s")}}
    device = str(ov.get("device", p.device))
    budget_s = float(ov.get("budget_s", p.budget_s))
    allowance_s = float(settings.get("allowance_s", 15.0))
    grace_s = float(settings.get("kill_grace_s", 1.0))
    clock = str(settings.get("clock", "wall"))
    if clock not in ("wall", "cpu"):
        bad_clock = f"preset {p.name}: clock = {clock!r}; use \"wall\" or \"cpu\" in task.toml"
    else:
        bad_clock = ""
    cpu_clock = clock == "cpu"
    wall_factor = float(settings.get("wall_factor", 4.0)) if cpu_clock else 1.0
    result_path = Path(result_path).resolve()
    result_path.parent.mkdir(parents=True, exist_ok=True)
    cand = _resolve_candidate(candidate_dir, task)
    result: dict[str, Any] = result_skeleton(task.name, p.name, seed, cand,
                                             timings={"budget_s": budget_s, "allowance_s": allowance_s}, corpus={})
    result["clock"] = clock

    def event(**kw: Any) -> None:
        if on_event:
            try:
                on_event(kw)
            except Exception:  # noqa: BLE001
                pass

    def done(status: str, reason: str = "") -> dict[str, Any]:
        result["status"], result["reason"] = status, reason
        result["timings"]["total_s"] = round(time.monotonic() - t_start, 3)
        atomic_write_json(result_path, result)
        event(type="phase", phase="done", status=status, reason=reason)
        if echo:
            print(f"[nanochat] {status}" + (f": {reason}" if reason else ""), flush=True)
        return result

    if bad_clock:
        return done("failed", bad_clock)
    # --- data (cached after the first time)
    event(type="phase", phase="data")
    t0 = time.monotonic()
    try:
        data = prepare_data({**settings, "device": device}, source=source or settings.get("source"), progress=echo)
    except AutolabError as e:
        return done("failed", f"data preparation failed: {e}")
    result["timings"]["data_s"] = round(time.monotonic() - t0, 3)
    result["corpus"] = {"name": data["corpus"]["name"], "train_sha256": data["corpus"]["train_sha256"]}

    # --- private working copy and configs
    workdir = result_path.parent / (result_path.stem + ".work")
    hdir = result_path.parent / (result_path.stem + ".harness")
    for d in (workdir, hdir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    if not cand.is_dir():
        return done("failed", f"candidate folder {cand} does not exist; pass candidate_dir=<folder with train.py>")
    copied = _copy_editable(task, cand, workdir)
    if "train.py" not in copied:
        return done("failed", f"{cand} has no train.py (editable files found: {copied or 'none'}); "
                              f"a nanochat candidate is a folder with train.py")
    result["files"] = copied
    events_path = workdir / "events.jsonl"
    seq_len = int(settings.get("seq_len", 256))
    common = {**settings, "task": task.name, "preset": p.name, "seed": int(seed), "device": device,
              "budget_s": budget_s, "allowance_s": allowance_s, "vocab_size": data["vocab_size"],
              "seq_len": seq_len, "bos_id": data["bos_id"], "corpus": result["corpus"]}
    run_cfg_path = hdir / "run_config.json"
    # runs that share a GPU take turns for their timed work (GpuBaton; the preset's gpu_baton)
    baton = None
    train_limit_s = wall_factor * (budget_s + allowance_s) + grace_s
    gpu_wait_s = float(settings.get("gpu_wait_s", 1800.0))
    if settings.get("gpu_baton") and not cpu_clock:
        bdir = result_path.parent / (result_path.stem + ".baton")
        if bdir.exists():
            shutil.rmtree(bdir)
        bdir.mkdir(parents=True)
        baton = GpuBaton.for_gpu(f"{device}-{os.environ.get('CUDA_VISIBLE_DEVICES', '')}", bdir, train_limit_s,
                                 overlap=bool(settings.get("gpu_overlap")),
                                 overlap_gpu_s=float(settings.get("overlap_gpu_s", 1.0)),
                                 contention_limit_s=float(settings.get("contention_limit_s", 3.0)))
    # the train split is served by a trusted data process (data_server), started with the evaluation's
    # (below) so that it has loaded the split before the candidate asks; the train process cannot read
    # the split itself
    import autolab

    pypath = os.pathsep.join(dict.fromkeys([str(HARNESS_DIR.parent), str(Path(autolab.__file__).resolve().parent.parent)]))
    served = TrainDataServer(train=data["splits"]["train"], bos_id=data["bos_id"], seed=int(seed),
                             chunk_tokens=int(settings.get("doc_chunk_tokens", 0) or 0),
                             buffer_docs=int(settings.get("pack_buffer", 256)), prefetch=int(settings.get("prefetch", 4)),
                             hdir=hdir, env={"PYTHONPATH": pypath})
    launch = time.time()
    run_cfg = {**common, "events_path": str(events_path),
               "data": {"token_bytes": data["token_bytes"], "tokenizer": data["tokenizer"]},
               "train_data": served.client_config(),
               "launch_time": launch, "deadline": launch + wall_factor * (budget_s + allowance_s),
               "finish_reserve_s": float(settings.get("finish_reserve_s", 2.0)),
               **({"cpu_limit_s": budget_s + allowance_s} if cpu_clock else {}),
               **({"baton_file": str(baton.go_file)} if baton else {}),
               **({"clock_gate": str(baton.gate_file)} if baton is not None and baton.overlap else {})}

    denied = [data["splits"][s][k] for s in ("val", "hidden_val") for k in ("tokens", "offsets")]
    denied.append(data["corpus"]["root"])
    env = {
        "PYTHONPATH": pypath, "AUTOLAB_RUN_CONFIG": str(run_cfg_path), "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1",
    }
    import secrets

    from .guard import CANARY_ENV, CANARY_PREFIX

    canary_suffix = secrets.token_hex(12)
    env.update({"AUTOLAB_NANOCHAT_ROLE": "train", CANARY_ENV: canary_suffix})
    # Inductor compiles in this process, not in a pool of worker processes that would still be
    # running when the model is saved (nothing of the candidate may outlive its save)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # torch.compile's caches: the seed's runs write the lab's folder; any other run gets a private
    # copy of it, removed after the run (autolab.harnesskit.compile_cache_for_run); the
    # evaluation's processes never see either
    from autolab.harnesskit import compile_cache_for_run

    ccache = compile_cache_for_run(device)
    cache_dirs = [str(ccache.folder), *map(str, ccache.read)] if ccache is not None else []
    if ccache is not None:
        env.update(ccache.env())
        # the in-process read guard (guard.py) must know them too: Inductor reads its own entries
        run_cfg["compile_cache_dirs"] = cache_dirs
    atomic_write_json(run_cfg_path, run_cfg)
    result["timings"]["compile_cache"] = "none" if ccache is None else ("warm" if ccache.warm() else "cold")
    if device == "cpu":
        threads = str(int(settings.get("threads", 2)))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CUDA_VISIBLE_DEVICES="",
                   OMP_WAIT_POLICY="PASSIVE")  # no spin-waiting when runs share the cores
    elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    mem_mb = int(settings["mem_mb"]) if settings.get("mem_mb") else None

    def _train_and_evaluate() -> dict[str, Any]:
        # --- train
        event(type="phase", phase="train", budget_s=budget_s, allowance_s=allowance_s)
        if echo:
            unit = "CPU s" if cpu_clock else "s"
            print(f"[nanochat] training {cand.name}/train.py, seed {seed}, preset {p.name}: budget {budget_s:g} {unit} "
                  f"+ allowance {allowance_s:g} {unit}" + (f" (wall safety net {wall_factor * (budget_s + allowance_s):g} s)"
                                                            if cpu_clock else ""), flush=True)
        tail = _Tail(events_path, on_event) if on_event else None
        if tail:
            tail.start()
        try:
            # reads by allow-list: the workdir, the harness, token_bytes and the tokenizer (files, not
            # their folder: the token caches sit next to them), the Python environment and the system
            # (autolab.sandbox); no split: the train batches come from the data process's socket
            readable = (data["token_bytes"], data["tokenizer"], str(run_cfg_path), str(HARNESS_DIR), str(Path(autolab.__file__).resolve().parent),
                        *cache_dirs,
                    *((str(baton.go_file.parent),) if baton else ()))
            idle0 = _idle_core_s()
            tr = _sandboxed([sys.executable, str(HARNESS_DIR / "boot.py"), "train.py"], cwd=workdir, env=env,
                            read_deny=tuple(denied), write_allow=(str(workdir), str(served.sockdir),
                                                                  *((str(ccache.folder),) if ccache is not None else ())),
                            wall_s=train_limit_s + (gpu_wait_s if baton else 0.0), baton=baton,
                            mem_mb=mem_mb, log_path=hdir / "train.log", echo=echo, read_allow=readable,
                            end_marker=SAVED_LINE, after_end_s=float(settings.get("after_save_allowance_s", 10.0)),
                            cpu_limit_s=budget_s + allowance_s + grace_s if cpu_clock else None)
            idle1 = _idle_core_s()
        finally:
            if tail:
                tail.stop.set()
                tail.join(timeout=5)
        # waiting for the GPU (no candidate code was meant to run) and stopped while another run trained
        waited = (baton.waited_s + float(tr.get("frozen_s") or 0.0)) if baton else 0.0
        result["timings"]["train_s"] = round(tr["wall_s"] - waited, 3)   # until the last process of the run ended
        result["timings"]["train_wall_s"] = round(tr["wall_s"], 3)
        if baton:
            result["timings"]["gpu_wait_s"] = round(waited, 3)
            result["timings"].update(baton.timings())
        if tr["cpu_s"] is not None:
            result["timings"]["train_cpu_s"] = tr["cpu_s"]        # every process of the run, children included
        if idle0 is not None and idle1 is not None:
            result["timings"]["machine_idle_core_s"] = round(idle1 - idle0, 3)
        if tr["wait_s"] is not None:
            result["timings"]["train_wait_s"] = tr["wait_s"]      # runnable but waiting for a CPU (a busy machine)
        from .guard import READS_LOG

        result["violations"] = list(tr["violations"]) + _guard_violations(
            workdir / READS_LOG, workdir, tr["output"], CANARY_PREFIX + canary_suffix, "train")
        served.stop()
        _served_clock(result, tr, served.report(), budget_s)
        if tr["clock_start_s"] is not None:
            result["timings"]["clock_start_s"] = round(tr["clock_start_s"], 3)
            result["timings"]["startup_s"] = round(tr["clock_start_s"] - waited, 3)   # launch to clock, less the wait
        # the training window, from outside: the clock line's arrival (else the launch) to the model's
        # last save by H.finish (else the exit)
        end = tr["saved_s"] if tr["saved_s"] is not None else tr["wall_s"]
        result["timings"]["train_window_s"] = round(end - (tr["clock_start_s"] or 0.0), 3)
        result["timings"]["train_window_wall_s"] = result["timings"]["train_window_s"]
        if tr["saved_s"] is not None:
            result["timings"]["after_save_s"] = round(tr["wall_s"] - tr["saved_s"], 3)
        if tr["model_changed_after_save"]:
            result["violations"].append({"kind": "tamper", "detail": "model.pt or model.json was rewritten after H.finish saved it "
                                                                     "(training went on outside the measured window)"})
        result["sandbox"] = {"train": {"isolation": tr["isolation"], "peak_memory_mb": tr["peak_memory_mb"],
                                       "state": tr["state"], "reason": tr["kill_reason"]}}
        result["summary"] = parse_summary(tr["output"])
        result["curve"] = read_curve(events_path)
        try:
            result["finish"] = json.loads((workdir / "finish.json").read_text())
            if _finite(result["finish"].get("training_s")):
                result["timings"]["clock_train_s"] = float(result["finish"]["training_s"])
        except (OSError, ValueError, AttributeError):
            pass
        for k in _METRIC_KEYS:
            if _finite(result["summary"].get(k)):
                result["metrics"][k] = result["summary"][k]
        if _finite(result["summary"].get("training_seconds")):
            result["timings"]["script_train_s"] = float(result["summary"]["training_seconds"])
        limit = budget_s + allowance_s
        cpu_used = tr["cpu_s"] if tr["cpu_s"] is not None else 0.0
        if cpu_clock:
            _cpu_clock_timings(result, cpu_used, allowance_s, budget_s)
        if baton is not None and (escaped := baton.escaped_stop()):
            result["violations"].append(escaped)
            return done("killed", "gpu_contention: " + escaped["detail"])
        if baton is not None and (why := baton.contended()):
            return done("failed", baton.spoiled(why))
        if tr["killed"] and baton is not None and baton.go_at is None and tr["kill_reason"] == "timeout":
            return done("failed", f"infrastructure: the run waited {waited:.0f} s for the GPU (gpu_wait_s = "
                                  f"{gpu_wait_s:g}) while other runs used it; not the candidate's fault: run it again")
        if tr["killed"]:
            why = {"timeout": f"timeout: the train process ran past budget_s + allowance_s = {limit:g}s (budget "
                              f"{budget_s:g}s, allowance {allowance_s:g}s) and was killed",
                   "memory": f"memory: the train process tree used more than mem_mb = {mem_mb} MB and was killed",
                   "nproc": "nproc: the train process started too many processes and was killed",
                   "cpu": "cpu: the train process hit its CPU-time limit and was killed"}.get(tr["kill_reason"],
                                                                                            tr["kill_reason"])
            if cpu_clock and tr["kill_reason"] == "cpu":
                why = (f"cpu: the train process tree used {cpu_used:.1f} CPU seconds (every process and thread counted), "
                       f"past budget_s + allowance_s = {limit:g} CPU s (clock = \"cpu\"), and was killed; train while "
                       f"H.time_left() > 0 and count helper processes' work inside the budget")
            elif cpu_clock and tr["kill_reason"] == "timeout":
                why = _wall_net_reason(tr["wall_s"], cpu_used, limit, wall_factor, result["timings"].get(
                    "machine_idle_core_s"), tr["wait_s"])
            elif device == "cpu" and tr["kill_reason"] == "timeout" and tr["wait_s"] is not None \
                    and tr["wait_s"] >= 0.5 * tr["wall_s"]:
                # a wall-clock CPU preset on a machine too busy to give the run its cores
                why = (f"infrastructure: the machine was too busy: the train process waited {tr['wait_s']:.0f} s for a "
                       f"CPU in {tr['wall_s']:.0f} s of wall time (it got {cpu_used:.1f} CPU seconds) and ran past "
                       f"budget_s + allowance_s = {limit:g} s; not the candidate's fault: run it again on a less "
                       f"loaded machine, or use a preset with clock = \"cpu\"")
                return done("failed", why)
            return done("killed", why)
        if cpu_clock and cpu_used > limit + grace_s:
            return done("killed", f"cpu: the train process tree used {cpu_used:.1f} CPU seconds in all (every process "
                                  f"and thread, measured from outside), past budget_s + allowance_s = {limit:g} CPU s")
        if not cpu_clock and tr["wall_s"] - waited > limit + grace_s:
            return done("killed", f"timeout: the train process lived {tr['wall_s'] - waited:.1f}s"
                                  + (f" (not counting {waited:.1f}s waiting for the GPU)" if waited else "")
                                  + f", past budget_s + allowance_s = {limit:g}s")
        if tr["kill_reason"] == "after_end":
            return done("killed", f"after the save: the train process was still running "
                                  f"{settings.get('after_save_allowance_s', 10.0):g}s after H.finish saved the model "
                                  f"(after_save_allowance_s) and was killed; print the summary and exit right after "
                                  f"H.finish")
        if tr["returncode"] != 0 and baton is not None and (why := baton.shared_failure(tr["output"])):
            return done("failed", baton.spoiled(why))
        if tr["returncode"] != 0:
            tail_txt = "\n".join(tr["output"].strip().splitlines()[-15:])
            how = tr["kill_reason"] or f"exit code {tr['returncode']}"
            return done("failed", f"train.py ended with {how}:\n{tail_txt}")
        if not (workdir / "model.pt").exists():
            return done("failed", "train.py finished without saving a model; call H.finish(model) at the end of training")

        # --- evaluate: a trusted process (the targets, the metric) and a sandboxed model process that
        # sees only a fresh folder with train.py and the weights-only model (split_evaluation)
        event(type="phase", phase="eval")
        if not prewarm:
            evaluation.start()
        ev, er = evaluation.finish(workdir, cand)
        result["timings"]["eval_s"] = round(ev["eval_s"], 3)             # from the model's save to the metric
        result["timings"]["eval_waited_s"] = round(ev["waited_s"], 3)    # started that long before, during training
        result["violations"] += [{**v, "phase": "eval"} for v in ev["violations"]]
        result["violations"] += _guard_violations(hdir / "eval_reads.jsonl", mdir, ev["output"],
                                                  CANARY_PREFIX + canary_suffix, "eval")
        result["sandbox"]["eval"] = {"isolation": ev["isolation"], "peak_memory_mb": ev["peak_memory_mb"],
                                     "state": ev["state"], "reason": ev["kill_reason"]}
        if er.get("violation"):
            result["violations"].append({**er["violation"], "phase": "eval"})
        if (ev["killed"] or not er.get("ok")) and baton is not None and baton.others_on_gpu():
            baton.shared = True
            if why := baton.shared_failure(ev["output"] + "\n" + str(er.get("error", "")), "evaluation"):
                return done("failed", baton.spoiled(why))
        if ev["killed"]:
            if (ev["kill_reason"] == "timeout" and ev.get("wait_s") is not None
                    and (ev.get("cpu_s") or 0.0) + ev["wait_s"] >= 0.5 * ev["wall_s"]):
                return done("failed", f"infrastructure: the machine was too busy: the evaluation's model process got "
                                      f"{ev.get('cpu_s') or 0.0:.1f} CPU seconds and waited {ev['wait_s']:.0f} s for a CPU "
                                      f"in {ev['wall_s']:.0f} s, past eval_timeout_s = {settings.get('eval_timeout_s', 300)} "
                                      f"s; not the candidate's fault: run it again on a less loaded machine")
            return done("failed", f"evaluation was killed ({ev['kill_reason'] or 'limit'}); eval_timeout_s is "
                                  f"{settings.get('eval_timeout_s', 300)}s")
        if not er.get("ok"):
            return done("failed", f"evaluation failed: {er.get('error', 'exit code ' + str(ev['returncode']))}")
        result["probes"] = er.get("probes", {})
        for k in ("val_bpb", "hidden_val_bpb"):
            if _finite(er.get(k)):
                result["metrics"][k] = float(er[k])
        if "num_params" not in result["metrics"] and _finite(er.get("num_params")):
            result["metrics"]["num_params"] = er["num_params"]
        result["eval"] = {k: er[k] for k in ("val", "hidden_val", "eval_rows", "seq_len", "timings", "transport") if k in er}
        denied_reads = [v["detail"] for v in ev["violations"] if v.get("kind") == "file_read"]
        if denied_reads and "harness_intact" in result["probes"]:
            result["probes"]["harness_intact"] = {**result["probes"]["harness_intact"], "passed": False,
                                                  "detail": f"the model process tried to read files outside its folder: "
                                                            f"{denied_reads[:3]}"}
        if not _finite(er.get("val_bpb")):
            return done("failed", f"val_bpb is not finite ({er.get('val_bpb')}): the model's logits overflowed or are NaN")
        return done("ok")

    # --- the evaluation's two processes start now, while the candidate trains (SplitEvaluation):
    # their start-up is off the critical path; neither sees anything of the candidate until go
    mdir = result_path.parent / (result_path.stem + ".model")
    eval_cfg_path, eval_out = hdir / "eval_config.json", hdir / "eval.json"
    atomic_write_json(eval_cfg_path, {**common, "data": {"val": data["splits"]["val"],
                                                         "hidden_val": data["splits"]["hidden_val"],
                                                         "token_bytes": data["token_bytes"]},
                                      "eval_timeout_s": float(settings.get("eval_timeout_s", 300))})
    evaluation = SplitEvaluation(
        script="train.py", mdir=mdir, hdir=hdir, eval_cfg_path=eval_cfg_path,
        eval_out=eval_out, trusted_module="nanochat_harness.evaluate", model_cfg={**common, "role": "model"},
        config_env="AUTOLAB_RUN_CONFIG", env={k: v for k, v in env.items() if k not in (
            CANARY_ENV, "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")} | {"AUTOLAB_NANOCHAT_ROLE": "eval"},
        deny=denied + [str(workdir), str(hdir), str(Path(data["token_bytes"]).parent)], device=device,
        threads=int(settings.get("threads", 2)), wall_s=float(settings.get("eval_timeout_s", 300)), mem_mb=mem_mb,
        echo=echo)
    # on a GPU the two start now, beside the training; on a CPU preset (where two more interpreters
    # importing torch would compete with the training for the cores) when the model is saved
    prewarm = bool(settings.get("eval_prewarm", device == "cuda"))
    try:
        served.start()
        if prewarm:
            evaluation.start(before_s=train_limit_s + (gpu_wait_s if baton else 0.0) + 60.0)
        return _train_and_evaluate()
    finally:
        served.stop()           # nothing of the run outlives it (a no-op once stopped)
        evaluation.cancel()
        if baton is not None:
            baton.release()     # after the evaluation: the next run's candidate code may start
        if ccache is not None:
            ccache.discard()    # a private copy: nothing a candidate wrote reaches another run


DATA_BEFORE_CLOCK_S = 1.0   # + 1% of the budget: how much earlier than the clock line the first batch may be asked for


def _served_clock(result: dict[str, Any], tr: dict[str, Any], report: dict[str, Any], budget_s: float) -> None:
    """The data process's view of the training: what it served (``result["train_data"]``) and
    when the first batch was asked for (``timings.data_clock_start_s``, seconds since the train
    process's launch). The clock's start is the earlier of that and the clock line's arrival
    (``tr["clock_start_s"]`` is updated): a clock started late never shortens the window. Train
    data asked for more than ``DATA_BEFORE_CLOCK_S`` + 1% of the budget before the clock line (or
    with no clock line at all) is a ``clock`` violation: training data used before the clock."""
    result["train_data"] = {k: report[k] for k in ("batches", "rows", "tokens", "bytes", "connections", "refused",
                                                   "streams", "load_s", "train_tokens", "ok", "error") if k in report}
    first = report.get("first_request_monotonic")
    if not _finite(first):
        return
    data_s = float(first) - tr["launched_at"]
    result["timings"]["data_clock_start_s"] = round(data_s, 3)
    line_s = tr["clock_start_s"]
    tolerance = DATA_BEFORE_CLOCK_S + 0.01 * budget_s
    if line_s is None or data_s < line_s - tolerance:
        late = "never started" if line_s is None else f"started {line_s - data_s:.1f} s later"
        result["violations"].append({"kind": "clock", "phase": "train", "detail": (
            f"train batches were asked of the harness's data process {data_s:.1f} s after launch, but the training "
            f"clock {late} (tolerance {tolerance:.1f} s): training data was used before the clock; draw batches "
            f"through H.train_loader, whose first batch starts the clock")})
    if line_s is None or data_s < line_s:
        tr["clock_start_s"] = data_s


def _cpu_clock_timings(result: dict[str, Any], cpu_used: float, allowance_s: float, budget_s: float) -> None:
    """On a cpu-clock preset the timings the audit compares with the budget are CPU seconds:
    ``train_s`` is the whole tree's CPU (measured from outside), ``train_window_s`` that less the
    CPU the harness's clock saw before it started (start-up). The harness's own figure is
    checked against the outside one: CPU the tree used beyond the clock's count, start-up
    allowance and a slack is work done out of the clock's view (a hidden helper, a patched clock)."""
    t, fin = result["timings"], result.get("finish") or {}
    t["train_s"] = round(cpu_used, 3)
    before = fin.get("cpu_before_clock_s") if fin.get("clock") == "cpu" else None
    if _finite(before):
        t["train_window_s"] = round(max(0.0, cpu_used - float(before)), 3)
    else:
        t["train_window_s"] = round(cpu_used, 3)
    clock_s = t.get("clock_train_s")
    slack = 1.5 + 0.05 * budget_s
    if _finite(clock_s) and cpu_used > float(clock_s) + allowance_s + slack:
        result["violations"].append({"kind": "clock", "phase": "train", "detail": (
            f"the train process tree used {cpu_used:.1f} CPU seconds (measured from outside, every process and "
            f"thread), but the harness's CPU clock counted {float(clock_s):.1f} s of training: more than the "
            f"{allowance_s:g} s start-up allowance (+{slack:.1f} s) was spent out of the clock's view (a helper "
            f"process it did not see, or a patched clock); do all the work inside the harness's clock")})


# ----------------------------------------------------------------------------- by hand

def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m nanochat_harness.runner", description="one nanochat benchmark run")
    ap.add_argument("--candidate", default=None, help="folder with train.py (default: the seed)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--out", default="result.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    a = ap.parse_args(argv)
    ov = {k: _number(v) for k, v in (s.split("=", 1) for s in a.set)}
    res = run_benchmark(a.candidate, a.seed, a.preset, a.out, overrides=ov)
    print(json.dumps({k: res[k] for k in ("status", "reason", "metrics", "timings")}, indent=2))
    return 0 if res["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
