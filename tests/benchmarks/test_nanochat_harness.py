"""nanochat harness, run side: the metric, the probes, the candidate API, and real end-to-end
runs of a tiny throwaway candidate on cpu-tiny. GPU variants are marked ``gpu``."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "nanochat"
sys.path.insert(0, str(TASK_DIR))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nanochat_harness as H  # noqa: E402
from nanochat_harness import evaluate as E  # noqa: E402
from nanochat_harness import runner as R  # noqa: E402

torch.set_num_threads(1)
# the data cache of these runs: the repository's .cache/autolab, tests/conftest.py's default
# cache (so a fresh clone prepares the corpus and tokenizer once for the whole suite). It stays
# under the repository whatever $AUTOLAB_CACHE says: a folder on the Python path, which the
# sandbox lets the train process list (test_end_to_end_cpu_tiny's candidate finds the val
# caches next to the train split by listing that folder, and must be denied reading them)
SHARED_CACHE = REPO / ".cache" / "autolab"

# ----------------------------------------------------------------------------- a tiny throwaway candidate

CANDIDATE = '''
"""A tiny causal GPT, written for the harness tests (not the seed)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import nanochat_harness as H


class Block(nn.Module):
    def __init__(self, d, nh, causal=True):
        super().__init__()
        self.nh, self.causal = nh, causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.nh, C // self.nh).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, d, nh, depth, T, causal=True):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, nh, causal) for _ in range(depth))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


SNOOP = []  # the tests put evaluation files here: reading them must be denied


