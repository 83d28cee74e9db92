"""The nanochat seed (seeds/nanochat/train.py) and its playbook (benchmarks/nanochat/playbook.toml).

No network, no GPU. The seed talks to the protected harness only through
`import nanochat_harness as H`; most tests use a small fake harness (random tokens), written
into a temp dir by a fixture. If the real harness exists, one test also runs the seed through it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "seeds" / "nanochat" / "train.py"
PLAYBOOK = REPO / "benchmarks" / "nanochat" / "playbook.toml"
REAL_HARNESS = REPO / "benchmarks" / "nanochat" / "nanochat_harness" / "__init__.py"

FAKE_HARNESS = textwrap.dedent('''
    """A stand-in for nanochat_harness: random tokens, a wall clock started by the loader."""
    import json, os, time
    import torch

    _t0 = None

    def config():
        return json.loads(os.environ["FAKE_NANOCHAT_CONFIG"])

    class _Loader:
        """Random rows; `epoch` counts passes over a pretend train split of `epoch_batches` batches."""

        def __init__(self, batch_size, seq_len, device):
            self.shape, self.device, self.batches, self.epoch = (batch_size, seq_len + 1), device, 0, 0
            self.g = torch.Generator().manual_seed(config()["seed"])

        def __iter__(self):
            return self

        def __next__(self):
            global _t0
            if _t0 is None:
                _t0 = time.time()
            d = torch.randint(1, config()["vocab_size"], self.shape, generator=self.g)
            d[:, 0] = config()["bos_id"]
            self.batches += 1
            self.epoch = self.batches // config().get("epoch_batches", 10**9)
            return d[:, :-1].contiguous().to(self.device), d[:, 1:].contiguous().to(self.device)

    def train_loader(batch_size, seq_len, device):
        return _Loader(batch_size, seq_len, device)

    def elapsed():
        return 0.0 if _t0 is None else time.time() - _t0

    def time_left():
        return config()["budget_s"] - elapsed()

    def log(step, loss, **extra):
        with open(os.environ["FAKE_NANOCHAT_OUT"] + ".curve", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": loss, **extra}) + "\\n")

    def finish(model, init_kwargs, factory=None):
        # the real harness's format: a weights-only state dict, and how to rebuild the model as JSON
        torch.save(model.state_dict(), os.environ["FAKE_NANOCHAT_OUT"])
        with open(os.environ["FAKE_NANOCHAT_OUT"] + ".json", "w") as fh:
            json.dump({"factory": factory or type(model).__name__, "init_kwargs": init_kwargs}, fh)
''')

# Rebuilds the model a script saved when it ran as __main__, in another process that imports the
# seed as a module (what the harness's model process does): factory(**init_kwargs), then the
# weights, loaded weights-only.
LOAD_MODEL = textwrap.dedent('''
    import importlib.util, json, sys, torch
    spec = importlib.util.spec_from_file_location("seed_train", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    how = json.load(open(sys.argv[2] + ".json"))
    model = getattr(mod, how["factory"])(**how["init_kwargs"])
    model.load_state_dict(torch.load(sys.argv[2], weights_only=True), strict=True)
    model.eval()
    idx = torch.randint(0, int(sys.argv[3]), (2, 16))
    with torch.no_grad():
        print(tuple(model(idx).shape))
''')

TINY = dict(device="cpu", seed=1, budget_s=1.5, vocab_size=256, seq_len=32, bos_id=0,
            depth=2, n_embd=32, n_head=2, batch_size=4, threads=1)


@pytest.fixture
def fake_harness(tmp_path):
    """A folder holding a fake `nanochat_harness` package, for PYTHONPATH."""
    pkg = tmp_path / "fake" / "nanochat_harness"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_HARNESS)
    return pkg.parent


@pytest.fixture
def seed(monkeypatch):
    """train.py imported as a module (as the evaluation process does), with a stub harness."""
    monkeypatch.setitem(sys.modules, "nanochat_harness", types.ModuleType("nanochat_harness"))
    spec = importlib.util.spec_from_file_location("nanochat_seed_train", SEED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_model(seed, **kw):
    args = dict(vocab_size=64, seq_len=24, depth=2, n_embd=32, n_head=2, mlp_ratio=4, qk_norm=True,
                relu2=True, softcap=15.0, value_embeds=True, x0_skip=True)
    args.update(kw)
    torch.manual_seed(0)
    model = seed.GPT(**args)
    model.init_weights()
    # zero-initialized output projections hide leaks; give every weight a random value
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ----------------------------------------------------------------------------- model


def test_import_as_module_runs_nothing(seed):
    assert seed.cfg == {} and isinstance(seed.DEPTH, int)
    for name in ("GPT", "Block", "Attention", "MLP", "Rotary", "Muon"):
        assert getattr(seed, name).__module__ == "nanochat_seed_train"  # module-level classes


@pytest.mark.parametrize("kw", [{}, dict(qk_norm=False, relu2=False, softcap=0.0, value_embeds=False, x0_skip=False)])
def test_forward_returns_logits_and_loss(seed, kw):
    model = tiny_model(seed, **kw)
    idx = torch.randint(0, 64, (3, 24))
    logits = model(idx)
    assert logits.shape == (3, 24, 64) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    loss = model(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()


def test_model_is_causal(seed):
    model = tiny_model(seed)
    idx = torch.randint(0, 64, (2, 24))
    t = 10
    changed = idx.clone()
    changed[:, t:] = torch.randint(0, 64, (2, 24 - t))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5)
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_longer_eval_sequence_than_training(seed):
    model = tiny_model(seed, seq_len=8)
    assert model(torch.randint(0, 64, (1, 20))).shape == (1, 20, 64)


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (4, 48, 48)])
def test_orthogonalize_gives_near_orthogonal_updates(seed, shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    O = seed.orthogonalize(G, steps=5)
    assert O.shape == G.shape
    s = torch.linalg.svdvals(O)
    # singular values pushed towards 1 (the quintic iteration is loose by design: about 0.7 to 1.2,
    # a matrix's very smallest singular values converge last)
    assert s.max() < 1.3 and s.quantile(0.05) > 0.6, s
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    exact = U @ Vh
    cos = (O * exact).sum(dim=(-2, -1)) / (O.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert (cos > 0.95).all(), cos  # and it is close to the exact polar factor U V^T


def test_muon_step_moves_each_matrix_by_an_orthogonal_update(seed):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(32, 16)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(2, 16, 16))]
    before = [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = seed.Muon(ps, lr=0.1, momentum=0.9, ns_steps=5, weight_decay=0.0)
    opt.step()
    for p, b in zip(ps, before):
        delta = (p.detach() - b).reshape(-1, *p.shape[-2:])
        s = torch.linalg.svdvals(delta)
        rows, cols = p.shape[-2:]
        expected = 0.1 * max(1.0, rows / cols) ** 0.5
        assert s.min() > 0.4 * expected and s.max() < 1.4 * expected


def test_lr_schedule_is_time_based(seed, monkeypatch):
    monkeypatch.setattr(seed, "WARMUP_FRAC", 0.1)
    monkeypatch.setattr(seed, "WARMDOWN_FRAC", 0.5)
    monkeypatch.setattr(seed, "FINAL_LR_FRAC", 0.0)
    assert seed.lr_multiplier(0.0) == pytest.approx(0.01)
    assert seed.lr_multiplier(0.05) == pytest.approx(0.5)
    assert seed.lr_multiplier(0.3) == 1.0
    assert seed.lr_multiplier(0.75) == pytest.approx(0.5)
    assert seed.lr_multiplier(1.0) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- playbook


def apply_edit(text: str, setting: str, op: str, value=None, cast: str = "float") -> str:
    """Rewrite the one top-level line `SETTING = <expr>  # comment` (a local stand-in for the implementer)."""
    pat = re.compile(rf"^({re.escape(setting)})\s*=\s*(.+?)(\s+#.*)?$", re.M)
    matches = list(pat.finditer(text))
    assert len(matches) == 1, f"{setting}: {len(matches)} top-level assignments"
    m = matches[0]
    old = m.group(2).strip()
    if op == "scale":
        new = f"max(1, int(round(({old}) * {float(value)!r})))" if cast == "int" else f"({old}) * {float(value)!r}"
    elif op == "set":
        new = repr(value)
    else:
        assert old in ("True", "False"), f"{setting} = {old} is not a boolean literal"
        new = "False" if old == "True" else "True"
    return text[:m.start()] + f"{setting} = {new}{m.group(3) or ''}" + text[m.end():]


def playbook_edits():
    return tomllib.loads(PLAYBOOK.read_text())["edit"]


def test_playbook_format():
    edits = playbook_edits()
    assert 12 <= len(edits) <= 30
    names = [e["name"] for e in edits]
    assert len(names) == len(set(names))
    for e in edits:
        assert {"name", "title", "hypothesis", "setting", "op", "direction", "prior"} <= set(e), e["name"]
        assert e["op"] in ("scale", "set", "toggle")
        assert e["direction"] in ("optimizer", "architecture", "schedule", "systems", "data")
        assert (e["op"] == "toggle") == ("values" not in e), e["name"]
        if e["op"] == "scale":
            assert e.get("cast", "float") in ("float", "int")
        assert set(e.get("devices", [])) <= {"cpu", "cuda"}, e["name"]


def test_attention_kernel_choice(seed, monkeypatch):
    """ATTN_BACKEND = "cudnn" puts cuDNN's kernel first in SDPA's order for the run (the others stay
    as fallbacks) and restores the order after; "default" and CPU presets leave it alone."""
    from torch.nn.attention import SDPBackend

    before = torch._C._get_sdp_priority_order()
    monkeypatch.setattr(seed, "DEVICE", "cuda")
    monkeypatch.setattr(seed, "ATTN_BACKEND", "cudnn")
    with seed.attention_kernels():
        order = torch._C._get_sdp_priority_order()
        assert order[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert set(order) >= {int(b) for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)}
    assert torch._C._get_sdp_priority_order() == before
    monkeypatch.setattr(seed, "ATTN_BACKEND", "default")
    with seed.attention_kernels():
        assert torch._C._get_sdp_priority_order() == before
    monkeypatch.setattr(seed, "DEVICE", "cpu")
    monkeypatch.setattr(seed, "ATTN_BACKEND", "cudnn")
    with seed.attention_kernels():
        assert torch._C._get_sdp_priority_order() == before


def test_playbook_settings_exist_once_and_every_edit_applies(seed):
    text = SEED.read_text()
    top_level = {t.id for node in ast.parse(text).body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)}
    for e in playbook_edits():
        s = e["setting"]
        assert s.isupper() and s in top_level, s
        assert len(re.findall(rf"^{s}\s*=", text, re.M)) == 1, s
        for v in e.get("values", [None]):
            new = apply_edit(text, s, e["op"], v, e.get("cast", "float"))
            assert new != text
            ast.parse(new)
            # the rewritten setting still evaluates (with the module's own defaults)
            ns = {}
            exec(compile(new.split("# ---------------------------------------------------------------------------\n# model")[0]
                         .replace("import nanochat_harness as H", ""), "train.py", "exec"), ns)
            if e["op"] == "scale" and e.get("cast") == "int":
                assert isinstance(ns[s], int) and ns[s] >= 1


# ----------------------------------------------------------------------------- end to end


def run_seed(harness_dir, tmp_path, script: Path, **overrides):
    out = tmp_path / "model.pt"
    env = dict(os.environ, PYTHONPATH=str(harness_dir), FAKE_NANOCHAT_OUT=str(out),
               FAKE_NANOCHAT_CONFIG=json.dumps({**TINY, **overrides}))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "---" in lines, proc.stdout[-2000:]
    summary = lines[len(lines) - lines[::-1].index("---"):]  # the `key: value` lines after the last `---`
    fields = dict(line.split(": ", 1) for line in summary)
    return out, fields


def test_seed_runs_end_to_end_with_fake_harness(fake_harness, tmp_path):
    out, fields = run_seed(fake_harness, tmp_path, SEED)
    for key in ("training_seconds", "total_seconds", "steps", "tokens", "tokens_per_s", "peak_mem_mb", "num_params", "depth"):
        assert key in fields, key
    assert int(fields["steps"]) > 3 and int(fields["depth"]) == 2
    assert 1.0 < float(fields["training_seconds"]) < 4.0
    assert int(fields["tokens"]) == int(fields["steps"]) * 4 * 32
    curve = [json.loads(x) for x in (tmp_path / "model.pt.curve").read_text().splitlines()]
    assert curve and all(c["loss"] == c["loss"] for c in curve)
    # the saved model loads in another process that imports train.py as a module
    loaded = subprocess.run([sys.executable, "-c", LOAD_MODEL, str(SEED), str(out), "256"],
                            env=dict(os.environ, PYTHONPATH=str(fake_harness)), capture_output=True, text=True,
                            timeout=60)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == "(2, 16, 256)"


def test_seed_runs_with_every_switch_flipped(fake_harness, tmp_path):
    text = SEED.read_text()
    for s in ("QK_NORM", "RELU2", "LOGIT_SOFTCAP", "VALUE_EMBEDS", "X0_SKIP"):
        text = apply_edit(text, s, "toggle")
    text = apply_edit(text, "BATCH_SIZE", "scale", 2.0, "int")
    text = apply_edit(text, "MICRO_BATCH", "set", 4)  # gradient accumulation: 2 micro-batches per step
    script = tmp_path / "train.py"
    script.write_text(text)
    _, fields = run_seed(fake_harness, tmp_path, script, budget_s=1.0)
    assert int(fields["steps"]) >= 1
    assert int(fields["tokens"]) == int(fields["steps"]) * 8 * 32


CORPUS = REPO.parent / "shared" / "data" / "techtext"


@pytest.mark.skipif(not REAL_HARNESS.exists(), reason="the real nanochat harness is not there yet")
@pytest.mark.skipif(not (CORPUS / "manifest.json").exists() and not os.environ.get("AUTOLAB_DATA"),
                    reason="no techtext corpus here")
def test_seed_runs_with_real_harness(tmp_path, monkeypatch):
    """The seed through the real harness (data, sandbox, clock, evaluation), shrunk to a few seconds:
    a small tokenizer and train subset (cached by the harness), 3 s of training, a short evaluation."""
    monkeypatch.syspath_prepend(str(REAL_HARNESS.parent.parent))
    from nanochat_harness.runner import run_benchmark

    overrides = dict(budget_s=3, vocab_size=512, tokenizer_train_bytes=300_000, train_bytes=300_000,
                     eval_tokens=2048, depth=1, n_embd=64, n_head=2, batch_size=8, total_batch_size=2048,
                     allowance_s=40)   # start-up on a crowded machine
    res = run_benchmark(None, 1, "cpu-tiny", tmp_path / "r.json", overrides=overrides, echo=False)
    assert res["status"] == "ok", res["reason"]
    assert 1.0 < res["metrics"]["val_bpb"] < 10.0
    assert res["summary"]["depth"] == 1 and res["summary"]["steps"] >= 1
    assert res["probes"]["causality"]["passed"]


def test_forward_under_bf16_autocast(seed):
    """The CUDA path runs under bf16 autocast; on CPU the same code must keep q, k, v in one dtype."""
    model = tiny_model(seed)
    idx = torch.randint(0, 64, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model(idx, idx)
    assert logits.dtype == torch.float32 and torch.isfinite(loss)


def test_max_epochs_ends_the_schedule_early(fake_harness, tmp_path):
    """Data-constrained runs: once an epoch's duration is known, training stops after MAX_EPOCHS of them."""
    script = tmp_path / "train.py"
    script.write_text(apply_edit(SEED.read_text(), "MAX_EPOCHS", "set", 3.0))
    _, fields = run_seed(fake_harness, tmp_path, script, budget_s=40.0, epoch_batches=4, depth=1, n_embd=16,
                         seq_len=16, batch_size=2, total_batch_size=32)
    assert float(fields["training_seconds"]) < 20.0
    assert 4 <= int(fields["steps"]) <= 20  # about MAX_EPOCHS x the 3 steps of the first epoch
