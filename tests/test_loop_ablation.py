"""The loop ablates what it kept (issue 19, item 4), on the toy task's real papermill runs.

One loop stacks two promotions (X = BASE + BONUS; the first raises BASE, the second BONUS, on lines
apart so that each reverses alone) with ``ablate="off"``; copies of that lab then run the ablation
through the loop: interrupted, resumed, recorded once, and shown in the report. The toy's noise
depends on the run seed only, so each change's paired contribution is exact (1.0, zero spread)."""

from __future__ import annotations

import collections
import shutil

import pytest

import autolab
from autolab import ablation as A
from autolab.cli import main
from autolab.records import Idea, Purpose, State, new_id

SOLUTION = '''"""Toy solution: X is the sum of two parts; the loop should move X towards 3."""
BASE = 1.0       # one part of X
STEP = 2         # an integer setting, unused
BONUS = 0.0      # the other part
X = BASE + BONUS
'''

EDITS = [("BASE", 2.0, "Raise the base"), ("BONUS", 1.0, "Add a bonus")]


class Stacking:
    """Proposes EDITS in order, each on the candidate that holds the ones before it; while the
    previous one is undecided it has nothing to propose (the loop asks again after a promotion)."""

    name = "stacking"

    def propose(self, lab, parent, *, thread="main", direction="", insights=()):
        depth, c = 0, parent
        while c.parent_id:
            depth, c = depth + 1, lab.candidate(c.parent_id)
        if depth >= len(EDITS) or any(i.parent_id == parent.id for i in lab.log.ideas_list()):
            return None
        setting, value, title = EDITS[depth]
        return lab.log.append(Idea(id=new_id("i"), task=lab.task.name, title=title, thread=thread, parent_id=parent.id,
                                   edit={"name": setting.lower(), "file": "solution.py", "setting": setting, "op": "set",
                                         "value": value, "cast": "float"}))


def _ablation_runs(lab):
    return [r for r in lab.log.runs_list() if r.purpose == Purpose.ABLATION.value]


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """A lab whose loop (ablate="off") promoted BASE 1 -> 2, then BONUS 0 -> 1 on top of it:
    two confirmation and two final seeds keep it short."""
    from toytask import make_toy_task

    root = tmp_path_factory.mktemp("stacked")
    task = make_toy_task(root / "tasks", noise=0.01, solution=SOLUTION)
    toml = (task / "task.toml").read_text()
    (task / "task.toml").write_text(toml.replace("confirmation = 3", "confirmation = 2").replace("final = 3", "final = 2"))
    lab = autolab.Lab(root / "lab", task=str(task))
    s = autolab.loop(lab, iterations=2, proposer=Stacking(), ablate="off", progress=False)
    best = lab.ledger.best()
    assert s.promoted == 2 and s.best_id == best.id and s.failed == 0, s
    assert [c.title for c in A.changes(lab, best)] == ["Raise the base", "Add a bonus"]
    # off: nothing of an ablation, though the best carries two changes
    assert s.ablations == 0 and s.ablation_runs == 0 and not _ablation_runs(lab)
    assert not A.plans(lab) and A.ablation_table(lab).empty
    return task, lab.path


def test_ablate_off_runs_none(stacked, capsys):
    task, lab_dir = stacked
    n = len(autolab.Lab(lab_dir).log.runs_list())
    assert main(["loop", str(task), "--lab", str(lab_dir), "--iterations", "2", "--ablate", "off"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    lab = autolab.Lab(lab_dir)
    assert len(lab.log.runs_list()) == n and not A.plans(lab)
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

    # 1. interrupted: a stop (in-flight runs cancelled) as soon as the first ablation run ends
    control = autolab.LoopControl()

    def on_event(e):
        if e.get("type") == "run_end" and e["run"].purpose == Purpose.ABLATION.value:
            control.stop(cancel_runs=True)

    s = autolab.loop(lab, iterations=2, proposer=Stacking(), control=control, on_event=on_event, progress=False)
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
    assert all(r.state is State.COMPLETE or r.error.get("reason") == "cancelled by the user" for r in _ablation_runs(lab))
    table = A.ablation_table(lab)
    assert list(table["ablation_id"].unique()) == [p.ablation_id] and list(table["change"]) == [1, 2]
    assert list(table["title"]) == ["Raise the base", "Add a bonus"]
    assert list(table["verdict"]) == [A.CARRIES, A.CARRIES] and list(table["n"]) == [2, 2]
    assert list(table["effect"]) == pytest.approx([1.0, 1.0]) and list(table["p_value"]) == [0.0, 0.0]
    assert list(table["summary"]) == ["solution.py +1 -1: BASE = 2.0       # one part of X",
                                      "solution.py +1 -1: BONUS = 1.0      # the other part"]
    # the ablation decided nothing and is no experiment
    assert {c.id for c in lab.log.candidates_list() if c.state is State.PROMOTED} == {first.id, best.id}
    assert lab.ledger.best().id == best.id and len(goal_ideas(lab)) == 2

    # 3. again: one ablation per candidate, nothing runs
    n = len(lab.log.runs_list())
    s = autolab.loop(lab, iterations=2, proposer=Stacking(), progress=False)
    assert s.reason == "goal" and "nothing to do" in s.stopped and len(lab.log.runs_list()) == n
    assert s.ablations == 1 and s.ablation_runs == len(_ablation_runs(lab)) >= 6 and s.runs == n

    # 4. the report's table
    html = R.build_report(lab.path, tmp_path / "report.html").read_text()
    assert "Ablation: what each kept change carries" in html
    assert html.count("carries the gain") >= 2 and "Raise the base" in html and "Add a bonus" in html
    assert "removing it: Δ loss" in html and "[+1, +1]" in html
