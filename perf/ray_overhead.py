"""Per-run scheduling overhead of the Ray executor against the local executor.

The same runs (the toy task's seed candidate, the same seeds) go through ``autolab._run``
once with the local executor and once with the Ray executor, in alternating order, one run
at a time. The difference of their wall times is the Ray executor's overhead per run: task
submission and placement, shipping the candidate's files, the worker's private folder,
returning the notebook and result, the driver writing them. The papermill process itself is
the same in both. ``papermill_s`` (measured around the process, on the worker for Ray) lets
the overhead be split from the run-to-run variation of papermill itself.

Without --address a private cluster is started on this machine, shaped like a real one: a
head node that runs no tasks (``--num-cpus=0``) and one worker node, each ``ray start`` in
its own process; the local runs then get the cluster's environment (PYTHONPATH) too. Usage:

    .venv/bin/python perf/ray_overhead.py [--reps 8] [--address HOST:PORT] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "executors"))


def _one(autolab, lab, cand, seed: int, ex) -> tuple[float, float]:
    t0 = time.monotonic()
    (r,) = autolab.run(lab, cand, seeds=[seed], purpose="manual", executor=ex)
    wall = time.monotonic() - t0
    assert r.ok, (r.state, r.error)
    return wall, r.timings["papermill_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--address", default=None, help="an existing Ray cluster (else a private one is started)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import autolab
    from autolab.executors import get_executor
    from autolab.executors.ray import RayExecutor
    from toytask import make_toy_task

    cluster = None
    tmp = Path(tempfile.mkdtemp(prefix="autolab-ray-overhead-"))
    if args.address is None:
        from raycluster import LocalRayCluster

        cluster = LocalRayCluster(log=lambda m: print(m, file=sys.stderr, flush=True))
        cluster.start({"head": {"num_cpus": 0}, "worker": {"num_cpus": 2}})
        # the private cluster's processes skip a slow optional import (see raycluster.py); the
        # local runs get the same environment, so that papermill itself costs the same on both
        os.environ["PYTHONPATH"] = cluster.env["PYTHONPATH"]
        os.environ["RAY_AUTH_MODE"] = cluster.env["RAY_AUTH_MODE"]
    try:
        task = make_toy_task(tmp / "tasks")
        labs = {"local": autolab.Lab(tmp / "lab-local", task=str(task)),
                "ray": autolab.Lab(tmp / "lab-ray", task=str(task))}
        exs = {"local": get_executor("local", cpu_slots=1),
               "ray": RayExecutor(address=args.address or cluster.address)}
        cands = {k: lab.seed_candidate() for k, lab in labs.items()}
        for k in ("local", "ray"):   # warm-up (Ray starts its worker processes), not counted
            _one(autolab, labs[k], cands[k], 999, exs[k])
        wall = {"local": [], "ray": []}
        inner = {"local": [], "ray": []}
        for rep in range(args.reps):
            order = ("local", "ray") if rep % 2 == 0 else ("ray", "local")
            for k in order:
                w, p = _one(autolab, labs[k], cands[k], 500 + rep, exs[k])
                wall[k].append(w)
                inner[k].append(p)
        diff = [r - l for r, l in zip(wall["ray"], wall["local"])]
        outside = [(wr - pr) - (wl - pl) for wr, pr, wl, pl in zip(wall["ray"], inner["ray"], wall["local"], inner["local"])]
        res = {"reps": args.reps, "wall_s": wall, "papermill_s": inner,
               "overhead_s_mean": statistics.mean(diff), "overhead_s_median": statistics.median(diff),
               "overhead_s_sd": statistics.stdev(diff) if len(diff) > 1 else 0.0,
               "outside_papermill_overhead_s_mean": statistics.mean(outside),
               "outside_papermill_overhead_s_median": statistics.median(outside)}
        exs["ray"].shutdown()
        if args.json:
            print(json.dumps(res))
        else:
            for k in ("local", "ray"):
                print(f"{k:5s}: wall mean {statistics.mean(wall[k]):.2f} s  papermill mean {statistics.mean(inner[k]):.2f} s"
                      f"  walls {['%.2f' % x for x in wall[k]]}")
            print(f"ray - local per run: mean {res['overhead_s_mean']:+.3f} s, median {res['overhead_s_median']:+.3f} s, "
                  f"sd {res['overhead_s_sd']:.3f} s")
            print(f"outside papermill (wall - papermill_s), ray - local: mean {res['outside_papermill_overhead_s_mean']:+.3f} s,"
                  f" median {res['outside_papermill_overhead_s_median']:+.3f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cluster is not None:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            cluster.stop()


if __name__ == "__main__":
    main()
