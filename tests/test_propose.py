"""autolab._propose: the offline playbook proposer and its playbook format."""

from __future__ import annotations

import pytest

import autolab
from autolab._propose import PlaybookProposer, load_playbook
from autolab.task import TaskError

PLAYBOOK = """
[[edit]]
name = "x_scale"
setting = "X"
op = "scale"
values = [1.5, 2.0]

[[edit]]
name = "gpu_only"
setting = "USE_TRICK"
op = "toggle"
devices = ["cuda"]
"""

GPU_PRESET = """
[presets.gpu]
device = "cuda"
budget_s = 5
timeout_s = 60
noise = 0.0
"""


def _task_with_playbook(toy_task):
    (toy_task / "playbook.toml").write_text(PLAYBOOK)
    (toy_task / "task.toml").write_text((toy_task / "task.toml").read_text() + GPU_PRESET)
    return toy_task


def test_device_specific_edits_are_offered_only_on_their_device(tmp_path, toy_task):
    task = _task_with_playbook(toy_task)
    edits = {e.name: e for e in load_playbook(task / "playbook.toml")}
    assert edits["gpu_only"].devices == ("cuda",) and edits["x_scale"].devices == ()

    def proposed(preset):
        """Every edit the proposer offers on the seed (each proposal is logged, so it runs dry)."""
        lab = autolab.Lab(tmp_path / f"lab-{preset}", task=str(task), preset=preset)
        seed, proposer, names = lab.seed_candidate(), PlaybookProposer(seed=0), []
        while (idea := proposer.propose(lab, seed)) is not None:
            names.append(idea.edit["name"])
        return sorted(names)

    assert proposed("quick") == ["x_scale", "x_scale"]               # a CPU preset never gets the CUDA-only edit
    assert proposed("gpu") == ["gpu_only", "x_scale", "x_scale"]


@pytest.mark.parametrize("devices, match", [('"cuda"', "use a list"), ('["tpu"]', "devices = \\['tpu'\\]")])
def test_bad_devices_are_named_with_the_fix(tmp_path, devices, match):
    p = tmp_path / "playbook.toml"
    p.write_text(f'[[edit]]\nname = "a"\nsetting = "A"\nop = "toggle"\ndevices = {devices}\n')
    with pytest.raises(TaskError, match=match) as e:
        load_playbook(p)
    assert str(p) in str(e.value) and "(a)" in str(e.value)


# ---------------------------------------------------------------------------- what a run measures

def _two_file_task(toy_task):
    """The toy task with a second editable file, notes.py, that no run reads (measured: solution.py),
    and solution.py importing helper.py (shared code: a change there is measured)."""
    toml = (toy_task / "task.toml").read_text().replace(
        'editable = ["solution.py"]', 'editable = ["*.py"]\nmeasured = ["solution.py"]')
    (toy_task / "task.toml").write_text(toml)
    seed = toy_task / "seed"
    (seed / "notes.py").write_text("NOTE = 1  # read by nothing\n")
    (seed / "helper.py").write_text("FACTOR = 1.0  # used by solution.py\n")
    (seed / "solution.py").write_text("import helper\n" + (seed / "solution.py").read_text())
    return toy_task


def test_a_change_that_touches_nothing_measured_is_refused_and_recorded(tmp_path, toy_task):
    from autolab._implement import implement
    from autolab.records import State

    lab = autolab.Lab(tmp_path / "lab", task=str(_two_file_task(toy_task)))
    seed = lab.seed_candidate()
    assert lab.task.units("quick", lab.files(seed)) == {"run": frozenset({"solution.py", "helper.py"})}

    def idea(edit):
        return autolab.HumanProposer("t", edit=edit).propose(lab, seed)

    i = idea({"file": "notes.py", "setting": "NOTE", "op": "set", "value": 2})
    assert implement(lab, i) is None
    i2 = lab.log.get("idea", i.id)
    assert i2.state is State.FAILED and "touches nothing preset 'quick' measures" in i2.meta["refused"]
    assert "notes.py" in i2.meta["refused"] and "solution.py" in i2.meta["refused"]
    refused = lab.candidate(i2.meta["candidate_id"])
    assert refused.state is State.FAILED and refused.meta["refused"] == i2.meta["refused"]
    assert refused.id != seed.id and lab.candidate(seed.id).state is seed.state     # the parent is untouched
    # shared code: helper.py is imported by solution.py, so its change is measured
    assert implement(lab, idea({"file": "helper.py", "setting": "FACTOR", "op": "set", "value": 2.0})).state is State.READY
    # a no-op (the value it already has) is refused, and the parent is left as it was
    i3 = idea({"file": "solution.py", "setting": "X", "op": "set", "value": 1.0})
    assert implement(lab, i3) is None
    assert "no-op" in lab.log.get("idea", i3.id).meta["refused"] and lab.candidate(seed.id).state is seed.state
    # proposers only offer edits of measured files
    names = set()
    while (p := autolab.RandomProposer(seed=len(names)).propose(lab, seed)) is not None and len(names) < 30:
        names.add(p.edit["file"])
    assert names and "notes.py" not in names


