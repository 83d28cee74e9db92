"""How a Job becomes a command line: the one place that builds it, for every executor.

A job runs as ``python -m autolab._papermill_run NOTEBOOK RUN_DIR/notebook.ipynb --outcome
RUN_DIR/outcome.json --kernel K --params JSON`` in the job's working folder. A remote
executor first re-roots the job on its worker (``on_worker``) and then builds the command
from the re-rooted job with the same function, so local and remote runs differ only in
their paths.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .base import Job

EXECUTED = "notebook.ipynb"   # the executed notebook (papermill's), under the job's run_dir
OUTCOME = "outcome.json"      # written by autolab._papermill_run: status, return code, the error's fields

# the benchmark notebook contract: parameters that hold paths of the submitting machine
CANDIDATE_PARAM = "candidate_dir"
RESULT_PARAM = "result_path"


def executed_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EXECUTED


def outcome_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / OUTCOME


def command(job: Job) -> list[str]:
    """The argv of one execution of ``job`` (run it in ``job.cwd``)."""
    return [sys.executable, "-m", "autolab._papermill_run", str(job.notebook), str(executed_path(job.run_dir)),
            "--outcome", str(outcome_path(job.run_dir)), "--kernel", job.kernel,
            "--params", json.dumps(job.params, default=str)]


def files_to_collect(job: Job) -> tuple[str, ...]:
    """Paths under ``run_dir`` a remote executor brings back: the executed notebook, the
    outcome, then the job's own ``collect`` (each once)."""
    return tuple(dict.fromkeys((EXECUTED, OUTCOME, *job.collect)))


def on_worker(job: Job, *, notebook: str | Path, cwd: str | Path, run_dir: str | Path,
              candidate_dir: str | Path) -> Job:
    """``job`` re-rooted on a worker: its notebook, working folder, run folder and candidate
    folder at the worker's paths. ``result_path`` keeps its place relative to the run folder
    (``result.json`` when it was not under the driver's run folder)."""
    params = dict(job.params)
    params[CANDIDATE_PARAM] = str(candidate_dir)
    rel = "result.json"
    rp = job.params.get(RESULT_PARAM)
    if rp:
        try:
            rel = Path(rp).relative_to(job.run_dir).as_posix()
        except ValueError:
            rel = Path(rp).name
    params[RESULT_PARAM] = str(Path(run_dir) / rel)
    return dataclasses.replace(job, notebook=str(notebook), cwd=str(cwd), run_dir=str(run_dir), params=params)
