"""Every run records the hardware it was given, and the ledger compares runs within one hardware:
a lab moved from one machine type to another re-runs the parent there and pairs only runs of the
new hardware; an explicit, append-only assumption makes runs logged before hardware was recorded
count as a named hardware. ``$AUTOLAB_HARDWARE`` (a cluster's node class) stands in for the
machine here: it is the documented override of the probe, which a run records like a probed name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import autolab
from autolab.gpu_share import HARDWARE_ENV
from autolab.ledger import SELECTION_BY_RUN, UNRECORDED, Ledger
from autolab.records import State

from test_ledger import add_cand, add_run
from test_search import scheduler_stepper

A, B = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def _on(monkeypatch, lab, hardware: str) -> None:
    """This process runs on ``hardware`` from now on, and compares the lab's runs there (as a loop does)."""
    monkeypatch.setenv(HARDWARE_ENV, hardware)
    assert lab.compare_here() == hardware


def test_the_probe_names_the_cpu_or_gpus_and_the_variable_overrides_it(monkeypatch):
    from autolab.gpu_share import _visible, cpu_model, describe_gpus, hardware

    monkeypatch.delenv(HARDWARE_ENV, raising=False)
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    assert hardware("cpu") == cpu_model() == (names[0] if names else cpu_model()) and cpu_model()
    assert describe_gpus([A]) == A and describe_gpus([A, A]) == f"2 x {A}" and describe_gpus([A, B]) == f"{A} + {B}"
    assert _visible("1,0", 2) == [1, 0] and _visible("GPU-5d1c", 2) is None   # a UUID: the machine's first GPUs
    monkeypatch.setenv(HARDWARE_ENV, "gpu-node-class-7")
    assert hardware("cuda", 2) == hardware("cpu") == "gpu-node-class-7"


def test_a_run_records_the_hardware_it_ran_on_and_the_views_show_it(toy_lab, monkeypatch, capsys):
    from autolab.cli import main

    monkeypatch.delenv(HARDWARE_ENV, raising=False)
    lab = toy_lab
    (run,) = autolab.run(lab, seeds=1)
    here = lab.machine_hardware()
    assert run.state is State.COMPLETE and run.hardware == here and here
    assert [r.hardware for r in lab.log.history("run", run.id)] == [here, here]   # RUNNING already said where
    assert lab.log.runs()["tags.hardware"].tolist() == [here]
    add_run(lab, lab.seed_candidate(), 4.0, purpose="screen", seed=2, hardware=None)   # one logged before recording
    assert main(["log", "--lab", str(lab.path)]) == 0
    out = capsys.readouterr().out
    assert "hardware" in out and here[:20] in out and UNRECORDED in out
    assert main(["log", "--lab", str(lab.path), "--json"]) == 0
    hw = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]["hardware"]
    assert hw["runs"] == {here: 1, UNRECORDED: 1} and hw["compared_on"] in (here, UNRECORDED)


def test_a_lab_moved_to_other_hardware_reruns_the_parent_there_and_pairs_only_runs_of_it(toy_lab, monkeypatch):
    from autolab._loop import AuditUnit, RunUnit
    from autolab.ledger import latest_verdict
    from autolab.records import Purpose

    lab = toy_lab
    seed = lab.seed_candidate()
    for k, v in enumerate([4.0, 4.1, 3.9]):                       # the first part of the campaign, on A
        add_run(lab, seed, v, purpose="baseline", seed=101 + k, hardware=A)
    add_run(lab, seed, 4.0, purpose="screen", seed=1, hardware=A)
    c = add_cand(lab, seed, 2.0)
    _on(monkeypatch, lab, B)                                       # resumed on B
    ledger = Ledger(lab)
    assert ledger.missing_seeds(seed, "screen", 1) == [1] and ledger.mean(seed) is None and ledger.noise_sd() is None
    assert Ledger(lab, hardware=A).missing_seeds(seed, "screen", 1) == []
    note = ledger.hardware_note()
    assert f"4 on {A}" in note and "re-run here" in note and "--assume" not in note   # every run recorded: no fix to offer
    sched, step = scheduler_stepper(lab)

    def finish(cand, purpose, s, loss):
        add_run(lab, cand, loss, purpose=purpose, seed=s)          # made here: recorded as B
        sched.claimed.discard((cand.id, purpose, s))

    step(RunUnit(c, Purpose.SCREEN, 1))
    step(RunUnit(seed, Purpose.SCREEN, 1))                         # the parent's seed-1 run on A is not reused
    finish(c, "screen", 1, 3.0)
    finish(seed, "screen", 1, 3.5)
    sched.run_unit(step(AuditUnit(c, "screen")))
    v = latest_verdict(lab, c, "screen")
    assert v.meta["design"] == "paired" and v.parent_mean == 3.5 and v.candidate_mean == 3.0   # B with B
    assert Ledger(lab).pairs(c, seed, SELECTION_BY_RUN) == [(1, 3.0, 3.5)]
    assert Ledger(lab.log).pairs(c, seed, SELECTION_BY_RUN) == [(1, 3.0, 3.5)]   # a view pairs within hardware too
    step(RunUnit(c, Purpose.CONFIRM, 101))
    step(RunUnit(seed, Purpose.CONFIRM, 101))                      # the parent's baseline on A does not pair either


