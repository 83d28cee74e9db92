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
