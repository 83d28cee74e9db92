"""The loop ablates what it kept (issue 19, item 4), on the toy task's real papermill runs.

A lab with two stacked promotions (X = BASE + BONUS; the first raises BASE, the second BONUS, on
lines apart so that each reverses alone), each confirmed by real runs against its parent and
promoted, as the loop promotes (the loop's own promotions are what tests/test_search.py checks; here
they are made by hand to keep the test short: confirmation one seed at a time would cost four more
rounds of runs). Loops on it: ``--ablate off`` runs nothing; copies run the ablation through the
loop, interrupted, resumed, recorded once, and shown in the report's table. The toy's noise depends on the
run seed only, so each change's paired contribution is exact (1.0, zero spread)."""

from __future__ import annotations

import collections
import shutil

import pytest

import autolab
from autolab import ablation as A
from autolab.cli import main
from autolab.ledger import not_a_verdict
from autolab.records import Idea, Purpose, State, new_id

SOLUTION = '''"""Toy solution: X is the sum of two parts; the loop should move X towards 3."""
BASE = 1.0       # one part of X
STEP = 2         # an integer setting, unused
BONUS = 0.0      # the other part
X = BASE + BONUS
'''

EDITS = [("BASE", 2.0, "Raise the base"), ("BONUS", 1.0, "Add a bonus")]


def _ablation_runs(lab):
    return [r for r in lab.log.runs_list() if r.purpose == Purpose.ABLATION.value]


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """A lab whose best stacks two promoted changes, BASE 1 -> 2 then BONUS 0 -> 1, each with two
    complete confirmation runs (the seed's too); two final seeds keep the ablation short."""
    from toytask import make_toy_task

    root = tmp_path_factory.mktemp("stacked")
    task = make_toy_task(root / "tasks", noise=0.01, solution=SOLUTION)
    toml = (task / "task.toml").read_text()
    (task / "task.toml").write_text(toml.replace("confirmation = 3", "confirmation = 2").replace("final = 3", "final = 2"))
    lab = autolab.Lab(root / "lab", task=str(task))
    parent = lab.seed_candidate()
    autolab.run(lab, parent, [101, 102], purpose="confirm")
    for setting, value, title in EDITS:
        idea = lab.log.append(Idea(id=new_id("i"), task=lab.task.name, title=title, parent_id=parent.id,
                                   edit={"name": setting.lower(), "file": "solution.py", "setting": setting,
                                         "op": "set", "value": value, "cast": "float"}))
        c = autolab.implement(lab, idea)
        assert all(r.ok for r in autolab.run(lab, c, [101, 102], purpose="confirm"))
        parent = lab.promote(c, "test: confirmed against its parent on seeds 101, 102")
    best = lab.ledger.best()
    assert best.id == parent.id and [c.title for c in A.changes(lab, best)] == [e[2] for e in EDITS]
    assert len(A.measurable(lab, best)) == 2 and A.due(lab) == best
    return task, lab.path


