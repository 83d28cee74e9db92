"""Device script: one part of an `autolab loop` campaign on a GPU, resumable across machines.

    python3 perf/nanochat_loop_gpu.py --out $OUT --lab /tmp/lab --max-time 500 --iterations 12
    python3 perf/nanochat_loop_gpu.py --out $OUT --lab /tmp/lab --import .campaign/lab.tar.gz --max-time 500 --iterations 12

The user's path: `autolab loop nanochat --preset P --lab LAB --iterations N --max-time T --json`
(papermill, the benchmark notebook, the harness and its sandbox, the playbook proposer), with
the lab brought in from the previous machine by `autolab import-lab` and sent on by
`autolab export-lab` (no model files). Afterwards, from the lab's runs of this part:

- the fraction of the GPU's wall time spent training: the sum of the runs' training windows
  (the harness's clock, from its start line to the model's save, seen from outside) over the
  part's wall time (the loop command's, start-up and audits included), one GPU;
- per run: start-up (launch to clock, less any wait for the GPU), the wait, training, the
  evaluation (save to metric), the compile cache (cold/warm), val_bpb;
- the loop's summary (experiments, decisions, runs per decision), the ledger's noise (the
  paired and cross-seed spreads), the lab's size on disk and per run.

Written to OUT/summary.json (and OUT/lab.tar.gz for the next part; with --carry-cache also
OUT/lab-cc.tar.gz, the lab with the seed's compile caches). Data: $AUTOLAB_DATA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
T_START = time.time()
sys.path.insert(0, str(REPO))


def _du(path: Path, skip_models: bool = False) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                if skip_models and (p.suffix in (".pt", ".pth") or any(x.endswith(".model") for x in p.parts)):
                    continue
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _autolab(*args: str, log: Path, timeout: float | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "autolab.cli", *args]
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        if timeout is not None:   # past it: interrupt the loop (it records runs in flight, re-run on resume)
            import signal
            import threading

            def stop() -> None:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()

            timer = threading.Timer(timeout, stop)
            timer.daemon = True
            timer.start()
        out = []
        for line in p.stdout:  # type: ignore[union-attr]
            fh.write(line)
            fh.flush()
            out.append(line)
        p.wait()
    return p.returncode, "".join(out)


class _Sampler:
    """The GPU's own utilisation (NVML, every second) over the loop, for the timeline."""

    def __init__(self, nvml):
        import threading

        self.nvml, self.stop, self.samples = nvml, threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def start() -> "_Sampler | None":
        from autolab.gpu_share import Nvml

        nv = Nvml.open()
        if nv is None:
            return None
        s = _Sampler(nv)
        s.thread.start()
        return s

    def run(self) -> None:
        while not self.stop.wait(1.0):
            u = self.nvml.device_utilization()
            if u is not None:
                self.samples.append(u)

    def summary(self) -> dict:
        n = len(self.samples)
        return {"samples": n, "mean_util": round(sum(self.samples) / n, 1) if n else None,
                "frac_ge_50": round(sum(1 for u in self.samples if u >= 50) / n, 4) if n else None}


