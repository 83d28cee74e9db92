"""Run a candidate: one papermill execution of the task's benchmark notebook per seed.

Each run is appended to the log as RUNNING before it starts and as COMPLETE, FAILED or
KILLED when it ends, with metrics, timings, the executed notebook's path, the preset and
limits it ran under and, on failure, the failing cell, error name and traceback (from the
outcome file the papermill wrapper writes). Nothing here raises for a failed run: a
failure is a state. How a job becomes a process is the executors' business.
"""

from __future__ import annotations

import json
import math
import re
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Sequence

from .executors import Executor, Job, JobLimits, JobResult, get_executor
from .executors.notebook import executed_path, outcome_path
from .gpu_share import hardware as probe_hardware
from .harnesskit import COMPILE_CACHE_ENV, COMPILE_CACHE_FROM_ENV
from .lab import MODEL_SUFFIXES, Lab
from .records import Candidate, Purpose, Run, State, new_id, now
from .sandbox import PRIVATE_PATHS_ENV, private_paths
from .task import Preset

# The seed policy (SEED_BASE, missing_seeds, fresh_seeds), run ownership and reaping live in
# the ledger, the one module that answers questions about the log; imported here for this
# module's own use and for the callers that import them from autolab._run.
from .ledger import (CANCELLED, INFRASTRUCTURE, MAX_ATTEMPTS, RETRYABLE, SEED_BASE, _owner, fresh_seeds,  # noqa: E402,F401
                     missing_seeds, not_a_verdict, owner_alive, reap_interrupted, runs_of, seed_range)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

EventFn = Callable[[dict], None]


# ---------------------------------------------------------------------------- one run
#
# A run is: the RUNNING record and its Job (new_run, build_job), handed to an executor
# (submit_run), whose JobResult, the notebook's result JSON and the wrapper's outcome file
# become the final record (finish_run); run() submits several and blocks.

RESULT_FILE = "result.json"        # the notebook's result JSON, under the run folder
TIMEOUT_GRACE_S = 60.0             # papermill's start-up and tear-down on top of the preset's timeout_s


def job_limits(preset: Preset) -> JobLimits:
    """The limits of one run of ``preset``: the whole execution's wall clock (the preset's
    ``timeout_s`` plus papermill's start-up and tear-down), its GPUs and CPU threads."""
    return JobLimits(timeout_s=preset.timeout_s + TIMEOUT_GRACE_S, gpus=preset.gpus,
                     cpu_threads=int(preset.settings.get("threads", 1)),
                     runs_per_gpu=int(preset.settings.get("runs_per_gpu", 1)) if preset.gpus else 1)


def preset_record(preset: Preset) -> dict:
    """The preset as resolved for a run, recorded in ``Run.meta["preset"]`` (the audit reads
    it there: a task.toml edited later does not change what a past run ran under)."""
    return {"name": preset.name, "device": preset.device, "budget_s": preset.budget_s, "timeout_s": preset.timeout_s,
            "gpus": preset.gpus, "settings": dict(preset.settings)}


def _verified(run: Run, record: dict) -> bool:
    """A run whose per-problem results may be carried: COMPLETE on exactly this preset record,
    status ok, every probe passed, no violation, no protected file changed."""
    m = run.meta
    return (run.state is State.COMPLETE and m.get("preset") == record and m.get("status") == "ok"
            and not m.get("violations") and not m.get("protected_violation") and not m.get("protected_changed")
            and bool(m.get("probes")) and all(isinstance(p, dict) and p.get("passed") for p in m["probes"].values()))


