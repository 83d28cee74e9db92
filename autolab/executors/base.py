"""The executor contract: a Job is one execution of a benchmark notebook; a JobResult is what
came back; an Executor (abstract base) runs Jobs on slots.

A Job says *what* to run (the notebook, its parameters, its working folder, the candidate's
files, the environment) and under which limits (wall-clock timeout, GPUs, CPU threads); how
the command line is built from it is the executors' business (``executors/notebook.py``),
the same for every executor.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobLimits:
    """What one run may use, resolved from the task's preset once, by the side that submits it."""

    timeout_s: float                # wall-clock limit of the whole execution (papermill included)
    gpus: int = 0                   # GPUs the job needs (0 on CPU presets)
    cpu_threads: int = 1            # CPU threads the job uses
    runs_per_gpu: int = 1           # runs that may share each of its GPUs (they take turns for their timed
    #                                 work: the harness's GPU baton; the preset's runs_per_gpu)

    def to_dict(self) -> dict:
        return {"timeout_s": self.timeout_s, "gpus": self.gpus, "cpu_threads": self.cpu_threads,
                "runs_per_gpu": self.runs_per_gpu}


@dataclass(frozen=True)
class Job:
    """One papermill execution of ``notebook`` with ``params``, in the working folder ``cwd``.

    ``run_dir`` is the folder that receives the executed notebook and the outcome file
    (``notebook.EXECUTED``, ``notebook.OUTCOME``). Paths are the submitting machine's: a
    remote executor writes ``files`` into a candidate folder of its own and re-roots the
    parameters ``candidate_dir`` and ``result_path`` (the benchmark notebook contract) there,
    then brings the executed notebook, the outcome and ``collect`` back in ``JobResult.files``.
    """

    run_id: str
    notebook: str                   # the benchmark notebook to execute
    cwd: str                        # its working folder (the task folder)
    run_dir: str                    # where the executed notebook and the outcome file are written
    limits: JobLimits
    params: dict = field(default_factory=dict)              # papermill parameters (JSON types)
    env: dict[str, str] = field(default_factory=dict)       # added to the executor's environment
    files: dict[str, bytes] = field(default_factory=dict)   # the candidate's files (remote executors ship them)
    collect: tuple[str, ...] = ()   # more files under run_dir to bring back (remote executors)
    kernel: str = "python3"


@dataclass(frozen=True)
class JobResult:
    run_id: str
    returncode: int | None          # None: killed before it returned
    wall_s: float
    timed_out: bool = False
    killed_reason: str = ""         # "" | "timeout" | "worker lost" | ...
    output_tail: str = ""
    slot: str = ""
    host: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # collected files (remote executors)


class Executor(abc.ABC):
    """Where runs execute. Everything the loop and ``autolab._run`` ask of an executor is here;
    a subclass that leaves one of them out cannot be instantiated.

    ``submit`` must never raise for a run that fails: every outcome (timeout, lost worker,
    no such resource) is a resolved ``JobResult``."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Recorded as ``Run.executor`` (a class attribute is enough: ``name = "local"``)."""

    @property
    @abc.abstractmethod
    def slots(self) -> int:
        """Runs in flight at once for this executor's default kind of run."""

    @abc.abstractmethod
    def slots_for(self, gpus: int, cpu_threads: int = 1, runs_per_gpu: int = 1) -> int:
        """Runs in flight at once of a kind that needs ``gpus`` GPUs (or ``cpu_threads`` CPU
        threads), ``runs_per_gpu`` of them sharing each GPU."""

    @property
    @abc.abstractmethod
    def busy_s(self) -> float:
        """Slot-seconds spent executing jobs so far (the loop measures idle time with it)."""

    @abc.abstractmethod
    def submit(self, job: Job) -> "Future[JobResult]":
        """Start ``job``; the future resolves to its JobResult (never to an exception)."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop every job still running and release the executor's resources."""

    def cancel(self, run_id: str, reason: str, *, waiting_only: bool = False) -> bool:
        """Stop the one job of ``run_id`` (waiting for a slot or running; with ``waiting_only``,
        only if it has not started) and everything it started; its future then resolves to
        ``JobResult(returncode=None, killed_reason=reason)``. True when the job was found and
        cancelled; False when it had ended (or started, with ``waiting_only``), is unknown, or
        this executor cannot cancel a single job (the default: a subclass that can, says so)."""
        return False

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
