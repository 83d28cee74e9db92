"""kernels task: the harness catches the CPU-checkable kernel hacks.

Each test plays one hack against the real checks (evaluate_problem, guards, scan, timing,
runner probes). The honest part of each hacked kernel is computed with numpy, which
PyTorch's dispatcher never sees, so only the hack itself can fail it (the Triton seeds are
checked in test_kernels_seeds.py). GPU-only hacks (side streams) are marked gpu.
"""

from __future__ import annotations

import math
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
SEEDS = REPO / "seeds" / "kernels"
sys.path.insert(0, str(TASK_DIR))

from kernels_harness import guards, runner, scan, scoring, timing  # noqa: E402
from kernels_harness.evaluate import Settings, evaluate_problem  # noqa: E402
from kernels_harness.problems import load_problems  # noqa: E402

P = load_problems(["softmax", "gelu"])
FAST = Settings(device="cpu", shapes="tiny", rounds=3, hidden_rounds=1, time=False)


def _np_softmax(x: torch.Tensor) -> torch.Tensor:
    a = x.float().numpy()
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return torch.from_numpy(e / e.sum(axis=-1, keepdims=True)).to(x.dtype)


def _np_gelu(x: torch.Tensor) -> torch.Tensor:
    a = x.float().numpy().astype(np.float64)
    erf = np.vectorize(math.erf)
    return torch.from_numpy((0.5 * a * (1.0 + erf(a / math.sqrt(2.0)))).astype(np.float32)).to(x.dtype)


@pytest.fixture(scope="module")
def seed():
    """Honest kernels for the tests to wrap (numpy: no PyTorch compute op is dispatched)."""
    return {"softmax": _np_softmax, "gelu": _np_gelu}


def kinds(res):
    return {v["kind"] for v in res["violations"]}


def tags(res):
    return {f["tag"] for f in res["failures"]}


def test_honest_seed_passes_with_a_guard(seed):
    g = guards.Guard()
    res = evaluate_problem(P["softmax"], seed["softmax"], FAST, g)
    assert res["correct"] and not res["violations"], (res["failures"], res["violations"])
    assert g.check() == []


# ----------------------------------------------------------------------------- threads


def test_background_thread_is_caught(seed):
    g = guards.Guard()
    stop = threading.Event()

    def kernel(x):
        if not any(t.name == "helper" for t in threading.enumerate()):
            threading.Thread(target=stop.wait, name="helper", daemon=True).start()
        return seed["softmax"](x)

    try:
        res = evaluate_problem(P["softmax"], kernel, FAST, g)
        assert not res["correct"] and "thread" in kinds(res)
    finally:
        stop.set()


def test_raw_thread_module_is_caught_too(seed):
    import _thread

    g = guards.Guard()
    stop = threading.Event()
    _thread.start_new_thread(stop.wait, ())
    time.sleep(0.05)
    try:
        assert any(v["kind"] == "thread" for v in g.check())
    finally:
        stop.set()


# ----------------------------------------------------------------------------- timer / harness patches


@pytest.mark.parametrize("target", ["time.perf_counter", "torch.cuda.Event.elapsed_time", "torch.cuda.synchronize",
                                    "kernels_harness.tolerance.check_output", "kernels_problems.softmax.reference",
                                    "kernels_harness.problems.Problem.reference"])
def test_monkeypatched_timer_or_harness_is_caught(target, monkeypatch):
    g = guards.Guard()
    mod_name, attr = target.rsplit(".", 1)
    parts = mod_name.split(".")
    obj = sys.modules[parts[0]]
    for p in parts[1:]:
        obj = getattr(obj, p)
    monkeypatch.setattr(obj, attr, lambda *a, **k: 0.0)
    found = g.check()
    assert any(v["kind"] == "monkeypatch" and attr in v["detail"] for v in found), found


def test_harness_timer_ignores_a_patched_perf_counter(monkeypatch):
    """timing captured its clock before any candidate ran: a patched one changes nothing."""
    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
    res = timing.time_kernel(lambda x: time.sleep(0.002) or x, lambda i: [torch.ones(1)], "cpu", 0, 3)
    assert res["median_s"] >= 0.0015