def carry_plan(lab: Lab, candidate: Candidate, seed: int, *, purpose: str, preset: Preset,
               full: bool = False) -> dict | None:
    """What a run of ``candidate`` may carry from its parent instead of re-running (tasks with
    ``[files] carry``): the parent's results of every unit (problem) whose files the candidate
    did not change, from the parent's own verified run of the same preset in this lab's log
    (``_verified``; same seed and purpose preferred, then the same seed, then the latest), as
    ``{"from_run", "from_candidate", "from_seed", "from_purpose", "problems": {unit: {metric
    prefix: value}}, "rechecked": [...]}``. None means a full run: ``full``, a final run, a task or
    preset without carry, no parent, nothing changed or nothing unchanged, no verified parent run
    holding every carried unit's results."""
    task = lab.task
    if (full or not task.carry or not preset.settings.get("carry", True) or not candidate.parent_id
            or Purpose.parse(purpose).canonical is Purpose.FINAL):
        return None
    parent = lab.candidate(candidate.parent_id)
    old, new = lab.files(parent), lab.files(candidate)
    units = task.units(preset.name, new)
    changed = set(task.changed_units(preset.name, old, new))
    keep = [u for u in units if u not in changed]
    if not keep or not changed & set(units):
        return None
    record = preset_record(preset)
    runs = [r for r in lab.log.runs_list() if r.candidate_id == parent.id and r.preset == preset.name
            and _verified(r, record)]
    runs.sort(key=lambda r: (r.seed == seed and r.purpose == purpose, r.seed == seed, r.ended_at or ""))
    for src in reversed(runs):
        problems = {u: {k[:-len(u) - 1]: v for k, v in src.metrics.items() if k.endswith("." + u)} for u in keep}
        if all(problems.values()):
            return {"from_run": src.id, "from_candidate": parent.id, "from_seed": src.seed, "from_purpose": src.purpose,
                    "problems": problems, "rechecked": sorted(changed & set(units))}
    return None


def run_hardware(device: str, gpus: int, slot: str | None = None) -> str | None:
    """The hardware a run on ``device`` with ``gpus`` GPUs gets on this machine
    (``gpu_share.hardware``): the model of its GPUs (the local executor's ``slot`` "gpu:0,1" names
    them; before a slot is known, this process's visible GPUs) or of the CPU; ``$AUTOLAB_HARDWARE``
    when set. Taken by the runner, never by candidate code. (The Ray executor's runs are recorded
    with the driver's probe: a cluster of mixed nodes should name its node class in
    ``$AUTOLAB_HARDWARE``.)"""
    ids = slot[len("gpu:"):] if slot and slot.startswith("gpu:") else None
    return probe_hardware(device, gpus, ids)


def new_run(lab: Lab, candidate: Candidate, seed: int, *, purpose: str, preset: Preset, limits: JobLimits,
            executor_name: str, carry: dict | None = None) -> Run:
    """The RUNNING record of one run (not yet logged), with its run folder created and the
    hardware it will run on (``run_hardware``: the ledger compares runs within one hardware, and
    counts a RUNNING run's seed as taken there)."""
    prior = [r for r in lab.log.runs_list() if r.candidate_id == candidate.id and r.seed == seed
             and r.purpose == purpose and r.preset == preset.name]
    run_id = new_id("r")
    run_dir = lab.path / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    # paths relative to the lab folder, so that a copied lab finds its files (build_job resolves them)
    params = {"candidate_dir": lab.relative(lab.candidate_dir(candidate)), "seed": seed, "preset": preset.name,
              "result_path": lab.relative(result_path)}
    meta_carry = {}
    if carry:   # the notebook's `carry` parameter; the record keeps where it came from
        params["carry"] = json.dumps(carry, sort_keys=True)
        meta_carry = {"carried": {k: v for k, v in carry.items() if k != "problems"} | {"problems": sorted(carry["problems"])}}
    return Run(id=run_id, task=lab.task.name, candidate_id=candidate.id, preset=preset.name, seed=seed,
               purpose=purpose, notebook=lab.relative(executed_path(run_dir)), result_path=lab.relative(result_path),
               attempt=len(prior) + 1, executor=executor_name, hardware=run_hardware(preset.device, preset.gpus),
               meta={"owner": _owner(), "params": params, "preset": preset_record(preset), "limits": limits.to_dict(),
                     **meta_carry})


