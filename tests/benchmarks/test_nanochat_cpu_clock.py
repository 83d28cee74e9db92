"""nanochat's CPU clock (issue 18 item 6): on a preset with ``clock = "cpu"`` the budget is CPU
seconds of the whole train process tree, counted inside the process (``H.elapsed()``) and
enforced from outside (the sandbox's measure of every process and thread), so a busy machine
slows a run down without shortening its training. No assertion here depends on how fast the
machine is: sleeps give lower bounds on wall time, CPU is spent by loops that watch their own
CPU time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.benchmarks.test_nanochat_harness import (CANDIDATE, FAST, H, R, _candidate, _task_copy,  # noqa: F401
                                                    shared_cache)
from autolab.sandbox import Limits, Policy, run_sandboxed

PY = sys.executable


def _burn(cpu_s: float) -> None:
    t = time.process_time()
    while time.process_time() - t < cpu_s:
        pass


@pytest.fixture()
def cpu_api(tmp_path, monkeypatch):
    cfg = {"seed": 3, "device": "cpu", "budget_s": 100.0, "seq_len": 16, "vocab_size": 50, "bos_id": 0,
           "clock": "cpu", "events_path": str(tmp_path / "events.jsonl"), "data": {}}
    p = tmp_path / "run_config.json"
    p.write_text(json.dumps(cfg))
    monkeypatch.setenv("AUTOLAB_RUN_CONFIG", str(p))
    monkeypatch.chdir(tmp_path)
    for k, v in (("_CONFIG", None), ("_T0", None), ("_CPU_T0", None), ("_EVENTS", None), ("_LOADERS", []),
                 ("_tree_cpu", H._TreeCPU())):
        monkeypatch.setattr(H, k, v)
    return cfg


def test_the_cpu_clock_counts_cpu_not_sleep(cpu_api, monkeypatch):
    H.start_clock()
    assert H._CPU_T0 is not None                      # a cpu-clock preset: the clock reads CPU seconds
    time.sleep(0.6)
    assert H.elapsed() < 0.3                          # sleeping uses none of the budget
    _burn(0.5)
    assert H.elapsed() >= 0.45                        # working does
    assert 99 < H.time_left() <= 100 - 0.45
    # the hard limit is CPU seconds of the tree since launch (cpu_limit_s), not a wall deadline
    monkeypatch.setattr(H, "_CONFIG", {**cpu_api, "cpu_limit_s": H._tree_cpu() + 3.0, "finish_reserve_s": 1.0,
                                       "deadline": time.time() - 100})
    assert 1.5 < H.time_left() <= 2.0
    monkeypatch.setattr(H, "_CONFIG", {**cpu_api, "cpu_limit_s": 0.001})
    assert H.time_left() == 0.0


def test_the_cpu_clock_charges_helper_processes(cpu_api):
    """A child that burns 0.8 CPU seconds is charged to the clock while it lives (found in /proc)
    and after it has been waited for (the children's figures of os.times)."""
    H.start_clock()
    p0 = time.process_time()
    code = ("import time, sys\nt = time.process_time()\nwhile time.process_time() - t < 0.8:\n    pass\n"
            "print('BURNT', flush=True)\nsys.stdin.read()\n")
    child = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "BURNT"
        H._tree_cpu.next_scan = 0.0                   # rescan now rather than within the second
        alive = H.elapsed()
        assert alive - (time.process_time() - p0) >= 0.75, alive   # the live child's CPU counts
        child.stdin.close()
        child.wait(timeout=30)
        assert H.elapsed() >= alive                   # once reaped: still counted, never decreasing
        assert H.elapsed() - (time.process_time() - p0) >= 0.75
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_sandbox_kills_a_tree_past_its_cpu_limit(tmp_path):
    """Limits.tree_cpu_s counts every process of the tree: the parent sleeps while two children
    burn; the whole tree is killed once the sum passes the limit, long before the wall limit."""
    code = textwrap.dedent("""
        import subprocess, sys, time
        burn = "while True: pass"
        kids = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
        time.sleep(600)
    """)
    r = run_sandboxed([PY, "-c", code], cwd=tmp_path, limits=Limits(wall_s=300, tree_cpu_s=1.5),
                      policy=Policy(harden=False))
    assert r.state == "killed" and r.reason == "cpu", (r.state, r.reason, r.stdout_tail)
    assert r.cpu_s is not None and r.cpu_s >= 1.5
    assert r.wait_s is not None


def test_wall_net_reason_tells_starved_from_sleeping():
    starved = R._wall_net_reason(140.0, 12.0, 35.0, 4.0, idle=0.5, wait=110.0)
    assert starved.startswith("infrastructure:") and "not the candidate's fault" in starved
    # the loop's judge calls a reason with "budget" or "timeout" in it the candidate's BudgetExceeded
    assert "budget" not in starved and "timeout" not in starved
    sleeper = R._wall_net_reason(140.0, 1.0, 35.0, 4.0, idle=200.0, wait=0.2)
    assert sleeper.startswith("timeout:") and "waited" in sleeper
    # without the run-queue figure, the machine's idle CPU decides
    assert R._wall_net_reason(140.0, 12.0, 35.0, 4.0, idle=3.0, wait=None).startswith("infrastructure:")
    assert R._wall_net_reason(140.0, 12.0, 35.0, 4.0, idle=90.0, wait=None).startswith("timeout:")


def test_cpu_out_of_the_clocks_view_is_a_violation():
    """The runner compares the harness's CPU clock with the tree's CPU measured from outside."""
    res = {"timings": {"clock_train_s": 20.0}, "finish": {"clock": "cpu", "cpu_before_clock_s": 4.0},
           "violations": []}
    R._cpu_clock_timings(res, 25.0, allowance_s=15.0, budget_s=20.0)
    assert res["violations"] == [] and res["timings"]["train_s"] == 25.0 and res["timings"]["train_window_s"] == 21.0
    res = {"timings": {"clock_train_s": 10.0}, "finish": {"clock": "cpu", "cpu_before_clock_s": 4.0},
           "violations": []}
    R._cpu_clock_timings(res, 34.0, allowance_s=15.0, budget_s=20.0)   # 24 s of CPU the clock did not see
    assert [v["kind"] for v in res["violations"]] == ["clock"] and "out of the clock's view" in res["violations"][0]["detail"]


# ----------------------------------------------------------------------------- through the runner

SLEEPY = CANDIDATE.replace("    step = tokens = 0\n", "    step = tokens = 0\n    H.start_clock()\n    import time as _tm\n"
                                                     "    _tm.sleep(SLEEP_S)\n", 1)

SPAWNER = CANDIDATE.replace("    step = tokens = 0\n", """    step = tokens = 0
    H.start_clock()
    import subprocess as _sp, sys as _sys, time as _tm
    _code = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.5:\\n    pass\\nprint('BURNT', flush=True)\\n"
    _kid = _sp.Popen([_sys.executable, "-c", _code], stdout=_sp.PIPE, text=True)
    assert _kid.stdout.readline().strip() == "BURNT"
    _kid.wait()
    _own0 = _tm.process_time()
""", 1)


def _cpu_run(tmp_path, src, name, overrides):
    cand = _candidate(tmp_path, src, name)
    res = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / name / "run" / "result.json",
                          task_dir=_task_copy(tmp_path / name, cand), overrides=overrides, echo=False)
    assert res["status"] == "ok", res["reason"]
    return res


