"""The ledger's answers on a real lab (the toy task, records appended to a real log), the
agreement of every view on "best", the Purpose enum, and the lab's pinned seed."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import warnings

import pytest

import autolab
from autolab.ledger import (FINAL_RANGE, MAX_ATTEMPTS, SEED_BASE, SELECTION_FREE, Ledger, current_owner, owner_alive,
                            seed_range)
from autolab.records import Idea, Purpose, Run, State, Verdict, new_id, now


# ---------------------------------------------------------------------------- helpers

def add_run(lab, cand, value, *, purpose="confirm", seed=101, state=State.COMPLETE, metrics=None, reason=None,
            owner=None, hardware="here"):
    """A run appended by hand, as if made on this machine (``hardware="here"``: what the runner
    records here; None: unrecorded, a run logged before runs recorded their hardware)."""
    r = Run(id=new_id("r"), task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name, seed=seed,
            purpose=purpose, meta={"owner": owner or current_owner()},
            hardware=lab.machine_hardware() if hardware == "here" else hardware)
    lab.log.append(r)
    if state is State.RUNNING:
        return r
    if state is State.COMPLETE:
        final = r.with_state(State.COMPLETE, ended_at=now(), metrics={"loss": value, **(metrics or {})})
    else:
        final = r.with_state(state, ended_at=now(), metrics=dict(metrics or {}),
                             error={"ename": "X", "evalue": reason or "", "reason": reason or "", "cell": None})
    return lab.log.append(final)


def add_cand(lab, parent, x, *, thread="main", title=None, state=State.READY, **meta):
    idea = lab.log.append(Idea(id=new_id("i"), task=lab.task.name, title=title or f"X = {x}", source="human",
                               thread=thread, parent_id=parent.id, state=State.READY))
    text = lab.files(lab.seed_candidate())["solution.py"].replace("X = 1.0", f"X = {x}")
    c = lab.add_candidate({"solution.py": text}, parent, idea_id=idea.id, thread=thread, meta=meta)
    if state is not State.READY:
        c = lab.set_state(c, state)
    return c


def confirm(lab, c, values, purpose="confirm"):
    return [add_run(lab, c, v, purpose=purpose, seed=101 + k) for k, v in enumerate(values)]


def dead_owner() -> dict:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return {**current_owner(), "pid": int(p.stdout), "start": "0"}


# ---------------------------------------------------------------------------- Purpose

def test_purpose_is_the_stored_string_and_baseline_counts_as_confirm():
    assert Purpose.BASELINE.canonical is Purpose.CONFIRM and Purpose.SCREEN.canonical is Purpose.SCREEN
    assert Purpose.CONFIRM == "confirm" and "confirm" in {Purpose.CONFIRM} and Purpose.FINAL in {"final"}
    assert json.dumps({"p": Purpose.BASELINE}) == '{"p": "baseline"}'
    assert SELECTION_FREE == ("confirm", "baseline")
    assert SEED_BASE == {"screen": 1, "manual": 1, "redteam": 1, "confirm": 101, "baseline": 101, "final": 1001,
                         "ablation": 1001}
    assert Purpose.ABLATION.canonical is Purpose.FINAL and FINAL_RANGE == ("final", "ablation")
    assert seed_range("baseline") == seed_range(Purpose.CONFIRM) == 101
    with pytest.raises(ValueError, match="unknown run purpose 'scren'; use one of: screen, confirm"):
        Purpose.parse("scren")


# ---------------------------------------------------------------------------- answers on a real lab

def test_runs_means_noise_and_seeds(toy_lab):
    lab, led = toy_lab, toy_lab.ledger
    seed = lab.seed_candidate()
    a = add_cand(lab, seed, 2.0)
    add_run(lab, a, 0.5, purpose="screen", seed=1)
    confirm(lab, a, [1.0, 1.2])
    add_run(lab, a, 0.0, purpose="confirm", seed=103, state=State.FAILED, metrics={"params": 123.0}, reason="boom")
    add_run(lab, a, 0.0, purpose="confirm", seed=104, state=State.KILLED, metrics={"params": 9.0}, reason="interrupted")
    confirm(lab, seed, [4.0, 4.2], purpose="baseline")

    assert [r.purpose for r in led.runs_of(a)] == ["screen", "confirm", "confirm"]       # COMPLETE only
    assert len(led.runs_of(a, states=None)) == 5
    assert led.values(a) == [1.0, 1.2] and led.mean(a) == pytest.approx(1.1)           # selection-free only
    assert led.mean(a, ("screen",)) == 0.5 and led.mean(seed) == pytest.approx(4.1)   # baseline = confirm
    assert led.noise_sd() == pytest.approx(0.02 ** 0.5)           # pooled over A and the seed (variance 0.02 each)
    # seed policy: 101, 102 complete, 103 failed (terminal), 104 interrupted once (re-queued)
    assert led.missing_seeds(a, "confirm", 4) == [104]
    assert led.missing_seeds(a, "baseline", 4) == [104]          # the same seeds as confirm
    assert led.missing_seeds(a, "screen", 2) == [2]
    assert led.fresh_seeds(a, "confirm", 2) == [105, 106]
    for _ in range(MAX_ATTEMPTS - 1):                               # interrupted MAX_ATTEMPTS times: replaced
        add_run(lab, a, 0.0, purpose="confirm", seed=104, state=State.KILLED, reason="worker lost")
    assert led.missing_seeds(a, "confirm", 4) == [105]
    # the old import paths answer the same
    from autolab._run import missing_seeds, runs_of

    assert missing_seeds(lab, a, "confirm", 4) == [105] and len(runs_of(lab, a)) == 3


def test_the_screening_unit_is_never_the_cross_seed_spread(toy_lab):
    """A paired screen's margin comes from paired or same-seed noise; with only the cross-seed
    spread known there is no margin (every paired gain is confirmed, and the confirmations
    measure the paired noise)."""
    lab, led = toy_lab, toy_lab.ledger
    seed = lab.seed_candidate()
    confirm(lab, seed, [4.0, 4.4, 3.8], purpose="baseline")
    n = led.noise()
    assert n["cross_seed_sd"] > 0.2 and n["screen_sd"] is None and n["screen_source"] is None
    add_run(lab, seed, 4.02, purpose="baseline", seed=101)            # the same random seed again
    n = led.noise()
    assert n["screen_source"] == "repeat" and n["screen_sd"] == pytest.approx(2 ** 0.5 * led.repeat_sd())
    assert n["screen_sd"] < n["cross_seed_sd"]


def test_pairs_and_the_three_noise_figures(toy_lab):
    lab, led = toy_lab, toy_lab.ledger
    seed = lab.seed_candidate()
    assert led.noise() == {"cross_seed_sd": None, "paired_sd": None, "repeat_sd": None, "diff_sd": None,
                           "diff_source": None, "screen_sd": None, "screen_source": None}
    confirm(lab, seed, [4.0, 4.4, 3.8], purpose="baseline")
    a = add_cand(lab, seed, 2.0)
    confirm(lab, a, [3.0, 3.5])                                     # paired on 101, 102; not on 103
    add_run(lab, a, 9.0, purpose="screen", seed=1)                  # the parent has no seed-1 run: no screening pair
    assert led.pairs(a, seed) == [(101, 3.0, 4.0), (102, 3.5, 4.4)]
    assert led.pairs(a, seed, ("screen", "manual")) == []
    # the paired noise: the spread of the per-seed differences -1.0 and -0.9
    assert led.paired_sd() == pytest.approx(statistics.stdev([-1.0, -0.9]))
    n = led.noise()
    assert n["cross_seed_sd"] == pytest.approx(led.noise_sd()) and n["diff_source"] == n["screen_source"] == "paired"
    assert n["diff_sd"] == n["screen_sd"] == pytest.approx(0.1 / 2 ** 0.5)
    assert n["repeat_sd"] is None
    # the parent's run on the screening seed pairs with it; a second candidate pools with the first
    add_run(lab, seed, 4.2, purpose="screen", seed=1)
    assert led.pairs(a, seed, ("screen", "manual")) == [(1, 9.0, 4.2)]
    b = add_cand(lab, seed, 2.5)
    confirm(lab, b, [1.0, 1.6, 0.6])
    da = [3.0 - 4.0, 3.5 - 4.4, 9.0 - 4.2]
    db = [1.0 - 4.0, 1.6 - 4.4, 0.6 - 3.8]
    pooled = ((len(da) - 1) * statistics.variance(da) + (len(db) - 1) * statistics.variance(db)) / (len(da) + len(db) - 2)
    assert led.paired_sd() == pytest.approx(pooled ** 0.5)
    # repeats of one seed give the same-seed spread; a repeated seed pairs by its mean
    add_run(lab, seed, 4.1, purpose="confirm", seed=101)
    assert led.repeat_sd() == pytest.approx(statistics.stdev([4.0, 4.1]))
    assert led.pairs(a, seed)[0] == (101, 3.0, pytest.approx(4.05))
    # seeds_run: finished seeds of a purpose (a failed one counts, an interrupted one does not)
    add_run(lab, a, 0.0, purpose="confirm", seed=103, state=State.FAILED, reason="boom")
    add_run(lab, a, 0.0, purpose="confirm", seed=104, state=State.KILLED, reason="interrupted")
    assert led.seeds_run(a, "confirm") == 3 and led.seeds_run(a, "screen") == 1


def test_ownership_and_reaping(toy_lab):
    lab, led = toy_lab, toy_lab.ledger
    seed = lab.seed_candidate()
    mine = add_run(lab, seed, None, state=State.RUNNING)
    gone = add_run(lab, seed, None, seed=102, state=State.RUNNING, owner=dead_owner())
    assert led.owner(mine) == current_owner() and led.owner(mine.id) == current_owner()
    assert owner_alive(led.owner(mine)) and not owner_alive(led.owner(gone)) and not owner_alive(None)
    assert owner_alive({"host": "another-host", "pid": 1})           # unknown hosts count as alive
    assert [r.id for r in led.interrupted()] == [gone.id]
    reaped = led.reap_interrupted()
    assert [r.id for r in reaped] == [gone.id] and reaped[0].error["reason"] == "interrupted"
    assert lab.log.get("run", gone.id).state is State.KILLED and lab.log.get("run", mine.id).state is State.RUNNING
    assert led.missing_seeds(seed, "confirm", 2) == [102]           # the reaped seed is re-queued
    assert lab.log.events("reaped")[-1]["runs"] == [gone.id]


# ---------------------------------------------------------------------------- "best": one rule, every view

def _contested_lab(lab):
    """Seed 4.0; t0: A promoted (selection-free 1.0) and R rejected with the lowest screening
    number; t1: B promoted (2.0) and C promoted whose lucky screening run gives it a better raw
    mean than A's but a worse selection-free mean (1.2); a REJECTED merge M of A and C with the
    best raw mean and the best selection-free mean of all."""
    seed = lab.seed_candidate()
    confirm(lab, seed, [4.0, 4.02, 3.98], purpose="baseline")
    a = add_cand(lab, seed, 2.0, thread="t0", title="A", state=State.PROMOTED)
    add_run(lab, a, 0.9, purpose="screen", seed=1)
    confirm(lab, a, [1.0, 1.02, 0.98])
    r = add_cand(lab, seed, 2.5, thread="t0", title="R hack", state=State.REJECTED)
    add_run(lab, r, 0.2, purpose="screen", seed=1)
    b = add_cand(lab, seed, 3.5, thread="t1", title="B", state=State.PROMOTED)
    confirm(lab, b, [2.0, 2.02, 1.98])
    c = add_cand(lab, b, 2.2, thread="t1", title="C", state=State.PROMOTED)
    add_run(lab, c, -0.6, purpose="screen", seed=1)
    confirm(lab, c, [1.2, 1.22, 1.18])
    m = lab.add_candidate({"solution.py": lab.files(seed)["solution.py"].replace("X = 1.0", "X = 2.9")}, a,
                          thread="merge", meta={"merge_of": [a.id, c.id]})
    add_run(lab, m, 0.02, purpose="screen", seed=1)
    confirm(lab, m, [0.05, 0.06, 0.04])
    for stage, state in (("screen", State.PENDING), ("confirm", State.REJECTED)):
        lab.log.append(Verdict(id=new_id("v"), task=lab.task.name, candidate_id=m.id, parent_id=a.id,
                               preset=lab.preset_name, state=state, reason=f"{stage}: see checks",
                               meta={"stage": stage}))
    m = lab.set_state(m, State.REJECTED)
    add_run(lab, r, 0.0, purpose="screen", seed=2, state=State.KILLED, metrics={"params": 0.001}, reason="budget")
    return {"seed": seed, "A": a, "R": r, "B": b, "C": c, "M": m}


def test_every_view_agrees_on_best_and_never_shows_a_rejected_one(toy_lab, tmp_path, capsys):
    from autolab import report as R
    from autolab.cli import main
    from autolab._loop import best_candidate, summarize

    lab = toy_lab
    k = _contested_lab(lab)
    a, m, r = k["A"], k["M"], k["R"]
    # raw means would pick the rejected merge, and among promoted ones C (lucky screening run)
    raw = lab.log.leaderboard()
    assert raw.iloc[0]["candidate_id"] == m.id
    raw_promoted = raw[raw["state"] == "PROMOTED"]
    assert raw_promoted.iloc[0]["candidate_id"] == k["C"].id

    led = lab.ledger
    assert led.best().id == a.id and led.best_mean() == pytest.approx(1.0)
    assert {th: c.id for th, c in led.best_by_thread().items()} == {
        "main": k["seed"].id, "t0": a.id, "t1": k["C"].id, "merge": k["seed"].id}
    log_only = Ledger(R.open_log(lab.path))                    # the report reads log.db alone: same answers
    assert log_only.best().id == a.id and log_only.preset == lab.preset_name and log_only.seed().id == k["seed"].id

    # the loop
    assert best_candidate(lab).id == a.id
    s = summarize(lab, 0.0, None, "test")
    assert s.best_id == a.id and s.best == pytest.approx(1.0) and s.baseline == pytest.approx(4.0)

    # the report's pieces (what notebooks/03_report.ipynb shows)
    log = R.open_log(lab.path)
    assert f"{a.id} (best promoted)" in R.best_diff_html(log, lab.path)
    summary = R.summary_html(log)
    best_row = summary[summary.index("best promoted"):]
    best_row = best_row[:best_row.index("</tr>")]
    assert a.id in best_row and m.id not in best_row and "<b>1</b>" in best_row   # A's selection-free mean
    board_html = R.leaderboard_html(log)
    assert board_html.index(a.id) < board_html.index(m.id) < board_html.index(r.id)
    ex = R.experiments(log)
    assert list(ex.loc[ex["kept"], "candidate_id"]) == [k["seed"].id, a.id, k["B"].id, k["C"].id]
    assert R._running_best(list(ex["selection_free_mean"]), "minimize", list(ex["kept"]))[-1] == pytest.approx(1.0)
    assert sorted(ex["candidate_id"]) == sorted(set(ex["candidate_id"]))               # each candidate once
    assert ex.loc[ex["candidate_id"] == r.id, "state"].iloc[0] == "REJECTED"
    audit_html = R.audit_summary_html(log)                                                # one row per candidate
    assert audit_html.count(m.id) == 1 and "screen pending → confirm rejected" in audit_html

    # the widgets
    import autolab.ui as ui

    dash = ui.Dashboard(lab)
    rows = {row.split("</td>")[0].split("<b>")[-1].split("</b>")[0]: row
            for row in dash.threads.value.split("<tr")[1:] if "<td" in row}
    for th, best in led.best_by_thread().items():
        assert best.id in rows[th].split("<td")[-1], (th, rows[th])                     # the "best" column
    assert m.id not in dash.threads.value and r.id not in dash.threads.value
    assert dash.board.dataframe().iloc[0]["candidate_id"] == a.id
    assert ui.Leaderboard(lab).dataframe().iloc[0]["candidate_id"] == a.id
    dash.close()

    # the CLI: `autolab log` and `autolab report`
    assert main(["log", "--lab", str(lab.path), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["best"]["candidate_id"] == a.id and obj["best"]["selection_free_mean"] == pytest.approx(1.0)
    assert obj["leaderboard"][0]["candidate_id"] == a.id and obj["leaderboard"][0]["best"] is True
    assert [row["candidate_id"] for row in obj["leaderboard"] if row["best"]] == [a.id]
    assert main(["log", "--lab", str(lab.path)]) == 0
    assert f"best: {a.id} A (PROMOTED)" in capsys.readouterr().out
    out = tmp_path / "report.html"
    assert main(["report", "--lab", str(lab.path), "-o", str(out), "--json"]) == 0
    html = out.read_text()
    assert f"{a.id} (best promoted)" in html and f"{m.id} (best promoted)" not in html
    assert f"{r.id} (best promoted)" not in html


def test_no_promoted_candidate_means_the_seed_is_best(toy_lab):
    from autolab import report as R

    lab = toy_lab
    seed = lab.seed_candidate()
    confirm(lab, seed, [4.0, 4.1])
    hack = add_cand(lab, seed, 3.0, state=State.REJECTED)
    confirm(lab, hack, [0.0, 0.01])
    assert lab.ledger.best().id == seed.id and lab.ledger.best("main").id == seed.id
    log = R.open_log(lab.path)
    assert "No promoted candidate yet" in R.best_diff_html(log, lab.path)
    assert hack.id not in R.summary_html(log)


# ---------------------------------------------------------------------------- the pinned seed

def test_the_lab_pins_its_seed(toy_task, tmp_path):
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    assert json.loads((lab.path / "lab.json").read_text())["seed_candidate"] == seed.id
    assert lab.log.get_meta("seed_candidate") == seed.id and seed.meta["origin"] == "seed"
    # the seed changes on disk: the lab keeps its baseline, warns once, offers the new one as a candidate
    sol = toy_task / "seed" / "solution.py"
    sol.write_text(sol.read_text().replace("X = 1.0", "X = 1.5"))
    with pytest.warns(autolab.lab.SeedChangedWarning, match="add_seed_from_disk"):
        again = autolab.Lab(tmp_path / "lab")
    assert again.seed_candidate() == seed and again.ledger.seed() == seed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = autolab.Lab(tmp_path / "lab")                      # once per process
    assert third.disk_seed_changed() not in (None, seed.id)
    new = third.add_seed_from_disk()
    assert new.id == third.disk_seed_changed() and new.parent_id == seed.id and new.state is State.READY
    assert "X = 1.5" in third.files(new)["solution.py"] and "+X = 1.5" in new.diff
    assert third.seed_candidate() == seed and third.ledger.best().id == seed.id


def test_a_lab_made_before_pinning_pins_its_oldest_seed(toy_task, tmp_path):
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    old_seed = lab.seed_candidate()
    meta = json.loads((lab.path / "lab.json").read_text())
    del meta["seed_candidate"]                                       # as written before this change
    (lab.path / "lab.json").write_text(json.dumps(meta))
    sol = toy_task / "seed" / "solution.py"
    sol.write_text(sol.read_text().replace("X = 1.0", "X = 0.5"))
    with pytest.warns(autolab.lab.SeedChangedWarning):
        reopened = autolab.Lab(tmp_path / "lab")
    assert reopened.seed_candidate().id == old_seed.id
    assert json.loads((lab.path / "lab.json").read_text())["seed_candidate"] == old_seed.id
    assert reopened.log.events("seed_pinned")[-1]["how"] == "the oldest seed candidate in the log"
    # a pre-pinning lab whose log holds no seed yet pins the seed on disk
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "lab.json").write_text(json.dumps({k: v for k, v in meta.items()}))
    bare = autolab.Lab(tmp_path / "bare")
    assert "X = 0.5" in bare.files(bare.seed_candidate())["solution.py"]
    assert bare.log.events("seed_pinned")[-1]["how"] == "the seed on disk"


def test_the_ledger_sits_low_and_nothing_below_the_loop_imports_it_back():
    """ledger imports only log and records; propose, merge, audit and lab never import the loop
    (search), at module level or inside a function."""
    import ast
    from pathlib import Path

    src = Path(autolab.__file__).parent

    def imports(rel: str) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse((src / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                out.add(node.module or "")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autolab."):
                out.add(node.module[len("autolab."):])
        return out

    assert imports("ledger.py") == {"log", "records"}
    for rel in ("_propose.py", "merge.py", "lab.py", "_audit/__init__.py", "_run.py"):
        assert "_loop" not in imports(rel), rel


def _seed_measured_and_a_child(lab):
    """The seed with its baseline and its screening seed 1, and a child of it (X = 2.0)."""
    seed = lab.seed_candidate()
    confirm(lab, seed, [4.0, 4.1, 3.9], purpose="baseline")
    add_run(lab, seed, 4.0, purpose="screen", seed=1)
    return seed, add_cand(lab, seed, 2.0)


def test_a_reopened_candidate_is_undecided_and_its_seeds_run_again(toy_lab, capsys):
    """A harness fault spoiled a candidate's runs: reopening sets them aside (kept, KILLED as the
    machine's doing), sets its verdicts aside, and the loop's questions see a fresh candidate."""
    from autolab.cli import main
    from autolab.errors import AutolabError
    from autolab.ledger import latest_verdict, missing_seeds, not_a_verdict

    lab = toy_lab
    seed, c = _seed_measured_and_a_child(lab)
    spoiled = add_run(lab, c, 9.0, purpose="screen", seed=1)
    # the fault left a sandbox denial in the run (as the read guard did on the H100, 2026-12-07)
    spoiled = lab.log.append(dataclasses.replace(spoiled, meta={**spoiled.meta, "violations": [
        {"kind": "file_read", "detail": "read /cache/compile/runs/c-x/inductor/a.py (outside the workspace)"}]}))
    autolab.audit(lab, c, stage="screen")
    assert lab.candidate(c.id).state is State.REJECTED and latest_verdict(lab, c, "screen") is not None
    with pytest.raises(AutolabError, match="say why"):
        lab.reopen(c, " ")
    with pytest.raises(AutolabError, match="the lab's seed"):
        lab.reopen(seed, "x")
    assert main(["reopen", str(lab.path), c.id, "--reason", "the read guard did not know the compile cache", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["was"] == "REJECTED" and out["runs_set_aside"] == [spoiled.id]
    c2 = lab.candidate(c.id)
    assert c2.state is State.READY and latest_verdict(lab, c2, "screen") is None and latest_verdict(lab, c2) is None
    r = lab.log.get("run", spoiled.id)
    assert r.state is State.KILLED and not_a_verdict(r) and "compile cache" in r.error["reason"]
    assert missing_seeds(lab, c2, "screen", 1) == [1]                 # the loop screens it again
    assert len(lab.log.verdicts_list()) == 1                          # nothing deleted
    # its new screen is judged on its own: the set-aside run's denial no longer counts against it
    add_run(lab, c2, 2.0, purpose="screen", seed=1)
    v = autolab.audit(lab, c2, stage="screen")
    assert next(k for k in v.checks if k["name"] == "sandbox")["passed"], v.checks
    assert v.state is not State.REJECTED and lab.candidate(c.id).state is not State.REJECTED


def test_reopen_keeping_the_runs_sets_aside_only_the_verdicts_and_the_loop_judges_them_again(toy_lab):
    """The runs were sound and only the audit erred: `reopen --keep-runs` sets the verdicts aside,
    keeps the runs counting, and the next loop decides the candidate from them without a new run."""
    from autolab.ledger import latest_verdict, missing_seeds

    lab = toy_lab
    seed, c = _seed_measured_and_a_child(lab)
    run = add_run(lab, c, 3.0, purpose="screen", seed=1)
    autolab.audit(lab, c, stage="screen", screen_margin=5.0)           # an audit that erred: a gain of 1.0 rejected
    assert lab.candidate(c.id).state is State.REJECTED
    c2, moved = lab.reopen(c, "the screening margin was wrong", keep_runs=True)
    assert moved == [] and c2.state is State.READY and latest_verdict(lab, c2) is None
    assert lab.log.get("run", run.id).state is State.COMPLETE and missing_seeds(lab, c2, "screen", 1) == []
    n_runs = len([r for r in lab.log.runs_list() if r.candidate_id == c.id])
    autolab.loop(lab, iterations=1, progress=False)                     # the lab holds its one experiment already
    assert latest_verdict(lab, c2, "screen") is not None                # judged again from the run it had
    assert lab.candidate(c.id).state is not State.REJECTED
    assert len([r for r in lab.log.runs_list() if r.candidate_id == c.id and r.purpose == "screen"]) == 1
    assert len([r for r in lab.log.runs_list() if r.candidate_id == c.id]) >= n_runs
