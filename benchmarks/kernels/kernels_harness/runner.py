"""The harness side of a run: everything the benchmark notebook calls.

``run_benchmark(candidate_dir, preset, seed, result_path)``:

1. reads the preset from task.toml (``settings()``); ``problems`` may restrict the suite;
2. copies the candidate's files into a private working folder and scans them statically;
3. gets the ceilings (``ceilings.get``, cached per device) and the baselines
   (``baselines.measure_problem``, cached per device, torch version and problem hash);
4. runs ``kernels_harness.worker`` on the copy through the sandbox (one process for the
   whole suite, a wall-clock limit of the preset's ``budget_s``);
5. scores the report (``scoring.score_suite``), derives the probes, and writes the result
   JSON described in docs/ARCHITECTURE.md.

``carry`` (autolab passes it for a candidate's run, read from its own log): the parent's
per-problem scores for the problems whose files the candidate did not change, from the parent's
complete run of the same preset. Those problems are neither imported nor timed; their scores are
recorded as carried (``result["carried"]``, ``summary.carried``, ``metrics.problems_carried``)
and the suite score is the mean over the re-checked and the carried problems.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from autolab import harnesskit
from autolab.harnesskit import atomic_write_json, result_skeleton

from . import baselines, ceilings, scan, scoring
from .evaluate import Settings
from .problems import label, load_problems, problem_names
from .sandbox_bridge import run as run_sandboxed

TASK_DIR = Path(__file__).resolve().parent.parent
_AUTOLAB_ROOT = str(Path(harnesskit.__file__).resolve().parent.parent)   # the folder holding autolab
PROBE_KINDS = {
    "threads": ("thread",),
    "timer_integrity": ("monkeypatch",),
    "output_type": ("output_type",),
    "streams": ("stream",),
    "reference_ops": ("reference_op", "watch_gap", "unrecorded_output"),
    "input_mutation": ("input_mutation", "output_alias"),
}
SETTING_KEYS = ("shapes", "rounds", "hidden", "hidden_rounds", "warmup", "iters", "verify_timing", "min_fraction",
                "op_probe")
PASS_ENV = ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CC", "CXX", "TRITON_PTXAS_PATH",
            "TRITON_LIBCUDA_PATH", "LANG", "LC_ALL", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
            "NVSHMEM_DISABLE_NVLS")


def read_task(task_dir: Path | None = None) -> dict:
    d = Path(task_dir or TASK_DIR)
    return tomllib.loads((d / "task.toml").read_text())


def settings(preset: str | None = None, task_dir: Path | None = None) -> dict:
    """The preset's settings with defaults filled in (device, budget_s, problems, ...)."""
    task = read_task(task_dir)
    name = preset or task.get("default_preset")
    presets = task.get("presets", {})
    if name not in presets:
        raise KeyError(f"task kernels has no preset {name!r}; choose one of: {', '.join(presets)}")
    p = dict(presets[name])
    cpu = p.get("device", "cpu") == "cpu"
    out = {
        "preset": name, "device": "cpu" if cpu else "cuda", "budget_s": 600.0, "timeout_s": 1200.0,
        "shapes": "tiny" if cpu else "full", "rounds": 10, "hidden": True, "hidden_rounds": 3,
        "warmup": 1 if cpu else 10, "iters": 3 if cpu else 50, "verify_timing": True, "min_fraction": 0.99,
        "op_probe": True, "interpret": cpu, "baseline_compile": not cpu, "baseline_cache": True, "problems": [],
        "memory_mb": 8192 if cpu else 32768,
        # "" = a private Triton cache per run (candidates cannot plant compiled code for later
        # runs); a shared folder is for trusted batches of known kernels (perf/kernels_gpu.py)
        "triton_cache_dir": "",
    }
    out.update(p)
    return out


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def _scan_candidate(problems: dict, cand_dir: Path) -> dict:
    out = {}
    for name, prob in problems.items():
        path = cand_dir / f"{name}.py"
        out[name] = [f.as_dict() for f in scan.scan_source(path.read_text(), prob.banned)] if path.exists() else []
    return out