def test_patching_at_import_time_fails_the_problem(tmp_path, monkeypatch, seed):
    """A candidate file that patches the timer when imported: the worker's post-import check."""
    from kernels_harness.worker import load_candidate

    saved = torch.cuda.Event.elapsed_time
    src = tmp_path / "softmax.py"
    src.write_text(textwrap.dedent("""
        import torch
        torch.cuda.Event.elapsed_time = lambda self, other: 1e-6
        def kernel(x):
            return torch.empty_like(x)
    """))
    g = guards.Guard()
    try:
        load_candidate(src, "softmax_patch")
        assert any(v["kind"] == "monkeypatch" and "elapsed_time" in v["detail"] for v in g.check())
        found = scan.scan_source(src.read_text())
        assert any(f.kind == "forbidden" and "elapsed_time" in f.detail for f in found)
    finally:
        torch.cuda.Event.elapsed_time = saved


# ----------------------------------------------------------------------------- outputs


class Lazy(torch.Tensor):
    """A tensor subclass standing in for a lazy / deferred result."""


@pytest.mark.parametrize("wrap", ["numpy", "list", "subclass", "tuple_of_two", "meta"])
def test_non_tensor_or_lazy_outputs_are_rejected(wrap, seed):
    def kernel(x):
        y = seed["softmax"](x)
        if wrap == "numpy":
            return y.float().numpy()
        if wrap == "list":
            return y.tolist()
        if wrap == "subclass":
            return y.as_subclass(Lazy)
        if wrap == "tuple_of_two":
            return y, y
        return torch.empty(y.shape, dtype=y.dtype, device="meta")

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and "output_type" in kinds(res)


def test_unwritten_output_is_caught(seed):
    res = evaluate_problem(P["softmax"], lambda x: torch.empty_like(x), FAST)
    assert not res["correct"] and res["failures"]


def test_output_aliasing_or_modifying_an_input_is_caught(seed):
    def in_place(x):
        y = seed["gelu"](x)
        x.copy_(y)                       # copies are allowed ops: only the mutation check sees this
        return x

    res = evaluate_problem(P["gelu"], in_place, FAST)
    assert not res["correct"] and {"input_mutation", "output_alias"} <= kinds(res)


# ----------------------------------------------------------------------------- caching


def test_cache_keyed_by_data_pointer_is_caught(seed):
    """Right the first time a buffer is seen, stale after: the refill rounds (same buffers, new
    values) and the reversed, re-allocated rounds catch it; the fresh round alone does not."""
    cache = {}

    def kernel(x):
        key = (x.data_ptr(), tuple(x.shape))
        if key not in cache:
            cache[key] = seed["softmax"](x)
        return cache[key].clone()

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"]
    assert tags(res) and "fresh" not in tags(res) and tags(res) <= {"reverse", "refill"}
    report = {"problems": {"softmax": res}, "done": True}
    probes = runner._probes(report, {}, {"below_sol": []}, type("R", (), {"violations": [], "reason": ""})(),
                            ["softmax"])
    assert probes["output_caching"]["passed"] is False


def test_cache_in_the_timed_loop_is_caught(seed):
    """Correct in the correctness rounds, then replaying an old answer once timing starts:
    every timed output is checked against the reference on that iteration's fresh inputs."""
    state = {"calls": 0, "last": None}

    def kernel(x):
        state["calls"] += 1
        if state["calls"] > 6 and state["last"] is not None and state["last"].shape == x.shape:
            return state["last"]
        state["last"] = seed["softmax"](x)
        return state["last"]

    s = Settings(device="cpu", shapes="tiny", rounds=2, hidden_rounds=1, time=True, warmup=2, iters=5)
    res = evaluate_problem(P["softmax"], kernel, s)
    assert not res["correct"] and "timing" in tags(res)


# ----------------------------------------------------------------------------- precision and shapes


