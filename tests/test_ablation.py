"""Ablation of a candidate's changes (issue 19, item 4), on the toy task's real papermill runs.

The toy metric is (X - 3)^2 plus a noise that depends on the run seed only, so a change's paired
contribution is exact: no spread, p 0 or 1."""

from __future__ import annotations

import json

import pytest

import autolab
from autolab.ablation import (CARRIES, MEASURED, NO_EFFECT, NO_MEASURABLE, NOT_REVERSIBLE, ablation_table, changes,
                              variants)
from autolab.cli import main
from autolab.merge import merge_candidates

SEED = '''"""Toy solution: the loop should move X towards 3."""
X = 1.0          # the parameter being tuned
STEP = 2         # an integer setting
USE_TRICK = False  # a switch that does nothing
'''


def _child(lab, parent, old, new, thread="main"):
    files = lab.files(parent)
    text = files["solution.py"]
    assert old in text
    c = lab.add_candidate({"solution.py": text.replace(old, new)}, parent, thread=thread)
    return lab.promote(c, "test: stacked promotion")


def test_changes_of_a_merge_and_their_reverses(toy_lab):
    """A merge carries both lines' changes; removing one gives the other line's candidate (the
    same content, so the same id); nothing runs."""
    lab = toy_lab
    seed = lab.seed_candidate()
    a = _child(lab, seed, "X = 1.0", "X = 2.0", thread="a")
    b = _child(lab, seed, "STEP = 2", "STEP = 5", thread="b")
    m = merge_candidates(lab, a, b)
    assert m is not None
    chs = changes(lab, m)
    assert [(c.before, c.after) for c in chs] == [(seed.id, a.id), (seed.id, b.id)]
    vs = {v.change.after: v for v in variants(lab, m)}
    assert vs[a.id].status == MEASURED and vs[a.id].candidate_id == b.id
    assert vs[b.id].status == MEASURED and vs[b.id].candidate_id == a.id
    assert not lab.log.runs_list()


def test_a_change_a_later_one_undid_has_no_effect(toy_lab):
    lab = toy_lab
    a = _child(lab, lab.seed_candidate(), "USE_TRICK = False", "USE_TRICK = True")
    b = _child(lab, a, "X = 1.0", "X = 2.0")   # lines apart: adjacent edits conflict in a line-based merge
    undo = _child(lab, b, "USE_TRICK = True", "USE_TRICK = False")
    statuses = {v.change.after: v.status for v in variants(lab, undo)}
    assert statuses == {a.id: NO_EFFECT, b.id: MEASURED, undo.id: MEASURED}


def test_ablate_measures_each_change_reports_the_rest_and_survives_a_reopen(tmp_path, toy_task, capsys):
    """Three stacked changes: X 1 -> 2, the trick switched on (no effect on the metric), X 2 -> 3.
    The first no longer reverses (the third rewrote its line) and is reported; the other two are
    run beside the full candidate on the same final seeds and measured; the table is in the log."""
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    a = _child(lab, seed, "X = 1.0", "X = 2.0")
    b = _child(lab, a, "USE_TRICK = False", "USE_TRICK = True")
    c = _child(lab, b, "X = 2.0", "X = 3.0")

    code = main(["ablate", str(lab.path), c.id, "--seeds", "2", "--json"])
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and obj["candidate_id"] == c.id
    rows = {r["after"]: r for r in obj["rows"]}
    assert rows[a.id]["status"] == NOT_REVERSIBLE and "no longer reverses cleanly" in rows[a.id]["detail"]
    assert rows[a.id]["without_id"] is None and not rows[a.id]["seeds"]
    # X 2 -> 3: (2-3)^2 - 0 = 1.0 better with it, on every seed
    r3 = rows[c.id]
    assert r3["status"] == MEASURED and r3["without_id"] == b.id and r3["seeds"] == [1001, 1002]
    assert r3["effect"] == pytest.approx(1.0) and r3["p_value"] == 0.0
    assert r3["ci_low"] == pytest.approx(1.0) and r3["ci_high"] == pytest.approx(1.0) and r3["verdict"] == CARRIES
    # the trick does nothing: no contribution, p 1
    r2 = rows[b.id]
    assert r2["status"] == MEASURED and r2["effect"] == pytest.approx(0.0) and r2["p_value"] == 1.0
    assert r2["verdict"] == NO_MEASURABLE and r2["summary"] == "solution.py +1 -1: USE_TRICK = True  # a switch that does nothing"
    without_trick = lab.candidate(r2["without_id"])
    assert without_trick.parent_id is None and without_trick.meta["origin"] == "ablation"
    assert without_trick.meta["ablation_of"] == c.id and "USE_TRICK = True" in without_trick.diff
    runs = lab.log.runs_list()
    assert {r.purpose for r in runs} == {"ablation"} and len(runs) == 6 and all(r.ok for r in runs)

    # the rows survive a reopen (a new process would see the same), as a DataFrame for the report
    table = ablation_table(autolab.Lab(lab.path))
    assert list(table["change"]) == [1, 2, 3] and list(table["status"]) == [NOT_REVERSIBLE, MEASURED, MEASURED]
    assert table.loc[table["after"] == c.id, "effect"].item() == pytest.approx(1.0)
    assert table.loc[table["after"] == c.id, "n"].item() == 2
    from autolab.log import ResearchLog

    bare = ablation_table(ResearchLog(lab.path / "log.db"))   # what the report reads: the log alone
    assert list(bare["status"]) == list(table["status"]) and list(bare["effect"].fillna(-9)) == list(table["effect"].fillna(-9))
    assert main(["log", "--lab", str(lab.path)]) == 0
    log_text = capsys.readouterr().out
    assert "ablations (each change removed alone" in log_text and "without: " in log_text   # the variant's title

    # the terminal's table; the full candidate's and the variants' runs are reused: nothing new runs
    assert main(["ablate", str(lab.path), c.id, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "contribution" in out and NOT_REVERSIBLE in out and "+1.0000" in out
    assert len(lab.log.runs_list()) == 6
    assert len(set(ablation_table(lab, latest=False)["ablation_id"])) == 2


def test_ablate_refuses_what_it_cannot_do(capsys, toy_lab):
    lab = toy_lab
    seed = lab.seed_candidate()
    one = _child(lab, seed, "X = 1.0", "X = 2.0")

    def err(argv):
        assert main(argv) == 2, argv
        return capsys.readouterr().err

    assert "carries 1 change" in err(["ablate", str(lab.path), one.id])
    assert "is the lab's seed" in err(["ablate", str(lab.path), seed.id])
    assert "no candidate 'c-000000000000'" in err(["ablate", str(lab.path), "c-000000000000"])
    assert "is not a candidate id" in err(["ablate", str(lab.path), "best"])
    assert not lab.log.runs_list()
