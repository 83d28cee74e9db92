import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import autolab
from autolab.records import State
from autolab.ledger import best_candidate, noise_sd

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
    s = autolab.loop(toy_lab, iterations=3, proposer_seed=0, progress=False)   # a new loop clears a stale STOP
    assert s.experiments == 3


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
