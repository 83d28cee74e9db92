"""speedrun's CPU clock (issue 18 item 6): on a preset with ``clock = "cpu"`` the clock that
``time_s`` comes from counts CPU seconds of the whole train process tree while it runs
(validation pauses excluded), read inside the train process and, authoritatively, from outside
by the runner; a busy machine slows a run down without changing its time_s. No assertion here
depends on how fast the machine is: sleeps give lower bounds on wall time, CPU is spent by loops
that watch their own CPU time, and CPU figures are compared with CPU figures."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time

import pytest

from tests.benchmarks.test_nanochat_cpu_clock import _burn
from tests.benchmarks.test_speedrun_harness import _stamps
from tests.benchmarks.test_speedrun_runs import SEED, _all_passed, _candidate, shared_cache  # noqa: F401

import speedrun_harness as H  # noqa: E402  (on sys.path through test_speedrun_runs)
from speedrun_harness import runner as R  # noqa: E402

PY = sys.executable
BURN_CHILD = ("import time, sys\nt = time.process_time()\nwhile time.process_time() - t < {s}:\n    pass\n"
              "print('BURNT', flush=True)\nsys.stdin.read()\n")


@pytest.fixture()
def cpu_clock(tmp_path, monkeypatch):
    """The harness in this process, on a cpu-clock configuration; its validation is a CPU burn
    (the val data is not needed to test the clock)."""
    torch = pytest.importorskip("torch")
    cfg = {"seed": 3, "device": "cpu", "budget_s": 100.0, "seq_len": 8, "vocab_size": 50, "bos_id": 0,
           "clock": "cpu", "target": 3.0, "val_tokens": 8, "threads": torch.get_num_threads(), "world_size": 1,
           "events_path": str(tmp_path / "events.jsonl"), "record_dir": str(tmp_path), "data": {}}
    monkeypatch.setattr(H, "_S", H._State())
    H._S.cfg = cfg

    def val_loss(model):
        if H._S.phase == "timed":                      # a timed validation's work
            _burn(0.4)
        return {"loss": 9.0, "tokens": 8}

    monkeypatch.setattr(H, "_val_loss", val_loss)
    monkeypatch.setitem(H._ORIGINALS, "_val_loss", val_loss)
    monkeypatch.setattr(H, "_TREE", H.TreeCPU())
    monkeypatch.setattr(H, "_TREE_ORIG", H._TREE)
    rng = torch.random.get_rng_state()
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    H.begin(model, opt)
    H.warmup_done(model, opt)                          # the clock starts
    yield cfg, model
    H._S.events.close()
    torch.random.set_rng_state(rng)


def test_the_clock_counts_cpu_not_sleep_nor_validation(cpu_clock, monkeypatch):
    cfg, model = cpu_clock
    assert H._S.cpu and H._S.cpu_at_start is not None
    time.sleep(0.6)
    assert H.elapsed() < 0.3                           # sleeping uses none of the budget
    _burn(0.5)
    worked = H.elapsed()
    assert worked >= 0.45                              # working does
    H.validate(model, 1)                               # burns 0.4 CPU s with the clock stopped
    assert H.elapsed() - worked < 0.2
    assert 99 < H.time_left() <= 100 - 0.45
    # the hard limit is CPU seconds of the tree since launch (cpu_limit_s), not a wall deadline
    monkeypatch.setitem(H._S.cfg, "cpu_limit_s", H._TREE() + 3.0)
    monkeypatch.setitem(H._S.cfg, "finish_reserve_s", 1.0)
    monkeypatch.setitem(H._S.cfg, "deadline", time.time() - 100)
    assert 1.5 < H.time_left() <= 2.0
    assert H._clock_intact()["passed"]
    monkeypatch.setattr(H, "_TREE", H.TreeCPU())       # another reader behind the clock is seen
    assert H._clock_intact()["replaced"] == ["speedrun_harness._TREE"]


def test_the_clock_charges_helper_processes(cpu_clock):
    """A child that burns 0.8 CPU seconds is charged while it lives and after it was waited for."""
    p0 = time.process_time()
    child = subprocess.Popen([PY, "-c", BURN_CHILD.format(s=0.8)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "BURNT"
        H._TREE.rescan()
        alive = H.elapsed()
        assert alive - (time.process_time() - p0) >= 0.75, alive
        child.stdin.close()
        child.wait(timeout=30)
        assert H.elapsed() >= alive and H.elapsed() - (time.process_time() - p0) >= 0.75
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_same_work_reads_the_same_with_a_busy_process_beside(cpu_clock):
    """A fixed amount of work (not a fixed CPU time) reads about the same on the clock whether
    or not a CPU-bound process competes for the cores."""
    def work() -> float:
        t = H.elapsed()
        x = 0
        for i in range(3_000_000):
            x += i * i
        return H.elapsed() - t

    quiet = work()
    busy = subprocess.Popen([PY, "-c", "while True: pass"])
    try:
        loaded = work()
    finally:
        busy.kill()
        busy.wait()
    assert 0.6 <= loaded / quiet <= 1.6, (quiet, loaded)


def test_clock_check_on_cpu_stamps():
    """On a cpu clock the outside view is the tree's CPU at each clock event (cpu_out)."""
    stamps = [{**s, "cpu_out": s["t_out"] / 2} for s in _stamps()]   # CPU runs at half the wall rate
    ok = R.clock_check(stamps, 11.25, 20, 0.5, wall_s=30.0, untimed_max_s=25, validations=2, cpu=True)
    assert ok["passed"] and ok["clock"] == "cpu" and ok["outside_s"] == pytest.approx(11.25), ok
    assert "CPU s" in ok["detail"]
    hid = R.clock_check(stamps, 10.5, 20, 0.5, cpu=True)                # 0.75 CPU s hidden from the clock
    assert not hid["passed"] and "runner saw 11.25 CPU s" in hid["detail"]
    # the tree's whole CPU (the sandbox's figure) bounds the CPU spent off the clock
    far = R.clock_check(stamps, 11.25, 20, 0.5, wall_s=60.0, untimed_max_s=25, cpu=True)
    assert not far["passed"] and "the process tree used 60.0 CPU s" in far["detail"]
    # no CPU reading from outside: the clock was not seen (a wall-only stamp does not count)
    assert not R.clock_check(_stamps(), 22.5, 20, 0.5, cpu=True)["passed"]
    # the pause bound counts the trusted pass once per thread on a cpu clock
    assert R.pause_check(ok, val_pass_s=0.1, threads=2)["passed"]      # pauses 0.5, 0.75 <= 3 x 0.1 x 2 + 1
    slow = R.pause_check({**ok, "pause_list": [1.7]}, val_pass_s=0.1, threads=2)
    assert not slow["passed"] and "x 2 threads" in slow["detail"]


