"""Device script for nanochat: the seed over several seeds through `autolab run`, in one call.

    python3 perf/nanochat_gpu.py --out $OUT --preset h100-90s --seeds 3
    python3 perf/nanochat_gpu.py --out $OUT --preset h100-90s --seeds 1 --candidate A --candidate B
    python3 perf/nanochat_gpu.py --out $OUT --preset h100-5min --seeds 3 --lab /tmp/lab --deadline 400

This is the user's path, not a shortcut: `autolab run nanochat --preset P --seeds N --lab
$OUT/lab-P` executes benchmarks/nanochat/benchmark.ipynb with papermill once per seed (the device
has no papermill: carry its wheels in `.whl/` and put them on PYTHONPATH first, as the device
README says), each run trains the seed in the sandbox and the harness evaluates it. Afterwards
the research log is read back and `summary.json` gets, per run, val_bpb, hidden_val_bpb, tokens,
tokens/s, MFU, peak memory, the harness's and the script's training seconds, and the time before
the clock; plus mean and sd of val_bpb and the MFU range. Seeds run one `autolab run` at a time
and the summary is rewritten after each, so a call cut off by its time limit keeps the runs that
ended; ``--deadline`` starts no run that would likely end past it. Data: ``$AUTOLAB_DATA``
(techtext carried in `.data/`).
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
    ap.add_argument("--lab", type=Path, default=None, help="the lab folder (default: OUT/lab-PRESET)")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds from the start: no run is started that would likely end past it (0: no limit)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lab = a.lab or a.out / f"lab-{a.preset}"

    from autolab.cli import main as cli

    t0 = time.monotonic()
    rc, longest, skipped = 0, 0.0, []   # the longest run so far; before the first, assume 150 s
    for cand in a.candidate or [None]:
        extra = ["--candidate", cand] if cand else []
        for i in range(a.seeds):   # one fresh seed at a time, the summary rewritten after each: a cut-off call keeps them
            if a.deadline and time.monotonic() - t0 + (longest or 150.0) > a.deadline:
                skipped.append({"candidate": cand or "seed", "runs_not_started": a.seeds - i})
                print(f"deadline: {a.seeds - i} run(s) of {cand or 'the seed'} not started", flush=True)
                break
            t_run = time.monotonic()
            rc = max(rc, cli(["run", "nanochat", "--preset", a.preset, "--seeds", "1", "--lab", str(lab), *extra]))
            longest = max(longest, time.monotonic() - t_run)
            write_summary(a, lab, rc, time.monotonic() - t0, skipped)
    rows, stats = write_summary(a, lab, rc, time.monotonic() - t0, skipped)
    print("\n| candidate | seed | state | val_bpb | hidden | steps | tokens | tok/s | MFU | peak MB | clock s | script s | clock starts at s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print("| " + " | ".join(str(x[k]) for k in ("candidate", "seed", "state", "val_bpb", "hidden_val_bpb", "steps", "tokens",
                                                     "tokens_per_s", "mfu", "peak_mem_mb", "clock_train_s",
                                                     "script_train_s", "clock_start_s")) + " |")
    for c, st in stats.items():
        print(f"{c}: val_bpb {st['mean']} +- {st['sd']} over {st['n']} runs; MFU mean {st['mfu_mean']}, min {st['mfu_min']}")
    print(f"wall {time.monotonic() - t0:.0f}s")
    return rc


def write_summary(a, lab: Path, rc: int, wall: float, skipped: list) -> tuple[list, dict]:
    """Read the lab's research log back into summary-PRESET.json: one row per run, and per candidate
    the mean and sd of val_bpb and the mean and minimum MFU."""
    from autolab.lab import lab_file
    from autolab.log import ResearchLog

    rows = []
    for r in ResearchLog(lab / "log.db").runs_list():
        m, t = dict(r.metrics), dict(r.timings)
        res = {}
        rp = lab_file(lab, r.result_path)   # stored relative to the lab folder
        if rp is not None and rp.exists():
            res = json.loads(rp.read_text())
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
            per.setdefault(x["candidate"], []).append(x)
    stats = {}
    for c, xs in per.items():
        v = [x["val_bpb"] for x in xs]
        mfu = [x["mfu"] for x in xs if isinstance(x["mfu"], (int, float))]
        stats[c] = {"n": len(v), "mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else None,
                    "mfu_min": min(mfu, default=None), "mfu_mean": statistics.mean(mfu) if mfu else None}
    only = next(iter(stats.values())) if len(stats) == 1 else {}
    mean, sd = only.get("mean"), only.get("sd")
    summary = {"preset": a.preset, "rc": rc, "wall_s": round(wall, 1), "runs": rows, "val_bpb_mean": mean,
               "val_bpb_sd": sd, "per_candidate": stats, "candidates": a.candidate, "not_started": skipped,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (a.out / f"summary-{a.preset}.json").write_text(json.dumps(summary, indent=1, default=str))
    return rows, stats


if __name__ == "__main__":
    sys.exit(main())