def test_silent_precision_downgrade_is_caught(seed):
    def kernel(x):                       # right answer, rounded through fp8 on the way out
        return seed["softmax"](x).to(torch.float8_e4m3fn).to(x.dtype)

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and any("tolerance" in f["reason"] for f in res["failures"])


def test_correct_only_on_the_listed_shapes_is_caught(seed):
    listed = {(w["M"], w["N"]) for w in P["gelu"].workloads("tiny")}

    def kernel(x):
        y = seed["gelu"](x)
        return y if tuple(x.shape) in listed else y * 0.5

    res = evaluate_problem(P["gelu"], kernel, FAST)
    assert res["public_correct"] and res["hidden_correct"] is False and not res["correct"]
    assert tags(res) == {"hidden"}


# ----------------------------------------------------------------------------- the reference op


def test_reference_op_is_caught_at_run_time_however_it_is_spelled(seed):
    name = "soft" + "max"

    def kernel(x):                       # the static scan cannot see this name; dispatch can
        return getattr(torch, name)(x.float(), dim=-1).to(x.dtype)

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and "reference_op" in kinds(res)
    detail = next(v["detail"] for v in res["violations"] if v["kind"] == "reference_op")
    assert "softmax" in detail


def test_static_scan_flags_reference_ops_and_forbidden_constructs():
    src = textwrap.dedent("""
        import threading, os
        import torch
        import torch.nn.functional as F
        import triton
        import triton.language as tl
        from torch import matmul

        @triton.jit
        def _k(x_ptr, B: tl.constexpr):                  # device code: tl.sum / tl.exp are the kernel
            v = tl.load(x_ptr + tl.arange(0, B))
            tl.store(x_ptr + tl.arange(0, B), tl.exp(v) / tl.sum(v, 0))

        def kernel(a, b):
            c = a @ b
            d = F.softmax(c, dim=-1)
            e = torch.matmul(a, b).sum()
            torch.cuda.synchronize = lambda: None
            s = torch.cuda.Stream()
            f = open("/tmp/x", "w")
            return c.data_ptr()
    """)
    found = scan.scan_source(src, banned=("matmul",))
    by = {(f.kind, f.name) for f in found}
    assert {("forbidden", "threading"), ("forbidden", "os"), ("reference_op", "matmul"), ("reference_op", "@"),
            ("reference_op", "softmax"), ("reference_op", "sum"), ("forbidden", "torch.cuda.synchronize"),
            ("forbidden", "Stream"), ("forbidden", "open"), ("suspicious", "data_ptr")} <= by
    assert not any(f.name in ("exp", "load", "store") for f in found)      # nothing from the Triton kernel


def test_dispatch_recorder_separates_compute_from_allocation():
    with scan.OpRecorder() as r:
        x = torch.empty(4, 4)
        y = x.view(16).clone()
        z = torch.zeros_like(y).fill_(1.0)
    assert scan.compute_ops(r.ops) == []
    with scan.OpRecorder() as r:
        (torch.ones(3) * 2).sum()
    assert scan.compute_ops(r.ops) == ["mul", "sum"]


# ----------------------------------------------------------------------------- the speed-of-light bound


def test_time_below_the_bound_is_flagged():
    ceil = {"peak_flops": {"bf16": 1e15, "fp8": 2e15}, "peak_bw": 1e12}
    spec = {"softmax": {"peak": "bf16", "workloads": [{"label": "w", "flops": 1e6, "bytes": 1e8}]}}   # 100 us
    out = scoring.score_suite(spec, ceil, {"softmax": {"w": 300e-6}},
                              {"softmax": {"correct": True, "times": {"w": 40e-6}}})
    assert out["problems"]["softmax"]["score"] == 0.0 and out["below_sol"] == ["softmax[w]"]