# ----------------------------------------------------------------------------- through the runner

SLEEP_S, HELPER_S = 6.5, 1.0


def _sleeper_with_helper() -> str:
    """The seed, which, once the clock runs, sleeps SLEEP_S seconds and has a helper process burn
    HELPER_S CPU seconds, and reports its own process's CPU seconds on the clock."""
    src = SEED.read_text()
    start = "    H.warmup_done(model, adam, muon, restore=True)  # the clock starts here\n"
    src = src.replace(start, start + f"""    import subprocess as _sp, sys as _sys
    _own0 = time.process_time()
    time.sleep({SLEEP_S})
    _code = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < {HELPER_S}:\\n    pass\\n"
    _sp.run([_sys.executable, "-c", _code], check=True)
""", 1)
    src, n = re.subn(r"\n    val_loss = H\.finish\(", "\n    _own = time.process_time() - _own0\n    val_loss = H.finish(",
                     src)
    assert n == 1 and "_own0" in src
    return src.replace('        print(f"train_loss: {loss_val:.4f}")\n',
                       '        print(f"train_loss: {loss_val:.4f}")\n        print(f"own_cpu: {_own:.3f}")\n', 1)


def test_time_s_counts_the_trees_cpu_whatever_the_load(tmp_path, shared_cache):
    """With a CPU-bound process beside it, a run that sleeps longer than its whole budget inside
    the clock and has a helper process work still succeeds: its time_s is the CPU its own process
    and its helper spent on the clock, neither the sleep nor the time lost to the busy machine,
    and the runner's outside view of the CPU clock agrees with the harness's."""
    cand = _candidate(tmp_path, _sleeper_with_helper())
    ov = {"budget_s": 6.0, "train_steps": 6, "val_every": 0, "target": 7.6}
    busy = subprocess.Popen([PY, "-c", "while True: pass"])
    try:
        res = R.run_benchmark(cand, 1, "cpu-smoke", tmp_path / "r" / "result.json", echo=False, overrides=ov)
    finally:
        busy.kill()
        busy.wait()
    assert res["status"] == "ok", res["reason"]
    _all_passed(res)
    assert res["clock"] == "cpu" and res["probes"]["wall_consistent"]["clock"] == "cpu"
    t, m, own = res["timings"], res["metrics"], res["summary"]["own_cpu"]
    assert own + HELPER_S - 0.2 <= m["time_s"] <= own + HELPER_S + 0.6, (own, m["time_s"])
    assert m["time_s"] < ov["budget_s"] < SLEEP_S
    assert math.isclose(m["time_s"], max(t["timed_s"], t["outside_s"]))
    stamps = {s["ev"]: s for s in res["clock_events"]}
    assert stamps["clock_stop"]["t_out"] - stamps["clock_start"]["t_out"] >= SLEEP_S   # the sleep was on the clock
    assert t["train_s"] == t["train_cpu_s"] >= m["time_s"] and t["train_wall_s"] >= SLEEP_S
    assert json.loads((tmp_path / "r" / "result.work" / "harness.rank0.json").read_text())["clock"] == "cpu"