def test_ablate_off_runs_none(stacked, capsys):
    task, lab_dir = stacked
    n = len(autolab.Lab(lab_dir).log.runs_list())
    assert main(["loop", str(task), "--lab", str(lab_dir), "--iterations", "2", "--ablate", "off", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ablation_runs": 0' in out and '"ablations": 0' in out and "nothing to do" in out
    lab = autolab.Lab(lab_dir)
    assert len(lab.log.runs_list()) == n and not A.plans(lab) and not _ablation_runs(lab)
    assert lab.log.events("loop_start")[-1]["ablate"] == "off"
    with pytest.raises(autolab.AutolabError, match="ablate='sometimes'"):
        autolab.loop(lab, iterations=2, ablate="sometimes", progress=False)


def test_the_loop_ablates_the_stacked_best_resumes_and_reports(stacked, tmp_path, capsys):
    from autolab import report as R
    from autolab._loop import goal_ideas

    task, src = stacked
    shutil.copytree(src, tmp_path / "lab")
    lab = autolab.Lab(tmp_path / "lab")
    best = lab.ledger.best()
    seed = lab.seed_candidate()
    first = [c for c in lab.log.candidates_list() if c.parent_id == seed.id and c.state is State.PROMOTED][0]

    # 0. within the time box: no ablation run starts that would likely end past it
    s = autolab.loop(lab, iterations=2, max_time_s=2, progress=False)
    assert s.reason == "time_limit" and "time limit" in s.stopped and not _ablation_runs(lab)

    # 1. interrupted: a stop (in-flight runs cancelled) as soon as the first ablation run ends
    control = autolab.LoopControl()

    def on_event(e):
        if e.get("type") == "run_end" and e["run"].purpose == Purpose.ABLATION.value:
            control.stop(cancel_runs=True)

    s = autolab.loop(lab, iterations=2, control=control, on_event=on_event, progress=False)
    assert s.reason == "interrupted" and s.promoted == 2
    (p,) = A.pending(lab)
    assert p.candidate_id == best.id and p.by == "loop" and p.seeds == (1001, 1002) and len(p.to_run) == 3
    assert first.id in p.to_run   # BONUS removed: the first promotion itself
    done = [r for r in _ablation_runs(lab) if r.state is State.COMPLETE]
    assert 1 <= len(done) < 6 and A.ablation_table(lab).empty
    assert "is in progress" in R.ablation_html(lab.log)

    # 2. resumed (the CLI, --ablate auto by default): the plan is finished, not started again
    assert main(["loop", str(task), "--lab", str(lab.path), "--iterations", "2"]) == 0
    capsys.readouterr()
    lab = autolab.Lab(lab.path)
    assert not A.pending(lab) and len(A.plans(lab)) == 1
    complete = collections.Counter((r.candidate_id, r.seed) for r in _ablation_runs(lab) if r.state is State.COMPLETE)
    assert set(complete) == {(c, s) for c in p.to_run for s in (1001, 1002)} and max(complete.values()) == 1
    assert all(r.state is State.COMPLETE or not_a_verdict(r) for r in _ablation_runs(lab))   # cancelled, interrupted
    table = A.ablation_table(lab)
    assert list(table["ablation_id"].unique()) == [p.ablation_id] and list(table["change"]) == [1, 2]
    assert list(table["title"]) == ["Raise the base", "Add a bonus"]
    assert list(table["verdict"]) == [A.CARRIES, A.CARRIES] and list(table["n"]) == [2, 2]
    assert list(table["effect"]) == pytest.approx([1.0, 1.0]) and list(table["p_value"]) == [0.0, 0.0]
    assert list(table["summary"]) == ["solution.py +1 -1: BASE = 2.0       # one part of X",
                                      "solution.py +1 -1: BONUS = 1.0      # the other part"]
    assert main(["log", "--lab", str(lab.path)]) == 0
    assert capsys.readouterr().out.count(A.CARRIES) == 2
    # the ablation decided nothing and is no experiment
    assert {c.id for c in lab.log.candidates_list() if c.state is State.PROMOTED} == {first.id, best.id}
    assert lab.ledger.best().id == best.id and len(goal_ideas(lab)) == 2 and not lab.log.verdicts_list()

    # 3. again: one ablation per candidate, nothing runs
    n = len(lab.log.runs_list())
    s = autolab.loop(lab, iterations=2, progress=False)
    assert s.reason == "goal" and "nothing to do" in s.stopped and len(lab.log.runs_list()) == n
    assert s.ablations == 1 and s.ablation_runs == len(_ablation_runs(lab)) >= 6 and s.runs == n

    # 4. the report's table (what notebooks/03_report.ipynb shows under "Ablation: what each kept change
    # carries"; tests/test_report.py builds the whole report, which is slow, on its example lab)
    html = R.ablation_html(autolab.ResearchLog(lab.path / "log.db"))
    assert html.count(A.CARRIES) >= 2 and "Raise the base" in html and "Add a bonus" in html and "(the best)" in html
    assert "removing it: Δ loss" in html and html.count("[+1, +1]") == 2 and "BONUS = 1.0" in html
    assert "in progress" not in html


def test_verdicts_and_the_report_rows_in_the_metric_units(tmp_path):
    """The verdict follows the 95% interval of the contribution; the report shows the effect of
    removing a change in the metric's own units (for a maximized metric: minus the contribution)."""
    from dataclasses import asdict

    from autolab import report as R
    from autolab.log import ResearchLog

    assert A.verdict(A.MEASURED, 0.1, 0.5) == A.CARRIES and A.verdict(A.MEASURED, -0.5, -0.1) == A.HURTS
    assert A.verdict(A.MEASURED, -0.1, 0.5) == A.NO_MEASURABLE and A.verdict(A.MEASURED, 0.0, 0.0) == A.NO_MEASURABLE
    assert A.verdict(A.NOT_REVERSIBLE, None, None).startswith("not measured")
    assert A.describe("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-LR = 1\n+LR = 2\n") == "m.py +1 -1: LR = 2"
    log = ResearchLog(tmp_path / "log.db")
    log.set_meta("metric", "score")
    log.set_meta("direction", "maximize")
    for i, (eff, lo, hi) in enumerate([(-0.2, -0.3, -0.1), (0.01, -0.02, 0.04)], 1):
        log.event(A.EVENT, **asdict(A.AblationRow(
            ablation_id="ab-1", candidate_id="c-full", change=i, title=f"change {i}", before="c-a", after="c-b",
            status=A.MEASURED, without_id="c-w", seeds=[1001, 1002, 1003], full=[1.0] * 3, without=[1.2] * 3,
            effect=eff, ci_low=lo, ci_high=hi, p_value=0.99, metric="score", preset="p")))
    html = R.ablation_html(log)
    assert "removing it: Δ score" in html and "[+0.1, +0.3]" in html and "+0.2" in html   # better without: it hurts
    assert A.HURTS in html and A.NO_MEASURABLE in html and A.CARRIES not in html.split("Verdict from")[0]
    assert "No ablation recorded" in R.ablation_html(ResearchLog(tmp_path / "empty.db"))
