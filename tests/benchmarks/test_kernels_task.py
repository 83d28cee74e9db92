"""kernels task: task.toml loads through autolab, the playbook applies to the seeds, and the
benchmark notebook runs by papermill on cpu-interpret (two problems) and writes the result JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
SEEDS = REPO / "seeds" / "kernels"
sys.path.insert(0, str(TASK_DIR))


def test_task_loads_and_is_discovered():
    from autolab.task import discover_tasks, load_task

    assert "kernels" in discover_tasks()
    t = load_task("kernels")
    assert t.metric.name == "score" and t.metric.direction == "maximize"
    assert {"cpu-interpret", "h100", "h100-quick"} <= set(t.presets)
    assert t.preset("cpu-interpret").device == "cpu" and t.preset("h100").device == "cuda"
    assert t.preset("h100").settings["iters"] >= 50 and t.preset("h100").settings["rounds"] == 10
    assert len(t.preset("h100-quick").settings["problems"]) < 10
    files = t.seed_files()
    assert len(files) >= 24 and all(t.is_editable(f) for f in files)
    prot = {str(p.relative_to(TASK_DIR)) for p in t.protected_files()}
    assert {"benchmark.ipynb", "task.toml", "kernels_harness/runner.py", "problems/softmax.py"} <= prot
    assert t.playbook is not None and t.brief_text().startswith("# ")


def test_runner_settings_merge_preset_and_defaults():
    from kernels_harness import runner

    cpu = runner.settings("cpu-interpret")
    assert cpu["device"] == "cpu" and cpu["interpret"] and cpu["shapes"] == "tiny" and not cpu["baseline_compile"]
    gpu = runner.settings("h100-quick")
    assert gpu["device"] == "cuda" and gpu["baseline_compile"] and gpu["problems"]
    with pytest.raises(KeyError, match="no preset"):
        runner.settings("nope")


def test_every_playbook_edit_applies_to_its_seed_file():
    from autolab._implement import apply_setting_edit
    from autolab._propose import load_playbook

    edits = load_playbook(TASK_DIR / "playbook.toml")
    assert len(edits) >= 40
    ops, settings = set(), set()
    for e in edits:
        assert e.file and (SEEDS / e.file).exists(), e.name
        text = (SEEDS / e.file).read_text()
        for v in e.values:
            new = apply_setting_edit(text, {"setting": e.setting, "op": e.op, "value": v, "cast": e.cast,
                                            "patch": e.patch}, path=e.file)
            assert new != text, (e.name, v)
            compile(new, e.file, "exec")
        ops.add(e.op)
        settings.add(e.setting)
    assert ops == {"set", "scale", "toggle", "patch"}
    # block sizes, warps, stages, persistent grids, vectorized access and fusion are all covered
    assert {"BLOCK_N", "BLOCK_SIZE", "NUM_WARPS", "NUM_STAGES", "PERSISTENT", "VECTOR_HINTS", "BLOCK_ROWS",
            "ROW_IN_REGISTERS"} <= settings


def test_the_gpu_script_applies_edits_like_autolab():
    sys.path.insert(0, str(REPO / "perf"))
    import kernels_gpu
    from autolab._implement import apply_setting_edit

    text = (SEEDS / "softmax.py").read_text()
    for setting, op, v in (("BLOCK_SIZE", "set", 2048), ("ROW_IN_REGISTERS", "toggle", None),
                           ("PROGRAMS_PER_SM", "scale", 2.0)):
        edit = {"setting": setting, "op": op, "value": v, "cast": "int"}
        assert kernels_gpu.apply_edit(text, setting, op, v, "int") == apply_setting_edit(text, edit)
    assert set(kernels_gpu.LOOP_PLAN) <= set(p.stem for p in SEEDS.glob("*.py"))
    names = set(kernels_gpu.load_playbook(TASK_DIR / "playbook.toml"))
    assert all(n in names for plan in kernels_gpu.LOOP_PLAN.values() for n in plan)


def test_notebook_runs_on_cpu_interpret_with_two_problems(tmp_path, monkeypatch):
    pm = pytest.importorskip("papermill")
    pytest.importorskip("triton")
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    result = tmp_path / "result.json"
    pm.execute_notebook(str(TASK_DIR / "benchmark.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(TASK_DIR),
                        parameters={"candidate_dir": None, "seed": 1, "preset": "cpu-interpret",
                                    "result_path": str(result), "problems": "softmax,rmsnorm"},
                        kernel_name="python3", progress_bar=False)
    r = json.loads(result.read_text())
    assert r["status"] == "ok" and r["task"] == "kernels" and r["preset"] == "cpu-interpret" and r["seed"] == 1
    assert set(r["metrics"]) >= {"score", "S.softmax", "S.rmsnorm"}
    assert all(0.0 < r["metrics"][k] < 1.0 for k in ("score", "S.softmax", "S.rmsnorm"))
    assert r["metrics"]["problems_correct"] == 2.0 and r["violations"] == []
    assert all(p["passed"] for p in r["probes"].values()), r["probes"]
    assert r["summary"]["interpret"] and "meaningless" in r["summary"]["note"]
    assert r["timings"]["total_s"] > 0 and (tmp_path / "cache" / "kernels").is_dir()


def test_sandbox_bridge_retries_without_hardening_only_before_the_worker_is_ready(tmp_path, monkeypatch):
    """If the hardened sandbox kills the worker before its start-up is done (CUDA error 304 on
    the H100 machine), the bridge repeats the run with harden=False, and says so."""
    import autolab.sandbox as sb
    from kernels_harness import sandbox_bridge

    calls = []

    def fake(argv, *, cwd, policy, limits, env, on_line):
        calls.append(policy.harden)
        ok = not policy.harden
        return sb.SandboxResult(0 if ok else 1, "ok" if ok else "failed", "" if ok else "exit code 1", 1.0, (),
                                "" if ok else "RuntimeError: Error 304")

    monkeypatch.setattr(sb, "run_sandboxed", fake)
    monkeypatch.setattr(sandbox_bridge, "_HARDEN_FAILED", {})
    ready = tmp_path / "report.json"
    r = sandbox_bridge.run(["python"], str(tmp_path), {}, 10, ready_path=str(ready))
    assert calls == [True, False] and r.state == "ok" and r.sandbox == "autolab.sandbox(harden=False)"
    assert "304" in r.isolation["harden"]
    sandbox_bridge.run(["python"], str(tmp_path), {}, 10, ready_path=str(ready))
    assert calls == [True, False, False]                   # remembered for this process
    # once the worker is ready (the candidate may have run), a failure is the candidate's: no retry
    monkeypatch.setattr(sandbox_bridge, "_HARDEN_FAILED", {})
    ready.write_text("{}")
    r = sandbox_bridge.run(["python"], str(tmp_path), {}, 10, ready_path=str(ready))
    assert calls[-1] is True and r.state == "failed" and r.sandbox == "autolab.sandbox"


def test_only_problem_files_reach_the_worker(tmp_path, monkeypatch):
    """A candidate's `torch.py` or `sitecustomize.py` would run in the worker before its start-up
    is done (the worker's working directory is the candidate's copy): only files named after a
    problem are copied, so the run is the seed's and hardening stays on."""
    pytest.importorskip("triton")
    import shutil

    from kernels_harness import runner, sandbox_bridge

    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sandbox_bridge, "_HARDEN_FAILED", {})
    cand = tmp_path / "cand"
    cand.mkdir()
    shutil.copy2(SEEDS / "softmax.py", cand / "softmax.py")
    marker = tmp_path / "shadow-ran"
    for name in ("torch.py", "sitecustomize.py", "triton.py"):
        (cand / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\nraise SystemExit(3)\n")
    r = runner.run_benchmark(cand, preset="cpu-interpret", seed=1, problems="softmax", log=lambda m: None)
    assert r["status"] == "ok" and r["metrics"]["problems_correct"] == 1.0, r.get("reason")
    assert not marker.exists()
    assert r["probes"]["sandbox"]["runner"] == "autolab.sandbox", r["probes"]["sandbox"]