def build_job(lab: Lab, candidate: Candidate, run: Run, limits: JobLimits) -> Job:
    """The Job of a RUNNING record: the task's notebook with the run's parameters, in the task
    folder, the candidate's files, and an environment that names the paths a sandboxed child
    may not read (the log, which holds LLM prompts and answers). The Job's paths are absolute."""
    params = dict(run.meta["params"])
    for key in ("candidate_dir", "result_path"):
        if params.get(key):
            params[key] = str(lab.file(params[key]))
    cand_dir = Path(params["candidate_dir"])
    return Job(run_id=run.id, notebook=str(lab.task.notebook), cwd=str(lab.task.path), run_dir=str(_run_dir(lab, run)),
               limits=limits, params=params,
               env={"PYTHONUNBUFFERED": "1", "AUTOLAB_RUN_ID": run.id,
                    PRIVATE_PATHS_ENV: private_paths(*(str(lab.log.path) + s for s in ("", "-wal", "-shm"))),
                    **compile_cache_job_env(lab, candidate)},
               files={rel: (cand_dir / rel).read_bytes() for rel in candidate.files},
               collect=(Path(run.result_path).name,))


def compile_cache_job_env(lab: Lab, candidate: Candidate) -> dict[str, str]:
    """The variables that give a run its candidate's torch.compile cache on the machine that
    runs it (``autolab.harnesskit.compile_cache_for_run``): the lab's key and the candidate, and the
    ancestors (nearest first) whose cache its first run starts from."""
    chain, seen = [], {candidate.id}
    cur = candidate
    while cur.parent_id and cur.parent_id not in seen:
        seen.add(cur.parent_id)
        chain.append(cur.parent_id)
        nxt = lab.log.get("candidate", cur.parent_id)
        if nxt is None:
            break
        cur = nxt
    return {COMPILE_CACHE_ENV: f"{lab.key}/{candidate.id}", COMPILE_CACHE_FROM_ENV: ",".join(chain)}


def _run_dir(lab: Lab, run: Run) -> Path:
    """The run's folder (its stored paths are relative to the lab, or absolute in older labs)."""
    return lab.run_dir(run)


def _finite_numbers(d: dict | None) -> dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def read_result(path: str | Path | None) -> dict:
    """The notebook's result JSON ({} when it wrote none; a failed status when unreadable)."""
    if not path or not Path(path).exists():
        return {}
    try:
        result = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {"status": "failed", "reason": f"result JSON unreadable: {e}"}
    return result if isinstance(result, dict) else {"status": "failed", "reason": "result JSON is not an object"}


def read_outcome(run_dir: str | Path) -> dict | None:
    """The outcome file ``autolab._papermill_run`` wrote for the run (None when it wrote none:
    the process was killed, or the run did not go through it)."""
    p = outcome_path(run_dir)
    try:
        outcome = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return outcome if isinstance(outcome, dict) else None


