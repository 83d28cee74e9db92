"""A loop beside the notebook (autolab.start_loop), its steering (stop, pause/resume, cancel one
run), and endings that are not the candidate's (the machine's, the user's): real toy-task runs
through papermill, real signals, a real SQLite log."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import autolab
import autolab.ui as ui
from autolab._run import _judge
from autolab.executors import JobResult
from autolab.executors.local import LocalExecutor
from autolab.ledger import CANCELLED, Ledger, not_a_verdict
from autolab.records import Run, State


def _poll(fn, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout:.0f} s: {what}")


def _child(lab, extra: str):
    seed = lab.seed_candidate()
    return lab.add_candidate({"solution.py": lab.files(seed)["solution.py"] + extra}, seed, thread="main")


# ---------------------------------------------------------------------------- how a run's ending is judged

def test_endings_of_the_machine_and_the_user_are_not_verdicts():
    ok = {"status": "ok", "metrics": {"loss": 1.0}}
    # killed by a signal before the notebook ended: the machine's
    state, err = _judge(JobResult("r", -9, 3.0), {}, None, {}, "loss")
    assert state is State.KILLED and err["reason"].startswith("infrastructure:") and "SIGKILL" in err["reason"]
    # the executor's wall-clock limit: a loaded machine (the harness's own limits end a run before it)
    state, err = _judge(JobResult("r", None, 240.0, timed_out=True, killed_reason="timeout"), {}, None, {}, "loss",
                        {"timeout_s": 240})
    assert state is State.KILLED and err["ename"] == "Timeout" and err["reason"].startswith("infrastructure:")
    assert "240 s" in err["reason"]
    # a harness that saw the machine starve the run (failed or killed status alike)
    for status in ("failed", "killed"):
        state, err = _judge(JobResult("r", 0, 3.0), {"status": status, "reason": "infrastructure: too busy"}, None, {},
                            "loss")
        assert state is State.KILLED and err["reason"] == "infrastructure: too busy"
    # the user's cancel, a lost worker
    state, err = _judge(JobResult("r", None, 3.0, killed_reason=CANCELLED), {}, None, {}, "loss")
    assert state is State.KILLED and err["ename"] == "Cancelled" and err["reason"] == CANCELLED
    # the candidate's own endings stay the candidate's
    assert _judge(JobResult("r", 0, 3.0), {"status": "killed", "reason": "past the budget"}, None, {}, "loss")[0] \
        is State.KILLED
    assert _judge(JobResult("r", 1, 3.0), {}, {"error": {"ename": "ValueError", "evalue": "x"}}, {}, "loss")[0] \
        is State.FAILED
    # a signal is the machine's even after the result was written (the run is re-run, never judged on it)
    assert _judge(JobResult("r", -9, 3.0), ok, None, {"loss": 1.0}, "loss")[1]["reason"].startswith("infrastructure:")
    assert _judge(JobResult("r", 0, 3.0), ok, None, {"loss": 1.0}, "loss")[0] is State.COMPLETE

    def run(state, reason):
        return Run(id="r", task="t", candidate_id="c", preset="p", seed=1, state=state, error={"reason": reason})

    assert not_a_verdict(run(State.KILLED, CANCELLED)) and not_a_verdict(run(State.KILLED, "worker lost"))
    assert not_a_verdict(run(State.KILLED, "infrastructure: x")) and not_a_verdict(run(State.FAILED, "infrastructure: x"))
    assert not not_a_verdict(run(State.KILLED, "past the budget")) and not not_a_verdict(run(State.COMPLETE, ""))


# ---------------------------------------------------------------------------- a loop beside the notebook

def test_background_loop_pauses_resumes_and_cancels_one_run(toy_lab):
    lab = toy_lab
    hang = _child(lab, "HANG = True\n")          # its screening run never ends by itself
    t0 = time.monotonic()
    handle = autolab.start_loop(lab, iterations=0)
    assert time.monotonic() - t0 < 30 and not handle.done()   # returned at once, the loop goes on
    dash = ui.Dashboard(lab, loop=handle, refresh_s=0)       # its buttons act on the handle
    assert "running" in dash.header.value and dash.resume_button.disabled and not dash.pause_button.disabled
    dash.pause_button.click()
    assert handle.state == "paused" and "paused" in dash.header.value and not dash.resume_button.disabled
    # the seed's baseline (started before the pause) ends; nothing new starts while paused
    _poll(lambda: sum(r.state is State.COMPLETE for r in lab.log.runs_list()) == 3, what="the baseline")
    time.sleep(1.5)
    assert [r.purpose for r in lab.log.runs_list()] == ["confirm"] * 3
    assert handle.state == "paused" and not handle.done()          # paused with nothing in flight: still waiting
    dash.resume_button.click()
    assert handle.state == "running"
    _poll(lambda: any(r.candidate_id == hang.id and r.state is State.RUNNING for r in lab.log.runs_list()),
          what="the hanging candidate's screening run")
    with pytest.raises(autolab.AutolabError, match="not in flight"):
        handle.cancel_run("r-nosuchrun")
    run = next(r for r in lab.log.runs_list() if r.candidate_id == hang.id)
    assert run.id in {r.id for r in handle.runs_in_flight()}
    dash.refresh()
    assert run.id in [v for _, v in dash.run_choice.options]
    dash.run_choice.value = run.id
    dash.cancel_button.click()
    assert "cancelled" in dash.message.value
    _poll(lambda: lab.log.get("run", run.id).state is not State.RUNNING, timeout=20, what="the cancel")
    ended = lab.log.get("run", run.id)
    assert ended.state is State.KILLED and ended.error["reason"] == CANCELLED
    summary = handle.wait(120)
    assert handle.state == "finished" and handle.summary is summary
    _poll(lambda: "finished" in dash.header.value, timeout=10, what="the dashboard showing the end")
    assert dash.stop_button.disabled and dash.cancel_button.disabled
    # no verdict on the candidate: undecided, its seed re-run by the next loop, which the summary says
    assert lab.candidate(hang.id).state is State.READY and not lab.log.verdicts_list()
    assert summary.reason == "interrupted" and "next loop" in summary.stopped and hang.id in summary.stopped
    assert Ledger(lab).missing_seeds(hang, "screen", 1) == [1]


def test_stop_ends_the_loop_after_its_runs_in_flight(toy_lab):
    lab = toy_lab
    handle = autolab.start_loop(lab, iterations=6, proposer_seed=0)
    with pytest.raises(autolab.AutolabError, match="another loop"):
        autolab.start_loop(lab, iterations=6)                          # one loop per lab, said in the cell
    _poll(lambda: any(r.state is State.COMPLETE for r in lab.log.runs_list()), what="a first run")
    t_stop = time.time()
    handle.stop()
    assert handle.state in ("stopping", "finished")
    summary = handle.wait(180)
    assert summary.reason == "interrupted" and summary.stopped == "stop requested"
    runs = lab.log.runs_list()
    assert not any(r.state is State.RUNNING for r in runs)
    # no run started after the stop; runs that were still waiting for a slot never started
    # (KILLED "interrupted", re-run by the next loop)
    started = [r for r in runs if r.state is not State.KILLED]
    assert all(_ts(r.started_at) <= t_stop + 1.0 for r in started), [(r.id, r.started_at) for r in started]
    assert all(not_a_verdict(r) for r in runs if r.state is State.KILLED)
    # the STOP file path (the CLI's) is consumed by the loop it stopped
    handle2 = autolab.start_loop(lab, iterations=6, proposer_seed=0)
    lab.request_stop()

    async def awaited():
        return await handle2            # what `await handle` in a notebook cell does

    s2 = asyncio.run(asyncio.wait_for(awaited(), 180))
    assert s2.reason == "interrupted" and s2 is handle2.summary and not (lab.path / "STOP").exists()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# ---------------------------------------------------------------------------- the machine kills a run

class _KillingExecutor(LocalExecutor):
    """The real local executor; the papermill process of every run of ``victim`` gets SIGKILL
    once it has started (as the OOM killer or an operator would)."""

    def __init__(self, victim: str, **kw):
        super().__init__(**kw)
        self.victim, self.killed = victim, 0

    def submit(self, job):
        fut = super().submit(job)
        if f"/{self.victim}" in job.params.get("candidate_dir", ""):
            threading.Thread(target=self._kill_when_started, args=(job.run_id,), daemon=True).start()
        return fut

    def _kill_when_started(self, run_id: str) -> None:
        for _ in range(600):
            with self._lock:
                proc = self._jobs.get(run_id)
                if run_id not in self._jobs:
                    return
            if proc is not None:
                time.sleep(0.3)
                os.killpg(proc.pid, signal.SIGKILL)
                self.killed += 1
                return
            time.sleep(0.1)


def test_runs_killed_by_the_machine_are_retried_then_left_for_the_next_loop(toy_lab):
    lab = toy_lab
    good = _child(lab, "UNUSED = 0\n")           # no better than its parent: the screening audit decides at once
    ex = _KillingExecutor(good.id, cpu_slots=2)
    s = autolab.loop(lab, iterations=0, executor=ex, infra_retries=1, progress=False)
    ex.shutdown()
    mine = [r for r in lab.log.runs_list() if r.candidate_id == good.id]
    # one run and one retry, both ended by the signal: recorded as the machine's, not the candidate's
    assert ex.killed == 2 and len(mine) == 2
    assert all(r.state is State.KILLED and r.error["reason"].startswith("infrastructure:") for r in mine)
    assert lab.candidate(good.id).state is State.READY and not lab.log.verdicts_list()
    assert s.reason == "interrupted" and "ended by the machine 2 times" in s.stopped
    # the next loop, on a calm machine, re-runs it instead of doing nothing, and the audit decides on
    # the candidate's own result (the killed runs are held against nothing: no budget failure)
    s2 = autolab.loop(lab, iterations=0, progress=False)
    assert s2.runs == s.runs + 1
    v = [v for v in lab.log.verdicts_list() if v.candidate_id == good.id]
    assert len(v) == 1 and v[0].meta["stage"] == "screen" and "screening" in v[0].reason
    assert all(c["passed"] for c in v[0].checks if c["name"] == "budget")
