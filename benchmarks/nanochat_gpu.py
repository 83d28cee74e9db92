"""Device script for nanochat: the seed over several seeds through `autolab run`, in one call.

    python3 benchmarks/nanochat_gpu.py --out $OUT --preset h100-90s --seeds 3
    python3 benchmarks/nanochat_gpu.py --out $OUT --preset h100-90s --seeds 1 --candidate A --candidate B

This is the user's path, not a shortcut: `autolab run nanochat --preset P --seeds N --lab
$OUT/lab-P` executes benchmarks/nanochat/benchmark.ipynb with papermill once per seed (the device
has no papermill: carry its wheels in `.whl/` and put them on PYTHONPATH first, as the device
README says), each run trains the seed in the sandbox and the harness evaluates it. Afterwards
the research log is read back and `summary.json` gets, per run, val_bpb, hidden_val_bpb, tokens,
tokens/s, MFU, peak memory, the harness's and the script's training seconds, and the time before
the clock; plus mean and sd of val_bpb. Data: ``$AUTOLAB_DATA`` (techtext carried in `.data/`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default="h100-90s")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--candidate", action="append", default=[], help="candidate folder(s) to run (default: the seed)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lab = a.out / f"lab-{a.preset}"

    from autolab.cli import main as cli
    from autolab.log import ResearchLog

    t0 = time.monotonic()
    rc = 0
    for cand in a.candidate or [None]:
        extra = ["--candidate", cand] if cand else []
        rc = max(rc, cli(["run", "nanochat", "--preset", a.preset, "--seeds", str(a.seeds), "--lab", str(lab), *extra]))
    wall = time.monotonic() - t0

    rows = []
    for r in ResearchLog(lab / "log.db").runs_list():
        m, t = dict(r.metrics), dict(r.timings)
        res = {}
        if r.result_path and Path(r.result_path).exists():
            res = json.loads(Path(r.result_path).read_text())
        rt = res.get("timings", {})
        rows.append({"candidate": r.candidate_id, "seed": r.seed, "state": r.state.value, "val_bpb": m.get("val_bpb"),
                     "hidden_val_bpb": m.get("hidden_val_bpb"), "steps": m.get("steps"), "tokens": m.get("tokens"),
                     "tokens_per_s": m.get("tokens_per_s"), "mfu": m.get("mfu"), "peak_mem_mb": m.get("peak_mem_mb"),
                     "epochs": m.get("epochs"), "num_params": m.get("num_params"),
                     "clock_train_s": rt.get("clock_train_s"), "script_train_s": rt.get("script_train_s"),
                     "clock_start_s": rt.get("clock_start_s"), "data_s": rt.get("data_s"), "run_wall_s": t.get("wall_s") or t.get("papermill_s"),
                     "probes_failed": [k for k, v in (res.get("probes") or {}).items() if not v.get("passed")],
                     "error": r.error})
    per: dict = {}
    for x in rows:
        if isinstance(x["val_bpb"], float):
            per.setdefault(x["candidate"], []).append(x["val_bpb"])
    stats = {c: {"n": len(v), "mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else None}
             for c, v in per.items()}
    only = next(iter(stats.values())) if len(stats) == 1 else {}
    mean, sd = only.get("mean"), only.get("sd")
    summary = {"preset": a.preset, "rc": rc, "wall_s": round(wall, 1), "runs": rows, "val_bpb_mean": mean,
               "val_bpb_sd": sd, "per_candidate": stats, "candidates": a.candidate,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (a.out / f"summary-{a.preset}.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n| candidate | seed | state | val_bpb | hidden | steps | tokens | tok/s | MFU | peak MB | clock s | script s | clock starts at s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print("| " + " | ".join(str(x[k]) for k in ("candidate", "seed", "state", "val_bpb", "hidden_val_bpb", "steps", "tokens",
                                                     "tokens_per_s", "mfu", "peak_mem_mb", "clock_train_s",
                                                     "script_train_s", "clock_start_s")) + " |")
    for c, st in stats.items():
        print(f"{c}: val_bpb {st['mean']} +- {st['sd']} over {st['n']} runs")
    print(f"wall {wall:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
