"""The candidate process: ``python -m kernels_harness.worker SPEC.json``.

Started by ``runner`` through the sandbox, with the task folder on PYTHONPATH and the
candidate's private copy as its working directory. It imports torch, triton and the
harness, takes the ``guards.Guard`` snapshot, and only then imports each candidate module
(``<candidate_dir>/<problem>.py``) and evaluates it. The report is rewritten after every
problem, so a crash or a kill still leaves the problems done so far. Progress goes to
stdout as ``KH {json}`` lines.

SPEC: {"candidate_dir", "problems": [...], "settings": {evaluate.Settings fields},
       "report_path", "problems_dir" (optional)}
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from autolab.harnesskit import atomic_write_json, load_module


def _emit(kind: str, **data) -> None:
    print("KH " + json.dumps({"event": kind, **data}), flush=True)


def _write(path: str, report: dict) -> None:
    atomic_write_json(path, report, indent=1, sort_keys=False, default=str, newline=False)


def load_candidate(path: Path, name: str):
    """Import one candidate file as module ``kernels_candidate_<name>``; returns its ``kernel``."""
    fn = getattr(load_module(path, f"kernels_candidate_{name}"), "kernel", None)
    if not callable(fn):
        raise AttributeError(f"{path.name} defines no callable `kernel(*inputs)`")
    return fn


def _warm_up(device) -> str:
    """Launch a harness-owned Triton kernel once, under the dispatch recorder, before the
    guard's snapshot: whatever torch and triton set up lazily on first use (threads,
    attributes) then belongs to the baseline, not to the candidate."""
    try:
        import torch

        from . import scan, timing, warmup

        x = torch.arange(1000, dtype=torch.float32, device=device)
        with scan.OpRecorder():
            y = warmup.copy(x)
        if timing.is_cuda(device):
            torch.cuda.synchronize()
        return "ok" if bool((y == x).all()) else "wrong result"
    except Exception as e:   # the warm-up is a courtesy; the evaluation decides
        return f"{type(e).__name__}: {e}"[:200]


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    report_path = spec["report_path"]
    from . import interp

    interp.patch()
    import torch

    from . import evaluate, guards, timing
    from .problems import load_problems

    settings = evaluate.Settings(**spec["settings"])
    report: dict = {"problems": {}, "violations": [], "env": {
        "torch": torch.__version__, "device": settings.device, "interpret": interp.interpreting(),
        "python": sys.version.split()[0]}, "done": False}
    if timing.is_cuda(settings.device):
        torch.cuda.init()
        torch.cuda.set_device(torch.device(settings.device).index or 0)
        report["env"]["gpu"] = torch.cuda.get_device_name()
        timing.flush_buffer(settings.device)
        timing.overhead(settings.device, n=5)
    try:
        import triton

        report["env"]["triton"] = triton.__version__
    except Exception:
        report["env"]["triton"] = None
    problems = load_problems(spec["problems"], spec.get("problems_dir"))
    report["env"]["warm_up"] = _warm_up(settings.device)
    guard = guards.Guard()                      # nothing of the candidate is loaded yet
    cand_dir = Path(spec["candidate_dir"])
    _write(report_path, report)
    for name, problem in problems.items():
        t0 = time.perf_counter()
        _emit("start", problem=name)
        path = cand_dir / f"{name}.py"
        if not path.exists():
            res = {"problem": name, "correct": False, "failures": [
                {"workload": "", "round": -1, "tag": "missing", "reason": f"no {name}.py in the candidate"}],
                "violations": [], "times": {}}
        else:
            try:
                kernel = load_candidate(path, name)
                vs = guard.check()
                res = evaluate.evaluate_problem(problem, kernel, settings, guard,
                                                log=lambda m: _emit("log", message=m))
                res["violations"] = vs + [v for v in res["violations"] if v not in vs]
                res["correct"] = res["correct"] and not vs
            except Exception as e:
                res = {"problem": name, "correct": False, "failures": [
                    {"workload": "", "round": -1, "tag": "error",
                     "reason": f"{type(e).__name__}: {e}"[:500]}], "violations": guard.check(), "times": {},
                    "traceback": traceback.format_exc()[-3000:]}
        res["wall_s"] = time.perf_counter() - t0
        report["problems"][name] = res
        _write(report_path, report)
        _emit("done", problem=name, correct=res["correct"], wall_s=round(res["wall_s"], 2),
              failures=res["failures"][:2], violations=res["violations"][:3])
    report["violations"] = guard.check()
    report["done"] = True
    _write(report_path, report)
    _emit("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
