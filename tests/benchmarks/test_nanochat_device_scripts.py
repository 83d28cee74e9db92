"""The nanochat device scripts' CPU-side logic: nanochat_mfu.py's choice of the fastest variant and
its rewrite of train.py's settings. No GPU (the timings themselves run on the device machine)."""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "perf"))

import nanochat_mfu as M  # noqa: E402

AGREED = {"loss_rel_diff": 1e-3, "grad_rel_diff": 1e-2}


def _setting(text: str, name: str) -> str:
    return re.search(rf"^{name} = (.*?)  #", text, re.M).group(1)


@pytest.fixture
def train_py(tmp_path):
    p = tmp_path / "train.py"
    shutil.copy(REPO / "seeds" / "nanochat" / "train.py", p)
    return p


def test_fastest_variant_that_is_a_seed_setting_is_applied(train_py):
    rows = [{"variant": "default", "micro": 64, "tokens_per_s": 100},
            {"variant": "default+micro128", "micro": 128, "tokens_per_s": 300},
            {"variant": "cudnn", "micro": 64, "tokens_per_s": 200},
            {"variant": "cudnn+micro128+muon_compile", "micro": 128, "tokens_per_s": 900},   # not a setting of the seed
            {"variant": "cudnn+micro128", "error": "RuntimeError: boom"}]
    choice = M.apply_best(train_py, rows, AGREED)
    assert choice["variant"] == "default+micro128" and choice["changed"]
    text = train_py.read_text()
    assert _setting(text, "ATTN_BACKEND") == '"default"'
    assert _setting(text, "MICRO_BATCH") == 'min(cfg.get("batch_size", 32), 128)'
    ast.parse(text)


def test_cudnn_is_not_chosen_when_it_disagreed_with_flash(train_py):
    rows = [{"variant": "default", "micro": 64, "tokens_per_s": 100},
            {"variant": "cudnn+micro128", "micro": 128, "tokens_per_s": 500}]
    assert M.apply_best(train_py, rows, {"loss_rel_diff": 1e-3, "grad_rel_diff": 0.5})["variant"] == "default"
    assert M.apply_best(train_py, rows, {"error": "RuntimeError: no cuDNN"})["variant"] == "default"
    text = train_py.read_text()
    assert _setting(text, "ATTN_BACKEND") == '"default"'
    assert _setting(text, "MICRO_BATCH") == 'min(cfg.get("batch_size", 32), 64)'
    assert M.apply_best(train_py, rows, AGREED)["variant"] == "cudnn+micro128"
    assert _setting(train_py.read_text(), "ATTN_BACKEND") == '"cudnn"'


def test_nothing_clean_leaves_train_py_alone(train_py):
    before = train_py.read_text()
    with pytest.raises(SystemExit, match="left as it was"):
        M.apply_best(train_py, [{"variant": "cudnn", "error": "x"}], AGREED)
    assert train_py.read_text() == before


def test_measurement_scripts_live_in_perf_apart_from_the_tasks():
    """benchmarks/ holds the tasks only; the project's measurement scripts are in perf/, which
    task discovery never reads, and each script still runs from there (its --help)."""
    import subprocess

    from autolab.task import discover_tasks

    assert not list((REPO / "benchmarks").glob("*.py")), "measurement scripts belong in perf/"
    scripts = sorted((REPO / "perf").glob("*.py"))
    assert {p.stem for p in scripts} >= {"nanochat_gpu", "nanochat_mfu", "speedrun_gpu", "kernels_gpu",
                                         "kernels_redteam_gpu", "overhead", "ray_overhead", "proposer_compare"}
    assert not (REPO / "perf" / "task.toml").exists()
    assert all(REPO / "perf" not in Path(p).resolve().parents for p in discover_tasks().values())
    for p in (REPO / "perf" / "nanochat_mfu.py", REPO / "perf" / "kernels_redteam_gpu.py"):
        r = subprocess.run([sys.executable, str(p), "--help"], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
        assert r.returncode == 0 and "--out" in r.stdout, r.stderr
