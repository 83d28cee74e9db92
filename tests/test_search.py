import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import autolab
from autolab._loop import RunUnit, _Scheduler
from autolab.records import State
from autolab.ledger import best_candidate, latest_verdict, noise_sd

LOOP = r"""
import sys
sys.path.insert(0, {tests!r})
import autolab
lab = autolab.Lab({lab!r}, task={task!r})
s = autolab.loop(lab, iterations=5, proposer_seed=1, progress=False)
print("SUMMARY", s.experiments, s.promoted, flush=True)
"""


def test_loop_finds_and_promotes_a_real_gain(toy_lab):
    s = autolab.loop(toy_lab, iterations=4, proposer_seed=0, progress=False)
    not_ok = [(r.state.value, r.error) for r in toy_lab.log.runs_list() if r.state is not State.COMPLETE]
    assert s.experiments == 4 and s.stopped == "done" and s.failed == 0, not_ok
    assert s.promoted >= 1 and s.best < s.baseline
    best = best_candidate(toy_lab)
    assert best.state is State.PROMOTED
    assert noise_sd(toy_lab) is not None
    # screening seeds never count for promotion, and confirmation seeds differ from them
    for v in toy_lab.log.verdicts_list():
        if v.state is State.PROMOTED:
            runs = [r for r in toy_lab.log.runs_list() if r.candidate_id == v.candidate_id and r.purpose == "confirm"]
            assert {r.seed for r in runs} == {101, 102, 103}
    # the same command again is a no-op: the lab already holds 4 experiments
    s2 = autolab.loop(toy_lab, iterations=4, proposer_seed=0, progress=False)
    assert s2.experiments == 4 and s2.runs == s.runs and s2.reason == "goal"
    assert "nothing to do" in s2.stopped and "more=N" in s2.stopped   # said plainly, with the way to run more
    s3 = autolab.loop(toy_lab, more=1, proposer_seed=0, progress=False)   # more=N adds N to what the lab holds
    assert s3.experiments == 5 and s3.runs > s.runs


def test_stop_request(toy_lab):
    toy_lab.request_stop()
    assert toy_lab.stop_requested
    s = autolab.loop(toy_lab, iterations=1, proposer_seed=0, progress=False)   # a new loop clears a stale STOP
    assert s.experiments == 1 and s.stopped == "done" and not toy_lab.stop_requested


def test_kill_minus_9_then_resume(tmp_path, toy_task):
    lab_dir = tmp_path / "lab"
    code = LOOP.format(tests=str(Path(__file__).parent), lab=str(lab_dir), task=str(toy_task))
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    # wait until at least one run is in flight after the baseline, then kill everything
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        if (lab_dir / "log.db").exists():
            lab = autolab.Lab(lab_dir)
            runs = lab.log.runs_list()
            if any(r.state is State.RUNNING and r.purpose == "screen" for r in runs):
                break
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    lab = autolab.Lab(lab_dir)
    assert lab.log.integrity_check() == "ok"
    assert any(r.state is State.RUNNING for r in lab.log.runs_list())   # the killed run is still RUNNING in the log
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SUMMARY 5" in out.stdout
    lab = autolab.Lab(lab_dir)
    runs = lab.log.runs_list()
    assert not any(r.state is State.RUNNING for r in runs)
    killed = [r for r in runs if r.state is State.KILLED]
    assert killed and all(r.error["reason"] == "interrupted" for r in killed)
    # nothing duplicated: one COMPLETE run per (candidate, purpose, seed)
    complete = collections.Counter((r.candidate_id, r.purpose, r.seed) for r in runs if r.state is State.COMPLETE)
    assert max(complete.values()) == 1
    # every interrupted run was re-queued and completed
    for k in killed:
        assert complete[(k.candidate_id, k.purpose, k.seed)] == 1
    assert len(lab.log.ideas_list()) == 5
    assert not (lab_dir / "loop.lock").exists()