def run_rows(lab_path: Path, since: float) -> list[dict]:
    from autolab.lab import Lab

    lab = Lab(lab_path)
    ledger = lab.ledger   # one ledger: it reads the hardware assumptions once
    rows = []
    for r in lab.log.runs_list():
        res = lab.file(r.result_path)
        try:
            data = json.loads(res.read_text()) if res and res.exists() else {}
        except (OSError, ValueError):
            data = {}
        t = data.get("timings", {})
        ended = data.get("ended_epoch") or (res.stat().st_mtime if res and res.exists() else None)
        rows.append({"run": r.id, "candidate": r.candidate_id, "seed": r.seed, "purpose": str(r.purpose),
                     "hardware": ledger.hardware_of(r),
                     "state": str(r.state.value if hasattr(r.state, "value") else r.state),
                     "this_part": bool(ended and ended >= since),
                     "val_bpb": (data.get("metrics") or {}).get("val_bpb"),
                     "metrics": {k: v for k, v in (data.get("metrics") or {}).items() if isinstance(v, (int, float))},
                     **{k: t.get(k) for k in ("startup_s", "clock_start_s", "gpu_wait_s", "train_window_s", "clock_train_s",
                                              "eval_s", "eval_waited_s", "total_s", "compile_cache", "data_s",
                                              "gpu_overlap", "gpu_go_epoch", "gpu_clock_go_epoch", "overlap_prep_gpu_s",
                                              "overlap_froze", "overlap_frozen_s", "contention_gpu_s")},
                     "ended_epoch": ended,
                     "transport": ((data.get("eval") or {}).get("transport") or {}).get("kind")})
    lab.log.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--lab", required=True, type=Path)
    ap.add_argument("--import", dest="archive", type=Path, default=None, help="a lab archive from the previous part")
    ap.add_argument("--hardware", default=None,
                    help="with --import: the hardware the archive's runs ran on, for runs logged before runs recorded "
                         "it (`autolab import-lab --hardware`; the committed campaign labs: \"NVIDIA H100 80GB HBM3\")")
    ap.add_argument("--task", default="nanochat")
    ap.add_argument("--preset", default="h100-90s")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--max-time", type=float, required=True, help="the loop's time box, seconds")
    ap.add_argument("--extra", action="append", default=[], help="more `autolab loop` arguments")
    ap.add_argument("--carry-cache", action="store_true",
                    help="also write OUT/lab-cc.tar.gz: the lab with the seed's compile caches (export-lab --compile-cache)")
    ap.add_argument("--reopen", action="append", default=[], metavar="CANDIDATE",
                    help="reopen this candidate before the loop (`autolab reopen`): its runs were spoiled by a fault")
    ap.add_argument("--reason", default="spoiled by a harness fault", help="the reason recorded with --reopen")
    ap.add_argument("--stop-at", type=float, default=None,
                    help="seconds after this script's start at which the loop is interrupted, whatever it is doing "
                         "(so that the lab is exported inside the caller's time limit)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "loop.log"
    if a.archive:
        rc, out = _autolab("import-lab", str(a.archive), "--lab", str(a.lab),
                           *(["--hardware", a.hardware] if a.hardware else []), log=log)
        if rc != 0:
            print(out[-3000:])
            return rc
    for cand in a.reopen:
        rc, out = _autolab("reopen", str(a.lab), cand, "--reason", a.reason, log=log)
        print(out.strip()[-500:])
        if rc != 0:
            return rc
    sampler = _Sampler.start()
    t0 = time.time()
    stop_in = None if a.stop_at is None else max(10.0, a.stop_at - (time.time() - T_START))
    rc, out = _autolab("loop", a.task, "--preset", a.preset, "--lab", str(a.lab), "--iterations", str(a.iterations),
                       "--max-time", f"{a.max_time:g}", "--json", *a.extra, log=log, timeout=stop_in)
    t1 = time.time()
    if sampler:
        sampler.stop.set()
    summary = None
    for line in reversed(out.strip().splitlines()):
        try:
            summary = json.loads(line)
            break
        except ValueError:
            continue
    rows = run_rows(a.lab, t0)
    part = [r for r in rows if r["this_part"]]
    wall = t1 - t0
    trained = sum(r["train_window_s"] or 0.0 for r in part if r["state"] == "COMPLETE")
    noise = {}
    try:
        from autolab.lab import Lab

        lab = Lab(a.lab)
        nz = lab.ledger.noise()
        noise = nz.to_dict() if hasattr(nz, "to_dict") else (nz if isinstance(nz, dict) else {"noise": str(nz)})
        lab.log.close()
    except Exception as e:  # noqa: BLE001 - the summary still gets written
        noise = {"error": repr(e)}

    def stat(key: str, rs: list[dict]) -> dict | None:
        v = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        return {"n": len(v), "mean": round(statistics.fmean(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)} if v else None

    ok = [r for r in part if r["state"] == "COMPLETE"]
    # the GPU's span: from the first candidate code of the part (a run's go) to the last run's end
    gos = [r["gpu_go_epoch"] for r in part if isinstance(r.get("gpu_go_epoch"), (int, float))]
    ends = [r["ended_epoch"] for r in part if isinstance(r.get("ended_epoch"), (int, float))]
    span = (max(ends) - min(gos)) if gos and ends else None
    warm = [r for r in ok if r["compile_cache"] == "warm"]
    n_runs = max(1, len(rows))
    lab_bytes, lab_core = _du(a.lab), _du(a.lab, skip_models=True)
    res = {
        "command": " ".join(sys.argv), "exit_code": rc, "wall_s": round(wall, 1), "loop_summary": summary,
        "part_runs": len(part), "part_complete": len(ok), "trained_s": round(trained, 1),
        "training_fraction_of_gpu_wall": round(trained / wall, 4) if wall else None,
        "gpu_span_s": round(span, 1) if span else None,
        "training_fraction_of_gpu_span": round(trained / span, 4) if span else None,
        "gpu_busy": sampler.summary() if sampler else None,
        "overlap_prep_gpu_s": stat("overlap_prep_gpu_s", ok), "overlap_frozen_s": stat("overlap_frozen_s", ok),
        "contention_gpu_s": stat("contention_gpu_s", ok),
        "startup_s": stat("startup_s", ok), "startup_s_warm": stat("startup_s", warm), "gpu_wait_s": stat("gpu_wait_s", ok),
        "train_window_s": stat("train_window_s", ok), "eval_s": stat("eval_s", ok), "total_s": stat("total_s", ok),
        "noise": noise, "lab_runs": len(rows), "lab_bytes": lab_bytes, "lab_bytes_without_models": lab_core,
        "lab_mb_per_run": round(lab_bytes / n_runs / 2**20, 2), "runs": rows,
        "device": os.environ.get("NVIDIA_VISIBLE_DEVICES", ""),
    }
    try:
        import torch

        res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        res["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    (a.out / "summary.json").write_text(json.dumps(res, indent=1, default=str))
    rc2, out2 = _autolab("export-lab", "--lab", str(a.lab), "-o", str(a.out / "lab.tar.gz"), log=log)
    if a.carry_cache:   # the same lab with the seed's compile caches, for a warm start on the next machine
        _autolab("export-lab", "--lab", str(a.lab), "-o", str(a.out / "lab-cc.tar.gz"), "--compile-cache",
                             log=log)
        cc = a.out / "lab-cc.tar.gz"
        res["archive_with_caches_bytes"] = cc.stat().st_size if cc.exists() else None
        if cc.exists() and cc.stat().st_size > 15 * 2**20:   # the device tool brings back files up to 16 MiB
            cc.rename(a.out / "lab-cc.too-big")
        (a.out / "summary.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1, default=str))
    for r in part:
        print(json.dumps(r, default=str))
    if rc2 != 0:
        print("export-lab failed:", out2[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