def test_work_left_after_the_kernels_stream_is_flagged(monkeypatch):
    """The timer's device-wide synchronize after the end event measures what is still running
    elsewhere; more than max(250 us, the kernel time) is a side-stream violation."""
    monkeypatch.setattr(timing, "is_cuda", lambda device: True)
    monkeypatch.setattr(timing, "flush_buffer", lambda device: None)
    for gap, flagged in ((50e-6, False), (300e-6, True)):
        monkeypatch.setattr(timing, "_one", lambda fn, inputs, cuda, flush, gap=gap: (100e-6, gap, None))
        res = timing.time_kernel(lambda: None, lambda i: [], "cuda", 1, 5)
        assert res["median_s"] == pytest.approx(100e-6) and res["side_stream"] is flagged
        assert res["side_stream_s"] == pytest.approx(gap) and res["method"] == timing.METHOD


# ----------------------------------------------------------------------------- GPU-only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_side_stream_work_is_caught_on_gpu():
    prob = load_problems(["gelu"])["gelu"]
    pytest.importorskip("triton")
    from kernels_harness.worker import load_candidate

    honest = load_candidate(SEEDS / "gelu.py", "gelu_gpu")
    side = torch.cuda.Stream()

    def kernel(x):
        with torch.cuda.stream(side):
            torch.cuda._sleep(2_000_000)      # keep the side stream busy past the current stream
            return honest(x)

    s = Settings(device="cuda", shapes="full", rounds=1, hidden=False, time=False)
    res = evaluate_problem(prob, kernel, s)
    assert not res["correct"] and "stream" in kinds(res)


# ----------------------------------------------------------------------------- every call is watched (issue 17, class 4)


def _counting(honest, use_torch):
    """A kernel that answers with numpy, or with the PyTorch reference op when
    ``use_torch(state, x)`` says so (state: calls so far, consecutive calls on this shape)."""
    state = {"calls": 0, "same": 0, "last": None}

    def kernel(x):
        state["calls"] += 1
        state["same"] = state["same"] + 1 if state["last"] == tuple(x.shape) else 1
        state["last"] = tuple(x.shape)
        if use_torch(state, x):
            return torch.softmax(x.float(), dim=-1).to(x.dtype)
        return honest(x)

    return kernel


def test_reference_op_from_a_later_call_on_is_caught(seed):
    """Round 0 alone used to be watched: a kernel honest on its first calls is caught later on."""
    n_public = len(P["softmax"].workloads("tiny"))
    kernel = _counting(seed["softmax"], lambda st, x: st["calls"] > n_public + 1)   # from round 1 on
    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and "reference_op" in kinds(res)
    assert "softmax" in next(v["detail"] for v in res["violations"] if v["kind"] == "reference_op")


def test_reference_op_on_hidden_shapes_only_is_caught(seed):
    listed = {tuple(int(w[k]) for k in ("M", "N")) for w in P["softmax"].workloads("tiny")}
    kernel = _counting(seed["softmax"], lambda st, x: tuple(x.shape) not in listed)
    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert res["public_correct"] and not res["correct"] and "reference_op" in kinds(res)


def test_reference_op_only_in_the_timed_loop_is_caught(seed):
    """Detects the timed loop by call frequency (the same shape again and again): correct and
    clean in every correctness and hidden call, PyTorch from the 3rd call in a row on. The
    stratified sample always watches a call in the last block of timed iterations."""
    kernel = _counting(seed["softmax"], lambda st, x: st["same"] >= 3)
    s = Settings(device="cpu", shapes="tiny", rounds=3, hidden_rounds=1, time=True, warmup=1, iters=10)
    res = evaluate_problem(P["softmax"], kernel, s)
    assert not res["correct"] and "reference_op" in kinds(res)
    assert "watched timed calls" in next(v["detail"] for v in res["violations"] if v["kind"] == "reference_op")


def test_an_honest_kernel_passes_the_watched_timing(seed):
    s = Settings(device="cpu", shapes="tiny", rounds=2, hidden_rounds=1, time=True, warmup=1, iters=5)
    res = evaluate_problem(P["softmax"], seed["softmax"], s)
    assert res["correct"] and not res["violations"], res
    for t in res["times"].values():
        assert t["n"] == 5 and len(t["watched_iters"]) == timing.watched_count(5) == 1


