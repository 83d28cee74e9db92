"""The loop's time box on a real log (the toy task's lab, records appended to its SQLite log, no
papermill run): a run's duration is judged from the best information the lab holds (the
candidate's own runs first), the wait behind the runs in flight on a GPU lane counts what is
left of each, and a resumed loop judges what its log's runs allow before it starts any run.

The numbers are those of an H100 loop (nanochat h100-90s, 2026-12-07, two run slots taking turns
on one GPU) that started a confirmation run of c-a1758eefb98e with 222 s left, judged at 99 s
(one earlier confirm run of another candidate) after "one wave" of 99 s: the candidate's own
screening run had held the GPU 145 s, and the run ahead, 99 s into its life, had waited all that
time for the GPU and still had 130 s to go. The run was killed at the deadline."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from autolab._loop import TimeLimit, _Scheduler, lane_wait_s, run_durations
from autolab.ledger import latest_verdict
from autolab.records import Run, State, new_id
from test_ledger import _seed_measured_and_a_child, add_cand, add_run


def _stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")


def _timed_run(lab, cand_id: str, purpose: str, wall: float, gpu_wait: float = 0.0, *, seed: int = 101,
               ended_ago: float = 3600.0) -> Run:
    """A COMPLETE run that held its wall time ``wall``, ``gpu_wait`` of it waiting for the GPU."""
    r = Run(id=new_id("r"), task=lab.task.name, candidate_id=cand_id, preset=lab.preset_name, seed=seed,
            purpose=purpose, started_at=_stamp(ended_ago + wall))
    lab.log.append(r)
    return lab.log.append(r.with_state(State.COMPLETE, ended_at=_stamp(ended_ago), metrics={"loss": 3.0},
                                       timings={"papermill_s": wall, "gpu_wait_s": gpu_wait}))


def _scheduler(lab, left_s: float, *, slots: int = 2, lanes: int = 1) -> _Scheduler:
    sched = _Scheduler(lab, 0, [("main", "")], None, None, None, None, 1.0, 2, None, [])
    sched.n_slots, sched.n_lanes = slots, lanes
    sched.limit = TimeLimit(time.monotonic() + left_s)
    return sched


def test_a_candidates_own_runs_judge_its_next_run_over_the_purposes_p90(toy_lab):
    lab = toy_lab
    seed = lab.seed_candidate()
    for s, wall in ((101, 114.0), (102, 113.0), (103, 115.0)):
        _timed_run(lab, seed.id, "baseline", wall, seed=s)
    # only the seed has run: a candidate's run has nothing comparable (it compiles cold), so it is
    # judged at least at the preset's expected_run_s, not at the seed's warm 115 s
    lab.preset.settings["expected_run_s"] = 170
    try:
        est, _, how = run_durations(lab, "screen", of_seed=False, candidate_id="c-new")
        assert est == 170.0 and "expected_run_s" in how and "115" not in how, how
    finally:
        lab.preset.settings.pop("expected_run_s")
    a, b = add_cand(lab, seed, 2.0), add_cand(lab, seed, 3.0)
    _timed_run(lab, a.id, "screen", 234.3, 89.2, seed=1)          # changes the batch shape: recompiles, 145 s on the GPU
    _timed_run(lab, b.id, "confirm", 99.2)                          # the only candidate's confirm run
    est, typical, how = run_durations(lab, "confirm", of_seed=False, candidate_id=a.id)
    assert round(est, 1) == round(typical, 1) == 145.1 and a.id in how and "itself" in how, how
    est, _, how = run_durations(lab, "confirm", of_seed=False, candidate_id="c-unrun")
    assert est == 99.2 and "confirm runs (candidates')" in how    # no run of its own: the purpose's p90

    # the gate: with 120 s left and nothing in flight, b's confirm run (99 s) starts, a's (145 s) does not
    sched = _scheduler(lab, 120)
    assert sched.fits("confirm", of_seed=False, candidate_id=b.id) and not sched.stopped
    assert not sched.fits("confirm", of_seed=False, candidate_id=a.id)
    assert sched.reason == "time_limit" and "about 145 s" in sched.stopped and f"of {a.id} itself" in sched.stopped


def test_the_wait_on_one_gpu_lane_counts_what_is_left_of_each_run_in_flight(toy_lab):
    # the pure queue: one lane, a run 99 s into its life that got the GPU only 0.2 s ago (the run
    # before it just ended) holds it 130 s more; had it held the GPU since its start, 31 s more
    assert round(lane_wait_s([(-99.3, 129.8)], [-0.2, -300.0], 1), 1) == 129.6
    assert round(lane_wait_s([(-99.3, 129.8)], [-300.0], 1), 1) == 30.5
    assert lane_wait_s([(-10.0, 100.0), (-5.0, 100.0)], [], 1) == 190.0         # the second waits for the first
    assert lane_wait_s([(-10.0, 100.0), (-5.0, 100.0)], [], 2) == 90.0          # two lanes: the first to end frees one
    assert lane_wait_s([(-500.0, 100.0)], [], 1) == 0.0                         # overdue: it ends any moment
    assert lane_wait_s([], [-1.0], 1) == 0.0

    lab = toy_lab
    seed = lab.seed_candidate()
    for s in (101, 102, 103):
        _timed_run(lab, seed.id, "baseline", 114.0, seed=s)
    a, x, y = add_cand(lab, seed, 2.0), add_cand(lab, seed, 3.0), add_cand(lab, seed, 4.0)
    _timed_run(lab, a.id, "screen", 234.3, 89.2, seed=1)                     # a's own run: 145 s on the GPU
    _timed_run(lab, x.id, "screen", 207.1, 77.3, seed=1)                     # x's own run: 130 s on the GPU
    going = Run(id=new_id("r"), task=lab.task.name, candidate_id=x.id, preset=lab.preset_name, seed=101,
                purpose="confirm", started_at=_stamp(99.3))                  # x's confirm run, 99 s in
    lab.log.append(going)
    # y's confirm run started beside it and ended just now: the GPU was y's until then
    just_ended = _timed_run(lab, y.id, "confirm", 99.2, seed=101, ended_ago=0.2)

    sched = _scheduler(lab, 222)
    sched.inflight_runs = {going.id: (going, None)}
    wait, what = sched.queue_ahead()
    # (about 130 s: the time since the GPU was released, not since its start, counts; a slow machine only shortens it)
    assert 100 < wait <= 130 and going.id in what and "s since its start" in what and "about 130 s" in what, what
    assert not sched.fits("confirm", of_seed=False, candidate_id=a.id)       # 130 + 145 s > 222 s
    assert not sched.stopped and sched.reason == ""                          # it waits for the run in flight
    notes = [e["message"] for e in lab.log.events("loop")]
    assert len(notes) == 1 and "waits for the runs in flight" in notes[0] and going.id in notes[0], notes
    assert not sched.fits("confirm", of_seed=False, candidate_id=a.id)       # the same refusal is noted once
    assert len(lab.log.events("loop")) == 1
    # had the run in flight held the GPU since its start (nothing ended after it began), 31 s would be left of it
    lab.log.append(just_ended.with_state(State.COMPLETE, ended_at=_stamp(400.0)))
    assert sched.fits("confirm", of_seed=False, candidate_id=a.id)           # 31 + 145 s <= 222 s


def test_a_resumed_loop_judges_a_reopened_candidate_before_it_starts_any_run(tmp_path, toy_task, monkeypatch):
    """The H100 loop's first run was the warm-start run of the seed (a machine without its compile
    cache); three candidates reopened with their runs kept were judged only once it ended, 144 s
    later, with the second slot idle. Here the time limit refuses that run (the seed's runs take
    100 s, 30 s are left): a loop that judged only after its first run would end with the reopened
    candidate still undecided."""
    import autolab

    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))   # no compile cache of the seed here
    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text().replace("[presets.quick]\n", "[presets.quick]\nwarm_start = true\n"))
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed, c = _seed_measured_and_a_child(lab)
    for r in lab.log.runs_list():                   # the seed's runs held their slot 100 s each
        lab.log.append(r.with_state(r.state, timings={"papermill_s": 100.0}))
    add_run(lab, c, 3.0, purpose="screen", seed=1)
    autolab.audit(lab, c, stage="screen", screen_margin=5.0)    # an audit that erred
    c, _ = lab.reopen(c, "the screening margin was wrong", keep_runs=True)
    n_runs = len(lab.log.runs_list())

    summary = autolab.loop(lab, iterations=1, progress=False, max_time_s=30)
    assert summary.reason == "time_limit" and "so it was not started" in summary.stopped, summary.stopped
    assert len(lab.log.runs_list()) == n_runs                    # no run was launched
    v = latest_verdict(lab, c, "screen")
    assert v is not None and v.state is State.PENDING, v         # judged from the run it had (3.0 beats 4.0)
    notes = [e["message"] for e in lab.log.events("loop")]
    assert any(m.startswith(f"{c.id}: PENDING (screening") for m in notes), notes


def test_the_demo_keeps_the_final_comparisons_expected_time_free(toy_lab):
    """`autolab demo --max-time`: the search's time limit keeps the final comparison's expected
    time free (``TimeLimit.reserve``), judged from the lab's measured runs as they come."""
    from autolab._loop import final_comparison_s
    from autolab.cli import _demo_box, demo_search_s
    from autolab.ledger import seed_range

    lab = toy_lab
    seed = lab.seed_candidate()
    assert final_comparison_s(lab, 2) == (0.0, "no completed run on quick yet to judge the final comparison from")
    for s, wall in ((101, 100.0), (102, 110.0), (103, 120.0)):
        _timed_run(lab, seed.id, "confirm", wall, seed=s)
    # 3 final runs of the seed and 3 of a candidate, all judged from the seed's runs (median 110 s,
    # p90 120 s), 2 at a time: 3 waves of 110 s, and the last run's p90
    total, how = final_comparison_s(lab, 2)
    assert total == 3 * 110 + 10 and "3 of the seed" in how and "3 of a candidate" in how, how
    assert final_comparison_s(lab, 1)[0] == 6 * 110 + 10
    # one of the seed's final runs made early (the demo's baseline fills its idle slot with it):
    # final runs (the same purpose) now judge both sides' (130 s), and 5 runs are left: 3 waves
    _timed_run(lab, seed.id, "final", 130.0, seed=seed_range("final"))
    total, how = final_comparison_s(lab, 2)
    assert total == 3 * 130 and "2 of the seed" in how and "3 of a candidate" in how, how

    # the scheduler's one gate: a candidate's screening run (p90 130 s of the lab's runs) with 450 s
    # to the limit fits; less the 390 s kept for the final comparison it does not, and the loop
    # stops, saying why
    sched = _scheduler(lab, 450.0)
    assert sched.fits("screen", of_seed=False)
    sched.limit = TimeLimit(time.monotonic() + 450.0, label="max time 450 s, less the time kept for what follows "
                            "the loop", reserve=lambda: final_comparison_s(lab, 2)[0])
    assert 0 < sched.limit.left() <= 60
    assert not sched.fits("screen", of_seed=False)
    assert sched.reason == "time_limit" and "max time 450 s, less the time kept" in sched.stopped, sched.stopped
    assert TimeLimit.make(600.0, reserve=lambda: 0.0).label.endswith("less the time kept for what follows the loop")

    # the search gets what the baseline left of the box; `--max-time off`: no box
    assert demo_search_s(720.0, 150.0) == 570.0 and demo_search_s(720.0, 800.0) == 0.0
    assert demo_search_s(None, 150.0) is None
    assert _demo_box("12m") == 720.0 and _demo_box("off") is None


