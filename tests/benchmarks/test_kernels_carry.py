"""kernels: a candidate's run re-checks only the problems it changed and carries its parent's
results for the others (issue 19, item 1). The harness side runs for real in the CPU
interpreter (one problem re-checked, one carried); autolab's side (which parent run may be
carried, and when a run is full) is checked on a real lab and log."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import autolab
from autolab._run import build_job, carry_plan, job_limits, new_run, preset_record
from autolab.records import Purpose, Run, State, new_id, now

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
SEEDS = REPO / "seeds" / "kernels"
sys.path.insert(0, str(TASK_DIR))


def test_the_notebook_rechecks_what_changed_and_carries_the_rest(tmp_path, monkeypatch):
    pm = pytest.importorskip("papermill")
    pytest.importorskip("triton")
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    cand = tmp_path / "cand"
    cand.mkdir()
    shutil.copy2(SEEDS / "softmax.py", cand / "softmax.py")
    # the carried problem's file would fail if it were imported: it must not be
    (cand / "rmsnorm.py").write_text("raise RuntimeError('a carried problem was imported')\n")
    carry = {"from_run": "r-parent", "from_candidate": "c-parent", "from_seed": 1, "from_purpose": "screen",
             "problems": {"rmsnorm": {"S": 0.25}}}
    result = tmp_path / "result.json"
    pm.execute_notebook(str(TASK_DIR / "benchmark.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(TASK_DIR),
                        parameters={"candidate_dir": str(cand), "seed": 1, "preset": "cpu-interpret",
                                    "result_path": str(result), "problems": "softmax,rmsnorm",
                                    "carry": json.dumps(carry)},
                        kernel_name="python3", progress_bar=False)
    r = json.loads(result.read_text())
    assert r["status"] == "ok", r.get("reason")
    m = r["metrics"]
    assert m["S.rmsnorm"] == 0.25 and 0 < m["S.softmax"] < 1
    assert m["score"] == pytest.approx((m["S.softmax"] + 0.25) / 2)
    assert m["problems_correct"] == 2.0 and m["problems_total"] == 2.0 and m["problems_carried"] == 1.0
    assert r["carried"]["from_run"] == "r-parent" and r["carried"]["problems"] == {"rmsnorm": {"S": 0.25}}
    assert r["carried"]["rechecked"] == ["softmax"]
    assert r["summary"]["carried"] == ["rmsnorm"] and r["summary"]["rechecked"] == ["softmax"]
    assert r["details"]["problems"]["rmsnorm"]["carried"] and r["details"]["problems"]["softmax"]["workloads"]
    assert all(p["passed"] for p in r["probes"].values()), r["probes"]
    assert "carried from run r-parent: rmsnorm" in r["probes"]["correctness"]["detail"]


@pytest.mark.parametrize("carry, match", [
    ({"problems": {"rmsnorm": {"S": 0.2}}}, "from_run"),
    ({"from_run": "r", "problems": {"rmsnorm": {"S": 1.5}}}, r"S in \[0, 1\]"),
    ({"from_run": "r", "problems": {"rmsnorm": {"S": 0.2}, "softmax": {"S": 0.2}}}, "nothing would be re-checked"),
])
def test_a_malformed_carry_is_refused(carry, match):
    from kernels_harness.runner import parse_carry

    with pytest.raises(ValueError, match=match):
        parse_carry(json.dumps(carry), ["softmax", "rmsnorm"])
    assert parse_carry(None, ["softmax"]) == ({}, {})
    assert parse_carry({"from_run": "r", "problems": {"gelu": {"S": 0.3}}}, ["softmax", "rmsnorm"])[0] == {}


def _parent_run(lab, cand, seed, purpose, *, probes_ok=True, preset=None, scores=None):
    """A finished run of ``cand`` as finish_run records it (the GPU preset cannot run here)."""
    p = preset or lab.task.preset(lab.preset_name)
    names = lab.task.problems(p.name, lab.files(cand))
    scores = scores or {n: 0.5 + seed / 1000 for n in names}
    run = Run(id=new_id("r"), task="kernels", candidate_id=cand.id, preset=p.name, seed=seed, purpose=purpose,
              state=State.COMPLETE, ended_at=now(),
              metrics={"score": sum(scores.values()) / len(scores), **{f"S.{n}": v for n, v in scores.items()}},
              meta={"preset": preset_record(p), "status": "ok", "violations": [], "protected_changed": [],
                    "probes": {"correctness": {"passed": True, "detail": ""},
                               "reference_ops": {"passed": probes_ok, "detail": ""}}})
    return lab.log.append(run)


def test_carry_comes_from_the_parents_own_verified_run_of_the_preset(tmp_path):
    lab = autolab.Lab(tmp_path / "lab", task="kernels", preset="h100-quick")
    seed = lab.seed_candidate()
    p = lab.task.preset("h100-quick")
    files = lab.files(seed)
    child = lab.add_candidate({"matmul_bf16.py": files["matmul_bf16.py"].replace("GROUP_M = 8", "GROUP_M = 4")}, seed)
    assert carry_plan(lab, child, 1, purpose="screen", preset=p) is None          # no verified parent run yet
    bad = _parent_run(lab, seed, 1, "screen", probes_ok=False)                    # a failed probe: never carried
    assert carry_plan(lab, child, 1, purpose="screen", preset=p) is None
    other = lab.task.preset("h100")                                                # another preset: never carried
    _parent_run(lab, seed, 1, "screen", preset=other)
    assert carry_plan(lab, child, 1, purpose="screen", preset=p) is None
    any_seed = _parent_run(lab, seed, 101, "baseline")
    plan = carry_plan(lab, child, 1, purpose="screen", preset=p)
    assert plan["from_run"] == any_seed.id and plan["from_candidate"] == seed.id      # the latest verified one
    same_seed = _parent_run(lab, seed, 1, "screen")
    _parent_run(lab, seed, 102, "baseline")
    plan = carry_plan(lab, child, 1, purpose="screen", preset=p)
    assert plan["from_run"] == same_seed.id and plan["from_seed"] == 1 and bad.id != plan["from_run"]
    assert plan["rechecked"] == ["matmul_bf16"]
    quick = set(p.settings["problems"])
    assert set(plan["problems"]) == quick - {"matmul_bf16"}
    assert plan["problems"]["softmax"] == {"S": pytest.approx(0.501)}
    # full runs: the final comparison, full=True, the seed itself, and a change of every problem
    assert carry_plan(lab, child, 1001, purpose=Purpose.FINAL, preset=p) is None
    assert carry_plan(lab, child, 1, purpose="screen", preset=p, full=True) is None
    assert carry_plan(lab, seed, 1, purpose="screen", preset=p) is None
    every = lab.add_candidate({f"{n}.py": files[f"{n}.py"] + "\n# changed\n" for n in quick}, seed)
    assert carry_plan(lab, every, 1, purpose="screen", preset=p) is None
    # what the run is handed: the notebook's carry parameter, and the record says what was carried
    run = new_run(lab, child, 1, purpose="screen", preset=p, limits=job_limits(p), executor_name="local", carry=plan)
    assert json.loads(run.meta["params"]["carry"]) == plan
    assert run.meta["carried"]["from_run"] == same_seed.id and "softmax" in run.meta["carried"]["problems"]
    assert json.loads(build_job(lab, child, run, job_limits(p)).params["carry"]) == plan   # what papermill gets
    # a grandchild's unchanged problems come from its own parent's runs, never the grandparent's
    assert carry_plan(lab, lab.add_candidate({"softmax.py": files["softmax.py"] + "\n# g\n"}, child), 1,
                      purpose="screen", preset=p) is None
