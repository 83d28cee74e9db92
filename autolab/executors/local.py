"""The local executor: a pool of slots, one per GPU (CUDA_VISIBLE_DEVICES pinned) or,
on machines without GPUs, CPU slots of ``threads`` cores each. Every job is its own
process session, killed as a whole on timeout. The command comes from ``notebook.command``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from .base import Executor, Job, JobResult
from .notebook import command


def _gpu_count() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return sum(1 for l in out.stdout.splitlines() if l.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Cores:
    """A counting pool of CPU cores: a job takes as many as it runs threads (capped at the pool)."""

    def __init__(self, n: int):
        self.n, self.free, self.cv = n, n, threading.Condition()

    def take(self, k: int, give_up=lambda: False) -> int:
        """Take ``k`` cores (capped at the pool), waiting for them; 0 without taking any once
        ``give_up()`` is true (a job cancelled while it waits)."""
        k = max(1, min(k, self.n))
        with self.cv:
            while self.free < k:
                if give_up():
                    return 0
                self.cv.wait(timeout=0.5)
            self.free -= k
        return k

    def give(self, k: int) -> None:
        with self.cv:
            self.free += k
            self.cv.notify_all()


class _Gpus:
    """The visible GPUs as a pool of shares: a job takes ``gpus`` GPUs, a 1/``runs_per_gpu``
    share of each (the least loaded first); a whole GPU is ``UNITS`` units."""

    UNITS = 60   # divisible by 1..6

    def __init__(self, ids: list[str]):
        self.free = {i: self.UNITS for i in ids}
        self.cv = threading.Condition()

    def take(self, gpus: int, runs_per_gpu: int = 1, give_up=lambda: False) -> tuple[list[str], int]:
        """Take the shares, waiting for them; ([], 0) without taking any once ``give_up()`` is
        true (a job cancelled while it waits)."""
        unit = self.UNITS // max(1, min(int(runs_per_gpu), 6))
        with self.cv:
            while True:
                ok = sorted((i for i, f in self.free.items() if f >= unit), key=lambda i: -self.free[i])
                if len(ok) >= gpus:
                    for i in ok[:gpus]:
                        self.free[i] -= unit
                    return ok[:gpus], unit
                if give_up():
                    return [], 0
                self.cv.wait(timeout=0.5)

    def give(self, ids: list[str], unit: int) -> None:
        with self.cv:
            for i in ids:
                self.free[i] += unit
            self.cv.notify_all()


class LocalExecutor(Executor):
    """``LocalExecutor(gpu_slots=None, cpu_slots=None)``: one slot per visible GPU for GPU
    jobs; CPU jobs share the machine's cores (``cpu_slots`` overrides the count), each taking
    as many cores as it runs threads."""

    name = "local"

    def __init__(self, gpu_slots: int | None = None, cpu_slots: int | None = None, threads_per_job: int = 1):
        gpus = _gpu_count() if gpu_slots is None else gpu_slots
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
        self._gpus = _Gpus(ids[:gpus])
        self._n_gpu = gpus
        cores = os.cpu_count() or 1
        self._n_cpu = cpu_slots if cpu_slots is not None else max(1, cores // max(1, threads_per_job))
        # cpu_slots given: that many CPU runs at once, one unit each; else runs share the cores
        self._runs_per_slot = cpu_slots is not None
        self._cores = _Cores(cores if cpu_slots is None else cpu_slots)
        self._procs: set[subprocess.Popen] = set()
        self._jobs: dict[str, subprocess.Popen | None] = {}   # run id -> its process (None: waiting for a slot)
        self._cancelled: dict[str, str] = {}                  # run id -> why it was cancelled
        self._lock = threading.Lock()
        self._closed = False
        self._busy_s = 0.0

    @property
    def busy_s(self) -> float:
        """Slot-seconds spent executing jobs (for idle-time measurements)."""
        return self._busy_s

    @property
    def slots(self) -> int:
        return self._n_gpu if self._n_gpu else self._n_cpu

    def slots_for(self, gpus: int, cpu_threads: int = 1, runs_per_gpu: int = 1) -> int:
        """How many runs of this kind can execute at once."""
        if gpus:
            return (self._n_gpu // max(1, gpus)) * max(1, min(int(runs_per_gpu), 6))
        if self._runs_per_slot:
            return self._cores.n
        return max(1, self._cores.n // max(1, min(cpu_threads, self._cores.n)))

    def submit(self, job: Job) -> "Future[JobResult]":
        fut: Future[JobResult] = Future()
        with self._lock:
            self._jobs[job.run_id] = None
        t = threading.Thread(target=self._execute, args=(job, fut), name=f"autolab-{job.run_id}", daemon=True)
        t.start()
        return fut

    def cancel(self, run_id: str, reason: str, *, waiting_only: bool = False) -> bool:
        """Kill the job's whole process session now (or drop it while it waits for a slot); its
        future resolves to a JobResult with ``killed_reason=reason``."""
        with self._lock:
            if run_id not in self._jobs or (waiting_only and self._jobs[run_id] is not None):
                return False
            self._cancelled[run_id] = reason
            proc = self._jobs[run_id]
        if proc is not None:
            _kill_session(proc)
        return True

    def _execute(self, job: Job, fut: Future) -> None:
        try:
            self._execute_job(job, fut)
        finally:
            with self._lock:
                self._jobs.pop(job.run_id, None)
                self._cancelled.pop(job.run_id, None)

    def _cancel_reason(self, run_id: str) -> str:
        with self._lock:
            return self._cancelled.get(run_id, "")

    def _execute_job(self, job: Job, fut: Future) -> None:
        lim = job.limits
        if lim.gpus and not self._n_gpu:
            fut.set_result(JobResult(job.run_id, None, 0.0, killed_reason="no GPU on this machine",
                                     output_tail="this preset needs a CUDA GPU; choose a cpu preset or run on a GPU machine",
                                     host=socket.gethostname()))
            return
        gpu_ids: list[str] = []
        taken = unit = 0
        start = time.monotonic()
        give_up = lambda: bool(self._cancel_reason(job.run_id))   # noqa: E731 - cancelled while it waits
        if lim.gpus:
            gpu_ids, unit = self._gpus.take(lim.gpus, lim.runs_per_gpu, give_up=give_up)
        else:
            taken = self._cores.take(1 if self._runs_per_slot else lim.cpu_threads, give_up=give_up)
        why = self._cancel_reason(job.run_id)
        if why:   # cancelled while it waited for a slot: it never starts
            if gpu_ids:
                self._gpus.give(gpu_ids, unit)
            if taken:
                self._cores.give(taken)
            fut.set_result(JobResult(job.run_id, None, time.monotonic() - start, killed_reason=why,
                                     output_tail="cancelled before it started", host=socket.gethostname()))
            return
        slot = ("gpu:" + ",".join(gpu_ids)) if gpu_ids else "cpu"
        env = dict(os.environ)
        env.update(job.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids) if gpu_ids else ""
        start = time.monotonic()
        tail = ""
        try:
            if self._closed:
                raise RuntimeError("executor is shut down")
            Path(job.run_dir).mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(command(job), cwd=job.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True, errors="replace")
            with self._lock:
                self._procs.add(proc)
                self._jobs[job.run_id] = proc
                cancelled_now = job.run_id in self._cancelled
            if cancelled_now:   # cancelled between the slot and the start
                _kill_session(proc)
            chunks: list[str] = []
            reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
            reader.start()
            timed_out = False
            try:
                proc.wait(timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_session(proc)
                proc.wait()
            _kill_session(proc)   # nothing of the job outlives it
            reader.join(timeout=5)
            tail = "".join(chunks)[-20000:]
            wall = time.monotonic() - start
            why = self._cancel_reason(job.run_id)
            if why:   # cancelled: killed on purpose, whatever its exit status says
                fut.set_result(JobResult(job.run_id, None, wall, killed_reason=why, output_tail=tail, slot=slot,
                                         host=socket.gethostname()))
                return
            fut.set_result(JobResult(job.run_id, None if timed_out else proc.returncode, wall, timed_out=timed_out,
                                     killed_reason="timeout" if timed_out else "", output_tail=tail, slot=slot,
                                     host=socket.gethostname()))
        except BaseException as e:  # never leave a future unresolved
            fut.set_result(JobResult(job.run_id, None, time.monotonic() - start, killed_reason=f"executor error: {e!r}",
                                     output_tail=tail, slot=slot, host=socket.gethostname()))
        finally:
            with self._lock:
                self._procs = {p for p in self._procs if p.poll() is None}
                self._busy_s += time.monotonic() - start
            if gpu_ids:
                self._gpus.give(gpu_ids, unit)
            else:
                self._cores.give(taken)

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True
        with self._lock:
            for rid in self._jobs:   # killed by the shutdown, not by their candidates: re-run later
                self._cancelled.setdefault(rid, "interrupted")
            for p in list(self._procs):
                _kill_session(p)
