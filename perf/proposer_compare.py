"""Playbook proposer vs a random-edit baseline, at an equal number of experiments.

    python perf/proposer_compare.py --loops 3 --experiments 6 [--preset cpu-tiny] [--out labs/compare]

For each proposer and each loop i (proposer seed i), a fresh lab runs `autolab loop` for exactly
``--experiments`` ideas (same task, preset, screening/confirmation/promotion rules, same number of
executor slots). Then the lab's best candidate (the seed if nothing was promoted) is measured
against the seed on fresh seeds that no selection saw (the ``final`` range, as `autolab demo`
does). Improvement = seed's mean metric - best's mean metric on those seeds (0 when nothing was
promoted: the best is the seed). Prints, per proposer, the mean improvement +- sd over loops;
``summary.json`` in ``--out`` holds every loop. Each loop has its own empty knowledge store
(``AUTOLAB_HOME``), so the loops are independent. Resumable: a lab that already finished is read back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def one_loop(out: Path, task: str, preset: str, proposer: str, seed: int, experiments: int, final_n: int) -> dict:
    from autolab.lab import Lab
    from autolab._loop import best_candidate, final_comparison, loop

    # each loop starts from an empty cross-task knowledge store, so no loop learns from another
    os.environ["AUTOLAB_HOME"] = str(out / f"{proposer}-{seed}.home")
    lab = Lab(out / f"{proposer}-{seed}", task=task, preset=preset)
    t0 = time.monotonic()
    s = loop(lab, experiments, proposer=proposer, proposer_seed=seed, progress=False)
    best = best_candidate(lab)
    row = {"proposer": proposer, "proposer_seed": seed, "lab": str(lab.path), "experiments": s.experiments,
           "promoted": s.promoted, "failed": s.failed, "runs": len(lab.log.runs_list()), "best": best.id}
    if best.id == lab.seed_candidate().id:
        row.update(improvement=0.0, p_value=None, seed_mean=None, best_mean=None)
    else:
        fc = final_comparison(lab, best, n=final_n, progress=False)
        sign = 1.0 if lab.task.metric.direction == "minimize" else -1.0
        row.update(improvement=sign * (fc["seed_mean"] - fc["candidate_mean"]), p_value=fc["p_value"],
                   seed_mean=fc["seed_mean"], best_mean=fc["candidate_mean"], seed_final=fc["seed_final"],
                   best_final=fc["candidate_final"])
    idea = lab.log.get("idea", best.idea_id) if best.idea_id else None
    row["best_title"] = idea.title if idea is not None else "seed"
    row["wall_s"] = round(time.monotonic() - t0, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="nanochat")
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--proposers", default="playbook,random")
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--experiments", type=int, default=6)
    ap.add_argument("--final-seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "labs" / "compare")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.monotonic()
    for i in range(1, a.loops + 1):          # interleaved, so that a drift in machine load hits both alike
        for p in a.proposers.split(","):
            row = one_loop(a.out, a.task, a.preset, p, i, a.experiments, a.final_seeds)
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            (a.out / "summary.json").write_text(json.dumps({"rows": rows}, indent=1, default=str))
    stats = {}
    for p in a.proposers.split(","):
        imp = [r["improvement"] for r in rows if r["proposer"] == p]
        stats[p] = {"n": len(imp), "mean": statistics.mean(imp), "sd": statistics.stdev(imp) if len(imp) > 1 else None,
                    "promoted": sum(r["promoted"] for r in rows if r["proposer"] == p),
                    "runs": sum(r["runs"] for r in rows if r["proposer"] == p)}
    summary = {"task": a.task, "preset": a.preset, "experiments": a.experiments, "loops": a.loops, "rows": rows,
               "stats": stats, "wall_s": round(time.monotonic() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    for p, s in stats.items():
        sd = f"{s['sd']:.4f}" if s["sd"] is not None else "n/a"
        print(f"{p:>9}: improvement {s['mean']:.4f} +- {sd} (n={s['n']} loops, {s['promoted']} promotions, "
              f"{s['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