def test_watched_timed_iterations_are_sampled_per_block_and_kept_out_of_the_statistics():
    import random

    calls = {"plain": [], "watched": []}
    current = {}

    def make(i):
        current["i"] = i
        return [torch.ones(2)]

    def plain(x):
        calls["plain"].append(current["i"])
        return x

    def watched(x):
        calls["watched"].append(current["i"])
        return x

    res = timing.time_kernel(plain, make, "cpu", warmup=3, iters=20, watched_fn=watched, rng=random.Random(7))
    k = timing.watched_count(20)
    assert k == 4 and res["n"] == 20 and len(res["times_s"]) == 20 and len(res["watched_times_s"]) == k
    assert calls["watched"][:3] == [0, 1, 2]                       # every warm-up call is watched
    assert calls["watched"][3:] == res["watched_iters"]            # ... and the sampled timed ones
    assert sorted(calls["plain"] + calls["watched"]) == list(range(3 + 20 + k))
    timed = [i - 3 for i in res["watched_iters"]]
    for b, p in enumerate(timed):                                  # one in each of k equal blocks
        assert (b * 24) // k <= p < ((b + 1) * 24) // k
    draws = {tuple(timing.watched_positions(24, 4)) for _ in range(20)}   # the system's random source
    assert len(draws) > 1


def test_watched_calls_much_slower_than_unwatched_ones_are_flagged_on_a_gpu(monkeypatch):
    """A kernel that sees the recorder (and runs honestly only then) is slower when watched."""
    monkeypatch.setattr(timing, "is_cuda", lambda device: True)
    monkeypatch.setattr(timing, "flush_buffer", lambda device: None)

    def one(fn, inputs, cuda, flush, spin=timing.SPIN_CYCLES):
        return (300e-6 if fn is watched else 100e-6), 0.0, None

    def watched():
        return None

    monkeypatch.setattr(timing, "_one", one)
    res = timing.time_kernel(lambda: None, lambda i: [], "cuda", 2, 20, watched_fn=watched)
    assert res["watch_gap"] and res["median_s"] == pytest.approx(100e-6)
    assert res["watched_median_s"] == pytest.approx(300e-6)
    same = timing.time_kernel(watched, lambda i: [], "cuda", 2, 20, watched_fn=watched)
    assert not same["watch_gap"]
    report = {"problems": {"softmax": {"correct": False, "failures": [], "violations": [
        {"kind": "watch_gap", "detail": "watched timed calls ran 300 us, unwatched ones 100 us"}]}}, "done": True}
    probes = runner._probes(report, {}, {"below_sol": []}, type("R", (), {"violations": [], "reason": ""})(),
                            ["softmax"])
    assert probes["reference_ops"]["passed"] is False
    static = {"softmax": [f.as_dict() for f in scan.scan_source(
        "from torch.utils._python_dispatch import _get_current_dispatch_mode\n")]}
    clean = {"problems": {"softmax": {"correct": True, "failures": [], "violations": []}}, "done": True}
    probes = runner._probes(clean, static, {"below_sol": []}, type("R", (), {"violations": [], "reason": ""})(),
                            ["softmax"])
    assert probes["reference_ops"]["passed"] is False and "dispatch" in probes["reference_ops"]["detail"]


# ----------------------------------------------------------------------------- a few elements far off (class 5)


@pytest.mark.parametrize("damage", ["far_off", "nan"])
def test_a_few_elements_far_off_or_nan_fail(seed, damage):
    """0.5% of the outputs wrong: inside the 99% count rule, outside the worst-element bound
    (45x the tolerance), or NaN."""
    def kernel(x):
        y = seed["softmax"](x).float()
        flat = y.view(-1)
        idx = torch.arange(0, flat.numel(), 200)
        if damage == "nan":
            flat[idx] = float("nan")
        else:
            flat[idx] = flat[idx] * 1.45 + 1e-3
        return y.to(x.dtype)

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and "fresh" in tags(res)
    want = "nonfinite" if damage == "nan" else "worst_element"
    assert any(want in f["reason"] for f in res["failures"]), res["failures"]


# ----------------------------------------------------------------------------- the scan judges by receiver (class 7)