def test_kernels_proposals_target_the_problems_the_preset_evaluates(tmp_path):
    """h100-quick evaluates five problems: no playbook edit of another problem is proposed, and a
    hand-made edit of swiglu is refused before it runs; on the full suite swiglu is measured."""
    from autolab._implement import implement
    from autolab.records import State

    lab = autolab.Lab(tmp_path / "kq", task="kernels", preset="h100-quick")
    seed = lab.seed_candidate()
    quick = set(lab.task.preset("h100-quick").settings["problems"])
    assert set(lab.task.units("h100-quick", lab.files(seed))) == quick
    proposer, files = PlaybookProposer(seed=0), set()
    while (idea := proposer.propose(lab, seed)) is not None:
        files.add(idea.edit["file"])
    assert files and {f[:-3] for f in files} <= quick and "matmul_bf16.py" in files
    i = autolab.HumanProposer("swiglu", edit={"file": "swiglu.py", "setting": "NUM_WARPS", "op": "set",
                                              "value": 8}).propose(lab, seed)
    assert implement(lab, i) is None and "h100-quick" in lab.log.get("idea", i.id).meta["refused"]
    full = autolab.Lab(tmp_path / "kf", task="kernels", preset="h100")
    assert "swiglu" in full.task.units("h100", full.files(full.seed_candidate()))
    i = autolab.HumanProposer("swiglu", edit={"file": "swiglu.py", "setting": "NUM_WARPS", "op": "set",
                                              "value": 8}).propose(full, full.seed_candidate())
    assert implement(full, i).state is State.READY


@pytest.mark.parametrize("files, match", [
    ('problem_file = "kernel.py"', "without {problem}"),
    ("carry = true", "declares no problem_file"),
])
def test_bad_measured_declarations_are_named_with_the_fix(toy_task, files, match):
    from autolab.task import load_task_file

    toml = (toy_task / "task.toml").read_text().replace('editable = ["solution.py"]',
                                                        f'editable = ["solution.py"]\n{files}')
    (toy_task / "task.toml").write_text(toml)
    with pytest.raises(TaskError, match=match) as e:
        load_task_file(toy_task / "task.toml")
    assert "files." in str(e.value) and "fix:" in str(e.value)


def test_a_patch_is_offered_only_where_it_applies(tmp_path, toy_task):
    """A [[patch]] names its source; once its SEARCH text is gone from the parent (applied, or the
    code moved on) it is not offered; a patch without a source is refused with the fix."""
    from autolab._implement import implement
    from autolab.records import State

    (toy_task / "playbook.toml").write_text(PLAYBOOK + '''
[[patch]]
name = "x_three"
title = "X to three"
hypothesis = "the optimum"
file = "solution.py"
source = "the toy task's own formula"
patch = """
<<<<<<< SEARCH
X = 1.0          # the parameter being tuned
=======
X = 3.0          # the parameter being tuned
>>>>>>> REPLACE
"""
''')
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed, names, proposer = lab.seed_candidate(), [], PlaybookProposer(seed=1)
    while (idea := proposer.propose(lab, seed)) is not None:
        names.append(idea.edit["name"])
        if idea.edit["name"] == "x_three":
            assert idea.meta["idea_source"] == "the toy task's own formula" and idea.title == "X to three"
            child = implement(lab, idea)
            assert child.state is State.READY and "X = 3.0" in lab.files(child)["solution.py"]
    assert names.count("x_three") == 1
    assert "x_three" not in {i.edit["name"] for i in iter(lambda: PlaybookProposer(seed=2).propose(lab, child), None)}
    (toy_task / "playbook.toml").write_text('[[patch]]\nname = "p"\nfile = "solution.py"\nsource = ""\n'
                                            'patch = "<<<<<<< SEARCH\\nX\\n=======\\nY\\n>>>>>>> REPLACE\\n"\n')
    with pytest.raises(TaskError, match="source"):
        load_playbook(toy_task / "playbook.toml")


def test_an_insight_speaks_for_the_way_its_edit_went_not_for_the_whole_edit(tmp_path, toy_task):
    """A win of X ×0.5 makes the proposer favour scaling X down, never up: before, any win of an
    edit boosted all its values alike (a demo whose store held "BATCH_SIZE ×0.5" won tried ×2 first)."""
    import collections

    from autolab.records import Insight

    (toy_task / "playbook.toml").write_text('[[edit]]\nname = "x_scale"\nsetting = "X"\nop = "scale"\n'
                                            'values = [0.25, 0.5, 2.0, 4.0]\n')
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task), preset="quick")
    seed = lab.seed_candidate()
    win = Insight(id="n-1", task="other", preset="p", technique="X down", effect=0.1,
                  meta={"edit_name": "x_scale", "edit": {"name": "x_scale", "op": "scale", "value": 0.5}})

    def first_values(insights, n):
        got = collections.Counter()
        for i in range(n):
            sub = autolab.Lab(tmp_path / f"l{len(insights)}-{i}", task=str(toy_task), preset="quick")
            idea = PlaybookProposer(seed=i).propose(sub, sub.seed_candidate(), insights=insights)
            got[idea.edit["value"]] += 1
        return got

    assert seed is not None
    plain, boosted = first_values([], 120), first_values([win], 120)
    down = lambda c: c[0.25] + c[0.5]                                 # noqa: E731
    assert down(boosted) > down(plain) and boosted[2.0] + boosted[4.0] < plain[2.0] + plain[4.0]
    assert down(boosted) > 1.5 * (boosted[2.0] + boosted[4.0])       # weights 2:2:1:1: 2/3 down (seeded: no chance)
