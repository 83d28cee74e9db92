"""speedrun playbook patches ([[patch]] in benchmarks/speedrun/playbook.toml): each applies to the
live seed, alone and all stacked, and names its source; the patched model stays causal, trains
a step with every parameter optimized (the FP8 path is CUDA-only and guarded: on the CPU the
model keeps its fp32 path). A run of all of them stacked through the real harness on cpu-smoke
is bound by the harness's wall clock on a crowded machine, so it is run by hand, not here."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from autolab._propose import apply_patch, load_playbook

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "speedrun"
SEED = REPO / "seeds" / "speedrun" / "train_gpt.py"
PATCHES = [e for e in load_playbook(TASK_DIR / "playbook.toml") if e.op == "patch"]


def _patched(*edits) -> str:
    text = SEED.read_text()
    for e in edits:
        text = apply_patch(text, e.patch, path="train_gpt.py")
    return text


def test_the_patches_apply_alone_and_stacked_and_name_their_sources():
    assert {"fp8_attention_projections", "muon_annealed_noise", "cautious_embedding_adam", "relu2_recompute",
            "window_pyramid"} <= {e.name for e in PATCHES}
    for e in PATCHES:
        assert e.file == "train_gpt.py" and e.source and e.hypothesis, e.name
        compile(_patched(e), "train_gpt.py", "exec")
    compile(_patched(*PATCHES), "train_gpt.py", "exec")


@pytest.mark.parametrize("e", PATCHES, ids=lambda e: e.name)
def test_patched_model_is_causal_and_fully_optimized(e, tmp_path, monkeypatch):
    path = tmp_path / "train_gpt.py"
    path.write_text(_patched(e))
    monkeypatch.setitem(sys.modules, "speedrun_harness", types.ModuleType("speedrun_harness"))
    spec = importlib.util.spec_from_file_location(f"patched_{e.name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.GPT(vocab_size=64, seq_len=24, depth=3, n_embd=32, n_head=2)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, 64, (2, 24))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])
    loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    adam, muon = mod.build_optimizers(model, types.SimpleNamespace(rank=0, world_size=1))
    optimized = {id(p) for opt in (adam, muon) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in optimized for p in model.parameters())
    mod.set_schedule(adam, muon, 0.5, 10)
    adam.step()
    muon.step()
    assert torch.isfinite(model(idx, idx))


def test_relu2_backward_matches_autograd(monkeypatch):
    text = _patched(next(e for e in PATCHES if e.name == "relu2_recompute"))
    ns = {"__name__": "relu2_check"}
    monkeypatch.setitem(sys.modules, "speedrun_harness", types.ModuleType("speedrun_harness"))
    exec(compile(text, "train_gpt.py", "exec"), ns)
    h = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ns["ReLU2"].apply, (h,))
