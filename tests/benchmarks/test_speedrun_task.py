"""speedrun task folder: task.toml loads with its presets, the notebook is committed clean with
the parameters autolab passes, the seed is importable without training, and every playbook edit
applies to the seed and compiles. Fast: nothing trains."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "speedrun"
SEED = REPO / "seeds" / "speedrun" / "train_gpt.py"


def test_task_loads_with_presets():
    from autolab.task import load_task

    task = load_task(TASK_DIR)
    assert task.name == "speedrun" and task.seed_dir == SEED.parent.resolve()
    assert task.editable == ("train_gpt.py",) and task.seed_files().keys() == {"train_gpt.py"}
    assert set(task.presets) >= {"cpu-smoke", "cpu-tiny", "h100", "8xh100"}
    prot = {str(p.relative_to(TASK_DIR)) for p in task.protected_files()}
    assert {"task.toml", "benchmark.ipynb", "playbook.toml", "speedrun_harness/__init__.py",
            "speedrun_harness/runner.py", "speedrun_harness/metric.py", "speedrun_harness/state.py"} <= prot
    for name, p in task.presets.items():
        s = p.settings
        assert s["val_tokens"] % s["seq_len"] == 0, name
        assert s["total_batch_size"] % (s["batch_size"] * s["seq_len"] * p.gpus if p.device == "cuda"
                                        else s["batch_size"] * s["seq_len"]) == 0, name
        limit = s["allowance_s"] + p.budget_s + s["val_allowance_s"]
        assert s.get("clock", "wall") == ("cpu" if p.device == "cpu" else "wall"), name   # task.md, "The CPU clock"
        # the whole run's wall limit leaves room for the train process's own (on a cpu clock: its
        # wall-clock safety net) and the re-check, so that the harness, not the executor, ends a run
        if s.get("clock") == "cpu":
            assert p.timeout_s > limit * s["wall_factor"] + s["eval_timeout_s"], name
        else:
            assert p.timeout_s > limit, name
    h1, h8 = task.preset("h100").settings, task.preset("8xh100").settings
    for k in ("target", "val_tokens", "seq_len", "vocab_size", "total_batch_size", "train_steps", "depth", "n_embd"):
        assert h1[k] == h8[k], k                       # the same run, spread over 8 GPUs


def test_notebook_is_clean_with_autolab_parameters():
    nb = json.loads((TASK_DIR / "benchmark.ipynb").read_text())
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    src = "".join(params[0]["source"])
    for line in ('candidate_dir = None', 'seed = 1', 'preset = "cpu-tiny"', 'result_path = "result.json"'):
        assert line in src, line
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None


def test_seed_imports_without_training(tmp_path):
    import importlib.util
    import time

    sys.path.insert(0, str(TASK_DIR))
    spec = importlib.util.spec_from_file_location("seed_mod", SEED)
    mod = importlib.util.module_from_spec(spec)
    t0 = time.process_time()
    spec.loader.exec_module(mod)                     # no $AUTOLAB_SPEEDRUN_CONFIG needed: the module trains nothing
    assert time.process_time() - t0 < 30             # CPU seconds (torch's import), not wall: the machine may be busy
    import torch

    model = mod.GPT(64, 16, 2, 32, 4)
    model.init_weights()
    logits = model(torch.randint(0, 64, (2, 16)))
    assert logits.shape == (2, 16, 64)
    G = torch.randn(3, 32, 48)
    O = mod.orthogonalize(G, 5)
    s = torch.linalg.svdvals(O)
    assert 0.5 < float(s.min()) and float(s.max()) < 1.3       # roughly orthogonal, as Muon needs


def _settings(src: str) -> dict[str, int]:
    tree = ast.parse(src)
    counts: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                counts[name] = counts.get(name, 0) + 1
    return counts


def test_every_playbook_edit_applies_to_the_seed():
    from autolab._implement import apply_setting_edit, check_compiles
    from autolab._propose import load_playbook

    src = SEED.read_text()
    settings = _settings(src)
    assert all(n == 1 for n in settings.values()), settings
    edits = load_playbook(TASK_DIR / "playbook.toml")
    assert len(edits) >= 12
    for e in edits:
        if e.op == "patch":
            continue   # code patches: tests/benchmarks/test_speedrun_playbook.py
        assert settings.get(e.setting) == 1, e.setting
        for v in e.values:
            new = apply_setting_edit(src, {"setting": e.setting, "op": e.op, "value": v, "cast": e.cast})
            assert new != src, (e.name, v)
            check_compiles({"train_gpt.py": new})


def test_seed_has_the_karpathy_shape():
    src = SEED.read_text()
    assert src.rstrip().endswith('if __name__ == "__main__":\n    main()'.rstrip())
    assert re.search(r"^# -{20,}\n# settings", src, re.M) and 'print("---")' in src
    assert "H.begin(" in src and "H.warmup_done(" in src and "H.finish(" in src
    assert "os.environ" not in src                    # the harness gives ranks and devices (H.init)
