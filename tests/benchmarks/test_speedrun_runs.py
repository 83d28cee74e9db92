"""speedrun, real runs on the CPU: the cpu-tiny preset end to end through papermill (the seed
reaches the calibrated target, every probe passes), a candidate that does not reset its state
after the warm-up (fails, the reset probe says why), and the data-parallel path: torchrun with
two processes on the gloo backend. No network, no GPU."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "speedrun"
SEED = REPO / "seeds" / "speedrun" / "train_gpt.py"
SHARED_CACHE = REPO / ".cache" / "autolab"      # shared with the nanochat tests (same tokenizer; see there)
sys.path.insert(0, str(TASK_DIR))

from speedrun_harness import runner as R  # noqa: E402


@pytest.fixture()
def shared_cache(monkeypatch):
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("AUTOLAB_CACHE", str(SHARED_CACHE))
    if not (REPO.parent / "shared" / "data" / "techtext" / "manifest.json").exists() and not os.environ.get("AUTOLAB_DATA"):
        pytest.skip("no techtext corpus")


def _candidate(tmp_path: Path, src: str, name: str = "cand") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "train_gpt.py").write_text(src)
    return d


def _all_passed(res: dict) -> None:
    bad = {k: v["detail"] for k, v in res["probes"].items() if not v.get("passed")}
    assert not bad, bad


@pytest.mark.extended
def test_cpu_tiny_seed_reaches_target_through_papermill(tmp_path, shared_cache):
    from autolab.task import load_task

    target = load_task(TASK_DIR).preset("cpu-tiny").settings["target"]
    out_nb, rp = tmp_path / "out.ipynb", tmp_path / "run" / "result.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "papermill", str(TASK_DIR / "benchmark.ipynb"), str(out_nb),
                        "-k", "python3", "--no-progress-bar", "-p", "seed", "1", "-p", "preset", "cpu-tiny",
                        "-p", "result_path", str(rp)], cwd=TASK_DIR, env=env, capture_output=True, text=True,
                       timeout=700)
    res = json.loads(rp.read_text())
    assert p.returncode == 0 and res["status"] == "ok", (res["status"], res["reason"], p.stderr[-3000:])
    m, t = res["metrics"], res["timings"]
    assert m["val_loss"] <= target == res["target"]
    assert res["clock"] == "cpu"                      # cpu-tiny's clock counts CPU seconds of the train process tree
    assert 0 < m["time_s"] <= t["budget_s"] and m["time_s"] == max(t["timed_s"], t["outside_s"])
    assert abs(t["outside_s"] - t["timed_s"]) <= res["probes"]["wall_consistent"]["tolerance_s"]
    assert m["val_loss"] == pytest.approx(m["val_loss_inprocess"], abs=1e-3)
    assert math.isfinite(m["hidden_val_loss"]) and m["init_loss"] > 7.0
    assert m["steps"] == load_task(TASK_DIR).preset("cpu-tiny").settings["train_steps"]
    assert res["summary"]["time_s"] == pytest.approx(t["timed_s"], abs=0.01)
    _all_passed(res)
    for k in ("reset_verified", "init_untrained", "val_tokens", "target_unchanged", "loss_recheck",
              "wall_consistent", "train_data_in_clock", "clock_intact", "causality", "logits", "harness_intact"):
        assert k in res["probes"], k
    # the clock stopped while validating: the tree used more CPU than the clock counted
    pauses = res["probes"]["wall_consistent"]["pauses_s"]
    assert t["train_s"] > t["timed_s"] + pauses > t["timed_s"]
    assert res["val_curve"][-1]["final"] and res["val_curve"][-1]["val_loss"] == m["val_loss_inprocess"]
    nb = out_nb.read_text()
    assert '"ename"' not in nb



def _no_reset_candidate() -> str:
    """The seed, with the harness's restore turned off: the warm-up's optimizer step stays."""
    src = SEED.read_text()
    src, n = re.subn(r"H\.warmup_done\(model, adam, muon, restore=True\)", "H.warmup_done(model, adam, muon, restore=False)",
                     src)
    assert n == 1
    return src


def test_state_not_reset_after_warmup_fails(tmp_path, shared_cache):
    cand = _candidate(tmp_path, _no_reset_candidate())
    res = R.run_benchmark(cand, 1, "cpu-smoke", tmp_path / "r" / "result.json", echo=False)
    assert res["status"] == "failed" and "ResetError" in res["reason"], res["reason"]
    probe = res["probes"]["reset_verified"]
    assert not probe["passed"] and "differs" in probe["detail"], probe
    assert "time_s" not in res["metrics"]


@pytest.mark.extended
def test_torchrun_two_processes_on_cpu(tmp_path, shared_cache):
    """The data-parallel path (as on 8 GPUs): torchrun, the gloo backend, DDP, Muon's work split
    between the processes, validation rows split and all-reduced. (Checked by hand: the same seed
    on one process with the same global batch gives the same val_loss to 1e-5.)"""
    res = R.run_benchmark(None, 1, "cpu-smoke", tmp_path / "two" / "result.json", echo=False,
                          overrides={"nproc": 2, "batch_size": 4})
    assert res["status"] == "ok", res["reason"]
    _all_passed(res)
    assert res["world_size"] == 2 and res["summary"]["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "result.work").glob("harness.rank*.json")) == \
        ["harness.rank0.json", "harness.rank1.json"]
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "result.work").glob("harness.rank*.json"))]
    assert [len(r["reset"]["ranks"]) for r in ranks] == [2, 2] and all(r["batches"] == 10 for r in ranks)
    assert res["metrics"]["val_loss"] == pytest.approx(res["metrics"]["val_loss_inprocess"], abs=1e-3)