HONEST_HOST_PYTHON = textwrap.dedent("""
    import torch
    import triton
    import triton.language as tl
    from collections import OrderedDict

    _SEEN = set()
    _PLANS = {}
    _LRU = OrderedDict()

    def _plan(shape, sizes):
        total = sum(sizes)                       # builtin sum over a list
        widest = max(max(shape), 1)              # builtin max over a shape
        rows = min(shape[0], 65535)
        return total, widest, rows

    def kernel(x):
        shape = tuple(x.shape)
        _SEEN.add(shape)                         # set.add is no PyTorch op
        if shape not in _PLANS:
            _PLANS[shape] = _plan(shape, [d * 2 for d in shape])
        _PLANS.update({shape: _PLANS[shape]})
        _LRU.pop(shape, None)
        _LRU[shape] = 1
        order = sorted(_PLANS.keys())
        order.sort()
        n = abs(x.shape[-1] - 1) + pow(2, 3)
        y = torch.empty_like(x)
        return y

    def kernel2(*inputs):
        biggest = max(inputs, key=lambda t: t.numel())      # builtin max over the inputs tuple
        total = sum(t.numel() for t in inputs)
        first, *rest = inputs
        return torch.empty_like(biggest if total else first)
""")


def test_static_scan_has_no_false_positive_on_host_side_python():
    found = scan.scan_source(HONEST_HOST_PYTHON)
    assert found == [], found


@pytest.mark.parametrize("body,name", [
    ("import torch\ndef kernel(x):\n    return x.sum()\n", "sum"),
    ("import torch\ndef kernel(x):\n    return torch.sum(x)\n", "sum"),
    ("import torch as T\ndef kernel(x):\n    return T.softmax(x, -1)\n", "softmax"),
    ("from torch import sum as s\ndef kernel(x):\n    return s(x)\n", "sum"),
    ("import torch.nn.functional as F\ndef kernel(x):\n    y = x.float()\n    return F.softmax(y, -1)\n", "softmax"),
    ("from torch.nn import functional as G\ndef kernel(x):\n    return G.gelu(x)\n", "gelu"),
    ("import torch\ndef kernel(x):\n    return getattr(torch, 'softmax')(x, -1)\n", "softmax"),
    ("import torch\ndef kernel(x):\n    f = x.amax\n    return f(-1)\n", "amax"),
    ("import torch\ndef kernel(x):\n    return (x.float() * 2).exp().to(x.dtype)\n", "exp"),
    ("import torch\ndef _h(t):\n    return t.add(1)\ndef kernel(x):\n    return _h(x)\n", "add"),
    ("import torch\ndef kernel(*inputs):\n    a, b = inputs\n    return a.add(b)\n", "add"),
    ("import torch\ndef kernel(*inputs):\n    return inputs[0].mul(inputs[1])\n", "mul"),
    ("import torch\ndef kernel(*inputs):\n    for t in inputs:\n        t.exp()\n", "exp"),
    ("import torch\ndef kernel(x):\n    return torch.Tensor.sum(x)\n", "sum"),
    ("import torch\ndef kernel(x):\n    return sum(x)\n", "sum"),
    ("import torch\nS = torch.softmax\ndef kernel(x):\n    return S(x, -1)\n", "softmax"),
    ("import torch\ndef kernel(x):\n    return torch.ops.aten._softmax(x, -1, False)\n", "_softmax"),
])
def test_static_scan_still_sees_ops_on_tensors_and_torch_aliases(body, name):
    found = [f for f in scan.scan_source(body) if f.kind == "reference_op"]
    assert any(f.name == name for f in found), scan.scan_source(body)


