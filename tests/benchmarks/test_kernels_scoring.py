"""kernels task: SOL scoring, the tolerance rule, the problem definitions and the caches (CPU only)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
sys.path.insert(0, str(TASK_DIR))

from kernels_harness import scoring  # noqa: E402
from kernels_harness.problems import ProblemError, load_problems, problem_names  # noqa: E402
from kernels_harness.tolerance import WORST_FACTOR, check_output  # noqa: E402

# ----------------------------------------------------------------------------- scoring (pure)


def test_t_sol_is_the_roofline_max():
    # 1 TFLOP at 1000 TFLOP/s = 1 ms; 1 GB at 1 TB/s = 1 ms: equal; then each side dominates
    assert scoring.t_sol(1e12, 1e9, 1e15, 1e12) == pytest.approx(1e-3)
    assert scoring.t_sol(4e12, 1e9, 1e15, 1e12) == pytest.approx(4e-3)      # compute-bound
    assert scoring.t_sol(1e12, 3e9, 1e15, 1e12) == pytest.approx(3e-3)      # memory-bound
    with pytest.raises(ValueError):
        scoring.t_sol(1, 1, 0, 1)


def test_sol_score_anchors_and_monotonicity():
    t_sol, t_b = 10e-6, 50e-6
    assert scoring.sol_score(t_b, t_b, t_sol) == pytest.approx(0.5)          # parity with the baseline
    assert scoring.sol_score(t_sol, t_b, t_sol) == pytest.approx(1.0)        # at the speed of light
    # exactly the SOL-ExecBench formula
    t_k = 30e-6
    assert scoring.sol_score(t_k, t_b, t_sol) == pytest.approx(1 / (1 + (t_k - t_sol) / (t_b - t_sol)))
    xs = [scoring.sol_score(t, t_b, t_sol) for t in (12e-6, 20e-6, 50e-6, 100e-6, 1e-3)]
    assert xs == sorted(xs, reverse=True) and all(0 < x < 1 for x in xs)
    assert scoring.sol_score(5e-6, t_b, t_sol) > 1.0                         # below the bound: impossible
    with pytest.raises(ValueError):
        scoring.sol_score(0.0, t_b, t_sol)


def test_baseline_at_or_below_the_bound_falls_back_to_zero_bound():
    # T_b <= T_SOL means the ceilings were measured too low: S = t_b / (t_b + t_k)
    assert scoring.sol_score(10e-6, 10e-6, 20e-6) == pytest.approx(0.5)
    assert scoring.sol_score(5e-6, 10e-6, 20e-6) == pytest.approx(10 / 15)
    w = scoring.workload_score(1e9, 1e9, 1e15, 1e12, t_k=5e-4, t_b=5e-4)    # t_sol = 1 ms > t_b
    assert w["baseline_at_sol"] and not w["below_sol"]


def test_problem_and_suite_scores():
    assert scoring.problem_score([0.6, 0.8], all_correct=True) == pytest.approx(0.7)
    assert scoring.problem_score([0.6, 0.8], all_correct=False) == 0.0
    assert scoring.problem_score([0.6, 0.8], all_correct=True, flagged=True) == 0.0
    assert scoring.suite_score([0.7, 0.0, 0.5]) == pytest.approx(0.4)
    assert scoring.suite_score([]) == 0.0


def test_score_suite_flags_times_below_sol_and_zeroes_incorrect():
    ceil = {"peak_flops": {"bf16": 1e15, "fp8": 2e15}, "peak_bw": 1e12}
    problems = {
        "a": {"peak": "bf16", "workloads": [{"label": "x", "flops": 1e9, "bytes": 1e7},        # t_sol 10 us
                                           {"label": "y", "flops": 1e9, "bytes": 2e7}]},     # t_sol 20 us
        "b": {"peak": "fp8", "workloads": [{"label": "x", "flops": 4e10, "bytes": 1e6}]},    # t_sol 20 us
        "c": {"peak": "bf16", "workloads": [{"label": "x", "flops": 1e6, "bytes": 1e7}]},
    }
    base = {"a": {"x": 50e-6, "y": 60e-6}, "b": {"x": 100e-6}, "c": {"x": 40e-6}}
    kern = {"a": {"correct": True, "times": {"x": 30e-6, "y": 40e-6}},
            "b": {"correct": True, "times": {"x": 15e-6}},                  # below the 20 us bound
            "c": {"correct": False, "times": {"x": 20e-6}}}
    out = scoring.score_suite(problems, ceil, base, kern)
    a = out["problems"]["a"]
    assert a["score"] == pytest.approx((1 / (1 + 20 / 40) + 1 / (1 + 20 / 40)) / 2)
    assert out["problems"]["b"]["below_sol"] and out["problems"]["b"]["score"] == 0.0
    assert out["below_sol"] == ["b[x]"]
    assert out["problems"]["c"]["score"] == 0.0
    assert out["score"] == pytest.approx(a["score"] / 3)
    # a missing workload time means the problem is incomplete: 0
    kern["a"]["times"].pop("y")
    assert scoring.score_suite(problems, ceil, base, kern)["problems"]["a"]["score"] == 0.0


# ----------------------------------------------------------------------------- tolerance rule


def test_tolerance_rule_99_percent_of_elements():
    y = torch.ones(1000)
    x = y.clone()
    x[:10] += 0.01                                   # 1% off by 5x the tolerance: still passes
    assert check_output(x, y, 1e-3, 1e-3).ok
    x[10] += 0.01                                    # 1.1% off: fails
    c = check_output(x, y, 1e-3, 1e-3)
    assert not c.ok and c.reason.startswith("tolerance") and c.fraction_ok == pytest.approx(0.989)
    # |x - y| <= atol + rtol * |y|, with |y| from the reference
    assert check_output(torch.tensor([1.5]), torch.tensor([1.0]), 0.0, 0.5).ok
    assert not check_output(torch.tensor([1.5]), torch.tensor([1.0]), 0.0, 0.49).ok
    assert check_output(torch.tensor([0.3]), torch.tensor([0.0]), 0.3, 10.0).ok


def test_tolerance_rule_rejects_shape_dtype_nonfinite_and_all_zero():
    y = torch.randn(4, 5)
    assert "shape" in check_output(y.reshape(5, 4), y, 1, 1).reason
    assert "shape" in check_output(y.reshape(20), y, 1, 1).reason
    assert "dtype" in check_output(y.double(), y, 1, 1).reason
    x = y.clone()
    x[0, 0] = float("nan")                           # one NaN fails even with huge tolerances
    assert check_output(x, y, 1e9, 1e9).reason.startswith("nonfinite")
    x[0, 0] = float("inf")
    assert check_output(x, y, 1e9, 1e9).reason.startswith("nonfinite")
    assert check_output(torch.zeros_like(y), y, 1e9, 1e9).reason.startswith("all_zero")
    assert check_output(torch.zeros(3), torch.zeros(3), 0, 0).ok            # zero where zero is right
    big = torch.randn(10_000)
    x = big.clone()
    x[:5] = float("nan")                             # 0.05% NaN: the 99% rule would let it pass
    assert check_output(x, big, 1e-3, 1e-3).reason.startswith("nonfinite")
    bf = torch.randn(64, 64).bfloat16()
    assert check_output(bf, bf.clone(), 0.0, 0.0).ok                        # exact problems (max) work


def test_worst_element_bound_rejects_a_few_elements_far_off():
    """The 99% rule bounds how many elements miss the tolerance; the worst-element bound bounds
    by how much: a few elements at 45x the tolerance fail, a few at 5x pass."""
    y = torch.linspace(-2, 2, 2000)
    tol = 1e-3 + 1e-3 * y.abs()
    for factor, ok in ((5.0, True), (WORST_FACTOR * 0.99, True), (WORST_FACTOR * 1.05, False), (45.0, False)):
        x = y.clone()
        x[::200] += factor * tol[::200]              # 0.5% of the elements
        c = check_output(x, y, 1e-3, 1e-3)
        assert c.ok is ok, (factor, c)
        assert c.fraction_ok == pytest.approx(0.995)
        assert c.worst_ratio == pytest.approx(factor, rel=1e-3)
        if not ok:
            assert c.reason.startswith("worst_element") and "10 of 2000" in c.reason
    exact = torch.arange(100.0)                      # a tolerance of zero: every element exact
    x = exact.clone()
    x[3] += 1
    assert check_output(x, exact, 0.0, 0.0, min_fraction=0.9).reason.startswith("worst_element")


def test_nonfinite_reference_positions_must_match():
    y = torch.tensor([1.0, float("inf"), float("-inf"), float("nan")])
    assert check_output(y.clone(), y, 1e-3, 1e-3).ok
    for i, v in ((1, 5.0), (2, float("inf")), (3, 0.0)):
        x = y.clone()
        x[i] = v
        assert check_output(x, y, 1e-3, 1e-3).reason.startswith("nonfinite"), i


# ----------------------------------------------------------------------------- problem definitions

ALL = load_problems()


def test_suite_has_at_least_24_valid_problems():
    assert len(ALL) >= 24
    families = {"matmul_bf16", "bmm_bf16", "fp8_matmul_tensorwise", "fp8_matmul_rowwise", "sum_rows", "mean_rows",
                "max_rows", "softmax", "layernorm", "rmsnorm", "gelu", "swiglu", "rotary", "cross_entropy",
                "attention_causal", "fp8_quantize_rowwise", "fp8_dequantize_rowwise", "matmul_bias_gelu",
                "rmsnorm_matmul", "residual_rmsnorm", "scaled_causal_softmax"}
    assert families <= set(ALL)
    for name, p in ALL.items():
        assert 4 <= len(p.workloads()) <= 8, name
        assert len(p.workloads(hidden=True)) >= 2, name
        assert p.workloads("tiny") and p.workloads("tiny", hidden=True), name
        assert p.peak in ("bf16", "fp8")
        for w in p.workloads() + p.workloads(hidden=True):
            assert isinstance(p.flops(w), int) and p.flops(w) > 0
            assert isinstance(p.bytes_moved(w), int) and p.bytes_moved(w) > 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_reference_runs_and_byte_count_is_inputs_plus_outputs(name):
    """bytes = every input read once + every output written once (the tiny shapes check the
    formula against real tensors); scaled_causal_softmax counts only the visible inputs."""
    p = ALL[name]
    for w in p.workloads("tiny") + p.workloads("tiny", hidden=True):
        gen = torch.Generator().manual_seed(1)
        inputs = p.make_inputs(w, gen, "cpu")
        out = p.reference(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        assert all(type(o) is torch.Tensor and torch.isfinite(o.float()).all() for o in outs)
        moved = sum(t.numel() * t.element_size() for t in list(inputs) + list(outs))
        if p.minimal_bytes:
            assert p.bytes_moved(w) < moved
        else:
            assert p.bytes_moved(w) == moved, (w, p.bytes_moved(w), moved)
        # the same seed gives the same inputs (the parent and the worker draw alike)
        again = p.make_inputs(w, torch.Generator().manual_seed(1), "cpu")
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(inputs, again))


def test_flop_counts_of_a_few_problems_are_exact():
    assert ALL["matmul_bf16"].flops({"M": 2, "N": 3, "K": 4}) == 48
    assert ALL["bmm_bf16"].flops({"B": 2, "M": 2, "N": 3, "K": 4}) == 96
    assert ALL["softmax"].flops({"M": 1, "N": 10, "dtype": "bf16"}) == 48           # max 9, sub/exp/div 10, sum 9
    # causal attention: S(S+1)/2 visible pairs per head, 4D flops each for the two products
    w = {"B": 1, "H": 1, "S": 4, "D": 8}
    assert ALL["attention_causal"].flops(w) == 4 * 8 * 10 + 5 * 10 + 4 * 8


def test_unknown_problem_names_are_an_error():
    with pytest.raises(ProblemError, match="unknown problem"):
        load_problems(["softmax", "no_such_problem"])
    assert "softmax" in problem_names()


# ----------------------------------------------------------------------------- caches


def test_ceilings_are_measured_once_and_cached(tmp_path, monkeypatch):
    from kernels_harness import ceilings

    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path))
    calls = []
    fake = {"version": ceilings.VERSION, "device": "cpu-test", "peak_flops": {"bf16": 1e12, "fp8": 2e12},
            "peak_bw": 1e10, "bw": {"copy": 1e10, "read": 1e10, "write": 1e10}}
    monkeypatch.setattr(ceilings, "measure", lambda device: calls.append(device) or dict(fake))
    a = ceilings.get("cpu")
    b = ceilings.get("cpu")
    assert calls == ["cpu"] and not a["cached"] and b["cached"]
    files = list((tmp_path / "kernels").glob("ceilings-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["peak_bw"] == 1e10
    ceilings.get("cpu", refresh=True)
    assert calls == ["cpu", "cpu"]


def test_measured_cpu_ceilings_are_positive():
    from kernels_harness import ceilings

    c = ceilings.measure("cpu")
    assert c["peak_flops"]["bf16"] > 0 and c["peak_flops"]["fp8"] >= c["peak_flops"]["bf16"]
    assert c["peak_bw"] == max(c["bw"].values()) > 0 and math.isfinite(c["peak_bw"])