if __name__ == "__main__":
    cfg = H.config()
    import glob, os
    cache = os.path.dirname(cfg["data"]["token_bytes"])
    for p in SNOOP + ([p for pat in ("val-*.tokens.npy", "train-*.tokens.npy") for p in glob.glob(os.path.join(cache, pat))]
                      if SNOOP else []):
        try:
            print("SNOOP read", p, len(open(p, "rb").read()))
        except OSError as e:
            print("SNOOP denied", p, type(e).__name__)
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(int(cfg.get("threads", 1)))
    T, B = cfg["seq_len"], 8
    args = dict(vocab=cfg["vocab_size"], d=64, nh=4, depth=1, T=T)
    model = GPT(**args).to(cfg["device"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    step = tokens = 0
    for x, y in H.train_loader(B, T, cfg["device"]):
        if H.time_left() <= 0:
            break
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, tokens = step + 1, tokens + x.numel()
        H.log(step, loss.item())
    secs = H.elapsed()
    H.finish(model, args)
    print("---")
    print(f"steps: {step}")
    print(f"tokens: {tokens}")
    print(f"training_seconds: {secs:.3f}")
    print(f"tokens_per_s: {tokens / max(secs, 1e-9):.0f}")
    print("note: tiny test candidate")
'''


def _load_candidate_module(tmp_path: Path, src: str = CANDIDATE):
    d = tmp_path / "cand_mod"
    d.mkdir(exist_ok=True)
    (d / "train.py").write_text(src)
    return E.load_candidate(d)


@pytest.fixture(scope="module")
def gpt_cls(tmp_path_factory):
    return _load_candidate_module(tmp_path_factory.mktemp("gpt")).GPT


# ----------------------------------------------------------------------------- the metric

class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g) * 3)

    def forward(self, idx):
        return self.table[idx]


def _hand_bpb(model, rows: np.ndarray, token_bytes: np.ndarray) -> float:
    """Σ nats / (ln 2 · Σ bytes), every target one at a time, in float64 numpy."""
    nats = nbytes = 0.0
    with torch.no_grad():
        for row in rows:
            x = torch.from_numpy(row[:-1][None])
            logits = model(x)[0].double().numpy()
            for j, target in enumerate(row[1:]):
                b = int(token_bytes[target])
                if b == 0:
                    continue
                lv = logits[j]
                m = lv.max()
                nats += (m + math.log(np.exp(lv - m).sum())) - lv[target]
                nbytes += b
    return nats / (math.log(2) * nbytes)


def test_bpb_equals_hand_computation():
    V = 50
    rng = np.random.default_rng(0)
    rows = rng.integers(0, V, (6, 21)).astype(np.int64)
    rows[:, 0] = 0
    rows[:, 7] = 0                                         # BOS targets inside rows: excluded
    token_bytes = rng.integers(1, 5, V).astype(np.int64)
    token_bytes[0] = 0
    model = Bigram(V).eval()
    got = E.bits_per_byte(model, rows, torch.from_numpy(token_bytes), torch.device("cpu"), V, batch_rows=4)
    want = _hand_bpb(model, rows, token_bytes)
    assert got["finite"] and got["tokens"] == int((token_bytes[rows[:, 1:]] > 0).sum())
    assert got["bytes"] == int(token_bytes[rows[:, 1:]].sum())
    assert abs(got["bpb"] - want) < 1e-6 * want


def test_logits_probe_checks_shape_and_finiteness():
    V = 50
    rows = np.zeros((2, 9), dtype=np.int64)
    ok = E.logits_probe(Bigram(V), rows, torch.device("cpu"), V)
    assert ok["passed"] and ok["shape"] == [2, 8, V]
    short = E.logits_probe(Bigram(V), rows, torch.device("cpu"), V + 1)
    assert not short["passed"] and "expected (2, 8, 51)" in short["detail"]

    class Nan(Bigram):
        def forward(self, idx):
            return super().forward(idx) * float("nan")

    assert not E.logits_probe(Nan(V), rows, torch.device("cpu"), V)["passed"]


def test_causality_probe(gpt_cls):
    torch.manual_seed(0)
    causal = gpt_cls(97, 32, 4, 2, 64).eval()
    res = E.causality_probe(causal, torch.device("cpu"), 97, 64)
    assert res["passed"], res["detail"]
    leaky = gpt_cls(97, 32, 4, 2, 64, causal=False).eval()      # attends to the future
    res = E.causality_probe(leaky, torch.device("cpu"), 97, 64)
    assert not res["passed"] and "sees the future" in res["detail"]

    class NextToken(nn.Module):                               # peeks only at the very next token
        def __init__(self):
            super().__init__()
            self.inner = causal

        def forward(self, idx):
            out = self.inner(idx)
            nxt = torch.roll(idx, -1, dims=1)
            return out + 0.5 * F.one_hot(nxt, 97).float()

    assert not E.causality_probe(NextToken().eval(), torch.device("cpu"), 97, 64)["passed"]


# ----------------------------------------------------------------------------- the split evaluation

def _two_splits(V: int, T: int = 20, n: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    sets = {}
    for i, name in enumerate(("val", "hidden_val")):
        rows = rng.integers(1, V, (n + i, T + 1)).astype(np.int64)
        rows[:, 0] = 0
        rows[:, 9] = 0                                      # BOS targets inside rows: excluded
        sets[name] = rows
    token_bytes = rng.integers(1, 5, V).astype(np.int64)
    token_bytes[0] = 0
    return sets, token_bytes


def test_split_metric_equals_hand_computation():
    """Rows of both splits shuffled together into batches, padded to one shape, probe batches mixed
    in: each split's nats and bytes are still exactly those of its own rows."""
    V = 50
    sets, tb = _two_splits(V)
    model = Bigram(V).eval()
    res = E.split_metric(model, sets, torch.device("cpu"), V, batch_rows=4, token_bytes=torch.from_numpy(tb),
                         rng=np.random.default_rng(5), twins=2, repeats=2)
    for name, rows in sets.items():
        got = res[name]["nats"] / (math.log(2) * res[name]["bytes"])
        assert abs(got - _hand_bpb(model, rows, tb)) < 1e-6 * got, name
        assert res[name]["bytes"] == int(tb[rows[:, 1:]].sum())
        assert res[name]["tokens"] == int((tb[rows[:, 1:]] > 0).sum()) and res[name]["finite"]
    p = res["probes"]
    assert p["noise"] == 0.0 and p["cross_row"] == 0.0 and p["causal_max_rel"] == 0.0
    assert p["twin_rows"] == 8 and p["repeats"] == 2 and p["requests"] == 4 + 4     # 15 rows -> 4 batches of 4
    # without token bytes every target counts (speedrun's mean loss)
    plain = E.split_metric(model, sets, torch.device("cpu"), V, batch_rows=4, rng=np.random.default_rng(1))
    assert plain["val"]["tokens"] == sets["val"][:, 1:].size


def test_split_metric_probes_catch_future_memory_and_cross_row(gpt_cls):
    V, T = 97, 32
    sets, tb = _two_splits(V, T=T, n=12)
    torch.manual_seed(0)
    tbt = torch.from_numpy(tb)

    def run(model):
        res = E.split_metric(model.eval(), sets, torch.device("cpu"), V, batch_rows=4, token_bytes=tbt,
                             rng=np.random.default_rng(3), twins=3, repeats=2)
        return E.probes_from(res, {"passed": True, "detail": "", "tolerance": 1e-4}, torch.device("cpu"))

    honest = run(gpt_cls(V, 32, 4, 1, T))
    assert honest["causality"]["passed"] and honest["logits"]["passed"], honest
    assert not run(gpt_cls(V, 32, 4, 1, T, causal=False))["causality"]["passed"]   # sees the future

    class Memory(nn.Module):            # remembers every row it was asked about (state across calls)
        def __init__(self):
            super().__init__()
            self.inner, self.seen = gpt_cls(V, 32, 4, 1, T), set()

        def forward(self, idx):
            out = self.inner(idx)
            for r in range(idx.shape[0]):
                key = tuple(idx[r, :8].tolist())
                if key in self.seen:
                    out[r] = out[r] + F.one_hot(torch.roll(idx[r], -1), V).float()
                self.seen.add(key)
            return out

    mem = run(Memory())
    assert not (mem["logits"]["passed"] and mem["causality"]["passed"]), mem

    class CrossRow(nn.Module):           # mixes in the next row of the batch
        def __init__(self):
            super().__init__()
            self.inner = gpt_cls(V, 32, 4, 1, T)

        def forward(self, idx):
            out = self.inner(idx)
            return out + 0.5 * out.roll(1, dims=0)

    cross = run(CrossRow())
    assert not cross["logits"]["passed"] and "rows must not see each other" in cross["logits"]["detail"]


def test_non_finite_logits_in_a_probe_batch_fail_the_probes():
    """A model that answers rows it has seen before with a NaN: whichever of a metric batch and
    its probe variant comes second is hit. When it is the probe, the comparison is NaN, which now
    counts as infinitely far (max() used to drop it, and the run passed); when it is the metric
    batch, the logits are not finite. Either way the run fails."""
    V = 50
    sets, tb = _two_splits(V, n=8)

    class NanOnRepeat(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.seen = Bigram(V), set()

        def forward(self, idx):
            out = self.inner(idx).clone()
            for r in range(idx.shape[0]):
                key = tuple(idx[r, :3].tolist())       # twins share a row's start, repeats the whole row
                if key in self.seen:
                    out[r, 0, 0] = float("nan")
                self.seen.add(key)
            return out

    only_probes = 0
    for seed in range(12):
        res = E.split_metric(NanOnRepeat().eval(), sets, torch.device("cpu"), V, batch_rows=4,
                             token_bytes=torch.from_numpy(tb), rng=np.random.default_rng(seed), twins=2, repeats=2)
        probes = E.probes_from(res, {"passed": True, "detail": "", "tolerance": 1e-4}, torch.device("cpu"))
        finite = res["val"]["finite"] and res["hidden_val"]["finite"]
        assert not (finite and probes["logits"]["passed"] and probes["causality"]["passed"]), (seed, probes)
        if finite:
            only_probes += 1
            assert math.inf in (res["probes"]["noise"], res["probes"]["cross_row"], res["probes"]["causal_max_rel"])
    assert only_probes >= 1
    # the evaluator's one-pass finiteness: a NaN or an infinity anywhere in a metric batch is seen
    for bad in (float("nan"), float("inf"), -float("inf")):
        class Bad(nn.Module):
            def forward(self, idx, bad=bad):
                out = Bigram(V)(idx).detach().clone()
                out[-1, -1, -1] = bad
                return out
        r = E.split_metric(Bad(), sets, torch.device("cpu"), V, batch_rows=4, token_bytes=torch.from_numpy(tb),
                           rng=np.random.default_rng(0), twins=0, repeats=0)
        assert not (r["val"]["finite"] and r["hidden_val"]["finite"]), bad


def test_the_wire_receives_into_the_receivers_buffer():
    import socket as _socket

    from nanochat_harness import wire

    a, b = _socket.socketpair()
    try:
        import threading

        data = np.arange(70000, dtype=np.float32)       # more than the socket holds: sent from a thread
        sender = threading.Thread(target=wire.send, args=(a, {"op": "logits"}, data.view(np.uint8).data))
        sender.start()
        head, got = wire.recv(b, 1 << 20, alloc=lambda h, n: np.empty(n, np.uint8))
        sender.join()
        assert head["op"] == "logits" and isinstance(got, np.ndarray) and (got.view(np.float32) == data).all()
        wire.send(a, {"op": "x"}, b"abcd")
        with pytest.raises(wire.WireError, match="receive buffer"):
            wire.recv(b, 1 << 20, alloc=lambda h, n: np.empty(n + 1, np.uint8))
    finally:
        a.close()
        b.close()


def _model_folder(tmp_path: Path, gpt_cls, src: str = None, V: int = 97, T: int = 32) -> tuple[Path, nn.Module]:
    """A model process's folder: train.py, model.pt (state dict), model.json."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "train.py").write_text(src or CANDIDATE)
    torch.manual_seed(1)
    args = dict(vocab=V, d=32, nh=4, depth=1, T=T)
    model = gpt_cls(**args).eval()
    torch.save(model.state_dict(), d / "model.pt")
    (d / "model.json").write_text(json.dumps({"format": 2, "factory": "GPT", "init_kwargs": args}))
    return d, model


def _serve(d: Path):
    import subprocess

    from nanochat_harness import wire

    sock = str(d / ".eval.sock")
    listener = wire.listen(sock)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TASK_DIR), str(REPO)]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nanochat_harness.model_server", "--socket", sock, "--script",
                             "train.py", "--threads", "1"], cwd=d, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return listener, proc


def _served(d: Path, V: int, ask):
    """``ask(remote)`` against the model of workspace ``d`` served by a real model process (the
    evaluator's side of the split evaluation, on CPU); the process must end cleanly."""
    listener, proc = _serve(d)
    try:
        remote = E.RemoteModel(E.accept_loaded(listener, 120), torch.device("cpu"), V, timeout_s=120)
        got = ask(remote)
        remote.close()
        out, _ = proc.communicate(timeout=60)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    return got


def test_metric_through_the_model_process_equals_in_process(tmp_path, gpt_cls):
    """A real model process (imports train.py, rebuilds the model weights-only, answers over the
    socket): the metric computed from its logits equals the in-process computation."""
    V, T = 97, 32
    d, model = _model_folder(tmp_path, gpt_cls, V=V, T=T)
    sets, tb = _two_splits(V, T=T, n=9)
    got, causal = _served(d, V, lambda remote: (
        E.split_metric(remote, sets, torch.device("cpu"), V, batch_rows=4, token_bytes=torch.from_numpy(tb),
                       rng=np.random.default_rng(2)),
        E.causality_probe(remote, torch.device("cpu"), V, T, seed=3, rows=4)))
    for name, rows in sets.items():
        want = E.bits_per_byte(model, rows, torch.from_numpy(tb), torch.device("cpu"), V, batch_rows=3)
        assert abs(got[name]["nats"] - want["nats"]) < 1e-4 * want["nats"] and got[name]["bytes"] == want["bytes"]
    assert causal["passed"] and got["probes"]["noise"] == 0.0


def test_only_the_runs_model_process_may_connect(tmp_path):
    """The evaluator listens while the candidate still trains: a process that connects without
    the run's nonce (another run's model process, say, that found the socket) is refused and
    recorded, and the evaluator goes on waiting for the real one, which it then accepts."""
    import threading
    import time

    from nanochat_harness import wire

    sock = str(tmp_path / "s")
    listener = wire.listen(sock)
    E.IMPOSTORS.clear()

    def client(token, op="warm"):
        c = wire.connect(sock)
        wire.send(c, {"op": op, "token": token})
        box.append(c)

    box: list = []
    threads = []
    for token in ("guess", "", "the-runs-nonce"):     # in this order (the listener's backlog is short:
        threads.append(threading.Thread(target=client, args=(token,)))   # later ones wait in connect)
        threads[-1].start()
        time.sleep(0.3)
    conn = E.accept_warm(listener, 30, "the-runs-nonce")
    for th in threads:
        th.join(timeout=30)
    wire.send(conn, {"op": "load"})
    assert len(box) == 3 and wire.recv(box[-1], 0)[0]["op"] == "load"     # the real one got through
    assert len(E.IMPOSTORS) == 2 and all("nonce" in x for x in E.IMPOSTORS)
    th = threading.Thread(target=client, args=("the-runs-nonce", "error"))
    th.start()
    with pytest.raises(RuntimeError, match="could not start"):
        E.accept_warm(listener, 30, "the-runs-nonce")
    th.join()
    for c in box + [conn]:
        c.close()
    listener.close()
    E.IMPOSTORS.clear()


def test_model_rebuild_errors_reach_the_evaluator(tmp_path, gpt_cls):
    d, _ = _model_folder(tmp_path, gpt_cls)
    (d / "model.json").write_text(json.dumps({"format": 2, "factory": "GPT", "init_kwargs": {"vocab": 97}}))
    listener, proc = _serve(d)
    try:
        with pytest.raises(RuntimeError, match="could not be rebuilt: TypeError"):
            E.accept_loaded(listener, 120)
        proc.communicate(timeout=60)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()


class _Payload:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._autolab_test_payload_ran = True",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    import builtins

    from nanochat_harness import model_server

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3), "x": _Payload()}, path)
    with pytest.raises(E.UnsafeModelFile, match="not weights-only"):
        E.check_weights(path)
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        model_server.load_weights(path)
    assert not hasattr(builtins, "_autolab_test_payload_ran")
    torch.save({"w": torch.zeros(3), "b": torch.ones(2, 2)}, path)
    assert E.check_weights(path) == {"tensors": 2, "num_params": 7}
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="state dict"):
        E.check_weights(path)


def test_harness_intact_detects_replaced_functions(monkeypatch):
    assert E.harness_intact()["passed"]
    monkeypatch.setattr(F, "log_softmax", lambda *a, **k: None)
    res = E.harness_intact()
    assert not res["passed"] and "torch.nn.functional.log_softmax" in res["detail"]
    monkeypatch.undo()
    assert E.harness_intact()["passed"]


def test_summary_parsing():
    out = "step 1\n---\nnot: this\n---\nval_thing: 1.5\nsteps: 1,200\nmfu: 41.5%\nname: seed gpt\n\ntrailing garbage"
    assert R.parse_summary(out) == {"val_thing": 1.5, "steps": 1200, "mfu": 41.5, "name": "seed gpt"}
    assert R.parse_summary("no block") == {}


def test_the_data_process_stamp_moves_the_clock_back_never_forward():
    """The clock's start is the earlier of the clock line and the data process's first request;
    train data asked for well before the clock line (or with none) is a clock violation."""
    def judge(line_s, data_s, budget=20.0):
        res = {"timings": {}, "violations": []}
        tr = {"launched_at": 1000.0, "clock_start_s": line_s}
        report = {"batches": 7, "tokens": 700, "connections": 1, "streams": [], "first_request_monotonic":
                  None if data_s is None else 1000.0 + data_s}
        R._served_clock(res, tr, report, budget)
        return tr["clock_start_s"], res
    start, res = judge(5.0, 5.01)                               # honest: the line, then the request
    assert start == 5.0 and res["timings"]["data_clock_start_s"] == 5.01 and not res["violations"]
    assert res["train_data"] == {"batches": 7, "tokens": 700, "connections": 1, "streams": []}
    start, res = judge(5.0, 4.9)                                # within the tolerance: earlier wins, no violation
    assert start == pytest.approx(4.9) and not res["violations"]
    start, res = judge(30.0, 5.0)                               # trained 25 s on train data before the clock
    assert start == pytest.approx(5.0) and [v["kind"] for v in res["violations"]] == ["clock"]
    assert "25.0 s later" in res["violations"][0]["detail"] and "H.train_loader" in res["violations"][0]["detail"]
    start, res = judge(None, 5.0)                               # data without ever starting the clock
    assert start == pytest.approx(5.0) and "never started" in res["violations"][0]["detail"]
    start, res = judge(3.0, None)                               # no data asked for: the line alone
    assert start == 3.0 and "data_clock_start_s" not in res["timings"] and not res["violations"]


# ----------------------------------------------------------------------------- the candidate API

@pytest.fixture()
def api(tmp_path, monkeypatch):
    cfg = {"seed": 3, "device": "cpu", "budget_s": 100.0, "seq_len": 16, "vocab_size": 50, "bos_id": 0,
           "events_path": str(tmp_path / "events.jsonl"), "data": {}}
    p = tmp_path / "run_config.json"
    p.write_text(json.dumps(cfg))
    monkeypatch.setenv("AUTOLAB_RUN_CONFIG", str(p))
    monkeypatch.chdir(tmp_path)
    for k, v in (("_CONFIG", None), ("_T0", None), ("_EVENTS", None), ("_LOADERS", [])):
        monkeypatch.setattr(H, k, v)
    return cfg, p


def test_config_and_clock(api, monkeypatch):
    cfg, p = api
    c = H.config()
    assert c["seed"] == 3 and c["bos_id"] == 0
    c["seed"] = 99
    assert H.config()["seed"] == 3                             # a copy
    assert H._T0 is None                                        # reading the config does not start the clock
    assert 99 < H.time_left() <= 100 and H._T0 is not None
    # the hard deadline caps time_left
    import time as _t

    monkeypatch.setattr(H, "_CONFIG", {**cfg, "deadline": _t.time() + 5, "finish_reserve_s": 2})
    assert 2.5 < H.time_left() <= 3.0
    monkeypatch.setattr(H, "_CONFIG", {**cfg, "deadline": _t.time() - 5})
    assert H.time_left() == 0.0


def test_config_without_runner(monkeypatch):
    monkeypatch.delenv("AUTOLAB_RUN_CONFIG", raising=False)
    monkeypatch.setattr(H, "_CONFIG", None)
    with pytest.raises(RuntimeError, match="AUTOLAB_RUN_CONFIG is not set"):
        H.config()


def test_log_and_finish(api, gpt_cls, tmp_path):
    H.log(1, torch.tensor(2.5), lr=torch.tensor(0.1), note="x")
    H.log(2, 2.25)
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["loss"]) for e in lines] == [(1, 2.5), (2, 2.25)]
    assert abs(lines[0]["lr"] - 0.1) < 1e-6 and lines[0]["note"] == "x" and "t" in lines[0]

    class Compiled(nn.Module):                                 # what torch.compile's wrapper looks like
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    model = gpt_cls(50, 32, 4, 1, 16)
    with pytest.raises(TypeError, match="init_kwargs"):
        H.finish(model)
    with pytest.raises(TypeError, match="plain JSON"):
        H.finish(model, {"vocab": torch.tensor(50)})
    path = H.finish(Compiled(model), dict(vocab=50, d=32, nh=4, depth=1, T=16))
    state = torch.load(path, weights_only=True)                 # weights only: a state dict of tensors
    assert set(state) == set(model.state_dict())
    assert json.loads((tmp_path / "model.json").read_text()) == {
        "format": 2, "factory": "GPT", "init_kwargs": {"vocab": 50, "d": 32, "nh": 4, "depth": 1, "T": 16}}
    import types

    rebuilt = E.load_model(tmp_path, types.SimpleNamespace(GPT=gpt_cls)).eval()
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    assert json.loads((tmp_path / "finish.json").read_text())["batches"] == 0


def test_import_is_light():
    import subprocess

    code = ("import sys; sys.path.insert(0, %r); import nanochat_harness; "
            "print(sorted(m for m in ('torch', 'numpy', 'tokenizers', 'pyarrow') if m in sys.modules))") % str(TASK_DIR)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- end to end

def _task_copy(tmp_path: Path, cand: Path) -> Path:
    """A private copy of task.toml / notebook whose seed is the test candidate."""
    t = tmp_path / "task"
    t.mkdir()
    toml = (TASK_DIR / "task.toml").read_text()
    toml = re.sub(r'(?m)^seed = ".*"$', f'seed = "{cand}"', toml)
    (t / "task.toml").write_text(toml)
    shutil.copy(TASK_DIR / "benchmark.ipynb", t / "benchmark.ipynb")
    return t


def _candidate(tmp_path: Path, src: str, name: str = "cand") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "train.py").write_text(src)
    return d


@pytest.fixture()
def shared_cache(monkeypatch):
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("AUTOLAB_CACHE", str(SHARED_CACHE))
    if not (REPO.parent / "shared" / "data" / "techtext" / "manifest.json").exists() and not os.environ.get("AUTOLAB_DATA"):
        pytest.skip("no techtext corpus")


FAST = {"budget_s": 3, "eval_tokens": 4096, "allowance_s": 120}   # start-up on a crowded machine


def test_end_to_end_cpu_tiny(honest_run):
    res, res_path, events = honest_run["res"], honest_run["path"], honest_run["events"]
    assert res["status"] == "ok", res["reason"]
    assert json.loads(res_path.read_text()) == json.loads(json.dumps(res))
    m, t = res["metrics"], res["timings"]
    assert 0.5 < m["val_bpb"] < 8 and 0.5 < m["hidden_val_bpb"] < 8
    assert m["steps"] >= 1 and m["tokens"] == res["summary"]["tokens"]
    assert res["summary"]["note"] == "tiny test candidate"
    for k in ("train_s", "script_train_s", "eval_s", "total_s", "budget_s", "allowance_s"):
        assert k in t, k
    assert t["budget_s"] == 3 and t["train_s"] <= 3 + t["allowance_s"] + 2
    # on a CPU preset the evaluation's processes start once the model is saved (on a GPU, with the training)
    assert t["eval_waited_s"] < 1 and 0 < t["eval_s"] < t["total_s"]
    assert t["compile_cache"] == "none"       # run by hand: no lab candidate, no cache
    assert 2.9 <= t["script_train_s"] < t["train_s"] < t["total_s"]
    assert all(res["probes"][k]["passed"] for k in ("causality", "logits", "harness_intact")), res["probes"]
    assert res["curve"] and {"step", "t", "loss"} <= set(res["curve"][0])
    assert any(e.get("type") == "curve" for e in events) and any(e.get("phase") == "eval" for e in events)
    from nanochat_harness.data import locate_corpus

    manifest = json.loads((locate_corpus() / "manifest.json").read_text())
    if not os.environ.get("AUTOLAB_DATA"):
        assert res["corpus"] == {"name": "techtext", "train_sha256": manifest["splits"]["train"]["sha256"]}
    work = res_path.parent / "result.work"
    assert (work / "train.py").exists() and not (work / "notes.txt").exists()   # only editable files
    assert (work / "model.pt").exists()
    # the train process could not read the evaluation data, nor the train split's token cache: denied,
    # and recorded as violations
    train_log = (res_path.parent / "result.harness" / "train.log").read_text()
    assert "SNOOP read" not in train_log and train_log.count("SNOOP denied") >= 3, train_log
    reads = [v["detail"] for v in res["violations"] if v["kind"] == "file_read"]
    assert any("val.parquet" in d for d in reads) and any("val-" in d and ".tokens.npy" in d for d in reads), reads
    assert any("/train-" in d and ".tokens.npy" in d for d in reads), reads
    # its batches came from the trusted data process, which stamped the first request (the clock line was
    # printed just before it: no clock violation), counted what it served and is gone
    served = res["train_data"]
    assert served["connections"] == 1 and served["batches"] >= m["steps"] and served["tokens"] >= m["tokens"]
    assert t["data_clock_start_s"] == pytest.approx(t["clock_start_s"], abs=1.0) and t["clock_start_s"] <= t["data_clock_start_s"]
    assert not [v for v in res["violations"] if v["kind"] == "clock"], res["violations"]
    pid = json.loads((res_path.parent / "result.harness" / "data_server.json").read_text())["pid"]
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_runs_sharing_a_gpu_take_turns_for_their_timed_work(tmp_path, shared_cache):
    """gpu_baton: two runs started together on one (here: CPU) device. Both start at once; the
    second's candidate code starts only after the first's evaluation has ended (its go comes
    after the first wrote its result), the wait is not counted against its limits, and both are
    complete and honest."""
    import threading

    cand = _candidate(tmp_path, CANDIDATE)
    task = _task_copy(tmp_path, cand)
    ov = {**FAST, "clock": "wall", "gpu_baton": True, "eval_prewarm": True}
    out: dict = {}

    def one(name):
        out[name] = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / name / "result.json", task_dir=task,
                                    overrides=ov, echo=False)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r["status"] == "ok" for r in out.values()), {n: r["reason"] for n, r in out.items()}
    first, second = sorted(out, key=lambda n: out[n]["timings"]["gpu_go_epoch"])
    t1, t2 = out[first]["timings"], out[second]["timings"]
    assert t2["gpu_go_epoch"] >= (tmp_path / first / "result.json").stat().st_mtime   # after the first's evaluation
    assert t2["gpu_wait_s"] > 1 and t2["train_wall_s"] - t2["train_s"] == pytest.approx(t2["gpu_wait_s"], abs=0.01)
    assert t2["train_s"] <= 3 + t2["allowance_s"] + 2 and t2["startup_s"] < t2["clock_start_s"]
    assert all(out[n]["timings"]["eval_waited_s"] >= out[n]["timings"]["train_s"] - 1 for n in out)   # eval_prewarm


_RUN_ONE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nanochat_harness import runner as R
a = json.loads(sys.argv[2])
R.run_benchmark(a["cand"], 1, "cpu-tiny", a["out"], task_dir=a["task"], overrides=a["ov"], echo=False)
"""


def test_overlap_the_next_run_compiles_during_this_ones_training_and_is_stopped_when_it_uses_the_device(
        tmp_path, shared_cache):
    """gpu_overlap (here on the CPU, whose per-process use stands in for NVML's): two runs in two
    processes, as two notebook kernels would be. A's pre-clock wait lets B get its go while A
    trains; B burns the device before its clock, so past overlap_gpu_s it is stopped until A's
    training is over (the time does not count against B); B's clock waits at its gate until A's
    evaluation has ended. Both complete; A's window saw little of B.

    A's pre-clock wait ends when B's train process says it is ready (waiting for its go, which A
    holds), not after a fixed pause: B's start-up takes what the machine's load makes it, and A's
    clock must start after it (the test writes ``peer-ready`` into A's workspace then)."""
    import subprocess
    import time

    from nanochat_harness.boot import READY_LINE

    task = None
    procs, outs = {}, {}
    ov = {**FAST, "budget_s": 5, "clock": "wall", "gpu_baton": True, "gpu_overlap": True, "overlap_gpu_s": 0.2,
          "eval_prewarm": True, "allowance_s": 420}   # A's start-up holds B's: two start-ups on a crowded machine
    pre = {"a": ("    import os, time\n    t0 = time.monotonic()\n"       # A: an honest pause before its clock,
                 "    while not os.path.exists('peer-ready') and time.monotonic() - t0 < 360:\n"   # until B is ready
                 "        time.sleep(0.1)\n"),
           "b": "    import time\n    t0 = time.time()\n    while time.time() - t0 < 6:\n        pass\n"}   # B: burns
    for name in ("a", "b"):
        cand = _candidate(tmp_path, CANDIDATE.replace("    step = tokens = 0\n", pre[name] + "    step = tokens = 0\n"), name)
        task = task or _task_copy(tmp_path, cand)
        outs[name] = tmp_path / f"run-{name}" / "result.json"
        arg = json.dumps({"cand": str(cand), "out": str(outs[name]), "task": str(task), "ov": ov})
        # a GPU key of this test's own (the locks live in the machine's cache: another test's runs, or a
        # pause left by a spoiled run, must not meet these)
        procs[name] = subprocess.Popen([sys.executable, "-c", _RUN_ONE, str(TASK_DIR), arg],
                                       env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": tmp_path.name})
        if name == "a":   # B starts once A holds its go, so A's clock comes first
            go = outs["a"].parent / "result.baton" / "go"
            deadline = time.monotonic() + 300
            while not go.exists() and procs["a"].poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert go.exists(), "run A never got its go"
    # B's train process is ready and waits for its go (A's prep turn): A may start its clock now
    log = outs["b"].parent / "result.harness" / "train.log"
    deadline = time.monotonic() + 300
    while procs["b"].poll() is None and time.monotonic() < deadline and not (
            log.exists() and READY_LINE in log.read_text(errors="replace")):
        time.sleep(0.2)
    assert log.exists() and READY_LINE in log.read_text(errors="replace"), "run B's train process never got ready"
    (outs["a"].parent / "result.work" / "peer-ready").write_text("B is ready\n")
    for p in procs.values():
        assert p.wait(timeout=600) == 0
    ra, rb = (json.loads(outs[n].read_text()) for n in ("a", "b"))
    assert ra["status"] == "ok" and rb["status"] == "ok", (ra["reason"], rb["reason"])
    ta, tb = ra["timings"], rb["timings"]
    assert ta["gpu_overlap"] and tb["gpu_overlap"]
    assert ta["gpu_clock_go_epoch"] <= tb["gpu_go_epoch"] < outs["a"].stat().st_mtime   # B started during A's turn
    assert tb["gpu_clock_go_epoch"] >= outs["a"].stat().st_mtime - 0.05                 # B's clock after A's evaluation
    assert tb["overlap_froze"] >= 1 and tb["overlap_frozen_s"] > 0.5 and tb["overlap_prep_gpu_s"] >= 0.2
    assert ta["contention_gpu_s"] < 3.0                   # stopped in time: A's figures are its own
    assert tb["train_s"] <= tb["budget_s"] + tb["allowance_s"] + 2 and tb["gpu_wait_s"] >= tb["overlap_frozen_s"]


def test_a_training_window_another_process_used_is_not_the_candidates_verdict(tmp_path):
    """The baton's own account: other processes' device-seconds in a run's training window past
    contention_limit_s make the run an infrastructure failure (re-run), never a verdict."""
    from autolab.gpu_share import Sample

    class Device:   # the driver's view: an outside pid working at 80% for two sampled seconds
        def __init__(self):
            self.calls = 0

        def processes(self):
            return {1: 1 << 30}

        def utilization(self, since):
            self.calls += 1
            return ([Sample(1, 10**6 * self.calls, 80, 0, 10**6)] if 1 < self.calls <= 3 else []), 10**6 * self.calls

    b = R.GpuBaton(tmp_path, "t", tmp_path, 100.0, nvml=Device(), overlap_gpu_s=1.0, contention_limit_s=1.5)
    b._timed = True
    import threading
    th = threading.Thread(target=b._watch)
    th.start()
    import time
    while b.nvml.calls < 5:
        time.sleep(0.05)
    b.saved()
    th.join(timeout=5)
    assert b.contention_gpu_s == pytest.approx(1.6) and b.shared
    why = b.contended()
    assert why.startswith("infrastructure:") and "1.6 GPU-seconds" in why
    b.contention_limit_s = 2.0
    assert b.contended() is None
    # a spoiled run turns overlap off on that GPU for a while: sharing can cost throughput, not verdicts
    assert not R.GpuBaton.overlap_paused(tmp_path, "t")
    b.pause_overlap()
    assert R.GpuBaton.overlap_paused(tmp_path, "t") and not R.GpuBaton.overlap_paused(tmp_path, "other-gpu")


def test_a_run_starts_beside_another_training_only_if_the_gpu_has_memory_for_both(tmp_path):
    """The go of overlap waits while the free memory is less than the other runners' processes
    hold, and comes once they hold less (the other's train process has ended, its evaluation goes
    on) or that run's timed turn is over (or at once when there is room)."""
    import threading

    class Device:
        def __init__(self, free):
            self.free, self.theirs = free, {1: 54 << 30}   # the training run's process (not ours)

        def processes(self):
            return dict(self.theirs)

        def memory(self):
            return self.free, 80 << 30

        def utilization(self, since):
            return [], since

    state = tmp_path / "gpu-k.timed.json"
    timed = R._FileLock(tmp_path / "gpu-k.lock")    # the other run's timed turn
    assert timed.take(threading.Event())
    for free, waits in ((24 << 30, True), (85 << 30, False)):
        state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "other", "training": True}))
        b = R.GpuBaton(tmp_path, "k", tmp_path, 100.0, nvml=Device(free))
        done = threading.Event()
        th = threading.Thread(target=lambda: (b._wait_for_memory(), done.set()))
        th.start()
        assert done.wait(0.3) is not waits
        state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "other", "training": False}))
        # saved, but its train process still holds its memory: the go waits on
        assert done.wait(0.6) is not waits
        b.nvml.theirs, b.nvml.free = {2: 3 << 30}, 76 << 30    # the train process ended; its evaluation's
        assert done.wait(5)
        th.join()
        assert (b.memory_waits > 0) is waits
    # and the end of the other's turn ends any wait (whatever the memory: not this run's to judge)
    state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "other", "training": True}))
    b = R.GpuBaton(tmp_path, "k", tmp_path, 100.0, nvml=Device(24 << 30))
    done = threading.Event()
    th = threading.Thread(target=lambda: (b._wait_for_memory(), done.set()))
    th.start()
    assert not done.wait(0.3)
    timed.release()
    assert done.wait(5)
    th.join()


SHADOW = '''
    import os
    os.makedirs("nanochat_harness", exist_ok=True)
    open("nanochat_harness/__init__.py", "w").write("")
    open("nanochat_harness/evaluate.py", "w").write(
        "import json, sys\\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\\n"
        "json.dump({'ok': True, 'val_bpb': 0.01, 'hidden_val_bpb': 0.01}, open(out, 'w'))\\n")
'''


CACHE_READER = """
    import os as _os
    for _d in (_os.environ["TORCHINDUCTOR_CACHE_DIR"], *READ_TOO):   # what Inductor does with a warm cache
        for _root, _, _files in _os.walk(_d):
            for _f in _files:
                print("CACHE read", _f, len(open(_os.path.join(_root, _f), "rb").read()))
    open(_os.path.join(_os.environ["TORCHINDUCTOR_CACHE_DIR"], "new-entry"), "w").write("compiled")
"""


def test_a_run_reads_its_compile_cache_and_its_ancestors_without_a_violation(tmp_path, shared_cache, monkeypatch):
    """A child's run gets a private copy of the seed's compile cache and may read the seed's
    folder (Inductor's entries name it); neither read is a violation. Another lab's cache is."""
    from autolab.harnesskit import COMPILE_CACHE_ENV, COMPILE_CACHE_FROM_ENV, cache_root, device_tag

    key = f"test-{tmp_path.name}"
    base = cache_root() / "compile" / device_tag("cpu")
    seed_dir, other = base / key / "c-seed", base / f"{key}-other" / "c-x"
    try:
        (seed_dir / "inductor" / "ab").mkdir(parents=True)
        (seed_dir / "inductor" / "ab" / "entry.py").write_text("# a compiled graph")
        (seed_dir / "triton").mkdir()
        other.mkdir(parents=True)
        (other / "stash.bin").write_bytes(b"weights")
        monkeypatch.setenv(COMPILE_CACHE_ENV, f"{key}/c-child")
        monkeypatch.setenv(COMPILE_CACHE_FROM_ENV, "c-seed")
        src = CANDIDATE.replace("SNOOP = []", f"SNOOP = []\nREAD_TOO = [{str(seed_dir)!r}, {str(other)!r}]").replace(
            '    torch.manual_seed(cfg["seed"])', CACHE_READER.strip("\n") + '\n    torch.manual_seed(cfg["seed"])')
        cand = _candidate(tmp_path, src)
        res = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / "r.json", task_dir=_task_copy(tmp_path, cand),
                              overrides=FAST, echo=False)
        reads = [v["detail"] for v in res["violations"] if v["kind"] == "file_read"]
        assert res["timings"]["compile_cache"] == "warm"
        assert not any("/c-seed/" in d or "/runs/c-child." in d for d in reads), reads
        assert any(str(other) in d for d in reads) or res["status"] != "ok", (res["status"], reads)
        assert not (seed_dir / "inductor" / "new-entry").exists()                 # the seed's folder is read-only
        assert not list((base / key / "runs").glob("c-child.*"))                  # the private copy is gone
    finally:
        shutil.rmtree(base / key, ignore_errors=True)
        shutil.rmtree(base / f"{key}-other", ignore_errors=True)


def test_a_harness_planted_in_the_workdir_is_not_the_one_that_evaluates(honest_run):
    """train.py writes a fake `nanochat_harness/evaluate.py` into its working directory; the
    evaluation process must still run the real harness (it starts where train.py cannot write)."""
    res, res_path = honest_run["res"], honest_run["path"]
    assert (res_path.parent / "result.work" / "nanochat_harness" / "evaluate.py").exists()   # the attempt was made
    assert res["status"] == "ok", res["reason"]
    assert res["metrics"]["val_bpb"] > 0.5 and res["metrics"]["hidden_val_bpb"] > 0.5, res["metrics"]


SEARCHER = """

_CALLS = []


def _search(idx):
    # everything this process holds that looks like evaluation rows with their targets
    import gc, sys
    _CALLS.append(1)
    if len(_CALLS) > 10:     # the first ten calls (metric and probe batches mixed) are enough
        return
    import numpy as np
    T = idx.shape[1]
    found = {"frames": 0, "gc": 0, "modules": 0}

    def hit(v):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] > T and a.dtype.kind in "iu"

    f = sys._getframe(1)
    while f is not None:
        for v in list(f.f_locals.values()):
            vals = list(v.values()) if isinstance(v, dict) else list(v) if isinstance(v, (list, tuple)) else [v]
            found["frames"] += sum(hit(w) for w in vals[:100])
        f = f.f_back
    for o in gc.get_objects():
        try:
            found["gc"] += sum(hit(r) for r in gc.get_referents(o))
        except Exception:
            pass
    for name, mod in list(sys.modules.items()):
        for v in list(vars(mod).values()) if mod is not None else []:
            try:
                cells = [c.cell_contents for c in (v.__closure__ or [])] if type(v).__name__ == "function" else []
            except ValueError:
                cells = []
            found["modules"] += sum(hit(w) for w in [v, *cells])
    print("SEARCH", json.dumps(found), flush=True)
"""


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    """One real cpu-tiny run, read by test_end_to_end_cpu_tiny, test_a_harness_planted_in_the_workdir_...
    and test_the_model_process_holds_no_targets (one run instead of three, each check unchanged):
    the tiny candidate, honest in what it trains and returns, that also tries three things the
    harness must defeat without failing the run: it opens the evaluation
    data from its train process (SNOOP: denied, recorded as violations), plants a fake
    `nanochat_harness/evaluate.py` in its working folder (SHADOW: the real one evaluates), and
    its forward searches its own process for the evaluation's targets (SEARCHER: finds none)."""
    if not (REPO.parent / "shared" / "data" / "techtext" / "manifest.json").exists() and not os.environ.get("AUTOLAB_DATA"):
        pytest.skip("no techtext corpus")
    tmp_path = tmp_path_factory.mktemp("honest-run")
    corpus_val = REPO.parent / "shared" / "data" / "techtext" / "val.parquet"
    src = CANDIDATE.replace("import torch\n", "import json\nimport torch\n", 1).replace(
        "        return self.head(self.ln(x))\n",
        "        out = self.head(self.ln(x))\n        if not self.training:\n            _search(idx)\n        return out\n"
    ).replace("\n\nSNOOP = []", SEARCHER + "\n\nSNOOP = []")
    src = src.replace("SNOOP = []", f"SNOOP = [{str(corpus_val)!r}]").replace(
        '    print("note: tiny test candidate")\n', '    print("note: tiny test candidate")\n' + SHADOW)
    assert "_search(idx)" in src and "SNOOP = [" + repr(str(corpus_val)) in src and "nanochat_harness/evaluate.py" in src
    cand = _candidate(tmp_path, src)
    (cand / "notes.txt").write_text("not an editable file")
    events: list[dict] = []
    res_path = tmp_path / "run" / "result.json"
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOLAB_CACHE", str(SHARED_CACHE))
        res = R.run_benchmark(cand, 1, "cpu-tiny", res_path, task_dir=_task_copy(tmp_path, cand),
                              on_event=events.append, overrides={**FAST, "eval_timeout_s": 600}, echo=False)
    return {"res": res, "path": res_path, "events": events}


def test_the_model_process_holds_no_targets(honest_run):
    """A model that searches its own process (frames up from its forward, the garbage collector's
    referents, every module's globals and closures) for integer rows longer than its input finds
    nothing: the split evaluation's model process receives input rows only."""
    res, res_path = honest_run["res"], honest_run["path"]
    assert res["status"] == "ok", res["reason"]
    log = (res_path.parent / "result.harness" / "eval.log").read_text()
    reports = [json.loads(line.split("SEARCH ", 1)[1]) for line in log.splitlines() if line.startswith("SEARCH ")]
    assert len(reports) >= 8, log[-2000:]                  # it searched on every call
    assert all(r == {"frames": 0, "gc": 0, "modules": 0} for r in reports), reports[:5]
    # the model process's folder held the script and the weights-only model, nothing of the run
    assert sorted(p.name for p in (res_path.parent / "result.model").iterdir() if not p.name.startswith(".")) == [
        "model.json", "model.pt", "model_config.json", "train.py"]
    assert res["eval"]["transport"]["batches"] >= 8 and all(res["probes"][k]["passed"] for k in ("causality", "logits"))


def test_the_metric_of_a_saved_model_is_pinned(honest_run, tmp_path):
    """The honest run's saved model, evaluated again on its fixed val and hidden_val rows: a change
    to the evaluation's speed must not move the metric. Through a real model process (the wire,
    the evaluator's receive buffers, its finiteness and probe arithmetic), each split's nats,
    bytes and tokens equal bit for bit those of the same batches computed in this process; and
    the run's recorded val_bpb and hidden_val_bpb (its own random batches, through the sandbox)
    agree to 1e-12 (relative; only the order of the float64 sums differs) with
    :func:`bits_per_byte`, the plain metric (log_softmax, gather, float64 sums) of the same model."""
    res, res_path = honest_run["res"], honest_run["path"]
    assert res["status"] == "ok", res["reason"]
    cpu = torch.device("cpu")
    cfg = json.loads((res_path.parent / "result.harness" / "eval_config.json").read_text())
    V, B = int(cfg["vocab_size"]), int(cfg["eval_batch_size"])
    sets = E.load_sets(cfg)
    tb = torch.from_numpy(np.load(cfg["data"]["token_bytes"]).astype(np.int64))
    d = tmp_path / "model"
    shutil.copytree(res_path.parent / "result.model", d, ignore=shutil.ignore_patterns(".*"))
    with open(d / "train.py", "a") as f:   # the run's candidate searched its process on every call: not again
        f.write("\n\ndef _search(idx):\n    pass\n")
    few = {n: rows[:B // 2] for n, rows in sets.items()}          # two batches, and a twin and repeats of them
    got = _served(d, V, lambda remote: E.split_metric(remote, few, cpu, V, B // 2, token_bytes=tb,
                                                      rng=np.random.default_rng(11), twins=1))
    from nanochat_harness.model_server import rebuild

    model = rebuild(d, "train.py").eval()
    here = E.split_metric(model, few, cpu, V, B // 2, token_bytes=tb, rng=np.random.default_rng(11), twins=1)
    assert got["probes"] == here["probes"] and got["probes"]["twin_rows"] == B // 2 and got["probes"]["repeats"] == 2
    for name, rows in sets.items():
        g, h = got[name], here[name]
        assert (g["nats"], g["bytes"], g["tokens"], g["finite"]) == (h["nats"], h["bytes"], h["tokens"], True), name
        plain = E.bits_per_byte(model, rows, tb, cpu, V, batch_rows=B)
        key = "val_bpb" if name == "val" else "hidden_val_bpb"
        assert abs(res["metrics"][key] - plain["bpb"]) <= 1e-12 * plain["bpb"], (key, res["metrics"][key], plain)


SLEEPER = "import time\nimport nanochat_harness as H\nif __name__ == '__main__':\n    H.config()\n    time.sleep(600)\n"
CRASHER = "raise ValueError('boom in the candidate')\n"
NO_FINISH = "import nanochat_harness as H\nif __name__ == '__main__':\n    print('---')\n    print('steps: 0')\n"


def test_over_budget_is_killed(tmp_path, shared_cache):
    """On the wall clock (the GPU presets' rule; the cpu clock's sleeper is in test_nanochat_cpu_clock)."""
    cand = _candidate(tmp_path, SLEEPER)
    res = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / "r.json", task_dir=_task_copy(tmp_path, cand),
                          overrides={"budget_s": 1, "allowance_s": 20, "kill_grace_s": 1, "clock": "wall"}, echo=False)
    # allowance 20 s: on a loaded machine the start-up (python, torch) may wait several seconds for
    # a CPU; the sleep must still be most of the run, or the kill is (rightly) the machine's
    assert res["status"] == "killed" and "timeout" in res["reason"], res["reason"]
    assert 21 <= res["timings"]["train_s"] < 40
    assert "val_bpb" not in res["metrics"]


@pytest.mark.parametrize("src,needle", [(CRASHER, "boom in the candidate"), (NO_FINISH, "H.finish(model)")])
def test_failures_are_recorded(tmp_path, shared_cache, src, needle):
    cand = _candidate(tmp_path, src)
    res = R.run_benchmark(cand, 1, "cpu-tiny", tmp_path / "r.json", task_dir=_task_copy(tmp_path, cand),
                          overrides=FAST, echo=False)
    assert res["status"] == "failed" and needle in res["reason"], res
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- GPU (device machine)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_gpu_bpb_equals_hand_computation(gpt_cls):
    torch.manual_seed(0)
    V, T = 300, 128
    model = gpt_cls(V, 64, 4, 2, T).cuda().eval()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, V, (8, T + 1)).astype(np.int64)
    rows[:, 0] = 0
    tb = rng.integers(1, 6, V).astype(np.int64)
    tb[0] = 0
    got = E.bits_per_byte(model, rows, torch.from_numpy(tb), torch.device("cuda"), V, batch_rows=3)
    # independent: the same bf16-autocast logits, reduced one target at a time in float64 on the CPU
    nats = nbytes = 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(torch.from_numpy(rows[:, :-1]).cuda()).float().cpu().double().numpy()
    for r in range(len(rows)):
        for j, target in enumerate(rows[r, 1:]):
            if tb[target]:
                lv = logits[r, j]
                nats += lv.max() + math.log(np.exp(lv - lv.max()).sum()) - lv[target]
                nbytes += tb[target]
    assert abs(got["bpb"] - nats / (math.log(2) * nbytes)) < 1e-5 * got["bpb"]


@pytest.mark.gpu
@gpu
def test_gpu_causality_probe(gpt_cls):
    torch.manual_seed(0)
    causal = gpt_cls(512, 64, 4, 2, 256).cuda().eval()
    assert E.causality_probe(causal, torch.device("cuda"), 512, 256)["passed"]
    leaky = gpt_cls(512, 64, 4, 2, 256, causal=False).cuda().eval()
    assert not E.causality_probe(leaky, torch.device("cuda"), 512, 256)["passed"]


GPU_FAST = {"budget_s": 5, "eval_tokens": 16384, "tokenizer_train_bytes": 20_000_000, "train_bytes": 20_000_000}


@pytest.mark.gpu
@gpu
def test_gpu_seed_end_to_end_and_budget_kill(tmp_path, shared_cache):
    seed_dir = REPO / "seeds" / "nanochat"
    if not (seed_dir / "train.py").exists():
        pytest.skip("no seed yet")
    res = R.run_benchmark(seed_dir, 1, "h100-90s", tmp_path / "seed" / "r.json", overrides=GPU_FAST, echo=False)
    assert res["status"] == "ok", res["reason"]
    assert res["probes"]["causality"]["passed"] and res["probes"]["logits"]["passed"], res["probes"]
    cand = _candidate(tmp_path, SLEEPER)
    res = R.run_benchmark(cand, 1, "h100-90s", tmp_path / "kill" / "r.json", task_dir=_task_copy(tmp_path, cand),
                          overrides={**GPU_FAST, "budget_s": 1, "allowance_s": 2}, echo=False)
    assert res["status"] == "killed", res


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("ipc", [True, False])
def test_gpu_split_metric_through_the_sandboxed_model_process(tmp_path, gpt_cls, ipc):
    """On CUDA: the model process, sandboxed as in a run, answers through CUDA IPC buffers (or raw
    bytes); the metric equals the in-process one. Where the sandbox's namespaces break CUDA IPC the
    evaluator falls back to bytes and says why (transport)."""
    import threading

    from autolab.sandbox import Limits, Policy, run_sandboxed
    from nanochat_harness import wire

    V, T = 300, 128
    d, model = _model_folder(tmp_path, gpt_cls, V=V, T=T)
    sets, tb = _two_splits(V, T=T, n=10)
    sock = str(d / ".eval.sock")
    listener = wire.listen(sock)
    box: dict = {}
    env = {"PYTHONPATH": os.pathsep.join([str(TASK_DIR), str(REPO)])}

    def serve():
        box["r"] = run_sandboxed([sys.executable, "-m", "nanochat_harness.model_server", "--socket", sock, "--device",
                                  "cuda"], cwd=d, env=env, policy=Policy(write_allow=(str(d),)),
                                 limits=Limits(wall_s=300, memory_mb=None))

    th = threading.Thread(target=serve)
    th.start()
    dev = torch.device("cuda")
    try:
        remote = E.RemoteModel(E.accept_loaded(listener, 240), dev, V, timeout_s=240, ipc=ipc)
        got = E.split_metric(remote, sets, dev, V, batch_rows=4, token_bytes=torch.from_numpy(tb),
                             rng=np.random.default_rng(2))
        remote.close()
    finally:
        listener.close()
        th.join(timeout=120)
    assert box["r"].returncode == 0, box["r"].stdout_tail[-3000:]
    print("transport:", "cuda-ipc" if remote.ipc is True else "bytes", remote.ipc_error)
    assert remote.ipc is (True if ipc and not remote.ipc_error else False)
    m = model.cuda().eval()
    for name, rows in sets.items():
        want = E.bits_per_byte(m, rows, torch.from_numpy(tb), dev, V, batch_rows=4)
        assert abs(got[name]["nats"] - want["nats"]) < 1e-3 * want["nats"], name
    assert got["probes"]["noise"] < 1e-2 and got["probes"]["causal_max_rel"] < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_overlap_policing_with_the_drivers_samples(tmp_path):
    """On a real GPU, through NVML: a process that keeps the GPU busy inside another run's turn
    is stopped once it has used overlap_gpu_s GPU-seconds (its progress stops), and a training
    run's watch counts another process's GPU-seconds in its window."""
    import threading
    import time

    from autolab.gpu_share import Nvml
    from autolab.sandbox import Limits, Policy, run_sandboxed

    nv = Nvml.open()
    assert nv is not None
    busy = ("import time, torch\nx = torch.randn(8192, 8192, device='cuda')\nt = time.time()\n"
            "while time.time() - t < 12:\n    y = x @ x; torch.cuda.synchronize(); print('step', flush=True)\n")
    state = tmp_path / "gpu-k.timed.json"
    state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "other", "training": True}))
    held = R._FileLock(tmp_path / "gpu-k.lock")     # the other run's timed turn
    assert held.take(threading.Event())
    prep = R.GpuBaton(tmp_path, "k", tmp_path / "p", 100.0, nvml=nv, overlap_gpu_s=1.0)
    (tmp_path / "p").mkdir()
    live: dict = {}
    lines: list[float] = []
    th = threading.Thread(target=lambda: run_sandboxed([sys.executable, "-c", busy], cwd=tmp_path, policy=Policy(),
                                                       limits=Limits(wall_s=60, memory_mb=32000), live=live,
                                                       on_line=lambda s: lines.append(time.monotonic())))
    th.start()
    while "pid" not in live:
        time.sleep(0.05)
    police = threading.Thread(target=prep._police, args=(live,))
    police.start()
    t_end = time.monotonic() + 8
    while time.monotonic() < t_end and not prep.froze:
        time.sleep(0.1)
    assert prep.froze == 1 and 1.0 < prep.prep_gpu_s < 3.0, (prep.froze, prep.prep_gpu_s)
    time.sleep(1.0)
    n = len(lines)
    time.sleep(2.0)
    assert len(lines) == n, "the stopped process went on"
    # a training run's watch (its runner: another process) sees nothing of a stopped process, then
    # the stopped process's GPU-seconds once it goes on
    import subprocess

    runner = subprocess.Popen(["sleep", "60"])        # the training run's runner: not an ancestor of the busy one
    timed = R.GpuBaton(tmp_path, "k", tmp_path / "t", 100.0, nvml=nv)
    timed.home_pid, timed._timed = runner.pid, True
    watch = threading.Thread(target=timed._watch)
    watch.start()
    time.sleep(2.0)
    quiet = timed.contention_gpu_s
    state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "other", "training": False}))
    held.release()
    prep._stop.set()                              # the prep's turn: it goes on
    police.join()
    time.sleep(3.0)
    timed.saved()
    timed._stop.set()
    watch.join()
    th.join()
    runner.kill()
    assert quiet < 0.5 and timed.contention_gpu_s > 1.0, (quiet, timed.contention_gpu_s)


class _QuietDevice:
    """The driver's view of an idle GPU (a stand-in for NVML in the baton's unit tests)."""

    def processes(self):
        return {}

    def memory(self):
        return None

    def utilization(self, since):
        return [], since


def _until(cond, timeout=5.0):
    import time

    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return cond()


def test_the_clock_gate_stops_the_tree_so_a_gate_line_buys_no_uncounted_time(tmp_path):
    """The gate line comes from the candidate's process: one that prints it and goes on compiling
    would have the wait left out of its limits. So at the gate the run's tree is stopped
    (live["freeze"]) until the run holds the timed lock; the wait is the sandbox's frozen time
    only (not also in waited_s or the deadline), and the gate file's deadline is written first."""
    import threading
    import time

    (tmp_path / "b").mkdir()
    b = R.GpuBaton(tmp_path, "g", tmp_path / "b", 100.0, nvml=_QuietDevice())
    other = R._FileLock(tmp_path / "gpu-g.lock")     # another run's timed turn
    assert other.take(threading.Event())
    live: dict = {}
    b.ready(live, time.monotonic())
    assert _until(b.go_file.exists)
    deadline = live["deadline"]
    b.at_gate(live)
    assert live.get("freeze") is True
    time.sleep(0.5)                                  # the police keeps it stopped while the gate is shut
    assert live.get("freeze") is True and not b.gate_file.exists()
    live["frozen_s"] = 0.5                           # what the sandbox counted while it was stopped
    other.release()
    assert _until(b.gate_file.exists) and _until(lambda: live.get("freeze") is False)
    assert live["deadline"] == deadline and b.waited_s < 0.5   # the gate's wait is counted once: as frozen time
    assert float(b.gate_file.read_text()) == pytest.approx(time.time() + deadline + 0.5 - time.monotonic(), abs=1.0)
    assert b.timings()["overlap_gate_s"] >= 0.5
    b.release()


def test_a_process_at_the_end_of_a_long_chain_is_still_the_runs(tmp_path):
    """_descends attributes the driver's pids to a run: a candidate that nests its GPU work 100
    processes deep must not have it counted as another's (its own policing skipped, the other
    run's training marked contended)."""
    import subprocess

    code = ("import os, sys, time\n"
            "for _ in range(100):\n"
            "    if os.fork():\n"
            "        os.wait(); os._exit(0)\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "time.sleep(30)\n")
    out = tmp_path / "deep.pid"
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], start_new_session=True)   # its own group
    try:
        assert _until(lambda: out.exists() and out.read_text().strip() != "", timeout=30)
        deep = int(out.read_text())
        assert R._descends(deep, p.pid) and R._descends(deep, os.getpid())
        assert not R._descends(deep, deep + 10**6) and not R._descends(os.getpid(), p.pid)
    finally:
        os.killpg(p.pid, 9)                      # the chain, every level of it
        p.wait()


def test_the_timed_lock_decides_who_is_in_a_turn_not_a_state_file(tmp_path):
    """A state file left by a runner that died (its pid since reused: here, a live pid) names
    nobody, so an honest run is not stopped until a turn that never ends (it would never reach
    its gate: frozen forever). A run that holds the timed lock without writing state (a run
    without overlap, whose whole turn is timed) is in a turn: the waiting run is policed."""
    import threading
    import time

    from autolab.gpu_share import Sample

    class Busy(_QuietDevice):                  # the waiting run's first process keeps the device busy
        def utilization(self, since):
            return [Sample(4242, since + 200_000, 100, 0, 200_000)], since + 200_000

    (tmp_path / "b").mkdir()
    state = tmp_path / "gpu-s.timed.json"
    state.write_text(json.dumps({"runner_pid": os.getpid(), "run": "gone", "training": True}))
    b = R.GpuBaton(tmp_path, "s", tmp_path / "b", 100.0, nvml=Busy(), overlap_gpu_s=0.3)
    assert b._other_training(or_evaluating=True) is None and b._other_training() is None
    live: dict = {"pid": 4242}
    police = threading.Thread(target=b._police, args=(live,))
    police.start()
    time.sleep(0.8)
    assert not b.froze and not live.get("freeze") and b.prep_gpu_s == 0.0
    state.unlink()
    other = R._FileLock(tmp_path / "gpu-s.lock")   # a run without overlap takes its turn
    assert other.take(threading.Event())
    assert b._other_training() == R.GpuBaton.HELD
    assert _until(lambda: live.get("freeze") is True) and b.froze == 1 and b.prep_gpu_s > 0.3
    other.release()
    assert _until(lambda: live.get("freeze") is False)
    b._stop.set()
    police.join()


def test_a_run_whose_gpu_work_goes_on_while_stopped_is_ended_and_an_oom_is_shared_only_beside_real_memory(tmp_path):
    """SIGSTOP does not stop kernels already queued (nor a process the stop missed): a run still
    using the GPU 1.5 s into its stop, past 2 x overlap_gpu_s, is ended with a gpu_contention
    violation. And an out-of-memory counts as the sharing's doing only if other runners held
    SHARED_MEMORY or more (the next run's boot and evaluation contexts alone are not a reason)."""
    import threading

    from autolab.gpu_share import Sample

    class Busy(_QuietDevice):
        def utilization(self, since):
            return [Sample(4242, since + 200_000, 100, 0, 200_000)], since + 200_000

    (tmp_path / "b").mkdir()
    other = R._FileLock(tmp_path / "gpu-e.lock")   # another run in its turn (without overlap: no state)
    assert other.take(threading.Event())
    b = R.GpuBaton(tmp_path, "e", tmp_path / "b", 100.0, nvml=Busy(), overlap_gpu_s=0.3)
    live: dict = {"pid": 4242, "deadline": 1e18}
    police = threading.Thread(target=b._police, args=(live,))
    police.start()
    assert _until(lambda: b.escaped, timeout=10)
    assert live["freeze"] is True and live["deadline"] == float("-inf") and b.busy_while_stopped > 0.6
    v = b.escaped_stop()
    assert v["kind"] == "gpu_contention" and "while they were stopped" in v["detail"]
    b._stop.set()
    police.join()
    other.release()
    # out of memory: shared only beside a real share of the memory
    b2 = R.GpuBaton(tmp_path, "f", tmp_path / "b", 100.0, nvml=_QuietDevice())
    b2.shared = True
    b2.others_memory_peak = 1 << 30
    assert b2.shared_failure("torch.OutOfMemoryError: CUDA out of memory") is None
    b2.others_memory_peak = 20 << 30
    assert b2.shared_failure("torch.OutOfMemoryError: CUDA out of memory").startswith("infrastructure:")