def test_static_scan_flags_dynamic_getattr_and_the_dispatch_machinery():
    dyn = scan.scan_source("import torch\ndef kernel(x):\n    return getattr(torch, 'su' + 'm')(x)\n")
    assert [f.kind for f in dyn] == ["suspicious"] and "dynamic getattr" in dyn[0].detail
    for src in ("import torch\nfrom torch.utils._python_dispatch import _disable_current_modes\n",
                "import torch\ndef kernel(x):\n    with torch.utils._python_dispatch._disable_current_modes():\n"
                "        return x\n",
                "import torch\ndef kernel(x):\n    m = getattr(torch.utils, '_python_dispatch')\n    return x\n",
                "import torch\ndef kernel(x):\n    return torch.overrides.has_torch_function((x,))\n",
                "import torch\nG = torch.cuda.CUDAGraph()\ndef kernel(x):\n    G.replay()\n    return x\n",
                "import torch as T\ndef kernel(x):\n    with T.cuda.graph(None):\n        return x\n"):
        assert any(f.kind == "evasion" for f in scan.scan_source(src)), src
    assert scan.scan_source("import torch\nprofiler = 3\ngraph = {}\ndef kernel(x):\n    graph.get(1)\n"
                            "    return x\n") == []


def test_a_recorded_address_reused_by_an_unrecorded_buffer_does_not_count():
    """The recorder used to remember addresses only: once a recorded buffer was freed, the
    allocator gave its address to the next block of that size, and an output made with the
    recorder off there passed as recorded (a 2-worker test run hit it by chance; a kernel can
    arrange it on purpose: allocate and free a buffer under the recorder, then compute unseen).
    The reuse is the allocator's choice, so the record is moved to the new buffer's address by
    hand: exactly what a reuse leaves behind (a record made for another allocation)."""
    n = 1 << 14
    with scan.OpRecorder():
        seen = torch.empty(n)
    assert scan.unrecorded([seen]) == []                       # made under the recorder, still alive
    unseen = torch.empty(n)                                    # outside the recorder
    assert scan.unrecorded([unseen]) == [0]
    old = scan._recorded_storages[seen.untyped_storage().data_ptr()]
    scan._recorded_storages[unseen.untyped_storage().data_ptr()] = old     # the old record at the reused address
    assert scan.unrecorded([unseen]) == [0] and scan.unrecorded([seen]) == []
    ref = scan._recorded_storages[seen.untyped_storage().data_ptr()]
    del seen
    assert ref() is None                                       # the record dies with its buffer


def test_switching_the_recorder_off_around_the_reference_op_is_caught(seed):
    """A kernel that pops the dispatch mode (names computed, past the static scan) and runs
    the reference op: no compute op is recorded, but its output was allocated unseen."""
    def kernel(x):
        mod = getattr(torch.utils, "_python" + "_dispatch")
        with getattr(mod, "_disable" + "_current_modes")():
            return getattr(torch, "soft" + "max")(x.float(), dim=-1).to(x.dtype)

    res = evaluate_problem(P["softmax"], kernel, FAST)
    assert not res["correct"] and "unrecorded_output" in kinds(res)
    report = {"problems": {"softmax": res}, "done": True}
    probes = runner._probes(report, {}, {"below_sol": []}, type("R", (), {"violations": [], "reason": ""})(),
                            ["softmax"])
    assert probes["reference_ops"]["passed"] is False


def test_output_buffers_cached_per_shape_pass_but_one_made_at_import_does_not(seed):
    buffers = {}

    def cached(x):                       # allocated in its first (watched) call, reused after
        key = (tuple(x.shape), x.dtype)
        if key not in buffers:
            buffers[key] = torch.empty_like(x)
        buffers[key].copy_(seed["softmax"](x))
        return buffers[key]

    res = evaluate_problem(P["softmax"], cached, FAST)
    assert res["correct"] and not res["violations"], res["violations"]
    made_early = {(w["M"], w["N"]): torch.empty(w["M"], w["N"], dtype=getattr(torch, {"bf16": "bfloat16", "fp16":
                  "float16", "fp32": "float32"}[w["dtype"]])) for w in P["softmax"].workloads("tiny")
                  + P["softmax"].workloads("tiny", hidden=True)}

    def early(x):
        y = made_early[tuple(x.shape)]
        y.copy_(seed["softmax"](x))
        return y

    res = evaluate_problem(P["softmax"], early, FAST)
    assert not res["correct"] and "unrecorded_output" in kinds(res)