def test_under_a_time_box_a_confirmation_takes_its_seeds_at_once_and_the_most_promising_goes_first(toy_lab):
    """The demo's winner (BATCH_SIZE x0.5, screened 2.97 against 3.17) stood undecided at the end
    of the search: one confirmation seed per look, a run's length each, did not fit the time left,
    while both slots could have run its seeds at once. Under a time box with no room for one look
    per seed, the seeds still needed are taken at once (the same test, seen less often); the
    candidate with the larger screening gain is confirmed first."""
    from autolab.records import Verdict

    lab = toy_lab
    seed = lab.seed_candidate()
    small, big = add_cand(lab, seed, 2.0), add_cand(lab, seed, 3.0)
    for c, gain in ((small, 0.09), (big, 0.20)):
        _timed_run(lab, c.id, "screen", 68.0, seed=1)
        lab.log.append(Verdict(id=new_id("v"), task=lab.task.name, candidate_id=c.id, parent_id=seed.id,
                               state=State.PENDING, effect=gain, preset=lab.preset_name, meta={"stage": "screen"},
                               reason="screening: beats the parent; confirm on more seeds"))
    sched = _scheduler(lab, 10_000, slots=2, lanes=0)    # two CPU slots: two runs side by side
    cap = sched._cap()
    assert cap >= 2
    assert [c.id for c in sched._confirm_targets()] == [big.id, small.id]
    assert sched._confirm_want(big) == 1                 # time for a look per seed: the sequential rule as ever
    sched.limit = TimeLimit(time.monotonic() + 68.0 + 30)
    assert sched._confirm_want(big) == 2                 # one look left: the two seeds that run side by side
    sched.n_lanes = 1                                    # runs that take turns on one GPU: at once gains nothing
    assert sched._confirm_want(big) == 1
