"""The executor contract: a Job is one papermill execution; a JobResult what came back."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Job:
    run_id: str
    argv: tuple[str, ...]          # the command (papermill ...), run in cwd
    cwd: str
    timeout_s: float
    gpus: int = 0                   # GPUs the job needs (0 on CPU presets)
    threads: int = 1                # CPU threads the job uses
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)   # files to ship (remote executors)
    collect: tuple[str, ...] = ()   # paths (relative to the run dir) to bring back (remote executors)
    run_dir: str = ""               # the driver's run folder (argv writes there)
    notebook: str = ""              # the benchmark notebook (remote executors rebuild argv from these)
    params: dict = field(default_factory=dict)   # papermill parameters; candidate_dir / result_path are driver paths
    task_dir: str = ""              # the task folder (cwd of the notebook)


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


class Executor(Protocol):
    name: str

    @property
    def slots(self) -> int: ...

    def submit(self, job: Job) -> "Future[JobResult]": ...

    def shutdown(self, wait: bool = True) -> None: ...