def _signal_name(returncode: int) -> str:
    import signal

    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _judge(res: JobResult, result: dict, outcome: dict | None, metrics: dict[str, float],
           metric: str, limits: dict | None = None) -> tuple[State, dict | None]:
    """The final state and error of a run from what its executor, the notebook's result and
    the wrapper's outcome say (in that order of authority).

    Endings that are not the candidate's are KILLED with a reason the ledger re-queues
    (``ledger.not_a_verdict``): the user's cancel (``CANCELLED``), a lost worker or an
    interrupted executor (``RETRYABLE``), and the machine's, whose reason starts with
    ``infrastructure:`` — the executor's wall-clock limit (the harness's own budget limits end
    a run long before it, so reaching it means a loaded machine), the papermill process killed
    by a signal (the OOM killer, an operator's kill -9; the candidate runs in the harness's
    sandbox, never in that process) before the notebook finished, an executor error, or a
    harness that says so itself (a starved run on a CPU-clock preset)."""
    status = result.get("status")
    reason = str(result.get("reason", ""))
    if res.timed_out or res.returncode is None:
        why = res.killed_reason or "killed"
        if res.timed_out:
            limit = (limits or {}).get("timeout_s")
            why = (f"{INFRASTRUCTURE} the executor's wall-clock limit"
                   + (f" of {limit:.0f} s" if isinstance(limit, (int, float)) else "")
                   + " passed before the notebook ended (the harness's own limits end a run well before it: a loaded machine)")
        elif why.startswith("executor error"):
            why = f"{INFRASTRUCTURE} {why}"
        ename = "Timeout" if res.timed_out else ("Cancelled" if why == CANCELLED else "Killed")
        return State.KILLED, {"ename": ename, "reason": why,
                              "evalue": f"the run was stopped: {why} after {res.wall_s:.0f} s",
                              "cell": None, "traceback": res.output_tail[-4000:]}
    if reason.startswith(INFRASTRUCTURE) and status != "ok":   # the harness saw the machine starve the run
        return State.KILLED, {"ename": "Infrastructure", "evalue": reason, "reason": reason, "cell": None,
                              "traceback": ""}
    if res.returncode < 0 and not ((outcome or {}).get("error") or {}).get("ename"):
        why = (f"{INFRASTRUCTURE} the papermill process was killed by {_signal_name(res.returncode)} "
               "before the notebook ended (the machine: out of memory, or an operator's kill)")
        return State.KILLED, {"ename": "Killed", "evalue": why, "reason": why, "cell": None,
                              "traceback": res.output_tail[-4000:]}
    if status == "killed":
        ename = "BudgetExceeded" if "budget" in reason or "timeout" in reason else "Killed"
        return State.KILLED, {"ename": ename, "evalue": reason or "killed by the harness",
                              "reason": result.get("reason", ""), "cell": None, "traceback": ""}
    if res.returncode == 0 and status == "ok":
        if metric in metrics and math.isfinite(metrics[metric]):
            return State.COMPLETE, None
        return State.FAILED, {"ename": "MissingMetric", "evalue": f"the result has no finite {metric!r}", "cell": None,
                              "reason": "missing metric", "traceback": ""}
    error = dict((outcome or {}).get("error") or {})
    if not error.get("ename"):
        error = {"ename": "RunFailed", "evalue": reason or f"papermill exited {res.returncode}", "cell": None,
                 "traceback": res.output_tail[-4000:]}
    error["reason"] = result.get("reason", "")
    return State.FAILED, error


def finish_run(lab: Lab, run: Run, res: JobResult, *, protected_before: dict[str, str]) -> Run:
    """Turn an executor's JobResult, the notebook's result JSON and the wrapper's outcome file
    into the final Run record, and log it."""
    run_dir = _run_dir(lab, run)
    for rel, data in res.files.items():   # remote executors bring files back
        p = run_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    after = lab.task.protected_hashes()
    changed = sorted(k for k in set(protected_before) | set(after) if protected_before.get(k) != after.get(k))
    result = read_result(lab.file(run.result_path))
    outcome = read_outcome(run_dir) if run.notebook else None
    metrics = _finite_numbers(result.get("metrics"))
    timings = _finite_numbers(result.get("timings"))
    timings["papermill_s"] = res.wall_s
    meta = {**run.meta, "protected_changed": changed, "violations": result.get("violations", []),
            "probes": result.get("probes", {}), "summary": result.get("summary", {}), "corpus": result.get("corpus"),
            "host": res.host, "status": result.get("status")}
    state, error = _judge(res, result, outcome, metrics, lab.task.metric.name, run.meta.get("limits"))
    if changed and state is State.COMPLETE:
        meta["protected_violation"] = True
    hw = run.hardware
    if res.slot and res.slot.startswith("gpu:") and isinstance(run.meta.get("preset"), dict):   # the GPUs it was given
        p = run.meta["preset"]
        hw = run_hardware(str(p.get("device") or "cuda"), int(p.get("gpus") or 1), res.slot) or hw
    final = run.with_state(state, metrics=metrics, timings=timings, error=error, ended_at=now(), slot=res.slot,
                           meta=meta, hardware=hw)
    lab.log.append(final)
    lab.after_run(final)   # the lab's space policy: scratch removed, model files kept only while needed
    return final


def _phase_now(run_dir: Path) -> str | None:
    """The phase the run folder shows: "saving" once the result JSON is written (the notebook's
    last cells, papermill writing the executed notebook), "evaluation" once the training saved a
    model file (one folder down), "start-up" once papermill wrote the notebook it executes, else
    None (not started: waiting for a slot). Training is told by the curve's events."""
    if (run_dir / RESULT_FILE).exists():
        return "saving"
    if any(p.suffix in MODEL_SUFFIXES for p in run_dir.glob("*/*")):
        return "evaluation"
    if executed_path(run_dir).exists():
        return "start-up"
    return None


