"""The kernels red team on a GPU machine that has torch and triton but no papermill.

    python3 perf/kernels_redteam_gpu.py --out $OUT [--preset h100-redteam] [--all]

For the ``gpu_only`` cases (``--all``: every case) and the seed as a control, this does what
the benchmark notebook does, ``kernels_harness.runner.run_benchmark`` on the candidate's
files, and then what autolab does with the result: ``autolab._run.finish_run`` turns the result
JSON into the Run record and ``autolab._audit.audit`` judges it with the loop's checks. Only the
papermill process around ``run_benchmark`` is left out. Writes ``redteam_gpu.json`` (the same
fields as ``autolab redteam --json``) and ``redteam_gpu.txt`` under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "benchmarks" / "kernels"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TASK_DIR))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="h100-redteam")
    ap.add_argument("--all", action="store_true", help="every case, not only the gpu_only ones")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    from autolab._audit import audit, run_checks
    from autolab._audit.redteam import CaseResult, Report, result_from_verdict, load_cases, rebase
    from autolab.executors import JobResult
    from autolab.lab import Lab
    from autolab.records import Run, new_id
    from autolab._run import finish_run
    from autolab.task import load_task
    from kernels_harness.runner import run_benchmark

    t0 = time.monotonic()
    task = load_task(TASK_DIR)
    lab = Lab(Path(tempfile.mkdtemp(prefix="redteam-gpu-")) / "lab", task=task, preset=a.preset)
    seed = lab.seed_candidate()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(msg)
        print(msg, flush=True)

    def one_run(cand, purpose: str, s: int) -> Run:
        run_id = new_id("r")
        rdir = lab.path / "runs" / run_id
        rdir.mkdir(parents=True)
        run = Run(id=run_id, task=task.name, candidate_id=cand.id, preset=a.preset, seed=s, purpose=purpose,
                  result_path=str(rdir / "result.json"), executor="direct")
        lab.log.append(run)
        before = task.protected_hashes()
        t = time.monotonic()
        res = run_benchmark(lab.candidate_dir(cand), a.preset, s, rdir / "result.json", log=log, task_dir=TASK_DIR)
        return finish_run(lab, run, JobResult(run_id, 0 if res["status"] == "ok" else 1, time.monotonic() - t,
                                              host="device"), protected_before=before)

    results: list[CaseResult] = []
    control = one_run(seed, "baseline", 101)
    seed_checks = [c.to_dict() for c in run_checks(lab, seed)]
    log(f"seed control: {control.state.value}, failed checks: "
        f"{[c['name'] for c in seed_checks if not c['passed'] and c['severity'] == 'reject'] or 'none'}")
    current = lab.files(seed)
    skipped = []
    for case in load_cases(task):
        if not (case.gpu_only or a.all):
            skipped.append({"task": task.name, "name": case.name, "kind": case.kind, "why": "CPU case (make test)"})
            continue
        files, _ = rebase(case, current)
        cand = lab.add_candidate(files, seed, thread="redteam", meta={"redteam_case": case.name})
        run = one_run(cand, "redteam", 1)
        v = audit(lab, cand, seed, stage="screen", final=False)
        results.append(result_from_verdict(case, v, preset=a.preset, candidate=cand, runs=[run], significance=False))
        log(f"{case.name}: {'caught' if results[-1].caught else 'passed'} by {results[-1].checks}")
    report = Report(cases=results, skipped=skipped, labs={}, wall_s=time.monotonic() - t0)
    obj = report.to_dict()
    obj["seed_control"] = {"state": control.state.value, "metrics": control.metrics, "checks": seed_checks,
                           "probes": control.meta.get("probes")}
    obj["case_runs"] = {r.name: r.runs for r in results}
    for r in results:   # what the harness saw, for RESULTS.md
        run = lab.log.get("run", r.runs[0]["id"])
        obj["case_runs"][r.name] = {"state": run.state.value, "metrics": run.metrics,
                                    "violations": run.meta.get("violations"),
                                    "probes": {k: v for k, v in (run.meta.get("probes") or {}).items()
                                               if not v.get("passed", True)}}
    (out / "redteam_gpu.json").write_text(json.dumps(obj, indent=1, default=str))
    (out / "redteam_gpu.txt").write_text(report.table() + "\n\n" + "\n".join(log_lines[-400:]))
    print(report.table())
    return 0 if report.ok and control.ok else 1


if __name__ == "__main__":
    sys.exit(main())