def _worker_env(workdir: Path, interpret: bool, device: str, triton_cache: str = "") -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(TASK_DIR), _AUTOLAB_ROOT])),   # worker.py imports autolab.harnesskit
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONSAFEPATH": "1",          # Python >= 3.11: the working directory is not put on sys.path
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "TRITON_CACHE_DIR": triton_cache or str(workdir / "triton-cache"),
        # the parent's torch.compile exports its own cache folder in os.environ; the worker
        # gets a private one (importing torch._dynamo creates it)
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache"),
    }
    for k in PASS_ENV:
        if k in os.environ:
            env[k] = os.environ[k]
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_worker(problem_names: list[str], cand_dir: Path, ev: Settings, cfg: dict, workdir: Path,
               log: Callable[[str], None]) -> tuple[dict, object]:
    """Run the worker on the private copy; returns (report, sandbox result)."""
    (workdir / "tmp").mkdir(exist_ok=True)
    report_path = workdir / "report.json"
    spec = {"candidate_dir": str(cand_dir), "problems": problem_names, "settings": ev.as_dict(),
            "report_path": str(report_path)}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))

    def on_line(line: str) -> None:
        if not line.startswith("KH "):
            return
        try:
            e = json.loads(line[3:])
        except ValueError:
            return
        if e.get("event") == "done":
            mark = "ok" if e.get("correct") else "FAILED"
            extra = ""
            if not e.get("correct"):
                first = (e.get("failures") or [{}])[0].get("reason", "") or (e.get("violations") or [{}])[0].get("detail", "")
                extra = f" ({first[:160]})"
            log(f"  {e.get('problem')}: {mark} in {e.get('wall_s')}s{extra}")
        elif e.get("event") == "log":
            log("  " + e.get("message", ""))

    shared = str(cfg.get("triton_cache_dir") or "")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
    res = run_sandboxed([sys.executable, "-m", "kernels_harness.worker", str(spec_path)], cwd=str(cand_dir),
                        env=_worker_env(workdir, cfg["interpret"], cfg["device"], shared),
                        wall_s=float(cfg["budget_s"]), write_allow=[str(workdir)] + ([shared] if shared else []),
                        read_deny=[str(ceilings.cache_dir())], on_line=on_line,
                        memory_mb=int(cfg["memory_mb"]), ready_path=str(report_path))
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        report = {"problems": {}, "violations": [], "done": False}
    return report, res


def _probes(report: dict, static: dict, scored: dict, sandbox_res, problems: list[str]) -> dict:
    per = report.get("problems", {})
    all_v = [(p, v) for p, r in per.items() for v in r.get("violations", [])]
    all_v += [("", v) for v in report.get("violations", [])]
    probes = {}
    bad = [p for p in problems if not per.get(p, {}).get("correct")]
    probes["correctness"] = {"passed": not bad, "detail": f"{len(problems) - len(bad)}/{len(problems)} problems correct"
                             + (f"; failing: {', '.join(bad)}" if bad else "")}
    hidden = sorted({p for p, r in per.items() for f in r.get("failures", []) if f.get("tag") == "hidden"})
    probes["hidden_shapes"] = {"passed": not hidden, "detail": "hidden workloads correct" if not hidden
                               else f"wrong on hidden shapes only: {', '.join(hidden)}"}
    caching = []
    for p, r in per.items():
        tags = {f.get("tag") for f in r.get("failures", [])}
        if tags and "fresh" not in tags and tags & {"refill", "reverse", "timing"}:
            caching.append(f"{p} (fails in {', '.join(sorted(tags))} rounds only)")
    probes["output_caching"] = {"passed": not caching, "detail": "; ".join(caching) or
                                "fresh inputs, refilled buffers, both call orders and every timed output agree"}
    for probe, kinds in PROBE_KINDS.items():
        hits = [f"{p}: {v['detail']}" if p else v["detail"] for p, v in all_v if v.get("kind") in kinds]
        if probe == "reference_ops":
            hits += [f"{p}: line {f['line']}: {f['detail']}" for p, fs in static.items() for f in fs
                     if f["kind"] in ("reference_op", "evasion")]
        probes[probe] = {"passed": not hits, "detail": "; ".join(hits[:10]) or "none seen"}
    forb = [f"{p}: line {f['line']}: {f['detail']}" for p, fs in static.items() for f in fs if f["kind"] != "suspicious"]
    susp = [f"{p}: line {f['line']}: {f['detail']}" for p, fs in static.items() for f in fs if f["kind"] == "suspicious"]
    probes["static_scan"] = {"passed": not forb, "detail": "; ".join(forb[:10]) or "clean",
                             "suspicious": susp[:20]}
    probes["sol_bound"] = {"passed": not scored["below_sol"], "detail": "no time below the speed-of-light bound"
                           if not scored["below_sol"] else "S > 1 (time below T_SOL) on " + ", ".join(scored["below_sol"])}
    sb_v = list(getattr(sandbox_res, "violations", []) or [])
    probes["sandbox"] = {"passed": not sb_v and report.get("done", False),
                         "detail": (f"{len(sb_v)} sandbox denials" if sb_v else "no denials")
                         + ("" if report.get("done") else f"; worker did not finish ({sandbox_res.reason})"),
                         "runner": getattr(sandbox_res, "sandbox", "")}
    return probes