def tail_events(run_dir: Path, run_id: str, on_event: EventFn, stop: threading.Event) -> None:
    """Follow the harness's events.jsonl under the run folder and forward curve points until
    ``stop`` is set (then read what is left once more), and a ``phase`` event (``start-up``,
    ``evaluation``, ``saving``) each time the folder shows a new one (:func:`_phase_now`)."""
    offsets: dict[Path, int] = {}
    phase = None
    while True:
        final = stop.is_set()
        now_phase = None if final else _phase_now(run_dir)
        if now_phase is not None and now_phase != phase and phase != "saving":   # never back from saving
            phase = now_phase
            on_event({"type": "phase", "run_id": run_id, "phase": phase})
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
               preset: str | None = None, on_event: EventFn | None = None, full: bool = False) -> tuple[Run, "Future[Run]"]:
    """Start one run; returns the RUNNING record and a future of the final record. The preset
    is resolved here, once: its limits travel in the Job and are recorded on the Run. On a task
    that carries (``carry_plan``) the run re-checks only what the candidate changed, unless
    ``full`` or a final run (the final comparison re-verifies everything on fresh seeds)."""
    p = lab.task.preset(preset or lab.preset_name)
    limits = job_limits(p)
    carry = carry_plan(lab, candidate, seed, purpose=purpose, preset=p, full=full)
    run = new_run(lab, candidate, seed, purpose=purpose, preset=p, limits=limits, executor_name=executor.name,
                  carry=carry)
    job = build_job(lab, candidate, run, limits)
    lab.log.append(run)
    if on_event:
        on_event({"type": "run_start", "run_id": run.id, "seed": seed, "candidate_id": candidate.id, "purpose": purpose})
    before = lab.task.protected_hashes()
    stop = threading.Event()
    if on_event:
        threading.Thread(target=tail_events, args=(_run_dir(lab, run), run.id, on_event, stop), daemon=True).start()
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
            on_event({"type": "run_end", "run_id": run.id, "run": final})
        out.set_result(final)

    job_future.add_done_callback(done)
    return run, out


def run(lab: Lab, candidate: Candidate | None = None, seeds: int | Sequence[int] = 1, *, purpose: str = "manual",
        preset: str | None = None, executor: Executor | str | None = None, on_event: EventFn | None = None,
        progress: bool = False, full: bool = False) -> list[Run]:
    """Run ``candidate`` (default: the seed) on ``seeds`` (a count of fresh seeds, or explicit seeds);
    blocks until all runs end and returns their final records. ``full``: re-check everything, never
    carry the parent's results (see ``carry_plan``)."""
    candidate = candidate or lab.seed_candidate()
    ex = executor if isinstance(executor, Executor) else get_executor(executor or "local")
    seed_list = list(seeds) if not isinstance(seeds, int) else fresh_seeds(lab, candidate, purpose, seeds, preset)
    futures = [submit_run(lab, candidate, s, purpose=purpose, executor=ex, preset=preset, on_event=on_event,
                          full=full)[1] for s in seed_list]
    try:
        return _wait_all(futures, progress=progress, desc=f"runs of {candidate.id}", metric=lab.task.metric.name)
    finally:
        if ex is not executor:
            ex.shutdown()


def _wait_all(futures: "list[Future[Run]]", *, progress: bool, desc: str, metric: str) -> list[Run]:
    """Block until every run ends; their final records in submission order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(futures), desc=desc, unit="run")
    results = []
    try:
        for f in futures:
            results.append(f.result())
            if bar:
                bar.update(1)
                bar.set_postfix_str(_short(results[-1], metric))
    finally:
        if bar:
            bar.close()
    return results


def _short(r: Run, metric: str) -> str:
    return f"{r.state.value} {metric}={r.metrics.get(metric, float('nan')):.4f}" if r.ok else r.state.value
