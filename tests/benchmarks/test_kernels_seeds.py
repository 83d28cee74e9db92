"""kernels task: every seed kernel is correct against its reference on tiny shapes, run by
Triton's CPU interpreter (TRITON_INTERPRET=1) in the harness's real worker process (the
correctness rounds, hidden shapes and hack probes the sandboxed runs use; no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
SEEDS = REPO / "seeds" / "kernels"
sys.path.insert(0, str(TASK_DIR))

pytest.importorskip("triton")

from kernels_harness import scan  # noqa: E402
from kernels_harness.evaluate import Settings  # noqa: E402
from kernels_harness.problems import load_problems  # noqa: E402

PROBLEMS = load_problems()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One worker process over all seeds (the interpreter must be on before triton is imported,
    which a fresh process guarantees)."""
    work = tmp_path_factory.mktemp("kernels-seeds")
    spec = {"candidate_dir": str(SEEDS), "problems": sorted(PROBLEMS), "report_path": str(work / "report.json"),
            "settings": Settings(device="cpu", shapes="tiny", rounds=2, hidden_rounds=1, time=False).as_dict()}
    (work / "spec.json").write_text(json.dumps(spec))
    # PYTHONPATH as the runner gives the worker: the task folder and the folder holding autolab
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(TASK_DIR), str(REPO)]),
               OMP_NUM_THREADS="1", TRITON_CACHE_DIR=str(work / "triton"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "kernels_harness.worker", str(work / "spec.json")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((work / "report.json").read_text())
    assert rep["done"] and rep["env"]["interpret"] and rep["violations"] == []
    return rep


def test_there_is_one_seed_per_problem():
    assert sorted(p.stem for p in SEEDS.glob("*.py")) == sorted(PROBLEMS)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_seed_is_correct_in_the_interpreter(name, report):
    res = report["problems"][name]
    assert res["failures"] == [] and res["violations"] == [], (res["failures"], res["violations"])
    assert res["correct"] and res["hidden_correct"]


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_seed_passes_the_static_scan(name):
    findings = scan.scan_source((SEEDS / f"{name}.py").read_text(), PROBLEMS[name].banned)
    assert [f for f in findings if f.kind != "suspicious"] == []


def test_seed_style_settings_are_uppercase_one_line_literals():
    """The playbook edits `NAME = literal   # comment` lines; every seed has block/warp settings."""
    import ast

    for path in SEEDS.glob("*.py"):
        tree = ast.parse(path.read_text())
        settings = [n for n in tree.body if isinstance(n, ast.Assign) and len(n.targets) == 1
                    and isinstance(n.targets[0], ast.Name) and n.targets[0].id.isupper()
                    and not n.targets[0].id.startswith("_")]
        names = {n.targets[0].id for n in settings}
        assert "NUM_WARPS" in names, path.name
        assert any(n.startswith(("BLOCK", "NORM_BLOCK")) for n in names), path.name
        for n in settings:
            assert isinstance(n.value, ast.Constant) and n.lineno == n.end_lineno, (path.name, n.targets[0].id)
        assert any(isinstance(n, ast.FunctionDef) and n.name == "kernel" for n in tree.body), path.name
