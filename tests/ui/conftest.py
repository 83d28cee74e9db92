"""Fixtures for the widget tests: a real lab on the toy task (tests/toytask.py) holding
ideas, candidates, runs and verdicts appended the way the loop appends them."""

from __future__ import annotations

import json

import pytest

from autolab.records import Idea, State, Verdict, new_id

from ._helpers import add_runs


@pytest.fixture
def filled_lab(toy_lab):
    """The toy lab with a seed baseline, one idea implemented as a candidate (X = 2.0),
    its runs and a verdict with one failing check, and a failed second candidate."""
    lab = toy_lab
    seed = lab.seed_candidate()
    add_runs(lab, seed, [4.01, 3.98], purpose="baseline")
    idea = lab.log.append(Idea(id=new_id("idea"), task=lab.task.name, title="Scale X by 2", hypothesis="X is too small",
                               plan="set X = 2.0", source="playbook", thread="main", parent_id=seed.id,
                               edit={"setting": "X", "op": "scale", "value": 2.0}))
    text = lab.files(seed)["solution.py"].replace("X = 1.0", "X = 2.0")
    cand = lab.add_candidate({"solution.py": text}, seed, idea_id=idea.id, thread="main")
    add_runs(lab, cand, [1.02, 0.99])
    checks = [{"name": "protected_hashes", "passed": True, "detail": "unchanged", "severity": "reject"},
              {"name": "budget", "passed": False, "detail": "ran 7.1 s on a 5 s budget", "severity": "warn"},
              {"name": "diff_scope", "passed": True, "detail": "only solution.py", "severity": "reject"}]
    verdict = lab.log.append(Verdict(id=new_id("v"), task=lab.task.name, candidate_id=cand.id, parent_id=seed.id,
                                     preset=lab.preset_name, state=State.PROMOTED, checks=checks, metric="loss",
                                     candidate_mean=1.005, parent_mean=3.995, effect=2.99, p_value=0.0004,
                                     n_candidate=2, n_parent=2, reason="welch p=0.0004 < 0.05"))
    cand = lab.set_state(cand, State.PROMOTED)
    idea2 = lab.log.append(Idea(id=new_id("idea"), task=lab.task.name, title="Toggle the trick", source="random",
                                thread="t2", parent_id=seed.id))
    bad = lab.add_candidate({"solution.py": lab.files(seed)["solution.py"].replace("USE_TRICK = False", "USE_TRICK = True")},
                            seed, idea_id=idea2.id, thread="t2")
    add_runs(lab, bad, [0.0], purpose="screen", failed=True)
    return {"lab": lab, "seed": seed, "idea": idea, "cand": cand, "verdict": verdict, "bad": bad}