def test_the_best_stays_a_decision_and_compares_on_a_hardware_both_ran_on(toy_lab, monkeypatch):
    lab = toy_lab
    seed = lab.seed_candidate()
    p = add_cand(lab, seed, 2.0, state=State.PROMOTED)
    for k, (s_v, p_v) in enumerate([(4.0, 3.0), (4.1, 3.1), (3.9, 2.9)]):
        add_run(lab, seed, s_v, purpose="baseline", seed=101 + k, hardware=A)
        add_run(lab, p, p_v, purpose="confirm", seed=101 + k, hardware=A)
    for k in range(3):                                             # the seed re-measured on the faster B
        add_run(lab, seed, 1.5, purpose="baseline", seed=101 + k, hardware=B)
    assert Ledger(lab).mean(seed) < Ledger(lab).mean(p)            # pooled over hardware, the seed would "win"
    assert Ledger(lab).best().id == p.id                            # compared on A, where both ran
    _on(monkeypatch, lab, B)
    ledger = Ledger(lab)
    assert ledger.best().id == p.id and ledger.mean(p) is None and ledger.mean(seed) == 1.5
    assert ledger.missing_seeds(p, "confirm", 3) == [101, 102, 103]


def test_an_assumption_counts_unrecorded_runs_as_that_hardware_and_the_loop_says_how(toy_lab, monkeypatch, capsys):
    from autolab.cli import main

    lab = toy_lab
    seed = lab.seed_candidate()
    old = [add_run(lab, seed, v, purpose="baseline", seed=101 + k, hardware=None) for k, v in enumerate([4.0, 4.1, 3.9])]
    monkeypatch.setenv(HARDWARE_ENV, A)
    notes: list[str] = []
    s = autolab.loop(lab, iterations=0, progress=False, max_time_s=0.001, on_event=lambda e: notes.append(
        e["message"]) if e.get("type") == "note" else None)
    assert s.reason == "time_limit" and s.runs == 3                # nothing started: the note is what counts here
    said = [m for m in notes if "no hardware recorded" in m]
    assert len(said) == 1 and [e["message"] for e in lab.log.events("loop")].count(said[0]) == 1
    fix = said[0].split("say so once: ", 1)[1].split(" (recorded", 1)[0]
    assert fix == f"autolab hardware --lab {lab.path} --assume '{A}'"
    assert lab.hardware == A and Ledger(lab).missing_seeds(seed, "baseline", 3) == [101, 102, 103]

    assert main(["hardware", "--lab", str(lab.path), "--assume", A, "--reason", "campaign README", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(out["assumed"]["runs"]) == sorted(r.id for r in old) and out["runs"] == {A: 3}
    ledger = Ledger(lab, hardware=A)
    assert ledger.missing_seeds(seed, "baseline", 3) == [] and ledger.mean(seed) == pytest.approx(4.0)
    assert ledger.hardware_note() is None
    assert all(r.hardware is None for r in lab.log.runs_list())    # append-only: no run record rewritten
    assert Ledger(lab, hardware=B).missing_seeds(seed, "baseline", 3) == [101, 102, 103]


def test_import_lab_records_the_hardware_the_old_runs_ran_on(toy_lab, tmp_path, capsys):
    from autolab.cli import main

    lab = toy_lab
    seed = lab.seed_candidate()
    add_run(lab, seed, 4.0, purpose="baseline", seed=101, hardware=None)
    add_run(lab, seed, 4.1, purpose="baseline", seed=102, hardware=B)
    archive = tmp_path / "lab.tar.gz"
    assert main(["export-lab", "--lab", str(lab.path), "-o", str(archive)]) == 0
    new = tmp_path / "moved"
    assert main(["import-lab", str(archive), "--lab", str(new), "--hardware", A]) == 0
    assert f"1 runs without a hardware record counted as '{A}'" in capsys.readouterr().out
    moved = autolab.Lab(new)
    (a,) = Ledger(moved).assumptions()
    assert a["hardware"] == A and "import-lab" in a["reason"]
    assert Ledger(moved).hardware_counts() == {A: 1, B: 1}
    assert Ledger(moved, hardware=A).values(seed) == [4.0]


def test_the_time_box_takes_run_durations_from_this_hardware(toy_lab, monkeypatch):
    from autolab._loop import run_durations

    lab = toy_lab
    seed = lab.seed_candidate()
    for k, (wall, hw) in enumerate([(100.0, A), (100.0, A), (40.0, B)]):
        r = add_run(lab, seed, 4.0, purpose="baseline", seed=101 + k, hardware=hw)
        lab.log.append(r.with_state(State.COMPLETE, timings={"papermill_s": wall}))
    assert run_durations(lab, "confirm")[1] == 100.0               # no comparison hardware: every run
    _on(monkeypatch, lab, B)
    assert run_durations(lab, "confirm")[:2] == (40.0, 40.0)
