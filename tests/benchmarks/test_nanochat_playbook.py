"""nanochat playbook patches ([[patch]] in benchmarks/nanochat/playbook.toml): each applies to
the live seed, names its source, keeps the model causal with every new parameter optimized, and
trains end to end (as __main__, on the fake harness of tests/seeds/test_nanochat_seed.py) to a
saved model that another process rebuilds from its init_kwargs and weights."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from autolab._propose import apply_patch, load_playbook

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "seeds" / "nanochat" / "train.py"
PLAYBOOK = REPO / "benchmarks" / "nanochat" / "playbook.toml"


def _seed_tests():
    """tests/seeds/test_nanochat_seed.py, for its fake harness and model loader (not re-run here)."""
    spec = importlib.util.spec_from_file_location("nanochat_seed_tests", REPO / "tests" / "seeds" / "test_nanochat_seed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PATCHES = [e for e in load_playbook(PLAYBOOK) if e.op == "patch"]


def _patched(e) -> str:
    return apply_patch(SEED.read_text(), e.patch, path="train.py")


def test_the_patches_apply_and_name_their_sources():
    names = {e.name for e in PATCHES}
    assert {"ngram_hash_values", "token_shift", "byte_length_embedding", "ema_weights_for_eval", "z_loss",
            "weight_decay_ramp", "compile_max_autotune"} <= names
    for e in PATCHES:
        assert e.file == "train.py" and e.source and e.hypothesis, e.name
        new = _patched(e)
        assert new != SEED.read_text()
        compile(new, "train.py", "exec")


@pytest.mark.parametrize("e", PATCHES, ids=lambda e: e.name)
def test_patched_model_is_causal_and_fully_optimized(e, tmp_path, monkeypatch):
    path = tmp_path / "train.py"
    path.write_text(_patched(e))
    monkeypatch.setitem(sys.modules, "nanochat_harness", types.ModuleType("nanochat_harness"))
    spec = importlib.util.spec_from_file_location(f"patched_{e.name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kw = dict(vocab_size=64, seq_len=24, depth=2, n_embd=32, n_head=2, mlp_ratio=4, qk_norm=True, relu2=True,
              softcap=15.0, value_embeds=True, x0_skip=True)
    if "ngram_buckets" in inspect.signature(mod.GPT).parameters:
        kw["ngram_buckets"] = 64
    torch.manual_seed(0)
    model = mod.GPT(**kw)
    model.init_weights()
    with torch.no_grad():   # zero-initialized projections and gates would hide a leak
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if hasattr(model, "token_len"):
            model.token_len.copy_(torch.randint(0, 8, model.token_len.shape))
    model.eval()
    idx = torch.randint(0, 64, (2, 24))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])
    model.train()
    model(idx, idx).backward()
    adam, muon = mod.build_optimizers(model)
    optimized = {id(p) for opt in (adam, muon) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in optimized for p in model.parameters()), [n for n, p in model.named_parameters()
                                                                 if id(p) not in optimized]
    adam.step()
    muon.step()


DRIVER = r'''
import importlib.util, json, os, runpy, sys, torch
import nanochat_harness
for script in sys.argv[1:]:
    out = script[:-len("train.py")] + "model.pt"
    os.environ["FAKE_NANOCHAT_OUT"] = out
    nanochat_harness._t0 = None                     # a fresh clock for each script
    runpy.run_path(script, run_name="__main__")     # train as the harness's train process does
    spec = importlib.util.spec_from_file_location("rebuilt_" + str(abs(hash(script))), script)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    how = json.load(open(out + ".json"))
    model = getattr(mod, how["factory"])(**how["init_kwargs"])
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (2, 16)))
    print("REBUILT", script, tuple(logits.shape), bool(torch.isfinite(logits).all()), flush=True)
'''


def test_patched_scripts_train_and_rebuild(tmp_path):
    """Every patched train.py runs as __main__ (one process for all, torch imported once) and its
    saved model is rebuilt from init_kwargs and loaded weights-only with strict=True."""
    st = _seed_tests()
    pkg = tmp_path / "fake" / "nanochat_harness"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(st.FAKE_HARNESS)
    scripts = []
    for e in PATCHES:
        (tmp_path / e.name).mkdir()
        scripts.append(tmp_path / e.name / "train.py")
        scripts[-1].write_text(_patched(e))
    env = dict(os.environ, PYTHONPATH=str(pkg.parent), FAKE_NANOCHAT_CONFIG=json.dumps({**st.TINY, "budget_s": 0.5}))
    p = subprocess.run([sys.executable, "-c", DRIVER, *map(str, scripts)], env=env, capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rebuilt = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("REBUILT ")]
    assert [r[0] for r in rebuilt] == list(map(str, scripts))
    assert all(" ".join(r[1:]) == "(2, 16, 256) True" for r in rebuilt), rebuilt
    assert p.stdout.splitlines().count("---") == len(scripts)     # each printed its closing summary
