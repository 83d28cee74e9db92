"""A tiny but real task for tests: a benchmark notebook executed by papermill that imports
the candidate's ``solution.py`` and scores it. metric = (X - 3)^2 + noise(seed), minimize.
Runs take about two seconds, so run/audit/loop logic is tested on the real path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

TASK_TOML = """
name = "{name}"
title = "Toy quadratic"
default_preset = "quick"

[metric]
name = "loss"
direction = "minimize"
unit = ""

[files]
seed = "seed"
editable = ["solution.py"]
protected = ["benchmark.ipynb", "task.toml", "playbook.toml"]

[seeds]
screening = 1
confirmation = 3
final = 3

[significance]
test = "welch"
alpha = 0.05
min_seeds = 2

[audit]
probes = []

[presets.quick]
device = "cpu"
budget_s = 5
timeout_s = 60
noise = {noise}
"""

SOLUTION = '''"""Toy solution: the loop should move X towards 3."""
X = 1.0          # the parameter being tuned
STEP = 2         # an integer setting
USE_TRICK = False  # a switch that does nothing
'''

PLAYBOOK = """
[[edit]]
name = "x_scale"
title = "Scale X"
hypothesis = "X is too small"
setting = "X"
op = "scale"
values = [1.5, 2.0, 3.0]
direction = "optimizer"

[[edit]]
name = "trick"
title = "Toggle the trick"
setting = "USE_TRICK"
op = "toggle"
direction = "architecture"
"""

PARAMS = 'candidate_dir = None\nseed = 1\npreset = "quick"\nresult_path = "result.json"\n'

BODY = '''
import json, random, importlib.util, math, os, sys, time, pathlib
task_dir = pathlib.Path.cwd()
cand = pathlib.Path(candidate_dir) if candidate_dir else task_dir / "seed"
spec = importlib.util.spec_from_file_location("solution", cand / "solution.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
if getattr(mod, "CRASH", False):
    raise RuntimeError("the candidate asked to crash")
if getattr(mod, "HANG", False):
    time.sleep(1000)
import tomllib
noise = tomllib.loads((task_dir / "task.toml").read_text())["presets"][preset]["noise"]
rng = random.Random(int(seed))
loss = (float(mod.X) - 3.0) ** 2 + noise * rng.gauss(0, 1)
hidden = loss + getattr(mod, "HIDDEN_GAP", 0.0)
result = {"status": "ok", "metrics": {"loss": loss, "hidden_loss": hidden},
          "timings": {"train_s": 0.1, "budget_s": 5, "allowance_s": 1}, "summary": {"loss": round(loss, 6)},
          "violations": getattr(mod, "VIOLATIONS", []), "probes": {"toy": {"passed": not getattr(mod, "CHEAT", False), "detail": "toy probe"}},
          "curve": [{"step": i, "t": i * 0.1, "loss": loss + 1.0 / (i + 1)} for i in range(5)]}
pathlib.Path(result_path).write_text(json.dumps(result))
print("loss:", loss)
'''


def make_toy_task(root: Path, name: str = "toy", noise: float = 0.05, solution: str = SOLUTION,
                  extra: str = "") -> Path:
    """Create a toy task folder under root; returns the folder. ``extra``: code the benchmark
    notebook runs after writing the result (e.g. files a harness leaves next to it)."""
    d = Path(root) / name
    (d / "seed").mkdir(parents=True, exist_ok=True)
    (d / "task.toml").write_text(TASK_TOML.format(name=name, noise=noise))
    (d / "seed" / "solution.py").write_text(solution)
    (d / "playbook.toml").write_text(PLAYBOOK)
    (d / "task.md").write_text("# Toy task\nMove X so that (X-3)^2 is small.\n")
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Toy benchmark"), p, nbformat.v4.new_code_cell(textwrap.dedent(BODY))]
    if extra:
        nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(extra)))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, d / "benchmark.ipynb")
    return d
