"""Evaluate one candidate kernel on one problem, in the current process.

The worker (``kernels_harness.worker``) calls this inside the sandboxed candidate process;
the CPU unit tests call it directly. Per problem:

1. **Correctness rounds** (``rounds``, default 10) over the public workloads, with fresh
   random inputs every round. Even rounds go through the workloads in order, odd rounds in
   reverse, with the allocator cache emptied between rounds. Every third round refills the
   *previous* round's input buffers in place with new values (same addresses, new contents:
   a cache keyed by pointer returns a stale answer and fails). Each call:
   reference first (on copies, kept alive), then the allocator is poisoned (blocks the size
   of each output filled with 0xFF = NaN, then freed, so an output the kernel never writes
   reads as NaN), then the kernel; its outputs are copied on the current stream right after
   it returns (before any device synchronize: work left on a side stream is not in the copy),
   then the device is synchronized and the copy is checked with ``tolerance.check_output``;
   the inputs must be unchanged and the outputs must be plain tensors not aliasing an input.
   Every call runs under ``scan.OpRecorder``: compute ops dispatched through PyTorch are
   ``reference_op`` violations, and an output whose memory no recorder saw being allocated
   (``scan.unrecorded``: PyTorch run with the recorder switched off, or a buffer made before
   any watched call) is an ``unrecorded_output`` violation.
2. **Hidden workloads** (``hidden_rounds`` rounds), shapes the candidate has never been
   shown; failing one fails the problem. Every call is watched by the recorder too.
3. **Timing** (when every check passed): ``timing.time_kernel`` with fresh inputs every
   iteration, each output verified against the reference outside the timed region. The
   warm-up calls and a random, unpredictable sample of extra timed calls run under the
   recorder as well (kept out of the timing statistics); on a GPU, watched calls much slower
   than unwatched ones are a ``watch_gap`` violation (a kernel that behaves differently when
   observed).

So no call of the candidate escapes the recorder except the unsampled timed iterations, and a
kernel that reaches for PyTorch from its N-th call on, on hidden shapes only, or only once it
thinks it is being timed, is seen doing it.

Violations are {"kind", "detail"}; failures are {"workload", "round", "tag", "reason"} with
tag fresh | reverse | refill | hidden | timing.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from . import guards, scan, timing
from .problems import Problem, label
from .tolerance import check_output, dtype_name

_clone = torch.Tensor.clone
_equal = torch.equal


@dataclass
class Settings:
    device: str = "cpu"
    shapes: str = "tiny"          # tiny (interpreter) | full
    rounds: int = 10
    hidden: bool = True
    hidden_rounds: int = 3
    time: bool = True
    warmup: int = 10
    iters: int = 50
    verify_timing: bool = True
    seed: int = 0
    min_fraction: float = 0.99
    op_probe: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def input_seed(settings: Settings, problem: str, w: dict, round_: int) -> int:
    """Deterministic seed per (run seed, problem, workload, round) - the parent times the
    baseline on the very same draws."""
    key = f"{settings.seed}|{problem}|{label(w)}|{round_}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def make(problem: Problem, w: dict, seed: int, device) -> list:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return problem.make_inputs(w, gen, device)


def _poison(refs: tuple, device) -> None:
    """Leave NaN-filled free blocks of each output's size in the caching allocator."""
    if not timing.is_cuda(device):
        return
    blocks = [torch.empty(r.numel() * r.element_size(), dtype=torch.uint8, device=device) for r in refs for _ in (0, 1)]
    for b in blocks:
        b.fill_(0xFF)
    del blocks


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0:
        return True
    return _equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def check_call(problem: Problem, kernel: Callable, inputs: list, settings: Settings,
               record_ops: bool = True) -> tuple[str, list[dict], dict]:
    """Run the kernel once on ``inputs`` and check everything. Returns (failure reason or "",
    violations, stats)."""
    device = settings.device
    cuda = timing.is_cuda(device)
    originals = [_clone(t) if isinstance(t, torch.Tensor) else t for t in inputs]
    refs = guards.as_outputs(problem.reference(*[_clone(t) if isinstance(t, torch.Tensor) else t for t in originals]))
    _poison(refs, device)
    stream_before = torch.cuda.current_stream(device) if cuda else None
    violations: list[dict] = []
    recorder = scan.OpRecorder() if record_ops and settings.op_probe else None
    try:
        if recorder is not None:
            with recorder:
                out = kernel(*inputs)
        else:
            out = kernel(*inputs)
    except Exception as e:  # the candidate's error is a failed workload, not a harness crash
        if cuda:
            torch.cuda.synchronize(device)
        return f"raised {type(e).__name__}: {e}"[:500], violations, {}
    outs = guards.as_outputs(out)
    violations += guards.output_problems(outs, len(refs), device)
    if violations:
        return "output_type: " + violations[0]["detail"], violations, {}
    # stream-ordered copy, before any device-wide synchronize
    snaps = tuple(_clone(o) for o in outs)
    if cuda:
        stream_after = torch.cuda.current_stream(device)
        torch.cuda.synchronize(device)
        if stream_after != stream_before:
            violations.append({"kind": "stream", "detail": "the candidate changed the current CUDA stream"})
    if recorder is not None:
        bad = scan.compute_ops(recorder.ops)
        if bad:
            violations.append({"kind": "reference_op",
                               "detail": f"PyTorch compute ops dispatched by the kernel call: {', '.join(bad)}"})
        hidden = [i for i in scan.unrecorded(outs) if not guards.aliases((outs[i],), inputs)]
        if hidden:
            violations.append({"kind": "unrecorded_output",
                               "detail": f"output {hidden[0]} was allocated where the dispatch recorder could not see "
                                         "it (PyTorch called with the recorder switched off, or a buffer made before "
                                         "any watched call): allocate outputs with torch.empty* inside kernel()"})
    violations += guards.aliases(outs, inputs)
    for i, (t, o) in enumerate(zip(inputs, originals)):
        if isinstance(t, torch.Tensor) and not _bytes_equal(t, o):
            violations.append({"kind": "input_mutation", "detail": f"input {i} was modified by the kernel"})
    stats = {}
    reason = ""
    for i, (snap, full, ref) in enumerate(zip(snaps, outs, refs)):
        atol, rtol = problem.tolerance(i, dtype_name(ref.dtype))
        c = check_output(snap, ref, atol, rtol, settings.min_fraction)
        stats[f"out{i}"] = {"fraction_ok": c.fraction_ok, "max_abs_err": c.max_abs_err, "worst_ratio": c.worst_ratio}
        if not c.ok:
            reason = reason or f"output {i}: {c.reason}"
            if cuda and check_output(full, ref, atol, rtol, settings.min_fraction).ok:
                violations.append({"kind": "stream",
                                   "detail": f"output {i} was incomplete when the current stream finished "
                                             "(work left on a side stream)"})
    if violations and not reason:
        reason = f"{violations[0]['kind']}: {violations[0]['detail']}"
    return reason, violations, stats


