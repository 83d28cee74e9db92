"""Per-run overhead of autolab's papermill path on nanochat cpu-tiny.

Compares, for the same seed candidate and seeds, in alternating order:
  direct:  a fresh `python -c` process calling the harness's run_benchmark() (what the
           notebook's main cell does: sandboxed train + eval processes), no notebook;
  autolab: autolab.run() -> papermill -> kernel -> benchmark.ipynb -> the same harness call.
The difference of wall times is the overhead (kernel start, papermill, notebook cells,
plots, log writes). Usage:
    .venv/bin/python perf/overhead.py [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "benchmarks" / "nanochat"

DIRECT = """
import sys
sys.path.insert(0, {task!r})
from nanochat_harness.runner import run_benchmark
r = run_benchmark({cand!r}, {seed}, "cpu-tiny", {out!r})
assert r["status"] == "ok", r.get("reason")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import autolab
    from autolab.executors import get_executor

    tmp = Path(tempfile.mkdtemp(prefix="autolab-overhead-"))
    lab = autolab.Lab(tmp / "lab", task="nanochat", preset="cpu-tiny")
    seed = lab.seed_candidate()
    cand_dir = lab.candidate_dir(seed)
    autolab.run(lab, seed, seeds=[999], executor=get_executor("local", cpu_slots=1))  # warm the caches
    direct, via, inner = [], [], []
    for rep in range(args.reps):
        s = 500 + rep
        t0 = time.monotonic()
        out = tmp / f"direct-{rep}" / "result.json"
        out.parent.mkdir()
        subprocess.run([sys.executable, "-c", DIRECT.format(task=str(TASK), cand=str(cand_dir), seed=s, out=str(out))],
                       check=True, cwd=TASK, capture_output=True)
        direct.append(time.monotonic() - t0)
        t0 = time.monotonic()
        (r,) = autolab.run(lab, seed, seeds=[s], executor=get_executor("local", cpu_slots=1))
        via.append(time.monotonic() - t0)
        assert r.ok, r.error
        inner.append(r.timings.get("total_s", float("nan")))
    over = [v - d for v, d in zip(via, direct)]
    res = {"reps": args.reps, "direct_s": direct, "autolab_s": via, "harness_total_s": inner,
           "overhead_s_mean": statistics.mean(over), "overhead_s_median": statistics.median(over),
           "overhead_s_each": over}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"direct (harness in a fresh process): {statistics.mean(direct):.2f} s  {['%.2f' % x for x in direct]}")
        print(f"autolab.run (papermill notebook):    {statistics.mean(via):.2f} s  {['%.2f' % x for x in via]}")
        print(f"overhead per run: mean {res['overhead_s_mean']:.2f} s, median {res['overhead_s_median']:.2f} s")


if __name__ == "__main__":
    main()
