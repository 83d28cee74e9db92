"""speedrun harness, in-process parts: the record rule on synthetic numbers, the fixed number of
validation tokens, the state fingerprint and restore, the outside clock check and the probes
read from the harness records. Fast: no training run, no sandbox."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "speedrun"
sys.path.insert(0, str(TASK_DIR))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from speedrun_harness import metric as M  # noqa: E402
from speedrun_harness import state as S  # noqa: E402
from speedrun_harness.record import counted, one_sample_below, record_rule  # noqa: E402
from speedrun_harness.runner import clock_check, harness_probes, pause_check  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the record rule

def _res(loss, status="ok", reason="", t=10.0, probes=None):
    return {"status": status, "reason": reason, "target": 3.28, "metrics": {"val_loss": loss},
            "timings": {"timed_s": t}, "probes": probes or {}}


def test_one_sample_t_test_matches_scipy():
    from scipy import stats

    xs = [3.271, 3.274, 3.269, 3.276, 3.272]
    t, p = one_sample_below(xs, 3.28)
    ref = stats.ttest_1samp(xs, 3.28, alternative="less")
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert one_sample_below([3.2], 3.28) == (None, None)
    assert one_sample_below([3.2, 3.2], 3.28) == (-math.inf, 0.0)


def test_record_rule_on_synthetic_runs():
    # clearly below the target: a record, time = mean of the same runs
    r = record_rule([_res(3.270, t=10), _res(3.272, t=12), _res(3.268, t=11)], alpha=0.01)
    assert r["record"] and r["p_value"] < 0.01 and r["n"] == 3
    assert r["mean_time_s"] == pytest.approx(11.0) and r["mean_val_loss"] == pytest.approx(3.270)
    # below on average but not significantly (n = 3 needs ~4 sd of margin)
    r = record_rule([_res(3.279), _res(3.275), _res(3.281, "failed", "target not reached: final val_loss")])
    assert not r["record"] and r["n"] == 3 and 0.01 < r["p_value"] < 0.5
    # a run that missed the target still counts (no survivorship bias), a crashed one does not
    assert counted(_res(3.30, "failed", "target not reached: final val_loss 3.30 > target 3.28"))
    assert not counted(_res(3.20, "failed", "train_gpt.py ended with exit code 1"))
    assert not counted({"status": "killed", "metrics": {}, "timings": {}})
    r = record_rule([_res(3.27), _res(3.27), _res(3.29, "failed", "target not reached: x")])
    assert r["n"] == 3 and not r["record"]
    # a failed probe voids the record whatever the numbers
    bad = {"reset_verified": {"passed": False, "detail": "state differs"}}
    r = record_rule([_res(3.20), _res(3.21, probes=bad), _res(3.20)])
    assert not r["record"] and r["failed_probes"] == ["reset_verified"]
    assert not record_rule([_res(3.2)])["record"]                       # one run proves nothing


def test_task_significance_is_the_record_rule():
    from autolab.task import load_task

    task = load_task(TASK_DIR)
    sig = task.significance
    assert sig.test == "one_sample_below_target" and sig.alpha == 0.01
    assert task.metric.name == "time_s" and task.metric.direction == "minimize"
    assert task.raw["significance"]["metric"] == "val_loss"
    for name in ("cpu-tiny", "h100", "8xh100"):
        assert "target" in task.preset(name).settings, name
    assert sig.target == task.preset(task.default_preset).settings["target"]
    assert task.preset("8xh100").gpus == 8 and task.preset("h100").gpus == 1


# ----------------------------------------------------------------------------- validation tokens

class _Tiny(nn.Module):
    def __init__(self, vocab=64, d=16):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)

    def forward(self, idx):
        return self.head(torch.cumsum(self.emb(idx), dim=1) / torch.arange(1, idx.shape[1] + 1)[:, None])


def _corpus(seed=0, docs=200, vocab=64):
    g = np.random.default_rng(seed)
    lens = g.integers(5, 60, docs)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return g.integers(1, vocab, offsets[-1]).astype(np.uint16), offsets


@pytest.mark.parametrize("batch_rows", [1, 5, 16, 64])
def test_val_token_count_is_fixed_and_loss_is_exact(batch_rows):
    tokens, offsets = _corpus()
    cfg = {"seq_len": 32, "val_tokens": 32 * 40, "bos_id": 0, "doc_chunk_tokens": 32, "pack_buffer": 16}
    rows = M.fixed_rows(tokens, offsets, cfg)
    assert rows.shape == (40, 33) and (rows[:, 0] == 0).all()
    assert np.array_equal(rows, M.fixed_rows(tokens, offsets, cfg))          # the same rows every time
    torch.manual_seed(0)
    model = _Tiny()
    res = M.loss_over_rows(model, rows, "cpu", 64, batch_rows)
    assert res["tokens"] == cfg["val_tokens"]
    t = torch.from_numpy(rows)
    ref = F.cross_entropy(model(t[:, :-1]).reshape(-1, 64), t[:, 1:].reshape(-1)).item()
    assert res["loss"] == pytest.approx(ref, rel=1e-5)
    # every process's share, as loss_over_rows splits it, covers each row once
    for w in (2, 3, 8):
        shares = [rows[r::w] for r in range(w)]
        assert sum(len(s) for s in shares) == len(rows)
    with pytest.raises(ValueError, match="multiple of seq_len"):
        M.n_rows({"seq_len": 32, "val_tokens": 1000})
    with pytest.raises(ValueError, match="fewer than"):
        M.fixed_rows(tokens, offsets, {**cfg, "val_tokens": 32 * 10_000})


def test_logits_contract():
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="expected"):
        M.logits_of(lambda i: torch.zeros(2, 8, 10), x, 64)
    with pytest.raises(ValueError, match="tensor"):
        M.logits_of(lambda i: (torch.zeros(2, 8, 64),), x, 64)


# ----------------------------------------------------------------------------- state: fingerprint and restore

def test_fingerprint_sees_training_and_restore_undoes_it():
    torch.manual_seed(0)
    model = _Tiny()
    model.register_buffer("scratch", torch.zeros(3), persistent=False)
    adam = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sgd = torch.optim.SGD([model.head.bias], lr=0.1, momentum=0.9)
    fp0 = S.fingerprint(model, [adam, sgd])
    snap = S.snapshot(model, [adam, sgd])
    assert S.fingerprint(model, [adam, sgd]) == fp0
    x = torch.randint(0, 64, (4, 8))
    for _ in range(2):
        model(x).sum().backward()
        adam.step()
        sgd.step()
    model.scratch += 1
    fp1 = S.fingerprint(model, [adam, sgd])
    assert fp1["model_sha256"] != fp0["model_sha256"] and fp1["optim_sha256"] != fp0["optim_sha256"]
    assert fp1["n_nonzero_grads"] > 0                                     # gradients left over are seen
    # a reset of the weights only still shows in the optimizer state
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(snap["params"][n])
    fp2 = S.fingerprint(model, [adam, sgd])
    assert fp2["optim_sha256"] != fp0["optim_sha256"]
    S.restore(model, [adam, sgd], snap)
    fp3 = S.fingerprint(model, [adam, sgd])
    assert fp3["sha256"] == fp0["sha256"] and fp3["n_nonzero_grads"] == 0
    assert not adam.state and not sgd.state
    # a learning rate changed during the warm-up is part of the state too
    adam.param_groups[0]["lr"] = 0.5
    assert S.fingerprint(model, [adam, sgd])["optim_sha256"] != fp0["optim_sha256"]


def test_unwrap_compiled_module():
    model = _Tiny()
    wrapped = type("OptimizedModule", (nn.Module,), {})()
    wrapped._orig_mod = model
    assert S.unwrap(wrapped) is model and S.unwrap(model) is model


# ----------------------------------------------------------------------------- the outside clock check

def _stamps(start=5.0, pauses=((10.0, 11.0), (20.0, 21.5)), stop=30.0):
    out = [{"ev": "clock_start", "t_out": start}]
    for a, b in pauses:
        out += [{"ev": "val_start", "t_out": a}, {"ev": "val_end", "t_out": b}]
    return out + [{"ev": "clock_stop", "t_out": stop}]


def test_clock_check():
    ok = clock_check(_stamps(), reported_s=22.5, allowance_s=20, tol_s=0.5)
    assert ok["passed"] and ok["outside_s"] == pytest.approx(22.5), ok
    fast = clock_check(_stamps(), reported_s=15.0, allowance_s=20, tol_s=0.5)   # a clock that runs slow
    assert not fast["passed"] and "runner saw" in fast["detail"]
    late = clock_check(_stamps(start=45.0, pauses=(), stop=70.0), reported_s=25.0, allowance_s=20, tol_s=0.5)
    assert not late["passed"] and "after launch" in late["detail"]           # hidden work before the clock
    assert not clock_check([{"ev": "clock_start", "t_out": 1}], 1.0, 20, 0.5)["passed"]
    # the sandbox's own measure of the process: a life far longer than the clock plus the allowances
    assert clock_check(_stamps(), 22.5, 20, 0.5, wall_s=40.0, untimed_max_s=40)["passed"]
    long = clock_check(_stamps(), 22.5, 20, 0.5, wall_s=90.0, untimed_max_s=40)
    assert not long["passed"] and "more than the clock ran" in long["detail"]


def test_clock_tolerance_is_relative_as_well_as_absolute():
    """0.59 s hidden of a 5.17 s run is under a 1.5 s absolute tolerance, but 11% of the run."""
    stamps = _stamps(start=5.0, pauses=(), stop=5.0 + 5.17)
    assert clock_check(stamps, 5.17, 20, 1.5)["passed"]
    assert clock_check(stamps, 5.17 - 0.05, 20, 1.5)["passed"]                 # polling jitter passes
    hidden = clock_check(stamps, 5.17 - 0.59, 20, 1.5)
    assert not hidden["passed"] and "runner saw" in hidden["detail"] and hidden["tolerance_s"] < 0.59
    # a long run keeps the absolute tolerance
    assert clock_check(_stamps(start=5.0, pauses=(), stop=205.0), 199.2, 20, 1.0)["passed"]
    assert not clock_check(_stamps(start=5.0, pauses=(), stop=205.0), 198.0, 20, 1.0)["passed"]


def test_pauses_must_be_validations():
    # two pauses but one validation recorded: a pause that is not a validation stopped the clock
    extra = clock_check(_stamps(), 22.5, 20, 0.5, validations=1)
    assert not extra["passed"] and "paused 2 times but 1 validations" in extra["detail"]
    assert clock_check(_stamps(), 22.5, 20, 0.5, validations=2)["passed"]
    # pauses beyond the validation allowance
    assert not clock_check(_stamps(pauses=((10.0, 20.0),), stop=40.0), 25.0, 20, 0.5, validations=1,
                           val_allowance_s=5.0)["passed"]
    # pauses before the clock's start or after its stop are not subtracted
    pre = [{"ev": "val_start", "t_out": 1.0}, {"ev": "val_end", "t_out": 4.0}] + _stamps(pauses=())
    assert clock_check(pre, 25.0, 20, 0.5)["outside_s"] == pytest.approx(25.0)
    # each pause is bounded by the trusted side's own pass over the val rows
    ok = clock_check(_stamps(), 22.5, 20, 0.5, validations=2)
    assert pause_check(ok, val_pass_s=0.4)["passed"]                          # 1.0 and 1.5 s <= 3 x 0.4 + 1
    slow = pause_check(ok, val_pass_s=0.1)
    assert not slow["passed"] and "longer than 3x" in slow["detail"]


def _record(rank=0, **kw):
    rec = {"rank": rank, "reset": {"passed": True, "ranks": [], "restored_by_harness": True},
           "begin": {"sha256": "x"}, "init_loss": 7.7,
           "validations": [{"i": 0, "tokens": 1024, "val_loss": 5.0}],
           "final": {"tokens": 1024, "target": 4.5, "val_loss": 4.4},
           "config_seen": {"target": 4.5, "val_tokens": 1024}, "batches_outside": 0,
           "clock_intact": {"passed": True, "replaced": []}}
    rec.update(kw)
    return rec


def test_harness_probes():
    kw = dict(world_size=1, target=4.5, val_tokens=1024, vocab_size=2048, budget_s=60, init_slack=1.0)
    assert all(p["passed"] for p in harness_probes([_record()], **kw).values())
    fewer = _record(validations=[{"i": 0, "tokens": 256, "val_loss": 3.0}])
    assert not harness_probes([fewer], **kw)["val_tokens"]["passed"]
    moved = _record(config_seen={"target": 9.0, "val_tokens": 1024})
    assert not harness_probes([moved], **kw)["target_unchanged"]["passed"]
    trained = _record(init_loss=3.0)
    assert not harness_probes([trained], **kw)["init_untrained"]["passed"]
    noreset = _record(reset={"passed": False, "ranks": [{"rank": 0}]})
    assert not harness_probes([noreset], **kw)["reset_verified"]["passed"]
    assert not harness_probes([_record(reset=None)], **kw)["reset_verified"]["passed"]
    outside = _record(batches_outside=3)
    assert not harness_probes([outside], **kw)["train_data_in_clock"]["passed"]
    early = _record(train_reads=[{"phase": "warmup", "path": "/data/train.tokens.npy"}])
    probe = harness_probes([early], **kw)["train_data_in_clock"]
    assert not probe["passed"] and "before the clock started" in probe["detail"]
    timed = _record(train_reads=[{"phase": "timed", "path": "/data/train.tokens.npy"}])
    assert harness_probes([timed], **kw)["train_data_in_clock"]["passed"]
    patched = _record(clock_intact={"passed": False, "replaced": ["time.perf_counter"]})
    assert not harness_probes([patched], **kw)["clock_intact"]["passed"]
    missing = harness_probes([_record()], **{**kw, "world_size": 2})
    assert not missing["records"]["passed"]


def test_train_reads_outside_the_loader_are_recorded_with_their_phase(tmp_path):
    """The harness's audit hook, in a fresh process with a run configuration: an open of the train
    split's files by the candidate is recorded with the phase; H.train_loader's own open is not."""
    tokens, offsets = tmp_path / "train.tokens.npy", tmp_path / "train.offsets.npy"
    np.save(tokens, np.arange(4096, dtype=np.uint16))
    np.save(offsets, np.array([0, 4096], dtype=np.int64))
    cfg = tmp_path / "run.json"
    cfg.write_text(__import__("json").dumps({"data": {"train": {"tokens": str(tokens), "offsets": str(offsets)}},
                                             "seed": 0, "device": "cpu", "threads": 1, "bos_id": 0,
                                             "seq_len": 16, "record_dir": str(tmp_path)}))
    code = f"""
import sys, json, numpy as np
sys.path.insert(0, {str(TASK_DIR)!r})
import speedrun_harness as H
H._S.phase = "warmup"                                  # as after H.begin
np.load({str(tokens)!r}, mmap_mode="r")                # the candidate reads the train tokens itself
H._S.phase = "timed"
H._Loader(2, 16).close()                               # the harness's loader opens the split: allowed
print(json.dumps(H._S.train_reads))
"""
    env = {**__import__("os").environ, "AUTOLAB_SPEEDRUN_CONFIG": str(cfg)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    reads = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert reads and all(r == {"phase": "warmup", "path": str(tokens.resolve())} for r in reads)  # np.load opens it more than once


def test_import_is_light():
    code = ("import sys; sys.path.insert(0, %r); import speedrun_harness; "
            "print(sorted(m for m in ('torch', 'numpy', 'tokenizers', 'pyarrow') if m in sys.modules))") % str(TASK_DIR)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