def _empty_cache(device) -> None:
    gc.collect()
    if timing.is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def evaluate_problem(problem: Problem, kernel: Callable, settings: Settings, guard: guards.Guard | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Correctness rounds, hidden workloads and timing for one problem (see module docstring)."""
    device = settings.device
    public = problem.workloads(settings.shapes)
    hidden = problem.workloads(settings.shapes, hidden=True) if settings.hidden else []
    failures: list[dict] = []
    violations: list[dict] = []
    stats: dict[str, dict] = {}
    seen: set = set()

    def note(vs):
        for v in vs:
            key = (v["kind"], v["detail"])
            if key not in seen:
                seen.add(key)
                violations.append(v)

    prev: dict[str, list] = {}
    for r in range(settings.rounds):
        if r:
            _empty_cache(device)
        order = list(public) if r % 2 == 0 else list(reversed(public))
        refill = r % 3 == 2
        tag = "refill" if refill else ("fresh" if r % 2 == 0 else "reverse")
        for w in order:
            lab = label(w)
            fresh = make(problem, w, input_seed(settings, problem.name, w, r), device)
            if refill and lab in prev:
                inputs = prev[lab]
                for buf, new in zip(inputs, fresh):
                    buf.copy_(new)
                del fresh
            else:
                inputs = fresh
            reason, vs, st = check_call(problem, kernel, inputs, settings)
            note(vs)
            if guard is not None:
                note(guard.check())
            if st:
                stats.setdefault(lab, st)
            if reason:
                failures.append({"workload": lab, "round": r, "tag": tag, "reason": reason})
            prev[lab] = inputs
        if failures and r >= 2:
            break            # enough evidence; the remaining rounds add nothing
    del prev
    correct = not failures and not violations

    hidden_failures: list[dict] = []
    if settings.hidden and correct:
        for r in range(settings.hidden_rounds):
            for w in hidden:
                inputs = make(problem, w, input_seed(settings, problem.name, w, 1000 + r), device)
                reason, vs, _ = check_call(problem, kernel, inputs, settings)
                note(vs)
                if reason:
                    hidden_failures.append({"workload": label(w), "round": r, "tag": "hidden", "reason": reason})
        _empty_cache(device)
    hidden_correct = not hidden_failures if (settings.hidden and correct) else None
    correct = correct and not hidden_failures and not violations

    times: dict[str, dict] = {}
    if settings.time and correct:
        for w in public:
            lab = label(w)

            def make_i(i, w=w):
                return make(problem, w, input_seed(settings, problem.name, w, 100_000 + i), device)

            def verify(inputs, out):
                refs = guards.as_outputs(problem.reference(*inputs))
                outs = guards.as_outputs(out)
                bad = guards.output_problems(outs, len(refs), device)
                if bad:
                    return bad[0]["detail"]
                for i, (o, ref) in enumerate(zip(outs, refs)):
                    atol, rtol = problem.tolerance(i, dtype_name(ref.dtype))
                    c = check_output(o, ref, atol, rtol, settings.min_fraction)
                    if not c.ok:
                        return f"output {i}: {c.reason}"
                return ""

            watched_ops: list[str] = []
            unseen: list[int] = []

            def watched(*inputs):
                rec = scan.OpRecorder()
                with rec:
                    out = kernel(*inputs)
                watched_ops.extend(rec.ops)
                outs = guards.as_outputs(out)
                unseen.extend(i for i in scan.unrecorded(outs) if not guards.aliases((outs[i],), inputs))
                return out

            res = timing.time_kernel(kernel, make_i, device, settings.warmup, settings.iters,
                                     verify if settings.verify_timing else None,
                                     watched_fn=watched if settings.op_probe else None)
            if guard is not None:
                note(guard.check())
            bad_ops = scan.compute_ops(watched_ops)
            if bad_ops:
                note([{"kind": "reference_op", "detail": f"[{lab}] PyTorch compute ops dispatched by watched timed "
                                                         f"calls: {', '.join(bad_ops)}"}])
                correct = False
            if unseen:
                note([{"kind": "unrecorded_output", "detail": f"[{lab}] output {unseen[0]} of a watched timed call was "
                                                              "allocated where the dispatch recorder could not see it"}])
                correct = False
            if res["watch_gap"]:
                note([{"kind": "watch_gap", "detail": f"[{lab}] watched timed calls ran "
                                                      f"{res['watched_median_s'] * 1e6:.1f} us (median of "
                                                      f"{len(res['watched_times_s'])}), unwatched ones "
                                                      f"{res['median_s'] * 1e6:.1f} us: the kernel behaves "
                                                      "differently when the dispatch recorder watches it"}])
                correct = False
            if res["failure"]:
                failures.append({"workload": lab, "round": -1, "tag": "timing", "reason": res["failure"]})
                correct = False
                break
            times[lab] = {k: res[k] for k in ("median_s", "side_stream_s", "n", "method", "watched_iters",
                                              "watched_median_s")}
            ts = sorted(res["times_s"])
            times[lab]["p10_s"], times[lab]["p90_s"] = ts[len(ts) // 10], ts[(9 * len(ts)) // 10]
            if res["side_stream"]:
                note([{"kind": "stream", "detail": f"[{lab}] work still running after the kernel's stream finished "
                                                   f"(median {res['side_stream_s'] * 1e6:.0f} us): a side stream "
                                                   "outside the timed region"}])
                correct = False
            if log:
                log(f"{problem.name} [{lab}] {res['median_s'] * 1e6:.1f} us")
        _empty_cache(device)

    return {
        "problem": problem.name,
        "correct": bool(correct and not violations),
        "public_correct": not [f for f in failures if f["tag"] != "timing"],
        "hidden_correct": hidden_correct,
        "failures": failures + hidden_failures,
        "violations": violations,
        "stats": stats,
        "times": times,
    }
