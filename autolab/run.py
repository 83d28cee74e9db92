"""Run a candidate: one papermill execution of the task's benchmark notebook per seed.

Each run is appended to the log as RUNNING before it starts and as COMPLETE, FAILED or
KILLED when it ends, with metrics, timings, the executed notebook's path and, on
failure, the failing cell, error name and traceback. Nothing here raises for a failed
run: a failure is a state.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .executors import Executor, Job, JobResult, get_executor
from .lab import Lab
from .records import Candidate, Run, State, new_id, now
from .sandbox import PRIVATE_PATHS_ENV, private_paths

# The seed policy (SEED_BASE, missing_seeds, fresh_seeds), run ownership and reaping live in
# the ledger, the one module that answers questions about the log; imported here for this
# module's own use and for the callers that import them from autolab.run.
from .ledger import (MAX_ATTEMPTS, RETRYABLE, SEED_BASE, _owner, fresh_seeds, missing_seeds,  # noqa: E402,F401
                     owner_alive, reap_interrupted, runs_of, seed_range)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

EventFn = Callable[[dict], None]


# ---------------------------------------------------------------------------- one run

def papermill_argv(notebook: Path, out_nb: Path, params: dict) -> list[str]:
    """The command of one run: papermill in its own process (through autolab._papermill_run,
    which only trims start-up and tear-down; the executed notebook is papermill's)."""
    return [sys.executable, "-m", "autolab._papermill_run", str(notebook), str(out_nb), "--kernel", "python3",
            "--params", json.dumps(params, default=str)]


_PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


def _notebook_error(nb_path: Path) -> dict | None:
    """The first error output in an executed notebook. ``cell`` is the index in the task's
    notebook (papermill's injected cells not counted); ``executed_cell`` the index in the
    executed copy; ``execution_count`` the ``In [N]`` shown."""
    try:
        import nbformat

        nb = nbformat.read(nb_path, as_version=4)
    except Exception:
        return None
    src_index = -1
    for i, cell in enumerate(nb.cells):
        if not _PAPERMILL_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            src_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") != "PapermillExecutionError":
                tb = _ANSI.sub("", "\n".join(out.get("traceback", [])))
                return {"cell": src_index, "executed_cell": i, "execution_count": cell.get("execution_count"),
                        "ename": out.get("ename"), "evalue": _ANSI.sub("", str(out.get("evalue"))),
                        "traceback": tb[-8000:]}
    return None


def _finite_numbers(d: dict | None) -> dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def finish_run(lab: Lab, run: Run, res: JobResult, *, protected_before: dict[str, str]) -> Run:
    """Turn an executor's JobResult and the notebook's result JSON into the final Run record."""
    run_dir = Path(run.result_path).parent
    for rel, data in res.files.items():   # remote executors bring files back
        p = run_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    after = lab.task.protected_hashes()
    changed = sorted(k for k in set(protected_before) | set(after) if protected_before.get(k) != after.get(k))
    result: dict = {}
    if run.result_path and Path(run.result_path).exists():
        try:
            result = json.loads(Path(run.result_path).read_text())
        except json.JSONDecodeError as e:
            result = {"status": "failed", "reason": f"result JSON unreadable: {e}"}
    metrics = _finite_numbers(result.get("metrics"))
    timings = _finite_numbers(result.get("timings"))
    timings["papermill_s"] = res.wall_s
    meta = {**run.meta, "protected_changed": changed, "violations": result.get("violations", []),
            "probes": result.get("probes", {}), "summary": result.get("summary", {}), "corpus": result.get("corpus"),
            "host": res.host, "status": result.get("status")}
    status = result.get("status")
    error = None
    if res.timed_out or res.returncode is None:
        state = State.KILLED
        error = {"ename": "Timeout" if res.timed_out else "Killed", "reason": res.killed_reason or "killed",
                 "evalue": f"the run was stopped: {res.killed_reason or 'killed'} after {res.wall_s:.0f} s",
                 "cell": None, "traceback": res.output_tail[-4000:]}
    elif status == "killed":
        state = State.KILLED
        error = {"ename": "BudgetExceeded" if "budget" in str(result.get("reason", "")) or "timeout" in str(result.get("reason", "")) else "Killed",
                 "evalue": str(result.get("reason", "killed by the harness")), "reason": result.get("reason", ""),
                 "cell": None, "traceback": ""}
    elif res.returncode == 0 and status == "ok":
        name = lab.task.metric.name
        if name in metrics and math.isfinite(metrics[name]):
            state = State.COMPLETE
        else:
            state = State.FAILED
            error = {"ename": "MissingMetric", "evalue": f"the result has no finite {name!r}", "cell": None,
                     "reason": "missing metric", "traceback": ""}
    else:
        state = State.FAILED
        error = _notebook_error(Path(run.notebook)) if run.notebook and Path(run.notebook).exists() else None
        if error is None:
            error = {"ename": "RunFailed", "evalue": str(result.get("reason") or f"papermill exited {res.returncode}"),
                     "cell": None, "traceback": res.output_tail[-4000:]}
        error["reason"] = result.get("reason", "")
    if changed and state is State.COMPLETE:
        meta["protected_violation"] = True
    final = run.with_state(state, metrics=metrics, timings=timings, error=error, ended_at=now(), slot=res.slot,
                           meta=meta)
    lab.log.append(final)
    return final


def _tail_events(run_dir: Path, run_id: str, on_event: EventFn, stop: threading.Event) -> None:
    """Follow the harness's events.jsonl under the run folder and forward curve points."""
    offsets: dict[Path, int] = {}
    while True:
        final = stop.is_set()
        for f in run_dir.rglob("events.jsonl"):
            try:
                with f.open("rb") as fh:
                    fh.seek(offsets.get(f, 0))
                    for line in fh:
                        if not line.endswith(b"\n"):
                            break
                        offsets[f] = offsets.get(f, 0) + len(line)
                        try:
                            ev = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        if isinstance(ev, dict):
                            on_event({"type": "curve", "run_id": run_id, **ev})
            except OSError:
                pass
        if final:
            return
        stop.wait(0.5)


def submit_run(lab: Lab, candidate: Candidate, seed: int, *, purpose: str, executor: Executor,
               preset: str | None = None, on_event: EventFn | None = None) -> tuple[Run, "Future[Run]"]:
    """Start one run; returns the RUNNING record and a future of the final record."""
    preset_name = preset or lab.preset_name
    p = lab.task.preset(preset_name)
    prior = [r for r in lab.log.runs_list() if r.candidate_id == candidate.id and r.seed == seed
             and r.purpose == purpose and r.preset == preset_name]
    run_id = new_id("r")
    run_dir = lab.path / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cand_dir = lab.candidate_dir(candidate)
    result_path = run_dir / "result.json"
    out_nb = run_dir / "notebook.ipynb"
    params = {"candidate_dir": str(cand_dir), "seed": seed, "preset": preset_name, "result_path": str(result_path)}
    run = Run(id=run_id, task=lab.task.name, candidate_id=candidate.id, preset=preset_name, seed=seed, purpose=purpose,
              notebook=str(out_nb), result_path=str(result_path), attempt=len(prior) + 1,
              executor=getattr(executor, "name", "local"), meta={"owner": _owner(), "params": params})
    lab.log.append(run)
    if on_event:
        on_event({"type": "run_start", "run_id": run_id, "seed": seed, "candidate_id": candidate.id, "purpose": purpose})
    threads = int(p.settings.get("threads", 1))
    job = Job(run_id=run_id, argv=tuple(papermill_argv(lab.task.notebook, out_nb, params)), cwd=str(lab.task.path),
              timeout_s=p.timeout_s + 60, gpus=p.gpus, threads=threads, run_dir=str(run_dir),
              env={"PYTHONUNBUFFERED": "1", "AUTOLAB_RUN_ID": run_id,   # sandboxed children may not read the log
                   PRIVATE_PATHS_ENV: private_paths(*(str(lab.log.path) + s for s in ("", "-wal", "-shm")))},
              files={rel: (cand_dir / rel).read_bytes() for rel in candidate.files},
              collect=("notebook.ipynb", "result.json"), notebook=str(lab.task.notebook), params=params,
              task_dir=str(lab.task.path))
    before = lab.task.protected_hashes()
    stop = threading.Event()
    if on_event:
        threading.Thread(target=_tail_events, args=(run_dir, run_id, on_event, stop), daemon=True).start()
    job_future = executor.submit(job)
    out: Future[Run] = Future()

    def done(f: "Future[JobResult]") -> None:
        stop.set()
        try:
            final = finish_run(lab, run, f.result(), protected_before=before)
        except BaseException as e:  # record, never lose the run
            final = run.with_state(State.FAILED, ended_at=now(),
                                   error={"ename": type(e).__name__, "evalue": str(e), "cell": None, "traceback": ""})
            lab.log.append(final)
        if on_event:
            on_event({"type": "run_end", "run_id": run_id, "run": final})
        out.set_result(final)

    job_future.add_done_callback(done)
    return run, out


def run(lab: Lab, candidate: Candidate | None = None, seeds: int | Sequence[int] = 1, *, purpose: str = "manual",
        preset: str | None = None, executor: Executor | str | None = None, on_event: EventFn | None = None,
        progress: bool = False) -> list[Run]:
    """Run ``candidate`` (default: the seed) on ``seeds`` (a count of fresh seeds, or explicit seeds);
    blocks until all runs end and returns their final records."""
    candidate = candidate or lab.seed_candidate()
    ex = get_executor(executor or "local") if isinstance(executor, str) or executor is None else executor
    seed_list = list(seeds) if not isinstance(seeds, int) else fresh_seeds(lab, candidate, purpose, seeds, preset)
    futures = [submit_run(lab, candidate, s, purpose=purpose, executor=ex, preset=preset, on_event=on_event)[1]
               for s in seed_list]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(futures), desc=f"runs of {candidate.id}", unit="run")
    results = []
    for f in futures:
        results.append(f.result())
        if bar:
            bar.update(1)
            bar.set_postfix_str(_short(results[-1], lab.task.metric.name))
    if bar:
        bar.close()
    if ex is not executor:
        ex.shutdown()
    return results


def _short(r: Run, metric: str) -> str:
    return f"{r.state.value} {metric}={r.metrics.get(metric, float('nan')):.4f}" if r.ok else r.state.value


from ._callable import make_callable as _make_callable  # noqa: E402

_make_callable(__name__, "run")   # `autolab.run(...)` works whether or not the module was imported first