def parse_carry(carry: dict | str | None, names: list[str]) -> tuple[dict[str, float], dict]:
    """``({problem: carried score}, the carry record)`` for the problems of ``names`` that
    ``carry`` holds (a dict or its JSON: {"from_run", "problems": {name: {"S": score}}, ...}).
    A malformed carry raises ValueError: autolab writes it, so it is never silently half-used."""
    if not carry:
        return {}, {}
    rec = json.loads(carry) if isinstance(carry, str) else dict(carry)
    if not isinstance(rec, dict) or not isinstance(rec.get("problems"), dict) or not rec.get("from_run"):
        raise ValueError(f"carry must name from_run and map problems to their scores, got {str(carry)[:200]}")
    out = {}
    for n in names:
        entry = rec["problems"].get(n)
        if entry is None:
            continue
        v = entry.get("S") if isinstance(entry, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"carry: problem {n!r} has no score S in [0, 1] ({entry!r})")
        out[n] = float(v)
    if out and len(out) == len(names):
        raise ValueError("carry covers every problem of the run: nothing would be re-checked; run it in full")
    return out, rec


def run_benchmark(candidate_dir: str | os.PathLike | None = None, preset: str | None = None, seed: int = 0,
                  result_path: str | os.PathLike | None = None, problems: list[str] | str | None = None,
                  log: Callable[[str], None] = _log_default, refresh_ceilings: bool = False,
                  task_dir: Path | None = None, overrides: dict | None = None,
                  carry: dict | str | None = None) -> dict:
    """Run the suite on a candidate folder (None = the seeds) and return (and write) the result JSON.

    ``overrides`` replaces preset settings for this call (e.g. {"budget_s": 300}); ``carry``
    gives the parent's scores of unchanged problems (see the module's docstring)."""
    t_start = time.perf_counter()
    task_dir = Path(task_dir or TASK_DIR)
    task = read_task(task_dir)
    cfg = settings(preset, task_dir)
    cfg.update(overrides or {})
    if isinstance(problems, str):
        problems = [p.strip() for p in problems.split(",") if p.strip()]
    names = list(problems or cfg.get("problems") or [])
    all_probs = load_problems(names or None)
    names = list(all_probs)
    carried, carry_rec = parse_carry(carry, names)
    probs = {n: p for n, p in all_probs.items() if n not in carried}
    run_names = list(probs)
    seed_dir = (task_dir / task["files"]["seed"]).resolve()
    src_dir = Path(candidate_dir).resolve() if candidate_dir else seed_dir
    ev = Settings(device=cfg["device"], seed=int(seed), **{k: cfg[k] for k in SETTING_KEYS})
    result: dict = result_skeleton("kernels", cfg["preset"], seed, src_dir, timings={"budget_s": float(cfg["budget_s"])},
                                   details={})

    def finish() -> dict:
        result["timings"]["total_s"] = time.perf_counter() - t_start
        if result_path:
            Path(result_path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(result_path, result, indent=1, sort_keys=False, default=str, newline=False)
        return result

    workdir = Path(tempfile.mkdtemp(prefix="autolab-kernels-"))
    try:
        cand_dir = workdir / "candidate"
        cand_dir.mkdir()
        # only files named after a problem: the worker runs with this folder as its working
        # directory, and a `torch.py` or `sitecustomize.py` here could run before the worker's
        # own start-up is done (and before the sandbox's hardening is settled)
        known = set(problem_names())
        for f in sorted(src_dir.glob("*.py")):
            if f.stem in known:
                shutil.copy2(f, cand_dir / f.name)
        log(f"kernels: preset {cfg['preset']} on {cfg['device']}, {len(names)} problems, candidate {src_dir}"
            + (f"; re-checking {', '.join(run_names)}, carrying {len(carried)} from run {carry_rec['from_run']}"
               if carried else ""))
        static = _scan_candidate(probs, cand_dir)

        t0 = time.perf_counter()
        ceil = ceilings.get(cfg["device"], refresh=refresh_ceilings)
        result["timings"]["ceilings_s"] = time.perf_counter() - t0
        log(f"ceilings ({'cached' if ceil.get('cached') else 'measured'}) on {ceil['device']}: "
            f"bf16 {ceil['peak_flops']['bf16'] / 1e12:.1f} TFLOP/s, fp8 {ceil['peak_flops']['fp8'] / 1e12:.1f} TFLOP/s, "
            f"{ceil['peak_bw'] / 1e9:.0f} GB/s")

        t0 = time.perf_counter()
        base = {}
        for name, prob in probs.items():
            base[name] = baselines.measure_problem(prob, ev, compile_=bool(cfg["baseline_compile"]),
                                                   use_cache=bool(cfg["baseline_cache"]), log=None)
        result["timings"]["baseline_s"] = time.perf_counter() - t0
        log(f"baselines ready in {result['timings']['baseline_s']:.1f}s")

        t0 = time.perf_counter()
        report, sres = run_worker(run_names, cand_dir, ev, cfg, workdir, log)
        result["timings"]["worker_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    per = report.get("problems", {})
    spec = {n: {"peak": p.peak, "workloads": [{"label": label(w), "flops": p.flops(w), "bytes": p.bytes_moved(w)}
                                              for w in p.workloads(ev.shapes)]} for n, p in probs.items()}
    kern = {}
    for n in run_names:
        r = per.get(n, {})
        static_bad = any(f["kind"] != "suspicious" for f in static.get(n, []))
        kern[n] = {"correct": bool(r.get("correct")) and not static_bad,
                   "flagged": bool(r.get("violations")) or static_bad,
                   "times": {lab: t["median_s"] for lab, t in r.get("times", {}).items()}}
    scored = scoring.score_suite(spec, ceil, {n: {lab: row["t_b"] for lab, row in base[n].items()} for n in run_names},
                                 kern)
    problem_scores = {n: carried[n] if n in carried else scored["problems"][n]["score"] for n in names}
    suite = scoring.suite_score(list(problem_scores.values()))

    violations = []
    for n in run_names:
        for v in per.get(n, {}).get("violations", []):
            violations.append({"kind": v["kind"], "detail": f"{n}: {v['detail']}"})
        for f in static.get(n, []):
            if f["kind"] != "suspicious":
                violations.append({"kind": "static_" + f["kind"], "detail": f"{n}.py line {f['line']}: {f['detail']}"})
    for v in report.get("violations", []):
        violations.append(v)
    for b in scored["below_sol"]:
        violations.append({"kind": "sol_bound", "detail": f"{b}: time below the speed-of-light bound (S > 1)"})
    violations += [v if isinstance(v, dict) else {"kind": "sandbox", "detail": str(v)} for v in sres.violations]

    result["violations"] = violations
    result["probes"] = _probes(report, static, scored, sres, run_names)
    if carried:
        result["probes"]["correctness"]["detail"] += (f" (re-checked; {len(carried)} carried from run "
                                                      f"{carry_rec['from_run']}: {', '.join(carried)})")
        result["carried"] = {**{k: v for k, v in carry_rec.items() if k != "problems"},
                             "problems": {n: {"S": v} for n, v in carried.items()}, "rechecked": run_names}
    result["metrics"] = {"score": suite, **{f"S.{n}": problem_scores[n] for n in names},
                         "problems_correct": float(sum(1 for n in run_names if kern[n]["correct"]) + len(carried)),
                         "problems_total": float(len(names)), "problems_carried": float(len(carried))}
    result["summary"] = {
        "device": ceil["device"], "torch": report.get("env", {}).get("torch"),
        "triton": report.get("env", {}).get("triton"), "interpret": bool(cfg["interpret"]),
        "peak_bf16_tflops": round(ceil["peak_flops"]["bf16"] / 1e12, 2),
        "peak_fp8_tflops": round(ceil["peak_flops"]["fp8"] / 1e12, 2),
        "peak_bw_gbs": round(ceil["peak_bw"] / 1e9, 1), "problems": len(names),
        "sandbox": sres.sandbox, "isolation": sres.isolation, "score": round(suite, 4),
        "rechecked": run_names, "carried": sorted(carried), "carried_from": carry_rec.get("from_run"),
        "note": "CPU interpreter times: smoke numbers only, the score is meaningless" if cfg["interpret"] else "",
    }
    result["details"] = {
        "ceilings": {k: v for k, v in ceil.items() if k != "cached"},
        "problems": {n: {**scored["problems"][n], "failures": per.get(n, {}).get("failures", [])[:20],
                         "baseline": base[n], "static": static.get(n, []),
                         "kernel_times": per.get(n, {}).get("times", {}),
                         "traceback": per.get(n, {}).get("traceback", "")} for n in run_names},
        "worker": {"returncode": sres.returncode, "state": sres.state, "reason": sres.reason, "wall_s": sres.wall_s,
                   "stdout_tail": sres.stdout_tail[-4000:], "done": report.get("done", False)},
    }
    if sres.state == "killed":
        result["status"], result["reason"] = "killed", sres.reason or "worker killed"
    elif not report.get("done"):
        result["status"] = "failed"
        result["reason"] = f"worker did not finish: {sres.reason or 'no report'}; tail: {sres.stdout_tail[-500:]}"
    else:
        result["status"] = "ok"
    for n, v in carried.items():
        result["details"]["problems"][n] = {"score": v, "correct": True, "carried": True,
                                            "from_run": carry_rec["from_run"], "workloads": []}
    result["details"]["problems"] = {n: result["details"]["problems"][n] for n in names}
    log(f"score {suite:.4f} ({int(result['metrics']['problems_correct'])}/{len(names)} problems correct"
        + (f", {len(carried)} carried" if carried else "") + ")")
    return finish()


def table(result: dict):
    """Per-workload rows of a result as a pandas DataFrame (for the notebook)."""
    import pandas as pd

    rows = []
    for name, p in result.get("details", {}).get("problems", {}).items():
        if p.get("carried"):
            rows.append({"problem": name, "workload": f"carried from {p.get('from_run')}", "correct": True,
                         "t_k_us": float("nan"), "t_b_us": float("nan"), "t_sol_us": float("nan"), "S": float("nan"),
                         "problem_score": p.get("score")})
        for w in p.get("workloads", []):
            rows.append({"problem": name, "workload": w.get("label"), "correct": p.get("correct"),
                         "t_k_us": (w.get("t_k") or float("nan")) * 1e6, "t_b_us": (w.get("t_b") or float("nan")) * 1e6,
                         "t_sol_us": (w.get("t_sol") or float("nan")) * 1e6, "S": w.get("S"),
                         "problem_score": p.get("score")})
    return pd.DataFrame(rows)