def test_a_sleeper_is_killed_by_the_wall_net_as_its_own_fault(tmp_path, shared_cache):
    """A script that only sleeps uses no CPU: the wall-clock safety net (wall_factor x budget +
    allowance) ends it, and since it was not waiting for a CPU, the kill is the candidate's."""
    from tests.benchmarks.test_nanochat_harness import SLEEPER

    cand = _candidate(tmp_path, SLEEPER, "sleeper")
    res = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / "r.json", task_dir=_task_copy(tmp_path, cand),
                          overrides={"budget_s": 1, "allowance_s": 2, "kill_grace_s": 1, "wall_factor": 8},
                          echo=False)
    # wall_factor 8 (a 24 s net): on a loaded machine the start-up may wait several seconds for a
    # CPU; the sleep must still be most of the run, or the kill is (rightly) the machine's
    assert res["status"] == "killed" and res["reason"].startswith("timeout:"), res["reason"]
    t = res["timings"]
    assert t["train_wall_s"] >= 8 * 3 and t["train_cpu_s"] < 6        # start-up CPU only (3.1 s seen at load 4)
    assert "val_bpb" not in res["metrics"]


def test_a_sleeping_script_keeps_its_budget(tmp_path, shared_cache):
    """cpu-tiny is on the cpu clock: 5 s of sleep inside the training window do not count, the
    script still trains for its whole (CPU) budget, and the outside figures say so."""
    assert "steps" in CANDIDATE
    res = _cpu_run(tmp_path, SLEEPY.replace("SLEEP_S", "5.0"), "sleepy", {**FAST, "budget_s": 2})
    t = res["timings"]
    assert res["clock"] == "cpu"
    assert 1.9 <= t["clock_train_s"] < 2.0 + 1.5             # the budget, on the CPU clock
    assert t["train_window_wall_s"] >= 5.0 + 1.9             # the sleep plus the budget, in wall seconds
    assert t["train_s"] == t["train_cpu_s"] <= 2 + FAST["allowance_s"] + 1
    # the window in CPU: the 5 s sleep is not in it (1.8 s of other CPU seen on a 2-worker test run)
    assert t["train_window_s"] <= t["clock_train_s"] + 2.5
    assert res["metrics"]["steps"] >= 1


def test_a_helper_process_is_charged_to_the_budget(tmp_path, shared_cache):
    """A child that burns 1.5 CPU seconds after the clock started is charged: the script's own
    process trains for at most budget - 1.5 CPU seconds."""
    src = SPAWNER.replace('    print("---")', '    print("---")\n    print(f"own_cpu: {_tm.process_time() - _own0:.3f}")', 1)
    assert src != SPAWNER
    res = _cpu_run(tmp_path, src, "spawner", {**FAST, "budget_s": 3})
    t, own = res["timings"], res["summary"]["own_cpu"]
    assert t["clock_train_s"] >= 2.9
    assert own <= t["clock_train_s"] - 1.5 + 0.3, (own, t)
    assert t["train_cpu_s"] >= t["clock_train_s"]             # the outside figure covers the child too


def test_the_same_training_with_a_busy_process_beside(tmp_path, shared_cache):
    """The amount of training does not depend on what else the machine runs: steps with a
    CPU-bound process beside the run are within a loose ratio of steps without it."""
    ov = {**FAST, "budget_s": 3}
    quiet = _cpu_run(tmp_path, CANDIDATE, "quiet", ov)
    busy = subprocess.Popen([PY, "-c", "while True: pass"])
    try:
        loaded = _cpu_run(tmp_path, CANDIDATE, "loaded", ov)
    finally:
        busy.kill()
        busy.wait()
    a, b = quiet["metrics"]["steps"], loaded["metrics"]["steps"]
    assert 0.6 <= b / a <= 1.6, (a, b)
    assert abs(loaded["timings"]["clock_train_s"] - quiet["timings"]["clock_train_s"]) < 1.0