def test_a_paired_design_detects_a_gain_the_unpaired_one_cannot(tmp_path):
    """The toy's noise is all per random seed (sd 3 here): on the same seeds a candidate and its
    parent share it, so the paired test sees gains that the unpaired Welch test of the very
    same runs cannot tell from noise."""
    from toytask import make_toy_task

    from autolab._audit.stats import compare

    lab = autolab.Lab(tmp_path / "lab", task=str(make_toy_task(tmp_path / "tasks", noise=3.0)))
    s = autolab.loop(lab, iterations=4, proposer_seed=0, progress=False)
    assert s.promoted >= 1 and s.best < s.baseline, s
    assert s.decisions >= 1 and s.runs_per_decision is not None and s.pairing_runs >= 1
    for v in lab.log.verdicts_list():
        if v.state is State.PROMOTED:
            assert v.meta["design"] == "paired" and v.meta["paired_seeds"] == [101, 102, 103] and v.p_value < 0.05
            cand = [r.metrics["loss"] for r in lab.log.runs_list() if r.candidate_id == v.candidate_id and r.purpose == "confirm"]
            parent = [r.metrics["loss"] for r in lab.log.runs_list()
                      if r.candidate_id == v.parent_id and r.purpose in ("confirm", "baseline")]
            assert compare(cand, parent, direction="minimize", test="welch").p_value > 0.05


def scheduler_stepper(lab):
    """The loop's scheduler driven by hand: ``step(expect)`` asserts the next unit it hands out
    (and claims it, if a run) and returns it."""
    sched = _Scheduler(lab, 0, [("main", "")], None, None, None, None, 1.0, 2, None, [])

    def step(expect):
        unit = sched.next_unit()
        assert unit == expect, unit
        if isinstance(unit, RunUnit):
            sched.claimed.add(unit.claim)
        return unit

    return sched, step


def _done(lab, cand, purpose, seed, loss):
    from autolab.records import Run, new_id

    r = Run(id=new_id("r"), task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name, seed=seed,
            purpose=purpose, meta={"protected_changed": [], "violations": [], "probes": {}})
    lab.log.append(r.with_state(State.COMPLETE, metrics={"loss": loss, "hidden_loss": loss},
                                timings={"train_s": 1.0, "budget_s": 5.0, "allowance_s": 1.0}))


def test_the_scheduler_runs_the_parents_missing_paired_seeds_and_looks_after_each_seed(toy_lab):
    from autolab._loop import AuditUnit
    from autolab.records import Purpose

    lab = toy_lab
    seed = lab.seed_candidate()
    for k, v in enumerate([4.0, 4.2]):                  # the baseline has 2 of the 3 confirmation seeds
        _done(lab, seed, "baseline", 101 + k, v)
    c = lab.add_candidate({"solution.py": "X = 2.0\nSTEP = 2\nUSE_TRICK = False\n"}, seed)
    sched, step = scheduler_stepper(lab)

    def finish(*runs):
        for cand, purpose, s, loss in runs:
            _done(lab, cand, purpose, s, loss)
            sched.claimed.discard((cand.id, purpose, s))

    # screening: the candidate's seed 1, then the parent's seed 1 (it has none), then the audit
    step(RunUnit(c, Purpose.SCREEN, 1))
    step(RunUnit(seed, Purpose.SCREEN, 1))
    assert sched.next_unit() is None                    # both in flight: nothing to audit yet
    finish((c, "screen", 1, 1.1), (seed, "screen", 1, 4.1))
    sched.run_unit(step(AuditUnit(c, "screen")))
    assert latest_verdict(lab, c, "screen").meta["design"] == "paired"
    # confirmation, one paired seed per look
    step(RunUnit(c, Purpose.CONFIRM, 101))
    finish((c, "confirm", 101, 1.0))
    sched.run_unit(step(AuditUnit(c, "confirm")))
    assert latest_verdict(lab, c, "confirm").state is State.PENDING
    step(RunUnit(c, Purpose.CONFIRM, 102))
    finish((c, "confirm", 102, 1.2))
    sched.run_unit(step(AuditUnit(c, "confirm")))
    v = latest_verdict(lab, c, "confirm")
    assert v.state is State.PENDING and v.meta["seeds_run"] == 2 and "undecided after 2 paired seeds" in v.reason
    # the third look needs seed 103 on both sides: the parent's run is scheduled too
    step(RunUnit(c, Purpose.CONFIRM, 103))
    step(RunUnit(seed, Purpose.CONFIRM, 103))
    finish((c, "confirm", 103, 0.9), (seed, "confirm", 103, 3.9))
    sched.run_unit(step(AuditUnit(c, "confirm")))
    v = latest_verdict(lab, c, "confirm")
    assert v.state is State.PROMOTED and v.meta["paired_seeds"] == [101, 102, 103] and v.meta["test"] == "paired_t"
    assert lab.candidate(c.id).state is State.PROMOTED and sched.next_unit() is None
